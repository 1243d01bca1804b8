"""Stage 3: put the stage-2 head back on InceptionV3, prove nothing changed, fine-tune from UNFREEZE_FROM.

Reads DATA (the images the cache was built from), FEATURES (its record and val features), HEAD_DIR/head.keras and
HEAD_DIR/metrics.json. Writes MODEL_DIR/model.keras (self-contained, float32), MODEL_DIR/metrics.json, MODEL_DIR/curves.png.
Example: python -m finetune --data data/train --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune

Killed at any moment, the same command resumes from the last finished epoch (MODEL_DIR/_work/). With the same
inputs and settings as an existing model.keras it is a quick no-op ("up to date").

Two paths write the same model.keras: end to end from the image files (default; on-the-fly augmentation, mixed
precision and several GPUs), or with `--from-cache 1` (FROM_CACHE=1) from cached mixed6 features and augmented
views (finetune/cached.py; a tenth of the work per step, for CPUs).
"""
import argparse
import os
import time

from cache import SPLIT_TRAIN, SPLIT_VAL, WorkflowError, cli, fingerprint, open_cache
from extract import images

from . import data, model as fm, train

DEFAULT_EPOCHS = 10  # an upper bound: early stopping (PATIENCE) usually ends the run sooner
DEFAULT_BATCH = 32  # the usual InceptionV3 fine-tuning batch; lower it (BATCH=16) if memory runs out
DEFAULT_LR = 1e-5  # the recipe's: small enough not to undo the pretrained features in the unfrozen block


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/train", help="the image folder the cache was built from (DATA)")
    p.add_argument("--features", default="artifacts/features.h5", help="stage-1 cache (FEATURES)")
    p.add_argument("--head-dir", default="artifacts/head", help="stage-2 output folder (HEAD_DIR)")
    p.add_argument("--model-dir", default="artifacts/finetune", help="output folder (MODEL_DIR)")
    p.add_argument("--unfreeze-from", default=fm.UNFREEZE_FROM, help="first layer to train (UNFREEZE_FROM)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="maximum epochs (EPOCHS)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per step (BATCH)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate (LR)")
    p.add_argument("--patience", type=int, default=train.PATIENCE, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=42, help="shuffle/augmentation/dropout seed (SEED)")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"],
                   help="float16 compute with float32 weights and output; auto = on iff a GPU is visible")
    p.add_argument("--xla", type=int, default=0, choices=[0, 1], help="compile the train step with XLA (XLA)")
    p.add_argument("--from-cache", type=int, default=0, choices=[0, 1],
                   help="1: train the block after UNFREEZE_FROM + head on cached features and views (FROM_CACHE)")
    a = p.parse_args(argv)
    for name, value in (("EPOCHS", a.epochs), ("BATCH", a.batch), ("LR", a.lr)):
        if not value > 0:
            raise WorkflowError(f"{name}={value}: must be positive, e.g. EPOCHS=10 BATCH=32 LR=1e-5")
    if a.patience < 0:
        raise WorkflowError(f"--patience={a.patience}: must be >= 0 (0 stops at the first epoch without progress)")
    return a


def check_data(root, cache):
    """DATA must hold exactly the files the cache was built from (relative paths and sizes)."""
    imgs = images.discover(root)
    if imgs.files_fingerprint() != cache.config["inputs_fingerprint"]:
        raise WorkflowError(f"DATA={root}: not the image set FEATURES={cache.path} was built from "
                            f"({cache.config['data']}, {cache.config['n_inputs']} files); pass that folder as DATA, "
                            f"or rebuild the cache with `make features DATA={root} FEATURES={cache.path}`")
    return imgs


