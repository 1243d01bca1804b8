"""Several backbones in one pass (BACKBONES=inception_v3,xception,resnet50): one decode, each backbone once.

Reads nothing (extract/features.py feeds it decoded images). Writes nothing: stage 1 stores the trunk's output, the
concatenated pooled features, as the cache's one layer CONCAT_LAYER, with each member's record in its config.
Example: python -m extract --backbones inception_v3:75,xception:71,resnet50:32 --weights none --data data/demo/train

The trunk is the model the cache is computed with and the one stage 3 puts the head on: raw RGB at the largest
member's size in; per member an in-model bilinear resize to its own size (none for the largest), its preprocessing
and network (extract/backbone.py), global average pooling of its feature layer; then the concatenation, shaped
(1, 1, sum of channels) so that every head kind and the baseline read it as they read any feature map.
"""
from core import WorkflowError
from core.files import fingerprint

from . import backbone, backbones

ENSEMBLE = "ensemble"  # the cache's `backbone` for a trunk of several
CONCAT_LAYER = "concat"  # the cache's one layer; UNFREEZE_FROM for an ensemble (the head alone trains)
POOL = "global average pooling of each member's feature layer, concatenated in BACKBONES order"


def parse(value: str) -> tuple:
    """BACKBONES=name[:size],... -> ((spec, size), ...); size defaults to the member's registered default."""
    members = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        name, _, size = item.partition(":")
        spec = backbones.get(name)
        try:
            img_size = int(size) if size else spec.default_size
        except ValueError:
            raise WorkflowError(f"BACKBONES={value}: {item!r} is not name or name:size, e.g. xception:299") from None
        backbone.check_img_size(spec, img_size)
        members.append((spec, img_size))
    names = [s.name for s, _ in members]
    if len(members) < 2 or len(set(names)) != len(names):
        raise WorkflowError(f"BACKBONES={value}: name two or more different backbones, e.g. "
                            f"BACKBONES=inception_v3,xception,resnet50 (one backbone: BACKBONE=)")
    return tuple(members)


def records(members, weights_infos) -> list:
    """Each member's record, as the cache's config keeps it: what rebuilds and checks its branch."""
    return [{"name": spec.name, **spec.identity, "image_size": size, "layer": spec.feature_layer,
             "preprocessing": spec.preprocessing_text, "pool": "global average", **info}
            for (spec, size), info in zip(members, weights_infos)]


def weights_record(weights: str, member_records) -> dict:
    """The cache's top-level weights keys for an ensemble: WEIGHTS as given and one hash over the members'."""
    return {"weights": weights, "weights_file": "",
            "weights_sha256": fingerprint([r["weights_sha256"] for r in member_records])}


def is_ensemble(cfg) -> bool:
    return cfg.get("backbone") == ENSEMBLE


def members_of(cfg) -> list:
    """((spec, size, record), ...) of an ensemble cache's config."""
    return [(backbones.get(r["name"]), r["image_size"], r) for r in cfg["backbones"]]


def build_trunk(members, weights_infos):
    """raw RGB at the largest size -> per member: resize, preprocessing + network to its feature layer, pool ->
    concatenation as (1, 1, C). Frozen; each member in its own branch (a nested model named after it)."""
    import keras

    size = max(s for _, s in members)
    inp = keras.Input((size, size, 3), name="image")
    pooled = []
    for (spec, img_size), info in zip(members, weights_infos):
        x = inp
        if img_size != size:  # in the model, so the exported model.keras resizes exactly as the cache did
            x = keras.layers.Resizing(img_size, img_size, interpolation="bilinear", name=f"{spec.name}_resize")(x)
        branch = backbone.build_backbone(spec, img_size, [spec.feature_layer], info)
        pooled.append(keras.layers.GlobalAveragePooling2D(name=f"{spec.name}_pool")(branch(x)))
    x = keras.layers.Concatenate(name="concat_pooled")(pooled)
    out = keras.layers.Reshape((1, 1, int(x.shape[-1])), name=CONCAT_LAYER)(x)
    trunk = keras.Model(inp, out, name="ensemble_" + "_".join(s.name for s, _ in members))
    trunk.trainable = False
    return trunk
