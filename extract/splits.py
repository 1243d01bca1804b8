"""The train/val split: stratified, deterministic, and still when images come and go.

Reads nothing; writes nothing. `make features` draws it (VAL_SPLIT, SEED) and, on an update of its cache, extends it.
Example: python -c "from extract.splits import draw; import numpy as np; print(draw(np.array([0, 0, 1, 1, 1]), ['a', 'b', 'c', 'd', 'e'], 0.4, 42))"

The rule (README "Stage 1"):
- Every image has a key of its own, u = sha256(SEED, its relative path) as a number in [0, 1): it depends on nothing
  else, so it is the same on every machine and in every image set the image belongs to.
- A fresh split puts in val, for each class of n images, the round(VAL_SPLIT * n) with the smallest keys: each
  class's val share is VAL_SPLIT to within one image.
- An update keeps every image it already had on its side. The new images of a class go to val, smallest key first,
  until the class holds round(VAL_SPLIT * n) val images (n counting old and new), the rest to train. Removals move
  nothing; the next images added to that class restore its share.
- A new VAL_SPLIT or SEED draws afresh.
"""
import hashlib

import numpy as np

from cache import SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL
from core import WorkflowError

NEW = -2  # in `previous`: an image the cache did not have


def keys(paths, seed: int) -> np.ndarray:
    """u in [0, 1) of each relative path under SEED (see module docstring)."""
    out = np.empty(len(paths), np.float64)
    for i, p in enumerate(paths):
        digest = hashlib.sha256(f"{int(seed)}\0{p}".encode("utf-8")).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return out


def check(val_split: float):
    if not 0.0 <= val_split < 1.0:
        raise WorkflowError(f"VAL_SPLIT={val_split}: must be in [0, 1), e.g. VAL_SPLIT=0.2")


def draw(labels, paths, val_split: float, seed: int) -> np.ndarray:
    """A fresh split of labelled images (SPLIT_NONE for label -1)."""
    return extend(labels, paths, val_split, seed, np.full(len(paths), NEW, np.int8))


def extend(labels, paths, val_split: float, seed: int, previous) -> np.ndarray:
    """The split after an update: `previous[i]` is image i's side before it (SPLIT_TRAIN/SPLIT_VAL), or NEW."""
    check(val_split)
    labels, previous = np.asarray(labels), np.asarray(previous)
    split = np.where(previous == NEW, SPLIT_NONE, previous).astype(np.int8)
    split[labels < 0] = SPLIT_NONE
    u = keys(paths, seed)
    for c in sorted({int(v) for v in labels if v >= 0}):
        members = labels == c
        new = np.flatnonzero(members & (previous == NEW))
        if not len(new):
            continue
        held = int((members & (split == SPLIT_VAL)).sum())
        need = int(round(val_split * int(members.sum()))) - held
        order = new[np.argsort(u[new], kind="stable")]
        split[order] = SPLIT_TRAIN
        split[order[:max(0, min(need, len(order)))]] = SPLIT_VAL
    return split
