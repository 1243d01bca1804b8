"""Fine-tuning machinery: the equivalence check, compile, resumable callbacks, scores and the curves figure.

Reads the cache's val rows and DATA's val images; writes MODEL_DIR/_work/ while a run is in progress (backup/,
best.weights.h5, history.csv, run.json) and MODEL_DIR/curves.png at the end.
Example: python -m finetune --data data/demo/train --features artifacts/demo/features.h5 --head-dir artifacts/demo/head --model-dir artifacts/demo/finetune --epochs 1

Resume protocol (as the cache's writer: data first, commit marker last): at each epoch end the callbacks run
in the order best checkpoint -> history row -> early-stopping state -> BackupAndRestore's backup. The backup
is the commit, so a SIGKILL anywhere repeats at most the epoch in flight; the history is de-duplicated by epoch.
"""
import csv
import json
import os
import shutil
import time

import numpy as np

from cache import SPLIT_VAL, WorkflowError, epoch_windows
from extract import images

from .model import RELOAD_TOL, EquivalenceError, read_meta, save_model

WORK = "_work"
PATIENCE = 3  # epochs without a better val_loss before stopping; at LR 1e-5 progress is slow but steady


def forward_fn(model):
    """`model` in inference mode on a batch (RGB 0..255 images or features, any dtype): P(class 1) as float64.

    One traced graph per model, for any batch size (the signature leaves it open), kept on the model: a fresh
    tf.function per call, or one per batch size, would trace the network again each time.
    """
    import tensorflow as tf

    fn = getattr(model, "_dogcat_forward", None)
    if fn is None:
        spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        object.__setattr__(model, "_dogcat_forward", fn)  # past Keras' attribute tracking: not part of the model
    return lambda x: np.asarray(fn(tf.cast(x, tf.float32)), np.float64).reshape(-1)


def predict_labelled(model, ds):
    """(labels, P(class 1)) over a labelled_dataset, in its order, leaving out undecodable (weight 0) images."""
    forward, ys, ps = forward_fn(model), [], []
    for x, y, weight in ds:
        keep = np.asarray(weight) > 0
        ps.append(forward(x)[keep])
        ys.append(np.asarray(y).reshape(-1)[keep])
    return (np.concatenate(ys), np.concatenate(ps)) if ps else (np.zeros(0), np.zeros(0))


def predict_rows(model, cache, layer, rows, batch: int) -> np.ndarray:
    """P(class 1) of `model` on the cached `layer` features of `rows` (in that order), a chunk window at a time."""
    forward, rows = forward_fn(model), np.asarray(rows, np.int64)
    out = np.empty(len(rows))
    where = {int(r): i for i, r in enumerate(rows)}
    for w in epoch_windows(rows, cache.chunk_rows(layer), 0, 0):  # only for its chunk-aligned windows
        x = cache.read(w, layer)
        for lo in range(0, len(w), batch):
            out[[where[int(r)] for r in w[lo:lo + batch]]] = forward(x[lo:lo + batch])
    return out


def check_recorded_scores(p_head, y, record: dict, head_dir):
    """head.keras must score on the cached val features what stage 2 recorded for it (metrics.json): else the file
    was replaced, e.g. by a head trained on another cache, and the record that vouches for it describes another head.

    Both sides of the equivalence check use head.keras, so this is the part that ties it to stage 2's run."""
    if "val_log_loss" not in record:
        return
    s, n = scores(y, p_head), max(len(y), 1)
    if abs(s["log_loss"] - record["val_log_loss"]) > RELOAD_TOL * max(1.0, record["val_log_loss"]) or \
            abs(s["accuracy"] - record["val_accuracy"]) > 1.0 / n:
        raise EquivalenceError(
            f"equivalence check failed, not fine-tuning: {os.path.join(head_dir, 'head.keras')} scores val log loss "
            f"{s['log_loss']:.4f} and accuracy {s['accuracy']:.4f} on the cached features, but stage 2 recorded "
            f"{record['val_log_loss']:.4f} and {record['val_accuracy']:.4f} for the head it trained: the file is "
            f"not that head (copied from another run?); retrain it with `make head HEAD_DIR={head_dir}`")


