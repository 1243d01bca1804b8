"""Leaving images out of the cache: `make features EXCLUDE=artifacts/report/label_issues.csv`.

Reads EXCLUDE: a CSV with a `path` column (as `make report` writes) or a text file of paths, one a line. Paths are
relative to DATA (as the cache stores them), or absolute, or DATA-prefixed. Writes nothing itself: the excluded
files become skipped rows of the cache with the reason "excluded by <file>", and the exclusion joins the cache's
identity, so a changed list rebuilds the cache.
Example: python -m extract --data data/train --features artifacts/f.h5 --exclude artifacts/report/label_issues.csv

The input list (and its fingerprint) stays the whole of DATA: stage 3 still recognises DATA as the cache's
folder, and the train/val split of every other image is the one it had without the exclusion, so scores before
and after stay comparable.
"""
import csv
import os

import numpy as np

from core import WorkflowError
from core.files import fingerprint


def read_paths(path) -> list:
    """The paths listed in `path`: the `path` column of a CSV, else every non-empty, non-# line."""
    if not os.path.isfile(path):
        raise WorkflowError(f"EXCLUDE={path}: no such file; pass `make report`'s label_issues.csv (or any CSV with "
                            f"a `path` column, or a text file of paths), or leave EXCLUDE empty")
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    first = text.splitlines()[0] if text.strip() else ""
    if "path" in [c.strip() for c in first.split(",")]:  # a CSV header, one column or more
        return [r["path"].strip() for r in csv.DictReader(text.splitlines()) if (r.get("path") or "").strip()]
    if "," in first:
        raise WorkflowError(f"EXCLUDE={path}: a CSV without a `path` column (header: {first[:80]!r}); add one, "
                            f"or give a text file with one path a line")
    return [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]


def relative(p, root) -> str:
    """`p` as a path relative to DATA=`root`, as the cache stores it (given relative, absolute or DATA-prefixed)."""
    root_abs = os.path.abspath(root)
    if os.path.isabs(p):
        return os.path.relpath(p, root_abs)
    if os.path.abspath(p).startswith(root_abs + os.sep):  # given as DATA/cat.1.jpg from the project root
        return os.path.relpath(os.path.abspath(p), root_abs)
    return os.path.normpath(p)


def select(file, imgs):
    """(sorted input indices to leave out, identity for the cache's config) of EXCLUDE `file` over ImageSet `imgs`."""
    listed = {relative(p, imgs.root) for p in read_paths(file)}
    index = {p: i for i, p in enumerate(imgs.paths)}
    idx = sorted(index[p] for p in listed if p in index)
    unknown = sorted(listed - set(index))
    if listed and not idx:
        raise WorkflowError(f"EXCLUDE={file}: none of its {len(listed)} paths (e.g. {unknown[0]!r}) is an image of "
                            f"DATA={imgs.root}; paths are relative to DATA, as in the cache and label_issues.csv")
    if unknown:
        print(f"note: EXCLUDE={file}: {len(unknown)} path(s) are not images of DATA and are ignored, e.g. {unknown[0]}")
    excluded = [imgs.paths[i] for i in idx]
    print(f"EXCLUDE={file}: leaving out {len(idx)} of {len(imgs.paths)} images (listed as skipped in the cache)")
    # The list's content is the identity, not where the file lies: a moved copy of the same list keeps the cache.
    return np.asarray(idx, np.int64), {"exclude": {"file": os.path.basename(file), "n_excluded": len(idx),
                                                   "paths_fingerprint": fingerprint(excluded)}}


REASON_PREFIX = "excluded by "


def reason(file) -> str:
    return f"{REASON_PREFIX}{file}"


def commit_excluded(writer, excluded, file) -> dict:
    """Mark every input done (the last ones may be excluded); return the excluded inputs' skip reasons, which
    `writer.finalize` takes (they are known up front, so no commit writes them)."""
    views = ({name: np.zeros((0, writer.n_views) + shape, writer.dtype) for name, shape in writer.view_shapes.items()}
             if writer.view_shapes else None)
    writer.commit(np.zeros(0, np.int64), {}, [], len(writer.paths), views=views)
    return {int(i): reason(file) for i in excluded}
