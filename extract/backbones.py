"""The registry of backbones: the one place that knows a keras.applications network.

Reads nothing. Writes nothing. Each entry owns its constructor, sizes, preprocessing, feature layer, fine-tuning
cut and weights file; extract/backbone.py builds any entry, and every other module asks the entry.
Example: python -m extract.backbones            # the registry as a table

Adding a backbone is one `Backbone(...)` in REGISTRY; the parametrised tests (tests/test_backbones.py) pick it up.
Layer names are those of a build in a fresh name scope (extract/backbone.py): Keras numbers unnamed layers
(`add_11`, `activation_187`) per process, and the fresh scope makes those numbers the same in every process.
"""
from dataclasses import dataclass

from core import WorkflowError

KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Preprocessing kinds, each a serialisable layer put in front of the network (extract/backbone.py, preprocess_layer)
INCEPTION = "inception"  # x / 127.5 - 1
CAFFE = "caffe"  # RGB -> BGR, minus the ImageNet mean in BGR order, no scaling
TORCH = "torch"  # x / 255, minus the ImageNet mean, divided by its std
SELF = "self"  # the network preprocesses itself: raw 0..255 in, nothing in front
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
DESCRIBE = {
    # inception_v3's text is part of existing caches' fingerprints: never edit it.
    INCEPTION: "{family}.preprocess_input (x / 127.5 - 1), as a Rescaling layer inside the model",
    CAFFE: "{family}.preprocess_input (caffe: RGB->BGR, minus ImageNet mean), as a fixed Dense(3) inside the model",
    TORCH: "{family}.preprocess_input (torch: x/255, minus ImageNet mean, / std), as a Normalization inside the model",
    SELF: "none in front: {family} preprocesses raw 0..255 RGB inside its own layers",
}


@dataclass(frozen=True)
class Backbone:
    """One keras.applications network as this workflow uses it."""

    name: str  # BACKBONE=, the public name
    constructor: str  # keras.applications.<constructor>; also the cache's `backbone` attribute
    family: str  # keras.applications.<family>.preprocess_input is the reference for `preprocessing`
    default_size: int  # IMG_SIZE when left empty
    min_size: int  # the smallest input the constructor accepts
    preprocessing: str  # INCEPTION | CAFFE | TORCH | SELF
    feature_layer: str  # LAYER when left empty: what stage 1 caches and the head reads
    unfreeze_from: str  # UNFREEZE_FROM when left empty: the first layer stage 3 trains
    cached_cut: str  # FROM_CACHE=1 reads this layer's cached output (and its views); "" where none works
    no_cut_reason: str  # why cached_cut is empty
    notop_file: str  # the no-top weights file Keras downloads into ~/.keras/models; "{size}" where it has one per size
    notop_hash: str  # Keras' published hash of it (md5: 32 hex, sha256: 64 hex); "" where Keras publishes none
    url_dir: str  # under KERAS_URL; ends in "/" where the file there has notop_file's name, else names it
    args: tuple = ()  # keyword arguments of the constructor, as (name, value) pairs: (("alpha", 0.35),)
    weight_sizes: tuple = ()  # the sizes Keras publishes a file for, where notop_file has "{size}"
    bf16_slower: bool = False  # make bench measured its bf16 inference slower than float32 on a native-bf16 CPU

    def weights_file(self, img_size: int) -> str:
        """The file Keras loads at `img_size`. Keras' rule (keras.applications.mobilenet, mobilenet_v2): the file of
        that size where one is published, else the default size's (Keras warns and loads it)."""
        if not self.weight_sizes:
            return self.notop_file
        return self.notop_file.format(size=img_size if img_size in self.weight_sizes else self.default_size)

    def url(self, img_size: int) -> str:
        if self.url_dir.endswith("/"):
            return KERAS_URL + self.url_dir + self.weights_file(img_size)
        return KERAS_URL + self.url_dir

    @property
    def files(self) -> tuple:
        """Every file name Keras publishes for this entry (one per size where it has sizes)."""
        return tuple(dict.fromkeys(self.weights_file(s) for s in self.weight_sizes or (self.default_size,)))

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    @property
    def call(self) -> str:
        """The constructor as this entry calls it: `MobileNetV2(alpha=0.35)`, `InceptionV3`."""
        return self.constructor + (f"({', '.join(f'{k}={v}' for k, v in self.args)})" if self.args else "")

    @property
    def bf16_loses(self) -> str:
        """Why PRECISION=auto keeps this backbone in float32 on a CPU with native bf16 ('' where bf16 gains)."""
        if not self.bf16_slower:
            return ""
        return (f"make bench measured {self.name} slower in bf16 than in float32 on such a CPU (its depthwise "
                f"convolutions gain nothing from bf16; docs/bench_precision.md)")

    @property
    def identity(self) -> dict:
        """What the cache records to name this entry: the constructor alone where it takes no arguments (as before
        the registry had any), else also the entry's name and its arguments, so two widths never collide."""
        if not self.args:
            return {"backbone": self.constructor}
        return {"backbone": self.constructor, "backbone_entry": self.name, "backbone_args": self.kwargs}

    @property
    def preprocessing_text(self) -> str:
        """What the cache records under `preprocessing`."""
        return DESCRIBE[self.preprocessing].format(family=self.family)