def equivalence_check(model, head_src, cache, layer, data_root, batch: int, record=None, head_dir=""):
    """Full model on DATA's val images vs the stage-2 head on the cached features: (report, full-model P(class 1)).

    Raises EquivalenceError when they differ by more than RELOAD_TOL or disagree on val accuracy, or when the head
    does not reproduce the val scores of stage 2's `record` (check_recorded_scores).
    """
    rows = cache.rows(SPLIT_VAL)
    paths, y = [cache.paths[i] for i in rows], cache.labels[rows]
    t0 = time.perf_counter()
    p_head = predict_rows(head_src, cache, layer, rows, batch)  # streamed: val features can be GBs at 150 px
    check_recorded_scores(p_head, y, record or {}, head_dir)
    p_full, broken = np.full(len(rows), np.nan), []
    size, forward = cache.config["image_size"], forward_fn(model)
    for idx, x, ok, reason in images.image_dataset(data_root, paths, size, batch):
        idx, ok = idx.numpy(), ok.numpy()
        broken += [(paths[i], r.decode()) for i, good, r in zip(idx, ok, reason.numpy()) if not good]
        p_full[idx] = forward(x)
    if broken:
        raise EquivalenceError(f"DATA={data_root}: {len(broken)} val image(s) cached in stage 1 no longer decode, "
                               f"e.g. {broken[0][0]} ({broken[0][1]}); restore them or rerun `make features`")
    dt = time.perf_counter() - t0
    diff = float(np.max(np.abs(p_full - p_head))) if len(rows) else 0.0
    acc_head, acc_full = (float(np.mean((p >= 0.5) == y)) for p in (p_head, p_full))
    out = {"n_val": len(rows), "max_abs_diff": diff, "tolerance": RELOAD_TOL, "val_accuracy_head": acc_head,
           "val_accuracy_full": acc_full, "seconds": dt, "images_per_second": len(rows) / dt if dt else 0.0}
    if not diff <= RELOAD_TOL or acc_head != acc_full:  # `not <=` also catches NaN
        raise EquivalenceError(
            f"equivalence check failed, not fine-tuning: InceptionV3 + head on the {len(rows)} val images differs "
            f"from the head on the cached features by up to {diff:.3g} (tolerance {RELOAD_TOL}), val accuracy "
            f"{acc_full:.4f} vs {acc_head:.4f}. The backbone, preprocessing, image decode or head weights do not "
            f"match the cache; rebuild both with the same settings: `make features FEATURES={cache.path}` "
            f"then `make head FEATURES={cache.path}`")
    return out, p_full


def scores(y, p) -> dict:
    """Validation accuracy, log loss and ROC AUC of probabilities `p` for binary labels `y`."""
    from sklearn.metrics import log_loss, roc_auc_score

    y, p = np.asarray(y), np.asarray(p, np.float64)
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")
    return {"n": int(len(y)), "accuracy": float(np.mean((p >= 0.5) == y)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])), "auc": auc}


def make_strategy(devices=None):
    """tf.distribute.MirroredStrategy over `devices` (default: every visible GPU) when there are two or more, else
    TF's default one-device strategy.

    The route Keras 3 documents for several GPUs of one host on TensorFlow: build and compile the model inside
    `strategy.scope()`, then `fit` as usual. BATCH stays the global batch: each of N replicas takes BATCH / N images
    of a step and their gradients are summed, so a step equals one step on one device with the whole batch.
    Multi-worker strategies are broken with Keras 3 (keras-team/keras#20585, tensorflow/tensorflow#72388).
    """
    import tensorflow as tf

    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) < 2:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(list(devices))


