"""Finding images in the layouts people have, and decoding them once to RGB (the tf.data pipeline: extract/pipeline.py).

Reads: an image folder (Kaggle flat `cat.0.jpg`, class folders, PetImages `Cat/` `Dog/`, or unlabelled `1.jpg`).
Writes nothing. Example: python -c "from extract.images import discover; print(discover('data/demo/train'))"
"""
import os
import re
from dataclasses import dataclass, field

import numpy as np

from cache import SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL
from core import WorkflowError

from . import photos

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.[^.]+$", re.IGNORECASE)
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


def discover(root) -> ImageSet:
    """Detect the layout of `root` and list its images, sorted, with labels; raise WorkflowError with the fix."""
    root = str(root)
    if not os.path.isdir(root):
        raise WorkflowError(f"DATA={root}: no such folder; {KAGGLE_HINT}")
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
        return _check_two_classes(ImageSet(root, "kaggle-flat", top_images, labels, ["cat", "dog"], ignored))
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
    if len(names) > 2:
        raise WorkflowError(f"DATA={root}: found {len(names)} class folders ({', '.join(names)}); this is a "
                            f"two-class task, keep exactly two (e.g. cats/ and dogs/)")
    paths, labels = [], []
    for i, n in enumerate(names):
        paths += sorted(classes[n])
        labels += [i] * len(classes[n])
    layout = "petimages" if names == ["Cat", "Dog"] else "class-folders"
    return _check_two_classes(ImageSet(root, layout, paths, np.array(labels, np.int8), names, ignored))


def _check_two_classes(s: ImageSet) -> ImageSet:
    present = sorted({int(v) for v in s.labels})
    if len(present) < 2:
        only = s.class_names[present[0]] if s.class_names and present else "?"
        raise WorkflowError(f"DATA={s.root}: all {len(s.paths)} images are of one class ({only!r}); training "
                            f"needs both classes: add the other class's images")
    return s


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
