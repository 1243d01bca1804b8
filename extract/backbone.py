"""Build any registered backbone (extract/backbones.py), frozen, cut at named layers, and resolve its weights.

Reads: `WEIGHTS` (imagenet | path to .h5 | none). Writes nothing.
Example: python -c "from extract import backbone, backbones; print(backbone.build_backbone(backbones.get('xception'), 71, ['block14_sepconv2_act'], 'none').outputs)"

The backbone takes raw RGB in [0, 255] at IMG_SIZE x IMG_SIZE and applies its family's preprocessing as its first
layer (or, for networks that preprocess themselves, none), so every model built from it, including the fine-tuned
`.keras` file, is self-contained.
"""
import collections
import contextlib
import hashlib
import os

from core import WorkflowError
from core.files import file_hash

from . import backbones
from .backbones import CAFFE, CAFFE_MEAN_BGR, INCEPTION, SELF, TORCH, TORCH_MEAN, TORCH_STD

INIT_SEED = 1337  # WEIGHTS=none: a fixed seed makes "random" weights rebuildable in stage 3


def keras_weights_path(spec, img_size: int) -> str:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", spec.weights_file(img_size))


def _call(spec) -> str:
    """The constructor call that downloads the entry's file, e.g. `MobileNetV2(alpha=0.35, include_top=False)`."""
    args = ", ".join([f"{k}={v!r}" for k, v in spec.args] + ["include_top=False"])
    return f"keras.applications.{spec.constructor}({args})"


def how_to_get(spec, img_size: int) -> str:
    size = (f", input_shape=({img_size}, {img_size}, 3)" if spec.weight_sizes and img_size in spec.weight_sizes
            else "")
    return (f"get it on a machine with internet access (`python -c \"import keras; {_call(spec)[:-1]}{size})\"` "
            f"downloads it, or fetch {spec.url(img_size)}), then copy it to {keras_weights_path(spec, img_size)} or "
            f"pass WEIGHTS=/path/to/{spec.weights_file(img_size)}; or use WEIGHTS=none for random weights (tests and "
            f"the demo)")


def resolve_weights(spec, weights: str, img_size: int | None = None) -> dict:
    """Turn WEIGHTS into {'weights': source, 'weights_file': path or '', 'weights_sha256': ...} for the network at
    `img_size` (None: its default size); verify the file."""
    img_size = img_size or spec.default_size
    if weights == "none":
        return {"weights": "none", "weights_file": "", "weights_sha256": f"random-init-seed-{INIT_SEED}"}
    if weights == "imagenet":
        if spec.weight_sizes and img_size not in spec.weight_sizes:
            # Keras itself would load the 224-px file and warn; weights trained at another size are not what
            # WEIGHTS=imagenet promises, so the size is refused (a file given as WEIGHTS= is the user's choice).
            raise WorkflowError(f"IMG_SIZE={img_size}: Keras publishes ImageNet weights for {spec.name} at "
                                f"{', '.join(map(str, spec.weight_sizes))} px only; use one of those sizes, or "
                                f"WEIGHTS=none")
        path = keras_weights_path(spec, img_size)
        if not os.path.exists(path):
            path = _download_imagenet(spec, img_size)
    else:
        path = os.path.abspath(weights)
        if not os.path.isfile(path):
            raise WorkflowError(f"WEIGHTS={weights}: no such file; {how_to_get(spec, img_size)}")
    if os.path.basename(path) in spec.files and spec.notop_hash:
        algo = "md5" if len(spec.notop_hash) == 32 else "sha256"  # as keras.utils.get_file tells them apart
        if file_hash(path, algo) != spec.notop_hash:
            raise WorkflowError(f"{path}: {algo} does not match Keras' published {spec.notop_hash} for "
                                f"{spec.name} (truncated or corrupt download?); delete it and fetch it again: "
                                f"{how_to_get(spec, img_size)}")
    return {"weights": weights if weights == "imagenet" else "file", "weights_file": path,
            "weights_sha256": file_hash(path, "sha256")}


def _download_imagenet(spec, img_size: int) -> str:
    import keras

    file = spec.weights_file(img_size)
    try:
        return keras.utils.get_file(file, spec.url(img_size), cache_subdir="models", file_hash=spec.notop_hash or None)
    except Exception as e:  # offline: urllib raises several types; all mean the same to the user
        raise WorkflowError(f"WEIGHTS=imagenet: {file} ({spec.name} at {img_size} px) is not in "
                            f"{os.path.dirname(keras_weights_path(spec, img_size))} and cannot be downloaded "
                            f"({str(e)[:100] or type(e).__name__}); {how_to_get(spec, img_size)}") from None


def check_img_size(spec, img_size: int):
    if img_size < spec.min_size:
        raise WorkflowError(f"IMG_SIZE={img_size}: {spec.name} needs at least {spec.min_size} pixels; "
                            f"use IMG_SIZE={spec.default_size} (its default) or IMG_SIZE={spec.min_size} (fast tests)")


