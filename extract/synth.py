"""Synthetic K-class image sets in every real layout, for tests, the demo and the benchmark.

Writes: N images under `--out` in the chosen layout, optionally with broken files, ignorable junk and odd formats;
`--layout csv` writes flat `img<i>.jpg` files and `labels.csv` (`id,label`: the file stem and the class name) beside
them. Example: python -m extract.synth --out data/demo/train --n 200 --layout kaggle --broken 3
           python -m extract.synth --out data/five --n 200 --layout folders --classes 5

`--classes K` > 2 (class folders, csv or unlabelled): class k has its own hue (K hues evenly spaced round the colour
wheel) and
a pattern (blobs for even k, stripes for odd, checks for the last of an odd K), so that even a randomly initialised
backbone separates them.

Class 0 ("cat") is warm-coloured with blobs, class 1 ("dog") cool-coloured with stripes: distinct enough that
even a randomly initialised backbone separates them, so a test can demand real learning (>= 0.9 accuracy).
`--difficulty D` (0..1, default 0: the images above, unchanged) makes the classes overlap without mislabelling
any image: see `harden` (tests/test_sweep.py names the val accuracy the recipe's head reaches on it).
"""
import argparse
import io
import os

import numpy as np
from PIL import Image

LAYOUTS = ("kaggle", "folders", "petimages", "unlabelled", "csv")
CLASS_DIRS = {"folders": ("cats", "dogs"), "petimages": ("Cat", "Dog")}
TWO_CLASS_LAYOUTS = ("kaggle", "petimages")  # their names are cat and dog
LABELS_CSV = "labels.csv"  # the csv layout's labels, beside the images


def class_names(k: int) -> list:
    """The names of K synthetic classes: the folders layout's cats/dogs for K = 2, else class00, class01, ..."""
    return list(CLASS_DIRS["folders"]) if k == 2 else [f"class{c:02d}" for c in range(k)]


