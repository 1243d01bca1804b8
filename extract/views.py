"""Deterministic augmented views of the training images, for the cache (`make features AUG_VIEWS=K`).

Reads nothing (images arrive decoded, as stage 1 cached them). Writes nothing; stage 1 stores what `ViewExtractor`
computes in the cache's `views/<layer>` datasets.
Example: python -c "from extract.views import make_views; import numpy as np; print(make_views(np.zeros((1, 75, 75, 3), np.uint8), [0], 2, 42).shape)"

A view is one random affine warp of the decoded IMG_SIZE x IMG_SIZE image: a horizontal flip, a shifted crop
window, a small rotation and a zoom, combined into one bilinear resampling with reflected borders. Its randomness
comes from `numpy.random.default_rng([seed, input index, view])` alone, so view v of image i is the same on any
machine, in any batch, after any resume; the extraction order never matters.

The ranges are the one policy of extract/augment.py, which stage 3's on-the-fly augmentation uses too, so both
fine-tuning paths draw from the same distribution; the cached one sees K fixed draws per image instead of a fresh
one every epoch.
"""
import numpy as np

from .augment import FILL_MODE, FLIP, FLIP_P, INTERPOLATION, ROTATION, SHIFT as CROP, ZOOM

POLICY_VERSION = 1  # bump when the sampling below changes: it is part of the cache's fingerprint
def view_layers(spec) -> tuple:
    """Views are stored only at the layer that cached fine-tuning reads (the backbone's cached cut, the input of the
    trained block): views of later layers would cost as much disk again, and nothing reads them."""
    from core import WorkflowError

    if not spec.cached_cut:
        raise WorkflowError(f"AUG_VIEWS / FROM_CACHE=1: {spec.name} has no cut the cached path can use "
                            f"({spec.no_cut_reason}); use AUG_VIEWS=0 and fine-tune end to end (FROM_CACHE=0)")
    return (spec.cached_cut,)


def policy(k: int, seed: int, layers: tuple) -> dict:
    """The augmentation policy as recorded in the cache's config: any change makes the cache stale."""
    return {"views": int(k), "seed": int(seed), "version": POLICY_VERSION, "flip": FLIP, "flip_p": FLIP_P,
            "rotation": ROTATION, "zoom": ZOOM, "crop": CROP, "interpolation": INTERPOLATION,
            "fill_mode": FILL_MODE, "layers": list(layers), "applies_to": "train rows; val uses the clean view"}


def view_transform(index: int, view: int, size: int, seed: int) -> np.ndarray:
    """The 8-vector (keras.ops.image.affine_transform) mapping output pixels of view `view` of input `index` to
    source pixels: src = c + t + s * R(theta) * F * (p - c), with c the image centre."""
    rng = np.random.default_rng([int(seed), int(index), int(view)])
    flip = rng.random() < FLIP_P
    theta = rng.uniform(-ROTATION, ROTATION) * 2 * np.pi
    scale = 1.0 + rng.uniform(-ZOOM, ZOOM)
    t = rng.uniform(-CROP, CROP, 2) * size
    c = (size - 1) / 2.0  # pixel centres run 0..size-1, so this makes a flip exactly x -> size-1-x
    m = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    if flip:
        m = m @ np.diag([-1.0, 1.0])
    off = c + t - m @ np.array([c, c])
    return np.array([m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1], 0.0, 0.0], np.float32)


def make_views(imgs, indices, k: int, seed: int) -> np.ndarray:
    """(n, k, size, size, 3) uint8: views 0..k-1 of each decoded image, `indices` being their input indices."""
    import keras

    imgs = np.asarray(imgs)
    n, size = len(imgs), imgs.shape[1]
    if n == 0 or k == 0:
        return np.zeros((n, k) + imgs.shape[1:], np.uint8)
    transforms = np.stack([view_transform(i, v, size, seed) for i in indices for v in range(k)])
    src = np.repeat(imgs.astype(np.float32), k, axis=0)  # image-major, like `transforms`
    out = keras.ops.image.affine_transform(src, transforms, interpolation=INTERPOLATION, fill_mode=FILL_MODE,
                                           data_format="channels_last")
    # Rounded back to uint8: a view is an image like any other, and enters the backbone exactly as the clean one.
    out = np.clip(np.rint(keras.ops.convert_to_numpy(out)), 0, 255).astype(np.uint8)
    return out.reshape((n, k) + imgs.shape[1:])


class ViewExtractor:
    """Views of a batch of training images through the backbone: {layer: (n, k, h, w, c)} for each layer of `shapes`.

    `forward` is a traced uint8-batch -> [feature maps] function (extract.features.make_forward) with one output
    per entry of `shapes` ({layer: (h, w, c)}), in order. Views are fed in batches of exactly `batch` images,
    padding the last, so that the traced graph never sees a new shape.
    """

    def __init__(self, forward, shapes: dict, k: int, seed: int, batch: int):
        self.forward, self.shapes = forward, {l: tuple(s) for l, s in shapes.items()}
        self.k, self.seed, self.batch = int(k), int(seed), int(batch)

    def __call__(self, imgs, indices) -> dict:
        views = make_views(imgs, indices, self.k, self.seed)
        n = len(views)
        flat = views.reshape((n * self.k,) + views.shape[2:])
        out = {l: np.empty((n * self.k,) + s, np.float32) for l, s in self.shapes.items()}
        for lo in range(0, len(flat), self.batch):
            x = flat[lo:lo + self.batch]
            m = len(x)
            if m < self.batch:
                x = np.concatenate([x, np.zeros((self.batch - m,) + x.shape[1:], np.uint8)])
            for l, f in zip(self.shapes, self.forward(x)):
                out[l][lo:lo + m] = np.asarray(f)[:m]
        return {l: a.reshape((n, self.k) + self.shapes[l]) for l, a in out.items()}
