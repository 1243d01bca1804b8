"""Cached fine-tuning: train the mixed7 block and the head on cached mixed6 features, write the full model.

Reads FEATURES (a cache with LAYERS=mixed6,mixed7, optionally AUG_VIEWS=K augmented views at mixed6), HEAD_DIR
(head.keras + metrics.json, trained on that cache's mixed7) and DATA (only to check the exported model on a few val
images). Writes MODEL_DIR/model.keras (the same InceptionV3 + head artifact as end-to-end stage 3, loaded by
`make predict` and `make submission`), MODEL_DIR/metrics.json and MODEL_DIR/curves.png; MODEL_DIR/_work/ while running.
Example: python -m finetune --from-cache --data data/train --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune

Why it is exact: with UNFREEZE_FROM=mixed6 every layer up to mixed6 is frozen and BatchNorm runs in inference mode,
so mixed6's output is a fixed function of the image, which is what the cache holds. The trained network is the
full model's own sub-graph from mixed6 to mixed7 (keras.Model between two of its tensors), so its layers *are* the
full model's layers: training it trains the full model, and exporting is saving that. Settings, callbacks, resume
and early stopping are stage 3's (finetune/train.py); only the input differs: each epoch every train image is one
view drawn uniformly from its clean features and its K cached views; validation uses the clean view.
"""
import os
import time

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, CacheMismatch, WorkflowError, fingerprint, open_cache
from classify.data import Feeds
from extract import images
from extract.backbone import FEATURE_LAYER

from . import model as fm, train
from .train import predict_rows

EXPORT_CHECK_ROWS = 64  # val images the saved model is checked on: a wrong or stale weight moves every prediction,
# so a few dozen catch it, for seconds of full-network inference instead of a pass over the whole val set
VIEW_STREAM = 1  # third seed word of the view draws, so they never reuse epoch_windows' stream (seed, epoch)


def check_cache_layers(cache, unfreeze_from: str, head_layer: str = FEATURE_LAYER):
    """The cache must hold the features the block reads (UNFREEZE_FROM) and the head's layer."""
    fix = (f"rebuild it with `make features LAYERS={unfreeze_from},{head_layer} AUG_VIEWS=2 FEATURES={cache.path}`, "
           f"then retrain the head on it: `make head LAYER={head_layer} FEATURES={cache.path}`")
    if unfreeze_from not in cache.layers or head_layer not in cache.layers:
        raise CacheMismatch(f"{cache.path}: cached fine-tuning trains the layers from {unfreeze_from} to {head_layer} "
                            f"on cached {unfreeze_from} features and checks them against {head_layer}, but the cache "
                            f"holds {','.join(cache.layers)}; {fix}")


def build_cached_model(model, trunk, unfreeze_from: str):
    """(cached model: UNFREEZE_FROM features -> P(class 1), trained layer names), made of `model`'s own layers and
    trainable exactly as stage 3's rule (fm.set_trainable) makes them. Recompile after this."""
    import keras

    names = fm.set_trainable(model, trunk, unfreeze_from)
    src = trunk.get_layer(unfreeze_from).output
    cut = trunk.layers[-1].name
    try:
        # Keras clones the graph nodes between the two tensors and keeps the layer objects: weights are shared.
        block = keras.Model(src, trunk.outputs[0], name=f"{unfreeze_from}_to_{cut}")
    except ValueError as e:
        raise WorkflowError(f"UNFREEZE_FROM={unfreeze_from}: the layers after it also read earlier layers, so its "
                            f"output alone cannot feed them ({str(e)[:80]}); use a block boundary such as mixed6"
                            ) from None
    inp = keras.Input(tuple(src.shape[1:]), name=f"{unfreeze_from}_features")
    cached = keras.Model(inp, model.get_layer("head")(block(inp)), name=f"{unfreeze_from}_features_{cut}_head")
    # The equivalence rests on this: the cached model trains the very variables stage 3 trains, no more, no fewer.
    if {id(v) for v in cached.trainable_weights} != {id(v) for v in model.trainable_weights}:
        raise WorkflowError(f"UNFREEZE_FROM={unfreeze_from}: the layers stage 3 would train are not exactly those "
                            f"between {unfreeze_from} and {cut}; use a block boundary such as mixed6")
    return cached, names


