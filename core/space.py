"""Disk space: refuse to start a write that cannot fit, and turn a full disk mid-run into one clear line.

Reads the free space of the folder an output goes to (shutil.disk_usage). Writes nothing.
Example: python -c "from core.space import check_space; check_space('artifacts/features.h5', 10 << 30, 'FEATURES')"

Estimates (bytes, from shapes known before the first write):
- stage 1: rows x (bytes of one row at every cached layer + K views) for the rows still to write; with checksums
  HDF5 writes every chunk at creation, so a fresh cache takes its full size in the first seconds;
- stage 2: the head's commits (core/runs.py): weights + two Adam moments, twice while a commit replaces the last
  one, plus the best weights twice and head.keras: 8 x the head's float32 weights at most;
- stage 3: the same rule over the whole model's weights.
"""
import contextlib
import errno
import os
import shutil

import numpy as np

from .errors import WorkflowError

CHECKPOINT_COPIES = 8  # 2 x (weights + 2 Adam moments) during a commit + 2 x best weights (+ the saved model after)
SLACK = 1.05  # HDF5 metadata, chunk padding, logs


class NoSpace(WorkflowError):
    """The disk an output goes to is (or would be) full."""


def human(n) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def existing_folder(path) -> str:
    """The nearest existing folder at or above where `path` will be written."""
    d = os.path.dirname(os.path.abspath(str(path)))
    while not os.path.isdir(d):
        d = os.path.dirname(d)
    return d


def check_space(path, needed: int, what: str):
    """Raise NoSpace (needed, free, where) unless the disk holding `path` has room for `needed` bytes."""
    needed = int(needed * SLACK)
    where = existing_folder(path)
    free = shutil.disk_usage(where).free
    if needed > free:
        raise NoSpace(f"{what}={path}: needs about {human(needed)}, {where} has {human(free)} free; free some "
                      f"space or write it elsewhere ({what}=<path on a larger disk>)")
    return needed, free


def cache_bytes(rows: int, layer_shapes: dict, dtype, train_rows: int = 0, view_shapes=None, n_views: int = 0) -> int:
    """Bytes of a cache's feature and view datasets for `rows` rows, `train_rows` of them with `n_views` views."""
    item = np.dtype(dtype).itemsize
    per_row = sum(int(np.prod(s)) for s in layer_shapes.values()) * item
    per_view = sum(int(np.prod(s)) for s in (view_shapes or {}).values()) * item
    return rows * per_row + train_rows * n_views * per_view


def checkpoint_bytes(n_weights: int) -> int:
    """What a training run's checkpoints take for a model of `n_weights` float32 weights (see module docstring)."""
    return CHECKPOINT_COPIES * 4 * int(n_weights)


def head_weights(feature_shape, units: int = 1024) -> int:
    """Weights of classify.head.build_head's Flatten -> Dense(units) -> Dense(1) on `feature_shape` maps (units=0:
    Flatten -> Dense(1))."""
    inputs = int(np.prod(feature_shape))
    return (inputs + 1) * units + units + 1 if units else inputs + 1


def is_enospc(e: BaseException) -> bool:
    """ENOSPC as Python raises it, or as h5py forwards HDF5's write error (errno 28 inside the message)."""
    text = str(e)
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or "errno = 28" in text
                                       or "No space left on device" in text)


def raise_if_full(e: BaseException, path, kept: str = ""):
    """Raise NoSpace for an ENOSPC `e` (where, which file, and that the same command resumes); else return."""
    if not is_enospc(e):
        return
    where = existing_folder(path)
    raise NoSpace(f"no space left on {where} while writing {path} ({human(shutil.disk_usage(where).free)} free "
                  f"now): free space, then rerun the same command to resume{f'; {kept} is kept' if kept else ''}"
                  ) from None


@contextlib.contextmanager
def writing(path, kept: str = ""):
    """raise_if_full for every OSError inside the block."""
    try:
        yield
    except OSError as e:
        raise_if_full(e, path, kept)
        raise
