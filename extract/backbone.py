"""The frozen InceptionV3 backbone, cut at named layers, and where its weights come from.

Reads: `WEIGHTS` (imagenet | path to .h5 | none). Writes nothing.
Example: python -c "from extract.backbone import build_backbone; print(build_backbone(75, ['mixed7'], 'none').outputs)"

The backbone takes raw RGB in [0, 255] at IMG_SIZE x IMG_SIZE and applies the recipe's preprocessing
(`inception_v3.preprocess_input`, i.e. x / 127.5 - 1) as its first layer, so every model built from it,
including the fine-tuned `.keras` file, is self-contained.
"""
import hashlib
import os

from core import WorkflowError
from core.files import file_hash

BACKBONE = "InceptionV3"
FEATURE_LAYER = "mixed7"  # the recipe's cut: 7x7x768 at 150 px, rich but still spatial
MIN_IMG_SIZE = 75  # the smallest input keras.applications.InceptionV3 accepts
PREPROCESSING = "inception_v3.preprocess_input (x / 127.5 - 1), as a Rescaling layer inside the model"
NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
NOTOP_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"  # the hash keras.applications itself checks
NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + NOTOP_FILE
INIT_SEED = 1337  # WEIGHTS=none: a fixed seed makes "random" weights rebuildable in stage 3


def keras_weights_path() -> str:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", NOTOP_FILE)


def resolve_weights(weights: str) -> dict:
    """Turn WEIGHTS into {'weights': source, 'weights_file': path or '', 'weights_sha256': ...}; verify the file."""
    how_to_get = (f"get it on a machine with internet access (`python -c \"import keras; "
                  f"keras.applications.InceptionV3(include_top=False)\"` downloads it, or fetch {NOTOP_URL}), "
                  f"then copy it to {keras_weights_path()} or pass WEIGHTS=/path/to/{NOTOP_FILE}; "
                  f"or use WEIGHTS=none for random weights (tests and the demo)")
    if weights == "none":
        return {"weights": "none", "weights_file": "", "weights_sha256": f"random-init-seed-{INIT_SEED}"}
    if weights == "imagenet":
        path = keras_weights_path()
        if not os.path.exists(path):
            path = _download_imagenet(how_to_get)
    else:
        path = os.path.abspath(weights)
        if not os.path.isfile(path):
            raise WorkflowError(f"WEIGHTS={weights}: no such file; {how_to_get}")
    if os.path.basename(path) == NOTOP_FILE and file_hash(path, "md5") != NOTOP_MD5:
        raise WorkflowError(f"{path}: md5 does not match Keras' published {NOTOP_MD5} (truncated or corrupt "
                            f"download?); delete it and fetch it again: {how_to_get}")
    return {"weights": weights if weights == "imagenet" else "file", "weights_file": path,
            "weights_sha256": file_hash(path, "sha256")}


def _download_imagenet(how_to_get) -> str:
    import keras

    try:
        return keras.utils.get_file(NOTOP_FILE, NOTOP_URL, cache_subdir="models", file_hash=NOTOP_MD5)
    except Exception as e:  # offline: urllib raises several types; all mean the same to the user
        raise WorkflowError(f"WEIGHTS=imagenet: {NOTOP_FILE} is not in {os.path.dirname(keras_weights_path())} "
                            f"and cannot be downloaded ({str(e)[:100] or type(e).__name__}); {how_to_get}") from None


def check_img_size(img_size: int):
    if img_size < MIN_IMG_SIZE:
        raise WorkflowError(f"IMG_SIZE={img_size}: InceptionV3 needs at least {MIN_IMG_SIZE} pixels; "
                            f"use IMG_SIZE=150 (the recipe) or IMG_SIZE=75 (fast tests)")


def build_inception(img_size: int, weights_info: dict):
    """The whole frozen InceptionV3 (no top) with preprocessing inside; weights as resolved by resolve_weights."""
    import keras

    check_img_size(img_size)
    if weights_info["weights"] == "none":
        keras.utils.set_random_seed(INIT_SEED)
    inp = keras.Input((img_size, img_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inp)
    weights = None if weights_info["weights"] == "none" else weights_info["weights_file"]
    try:
        base = keras.applications.InceptionV3(include_top=False, weights=weights, input_tensor=x)
    except (OSError, ValueError) as e:  # h5py on a corrupt file; Keras on a file of another model
        raise WorkflowError(f"WEIGHTS={weights}: not loadable as InceptionV3 no-top weights ({str(e)[:120]}); "
                            f"pass {NOTOP_FILE} (Keras' published file), or WEIGHTS=imagenet") from None
    base.trainable = False
    return base


def cut(base, layers):
    """The sub-network of `base` from its input to the named layers (one output per name, in order)."""
    import keras

    names = {l.name for l in base.layers}
    missing = [l for l in layers if l not in names]
    if missing:
        mixed = sorted(n for n in names if n.startswith("mixed"))
        raise WorkflowError(f"LAYER={','.join(missing)}: no such layer in {BACKBONE}; choose one of "
                            f"{', '.join(mixed)} (or any layer name from model.summary())")
    outs = [base.get_layer(l).output for l in layers]
    return keras.Model(base.input, outs if len(outs) > 1 else outs[0], name=f"inception_v3_to_{layers[-1]}")


def build_backbone(img_size: int, layers, weights: str | dict):
    """Frozen InceptionV3 cut at `layers`, in inference mode; `weights` as for WEIGHTS or already resolved."""
    info = resolve_weights(weights) if isinstance(weights, str) else weights
    model = cut(build_inception(img_size, info), list(layers))
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