def resolve_config(a, cache, head_record, gpus, replicas=1) -> dict:
    """Everything that decides the fine-tuned weights (fingerprinted), plus where things came from."""
    from extract.__main__ import package_versions

    mp = {"auto": bool(gpus), "on": True, "off": False}[a.mixed_precision]
    cfg = cache.config
    run = {"cache_fingerprint": cache.fingerprint, "head_sha256": fm.file_sha256(os.path.join(a.head_dir, "head.keras")),
           "unfreeze_from": a.unfreeze_from, "epochs": a.epochs, "batch": a.batch, "lr": a.lr, "patience": a.patience,
           "seed": a.seed, "mixed_precision": mp, "xla": bool(a.xla), "augmentation": {
               "flip": data.FLIP, "rotation": data.ROTATION, "zoom": data.ZOOM, "translation": data.TRANSLATION}}
    return {**run, "run_fingerprint": fingerprint(run), "cut_layer": head_record["layer"],
            "mixed_precision_flag": a.mixed_precision, "gpus": len(gpus), "replicas": replicas,
            "global_batch": a.batch, "per_replica_batch": a.batch // replicas,
            "optimizer": "adam", "loss": "binary_crossentropy", "monitor": "val_loss",
            "data": os.path.abspath(a.data), "features": os.path.abspath(a.features),
            "head_dir": os.path.abspath(a.head_dir), "model_dir": os.path.abspath(a.model_dir),
            "head_cache": head_record, "versions": package_versions(),
            **{k: cfg[k] for k in ("backbone", "layer", "image_size", "preprocessing", "resize", "weights",
                                   "weights_file", "weights_sha256", "class_names", "val_split", "split_seed")}}


