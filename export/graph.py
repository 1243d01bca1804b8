"""The exported computation: raw RGB uint8 in, the model's calibrated class probabilities out.

Reads a loaded model.keras and its record (finetune/record.py). Writes nothing.
Example: python -c "from export.graph import calibrated"   # see export/run.py

Output contract (STYLE 16): (n, K) float32 probabilities in the order of the record's `class_names`. A binary model's
single sigmoid output becomes [1 - q, q] with q = sigmoid(z / T); a K-class softmax output becomes softmax(z / T).
z are the logits, taken before the final Dense's activation (`to_logits`); T is the record's calibration
temperature, a constant of the graph, so no caller needs it.

Why the logits and not logit(p), as `make predict` computes: near p = 1 a float32 probability has a few ulps left
(1 - p = 1.5e-6 is known to 4%), so two runtimes whose sigmoids differ by one ulp give logits 0.04 apart, and after
T = 6.85 probabilities 6e-4 apart (measured: ONNX against TensorFlow at 150 px). From z both are exact to ~1e-7.
A model whose output is not such a Dense (none today) falls back to logit(p), clipped as classify/calibrate.py does.
"""
from classify.calibrate import EPS

INPUT_NAME, OUTPUT_NAME, BYTES_NAME = "images", "probabilities", "image_bytes"


def temperature(meta: dict) -> float:
    """T recorded by `make finetune`; 1.0 for a model recorded before calibration existed."""
    return float((meta.get("calibration") or {}).get("temperature", meta.get("temperature", 1.0)))


def to_logits(model):
    """Switch off the sigmoid or softmax of the Dense layer that makes `model`'s output (looking into the nested
    model that makes it, e.g. the head), so that `model` returns logits; returns 'sigmoid' | 'softmax', or None
    (nothing changed) when the output is not made that way. Changes this loaded copy only; nothing saves it."""
    import keras

    node = model
    while isinstance(node, keras.Model):
        node = node.outputs[0]._keras_history.operation
    kind = getattr(getattr(node, "activation", None), "__name__", None)
    if not isinstance(node, keras.layers.Dense) or kind not in ("sigmoid", "softmax"):
        return None
    node.activation = keras.activations.linear
    return kind


def calibrated(model, meta: dict, kind=None):
    """A Keras model: uint8 (n, S, S, 3) -> (n, K) calibrated probabilities (see module docstring). `kind`: what
    `to_logits(model)` returned ('sigmoid' | 'softmax': the model outputs logits), None: it outputs probabilities."""
    import keras
    from keras import ops

    t = temperature(meta)
    binary = kind == "sigmoid" or (kind is None and model.output_shape[-1] == 1)

    class Calibrated(keras.Model):
        def __init__(self):
            super().__init__(name="calibrated")
            self.inner = model

        def call(self, images):
            p = ops.cast(self.inner(ops.cast(images, "float32"), training=False), "float32")
            if kind is not None:  # logits
                if binary:
                    q = ops.sigmoid(p / t)
                    return ops.concatenate([1.0 - q, q], axis=-1)
                return ops.softmax(p / t, axis=-1)
            if binary:
                # logit(p) clipped as classify.calibrate.logit clips in float64: 1 - EPS has no float32 value (it
                # rounds to 1 - 1.2e-7, and a saturated p would get another logit: 0.002 off after T), so the upper
                # clip is applied to 1 - p, exact in float32 for p >= 0.5. log, not log1p: LiteRT has no LOG1P.
                z = ops.log(ops.maximum(p, EPS)) - ops.log(ops.maximum(1.0 - p, EPS))
                q = ops.sigmoid(z / t)
                return ops.concatenate([1.0 - q, q], axis=-1)
            return ops.softmax(ops.log(ops.maximum(p, EPS)) / t, axis=-1)

    wrapper = Calibrated()
    size = int(meta["image_size"])
    import numpy as np

    wrapper(np.zeros((1, size, size, 3), np.uint8))  # built and called: Keras' exporters need a called model
    return wrapper


def input_spec(size: int):
    import tensorflow as tf

    return tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)


def serving_module(wrapper, size: int, assets=()):
    """A tf.Module with two signatures: `serving_default` (uint8 images) and `serving_bytes` (encoded JPEG/PNG).

    The bytes signature decodes with TensorFlow (decode_image, 3 channels, first frame of a GIF) and resizes to
    S x S bilinearly with antialiasing, aspect not kept: as stage 1 resizes, but TF's decoder and resampler, not
    PIL's draft mode, so its pixels can differ from `make predict`'s by a few levels. `assets`: files carried in
    the SavedModel's assets/ folder (the record and the class names)."""
    import tensorflow as tf

    module = tf.Module()
    module.model = wrapper
    module.assets = [tf.saved_model.Asset(a) for a in assets]

    @tf.function(input_signature=[input_spec(size)])
    def images(x):
        return {OUTPUT_NAME: wrapper(x)}

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name=BYTES_NAME)])
    def image_bytes(b):
        def one(data):
            img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
            img = tf.image.resize(tf.cast(img, tf.float32), (size, size), method="bilinear", antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)

        x = tf.map_fn(one, b, fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))
        return {OUTPUT_NAME: wrapper(x)}

    module.images, module.image_bytes = images, image_bytes
    return module, {"serving_default": images, "serving_bytes": image_bytes}
