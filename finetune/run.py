"""Stage 3 as a library: one skeleton for both paths, end to end (finetune/endtoend.py) and cached (finetune/cached.py).

Reads DATA, FEATURES and HEAD_DIR. Writes MODEL_DIR (finetune/record.py), and MODEL_DIR/_work/ while training.
Example: python -m finetune --data data/train --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune

checks -> config -> up to date? -> build -> equivalence -> fit -> scores -> artifacts; the path object supplies
what differs: the cache it needs, its equivalence check, the network it trains, its data and its evaluation.
"""
import dataclasses
import os
import time
from dataclasses import dataclass

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from classify import calibrate
from classify.head import loss_name
from classify.record import read_head_record
from core import precision, space, tblogs
from core.files import fingerprint
from core.lock import output_lock
from core.metrics import scores
from core.runs import DEFAULT_CHECKPOINT_S, RunState, best_epoch
from core.versions import package_versions
from extract.verify import check_same_images

from . import model as fm, record, train
from .cached import CachedPath
from .endtoend import EndToEndPath

DEFAULT_EPOCHS = 10  # an upper bound: early stopping (PATIENCE) usually ends the run sooner
DEFAULT_BATCH = 32  # the usual fine-tuning batch for these backbones on one device; lower it (BATCH=16) if memory runs out
DEFAULT_LR = 1e-5  # the recipe's: small enough not to undo the pretrained features in the unfrozen block
CACHE_KEYS = ("backbone", "layer", "image_size", "preprocessing", "resize", "weights", "weights_file", "weights_sha256",
              "class_names", "val_split", "split_seed")


@dataclass(frozen=True)
class Settings:
    """Everything `make finetune` is told (Make variables, README "Stage 3")."""

    data: str = "data/train"
    features: str = "artifacts/features.h5"
    head_dir: str = "artifacts/head"
    model_dir: str = "artifacts/finetune"
    unfreeze_from: str = ""  # UNFREEZE_FROM; empty: the cache's backbone's default (extract/backbones.py)
    epochs: int = DEFAULT_EPOCHS
    batch: int = DEFAULT_BATCH
    lr: float = DEFAULT_LR
    patience: int = train.PATIENCE
    seed: int = 42
    mixed_precision: str = "auto"
    xla: bool = False
    from_cache: bool = False
    precision: str = "auto"  # auto | float32 | bfloat16 (core/precision.py); MIXED_PRECISION on a GPU wins over it
    mem_budget: str = "auto"  # MEM_BUDGET (FROM_CACHE=1): hold the cached features and views in memory if they fit
    checkpoint_s: float = DEFAULT_CHECKPOINT_S  # CHECKPOINT_S: commit MODEL_DIR/_work/ at most this often
    tb_dir: str = ""  # TB_DIR: TensorBoard logs in TB_DIR/finetune (core/tblogs.py); empty: none


def precisions(resolved: str, mixed: bool) -> tuple:
    """(the training copy's compute, the exported model's): mixed_float16 trains, exports float32 as before; else
    PRECISION as core.precision.resolve made it for training (auto: float32, see core.precision.AUTO_BF16) for both."""
    return ("mixed_float16", "float32") if mixed else (resolved, resolved)


