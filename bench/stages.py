"""The bench's measurements of stages 1 and 2 against the recipe, and of the data path's memory and dtypes.

Reads the bench's generated images and caches; writes scratch caches and heads under the bench's work folder.
Example: python -m bench --n 600   # bench/suite.py runs these
"""
import os
import time

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, CacheWriter, open_cache
from classify.stage import DEFAULT_BATCH as HEAD_BATCH
from core import WorkflowError
from core.optimizer import adam
from core.pipeline import fixed_pipeline
from core.precision import building, feature_error
from extract import backbone, backbones
from extract.features import Settings, extract_features, make_forward, make_plan, run_extraction
from extract.pipeline import image_batches

from .profile import gflops_per_example, step_gflops
from .timing import EpochTimer, median, run_head_cli

RECIPE = backbones.get(backbones.DEFAULT)  # the stages are measured on the default backbone
LAYER = RECIPE.feature_layer


def bench_extraction(a, imgs, work, precisions=("float32", "bfloat16")) -> dict:
    """Per precision: pipeline images/s (decode, resize, forward, HDF5 write) vs bare forward images/s on in-memory
    tensors, and the forward pass's GFLOPs per image. The float32 figures keep their keys; the others go under
    their precision's name. Precisions alternate within each repeat, so a busy moment hits both alike."""
    x = np.random.default_rng(0).integers(0, 256, (a.batch, a.img_size, a.img_size, 3), dtype=np.uint8)
    forwards, gflops = {}, {}
    for p in precisions:
        with building(p):
            model = backbone.build_backbone(RECIPE, a.img_size, [LAYER], "none")
        forwards[p] = make_forward(model)
        forwards[p](x)  # warm-up: tracing is excluded from every figure
        gflops[p] = step_gflops(model, (a.img_size, a.img_size, 3), train=False)
    shape = {LAYER: tuple(model.output.shape[1:])}
    n = len(imgs.paths)
    runs = {p: {"bare": [], "piped": [], "seconds": []} for p in precisions}
    for r in range(a.repeats):
        for p in precisions:
            forward, run = forwards[p], runs[p]
            t0 = time.perf_counter()
            for _ in range(0, n, a.batch):
                forward(x)[0].numpy()
            run["bare"].append(n / (time.perf_counter() - t0))
            path = os.path.join(work, f"extract-{p}-{r}.h5")
            writer = CacheWriter(path, {"layer": LAYER, "repeat": r, "precision": p}, imgs.paths, imgs.labels,
                                 np.zeros(n, np.int8), shape)
            writer.start()
            done, skipped, dt = run_extraction(forward, [LAYER], imgs, writer, 0, a.img_size, a.batch)
            writer.finalize()
            os.remove(path)
            run["piped"].append((done + skipped) / dt)
            run["seconds"].append(dt)
    per = {}
    for p in precisions:
        run = runs[p]
        per[p] = {"forward_img_s": median(run["bare"]), "extract_img_s": median(run["piped"]),
                  "extract_s": median(run["seconds"]), "extract_vs_forward": median(run["piped"]) / median(run["bare"]),
                  "forward_img_s_runs": run["bare"], "extract_img_s_runs": run["piped"], "gflops_per_image": gflops[p]}
    return {**per["float32"], "by_precision": {p: per[p] for p in precisions if p != "float32"}}


def build_cache(a, data, path, dtype="float32", precision="float32"):
    """`make features` of the bench's images (WEIGHTS=none) into `path`."""
    assert extract_features(make_plan(Settings(data=data, features=path, img_size=a.img_size, weights="none",
                                               batch=a.batch, dtype=dtype, precision=precision))) == 0
    return path