class ViewFeeds(Feeds):
    """classify.data.Feeds (chunk-aligned, streamed, the same order per seed and epoch) over `layer`, where each
    epoch every train row reads one view drawn uniformly from {clean, its K cached views}; val rows read clean."""

    def __post_init__(self):
        super().__post_init__()
        self.k = self.cache.n_views(self.layer)
        self.is_train = np.zeros(len(self.cache), bool)
        self.is_train[self.train_rows] = True
        self._draws = (None, None)

    def draws(self, epoch: int) -> np.ndarray:
        """Per row: 0 = the clean features, v >= 1 = cached view v - 1. Depends only on (seed, epoch): resumable."""
        if self._draws[0] != epoch:
            d = np.random.default_rng([self.seed, epoch, VIEW_STREAM]).integers(0, self.k + 1, len(self.cache))
            self._draws = (epoch, np.where(self.is_train, d, 0))
        return self._draws[1]

    def read(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        d = self.draws(self.epoch)[rows]
        aug = d > 0
        if not aug.any():
            return self.cache.read(rows, self.layer)
        x = np.empty((len(rows),) + self.shape, np.float32)
        x[~aug] = self.cache.read(rows[~aug], self.layer)
        x[aug] = self.cache.read_views(rows[aug], d[aug] - 1, self.layer)
        return x


def block_equivalence(cached, head_src, cache, unfreeze_from, head_layer, batch: int, record=None, head_dir=""):
    """(report, P before fine-tuning): the cached model on val `unfreeze_from` features vs the stage-2 head on val
    `head_layer` features; raises EquivalenceError beyond RELOAD_TOL (the cache's layers and the rebuilt backbone
    disagree)."""
    rows = cache.rows(SPLIT_VAL)
    t0 = time.perf_counter()
    p_cached = predict_rows(cached, cache, unfreeze_from, rows, batch)
    p_head = predict_rows(head_src, cache, head_layer, rows, batch)
    train.check_recorded_scores(p_head, cache.labels[rows], record or {}, head_dir)
    diff = float(np.max(np.abs(p_cached - p_head))) if len(rows) else 0.0
    if not diff <= fm.RELOAD_TOL:  # `not <=` also catches NaN
        raise fm.EquivalenceError(
            f"equivalence check failed, not fine-tuning: the {unfreeze_from}->{head_layer} block + head on the cached "
            f"{unfreeze_from} features of {len(rows)} val rows differs from the head on their cached {head_layer} "
            f"features by up to {diff:.3g} (tolerance {fm.RELOAD_TOL}); rebuild both with the same settings: "
            f"`make features LAYERS={unfreeze_from},{head_layer} FEATURES={cache.path}` then `make head`")
    return {"n_val": len(rows), "max_abs_diff": diff, "tolerance": fm.RELOAD_TOL,
            "seconds": time.perf_counter() - t0}, p_head


def export_check(model, cached, cache, unfreeze_from, data_root, batch: int, n=EXPORT_CHECK_ROWS) -> dict:
    """The full model on the first `n` val images vs the cached model on their cached features, before saving."""
    rows = cache.rows(SPLIT_VAL)[:n]
    paths = [cache.paths[i] for i in rows]
    p_cached = predict_rows(cached, cache, unfreeze_from, rows, batch)
    p_full, forward = np.full(len(rows), np.nan), train.forward_fn(model)
    for idx, x, ok, reason in images.image_dataset(data_root, paths, cache.config["image_size"], batch):
        p_full[idx.numpy()] = forward(x)  # an image that no longer decodes gives NaN: it fails the check below
    diff = float(np.max(np.abs(p_full - p_cached))) if len(rows) else 0.0
    if not diff <= fm.RELOAD_TOL:
        raise fm.EquivalenceError(
            f"export check failed, model.keras not written: the full model on {len(rows)} val images of "
            f"DATA={data_root} differs from the cached model on their features by up to {diff:.3g} (tolerance {fm.RELOAD_TOL}); are "
            f"these the images the cache was built from? Rebuild with `make features FEATURES={cache.path}`")
    return {"n_images": len(rows), "max_abs_diff": diff, "tolerance": fm.RELOAD_TOL}


def resolve_config(a, cache, head_record) -> dict:
    """What decides the fine-tuned weights (fingerprinted), plus where things came from, as stage 3 records it."""
    from extract.__main__ import package_versions

    run = {"path": "cached", "cache_fingerprint": cache.fingerprint,
           "head_sha256": fm.file_sha256(os.path.join(a.head_dir, "head.keras")),
           "unfreeze_from": a.unfreeze_from, "epochs": a.epochs, "batch": a.batch, "lr": a.lr,
           "patience": a.patience, "seed": a.seed, "xla": bool(a.xla), "aug_views": cache.n_views(a.unfreeze_from),
           "augmentation": cache.config.get("augmentation"),
           "view_draw": "per epoch, each train image: one of {clean, K cached views}, uniform, seeded (SEED, epoch)"}
    cfg = cache.config
    return {**run, "run_fingerprint": fingerprint(run), "cut_layer": head_record["layer"], "mixed_precision": False,
            "optimizer": "adam", "loss": "binary_crossentropy", "monitor": "val_loss",
            "data": os.path.abspath(a.data) if a.data else None, "features": os.path.abspath(a.features),
            "head_dir": os.path.abspath(a.head_dir), "model_dir": os.path.abspath(a.model_dir),
            "head_cache": head_record, "versions": package_versions(),
            **{k: cfg[k] for k in ("backbone", "layer", "image_size", "preprocessing", "resize", "weights",
                                   "weights_file", "weights_sha256", "class_names", "val_split", "split_seed")}}


def build_models(cache, head_dir, unfreeze_from, head_layer):
    """(full model with the stage-2 head's weights, its trunk, the cached model, trained names, stage-2 head)."""
    model, trunk = fm.build_full_model(cache.config, fm.resolve_cache_weights(cache), head_layer,
                                       cache.feature_shape(head_layer), cache.provenance["backbone_digest"], cache.path)
    head_src = fm.load_head(head_dir)
    fm.copy_head_weights(model.get_layer("head"), head_src, head_dir)
    cached, names = build_cached_model(model, trunk, unfreeze_from)
    return model, trunk, cached, names, head_src


def run_cached(a) -> int:
    """`python -m finetune --from-cache`: checks, cached fine-tuning and the full-model artifact, for stage 3's
    parsed arguments `a` (data, features, head_dir, model_dir, unfreeze_from, epochs, batch, lr, patience, seed,
    xla)."""
    with open_cache(a.features, need_labels=True, fix="make features") as cache:
        return _run(a, cache)


def _run(a, cache) -> int:
    t_start = time.perf_counter()
    fm.check_recipe(cache.config, cache.path)
    if a.unfreeze_from not in cache.layers:  # before the head's check: a new cache needs a new head anyway
        check_cache_layers(cache, a.unfreeze_from)
    head_record = fm.check_head_dir(a.head_dir, cache)
    head_layer = head_record["layer"]
    check_cache_layers(cache, a.unfreeze_from, head_layer)
    if a.data:
        from finetune.__main__ import check_data  # the images must be the ones cached (relative paths and sizes)

        check_data(a.data, cache)
    import keras

    if getattr(a, "mixed_precision", "off") == "on":
        print("note: cached fine-tuning runs in float32; MIXED_PRECISION applies to the end-to-end path")
    cfg = resolve_config(a, cache, head_record)
    model_path = os.path.join(a.model_dir, "model.keras")
    if train.up_to_date(a.model_dir, cfg["run_fingerprint"]):
        print(f"{model_path}: up to date (run fingerprint {cfg['run_fingerprint'][:12]}); nothing to do")
        return 0
    model, trunk, cached, names, head_src = build_models(cache, a.head_dir, a.unfreeze_from, head_layer)
    eq, p_before = block_equivalence(cached, head_src, cache, a.unfreeze_from, head_layer, a.batch, head_record,
                                     a.head_dir)
    print(f"equivalence: {eq['n_val']} val rows, max |P(block + head on {a.unfreeze_from}) - P(head on "
          f"{head_layer})| = {eq['max_abs_diff']:.2e} <= {fm.RELOAD_TOL} ({eq['seconds']:.1f}s)")

    train.compile_for_finetuning(cached, a.lr, cfg["xla"])  # after set_trainable: compile fixes what is trained
    keras.utils.set_random_seed(a.seed)
    tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
    feeds = ViewFeeds(cache, a.unfreeze_from, tr, va, a.batch, a.seed, 1.0, False)
    w, resume_epoch = train.prepare_work_dir(a.model_dir, cfg["run_fingerprint"])
    if resume_epoch:
        print(f"{a.model_dir}: resuming a killed run after epoch {resume_epoch}/{a.epochs}")
    print(f"cached fine-tuning {len(names) - 1} layers from {a.unfreeze_from!r} + head "
          f"({sum(int(v.numpy().size) for v in cached.trainable_weights):,} parameters) on {len(tr)} images x "
          f"(clean + {feeds.k} cached views) of {a.unfreeze_from} {feeds.shape}, streamed from {cache.path}")
    from classify.train import EpochFeed  # sets the epoch the view draws and the order depend on

    t_fit = time.perf_counter()
    cached.fit(feeds.train(), validation_data=feeds.val(), epochs=a.epochs, verbose=1, shuffle=False,
               callbacks=[EpochFeed(feeds), *train.make_callbacks(w, resume_epoch, a.patience)])
    fit_s = time.perf_counter() - t_fit
    history = train.read_history(w["history"])
    n_epochs_here = len(history.get("epoch", [])) - resume_epoch
    if os.path.exists(w["best"]):
        cached.load_weights(w["best"])  # the best val_loss epoch; the layers are the full model's, so it has them
    p_after = predict_rows(cached, cache, a.unfreeze_from, va, a.batch)
    exported = export_check(model, cached, cache, a.unfreeze_from, a.data, a.batch) if a.data else None
    if exported:
        print(f"export: full model on {exported['n_images']} val images vs the cached model on their features, "
              f"max |diff| = {exported['max_abs_diff']:.2e} <= {fm.RELOAD_TOL}")
    before, after = train.scores(cache.labels[va], p_before), train.scores(cache.labels[va], p_after)
    best_epoch = int(history["epoch"][int(np.argmin(history["val_loss"]))])
    rate = n_epochs_here * len(tr) / fit_s if fit_s else 0.0
    metrics = {"path": "cached", "reload_max_abs_diff": eq["max_abs_diff"], "equivalence": eq, "export_check": exported,
               "before": before, "after": after, "history": history, "best_epoch": best_epoch,
               "resumed_after_epoch": resume_epoch, "trainable_layers": names,
               "seconds": {"fit_this_run": fit_s, "total_this_run": time.perf_counter() - t_start},
               "images_per_second": {"fit": rate}, "config": cfg}
    train.write_artifacts(model, a.model_dir, w, metrics, cache,
                          f"cached fine-tuning from {a.unfreeze_from} (clean + {feeds.k} views), LR {a.lr:g}, "
                          f"{cache.config['image_size']}px, {cache.config['weights']} weights")
    print(f"{model_path}: {len(history['epoch'])} epochs (best {best_epoch + 1}) on {len(tr)} cached images, this "
          f"run {n_epochs_here} in {fit_s:.1f}s, {rate:.1f} images/s; val accuracy {before['accuracy']:.4f} -> "
          f"{after['accuracy']:.4f}, log loss {before['log_loss']:.4f} -> {after['log_loss']:.4f}")
    return 0
