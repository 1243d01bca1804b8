"""The one augmentation policy: its ranges, the cached views' record of it, and stage 3's on-the-fly augmenter.

Reads and writes nothing. Example: python -c "from extract.augment import augmenter; print(augmenter(0).layers)"

Both fine-tuning paths draw from this one distribution: the end-to-end path a fresh draw every epoch
(`augmenter`, Keras layers in tf.data), the cached path K fixed draws per image made at `make features`
(extract/views.py). Kept small: the head was trained on un-augmented features, and large geometric changes at a
1e-5 learning rate mostly add noise.
"""
FLIP = "horizontal"  # cats and dogs are left/right symmetric, never upside down
FLIP_P = 0.5
ROTATION = 0.05  # fraction of a full turn, uniform in +-: +-18 degrees
ZOOM = 0.1  # scale factor uniform in 1 +- 0.1 (above 1 zooms out, as keras.layers.RandomZoom)
SHIFT = 0.1  # the crop window (views) / the image (RandomTranslation) moves by up to +-10 % of the side, x and y
INTERPOLATION, FILL_MODE = "bilinear", "reflect"  # reflect, as the Keras layers: no black corners to learn from


def end_to_end_record() -> dict:
    """The policy as stage 3's end-to-end run records it in its fingerprint."""
    return {"flip": FLIP, "rotation": ROTATION, "zoom": ZOOM, "translation": SHIFT}


def augmenter(seed: int):
    """The training-only augmentation, as a tf.data-safe keras.layers.Pipeline (seeded)."""
    import keras

    L = keras.layers
    return L.Pipeline([L.RandomFlip(FLIP, seed=seed), L.RandomRotation(ROTATION, seed=seed + 1),
                       L.RandomZoom(ZOOM, seed=seed + 2), L.RandomTranslation(SHIFT, SHIFT, seed=seed + 3)],
                      name="augment")
