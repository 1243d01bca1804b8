"""The full network: InceptionV3 rebuilt from the cache's record, the stage-2 head put back on, and its .keras file.

Reads FEATURES (config + provenance only), HEAD_DIR/head.keras and HEAD_DIR/metrics.json; writes MODEL_DIR/model.keras.
Example: python -c "from finetune.model import load_model; m, meta = load_model('artifacts/finetune/model.keras'); print(meta['class_names'])"

The saved model takes raw RGB in [0, 255] (preprocessing is its first layer) and carries its own record: a
`workflow.json` member appended to the .keras zip (Keras reads only the members it wrote and ignores it), so
prediction needs nothing but the file.
"""
import hashlib
import json
import os
import zipfile

from cache import CacheMismatch, WorkflowError
from classify.head import build_head
from extract import backbone, images

# Fine-tuning rules (keras-io "Transfer learning & fine-tuning"):
UNFREEZE_FROM = "mixed6"  # the recipe's choice: with the cut at mixed7 this trains the last Inception block only;
# earlier blocks hold generic edges/textures that a few thousand images cannot improve, only overfit.
RELOAD_TOL = 1e-3  # max |P(full model) - P(head on cached features)|; float32 gives ~1e-6, float16 caches ~1e-4
MODEL_FORMAT = "dogcat-finetuned-model"
META_MEMBER = "workflow.json"


class HeadMismatch(WorkflowError):
    """HEAD_DIR is missing, incomplete or was trained on another cache."""


class EquivalenceError(WorkflowError):
    """The rebuilt full network does not reproduce the head's predictions on the cached features."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_head_dir(head_dir, cache) -> dict:
    """The head's cache record (path, fingerprint, layer, feature_shape) after checking it was trained on `cache`."""
    retrain = f"retrain it with `make head FEATURES={cache.path} HEAD_DIR={head_dir}`"
    head_file, metrics_file = os.path.join(head_dir, "head.keras"), os.path.join(head_dir, "metrics.json")
    for f in (head_file, metrics_file):
        if not os.path.isfile(f):
            raise HeadMismatch(f"HEAD_DIR={head_dir}: no {os.path.basename(f)}; {retrain}")
    try:
        with open(metrics_file) as f:
            metrics = json.load(f)
        record = metrics["cache"]
        fp, shape = record["fingerprint"], tuple(record["feature_shape"])
        # What stage 2 measured for head.keras on the val rows: proves later that the file is still that head.
        record.update({k: metrics["head"][k] for k in ("val_accuracy", "val_log_loss") if k in metrics.get("head", {})})
        record.setdefault("layer", cache.layer)  # stage 2 may train on any cached layer (LAYER); the cut follows it
    except (ValueError, KeyError, TypeError) as e:
        raise HeadMismatch(f"{metrics_file}: no cache record ({type(e).__name__}: {e}); {retrain}") from None
    if fp != cache.fingerprint:
        raise HeadMismatch(f"{head_file}: trained on another cache ({record.get('path')}, fingerprint {fp[:12]}), "
                           f"not on FEATURES={cache.path} (fingerprint {cache.fingerprint[:12]}); {retrain}")
    if record["layer"] not in cache.layers or shape != cache.feature_shape(record["layer"]):
        have = {l: list(cache.feature_shape(l)) for l in cache.layers}
        raise HeadMismatch(f"{head_file}: trained on layer {record['layer']!r} {list(shape)}, the cache holds "
                           f"{have}; {retrain}")
    return record


def load_head(head_dir):
    """The stage-2 head as saved: used only as a source of weights and for the equivalence check."""
    import keras

    return keras.saving.load_model(os.path.join(head_dir, "head.keras"), compile=False)


def copy_head_weights(dst, src, where=""):
    """Copy `src`'s weights into `dst` (built by build_head) by layer name: another architecture is refused."""
    for layer in dst.layers:
        if not layer.weights:
            continue
        try:
            theirs = src.get_layer(layer.name).get_weights()
        except ValueError:
            theirs = None
        ours = layer.get_weights()
        if theirs is None or [w.shape for w in theirs] != [w.shape for w in ours]:
            raise HeadMismatch(f"{where}: layer {layer.name!r} missing or shaped differently from "
                               f"classify.head.build_head; retrain the head with `make head`")
        layer.set_weights(theirs)


def weights_source(cfg) -> str:
    """The WEIGHTS value that resolves to what the cache was built with."""
    return cfg["weights_file"] if cfg["weights"] == "file" else cfg["weights"]


def check_recipe(cfg, path):
    """The cache must describe the backbone, preprocessing and resize this code implements."""
    ours = {"backbone": backbone.BACKBONE, "preprocessing": backbone.PREPROCESSING, "resize": images.RESIZE}
    for key, value in ours.items():
        if cfg.get(key) != value:
            raise CacheMismatch(f"{path}: {key}={cfg.get(key)!r}, this code implements {value!r}; "
                                f"rerun `make features FEATURES={path}`")


