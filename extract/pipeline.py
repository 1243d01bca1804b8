"""The one tf.data image pipeline: files decoded by `extract.images.try_load` in parallel, in order, batched.

Reads image files under a root folder. Writes nothing.
Example: python -c "from extract.pipeline import labelled_dataset; print(labelled_dataset('data/demo/train', ['cat.0.jpg'], [0], 75, 1))"

Stage 1 (extraction, views), the equivalence checks, prediction and stage 3's end-to-end training all decode
through `decoded`: the model sees the same pixels in every stage. `image_batches` keeps each file's index and
decode status (a broken file is data to report); `labelled_dataset` turns the same elements into stage 3's
(image, label, weight) batches, with shuffling, augmentation and the batch rule for several devices.
"""
import os

import numpy as np

from core.pipeline import DECODE_THREADS, fixed_pipeline

from . import images
from .augment import augmenter


def decoded(root, paths, size: int, indices, on_broken=None):
    """tf.data of (index, uint8 image, ok, reason) for `indices` into `paths`, decoded in parallel, in order.

    An index of -1 is a padding row: a black image, ok=False, no reason (see `labelled_dataset`).
    `on_broken(path, reason)` is called for each file that does not decode.
    """
    import tensorflow as tf

    def _load(i):
        if i < 0:
            return np.zeros((size, size, 3), np.uint8), False, b""
        img, reason = images.try_load(os.path.join(root, paths[int(i)]), size)
        if reason and on_broken is not None:
            on_broken(paths[int(i)], reason)
        return img, not reason, reason.encode()

    def _map(i):
        img, ok, reason = tf.numpy_function(_load, [i], [tf.uint8, tf.bool, tf.string], stateful=False)
        img.set_shape((size, size, 3))
        ok.set_shape(())
        reason.set_shape(())
        return i, img, ok, reason

    ds = indices if isinstance(indices, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(
        np.asarray(indices, np.int64))
    return ds.map(_map, num_parallel_calls=DECODE_THREADS, deterministic=True)


def image_batches(root, paths, size: int, batch: int, indices=None):
    """tf.data of batches (index, uint8 images, ok, reason), decoded in parallel and prefetched, in order."""
    indices = np.arange(len(paths)) if indices is None else np.asarray(indices)
    return fixed_pipeline(decoded(root, paths, size, indices.astype(np.int64)).batch(batch))


def padded_count(n: int, batch: int) -> int:
    """Rows after padding `n` to whole batches: stage 3's batch rule (see `labelled_dataset`)."""
    return -(-n // batch) * batch


def labelled_dataset(root, paths, labels, size: int, batch: int, *, seed=None, augment=False, pad_last=False):
    """tf.data of (float32 RGB 0..255 images, float32 labels, weights) batches; shuffled/augmented only for training.

    A file that fails to decode gets weight 0 (a black image that counts for nothing) rather than being filtered
    out: the dataset keeps its known length, so Keras can show a real progress bar from the first epoch.
    With `seed` set the order is reshuffled every epoch.

    `pad_last`: stage 3's batch rule. Every batch holds exactly `batch` rows (a static batch size): the last is
    filled with black, zero-weight rows after the shuffle. Why: tf.distribute splits a short last batch unevenly
    and hands a replica an empty one (17 rows on 2 replicas at BATCH=8: 1 and 0), which oneDNN's BatchNorm
    refuses; with whole batches each of N replicas gets batch / N rows, and the step is the one device's step.
    """
    import tensorflow as tf
    from tqdm import tqdm

    paths = list(paths)
    labels = np.asarray(labels, np.float32)
    ds = tf.data.Dataset.from_tensor_slices(np.arange(len(paths), dtype=np.int64))
    if seed is not None:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if pad_last:
        pad = padded_count(len(paths), batch) - len(paths)
        ds = ds.concatenate(tf.data.Dataset.from_tensor_slices(np.full(pad, -1, np.int64)))

    def _example(i, img, ok, reason):
        weight = tf.cast(ok, tf.float32)
        return tf.cast(img, tf.float32), tf.gather(labels, tf.maximum(i, 0)) * weight, weight

    def _report(path, reason):  # visible in the log, not fatal: one unreadable file must not end a long run
        tqdm.write(f"skipped {path}: {reason}")

    ds = decoded(root, paths, size, ds, _report).map(_example, num_parallel_calls=DECODE_THREADS, deterministic=True)
    ds = ds.batch(batch, drop_remainder=pad_last)
    if augment:
        aug = augmenter(0 if seed is None else seed)

        def _augment(x, y, weight):
            return aug(x, training=True), y, weight

        ds = ds.map(_augment, num_parallel_calls=DECODE_THREADS)
    return fixed_pipeline(ds)