def _entry(name, constructor, family, default_size, min_size, prep, feature_layer, unfreeze_from, cached_cut,
           notop_file, notop_hash, url_dir, no_cut_reason="", **more):
    return Backbone(name, constructor, family, default_size, min_size, prep, feature_layer, unfreeze_from,
                    cached_cut, no_cut_reason, notop_file, notop_hash, url_dir, **more)


# The MobileNet family, as Keras publishes its ImageNet weights (keras/src/applications/mobilenet*.py). Each entry is
# one width; a width Keras publishes no weights for is not an entry (get() says which widths are). bf16_slower: make
# bench measured every width at 0.73x-0.98x of float32 at 224 px on avx512_bf16 (docs/bench_mobilenet.md), and
# most at 150 px too: depthwise convolutions gain nothing from bf16, and the 1x1 ones are too small to make up for it.
V1_ALPHAS = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}  # Keras' alpha_text in the file name
V1_SIZES = (128, 160, 192, 224)
V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
V2_SIZES = (96, 128, 160, 192, 224)
# v3: one 224-px file per variant, with Keras' hash; Keras loads it at any size (as v1/v2 off their sizes).
V3_FILES = {("small", False): "d3e8ec802a04aa4fc771ee12a9a9b836",
            ("large", False): "07fb09a5933dd0c8eaafa16978110389",
            ("small", True): "cde8136e733e811080d9fcd8a252f7e4",
            ("large", True): "ec5221f64a2f6d1ef965a614bdae7973"}


def _v1(name, alpha):
    # A plain chain of depthwise-separable blocks: conv_pw_12_relu alone feeds block 13, the last one.
    return _entry(name, "MobileNet", "mobilenet", 224, 32, INCEPTION, "conv_pw_13_relu", "conv_pw_12_relu",
                  "conv_pw_12_relu", f"mobilenet_{V1_ALPHAS[alpha]}_{{size}}_tf_no_top.h5", "", "mobilenet/",
                  args=() if alpha == 1.0 else (("alpha", alpha),), weight_sizes=V1_SIZES, bf16_slower=True)


def _v2(name, alpha):
    # Keras publishes no hash for MobileNetV2's files.
    return _entry(name, "MobileNetV2", "mobilenet_v2", 224, 32, INCEPTION, "out_relu", "block_15_add",
                  "block_15_add", f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{{size}}_no_top.h5",
                  "", "mobilenet_v2/", args=() if alpha == 1.0 else (("alpha", alpha),), weight_sizes=V2_SIZES,
                  bf16_slower=True)


def _v3(name, kind, minimalistic, feature_layer, last_add):
    # Keras' include_preprocessing=True (its default) puts the x / 127.5 - 1 Rescaling inside the network: raw
    # 0..255 in. The output's activation has no name (numbered in a fresh scope); the last block's input is the
    # add before it, which alone feeds that block.
    constructor = "MobileNetV3Small" if kind == "small" else "MobileNetV3Large"
    file = f"weights_mobilenet_v3_{kind}{'_minimalistic' if minimalistic else ''}_224_1.0_float_no_top_v2.h5"
    return _entry(name, constructor, "mobilenet_v3", 224, 32, SELF, feature_layer, last_add, last_add, file,
                  V3_FILES[(kind, minimalistic)], "mobilenet_v3/",
                  args=(("minimalistic", True),) if minimalistic else (), bf16_slower=True)


