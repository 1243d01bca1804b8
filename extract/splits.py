"""The train/val split: stratified, deterministic, and still when images come and go.

Reads nothing; writes nothing. `make features` draws it (VAL_SPLIT, SEED) and, on an update of its cache, extends it.
Example: python -c "from extract.splits import extend; import numpy as np; print(extend(np.array([0, 0, 1, 1, 1]), ['a', 'b', 'c', 'd', 'e'], 0.4, 42, np.array([-2] * 5)))"

The rule (docs/updates.md):
- A fresh split (a first build, a rebuild, or a new VAL_SPLIT or SEED) is the seeded stratified shuffle of
  extract/images.stratified_split: for each class of n images, round(VAL_SPLIT * n) go to val.
- An update keeps every image it already had on its side. Each new image has a key of its own, u = sha256(SEED,
  its relative path) read as a number in [0, 1); a class's new images go to val, smallest key first, until the class
  holds round(VAL_SPLIT * n) val images (n counting old and new), the rest to train. Removals move nothing; the next
  images added to that class restore its share.
"""
import hashlib

import numpy as np

from cache import SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL

from .images import stratified_split

NEW = -2  # in `previous`: an image the cache did not have


def keys(paths, seed: int) -> np.ndarray:
    """u in [0, 1) of each relative path under SEED (see module docstring)."""
    out = np.empty(len(paths), np.float64)
    for i, p in enumerate(paths):
        digest = hashlib.sha256(f"{int(seed)}\0{p}".encode("utf-8")).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return out


def extend(labels, paths, val_split: float, seed: int, previous) -> np.ndarray:
    """The split after an update: `previous[i]` is image i's side before it (SPLIT_TRAIN/SPLIT_VAL), or NEW; with
    no image known before, the fresh split."""
    labels, previous = np.asarray(labels), np.asarray(previous)
    if (previous == NEW).all():
        return stratified_split(labels, val_split, seed)
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
