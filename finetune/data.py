"""tf.data input for fine-tuning: the stage-1 decoder, shuffling and augmentation for training only.

Reads image files under DATA (the paths recorded in the cache). Writes nothing.
Example: python -c "from finetune.data import labelled_dataset; print(labelled_dataset('data/demo/train', ['cat.0.jpg'], [0], 75, 1))"

Every image goes through `extract.images.try_load`, the exact decode stage 1 cached, so the model sees the same
pixels as the head did. The cache's own skipped files are never listed here in the first place, and the caller
has already checked that DATA is the set the cache was built from.
"""
import os

import numpy as np

from extract import images

# The recipe's augmentation, kept small: the head was trained on un-augmented features, and large geometric
# changes at 1e-5 learning rate mostly add noise. Factors follow keras.layers conventions.
FLIP = "horizontal"  # cats and dogs are left/right symmetric, never upside down
ROTATION = 0.05  # fraction of a full turn: +-18 degrees
ZOOM = 0.1  # +-10 % of height and width
TRANSLATION = 0.1  # +-10 % of height and width


def augmenter(seed: int):
    """The training-only augmentation, as a tf.data-safe keras.layers.Pipeline (seeded)."""
    import keras

    L = keras.layers
    return L.Pipeline([L.RandomFlip(FLIP, seed=seed), L.RandomRotation(ROTATION, seed=seed + 1),
                       L.RandomZoom(ZOOM, seed=seed + 2), L.RandomTranslation(TRANSLATION, TRANSLATION, seed=seed + 3)],
                      name="augment")


def labelled_dataset(root, paths, labels, size: int, batch: int, *, seed=None, augment=False):
    """tf.data of (float32 RGB 0..255 images, float32 labels, weights) batches; shuffled/augmented only for training.

    A file that fails to decode gets weight 0 (a black image that counts for nothing) rather than being filtered
    out: the dataset keeps its known length, so Keras can show a real progress bar from the first epoch.
    With `seed` set the order is reshuffled every epoch. Decoding runs in parallel and batches are prefetched,
    so the CPU prepares the next batch while the accelerator works on this one.
    """
    import tensorflow as tf
    from tqdm import tqdm

    paths = list(paths)
    labels = np.asarray(labels, np.float32)

    def _load(i):
        img, reason = images.try_load(os.path.join(root, paths[int(i)]), size)
        if reason:  # visible in the log, not fatal: one unreadable file must not end a long run
            tqdm.write(f"skipped {paths[int(i)]}: {reason}")
        return img, np.float32(0.0 if reason else 1.0)

    def _decode(i):
        img, weight = tf.numpy_function(_load, [i], [tf.uint8, tf.float32], stateful=False)
        img.set_shape((size, size, 3))
        weight.set_shape(())
        return tf.cast(img, tf.float32), tf.gather(labels, i), weight

    ds = tf.data.Dataset.from_tensor_slices(np.arange(len(paths), dtype=np.int64))
    if seed is not None:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_decode, num_parallel_calls=images.DECODE_THREADS, deterministic=True).batch(batch)
    if augment:
        aug = augmenter(0 if seed is None else seed)

        def _augment(x, y, weight):
            return aug(x, training=True), y, weight

        ds = ds.map(_augment, num_parallel_calls=images.DECODE_THREADS)
    return images.fixed_pipeline(ds)
