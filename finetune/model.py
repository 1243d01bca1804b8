"""The full network: the cache's backbone (its registry entry) rebuilt from the cache's record, with the stage-2 head
put back on, and the rules of what it trains.

Reads FEATURES' record (config + provenance only) and HEAD_DIR/head.keras. Writes nothing (finetune/record.py saves).
Example: python -c "from finetune.model import trainable_names"   # see finetune/run.py
"""
from cache import CacheMismatch
from classify.head import build_head
from classify.record import HeadMismatch, load_head
from core import WorkflowError, precision
from extract import backbone, backbones, ensemble, images

# Fine-tuning rules (keras-io "Transfer learning & fine-tuning"): UNFREEZE_FROM defaults to the registry entry's
# `unfreeze_from` (extract/backbones.py), the last block before the feature layer: earlier blocks hold generic
# edges/textures that a few thousand images cannot improve, only overfit.


def spec_of(cfg):
    """The registry entry a cache records: its name and arguments where it has arguments, else its constructor."""
    return backbones.of_record(cfg)


def unfreeze_from(cfg, requested: str = "") -> str:
    """UNFREEZE_FROM as given, else the cache's backbone's default; an ensemble trains its head on the images."""
    if ensemble.is_ensemble(cfg):
        if requested and requested != ensemble.CONCAT_LAYER:
            raise WorkflowError(f"UNFREEZE_FROM={requested}: fine-tuning an ensemble's backbones is not built; leave "
                                f"it empty (the head trains end to end on the images, every backbone frozen)")
        return ensemble.CONCAT_LAYER
    return requested or spec_of(cfg).unfreeze_from


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
    """The cache must describe registered backbones, their preprocessing and the resize this code implements."""
    members = cfg.get("backbones") if ensemble.is_ensemble(cfg) else [cfg]
    if cfg.get("resize") != images.RESIZE:
        raise CacheMismatch(f"{path}: resize={cfg.get('resize')!r}, this code implements {images.RESIZE!r}; "
                            f"rerun `make features FEATURES={path}`")
    for member in members:
        try:
            spec = spec_of(member)
        except WorkflowError:
            raise CacheMismatch(f"{path}: backbone={member.get('backbone')!r} is not registered here "
                                f"(extract/backbones.py: {', '.join(backbones.REGISTRY)}); rerun `make features "
                                f"FEATURES={path}`") from None
        ours = {**spec.identity, "preprocessing": spec.preprocessing_text}
        for key, value in ours.items():
            if member.get(key) != value:
                raise CacheMismatch(f"{path}: {key}={member.get(key)!r}, this code implements {value!r}; "
                                    f"rerun `make features FEATURES={path}`")


def resolve_cache_weights(cache) -> dict:
    """Re-resolve the cache's weights source and prove it is the same file (sha256); an ensemble: each member's."""
    cfg = cache.config
    if ensemble.is_ensemble(cfg):
        return {"members": tuple(_same_weights(cache, spec_of(r), r) for r in cfg["backbones"])}
    return _same_weights(cache, spec_of(cfg), cfg)


def _same_weights(cache, spec, cfg) -> dict:
    info = backbone.resolve_weights(spec, weights_source(cfg), cfg["image_size"])
    if info["weights_sha256"] != cfg["weights_sha256"]:
        raise CacheMismatch(f"{cache.path}: built with weights sha256 {cfg['weights_sha256'][:12]} "
                            f"({cfg['weights']} {cfg['weights_file']}), but {info['weights_file'] or info['weights']} "
                            f"now has {info['weights_sha256'][:12]}; restore that file or rerun `make features`")
    return info


def build_full_model(cfg, weights_info, layer, feature_shape, digest=None, cache_path="", head_config=None):
    """image -> the cache's backbone cut at `layer` -> build_head(**head_config); returns (model, cut model).

    With `digest`, the rebuilt backbone must hold the same numbers the cache was computed with.
    """
    import keras

    if ensemble.is_ensemble(cfg):
        spec, name = None, cfg["backbone"]
        base = ensemble.build_trunk([(s, size) for s, size, _ in ensemble.members_of(cfg)], weights_info["members"])
    else:
        spec = spec_of(cfg)
        name = spec.name
        base = backbone.build_base(spec, cfg["image_size"], weights_info)
    if digest is not None:
        got = backbone.weights_digest(backbone.cut(base, cfg["layers"], spec))
        if got != digest:
            raise CacheMismatch(f"{cache_path}: the rebuilt {cfg['backbone']} holds other weights than the one "
                                f"that computed the cache (digest {got[:12]} vs {digest[:12]}; Keras or weights "
                                f"changed?); rerun `make features FEATURES={cache_path}`")
    trunk = backbone.cut(base, [layer], spec)
    # The head computes in float32 in a float32 or bf16 network: stage 2 trained it in float32 on float32 features,
    # and Keras casts the trunk's bf16 maps at its input. Under mixed_float16 (GPU training) it computes in float16
    # as before, for the GPU's speed; its sigmoid is float32 (build_head) and the export is float32 either way.
    mixed16 = keras.mixed_precision.global_policy().name == "mixed_float16"
    with precision.building("mixed_float16" if mixed16 else "float32"):
        head = build_head(feature_shape, **(head_config or {}))  # the one head builder; weights: copy_head_weights
    # inputs[0], not .input: the applications model keeps its inputs as a one-item list, and a model built on
    # that list warns each time it is called on a plain batch.
    model = keras.Model(trunk.inputs[0], head(trunk.outputs[0]), name=f"{name}_{layer}_head")
    return model, trunk


def trainable_names(trunk, unfreeze_from: str) -> list:
    """Names to train: non-BatchNormalization layers of `trunk` at or after `unfreeze_from`, in layer order."""
    import keras

    names = [l.name for l in trunk.layers]
    if unfreeze_from not in names:
        raise WorkflowError(f"UNFREEZE_FROM={unfreeze_from}: not a layer of the backbone cut at {names[-1]}; leave "
                            f"it empty for the backbone's default, or name a layer before {names[-1]} from "
                            f"model.summary()")
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


def build(cache, weights_info, layer, compute: str, head_config=None, check_digest=False):
    """(full model, trunk) whose backbone computes in `compute` ('float32', 'bfloat16' or 'mixed_float16').

    With `check_digest` the rebuilt backbone must hold the cache's numbers (variables are float32 in every policy).
    """
    with precision.building(compute):
        return build_full_model(cache.config, weights_info, layer, cache.feature_shape(layer),
                                cache.provenance["backbone_digest"] if check_digest else None, cache.path,
                                head_config)


def assemble(cache, head_dir, layer, weights_info=None, head_config=None):
    """(full model in the cache's precision holding the stage-2 head's weights, its trunk, the stage-2 head as saved).

    The cache's precision, not PRECISION: it reproduces the cached features, so the equivalence check holds."""
    model, trunk = build(cache, weights_info or resolve_cache_weights(cache), layer, cache.precision,
                         head_config=head_config, check_digest=True)
    head_src = load_head(head_dir)
    copy_head_weights(model.get_layer("head"), head_src, head_dir)
    return model, trunk, head_src
