"""Training the dense head on cached features: deterministic, early-stopped, resumable after SIGKILL.

Reads batches from classify.data.Feeds. Writes HEAD_DIR/history.csv (one row per epoch) and, while training,
HEAD_DIR/resume/ (run.json: what is being trained; best.weights.h5: the lowest val loss so far; backup/: Keras'
BackupAndRestore state), which __main__ removes once head.keras is saved.
Example: python -m classify --features artifacts/features.h5 --head-dir artifacts/head --epochs 20

Feature scale: the head sees features divided by one number, the RMS of the train features, and that number is
folded into `head_dense`'s kernel before the head is saved (Dense(x / s) == Dense with kernel / s), so the saved
head takes raw backbone output and stage 3 needs no extra layer. Why: Adam's step moves each weight by about LR
whatever the gradient's size, so the first layer's output moves by about LR x sum|x|. A random-init backbone
(WEIGHTS=none) gives mixed7 values of RMS ~1e-3; at LR=1e-4 the head then did not leave chance in 20 epochs on
the synthetic set, where on unit-RMS inputs it reaches 1.0 val accuracy in a few epochs. One scalar, not
per-feature standardising, because ReLU features that are always 0 on the train rows have no usable std.
"""
import csv
import json
import os
import shutil
import time

import keras
import numpy as np

from cache import WorkflowError
from classify.head import build_head
from classify.report import replacing, write_json

PATIENCE = 5  # epochs without a lower val loss before stopping; val loss on a few thousand rows is noisy


class EpochFeed(keras.callbacks.Callback):
    """Tells the data which epoch starts (so a resumed run continues the same order) and times each epoch."""

    def __init__(self, feeds):
        super().__init__()
        self.feeds, self.t0 = feeds, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.feeds.epoch = epoch
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # later callbacks (CSVLogger) see it: history.csv holds seconds per epoch
            logs["seconds"] = time.perf_counter() - self.t0


class SaveBest(keras.callbacks.Callback):
    """The lowest-val-loss weights in one file, replaced atomically.

    Not ModelCheckpoint: it writes in place, so a SIGKILL during the write would leave a corrupt "best".
    """

    def __init__(self, path, best=np.inf):
        super().__init__()
        self.path, self.best = path, best

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = loss
            with replacing(self.path) as tmp:
                self.model.save_weights(tmp)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience also counts the epochs run before a kill (Keras resets it at every fit)."""

    def __init__(self, history, **kwargs):
        super().__init__(**kwargs)
        self.history_before = history

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        losses = [r["val_loss"] for r in self.history_before]
        if losses:
            self.best_epoch = int(np.argmin(losses))
            self.best = losses[self.best_epoch]
            self.wait = len(losses) - 1 - self.best_epoch


def read_history(path) -> list:
    """history.csv as a list of {epoch: int, metric: float}, in epoch order."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: int(v) if k == "epoch" else float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: r["epoch"])


def _write_history(path, rows):
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=["epoch"] + sorted(k for k in rows[0] if k != "epoch"))
            w.writeheader()
            w.writerows(rows)


def prepare_resume(head_dir, identity: dict) -> int:
    """The epoch to start from: the backup's, if HEAD_DIR/resume/ was left by this same run; else 0, afresh."""
    state, history = os.path.join(head_dir, "resume"), os.path.join(head_dir, "history.csv")
    try:
        with open(os.path.join(state, "run.json")) as f:
            previous = json.load(f)
        with open(os.path.join(state, "backup", "training_metadata.json")) as f:
            epoch = int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        previous, epoch = None, 0
    if previous == identity and epoch > 0:
        # Rows past the backup (a kill between the CSV row and the backup) are rerun, so drop them.
        _write_history(history, [r for r in read_history(history) if r["epoch"] < epoch])
        print(f"{head_dir}: resuming at epoch {epoch + 1} (state in {state}; delete it to start afresh)")
        return epoch
    if os.path.exists(state):
        print(f"{head_dir}: {state} belongs to another run (cache, layer, SEED, BATCH or LR changed) or "
              f"holds no finished epoch; starting afresh")
    shutil.rmtree(state, ignore_errors=True)
    if os.path.exists(history):
        os.remove(history)
    os.makedirs(state)
    write_json(os.path.join(state, "run.json"), identity)
    return 0


def train_head(feeds, epochs: int, lr: float, seed: int, head_dir, identity: dict, verbose="auto", xla=False,
               deterministic=True):
    """Fit the head on `feeds`; return (the best-val-loss head, taking raw features, and every epoch's history)."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # initial weights and dropout masks
    if deterministic:  # same SEED, same batches -> same weights, bit for bit
        tf.config.experimental.enable_op_determinism()
    start = prepare_resume(head_dir, identity)
    state, history_path = os.path.join(head_dir, "resume"), os.path.join(head_dir, "history.csv")
    best_path = os.path.join(state, "best.weights.h5")
    before = read_history(history_path)

    model = build_head(feeds.shape)
    # XLA, CPUs included (where Keras' jit_compile="auto" turns it off): without it Adam's update of the 38.5M
    # weights of a 150 px head runs as separate memory-bound kernels, which took 3.3 of 5.1 s of a 480-row epoch on
    # 2 cores; fused by XLA, the epoch took 1.8 s. Keras refuses XLA under op determinism (not every XLA op has a
    # deterministic form): the caller asks for at most one of them (classify.__main__.main).
    assert not (xla and deterministic), "Keras would drop XLA under op determinism, with only a warning"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="binary_crossentropy", jit_compile=xla,
                  metrics=["accuracy"])
    callbacks = [
        EpochFeed(feeds),  # first: the epoch must be set before the iterator starts, and seconds logged
        SaveBest(best_path, min((r["val_loss"] for r in before), default=np.inf)),
        ResumableEarlyStopping(before, monitor="val_loss", patience=PATIENCE),
        keras.callbacks.CSVLogger(history_path, append=True),
        # Last, so that a kill after the CSV row and before the backup reruns that epoch (prepare_resume
        # drops its row). double_checkpoint: a kill during the weights write falls back to the previous epoch.
        keras.callbacks.BackupAndRestore(os.path.join(state, "backup"), double_checkpoint=True,
                                         delete_checkpoint=False),
    ]
    if start < epochs:
        model.fit(feeds.train(), validation_data=feeds.val(), epochs=epochs, callbacks=callbacks, verbose=verbose,
                  shuffle=False)  # the data shuffles itself, by epoch_windows
    if not os.path.exists(best_path):
        raise WorkflowError(f"no epoch gave a finite val loss (diverged?); rerun with a smaller LR, "
                            f"e.g. LR={lr / 10:g}")
    model.load_weights(best_path)
    return export(model, feeds.shape, feeds.scale), read_history(history_path)


def export(model, feature_shape, scale: float):
    """A fresh, uncompiled head with `model`'s weights and the feature scale folded into `head_dense`."""
    head = build_head(feature_shape)
    head.set_weights(model.get_weights())
    dense = head.get_layer("head_dense")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * np.float32(1.0 / scale), bias])
    return head