def resolve_config(s: Settings, cache, head, path, mixed: bool, gpus: int, replicas: int, train_in="float32",
                   export_in="float32") -> dict:
    """Everything that decides the fine-tuned weights (fingerprinted), plus where things came from."""
    # bf16 training only when used: float32 and mixed_float16 runs keep the fingerprints they had before PRECISION.
    bf16 = {"precision": train_in} if train_in == "bfloat16" else {}
    run = {"cache_fingerprint": cache.fingerprint, "head_sha256": head.sha256(), "unfreeze_from": s.unfreeze_from,
           "epochs": s.epochs, "batch": s.batch, "lr": s.lr, "patience": s.patience, "seed": s.seed,
           "mixed_precision": mixed, "xla": bool(s.xla), **bf16, **path.run_fields(s, cache)}
    return {**run, "run_fingerprint": fingerprint(run), "cut_layer": head.layer,
            "mixed_precision_flag": s.mixed_precision, "precision": export_in, "training_precision": train_in,
            "cache_precision": cache.precision, **precision.record(s.precision), "checkpoint_s": s.checkpoint_s,
            "mem_budget": s.mem_budget,
            "tb_dir": os.path.abspath(s.tb_dir) if s.tb_dir else None,
            "gpus": gpus, "replicas": replicas,
            "global_batch": s.batch, "per_replica_batch": s.batch // replicas,
            "batch_rule": "every training batch holds BATCH rows, the last padded with zero-weight rows",
            "optimizer": "adam", "loss": loss_name(len(cache.class_names)), "monitor": "val_loss",
            "data": os.path.abspath(s.data) if s.data else None, "features": os.path.abspath(s.features),
            "head_dir": os.path.abspath(s.head_dir), "model_dir": os.path.abspath(s.model_dir),
            "head_cache": head.as_dict(), "versions": package_versions(), **{k: cache.config[k] for k in CACHE_KEYS},
            # an ensemble's members; the entry and its arguments where it has arguments (extract/backbones.py)
            **{k: cache.config[k] for k in ("backbones", "backbone_entry", "backbone_args") if k in cache.config}}


def finetune(s: Settings) -> int:
    """`make finetune`: the checks, the equivalence proof, the fine-tuning and MODEL_DIR, for either path."""
    with output_lock(s.model_dir, "MODEL_DIR"), open_cache(s.features, need_labels=True, fix="make features") as cache:
        return _run(s, cache, CachedPath() if s.from_cache else EndToEndPath())


