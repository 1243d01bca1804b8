"""Stage 2 as a library: the baseline and the dense head on one cache, written into HEAD_DIR.

Reads FEATURES (a complete, labelled cache, only through `cache/`). Writes HEAD_DIR (classify/record.py).
Example: python -m classify --features artifacts/features.h5 --head-dir artifacts/head --seed 42 --mem-budget 2G

Killed at any moment, the same command resumes the head from its last finished epoch (HEAD_DIR/_work/).
"""
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from core import space, tblogs
from core.files import fingerprint
from core.lock import output_lock
from core.metrics import scores, val_keys
from core.runs import DEFAULT_CHECKPOINT_S, RunState, best_epoch

from . import baseline, calibrate, data, record
from .head import HEAD_DROPOUT, HEAD_UNITS, head_config, loss_name, probabilities

DEFAULT_EPOCHS = 20
# 64: ~310 steps per epoch on 20,000 train rows; on the synthetic set the head passed 0.9 val accuracy by epoch 5.
DEFAULT_BATCH = 64
# 1e-4: the recipe's rate. The head sees features scaled to unit RMS (see classify/train.py), so it means
# the same for ImageNet and random weights. On the synthetic set (6,912 inputs per row at 75 px) 1e-3
# overshot: val loss 12.3 after epoch 1 at BATCH=64, where 1e-4 fell steadily.
DEFAULT_LR = 1e-4
PATIENCE = 5  # epochs without a lower val loss before stopping; val loss on a few thousand rows is noisy


@dataclass(frozen=True)
class Settings:
    """Everything `make head` is told (Make variables, README "Stage 2")."""

    features: str = "artifacts/features.h5"
    head_dir: str = "artifacts/head"
    layer: str = ""  # LAYER; empty: the layer the cache records as its `features` (the backbone's feature layer)
    epochs: int = DEFAULT_EPOCHS
    batch: int = DEFAULT_BATCH
    lr: float = DEFAULT_LR
    seed: int = 42
    deterministic: bool = True
    xla: bool = True
    mem_budget: str = data.AUTO  # MEM_BUDGET: in memory when the features fit, else streamed (classify/data.py)
    head: str = "flatten"  # HEAD: the kind (classify/head.py)
    units: int = HEAD_UNITS
    dropout: float = HEAD_DROPOUT
    checkpoint_s: float = DEFAULT_CHECKPOINT_S  # CHECKPOINT_S: commit HEAD_DIR/_work/ at most this often (core/runs.py)
    tb_dir: str = ""  # TB_DIR: TensorBoard logs in TB_DIR/head (core/tblogs.py); empty: none

    def head_config_for(self, classes: int) -> dict:
        """The head's record for a cache of `classes` classes (K = 2 records no `classes`: as before K existed)."""
        return head_config(self.head, self.units, self.dropout, classes)

    @property
    def uses_xla(self) -> bool:
        """XLA only without op determinism: Keras refuses the pair (see classify/train.py)."""
        return bool(self.xla) and not self.deterministic


def rate(n, seconds) -> float:
    return n / seconds if seconds > 0 else 0.0


def run_baseline(cache, layer, seed, tr, va, head_dir):
    """Pool (streaming), fit on train rows, score on val rows, save; return (metrics, feature scale)."""
    t0 = time.perf_counter()
    rows, pooled, scale = data.pool_and_scale(cache, layer, np.concatenate([tr, va]), tr)
    dt = time.perf_counter() - t0
    print(f"pool: {len(rows):,} rows x {pooled.shape[1]} channels in {dt:.1f}s, {rate(len(rows), dt):,.0f} rows/s")
    x_tr, x_va = pooled[np.searchsorted(rows, tr)], pooled[np.searchsorted(rows, va)]
    model, seconds = baseline.fit(x_tr, cache.labels[tr], seed, len(cache.class_names))
    record.save_baseline(head_dir, model)
    m = {**val_keys(scores(cache.labels[va], model.predict_proba(x_va))), "n_train": len(tr), "n_val": len(va),
         "epochs": None, "seconds": round(seconds, 3), "examples_per_s": round(rate(len(tr), seconds), 1),
         "C": baseline.chosen_c(model), "features": f"global average pool of {layer}, {pooled.shape[1]} values"}
    print(f"baseline: {len(tr):,} train rows, C={m['C']:g} by CV, {seconds:.1f}s, {m['examples_per_s']:,.0f} "
          f"rows/s; val accuracy {m['val_accuracy']:.4f}")
    return m, scale


