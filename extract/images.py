"""Finding images in the layouts people have, and decoding them once to RGB (the tf.data pipeline: extract/pipeline.py).

Reads: an image folder (Kaggle flat `cat.0.jpg`, K >= 2 class folders, PetImages `Cat/` `Dog/`, or unlabelled `1.jpg`),
or any image folder with a labels CSV (LABELS: a column naming the image and a `label` column).
Writes nothing. Example: python -c "from extract.images import discover; print(discover('data/demo/train'))"
"""
import csv
import os
import re
from dataclasses import dataclass, field

import numpy as np

from cache import SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL
from core import WorkflowError

from . import photos

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.[^.]+$", re.IGNORECASE)
IMAGE_COLUMNS = ("path", "file", "filename", "image", "image_id", "id")  # LABELS: the first present names the image
LABEL_COLUMN = "label"
MAX_CLASSES = 127  # labels are stored as int8
SPLIT_FOLDER_NAMES = {"train", "test", "val", "valid", "validation", "test1"}
RESIZE = ("PIL: draft (JPEG DCT downscale to >= size), EXIF orientation applied, convert('RGB'), resize to size x "
          "size bilinear; aspect not kept; over 89,478,485 pixels after draft: skipped")  # extract/photos.py
KAGGLE_HINT = ("get the data with `kaggle competitions download -c dogs-vs-cats` (or -c dogs-vs-cats-redux-kernels-"
               "edition), then `make data ZIP=dogs-vs-cats.zip`; or `make demo` for synthetic images")


@dataclass
class ImageSet:
    """The sorted image files under `root`, with labels (-1 when unlabelled) and class names."""

    root: str
    layout: str
    paths: list
    labels: np.ndarray
    class_names: list = field(default_factory=list)
    ignored: int = 0
    # LABELS only: CSV rows naming no image under root, and images named by no row (counted and listed, never silent)
    missing: list = field(default_factory=list)
    unlisted: list = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.layout != "unlabelled"

    def __repr__(self):
        counts = {c: int((self.labels == i).sum()) for i, c in enumerate(self.class_names)}
        return f"ImageSet({self.root!r}, {self.layout}, {len(self.paths)} images {counts}, {self.ignored} ignored)"