def hue_colour(label: int, k: int) -> np.ndarray:
    """An RGB base colour of class `label` of `k`: hues evenly spaced round the wheel, saturated, mid-bright."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(label / k, 0.75, 0.8), np.float32) * 255


CLASS_COLOURS = np.array([[200, 90, 40], [40, 110, 200]], np.float32)  # cat warm, dog cool


def harden(label: int, difficulty: float, rng):
    """(base colour, pattern contrast, draw the other class's pattern too?) for `difficulty` in (0, 1].

    The class colours move toward their midpoint (at 1 they are the same), the class pattern fades, and with
    probability `difficulty` / 2 the other class's pattern is drawn over it as a distractor. Every image keeps its
    own class's pattern, so labels stay true: the task gets harder, not noisier.
    """
    mid = CLASS_COLOURS.mean(axis=0)
    colour = CLASS_COLOURS[label] * (1 - difficulty) + mid * difficulty + rng.normal(0, 20 + 30 * difficulty, 3)
    return colour, 1.0 - 0.7 * difficulty, rng.uniform() < difficulty / 2


def _blobs(img, yy, xx, h, w, rng, contrast=1.0):
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * min(h, w)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[m] = img[m] * (1 - contrast) + rng.uniform(150, 255, 3) * contrast


def _stripes(img, yy, xx, h, w, rng, contrast=1.0):
    period, angle = rng.uniform(0.08, 0.2) * min(h, w), rng.uniform(0, np.pi)
    m = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
    img[m] = img[m] * (1 - contrast) + (img[m] * 0.4 + rng.uniform(0, 80, 3)) * contrast


def _checks(img, yy, xx, h, w, rng, contrast=1.0):
    size = rng.uniform(0.12, 0.25) * min(h, w)
    m = ((yy // size + xx // size) % 2) == 0
    img[m] = img[m] * (1 - contrast) + rng.uniform(0, 255, 3) * contrast


def pattern_of(label: int, k: int):
    """Blobs for even classes, stripes for odd; with an odd K the last class, whose hue neighbours class 0's (both
    even), has checks instead, so that no two neighbouring hues share a pattern."""
    if k % 2 and label == k - 1:
        return _checks
    return (_blobs, _stripes)[label % 2]


def draw(label: int, h: int, w: int, rng, difficulty: float = 0.0, classes: int = 2) -> np.ndarray:
    """One RGB uint8 image of class `label` of `classes`; `difficulty` > 0 makes the (two) classes overlap (see
    `harden`)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if classes > 2:  # a branch of its own: two classes must draw the same random numbers as before
        img = np.broadcast_to(hue_colour(label, classes) + rng.normal(0, 12, 3), (h, w, 3)).copy()
        img *= (0.7 + 0.3 * (yy / h))[..., None]
        pattern_of(label, classes)(img, yy, xx, h, w, rng, 0.8)
        img += rng.normal(0, 8, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)
    if difficulty > 0:  # a separate branch: difficulty 0 must draw the same random numbers as before
        base, contrast, distractor = harden(label, difficulty, rng)
        img = np.broadcast_to(base, (h, w, 3)).copy()
        img *= (0.7 + 0.3 * (yy / h))[..., None]
        patterns = (_blobs, _stripes)
        if distractor:
            patterns[1 - label](img, yy, xx, h, w, rng, contrast)
        patterns[label](img, yy, xx, h, w, rng, contrast)
        img += rng.normal(0, 8 + 24 * difficulty, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)
    base = np.array([200, 90, 40] if label == 0 else [40, 110, 200], np.float32) + rng.normal(0, 20, 3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img *= (0.7 + 0.3 * (yy / h))[..., None]  # a gradient, so that no image is flat
    if label == 0:
        for _ in range(rng.integers(2, 5)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * min(h, w)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(150, 255, 3)
    else:
        period, angle = rng.uniform(0.08, 0.2) * min(h, w), rng.uniform(0, np.pi)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        img[stripes] = img[stripes] * 0.4 + rng.uniform(0, 80, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _name(layout, label, i, ext="jpg", classes=2):
    if layout == "kaggle":
        return f"{('cat', 'dog')[label]}.{i}.{ext}"
    if layout == "unlabelled":
        return f"{i + 1}.{ext}"
    if layout == "csv":
        return f"img{i:05d}.{ext}"
    names = CLASS_DIRS[layout] if layout in TWO_CLASS_LAYOUTS else class_names(classes)
    return os.path.join(names[label], f"{i}.{ext}")


def make_dataset(out, n=40, layout="kaggle", size=(60, 160), seed=0, broken=0, junk=True, odd=False,
                 difficulty=0.0, classes=2):
    """Write `n` images (n / classes per class) in `layout`; return {relpath: label} of the decodable images written.

    `size` is the (min, max) side in pixels, drawn per image. `broken` adds undecodable files (zero bytes,
    truncated JPEG, text, random bytes) that must be skipped; `junk` adds files to ignore (Thumbs.db,
    .DS_Store, a .txt, a .csv); `odd` adds decodable oddities (grayscale, CMYK, RGBA, a PNG named .jpg, upper-case
    extension, progressive JPEG, tiny and huge images) that must all be cached. `difficulty` in [0, 1]: see `harden`.
    """
    if not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty={difficulty}: must be in [0, 1]")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; choose one of {LAYOUTS}")
    if classes < 2 or (classes > 2 and (layout in TWO_CLASS_LAYOUTS or difficulty or odd)):
        raise ValueError(f"classes={classes}: need 2, or more with layout folders, csv or unlabelled (no difficulty "
                         f"or odd files)")
    rng = np.random.default_rng(seed)
    written = {}

    def put(rel, data: bytes):
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def encode(arr, fmt="JPEG", mode=None, **kw):
        buf = io.BytesIO()
        im = Image.fromarray(arr)
        (im.convert(mode) if mode else im).save(buf, fmt, **kw)
        return buf.getvalue()

    for i in range(n):
        label = i % classes
        h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
        rel = _name(layout, label, i, classes=classes)
        put(rel, encode(draw(label, h, w, rng, difficulty, classes), quality=90))
        written[rel] = label
    if layout == "csv":
        names = class_names(classes)
        put(LABELS_CSV, "".join([f"id,label\n"] + [f"{os.path.splitext(r)[0]},{names[y]}\n"
                                                      for r, y in written.items()]).encode())
    if odd:
        oddities = [("gray", dict(mode="L")), ("cmyk", dict(mode="CMYK")), ("rgba", dict(fmt="PNG", mode="RGBA")),
                    ("pngasjpg", dict(fmt="PNG")), ("progressive", dict(progressive=True, quality=85)),
                    ("UPPER", {}), ("tiny", {}), ("huge", {})]
        for j, (kind, kw) in enumerate(oddities):
            label, i = j % 2, n + j
            h, w = {"tiny": (4, 6), "huge": (3000, 2400)}.get(kind, (90, 120))
            ext = "JPG" if kind == "UPPER" else ("png" if kw.get("fmt") == "PNG" and kind == "rgba" else "jpg")
            rel = _name(layout, label, i, ext)
            put(rel, encode(draw(label, h, w, rng), **kw))
            written[rel] = label
    for j in range(broken):
        label, i = j % 2, n + 100 + j
        good = encode(draw(label, 80, 80, rng))
        data = [b"", good[: len(good) // 2], b"this is not an image\n", rng.bytes(3000)][j % 4]
        put(_name(layout, label, i, classes=classes), data)
    if junk:
        folders = ([""] if layout in ("kaggle", "unlabelled", "csv") else
                   list(CLASS_DIRS[layout]) if layout in TWO_CLASS_LAYOUTS else class_names(classes))
        for d in folders:
            put(os.path.join(d, "Thumbs.db"), rng.bytes(512))
            put(os.path.join(d, ".DS_Store"), rng.bytes(64))
        put("readme.txt", b"synthetic dogs-vs-cats images\n")
        if layout != "csv":
            put("labels.csv", b"id,label\n1,0.5\n")  # Kaggle zips ship sampleSubmission.csv beside the images
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--layout", choices=LAYOUTS, default="kaggle")
    p.add_argument("--min-size", type=int, default=60)
    p.add_argument("--max-size", type=int, default=160)
    p.add_argument("--broken", type=int, default=0)
    p.add_argument("--odd", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=2, help="K classes (K > 2: --layout folders or csv)")
    p.add_argument("--difficulty", type=float, default=0.0, help="0..1: how far the classes overlap (0: apart)")
    a = p.parse_args(argv)
    written = make_dataset(a.out, a.n, a.layout, (a.min_size, a.max_size), a.seed, a.broken, odd=a.odd,
                           difficulty=a.difficulty, classes=a.classes)
    print(f"wrote {len(written)} images of {a.classes} classes ({a.layout}) and {a.broken} broken files to {a.out}")


if __name__ == "__main__":
    main()
