"""Synthetic feature caches for the Kaggle-size run: N rows in the project's cache format, written chunk by chunk.

Reads nothing. Writes one cache file (cache.CacheWriter, float32) whose config says its features are synthetic.
Example: python -m bench --scale-n 25000 --img-size 150   # bench/scale.py builds one under its scratch folder

The rows are not features of any image: a bench cache, to time stages 2 and 3 at Kaggle's size, never one to train
a real model on (its config's `synthetic` key says so, and `inputs_fingerprint` names the generator, not files).
Values: ReLU(N(0, 1)) per element (half zeros, mean 0.40), as the post-ReLU concatenations that mixed6 and mixed7
are; the first SIGNAL_CHANNELS channels are shifted by +-SIGNAL_SHIFT before the ReLU by class, a signal both the
head and the pooled baseline can learn. Timing does not depend on the values: the cache is stored uncompressed and
no step of stages 2 and 3 skips zeros.
"""
import numpy as np

from cache import CacheWriter, fingerprint
from extract import backbone, backbones, images

SIGNAL_CHANNELS = 64  # of 768 at mixed6 and mixed7
SIGNAL_SHIFT = 0.5  # before the ReLU, +0.5 for class 1 ("dog"), -0.5 for class 0 ("cat")
RECIPE = backbones.get(backbones.DEFAULT)  # synthetic rows shaped like the default backbone's layers
CLASS_NAMES = ["cat", "dog"]  # Kaggle's, as stage 1 finds them (extract.images)
WRITE_ROWS = 256  # rows generated and committed at a time: ~77 MB for two 7x7x768 float32 layers


def layer_shapes(img_size: int, layers) -> tuple:
    """({layer: (h, w, c)} of InceptionV3 at `img_size`, the backbone's weight count), from the backbone built with
    WEIGHTS=none (7x7x768 for mixed6 and mixed7 at 150 px)."""
    import keras

    model = backbone.build_backbone(RECIPE, img_size, list(layers), "none")
    outs = model.outputs
    shapes = {l: tuple(int(d) for d in o.shape[1:]) for l, o in zip(layers, outs)}
    n_weights = model.count_params()
    del model
    keras.backend.clear_session()
    return shapes, n_weights


def synthetic_config(n: int, img_size: int, layers, seed: int, val_split: float) -> dict:
    """The cache's identity, with the keys stage 1 writes (extract.features.resolve_config) and `synthetic`."""
    generator = {"generator": "bench.synthcache", "n": n, "seed": seed, "signal_channels": SIGNAL_CHANNELS,
                 "signal_shift": SIGNAL_SHIFT}
    return {
        "backbone": RECIPE.constructor, "layer": layers[0], "layers": list(layers), "image_size": img_size,
        "preprocessing": RECIPE.preprocessing_text, "resize": images.RESIZE, "dtype": "float32", "layout": "synthetic",
        "class_names": CLASS_NAMES, "verify": "none", "n_inputs": n, "inputs_fingerprint": fingerprint(generator),
        "val_split": val_split, "split_seed": seed, **backbone.resolve_weights(RECIPE, "none"),
        "synthetic": ("bench/synthcache.py: ReLU(N(0,1)) rows with a class shift in the first "
                      f"{SIGNAL_CHANNELS} channels, not features of any image; a bench cache: do not train a real "
                      "model on it"),
    }


def labels_and_split(n: int, seed: int, val_split: float):
    """Balanced labels in a shuffled order (Kaggle: 12,500 of each), split per class as stage 1 splits them."""
    labels = np.random.default_rng([seed, 0]).permutation(np.arange(n) % 2).astype(np.int64)
    return labels, images.stratified_split(labels, val_split, seed)


def synthetic_rows(labels, shape, rng) -> np.ndarray:
    """float32 (len(labels),) + shape: ReLU(N(0, 1) +- SIGNAL_SHIFT on the first SIGNAL_CHANNELS channels)."""
    x = rng.standard_normal((len(labels),) + tuple(shape), dtype=np.float32)
    x[..., :SIGNAL_CHANNELS] += (SIGNAL_SHIFT * (2 * np.asarray(labels, np.float32) - 1))[:, None, None, None]
    return np.maximum(x, 0, out=x)


def write_synthetic_cache(path, n: int, img_size: int, shapes: dict, seed: int = 42, val_split: float = 0.2) -> str:
    """Write `n` synthetic rows at every layer of `shapes` (the first is the cache's `features`) into `path`.

    Rows are generated and committed WRITE_ROWS at a time on the writer's background thread (never all of them in
    memory), with the commit protocol of stage 1; the file appears at `path` when complete.
    """
    from tqdm import tqdm

    from cache import BackgroundCommits

    layers = list(shapes)
    labels, split = labels_and_split(n, seed, val_split)
    paths = [f"synthetic/{CLASS_NAMES[y]}.{i}" for i, y in enumerate(labels)]  # no such files: see `synthetic`
    writer = CacheWriter(path, synthetic_config(n, img_size, layers, seed, val_split), paths, labels, split, shapes,
                         "float32", {"command": "python -m bench --scale-n", "data": None,
                                     "backbone_digest": "none (synthetic rows)"})
    try:
        start = writer.start()  # 0, or where a killed run of the same configuration stopped
        with BackgroundCommits(writer) as commits, tqdm(total=n, initial=start, desc="synthetic cache",
                                                        unit="row") as bar:
            for lo in range(start, n, WRITE_ROWS):
                idx = np.arange(lo, min(lo + WRITE_ROWS, n))
                rng = np.random.default_rng([seed, 1, lo])  # per block: a resumed run writes the same rows
                commits.commit(idx, {l: synthetic_rows(labels[idx], s, rng) for l, s in shapes.items()}, [],
                               int(idx[-1]) + 1)
                bar.update(len(idx))
        writer.finalize()
    finally:
        writer.close()
    return str(path)
