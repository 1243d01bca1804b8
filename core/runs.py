"""Run bookkeeping shared by every training run (stage 2's head, both stage-3 paths, each sweep trial).

Writes `<OUT>/_work/` while a run is in progress, and removes it once the run's artifacts are written:
  run.json           the identity of the run (what must match for a rerun to resume it)
  history.csv        one row per finished epoch (Keras CSVLogger, plus `seconds`)
  backup/            the last commit: state-<epoch>.weights.h5 (weights + optimizer, Keras' format), best-<epoch>.npz
                     (the lowest-val-loss weights, when not the state's own) and training_metadata.json, the marker
Example: python -m classify --features artifacts/features.h5 --head-dir artifacts/head   # HEAD_DIR/_work/ while it runs

Commits, not per-epoch checkpoints: the training state (weights, Adam's moments, the dropout seeds, the epoch, and
the best weights, held in memory as a numpy copy until then) is committed at most every CHECKPOINT_S seconds
(default 60; 0: every epoch) and always when `fit` ends. A flatten head at 150 px is 38.5M weights: weights and
Adam's two moments are 462 MB, which per-epoch checkpoints (Keras' BackupAndRestore, double_checkpoint, plus the
best weights) wrote 3 times over per epoch. The files are written first and the marker last, atomically, naming
them: a SIGKILL anywhere leaves the previous commit whole, and repeats at most the epochs since it. Those are
deterministic (the same batches, the same restored state and seeds), so the resume equals an uninterrupted run;
`prepare` drops the history rows the marker does not cover. The early-stopping patience counts the epochs run
before a kill (Keras resets it at every `fit`).
"""
import csv
import json
import os
import shutil
import time

import numpy as np

from . import tblogs
from .errors import WorkflowError
from .files import replacing, write_json

WORK = "_work"
MARKER = "training_metadata.json"
DEFAULT_CHECKPOINT_S = 60.0  # a kill repeats at most ~a minute of epochs; a 150 px head commit writes ~0.5 GB