def bench_recipe_epoch(a, cache_path, epochs):
    """The recipe: frozen InceptionV3 to mixed7 + the same head, trained from the image files every epoch.

    Returns (seconds per epoch, GFLOPs per example of the recipe's and the head's train step and val forward).
    Like for like with `make head`: same head, optimizer, XLA and BATCH (its default, so as many optimizer steps).
    """
    import keras
    import tensorflow as tf

    from classify.head import build_head

    batch = HEAD_BATCH
    with open_cache(cache_path) as c:
        root, shape = c.config["data"], c.feature_shape()
        sets = [([c.paths[i] for i in c.rows(s)], c.labels[c.rows(s)]) for s in (SPLIT_TRAIN, SPLIT_VAL)]
    trunk = backbone.build_backbone(RECIPE, a.img_size, [LAYER], "none")
    head = build_head(shape)
    model = keras.Model(trunk.input, head(trunk.output))
    image = (a.img_size, a.img_size, 3)
    gflops = {"recipe": gflops_per_example(model, image), "head": gflops_per_example(head, shape)}
    # XLA, as the like-for-like head run (`--deterministic 0`) compiles the head. It helps the recipe too (8.9 vs
    # 16.4 s for 320 images on 2 cores), since the recipe's step also updates the head's 38.5M weights with Adam.
    model.compile(optimizer=adam(1e-4), loss="binary_crossentropy", metrics=["accuracy"],
                  jit_compile=True)

    def from_files(paths, labels):  # decoded again every epoch, as the recipe's generators do
        y = tf.constant(labels, tf.float32)
        return image_batches(root, paths, a.img_size, batch).map(
            lambda idx, x, ok, reason: (tf.cast(x, tf.float32), tf.gather(y, idx)))

    timer = EpochTimer()  # an epoch = train + validation, as for the head
    model.fit(from_files(*sets[0]), validation_data=from_files(*sets[1]), epochs=epochs, callbacks=[timer],
              verbose=0, shuffle=False)  # in file order: the recipe's cost does not depend on the order
    return timer.seconds, gflops


def bench_head_breakdown(a, cache_path) -> dict:
    """Where a head epoch's time goes: the same head and BATCH on in-memory features, with Adam (as `make head`) and
    with plain SGD, which keeps no state: the difference is the cost of Adam's update of the 38.5M weights (memory
    traffic), and the SGD epoch is about what the forward and backward GEMMs alone take. XLA on both."""
    from classify.head import build_head

    with open_cache(cache_path) as c:
        sets = [(c.read(c.rows(s)), c.labels[c.rows(s)].astype(np.float32)[:, None]) for s in (SPLIT_TRAIN, SPLIT_VAL)]
        shape = c.feature_shape()
    scale = float(np.sqrt(np.mean(np.square(sets[0][0]))))  # unit RMS, as stage 2 feeds the head
    seconds = optimizer_epochs(lambda: build_head(shape), [(x / scale, y) for x, y in sets], HEAD_BATCH,
                               1 + a.repeats)
    return {f"head_epoch_s_in_memory_{name}": s for name, s in seconds.items()}


def optimizer_epochs(build, sets, batch: int, epochs: int, lr=1e-4) -> dict:
    """{"adam": s, "sgd": s}: median epoch (train + val, after a warm-up epoch) of `build()` on in-memory
    `sets` [(x, y) train, (x, y) val] with each optimizer, XLA on: the difference is the optimizer's update alone."""
    import keras
    import tensorflow as tf

    tr, va = (fixed_pipeline(tf.data.Dataset.from_tensor_slices(xy).batch(batch)) for xy in sets)
    out = {}
    for name, opt in (("adam", adam), ("sgd", keras.optimizers.SGD)):  # make head's Adam (fused updates)
        model = build()
        model.compile(optimizer=opt(lr), loss="binary_crossentropy", metrics=["accuracy"], jit_compile=True)
        timer = EpochTimer()
        model.fit(tr, validation_data=va, epochs=epochs, callbacks=[timer], verbose=0)
        out[name] = median(timer.seconds[1:])
    return out