def run_head(cache, s: Settings, tr, va, scale, in_memory, identity):
    """Train, score the saved head on raw val features, save head.keras, history.csv and curves.png; return metrics."""
    from .train import train_head

    t0 = time.perf_counter()
    feeds = data.Feeds(cache, s.layer, tr, va, s.batch, s.seed, scale, in_memory)
    load_s = time.perf_counter() - t0
    run = RunState(s.head_dir, identity, s.checkpoint_s, tblogs.stage_dir(s.tb_dir, "head"))
    t1 = time.perf_counter()
    head = train_head(feeds, s.epochs, s.lr, s.seed, run, PATIENCE, xla=s.uses_xla, deterministic=s.deterministic,
                      head=identity["head"])
    history = run.rows()
    # `seconds` per epoch (history.csv) stops before the callbacks; the wall time and the commits show their cost
    m = {**head_metrics(head, feeds, history, s.head), "load_seconds": round(load_s, 3),
         "train_wall_seconds_this_run": round(time.perf_counter() - t1, 3), "commits_this_run": dict(run.commits)}
    print(run.describe())
    record.save_outputs(s.head_dir, head, history,
                        f"head on {os.path.basename(cache.path)} ({s.layer}), LR={s.lr:g}, BATCH={s.batch}")
    print(f"head: {len(history)} epochs x {len(tr):,} rows ({feeds.source}) in {m['seconds']:.1f}s, "
          f"{m['examples_per_s']:,.0f} examples/s; kept epoch {m['best_epoch']}, val accuracy {m['val_accuracy']:.4f}")
    return m, run


def head_metrics(head, feeds, history, kind: str) -> dict:
    """metrics.json's `head` block for a trained head: val scores of the saved (raw-feature) head, its temperature,
    and the run's epochs and seconds. Stage 2 and every sweep trial record the same block."""
    p = probabilities(head.predict(feeds.val(raw=True), verbose=0))  # (n, K)
    y = feeds.cache.labels[feeds.val_order]
    cal = calibrate.fit_temperature(y, p)  # recorded; applied at prediction time
    print(calibrate.describe(cal))
    seconds = sum(r["seconds"] for r in history)  # every epoch, including those before a kill
    n_train = len(feeds.train_rows)
    return {**val_keys(scores(y, p)), "n_train": n_train, "n_val": len(feeds.val_rows), "epochs": len(history),
            "best_epoch": best_epoch(history) + 1, "seconds": round(seconds, 3),
            "seconds_per_epoch": round(seconds / len(history), 3),
            "examples_per_s": round(rate(n_train * len(history), seconds), 1), "data": feeds.source, "kind": kind,
            "parameters": head.count_params(), "calibration": cal, "temperature": cal["temperature"]}


def train_head_dir(s: Settings) -> int:
    """`make head`: one writer per HEAD_DIR (a second run exits 2 at once), then `train_stage`."""
    with output_lock(s.head_dir, "HEAD_DIR"):
        return train_stage(s)


