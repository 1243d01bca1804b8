"""Correcting labels without a CSV for every image: `make features RELABEL=fixes.csv`.

Reads RELABEL: a CSV with `path` and `label` columns (`make report` writes one, `label_fixes.csv`, holding each
suspected label error's suggested label). Each row overrides the label that DATA's layout or LABELS gives that
image. Writes nothing itself: the corrected labels are part of the cache's view, so a change needs no forward pass
(extract/update.py).
Example: python -m extract --data data/train --features artifacts/features.h5 --relabel artifacts/report/label_fixes.csv
"""
import csv
import os

import numpy as np

from core import WorkflowError
from core.files import fingerprint

from .exclude import relative
from .images import ImageSet


def read(file) -> list:
    """[(path, label)] of RELABEL `file`, in its order."""
    if not os.path.isfile(file):
        raise WorkflowError(f"RELABEL={file}: no such file; pass a CSV with `path` and `label` columns (`make "
                            f"report` writes label_fixes.csv), or leave RELABEL empty")
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"path", "label"} <= set(reader.fieldnames or []):
            raise WorkflowError(f"RELABEL={file}: needs `path` and `label` columns, has {reader.fieldnames}; use "
                                f"the format of `make report`'s label_fixes.csv")
        return [(r["path"].strip(), (r["label"] or "").strip()) for r in reader if (r["path"] or "").strip()]


def apply(file, imgs: ImageSet) -> tuple:
    """(ImageSet with RELABEL's labels, identity for the cache's config); one error line for a row naming an image
    that is not in DATA, or a class that is not one of its classes."""
    if not imgs.labelled:
        raise WorkflowError(f"RELABEL={file}: DATA={imgs.root} is unlabelled; give it labels first (class folders, "
                            f"Kaggle names or LABELS=)")
    index = {p: i for i, p in enumerate(imgs.paths)}
    classes = {c: k for k, c in enumerate(imgs.class_names)}
    labels = imgs.labels.copy()
    pairs = []
    for line, (path, label) in enumerate(read(file), start=2):
        rel = relative(path, imgs.root)
        if rel not in index:
            raise WorkflowError(f"RELABEL={file}: line {line} names {path!r}, not an image of DATA={imgs.root}; "
                                f"paths are relative to DATA, as in label_fixes.csv")
        if label not in classes:
            raise WorkflowError(f"RELABEL={file}: line {line} gives {path!r} the label {label!r}, not one of the "
                                f"classes {', '.join(imgs.class_names)}")
        labels[index[rel]] = classes[label]
        pairs.append([rel, label])
    print(f"RELABEL={file}: {len(pairs)} label(s) set, {int((labels != imgs.labels).sum())} of them changed")
    out = ImageSet(imgs.root, imgs.layout, imgs.paths, labels.astype(np.int8), imgs.class_names, imgs.ignored,
                   imgs.missing, imgs.unlisted)
    return out, {"relabel": {"file": os.path.basename(file), "n": len(pairs), "fingerprint": fingerprint(pairs)}}