def random_cache(path, rows, shape, seed=0):
    """A cache of random features (no backbone): the RSS test measures the data path, not the features."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype(np.int8)
    split = np.where(rng.random(rows) < 0.2, SPLIT_VAL, SPLIT_TRAIN).astype(np.int8)
    config = {"layer": LAYER, "layers": [LAYER], "class_names": ["cat", "dog"], "rows": rows}
    w = CacheWriter(path, config, [f"cat.{i}.jpg" for i in range(rows)], labels, split, {LAYER: shape})
    w.start()
    for lo in range(0, rows, 500):
        hi = min(rows, lo + 500)
        w.commit(np.arange(lo, hi), {LAYER: rng.random((hi - lo,) + shape, np.float32)}, [], hi)
    w.finalize()
    return path


def bench_rss(a, work, shape):
    """Peak RSS of head training on a cache above MEM_BUDGET, and on one 4x as large."""
    from classify.data import parse_bytes

    out = {}
    for k in (1, 4):
        path = random_cache(os.path.join(work, f"rss-{k}x.h5"), a.rss_rows * k, shape, seed=k)
        if os.path.getsize(path) <= parse_bytes(a.mem_budget):  # in memory, RSS would grow with the cache: no test
            raise WorkflowError(f"--rss-rows {a.rss_rows}: the {k}x cache ({os.path.getsize(path) / 2**20:.0f} MiB) "
                                f"fits MEM_BUDGET={a.mem_budget}; the RSS test needs both above it: raise --rss-rows")
        _, rss = run_head_cli(path, os.path.join(work, f"head-rss-{k}x"), "--mem-budget", a.mem_budget,
                              "--epochs", "1")
        out[f"head_peak_rss_mib_{k}x"] = rss
        out[f"cache_mib_{k}x"] = os.path.getsize(path) / 2**20
        os.remove(path)
    out["head_rss_growth"] = out["head_peak_rss_mib_4x"] / out["head_peak_rss_mib_1x"]
    return out


def bench_dtype(cache32, work, metrics32, *head_args):
    """The head and the baseline on a float16 copy of the cache vs the float32 original (`metrics32`), same seed.

    The copy casts the float32 features exactly as CacheWriter does for DTYPE=float16, without a second pass.
    """
    cache16 = os.path.join(work, "features-f16.h5")
    with open_cache(cache32) as c:
        rows = np.arange(len(c))
        f32 = c.read(rows)
        w = CacheWriter(cache16, {**c.config, "dtype": "float16"}, c.paths, c.labels, c.split,
                        {c.layer: c.feature_shape()}, "float16", c.provenance)
    w.start()
    w.commit(rows, {c.layer: f32}, [], len(rows))
    w.finalize()
    with open_cache(cache16) as c16:
        f16 = c16.read(rows)
    res = {"feature_max_abs_err": float(np.abs(f16 - f32).max()),
           "feature_max_rel_err": float((np.abs(f16 - f32) / np.maximum(np.abs(f32), 1e-6)).max()),
           "disk_mib_float32": os.path.getsize(cache32) / 2**20, "disk_mib_float16": os.path.getsize(cache16) / 2**20}
    m16, _ = run_head_cli(cache16, os.path.join(work, "head-float16"), *head_args)
    res.update(val_metrics({"float32": metrics32, "float16": m16}))
    return res


def val_metrics(runs: dict) -> dict:
    """{"<head|baseline>_<name>": its val accuracy, log loss and AUC} for each `make head` metrics.json in `runs`."""
    return {f"{part}_{name}": {k: m[part][k] for k in ("val_accuracy", "val_log_loss", "val_auc")}
            for name, m in runs.items() for part in ("head", "baseline")}


def bench_baseline_at_scale(rows: int = 20_000, channels: int = 768, seed: int = 0) -> dict:
    """The baseline's fit (StandardScaler + LogisticRegressionCV, C by 5-fold CV) on Kaggle's size: 20,000 train rows
    of 768 pooled values (25,000 images less a 0.2 val split). The features are synthetic, two Gaussian classes whose
    means differ along a few hundred directions: fit time depends on the shape and the conditioning, not the images."""
    from classify import baseline

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    shift = rng.normal(0, 0.15, channels) * (rng.random(channels) < 0.5)
    x = (rng.normal(0, 1, (rows, channels)) + np.outer(y, shift)).astype(np.float32)
    model, seconds = baseline.fit(x, y, seed)
    return {"rows": rows, "channels": channels, "seconds": seconds, "C": baseline.chosen_c(model)}


def bench_bf16_cache(a, data, cache32, work, metrics32, *head_args) -> dict:
    """The same images cached with PRECISION=bfloat16 against the float32 cache: feature error, and the head's and
    the baseline's val metrics trained on each (same seed, same epochs)."""
    cache16 = build_cache(a, data, os.path.join(work, "features-bf16.h5"), precision="bfloat16")
    with open_cache(cache32) as c32, open_cache(cache16) as c16:
        rows = np.arange(len(c32))
        f32, f16 = c32.read(rows), c16.read(rows)
        recorded = c16.precision
    res = {"cache_precision": recorded, "feature_error": feature_error(f16, f32),
           "note": "WEIGHTS=none: a random-weight InceptionV3; the error is bf16's rounding through 7 blocks"}
    m16, _ = run_head_cli(cache16, os.path.join(work, "head-bf16"), *head_args)
    res.update(val_metrics({"float32": metrics32, "bfloat16": m16}))
    os.remove(cache16)
    return res
