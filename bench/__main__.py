"""`make bench`: speed and memory of every stage against the recipe it replaces, measured side by side in one run.

Reads nothing (it generates its own ~350x400 JPEGs). Writes artifacts/bench.json and artifacts/bench.md.
Example: python -m bench --n 600

Every figure is the median of repeated timings with the warm-up (graph tracing) excluded. WEIGHTS=none:
throughput does not depend on the weights' values. Ratios compare runs on the same machine in the same process.
Beside each speedup it reports the ratio's FLOP ceiling (TensorFlow's profiler on each path's traced step),
and where a head epoch's time goes (Adam vs stateless SGD), so a missed target comes with its reason.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, CacheWriter, WorkflowError, cli, open_cache
from extract import backbone, images
from extract.__main__ import main as extract_main
from extract.__main__ import make_forward, package_versions, run_extraction
from extract.synth import make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"extract_vs_forward": (">=", 0.85), "head_epoch_speedup": (">=", 10.0),
           "first_head_speedup": (">", 1.0), "head_rss_growth": ("<=", 1.10),
           "cached_finetune_speedup": (">=", 5.0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600, help="synthetic images (BENCH_N)")
    p.add_argument("--img-size", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median reported)")
    p.add_argument("--rss-rows", type=int, default=800, help="rows of the 1x cache for the RSS test (4x is 4x)")
    p.add_argument("--mem-budget", default="64M", help="MEM_BUDGET for the RSS test: both caches exceed it")
    p.add_argument("--ft-n", type=int, default=320,
                   help="images for cached_finetune_speedup (end-to-end epochs are the slowest part of the bench)")
    p.add_argument("--baseline-rows", type=int, default=20_000, help="train rows of the baseline's fit at scale")
    p.add_argument("--head-epochs", type=int, default=6,
                   help="epochs of the `make head` runs on the float32 and the float16 cache (compared at equal epochs)")
    p.add_argument("--skip-ray", action="store_true", help="leave out the Ray throughput figures (quick test)")
    p.add_argument("--device-figures", action="store_true",
                   help="measure the GPU figures (fine-tuning images/s with and without mixed precision) even "
                        "without a GPU: they are measured by default only where one is visible")
    p.add_argument("--work", default="artifacts/bench_work", help="scratch folder (deleted at the end)")
    p.add_argument("--out", default="artifacts/bench.json")
    return p.parse_args(argv)


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "platform": platform.platform(),
            "versions": package_versions()}


def median(xs):
    return float(statistics.median(xs))


class EpochTimer:
    """Keras callback collecting wall seconds per epoch (epoch 0 includes tracing: excluded by the caller)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.t0)

        return _Timer()


def step_gflops(model, input_shape, train: bool) -> float:
    """GFLOPs per example of `model`'s train step (forward + gradients of its trainable weights) or of its inference
    forward, counted by TensorFlow's profiler on the traced graph at batch 1 (every op's work scales with the batch).

    The graph is first cut to what the outputs need, as the runtime does: the traced gradient also holds backward
    ops of frozen layers that nothing reads, and counting them would add ~3.5 GFLOPs to a 150 px fine-tuning step.
    Optimizer updates are not counted: their cost is memory traffic, which the timings show instead.
    """
    import tensorflow as tf

    def fn(x):
        if not train:
            return model(x, training=False)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    cf = tf.function(fn).get_concrete_function(tf.TensorSpec((1,) + tuple(input_shape), tf.float32))
    needed = tf.compat.v1.graph_util.extract_sub_graph(cf.graph.as_graph_def(add_shapes=True),
                                                       [t.op.name for t in cf.outputs])
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(needed, name="")
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler warns of its own deprecation, on every call
    try:
        return tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops / 1e9
    finally:
        tf.get_logger().setLevel(level)


def gflops_per_example(model, input_shape) -> dict:
    """{"train": GFLOPs of a train step, "val": GFLOPs of a val forward} per example, as `flop_ceiling` takes them."""
    return {"train": step_gflops(model, input_shape, True), "val": step_gflops(model, input_shape, False)}