def _run(s: Settings, cache, path) -> int:
    t_start = time.perf_counter()
    fm.check_recipe(cache.config, cache.path)
    s = dataclasses.replace(s, unfreeze_from=fm.unfreeze_from(cache.config, s.unfreeze_from))  # resolved once
    path.check_cache(cache, s.unfreeze_from)
    head = read_head_record(s.head_dir, cache)
    path.check_head_layer(cache, s.unfreeze_from, head.layer)
    if s.data:  # the images must be the ones cached (relative paths and sizes)
        check_same_images(s.data, cache)
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    strategy = train.make_strategy()  # MirroredStrategy when 2+ GPUs are visible
    replicas = strategy.num_replicas_in_sync
    train.check_batch(s.batch, replicas)
    mixed = path.mixed_precision(s.mixed_precision, gpus)
    resolved = precision.resolve(s.precision, "training", gpu=bool(gpus))
    train_in, export_in = precisions(resolved, mixed)
    print(precision.describe(s.precision, resolved, use="training") +
          (f"; training in {train_in} (MIXED_PRECISION)" if mixed else ""))
    cfg = resolve_config(s, cache, head, path, mixed, len(gpus), replicas, train_in, export_in)
    model_path = os.path.join(s.model_dir, record.MODEL_FILE)
    if record.up_to_date(s.model_dir, cfg["run_fingerprint"]):
        print(f"{model_path}: up to date (run fingerprint {cfg['run_fingerprint'][:12]}); nothing to do")
        return 0
    weights_info = fm.resolve_cache_weights(cache)
    model, trunk, head_src = fm.assemble(cache, s.head_dir, head.layer, weights_info, head.head)
    space.check_space(model_path, space.checkpoint_bytes(model.count_params()), "MODEL_DIR")
    fm.trainable_names(trunk, s.unfreeze_from)  # a wrong UNFREEZE_FROM fails now, not after the equivalence pass
    eq, p_before = path.equivalence(model, trunk, head_src, cache, head, s)

    # The model that trains: `model` itself (built in the cache's precision for the equivalence check), or a copy
    # built in the training precision (bf16 or mixed_float16 compute, float32 variables; the head stays float32)
    # and/or inside the strategy's scope, which must create the variables to mirror them.
    tm, tt = model, trunk
    with strategy.scope():
        if train_in != cache.precision or replicas > 1:
            tm, tt = fm.build(cache, weights_info, head.layer, train_in, head_config=head.head)
            tm.set_weights(model.get_weights())
        trained, names = path.trained(tm, tt, s.unfreeze_from)
        train.compile_for_finetuning(trained, s.lr, cfg["xla"], len(cache.class_names))  # after set_trainable: compile fixes what trains
    keras.utils.set_random_seed(s.seed)

    tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
    ds_train, ds_val, feeds = path.datasets(cache, s, tr, va, replicas)
    cfg["data_note"] = path.data_note  # the cached path: in memory or streamed, and why (not in the fingerprint)
    print(f"{path.name} fine-tuning {len(names) - 1} layers from {s.unfreeze_from!r} + head "
          f"({sum(int(v.numpy().size) for v in trained.trainable_weights):,} parameters) {path.describe(s, cache, tr)}, "
          f"{train_in} compute, XLA {'on' if cfg['xla'] else 'off'}, "
          f"{replicas} replica(s) x {s.batch // replicas} images")
    run = RunState(s.model_dir, {"run_fingerprint": cfg["run_fingerprint"]}, s.checkpoint_s,
                   tblogs.stage_dir(s.tb_dir, "finetune"))
    t_fit = time.perf_counter()
    resume = train.fit(trained, ds_train, ds_val, run, s.epochs, s.patience, feeds)
    fit_s = time.perf_counter() - t_fit
    if tm is not model:  # `model` (one device, the cache's precision) gets the trained weights: the export check
        model.set_weights(tm.get_weights())
    # The artifact computes in its training precision (mixed_float16 exports float32), on one device.
    em, et = model, trunk
    if export_in != cache.precision:
        em, et = (tm, tt) if train_in == export_in and replicas == 1 else fm.build(
            cache, weights_info, head.layer, export_in, head_config=head.head)
        if em is not tm:
            em.set_weights(tm.get_weights())
    y_val, p_after, extra = path.evaluate(em, et, cache, s, va, reference=(model, trunk))
    before, after = scores(cache.labels[va], p_before), scores(y_val, p_after)
    calibration = calibrate.fit_temperature(y_val, p_after)  # on val (n, K) after training; predict applies it
    print(calibrate.describe(calibration))
    rows = run.rows()
    n_here = len(rows) - resume
    rate = n_here * len(tr) / fit_s if fit_s else 0.0
    metrics = {**extra, "reload_max_abs_diff": eq["max_abs_diff"], "equivalence": eq, "before": before,
               "after": after, "best_epoch": best_epoch(rows), "resumed_after_epoch": resume,
               "trainable_layers": names, "calibration": calibration, "temperature": calibration["temperature"],
               "seconds": {"fit_this_run": fit_s, "total_this_run": time.perf_counter() - t_start},
               "images_per_second": {"fit": rate, **({"equivalence_check": eq["images_per_second"]}
                                                    if "images_per_second" in eq else {})},
               "config": cfg}
    print(run.describe())
    record.write_artifacts(em, s.model_dir, metrics, cache, rows, path.curves_title(s, cache))
    run.clear()  # model.keras and metrics.json are written: the run is complete
    print(f"{model_path}: {len(rows)} epochs (best {metrics['best_epoch'] + 1}) on {len(tr)} images, this run "
          f"{n_here} in {fit_s:.1f}s, {rate:.1f} images/s; val {change(before, after)}")
    return 0


def change(before: dict, after: dict) -> str:
    """'accuracy a -> b, log loss c -> d, AUC e -> f' (AUC '-' where undefined)."""
    def f(v):
        return "-" if v is None else f"{v:.4f}"

    return ", ".join(f"{name} {f(before[k])} -> {f(after[k])}"
                     for name, k in (("accuracy", "accuracy"), ("log loss", "log_loss"), ("AUC", "auc")))
