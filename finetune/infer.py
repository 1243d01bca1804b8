"""Inference with any model of the project (full network, cached block, stage-2 head) on images or cached features.

Reads cached features through `cache/` and decoded image batches. Writes nothing. Every function returns the (n, K)
probability contract (classify.head.probabilities: a binary model's single sigmoid becomes (1 - p, p)).
Example: python -c "from finetune.infer import forward_fn"   # used by equivalence checks, predict and the report
"""
import numpy as np

from cache import epoch_windows
from classify.head import probabilities


def forward_fn(model):
    """`model` in inference mode on a batch (RGB 0..255 images or features, any dtype): (n, K) float64 probabilities.

    One traced graph per model, for any batch size (the signature leaves it open), kept on the model: a fresh
    tf.function per call, or one per batch size, would trace the network again each time.
    """
    import tensorflow as tf

    fn = getattr(model, "_dogcat_forward", None)
    if fn is None:
        spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        object.__setattr__(model, "_dogcat_forward", fn)  # past Keras' attribute tracking: not part of the model
    return lambda x: probabilities(np.asarray(fn(tf.cast(x, tf.float32)), np.float64))


def n_classes(model) -> int:
    """K of a model of this project: its output width, one sigmoid unit being K = 2."""
    return max(2, int(model.output_shape[-1]))


def predict_labelled(model, ds):
    """(labels, (n, K) probabilities) over a labelled_dataset, in its order, leaving out zero-weight rows
    (undecodable images and the batch rule's padding)."""
    forward, ys, ps = forward_fn(model), [], []
    for x, y, weight in ds:
        keep = np.asarray(weight) > 0
        ps.append(forward(x)[keep])
        ys.append(np.asarray(y).reshape(-1)[keep])
    return (np.concatenate(ys), np.concatenate(ps)) if ps else (np.zeros(0), np.zeros((0, n_classes(model))))


def predict_rows(model, cache, layer, rows, batch: int) -> np.ndarray:
    """(n, K) probabilities of `model` on the cached `layer` features of `rows` (in that order), a chunk window at a
    time."""
    forward, rows = forward_fn(model), np.asarray(rows, np.int64)
    out = np.empty((len(rows), n_classes(model)))
    where = {int(r): i for i, r in enumerate(rows)}
    for w in epoch_windows(rows, cache.chunk_rows(layer), 0, 0):  # only for its chunk-aligned windows
        x = cache.read(w, layer)
        for lo in range(0, len(w), batch):
            out[[where[int(r)] for r in w[lo:lo + batch]]] = forward(x[lo:lo + batch])
    return out


def predict_images(model, root, paths, size: int, batch: int, forward=None, on_batch=None):
    """((n, K) probabilities per path, a NaN row where a file does not decode; [(path, reason)] of those) via the one
    image pipeline.

    `forward` replaces forward_fn(model) (e.g. test-time augmentation); `on_batch(n, broken)` is called after each
    batch with its size and its undecodable files (e.g. a progress bar)."""
    from extract.pipeline import image_batches

    probs, broken, forward = np.full((len(paths), n_classes(model)), np.nan), [], forward or forward_fn(model)
    for idx, x, ok, reason in image_batches(root, paths, size, batch):
        idx, ok = idx.numpy(), ok.numpy()
        p = forward(x)
        probs[idx[ok]] = p[ok]
        bad = [(paths[i], r.decode()) for i, good, r in zip(idx, ok, reason.numpy()) if not good]
        broken += bad
        if on_batch is not None:
            on_batch(len(idx), bad)
    return probs, broken