def flop_ceiling(slow: dict, fast: dict, n_train: int, n_val: int) -> float:
    """The ratio of two paths' epochs if every FLOP took the same time: {"train", "val"} GFLOPs per example each."""
    work = [n_train * d["train"] + n_val * d["val"] for d in (slow, fast)]
    return work[0] / work[1]


# -- stage 1 ---------------------------------------------------------------------------------------------
def bench_extraction(a, imgs, work):
    """Pipeline images/s (decode, resize, forward, HDF5 write) vs bare forward images/s on in-memory tensors."""
    model = backbone.build_backbone(a.img_size, ["mixed7"], "none")
    forward = make_forward(model)
    x = np.random.default_rng(0).integers(0, 256, (a.batch, a.img_size, a.img_size, 3), dtype=np.uint8)
    forward(x)  # warm-up: tracing is excluded from both figures
    n = len(imgs.paths)
    bare, piped, seconds = [], [], []
    for r in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(0, n, a.batch):
            forward(x)[0].numpy()
        bare.append(n / (time.perf_counter() - t0))
        path = os.path.join(work, f"extract-{r}.h5")
        writer = CacheWriter(path, {"layer": "mixed7", "repeat": r}, imgs.paths, imgs.labels,
                             np.zeros(n, np.int8), {"mixed7": tuple(model.output.shape[1:])})
        writer.start()
        done, skipped, dt = run_extraction(forward, ["mixed7"], imgs, writer, 0, a.img_size, a.batch)
        writer.finalize()
        os.remove(path)
        piped.append((done + skipped) / dt)
        seconds.append(dt)
    return {"forward_img_s": median(bare), "extract_img_s": median(piped), "extract_s": median(seconds),
            "extract_vs_forward": median(piped) / median(bare),
            "forward_img_s_runs": bare, "extract_img_s_runs": piped}


def build_cache(a, data, path, dtype="float32"):
    argv = ["--data", data, "--features", path, "--img-size", str(a.img_size), "--weights", "none",
            "--batch", str(a.batch), "--dtype", dtype]
    assert extract_main(argv) == 0
    return path


# -- stage 2 against the recipe ----------------------------------------------------------------------------
def bench_recipe_epoch(a, cache_path, epochs):
    """The recipe: frozen InceptionV3 to mixed7 + the same head, trained from the image files every epoch.

    Returns (seconds per epoch, GFLOPs per example of the recipe's and the head's train step and val forward).
    Like for like with `make head`: same head, optimizer, XLA and BATCH (its default, so as many optimizer steps).
    """
    import keras
    import tensorflow as tf

    from classify.__main__ import parse_args as head_args
    from classify.head import build_head

    batch = head_args([]).batch
    with open_cache(cache_path) as c:
        root, shape = c.config["data"], c.feature_shape()
        sets = [([c.paths[i] for i in c.rows(s)], c.labels[c.rows(s)]) for s in (SPLIT_TRAIN, SPLIT_VAL)]
    trunk = backbone.build_backbone(a.img_size, ["mixed7"], "none")
    head = build_head(shape)
    model = keras.Model(trunk.input, head(trunk.output))
    image = (a.img_size, a.img_size, 3)
    gflops = {"recipe": gflops_per_example(model, image), "head": gflops_per_example(head, shape)}
    # XLA, as the like-for-like head run (`--deterministic 0`) compiles the head. It helps the recipe too (8.9 vs
    # 16.4 s for 320 images on 2 cores), since the recipe's step also updates the head's 38.5M weights with Adam.
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy", metrics=["accuracy"],
                  jit_compile=True)

    def from_files(paths, labels):  # decoded again every epoch, as the recipe's generators do
        y = tf.constant(labels, tf.float32)
        return images.image_dataset(root, paths, a.img_size, batch).map(
            lambda idx, x, ok, reason: (tf.cast(x, tf.float32), tf.gather(y, idx)))

    timer = EpochTimer()  # an epoch = train + validation, as for the head
    model.fit(from_files(*sets[0]), validation_data=from_files(*sets[1]), epochs=epochs, callbacks=[timer],
              verbose=0, shuffle=False)  # in file order: the recipe's cost does not depend on the order
    return timer.seconds, gflops