@contextlib.contextmanager
def fresh_names():
    """Build inside a fresh Keras name scope: unnamed layers get the same numbers (`add_11`) in every process.

    Afterwards each counter continues past both scopes, so later layers never reuse a name built here."""
    from keras.src.backend.common import global_state

    old = global_state.get_global_attribute("object_name_uids") or collections.defaultdict(int)
    fresh = collections.defaultdict(int)
    global_state.set_global_attribute("object_name_uids", fresh)
    try:
        yield
    finally:
        merged = collections.defaultdict(int, old)
        for k, v in fresh.items():
            merged[k] = max(merged[k], v)
        global_state.set_global_attribute("object_name_uids", merged)


def preprocess_layer(spec):
    """The family's `preprocess_input` as one serialisable Keras layer named `preprocess`, or None (SELF)."""
    import keras
    import numpy as np

    if spec.preprocessing == INCEPTION:
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if spec.preprocessing == CAFFE:
        # RGB -> BGR and the mean in one fixed affine map; float32 so the mean is not rounded to bf16's 8 bits.
        flip = np.eye(3, dtype=np.float32)[::-1]
        return keras.layers.Dense(3, name="preprocess", dtype="float32", trainable=False,
                                  kernel_initializer=keras.initializers.Constant(flip),
                                  bias_initializer=keras.initializers.Constant(-np.array(CAFFE_MEAN_BGR)))
    if spec.preprocessing == TORCH:
        # (x - 255 m) / (255 s) == (x / 255 - m) / s; Normalization with given statistics holds no weights.
        return keras.layers.Normalization(mean=[255 * m for m in TORCH_MEAN],
                                          variance=[(255 * s) ** 2 for s in TORCH_STD], name="preprocess")
    assert spec.preprocessing == SELF, spec.preprocessing
    return None


def constructor(spec):
    """keras.applications.<constructor> with the entry's arguments bound: call it as the constructor."""
    import functools

    import keras

    return functools.partial(getattr(keras.applications, spec.constructor), **spec.kwargs)


def build_base(spec, img_size: int, weights_info: dict):
    """The whole frozen network (no top) with preprocessing inside; weights as resolved by resolve_weights."""
    import keras

    check_img_size(spec, img_size)
    if weights_info["weights"] == "none":
        keras.utils.set_random_seed(INIT_SEED)
    with fresh_names():
        inp = keras.Input((img_size, img_size, 3), name="image")
        prep = preprocess_layer(spec)
        x = inp if prep is None else prep(inp)
        base = constructor(spec)(include_top=False, weights=None, input_tensor=x)
        if weights_info["weights"] != "none":
            _load_weights(spec, base, img_size, weights_info["weights_file"])
    base.trainable = False
    return base


def _load_weights(spec, base, img_size, path):
    """Keras loads an .h5 into the network as its constructor builds it; ours has the preprocessing layer in front,
    which may hold weights (caffe), so the file goes into a plain copy and its weights over, layer by layer."""
    try:
        ref = constructor(spec)(include_top=False, weights=path, input_shape=(img_size, img_size, 3))
    except (OSError, ValueError) as e:  # h5py on a corrupt file; Keras on a file of another model (or width)
        raise WorkflowError(f"WEIGHTS={path}: not loadable as {spec.call} no-top weights (BACKBONE={spec.name}) "
                            f"({str(e)[:120]}); "
                            f"pass {spec.weights_file(img_size)} (Keras' published file), or WEIGHTS=imagenet"
                            ) from None
    ours = [l for l in base.layers if l.weights and l.name != "preprocess"]
    theirs = [l for l in ref.layers if l.weights]
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    for dst, src in zip(ours, theirs):
        dst.set_weights(src.get_weights())


def cut(base, layers, spec=None):
    """The sub-network of `base` from its input to the named layers (one output per name, in order)."""
    import keras

    names = [l.name for l in base.layers]
    missing = [l for l in layers if l not in names]
    if missing:
        hint = f"its registered layer is {spec.feature_layer}, the last is {names[-1]}" if spec else f"e.g. {names[-1]}"
        raise WorkflowError(f"LAYER={','.join(missing)}: no such layer in {spec.constructor if spec else base.name}; "
                            f"{hint} (or any layer name from model.summary())")
    outs = [base.get_layer(l).output for l in layers]
    return keras.Model(base.input, outs if len(outs) > 1 else outs[0], name=f"{base.name}_to_{layers[-1]}")


def build_backbone(spec, img_size: int, layers, weights: str | dict):
    """Frozen `spec` cut at `layers`, in inference mode; `weights` as for WEIGHTS or already resolved."""
    info = resolve_weights(spec, weights) if isinstance(weights, str) else weights
    model = cut(build_base(spec, img_size, info), list(layers), spec)
    model.trainable = False
    return model


def weights_digest(model) -> str:
    """sha256 over every weight of `model`, in order: proves two builds hold the same numbers.

    Names are left out on purpose: Keras numbers unnamed layers per process (conv2d_94, ...).
    """
    h = hashlib.sha256()
    for w in model.weights:
        v = w.numpy()
        h.update(str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()