def is_image_name(name: str) -> bool:
    """Images are judged by extension; hidden files, Thumbs.db, .txt, .csv and the like are ignored."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTS


def _walk_images(top):
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if is_image_name(name):
                found.append(os.path.join(dirpath, name))
            else:
                ignored += 1
    return found, ignored


def discover(root, labels: str = "") -> ImageSet:
    """Detect the layout of `root` (or read the labels CSV `labels`) and list its images, sorted, with labels; raise
    WorkflowError with the fix."""
    root = str(root)
    if not os.path.isdir(root):
        raise WorkflowError(f"DATA={root}: no such folder; {KAGGLE_HINT}")
    if labels:
        return from_labels_csv(root, labels)
    entries = sorted(os.listdir(root))
    top_files = [e for e in entries if os.path.isfile(os.path.join(root, e))]
    top_images = [e for e in top_files if is_image_name(e)]
    ignored = len(top_files) - len(top_images)
    subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")]
    classes = {}
    for d in subdirs:
        files, ign = _walk_images(os.path.join(root, d))
        ignored += ign
        if files:
            classes[d] = [os.path.relpath(p, root) for p in files]
    if top_images and classes:
        raise WorkflowError(f"DATA={root}: holds both images ({top_images[0]}, ...) and image folders "
                            f"({', '.join(classes)}); point DATA at one layout")
    if classes:
        return _class_folders(root, classes, ignored)
    if not top_images:
        raise WorkflowError(f"DATA={root}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))}); "
                            f"{KAGGLE_HINT}")
    named = [bool(KAGGLE_NAME.match(n)) for n in top_images]
    if all(named):
        labels = np.array([0 if n.lower().startswith("cat") else 1 for n in top_images], np.int8)
        return _check_classes(ImageSet(root, "kaggle-flat", top_images, labels, ["cat", "dog"], ignored))
    if any(named):
        odd = top_images[named.index(False)]
        raise WorkflowError(f"DATA={root}: mixes Kaggle-named images (cat.0.jpg) with others such as {odd!r}; "
                            f"keep labelled and unlabelled images in separate folders")
    return ImageSet(root, "unlabelled", top_images, np.full(len(top_images), -1, np.int8), [], ignored)


def _class_folders(root, classes, ignored):
    names = sorted(classes, key=str.lower)
    if {n.lower() for n in names} & SPLIT_FOLDER_NAMES:
        raise WorkflowError(f"DATA={root}: its folders ({', '.join(names)}) look like splits, not classes; "
                            f"point DATA at the training folder, e.g. DATA={os.path.join(root, names[-1])}")
    if len(names) > MAX_CLASSES:
        raise WorkflowError(f"DATA={root}: found {len(names)} class folders, more than {MAX_CLASSES}; are these "
                            f"classes? Point DATA at a folder with one subfolder per class")
    paths, labels = [], []
    for i, n in enumerate(names):
        paths += sorted(classes[n])
        labels += [i] * len(classes[n])
    layout = "petimages" if names == ["Cat", "Dog"] else "class-folders"
    return _check_classes(ImageSet(root, layout, paths, np.array(labels, np.int8), names, ignored))


def _check_classes(s: ImageSet) -> ImageSet:
    """At least two classes must hold images: training needs something to tell apart."""
    present = sorted({int(v) for v in s.labels})
    if len(present) < 2:
        only = s.class_names[present[0]] if s.class_names and present else "?"
        raise WorkflowError(f"DATA={s.root}: all {len(s.paths)} images are of one class ({only!r}); training "
                            f"needs at least two classes: add the other classes' images")
    return s


def from_labels_csv(root, labels_csv) -> ImageSet:
    """The images under `root` named by the CSV's image column (IMAGE_COLUMNS: a path relative to root, or an id
    equal to a file stem), labelled by its `label` column; classes are the labels sorted case-insensitively.
    Rows naming no image and images without a row are kept in `missing` and `unlisted`."""
    if not os.path.isfile(labels_csv):
        raise WorkflowError(f"LABELS={labels_csv}: no such file; pass a CSV with an image column "
                            f"({' or '.join(IMAGE_COLUMNS)}) and a `label` column")
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_col is None or LABEL_COLUMN not in columns:
        raise WorkflowError(f"LABELS={labels_csv}: columns {columns}; need a `{LABEL_COLUMN}` column and one naming "
                            f"the image ({', '.join(IMAGE_COLUMNS)}: a path relative to DATA or the file's stem); "
                            f"rename the columns")
    found, ignored = _walk_images(root)
    rel = sorted(os.path.relpath(p, root).replace(os.sep, "/") for p in found)
    by_stem = {}
    for r in rel:
        by_stem.setdefault(os.path.splitext(os.path.basename(r))[0], []).append(r)
    named, missing, on_disk = {}, [], set(rel)
    for i, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them, the header being line 1
        key, label = row.get(image_col, ""), row.get(LABEL_COLUMN, "")
        if not label:
            raise WorkflowError(f"LABELS={labels_csv}: line {i} ({key!r}) has an empty label; fill it or drop the row")
        path = os.path.normpath(key).replace(os.sep, "/") if key else ""
        hits = [path] if path in on_disk else by_stem.get(key, [])
        if len(hits) > 1:
            raise WorkflowError(f"LABELS={labels_csv}: line {i}: {key!r} is the stem of {len(hits)} images "
                                f"({', '.join(hits[:3])}); name them by path relative to DATA instead")
        if not hits:
            missing.append(key)
            continue
        if named.get(hits[0], label) != label:
            raise WorkflowError(f"LABELS={labels_csv}: {hits[0]} is labelled both {named[hits[0]]!r} and {label!r}; "
                                f"keep one row per image")
        named[hits[0]] = label
    names = sorted(set(named.values()), key=str.lower)
    if len(names) > MAX_CLASSES:
        raise WorkflowError(f"LABELS={labels_csv}: {len(names)} distinct labels, more than {MAX_CLASSES}; is "
                            f"`{LABEL_COLUMN}` the class column?")
    index = {n: k for k, n in enumerate(names)}
    paths = sorted(named)
    out = ImageSet(root, "labels-csv", paths, np.array([index[named[p]] for p in paths], np.int8), names, ignored,
                   missing, [r for r in rel if r not in named])
    if not paths:
        raise WorkflowError(f"LABELS={labels_csv}: none of its {len(rows)} rows names an image under DATA={root} "
                            f"(e.g. {missing[:1]}); is DATA the folder the paths are relative to?")
    return _check_classes(out)


def labels_identity(imgs: ImageSet) -> dict:
    """The cache-config keys a labels CSV adds (none for the other layouts, whose labels are their file names):
    the labels themselves, so that relabelling an image makes the cache stale."""
    if imgs.layout != "labels-csv":
        return {}
    from core.files import fingerprint

    return {"labels_fingerprint": fingerprint([[p, imgs.class_names[int(y)]] for p, y in zip(imgs.paths, imgs.labels)])}


def describe_unmatched(imgs: ImageSet, labels_csv: str, limit: int = 5) -> str:
    """One line counting (and naming a few of) the CSV rows without an image and the images without a row."""
    def some(items):
        return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")

    parts = []
    if imgs.missing:
        parts.append(f"{len(imgs.missing):,} row(s) name no image under DATA ({some(imgs.missing)})")
    if imgs.unlisted:
        parts.append(f"{len(imgs.unlisted):,} image(s) have no row, left out ({some(imgs.unlisted)})")
    return f"LABELS={labels_csv}: " + "; ".join(parts) if parts else ""


def stratified_split(labels, val_split: float, seed: int) -> np.ndarray:
    """Deterministic per-class split: SPLIT_VAL for round(val_split * n_class) rows of each class, else SPLIT_TRAIN."""
    labels = np.asarray(labels)
    if not 0.0 <= val_split < 1.0:
        raise WorkflowError(f"VAL_SPLIT={val_split}: must be in [0, 1), e.g. VAL_SPLIT=0.2")
    split = np.full(len(labels), SPLIT_NONE, np.int8)
    rng = np.random.default_rng(seed)
    for c in sorted({int(v) for v in labels if v >= 0}):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(val_split * len(idx)))
        split[idx[:n_val]] = SPLIT_VAL
        split[idx[n_val:]] = SPLIT_TRAIN
    return split


def load_image(path, size: int) -> np.ndarray:
    """Decode any image file to RGB uint8 (size, size, 3); raises on a file that cannot be decoded."""
    return photos.decode(path, size)  # EXIF orientation, draft mode, the per-call pixel limit


def try_load(path, size: int):
    """(image, '') or (zeros, reason): a broken file is data to report, never an exception."""
    try:
        return load_image(path, size), ""
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ValueError...)
        reason = str(e).replace(str(path), os.path.basename(str(path)))  # the path is logged beside it already
        return np.zeros((size, size, 3), np.uint8), f"{type(e).__name__}: {reason}"[:150]