def bench_head_breakdown(a, cache_path) -> dict:
    """Where a head epoch's time goes: the same head and BATCH on in-memory features, with Adam (as `make head`) and
    with plain SGD, which keeps no state: the difference is the cost of Adam's update of the 38.5M weights (memory
    traffic), and the SGD epoch is about what the forward and backward GEMMs alone take. XLA on both."""
    import keras
    import tensorflow as tf

    from classify.__main__ import parse_args as head_args
    from classify.head import build_head

    batch = head_args([]).batch
    with open_cache(cache_path) as c:
        sets = [(c.read(c.rows(s)), c.labels[c.rows(s)].astype(np.float32)[:, None]) for s in (SPLIT_TRAIN, SPLIT_VAL)]
        shape = c.feature_shape()
    scale = float(np.sqrt(np.mean(np.square(sets[0][0]))))  # unit RMS, as stage 2 feeds the head
    tr, va = (images.fixed_pipeline(tf.data.Dataset.from_tensor_slices((x / scale, y)).batch(batch)) for x, y in sets)
    out = {}
    for name, opt in (("adam", keras.optimizers.Adam), ("sgd", keras.optimizers.SGD)):
        model = build_head(shape)
        model.compile(optimizer=opt(1e-4), loss="binary_crossentropy", metrics=["accuracy"], jit_compile=True)
        timer = EpochTimer()
        model.fit(tr, validation_data=va, epochs=1 + a.repeats, callbacks=[timer], verbose=0)
        out[f"head_epoch_s_in_memory_{name}"] = median(timer.seconds[1:])
    return out


def run_head_cli(cache_path, head_dir, *extra) -> tuple:
    """`python -m classify` as a child process; return (metrics.json, peak RSS in MiB of that child alone)."""
    import tempfile

    cmd = [sys.executable, "-m", "classify", "--features", cache_path, "--head-dir", head_dir, "--seed", "0", *extra]
    # stderr to a file, not a pipe: nobody reads a pipe during wait4, and a full one would block the child.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only, unlike RUSAGE_CHILDREN
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
    with open(os.path.join(head_dir, "metrics.json")) as f:
        return json.load(f), usage.ru_maxrss / 1024  # Linux reports KiB