# Cuts: `unfreeze_from` and `cached_cut` are weightless layers (an activation, add or concatenation) whose output
# alone feeds every later layer up to `feature_layer`: the cached path trains exactly what stage 3 trains.
REGISTRY = {b.name: b for b in [
    # The recipe: 150 px, cut at mixed7 (7x7x768 at 150 px); mixed6 -> mixed7 is the last Inception block trained.
    _entry("inception_v3", "InceptionV3", "inception_v3", 150, 75, INCEPTION, "mixed7", "mixed6", "mixed6",
           "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "bcbd6486424b2319ff4ef7d526e38f63",
           "inception_v3/"),
    # Xception's residual adds have no names; block14_sepconv1_act is named and feeds block 14 alone.
    _entry("xception", "Xception", "xception", 299, 71, INCEPTION, "block14_sepconv2_act", "block14_sepconv1_act",
           "block14_sepconv1_act", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "b0042744bf5b25fce3cb969f33bebb97", "xception/"),
    _entry("resnet50", "ResNet50", "resnet", 224, 32, CAFFE, "conv5_block3_out", "conv5_block2_out",
           "conv5_block2_out", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "4d473c1dd8becc155b73f8504c6f6626", "resnet/"),
    _entry("vgg16", "VGG16", "vgg16", 224, 32, CAFFE, "block5_pool", "block4_pool", "block4_pool",
           "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc",
           "vgg16/"),
    _entry("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 75, INCEPTION, "conv_7b_ac",
           "block8_9_ac", "block8_9_ac", "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "d19885ff4a710c122648d3b5c3b684e4", "inception_resnet_v2/"),
    _v2("mobilenet_v2", 1.0),
    _entry("densenet121", "DenseNet121", "densenet", 224, 32, TORCH, "relu", "conv5_block15_concat",
           "conv5_block15_concat", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "30ee3e1110167f948a6b9946edeeb738", "densenet/"),
    # The output's ReLU has no name (activation_187 in a fresh scope). Each NASNet cell reads the two cells before
    # it, so no single layer's output feeds the last cell: no cached cut; end to end it trains from cell 11 on.
    _entry("nasnet_mobile", "NASNetMobile", "nasnet", 224, 32, INCEPTION, "activation_187", "normal_concat_11", "",
           "nasnet_mobile_no_top.h5", "1ed92395b5b598bdda52abe5c0dbfd63",
           "nasnet/NASNet-mobile-no-top.h5",
           no_cut_reason="each NASNet cell reads the outputs of the two cells before it, so no one layer's cached "
                         "output feeds the last cell"),
    _entry("efficientnet_v2b0", "EfficientNetV2B0", "efficientnet_v2", 224, 32, SELF, "top_activation",
           "block6g_add", "block6g_add", "efficientnetv2-b0_notop.h5", "893217f2bb855e2983157299931e43ff",
           "efficientnet_v2/"),
    _entry("efficientnet_v2s", "EfficientNetV2S", "efficientnet_v2", 384, 32, SELF, "top_activation",
           "block6n_add", "block6n_add", "efficientnetv2-s_notop.h5", "af0682fb74e8c54910f2d4393339c070",
           "efficientnet_v2/"),
    # The final LayerNormalization has no name (layer_normalization in a fresh scope). ConvNeXt's residual sums are
    # operations, not layers, so no layer's output is a block boundary: no cached cut.
    # bf16 against float32 at 150 px, four make bench runs on shared cores: 0.44x, 0.89x, 0.99x, 0.97x (the last
    # two timed in turns, docs/bench_precision.md), and 1.24x at 224 px, its default: a tie, left to bf16.
    _entry("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 32, SELF, "layer_normalization",
           "convnext_tiny_stage_3_block_0_depthwise_conv", "", "convnext_tiny_notop.h5",
           "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1", "convnext/",
           no_cut_reason="its residual sums are operations, not layers, so no layer's output alone feeds the blocks "
                         "after it"),
    # The MobileNet family: the laptop backbones (a few MFLOPs to 0.6 GFLOPs per image at 224 px).
    _v1("mobilenet_025", 0.25), _v1("mobilenet_050", 0.5), _v1("mobilenet_075", 0.75), _v1("mobilenet", 1.0),
    _v2("mobilenet_v2_035", 0.35), _v2("mobilenet_v2_050", 0.5), _v2("mobilenet_v2_075", 0.75),
    _v2("mobilenet_v2_130", 1.3), _v2("mobilenet_v2_140", 1.4),
    _v3("mobilenet_v3_small", "small", False, "activation_17", "expanded_conv_9_add"),
    _v3("mobilenet_v3_large", "large", False, "activation_19", "expanded_conv_13_add"),
    _v3("mobilenet_v3_small_minimalistic", "small", True, "re_lu_22", "expanded_conv_9_add"),
    _v3("mobilenet_v3_large_minimalistic", "large", True, "re_lu_30", "expanded_conv_13_add"),
]}
DEFAULT = "inception_v3"


def get(name: str) -> Backbone:
    """The entry for BACKBONE=`name`, or for a cache's recorded constructor name (`InceptionV3`): the entry that calls
    it without arguments (a cache of an entry with arguments also records its name: see `of_record`)."""
    if name in REGISTRY:
        return REGISTRY[name]
    for b in REGISTRY.values():
        if b.constructor == name and not b.args:
            return b
    raise WorkflowError(f"BACKBONE={name}: {_unpublished(name) or 'not registered'}; choose one of "
                        f"{', '.join(REGISTRY)} (extract/backbones.py; adding one is one entry there)")


def _unpublished(name: str) -> str:
    """Why a MobileNet width that is not an entry has none: Keras publishes no ImageNet weights for it."""
    families = [("mobilenet_v3_", "MobileNetV3 only at alpha 1.0 (the _small, _large and _minimalistic entries)"),
                ("mobilenet_v2_", f"MobileNetV2 only at alpha {', '.join(map(str, V2_ALPHAS))}"),
                ("mobilenet_", f"MobileNet only at alpha {', '.join(map(str, V1_ALPHAS))}")]
    for prefix, widths in families:
        if name.startswith(prefix):
            return f"Keras publishes ImageNet weights for {widths}"
    return ""


def of_record(record: dict) -> Backbone:
    """The entry a cache (or one ensemble member's record) was made with: by the entry name and arguments it records,
    else by its constructor (caches of entries without arguments record only that)."""
    if "backbone_entry" in record:
        spec = get(record["backbone_entry"])
        if spec.identity != {k: record.get(k) for k in spec.identity}:
            raise WorkflowError(f"backbone {record['backbone_entry']} was recorded as {record.get('backbone')} with "
                                f"arguments {record.get('backbone_args')}, but is now {spec.constructor} with "
                                f"{spec.kwargs}; rerun `make features`")
        return spec
    return get(record["backbone"])


def bf16_loses_among(specs) -> str:
    """bf16_loses of a network made of `specs` (an ensemble runs in one precision: its first member that loses)."""
    return next((s.bf16_loses for s in specs if s.bf16_loses), "")


def bf16_loses_of(record: dict) -> str:
    """bf16_loses of the network a cache's or model's record names (one backbone, or an ensemble's `backbones`)."""
    if not record.get("backbones") and "backbone" not in record:
        return ""  # a record that names no backbone (a hand-made model.keras): as before entries said
    try:
        return bf16_loses_among(map(of_record, record.get("backbones") or [record]))
    except WorkflowError:  # a backbone this code no longer registers: as before entries said, bf16 where native
        return ""


def table() -> str:
    """The registry as a Markdown table (README, docs)."""
    rows = ["| BACKBONE | keras.applications | size (min) | preprocessing | LAYER | UNFREEZE_FROM | FROM_CACHE cut |",
            "|---|---|---|---|---|---|---|"]
    for b in REGISTRY.values():
        rows.append(f"| {b.name} | {b.call} | {b.default_size} ({b.min_size}) | {b.preprocessing} | "
                    f"{b.feature_layer} | {b.unfreeze_from} | {b.cached_cut or 'none'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