def resolve_cache_weights(cache) -> dict:
    """Re-resolve the cache's weights source and prove it is the same file (sha256)."""
    cfg = cache.config
    info = backbone.resolve_weights(weights_source(cfg))
    if info["weights_sha256"] != cfg["weights_sha256"]:
        raise CacheMismatch(f"{cache.path}: built with weights sha256 {cfg['weights_sha256'][:12]} "
                            f"({cfg['weights']} {cfg['weights_file']}), but {info['weights_file'] or info['weights']} "
                            f"now has {info['weights_sha256'][:12]}; restore that file or rerun `make features`")
    return info


def build_full_model(cfg, weights_info, layer, feature_shape, digest=None, cache_path=""):
    """image -> InceptionV3 cut at `layer` -> build_head; returns (model, cut model in layer order).

    With `digest`, the rebuilt backbone must hold the same numbers the cache was computed with.
    """
    import keras

    base = backbone.build_inception(cfg["image_size"], weights_info)
    if digest is not None:
        got = backbone.weights_digest(backbone.cut(base, cfg["layers"]))
        if got != digest:
            raise CacheMismatch(f"{cache_path}: the rebuilt {backbone.BACKBONE} holds other weights than the one "
                                f"that computed the cache (digest {got[:12]} vs {digest[:12]}; Keras or weights "
                                f"changed?); rerun `make features FEATURES={cache_path}`")
    trunk = backbone.cut(base, [layer])
    head = build_head(feature_shape)  # the one head-building function; weights come from copy_head_weights
    # inputs[0], not .input: the applications model keeps its inputs as a one-item list, and a model built on
    # that list warns each time it is called on a plain batch.
    model = keras.Model(trunk.inputs[0], head(trunk.outputs[0]), name=f"inception_v3_{layer}_head")
    return model, trunk


def trainable_names(trunk, unfreeze_from: str) -> list:
    """Names to train: non-BatchNormalization layers of `trunk` at or after `unfreeze_from`, in layer order."""
    import keras

    names = [l.name for l in trunk.layers]
    if unfreeze_from not in names:
        mixed = [n for n in names if n.startswith("mixed")]
        raise WorkflowError(f"UNFREEZE_FROM={unfreeze_from}: not a layer of the backbone cut at {names[-1]}; "
                            f"choose one of {', '.join(mixed)}")
    k = names.index(unfreeze_from)
    # BatchNorm stays frozen, even inside the unfrozen block: in Keras 3 a BN layer with trainable=False also
    # runs in inference mode (moving statistics, no updates). Unfrozen, BN would re-estimate mean/variance from
    # small fine-tuning batches and overwrite the statistics every later layer was trained against: the known
    # way to wreck a pretrained net in its first epoch (keras-io, "Transfer learning & fine-tuning").
    return [l.name for l in trunk.layers[k:] if not isinstance(l, keras.layers.BatchNormalization)]


def set_trainable(model, trunk, unfreeze_from: str) -> list:
    """Freeze everything but the rule's layers and the head; returns their names. Recompile after this."""
    import keras

    wanted = set(trainable_names(trunk, unfreeze_from)) | {"head"}
    for layer in model.layers:
        layer.trainable = layer.name in wanted
        assert not (layer.trainable and isinstance(layer, keras.layers.BatchNormalization)), layer.name
    return sorted(wanted)


# -- the artifact ------------------------------------------------------------------------------------------
def save_model(model, path, meta: dict):
    """Save an uncompiled copy to a temporary .keras, append workflow.json, check it loads, rename into place."""
    import keras

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.partial.keras")  # Keras insists on the .keras suffix
    # A compiled model would also save Adam's two moments per trained weight (twice the file) that no reader
    # needs: a new, uncompiled Functional over the same layers saves the weights alone.
    keras.Model(model.input, model.output, name=model.name).save(tmp)
    with zipfile.ZipFile(tmp, "a") as z:
        z.writestr(META_MEMBER, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1, sort_keys=True))
    keras.saving.load_model(tmp, compile=False)  # proves the appended member did not break the file
    os.replace(tmp, path)


def read_meta(path) -> dict:
    """The workflow.json record inside a .keras written by `make finetune`; raise WorkflowError otherwise."""
    if not os.path.isfile(path):
        raise WorkflowError(f"MODEL={path}: no such file; run `make finetune` first (it writes "
                            f"MODEL_DIR/model.keras) or pass MODEL=<file>")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(META_MEMBER))
    except (zipfile.BadZipFile, KeyError, ValueError):
        raise WorkflowError(f"MODEL={path}: not a model written by `make finetune` (no {META_MEMBER} record "
                            f"inside); rerun `make finetune`") from None
    if meta.get("format") != MODEL_FORMAT:
        raise WorkflowError(f"MODEL={path}: format={meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    return meta


def load_model(path):
    """(keras model, workflow record) from a file written by save_model."""
    import keras

    meta = read_meta(path)
    return keras.saving.load_model(path, compile=False), meta