def build(cache, weights_info, layer, mixed: bool):
    """The full model, built under the float32 or the mixed_float16 policy (then reset to float32)."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        # The digest check runs on the float32 build only: it is the one compared with the cache.
        return fm.build_full_model(cache.config, weights_info, layer, cache.feature_shape(layer),
                                   None if mixed else cache.provenance["backbone_digest"], cache.path)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@cli
def main(argv=None):
    a = parse_args(argv)
    if a.from_cache:
        from .cached import run_cached

        return run_cached(a)
    with open_cache(a.features, need_labels=True, fix="make features") as cache:
        return run(a, cache)


def run(a, cache) -> int:
    """Checks, equivalence, fine-tuning and artifacts for parsed arguments `a` on an open cache."""
    t_start = time.perf_counter()
    fm.check_recipe(cache.config, cache.path)
    head_record = fm.check_head_dir(a.head_dir, cache)
    check_data(a.data, cache)
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    strategy = train.make_strategy()  # MirroredStrategy when 2+ GPUs are visible
    replicas = strategy.num_replicas_in_sync
    if a.batch % replicas:
        raise WorkflowError(f"BATCH={a.batch}: with {replicas} GPUs the global batch must split evenly; use "
                            f"BATCH={max(1, a.batch // replicas) * replicas}")
    cfg = resolve_config(a, cache, head_record, gpus, replicas)
    if cfg["mixed_precision"] and not gpus:
        print("note: MIXED_PRECISION=on without a GPU: CPUs emulate float16, expect it to be slower than off")
    model_path = os.path.join(a.model_dir, "model.keras")
    if train.up_to_date(a.model_dir, cfg["run_fingerprint"]):
        print(f"{model_path}: up to date (run fingerprint {cfg['run_fingerprint'][:12]}); nothing to do")
        return 0
    weights_info = fm.resolve_cache_weights(cache)
    layer = head_record["layer"]
    model, trunk = build(cache, weights_info, layer, mixed=False)
    fm.trainable_names(trunk, a.unfreeze_from)  # a wrong UNFREEZE_FROM fails now, not after the equivalence pass
    head_src = fm.load_head(a.head_dir)
    fm.copy_head_weights(model.get_layer("head"), head_src, a.head_dir)
    eq, p_before = train.equivalence_check(model, head_src, cache, layer, a.data, a.batch, head_record, a.head_dir)
    print(f"equivalence: {eq['n_val']} val images, max |P(full) - P(head on cache)| = {eq['max_abs_diff']:.2e} "
          f"<= {fm.RELOAD_TOL}, val accuracy {eq['val_accuracy_full']:.4f} both ({eq['seconds']:.1f}s, "
          f"{eq['images_per_second']:.1f} images/s)")

    # The model that trains: `model` itself, or a copy built under the mixed_float16 policy (float16 compute,
    # float32 variables; build_head keeps the sigmoid in float32) and/or inside the strategy's scope, which must
    # create the variables to mirror them. `model` stays float32 on one device: it is what gets saved.
    tm, tt = model, trunk
    with strategy.scope():
        if cfg["mixed_precision"] or replicas > 1:
            tm, tt = build(cache, weights_info, layer, mixed=cfg["mixed_precision"])
            tm.set_weights(model.get_weights())
        names = fm.set_trainable(tm, tt, a.unfreeze_from)
        train.compile_for_finetuning(tm, a.lr, cfg["xla"])  # after set_trainable: compile fixes what is trained
    keras.utils.set_random_seed(a.seed)

    tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
    size = cache.config["image_size"]
    ds_train = data.labelled_dataset(a.data, [cache.paths[i] for i in tr], cache.labels[tr], size, a.batch,
                                     seed=a.seed, augment=True)
    ds_val = data.labelled_dataset(a.data, [cache.paths[i] for i in va], cache.labels[va], size, a.batch)
    w, resume_epoch = train.prepare_work_dir(a.model_dir, cfg["run_fingerprint"])
    if resume_epoch:
        print(f"{a.model_dir}: resuming a killed run after epoch {resume_epoch}/{a.epochs}")
    print(f"fine-tuning {len(names) - 1} layers from {a.unfreeze_from!r} + head "
          f"({sum(int(v.numpy().size) for v in tm.trainable_weights):,} parameters) on {len(tr)} images, "
          f"mixed precision {'on' if cfg['mixed_precision'] else 'off'}, XLA {'on' if cfg['xla'] else 'off'}, "
          f"{replicas} replica(s) x {a.batch // replicas} images")
    t_fit = time.perf_counter()
    tm.fit(ds_train, validation_data=ds_val, epochs=a.epochs, verbose=1, shuffle=False,  # ds_train shuffles itself
           callbacks=train.make_callbacks(w, resume_epoch, a.patience))
    fit_s = time.perf_counter() - t_fit
    history = train.read_history(w["history"])
    n_epochs_here = len(history.get("epoch", [])) - resume_epoch
    if os.path.exists(w["best"]):
        tm.load_weights(w["best"])  # the best val_loss epoch, not the last one
    if tm is not model:
        model.set_weights(tm.get_weights())  # the artifact is float32: portable, and exact on CPUs
    y_val, p_after = train.predict_labelled(model, ds_val)
    before, after = train.scores(cache.labels[va], p_before), train.scores(y_val, p_after)
    best_epoch = int(history["epoch"][min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)])

    metrics = {"reload_max_abs_diff": eq["max_abs_diff"], "equivalence": eq, "before": before, "after": after,
               "history": history, "best_epoch": best_epoch, "resumed_after_epoch": resume_epoch,
               "trainable_layers": names,
               "seconds": {"fit_this_run": fit_s, "total_this_run": time.perf_counter() - t_start},
               "images_per_second": {"fit": n_epochs_here * len(tr) / fit_s if fit_s else 0.0,
                                     "equivalence_check": eq["images_per_second"]},
               "config": cfg}
    train.write_artifacts(model, a.model_dir, w, metrics, cache, f"fine-tuning from {a.unfreeze_from}, LR {a.lr:g}, "
                          f"{size}px, {cache.config['weights']} weights")
    print(f"{model_path}: {len(history['epoch'])} epochs (best {best_epoch + 1}) on {len(tr)} images, this run "
          f"{n_epochs_here} in {fit_s:.1f}s, {metrics['images_per_second']['fit']:.1f} images/s; val accuracy "
          f"{before['accuracy']:.4f} -> {after['accuracy']:.4f}, log loss {before['log_loss']:.4f} -> "
          f"{after['log_loss']:.4f}, AUC {before['auc']:.4f} -> {after['auc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