def train_stage(s: Settings) -> int:
    """The baseline, then the head, then metrics.json; prints the side-by-side table."""
    data.resolve_budget(s.mem_budget)  # a wrong MEM_BUDGET fails before any work
    with open_cache(s.features, layer=s.layer or None, need_labels=True, fix="make features") as cache:
        s = replace(s, layer=s.layer or cache.layer)  # resolved once: the cache's own layer unless LAYER is given
        shape = record.check_layer_shape(cache, s.layer)
        # A pooled head sees (1, 1, c): its weights are a rounding error next to a flatten head's.
        maps = shape if s.head == "flatten" else (1, 1, shape[-1])
        space.check_space(os.path.join(s.head_dir, record.HEAD_FILE),
                          space.checkpoint_bytes(space.head_weights(maps, s.units)), "HEAD_DIR")
        identity = {"cache_fingerprint": cache.fingerprint, "layer": s.layer, "feature_shape": list(shape),
                    "seed": s.seed, "batch": s.batch, "lr": s.lr, "head": s.head_config_for(len(cache.class_names))}
        run_fp = run_fingerprint(s, identity)
        if record.up_to_date(s.head_dir, run_fp):
            print(f"{s.head_dir}: up to date (a complete head of {cache.path}, fingerprint {cache.fingerprint[:12]}, "
                  f"run fingerprint {run_fp[:12]}); nothing to do")
            return 0
        made_from = record.read_metrics_or_empty(s.head_dir).get("cache", {}).get("fingerprint")
        if made_from and made_from != cache.fingerprint:
            print(f"{s.head_dir}: stale ({cache.stale_words(made_from)}); retraining")
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        in_memory, line = data.hold_in_memory(cache, np.concatenate([tr, va]), s.layer, s.mem_budget)
        print(f"{cache.summary()}\n{line}")
        record.begin(s.head_dir)
        # Baseline first: it needs no TensorFlow, and its memory is freed before the head's is taken.
        base_m, scale = run_baseline(cache, s.layer, s.seed, tr, va, s.head_dir)
        head_m, run = run_head(cache, s, tr, va, scale, in_memory, identity)
        settings = {k: v for k, v in asdict(s).items() if k not in ("head", "units", "dropout")}
        config = {**settings, "head": identity["head"], "run_fingerprint": run_fp,
                  "features": os.path.abspath(s.features), "head_dir": os.path.abspath(s.head_dir),
                  "data": head_m["data"], "data_note": line, "optimizer": "adam", "xla": s.uses_xla,
                  "loss": loss_name(len(cache.class_names)), "patience": PATIENCE, "feature_scale": scale,
                  "feature_scale_note": "the head was trained on features / feature_scale, then the scale was "
                                        "folded into the head's first Dense kernel (head_dense; head_output when "
                                        "UNITS=0): head.keras takes raw features",
                  "baseline_Cs": baseline.CS.tolist(), "cv_folds_max": baseline.CV_FOLDS,
                  "cache_config": cache.config}
        record.write_metrics(s.head_dir, head_m, base_m, cache, s.layer, config)
    run.clear()  # finished: nothing left to resume
    print(side_by_side(head_m, base_m))
    print(f"{s.head_dir}: head.keras, baseline.joblib, metrics.json, history.csv, curves.png")
    return 0


def run_fingerprint(s: Settings, identity: dict) -> str:
    """The identity of a finished head: the resume identity (cache, layer, seed, batch, lr, head) and the settings that
    end or compile the run. MEM_BUDGET and CHECKPOINT_S are left out: they decide how the head trains, not what it
    becomes (streamed or in memory, committed often or rarely, the weights are the same; tests/test_head.py)."""
    return fingerprint({**identity, "epochs": s.epochs, "deterministic": s.deterministic, "xla": s.uses_xla,
                        "patience": PATIENCE})


def side_by_side(head: dict, baseline: dict) -> str:
    """A short text table of the head against the baseline."""
    def fmt(v, spec):
        if isinstance(v, list) and len(v) > 2:  # a K x K confusion matrix does not fit a table cell
            return f"{len(v)} x {len(v)} (metrics.json)"
        return "-" if v is None else format(v, spec) if spec else str(v)

    rows = [("val accuracy", "val_accuracy", ".4f"), ("val log loss", "val_log_loss", ".4g"),
            ("val AUC", "val_auc", ".4f"), ("val ECE", "val_ece", ".4f"), ("epochs", "epochs", "d"),
            ("seconds", "seconds", ".1f"), ("examples/s", "examples_per_s", ",.0f"),
            ("confusion", "confusion_matrix", "")]
    lines = [f"{'':<14}{'head':>20}{'baseline':>20}"]
    lines += [f"{label:<14}{fmt(head.get(k), s):>20}{fmt(baseline.get(k), s):>20}" for label, k, s in rows]
    return "\n".join(lines)