def compile_for_finetuning(model, lr: float, xla: bool):
    """Adam at `lr` on binary cross-entropy. Call after every change of `trainable`: Keras fixes the set of
    trained variables when it compiles."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  metrics=["accuracy", keras.metrics.AUC(name="auc")], jit_compile=bool(xla))


# -- resume ------------------------------------------------------------------------------------------------
def work_paths(model_dir) -> dict:
    w = os.path.join(model_dir, WORK)
    return {"dir": w, "backup": os.path.join(w, "backup"), "best": os.path.join(w, "best.weights.h5"),
            "history": os.path.join(w, "history.csv"), "run": os.path.join(w, "run.json")}


def prepare_work_dir(model_dir, run_fp: str):
    """(paths, resume epoch): keep a killed run of the same configuration, else start clean."""
    w = work_paths(model_dir)
    try:
        with open(w["run"]) as f:
            same = json.load(f)["run_fingerprint"] == run_fp
        with open(os.path.join(w["backup"], "training_metadata.json")) as f:
            epoch = int(json.load(f)["epoch"])  # written by BackupAndRestore after each committed epoch
    except (OSError, ValueError, KeyError):
        same, epoch = False, 0
    if same:
        return w, epoch
    shutil.rmtree(w["dir"], ignore_errors=True)  # another configuration's leftovers must not leak into this run
    os.makedirs(w["dir"])
    with open(w["run"], "w") as f:
        json.dump({"run_fingerprint": run_fp}, f)
    return w, 0


def up_to_date(model_dir, run_fp: str) -> bool:
    """MODEL_DIR/model.keras exists and was written by a run of this configuration (its run fingerprint)."""
    try:
        return read_meta(os.path.join(model_dir, "model.keras"))["config"]["run_fingerprint"] == run_fp
    except (WorkflowError, KeyError):
        return False


def write_artifacts(model, model_dir, w: dict, metrics: dict, cache, curves_title: str):
    """curves.png, metrics.json, then model.keras with its record, then the resume state goes.

    model.keras comes last: it is what `up_to_date` looks for, so it never exists without its metrics and curves.
    """
    from classify.report import write_json

    meta = {"image_size": cache.config["image_size"], "class_names": cache.class_names,
            "positive_class": cache.class_names[1],
            "input": "raw RGB 0..255, float32, (image_size, image_size, 3); preprocessing is the model's first layer",
            **{k: metrics[k] for k in ("config", "before", "after", "reload_max_abs_diff")}}
    plot_curves(metrics["history"], os.path.join(model_dir, "curves.png"), curves_title)
    write_json(os.path.join(model_dir, "metrics.json"), metrics)
    save_model(model, os.path.join(model_dir, "model.keras"), meta)
    clear_work_dir(w)


def clear_work_dir(w: dict):
    """After model.keras and metrics.json are written the run is complete: its resume state must go."""
    shutil.rmtree(w["dir"], ignore_errors=True)


def read_history(path) -> dict:
    """history.csv as {column: [values by epoch]}, one row per epoch (the last one written wins)."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f) if r.get("epoch", "").isdigit()}
    cols = [c for c in (next(iter(rows.values())).keys() if rows else []) if c != "epoch"]
    epochs = sorted(rows)
    return {"epoch": epochs, **{c: [float(rows[e][c]) for e in epochs] for c in cols}}


def make_callbacks(w: dict, resume_epoch: int, patience: int):
    """Callbacks in commit order (see module docstring), seeded with the epochs a killed run already logged."""
    import keras

    from classify.train import SaveBest

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping whose patience counter survives a restart: it replays the logged val_loss values."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if self.monitor_op is None:
                self._set_monitor_op()
            for v in past:
                self.wait += 1
                if self._is_improvement(v, self.best):
                    self.best, self.wait = v, 0

    hist = read_history(w["history"])
    past = [v for e, v in zip(hist.get("epoch", []), hist.get("val_loss", [])) if e < resume_epoch]
    logged = hist.get("val_loss", [])
    return [
        # Stage 2's atomic checkpoint (temp file + rename): ModelCheckpoint writes in place, so a SIGKILL mid-write
        # would leave a corrupt "best" that the resumed run then loads.
        SaveBest(w["best"], min(logged) if logged else np.inf),
        keras.callbacks.CSVLogger(w["history"], append=True),
        ResumableEarlyStopping(monitor="val_loss", mode="min", patience=patience, verbose=1),
        # double_checkpoint: a kill while writing the backup falls back to the previous one. delete_checkpoint
        # off: a kill after fit but before model.keras is written resumes at the last epoch instead of epoch 0
        # (clear_work_dir removes it once the artifacts exist).
        keras.callbacks.BackupAndRestore(w["backup"], double_checkpoint=True, delete_checkpoint=False),
    ]


def plot_curves(history: dict, path, title: str):
    """Loss, accuracy and AUC per epoch, train and val, as one PNG (written to a temp file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [e + 1 for e in history.get("epoch", [])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key in zip(axes, ("loss", "accuracy", "auc")):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            if prefix + key in history:
                ax.plot(epochs, history[prefix + key], style, label=prefix + key if prefix else "train " + key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.partial"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