def random_cache(path, rows, shape, seed=0):
    """A cache of random features (no backbone): the RSS test measures the data path, not the features."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype(np.int8)
    split = np.where(rng.random(rows) < 0.2, SPLIT_VAL, SPLIT_TRAIN).astype(np.int8)
    config = {"layer": "mixed7", "layers": ["mixed7"], "class_names": ["cat", "dog"], "rows": rows}
    w = CacheWriter(path, config, [f"cat.{i}.jpg" for i in range(rows)], labels, split, {"mixed7": shape})
    w.start()
    for lo in range(0, rows, 500):
        hi = min(rows, lo + 500)
        w.commit(np.arange(lo, hi), {"mixed7": rng.random((hi - lo,) + shape, np.float32)}, [], hi)
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
    for name, m in (("float32", metrics32), ("float16", m16)):
        for part in ("head", "baseline"):
            res[f"{part}_{name}"] = {k: m[part][k] for k in ("val_accuracy", "val_log_loss", "val_auc")}
    return res


def bench_finetune_img_s(a, cache_path, mixed: bool) -> float:
    """Images/s of an end-to-end fine-tuning epoch (stage 3's model, trainable set, compile and input pipeline) under
    the float32 or the mixed_float16 policy: train images / the median epoch after a warm-up epoch."""
    import keras

    from finetune import data as fdata, model as fm, train

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        with open_cache(cache_path) as c:
            model, trunk = fm.build_full_model(c.config, fm.resolve_cache_weights(c), c.layer, c.feature_shape())
            tr = c.rows(SPLIT_TRAIN)
            ds = fdata.labelled_dataset(c.config["data"], [c.paths[i] for i in tr], c.labels[tr], a.img_size,
                                        a.batch, seed=0, augment=True)
        fm.set_trainable(model, trunk, fm.UNFREEZE_FROM)
        train.compile_for_finetuning(model, 1e-5, xla=False)
        timer = EpochTimer()
        model.fit(ds, epochs=1 + a.repeats, callbacks=[timer], verbose=0, shuffle=False)  # ds shuffles itself
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return len(tr) / median(timer.seconds[1:])


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


def cached_finetune_speedup(work_dir, n_images: int, img_size: int, batch: int, repeats: int = 3,
                            aug_views: int = 2, xla: bool = False) -> dict:
    """Seconds of one end-to-end fine-tuning epoch from image files / seconds of one cached epoch, in one process.

    Generates `n_images` ~350x400 JPEGs in `work_dir`, caches mixed6,mixed7 with `aug_views` views (WEIGHTS=none:
    speed does not depend on the weights' values), then fits both paths for 1 + `repeats` epochs (train +
    validation, stage 3's model, trainable set and compile) and takes the median epoch after the first (tracing).
    Also returns disk and RAM per cached view. Leaves `work_dir` in place (main removes the whole scratch folder).
    """
    from classify.head import build_head
    from classify.train import EpochFeed
    from finetune import data as fdata, model as fm, train
    from finetune.cached import ViewFeeds, build_cached_model

    root, path = os.path.join(work_dir, "images"), os.path.join(work_dir, "features-mixed6.h5")
    repeats = max(1, int(repeats))  # epoch 0 (tracing) is never timed: at least one more
    make_dataset(root, n=n_images, layout="kaggle", size=(320, 420), seed=0, junk=False)  # ~350x400, as Kaggle's
    t0 = time.perf_counter()
    assert extract_main(["--data", root, "--features", path, "--img-size", str(img_size), "--weights", "none",
                         "--batch", str(batch), "--layers", "mixed6,mixed7", "--aug-views", str(aug_views)]) == 0
    extract_s = time.perf_counter() - t0
    with open_cache(path, need_labels=True) as cache:
        model, trunk = fm.build_full_model(cache.config, fm.resolve_cache_weights(cache), "mixed7",
                                           cache.feature_shape("mixed7"))
        head = build_head(cache.feature_shape("mixed7"))  # random head: throughput is the same with any weights
        fm.copy_head_weights(model.get_layer("head"), head)
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)

        cached, _ = build_cached_model(model, trunk, fm.UNFREEZE_FROM)
        train.compile_for_finetuning(model, 1e-5, xla)
        ds_tr = fdata.labelled_dataset(root, [cache.paths[i] for i in tr], cache.labels[tr], img_size, batch,
                                       seed=0, augment=True)
        ds_va = fdata.labelled_dataset(root, [cache.paths[i] for i in va], cache.labels[va], img_size, batch)
        e2e = EpochTimer()
        model.fit(ds_tr, validation_data=ds_va, epochs=1 + repeats, callbacks=[e2e], verbose=0, shuffle=False)

        train.compile_for_finetuning(cached, 1e-5, xla)
        feeds = ViewFeeds(cache, fm.UNFREEZE_FROM, tr, va, batch, 0, 1.0, False)
        cac = EpochTimer()
        cached.fit(feeds.train(), validation_data=feeds.val(), epochs=1 + repeats, callbacks=[EpochFeed(feeds), cac],
                   verbose=0, shuffle=False)

        gflops = {"end_to_end": gflops_per_example(model, (img_size, img_size, 3)),
                  "cached": gflops_per_example(cached, tuple(cached.input.shape[1:]))}
        views = cache.f[f"views/{fm.UNFREEZE_FROM}"]
        n_views = views.shape[0] * views.shape[1]
        held = feeds.read(tr[:batch])  # what training holds per view: one float32 feature map
        res = {"n_images": n_images, "n_train": len(tr), "n_val": len(va), "img_size": img_size, "batch": batch,
               "aug_views": aug_views, "xla": bool(xla), "extract_s": extract_s,
               "end_to_end_epoch_s_runs": e2e.seconds, "cached_epoch_s_runs": cac.seconds,
               "end_to_end_epoch_s": median(e2e.seconds[1:]), "cached_epoch_s": median(cac.seconds[1:]),
               "disk_bytes_per_view": views.id.get_storage_size() / max(n_views, 1),
               "disk_bytes_clean_row": cache.features(fm.UNFREEZE_FROM).id.get_storage_size() / max(len(cache), 1),
               "ram_bytes_per_view": held.nbytes / len(held),
               "cache_file_bytes": os.path.getsize(path), "feature_shape": list(cache.feature_shape(fm.UNFREEZE_FROM))}
    res["cached_finetune_speedup"] = res["end_to_end_epoch_s"] / res["cached_epoch_s"]
    res["gflops_per_example"] = gflops
    res["flop_ceiling"] = flop_ceiling(gflops["end_to_end"], gflops["cached"], len(tr), len(va))
    return res


def read_history_seconds(head_dir):
    import csv

    with open(os.path.join(head_dir, "history.csv")) as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]


def check(key, value):
    op, target = TARGETS[key]
    ok = {">=": value >= target, ">": value > target, "<=": value <= target}[op]
    return {"value": round(value, 3), "target": f"{op} {target}", "met": bool(ok)}


def markdown(res) -> str:
    lines = [f"Measured by `make bench` (BENCH_N={res['config']['n']}, {res['config']['img_size']}px, "
             f"WEIGHTS=none) on {res['machine']['cpu']}, {res['machine']['cores']} cores, "
             f"GPU: {', '.join(res['machine']['gpus']) or 'none'}; {res['created']}.", "",
             "| key | value | target | met |", "|---|---|---|---|"]
    for key, r in res["targets"].items():
        lines.append(f"| `{key}` | {r['value']} | {r['target']} | {'yes' if r['met'] else '**no**'} |")
    for key in ("baseline_fit_s", "extract_img_s", "forward_img_s", "recipe_epoch_s", "head_epoch_s",
                "head_epoch_s_deterministic", "head_epoch_speedup_deterministic"):
        lines.append(f"| `{key}` | {res[key]:.3f} | reported | |")
    g, ft = res["gflops_per_example"], res["cached_finetune"]
    lines.append(f"| `head_epoch_speedup` if every FLOP took as long (train step / val forward GFLOPs per image: "
                 f"recipe {g['recipe']['train']:.3f} / {g['recipe']['val']:.3f}, head {g['head']['train']:.3f} / "
                 f"{g['head']['val']:.3f}) | {res['head_epoch_flop_ceiling']:.1f} | ceiling | |")
    b = res["head_breakdown"]
    lines.append(f"| head epoch on in-memory features, Adam / SGD (no optimizer state) | "
                 f"{b['head_epoch_s_in_memory_adam']:.2f} s / {b['head_epoch_s_in_memory_sgd']:.2f} s | reported | |")
    g = ft["gflops_per_example"]
    lines.append(f"| `cached_finetune_speedup` if every FLOP took as long (end-to-end {g['end_to_end']['train']:.3f}"
                 f" / {g['end_to_end']['val']:.3f}, cached {g['cached']['train']:.3f} / {g['cached']['val']:.3f}) "
                 f"| {ft['flop_ceiling']:.1f} | ceiling | |")
    b = res["baseline_at_scale"]
    lines.append(f"| `baseline_fit_s` at {b['rows']:,} x {b['channels']} | {b['seconds']:.1f} | reported | |")
    d = res["float16_vs_float32"]
    for part in ("head", "baseline"):
        a, b = d[f"{part}_float32"], d[f"{part}_float16"]
        lines.append(f"| `float16_vs_float32` {part} | acc {a['val_accuracy']:.4f} vs {b['val_accuracy']:.4f}, "
                     f"log loss {a['val_log_loss']:.4f} vs {b['val_log_loss']:.4f} | reported | |")
    lines.append(f"| float16 feature error | max abs {d['feature_max_abs_err']:.2e}, max rel "
                 f"{d['feature_max_rel_err']:.2e}; disk {d['disk_mib_float16']:.1f} vs {d['disk_mib_float32']:.1f} MiB "
                 f"| reported | |")
    r = res["rss"]
    lines.append(f"| head peak RSS | {r['head_peak_rss_mib_1x']:.0f} MiB on {r['cache_mib_1x']:.0f} MiB cache, "
                 f"{r['head_peak_rss_mib_4x']:.0f} MiB on {r['cache_mib_4x']:.0f} MiB | reported | |")
    lines.append(f"| fine-tune epoch ({ft['n_train']} train + {ft['n_val']} val images) | end-to-end "
                 f"{ft['end_to_end_epoch_s']:.1f} s, cached {ft['cached_epoch_s']:.2f} s | reported | |")
    lines.append(f"| per cached view at mixed6 {tuple(ft['feature_shape'])} | disk {ft['disk_bytes_per_view'] / 2**10:.0f} "
                 f"KiB, RAM {ft['ram_bytes_per_view'] / 2**10:.0f} KiB (float32 while training) | reported | |")
    for key, value in res.get("ray", {}).items():
        lines.append(f"| `{key}` | {value:.1f} | reported | |")
    if "ray_note" in res:
        lines.append(f"| Ray extraction images/s | {res['ray_note']} | | |")
    if "device" in res:
        d = res["device"]
        lines.append(f"| on {d['device']}: extraction / fine-tuning images/s | {d['extract_img_s']:.1f} / float32 "
                     f"{d['finetune_img_s_float32']:.1f}, mixed_float16 {d['finetune_img_s_mixed_float16']:.1f} "
                     f"| reported | |")
    else:
        lines.append("| GPU extraction / fine-tuning images/s | not measured: no GPU on this machine | | |")
    spent = ", ".join(f"{k} {v:.0f}" for k, v in res["section_s"].items())
    lines.append(f"| wall seconds per part | {spent} | | |")
    return "\n".join(lines) + "\n"


@cli
def main(argv=None):
    a = parse_args(argv)
    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = os.path.join(work, "images")
    make_dataset(data, n=a.n, layout="kaggle", size=(320, 420), seed=0, junk=False)  # ~350x400, as Kaggle's
    imgs = images.discover(data)
    res = {"config": vars(a), "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"bench: {a.n} images of ~350x400 at {a.img_size}px, {a.repeats} timed repeats each")

    spent = res["section_s"] = {}  # wall seconds per part, so that a slow bench shows where its time goes

    @contextlib.contextmanager
    def section(name):
        t0 = time.perf_counter()
        yield
        spent[name] = round(time.perf_counter() - t0, 1)

    with section("extraction"):
        res["extraction"] = ext = bench_extraction(a, imgs, work)
    with section("head"):
        cache32 = build_cache(a, data, os.path.join(work, "features.h5"))
        head_epochs_arg = ("--epochs", str(a.head_epochs))
        # `make head` as it is (deterministic), for the deterministic epoch time, the baseline and the float16 check
        head_m, _ = run_head_cli(cache32, os.path.join(work, "head-float32"), *head_epochs_arg)
        det_epochs = read_history_seconds(os.path.join(work, "head-float32"))
        # Like for like with the recipe, which runs without op determinism (Keras' default): a second head run.
        run_head_cli(cache32, os.path.join(work, "head-nondet"), "--deterministic", "0", "--epochs", str(1 + a.repeats))
        head_epochs = read_history_seconds(os.path.join(work, "head-nondet"))
        res["head_breakdown"] = bench_head_breakdown(a, cache32)
    with section("recipe"):
        recipe_epochs, gflops = bench_recipe_epoch(a, cache32, epochs=1 + a.repeats)
    with open_cache(cache32) as c:
        n_train, n_val = len(c.rows(SPLIT_TRAIN)), len(c.rows(SPLIT_VAL))
    res["gflops_per_example"] = gflops
    res["head_epoch_flop_ceiling"] = flop_ceiling(gflops["recipe"], gflops["head"], n_train, n_val)
    res["head_epoch_s_runs"], res["recipe_epoch_s_runs"] = head_epochs, recipe_epochs
    res["head_epoch_s"], res["recipe_epoch_s"] = median(head_epochs[1:]), median(recipe_epochs[1:])
    res["head_epoch_s_deterministic_runs"] = det_epochs
    res["head_epoch_s_deterministic"] = median(det_epochs[1:])
    res["head_epoch_speedup_deterministic"] = res["recipe_epoch_s"] / res["head_epoch_s_deterministic"]
    res["extract_img_s"], res["forward_img_s"] = ext["extract_img_s"], ext["forward_img_s"]
    res["baseline_fit_s"] = head_m["baseline"]["seconds"]
    with section("baseline_at_scale"):
        res["baseline_at_scale"] = bench_baseline_at_scale(a.baseline_rows)
    with section("float16"):
        res["float16_vs_float32"] = bench_dtype(cache32, work, head_m, *head_epochs_arg)
    with section("rss"), open_cache(cache32) as c:
        res["rss"] = bench_rss(a, work, c.feature_shape())
    if a.skip_ray or importlib.util.find_spec("ray") is None:
        res["ray_note"] = ("not measured: --skip-ray" if a.skip_ray else
                           "not measured: Ray is not installed (make install SCALE=1)")
    else:
        from extract import shard

        res["ray"] = {}
        with section("ray"):
            for k in (1, 2):
                r = shard.throughput(data, work, k, a.img_size, a.batch)
                res["ray"][f"ray_extract_img_s_{k}_workers"] = r["images_per_s"]
                res["ray"][f"ray_extract_end_to_end_img_s_{k}_workers"] = r["end_to_end_images_per_s"]
    if res["machine"]["gpus"] or a.device_figures:
        with section("device"):
            res["device"] = {"device": ", ".join(res["machine"]["gpus"]) or "CPU (forced by --device-figures)",
                             "extract_img_s": ext["extract_img_s"],
                             "finetune_img_s_float32": bench_finetune_img_s(a, cache32, mixed=False),
                             "finetune_img_s_mixed_float16": bench_finetune_img_s(a, cache32, mixed=True)}
    # Both fine-tuning paths with XLA, as the like-for-like head run: it fuses Adam's update of the head's weights.
    with section("cached_finetune"):
        res["cached_finetune"] = ft = cached_finetune_speedup(os.path.join(work, "finetune"), a.ft_n, a.img_size,
                                                              a.batch, repeats=a.repeats, xla=True)
    res["targets"] = {
        "extract_vs_forward": check("extract_vs_forward", ext["extract_vs_forward"]),
        "head_epoch_speedup": check("head_epoch_speedup", res["recipe_epoch_s"] / res["head_epoch_s"]),
        "first_head_speedup": check("first_head_speedup", 5 * res["recipe_epoch_s"] /
                                    (ext["extract_s"] + 5 * res["head_epoch_s"])),
        "head_rss_growth": check("head_rss_growth", res["rss"]["head_rss_growth"]),
        "cached_finetune_speedup": check("cached_finetune_speedup", ft["cached_finetune_speedup"]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    md = markdown(res)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write(md)
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    print(f"wrote {a.out} and {os.path.splitext(a.out)[0]}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
