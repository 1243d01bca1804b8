"""Run bookkeeping shared by every training run (stage 2's head, both stage-3 paths, each sweep trial).

Writes `<OUT>/_work/` while a run is in progress, and removes it once the run's artifacts are written:
  run.json           the identity of the run (what must match for a rerun to resume it)
  history.csv        one row per finished epoch (Keras CSVLogger, plus `seconds`)
  best.weights.h5    the lowest-val-loss weights so far, replaced atomically
  backup/            Keras BackupAndRestore's state (weights, optimizer, epoch), written last each epoch
Example: python -m classify --features artifacts/features.h5 --head-dir artifacts/head   # HEAD_DIR/_work/ while it runs

Commit order at each epoch's end, as the cache's writer does it (data first, commit marker last): best weights ->
history row -> early-stopping state -> backup. The backup is the commit: a SIGKILL anywhere repeats at most the
epoch in flight, and `prepare` drops history rows the backup does not cover. The early-stopping patience counts
the epochs run before a kill (Keras resets it at every `fit`).
"""
import csv
import json
import os
import shutil
import time

import numpy as np

from .files import replacing, write_json

WORK = "_work"


def read_history(path) -> list:
    """history.csv as one {epoch: int, metric: float} per epoch, in epoch order (a repeated epoch: the last wins)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = {int(r["epoch"]): {k: int(v) if k == "epoch" else float(v) for k, v in r.items()}
                for r in csv.DictReader(f) if r.get("epoch", "").isdigit()}
    return [rows[e] for e in sorted(rows)]


def write_history(path, rows):
    """Rows as read by `read_history`, atomically."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=["epoch"] + sorted(k for k in rows[0] if k != "epoch"))
            w.writeheader()
            w.writerows(rows)


def columns(rows) -> dict:
    """Rows as {column: [value by epoch]}: how stage 3's metrics.json records its history."""
    keys = list(rows[0]) if rows else []
    return {k: [r[k] for r in rows] for k in keys}


def best_epoch(rows) -> int:
    """The epoch (0-based) with the lowest val_loss."""
    return int(rows[int(np.argmin([r["val_loss"] for r in rows]))]["epoch"])


def _keras_callbacks():
    """The Callback classes, defined when Keras is first needed (importing this module must not load TensorFlow)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Tells `feeds` which epoch starts (so a resumed run continues the same order) and times each epoch."""

        def __init__(self, feeds=None):
            super().__init__()
            self.feeds, self.t0 = feeds, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            if self.feeds is not None:
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
        """EarlyStopping whose patience also counts the epochs logged before a kill."""

        def __init__(self, before, **kwargs):
            super().__init__(monitor="val_loss", mode="min", **kwargs)
            self.before = [r["val_loss"] for r in before]

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if self.before:
                self.best_epoch = int(np.argmin(self.before))
                self.best = self.before[self.best_epoch]
                self.wait = len(self.before) - 1 - self.best_epoch

    return EpochClock, SaveBest, ResumableEarlyStopping


class RunState:
    """The resume folder `<out_dir>/_work/` of one run, identified by `identity` (see module docstring)."""

    def __init__(self, out_dir, identity: dict):
        self.dir = os.path.join(str(out_dir), WORK)
        self.identity = identity
        self.run = os.path.join(self.dir, "run.json")
        self.history = os.path.join(self.dir, "history.csv")
        self.best = os.path.join(self.dir, "best.weights.h5")
        self.backup = os.path.join(self.dir, "backup")

    def prepare(self) -> int:
        """The epoch to start from: the backup's, if the folder was left by a run of this identity; else 0, afresh."""
        try:
            with open(self.run) as f:
                same = json.load(f) == self.identity
            with open(os.path.join(self.backup, "training_metadata.json")) as f:
                epoch = int(json.load(f)["epoch"])  # written by BackupAndRestore after each committed epoch
        except (OSError, ValueError, KeyError):
            same, epoch = False, 0
        if same and epoch > 0:
            # Rows past the backup (a kill between the CSV row and the backup) are rerun, so drop them.
            write_history(self.history, [r for r in read_history(self.history) if r["epoch"] < epoch])
            return epoch
        self.clear()  # another run's leftovers (or none with a finished epoch) must not leak into this one
        os.makedirs(self.dir)
        write_json(self.run, self.identity)
        return 0

    def rows(self) -> list:
        return read_history(self.history)

    def callbacks(self, patience: int, feeds=None, verbose=0) -> list:
        """The callbacks in commit order, seeded with the epochs a killed run already logged."""
        import keras

        EpochClock, SaveBest, ResumableEarlyStopping = _keras_callbacks()
        before = self.rows()
        return [
            EpochClock(feeds),  # first: the epoch must be set before the iterator starts, and seconds logged
            SaveBest(self.best, min((r["val_loss"] for r in before), default=np.inf)),
            keras.callbacks.CSVLogger(self.history, append=True),
            ResumableEarlyStopping(before, patience=patience, verbose=verbose),
            # Last: the commit. double_checkpoint: a kill while writing it falls back to the previous one.
            # delete_checkpoint off: a kill after fit but before the artifacts are written resumes at the last
            # epoch instead of epoch 0 (`clear` removes it once they exist).
            keras.callbacks.BackupAndRestore(self.backup, double_checkpoint=True, delete_checkpoint=False),
        ]

    def load_best(self, model) -> bool:
        """Load the lowest-val-loss weights into `model`; False when no epoch gave a finite val loss."""
        if not os.path.exists(self.best):
            return False
        model.load_weights(self.best)
        return True

    def clear(self):
        """The run is complete (or abandoned): its resume state goes."""
        shutil.rmtree(self.dir, ignore_errors=True)


def epoch_clock(feeds=None):
    """A callback that sets `feeds.epoch` at each epoch's start and logs the epoch's seconds (for bench runs)."""
    return _keras_callbacks()[0](feeds)