def read_history(path) -> list:
    """history.csv as one {epoch: int, metric: float} per epoch, in epoch order (a repeated epoch: the last wins)."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                row = {k: int(v) if k == "epoch" else float(v) for k, v in r.items()}
            except (TypeError, ValueError):  # a row cut short by a kill mid-append: past the commit, so rerun
                continue
            rows[row["epoch"]] = row
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


def seed_states(model) -> list:
    """The model's random-seed variables (Dropout's SeedGenerator): in `model.variables`, not in its weights, so
    `save_weights` leaves them out; without them a resumed run would redraw the dropout masks of its first epochs."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def load_state(model, path, seeds=()):
    """Weights and optimizer state from a state file (and the seed states recorded with it) into `model`."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # as Keras' BackupAndRestore: slots exist before loading
    model.load_weights(path)
    variables = seed_states(model)
    if seeds:
        assert len(seeds) == len(variables), "the seed states recorded do not match the model"
        for v, s in zip(variables, seeds):
            v.assign(np.asarray(s, dtype=v.dtype))


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

    class Commit(keras.callbacks.Callback):
        """Restores the last commit when `fit` starts; keeps the best weights in memory; commits at most every
        `run.checkpoint_s` seconds and when `fit` ends (never when it is None). Last in the list: the commit."""

        def __init__(self, run):
            super().__init__()
            self.run, self.epoch = run, run.start
            self.best = run.marker.get("best_val_loss", np.inf)
            self.best_epoch = run.marker.get("best_epoch")
            self.best_file = run.marker.get("best")  # the file holding best_epoch's weights, while it exists
            self.best_weights = None  # the model's weights at best_epoch (get_weights: arrays that own their data)
            self.last = 0.0

        def on_train_begin(self, logs=None):
            if self.run.start:
                self.run.restore(self.model)
                if self.best_file == self.run.marker["weights"]:  # the state is the best: keep a copy for later
                    self.best_weights = self.model.get_weights()
            self.last = time.monotonic()

        def on_epoch_begin(self, epoch, logs=None):
            assert epoch == self.epoch, f"fit must start at RunState.prepare()'s epoch {self.epoch}, not {epoch}"

        def on_epoch_end(self, epoch, logs=None):
            self.epoch = epoch + 1
            loss = (logs or {}).get("val_loss")
            if loss is not None and loss < self.best:
                self.best, self.best_epoch, self.best_file = float(loss), epoch, None
                self.best_weights = self.model.get_weights()
            s = self.run.checkpoint_s
            if s is not None and time.monotonic() - self.last >= s:
                self.commit()

        def on_train_end(self, logs=None):
            if self.run.checkpoint_s is not None and self.epoch > self.run.committed:
                self.commit()

        def commit(self):
            t0 = time.perf_counter()
            folder, n = self.run.backup, self.epoch
            state = f"state-{n:04d}.weights.h5"
            with replacing(os.path.join(folder, state)) as tmp:
                self.model.save_weights(tmp)
            written = [state]
            if self.best_epoch == n - 1:  # this epoch is the best: its weights are in the state file
                self.best_file = state
            elif self.best_epoch is not None and (self.best_file is None or self.best_file.startswith("state-")):
                self.best_file = f"best-{self.best_epoch:04d}.npz"
                with replacing(os.path.join(folder, self.best_file)) as tmp, open(tmp, "wb") as f:
                    np.savez(f, *self.best_weights)
                written.append(self.best_file)
            marker = {"epoch": n, "weights": state, "best": self.best_file, "best_epoch": self.best_epoch,
                      "best_val_loss": None if self.best_epoch is None else self.best,
                      "seeds": [np.asarray(v.numpy()).tolist() for v in seed_states(self.model)]}
            write_json(os.path.join(folder, MARKER), marker)  # the commit: every file it names is complete
            for name in os.listdir(folder):  # what the previous commit named
                if name not in (MARKER, state, self.best_file):
                    os.remove(os.path.join(folder, name))
            self.run.marker, self.run.committed, self.last = marker, n, time.monotonic()
            stats = self.run.commits
            stats["commits"] += 1
            stats["bytes"] += sum(os.path.getsize(os.path.join(folder, f)) for f in written)
            stats["seconds"] += time.perf_counter() - t0

        def best_into(self, model) -> bool:
            if self.best_weights is None:
                return False
            model.set_weights(self.best_weights)
            return True

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

    return EpochClock, Commit, ResumableEarlyStopping


class RunState:
    """The resume folder `<out_dir>/_work/` of one run, identified by `identity` (see module docstring).

    `checkpoint_s`: commit at most this often (0: every epoch); None: never (a run nobody resumes, e.g. a sweep
    trial: the best weights stay in memory). Not part of the identity: a rerun may change it and still resume.
    `tb_dir`: TensorBoard logs of the run go there (core/tblogs.py); None: none."""

    def __init__(self, out_dir, identity: dict, checkpoint_s=DEFAULT_CHECKPOINT_S, tb_dir=None):
        self.dir = os.path.join(str(out_dir), WORK)
        self.tb_dir = tb_dir
        self.identity = identity
        self.checkpoint_s = None if checkpoint_s is None else float(checkpoint_s)
        self.run = os.path.join(self.dir, "run.json")
        self.history = os.path.join(self.dir, "history.csv")
        self.backup = os.path.join(self.dir, "backup")
        self.marker, self.start, self.committed = {}, 0, 0
        self.commits = {"commits": 0, "bytes": 0, "seconds": 0.0}  # this process's, for metrics.json
        self._commit = None

    def prepare(self) -> int:
        """The epoch to start from: the last commit's, if the folder was left by a run of this identity; else 0."""
        try:
            with open(self.run) as f:
                same = json.load(f) == self.identity
            with open(os.path.join(self.backup, MARKER)) as f:
                marker = json.load(f)
            epoch = int(marker["epoch"])
            same = same and os.path.exists(os.path.join(self.backup, marker["weights"]))
        except (OSError, ValueError, KeyError, TypeError):
            same, epoch, marker = False, 0, {}
        if same and epoch > 0:
            # Rows past the commit (epochs run since, or a kill between the CSV row and the commit) are rerun.
            write_history(self.history, [r for r in read_history(self.history) if r["epoch"] < epoch])
            self.marker, self.start, self.committed = marker, epoch, epoch
            return epoch
        self.clear()  # another run's leftovers (or none with a finished epoch) must not leak into this one
        os.makedirs(self.dir)
        write_json(self.run, self.identity)
        self.marker, self.start, self.committed = {}, 0, 0
        return 0

    def rows(self) -> list:
        return read_history(self.history)

    def callbacks(self, patience: int, feeds=None, verbose=0) -> list:
        """The callbacks, the commit last, seeded with the epochs a killed run already logged. `fit` must be
        given `initial_epoch=prepare()`."""
        import keras

        EpochClock, Commit, ResumableEarlyStopping = _keras_callbacks()
        self._commit = Commit(self)
        return [
            EpochClock(feeds),  # first: the epoch must be set before the iterator starts, and seconds logged
            keras.callbacks.CSVLogger(self.history, append=True),
            *([tblogs.callback(self.tb_dir)] if self.tb_dir else []),
            ResumableEarlyStopping(self.rows(), patience=patience, verbose=verbose),
            self._commit,
        ]

    def restore(self, model):
        """The committed training state into `model` (its weights, optimizer and seed states)."""
        path = os.path.join(self.backup, self.marker["weights"])
        try:
            load_state(model, path, self.marker.get("seeds", ()))
        except (OSError, ValueError) as e:
            raise WorkflowError(f"{path}: cannot resume from it ({e}); delete {self.dir} to start afresh") from None

    def load_best(self, model) -> bool:
        """Load the lowest-val-loss weights into `model`; False when no epoch gave a finite val loss."""
        if self._commit is not None and self._commit.best_into(model):
            return True
        name = self.marker.get("best")
        if not name:
            return False
        path = os.path.join(self.backup, name)
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                model.set_weights([z[f"arr_{i}"] for i in range(len(z.files))])
        else:
            load_state(model, path)
        return True

    def describe(self) -> str:
        """One line: this process's commits, their bytes and seconds, and the interval."""
        c, s = self.commits, self.checkpoint_s
        every = ("none: nothing resumes this run" if s is None else "every epoch" if s == 0 else
                 f"at most every {s:g}s and at the end")
        return (f"{self.dir}: {c['commits']} commit(s), {c['bytes'] / 1e6:,.1f} MB in {c['seconds']:.1f}s "
                f"(CHECKPOINT_S: {every})")

    def clear(self):
        """The run is complete (or abandoned): its resume state goes."""
        shutil.rmtree(self.dir, ignore_errors=True)


def epoch_clock(feeds=None):
    """A callback that sets `feeds.epoch` at each epoch's start and logs the epoch's seconds (for bench runs)."""
    return _keras_callbacks()[0](feeds)
