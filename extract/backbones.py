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
    notop_file: str  # the no-top weights file Keras downloads into ~/.keras/models
    notop_hash: str  # Keras' published hash of it (md5: 32 hex, sha256: 64 hex); "" where Keras publishes none
    url_dir: str  # under KERAS_URL; ends in "/" where the file there has notop_file's name, else names it

    @property
    def url(self) -> str:
        return KERAS_URL + self.url_dir + (self.notop_file if self.url_dir.endswith("/") else "")

    @property
    def preprocessing_text(self) -> str:
        """What the cache records under `preprocessing`."""
        return DESCRIBE[self.preprocessing].format(family=self.family)


def _entry(name, constructor, family, default_size, min_size, prep, feature_layer, unfreeze_from, cached_cut,
           notop_file, notop_hash, url_dir, no_cut_reason=""):
    return Backbone(name, constructor, family, default_size, min_size, prep, feature_layer, unfreeze_from,
                    cached_cut, no_cut_reason, notop_file, notop_hash, url_dir)


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
    # Keras publishes no hash for MobileNetV2's files; its 224-px file serves every size.
    _entry("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 32, INCEPTION, "out_relu", "block_15_add",
           "block_15_add", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "",
           "mobilenet_v2/"),
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
    _entry("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 32, SELF, "layer_normalization",
           "convnext_tiny_stage_3_block_0_depthwise_conv", "", "convnext_tiny_notop.h5",
           "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1", "convnext/",
           no_cut_reason="its residual sums are operations, not layers, so no layer's output alone feeds the blocks "
                         "after it"),
]}
DEFAULT = "inception_v3"


def get(name: str) -> Backbone:
    """The entry for BACKBONE=`name`, or for a cache's recorded constructor name (`InceptionV3`)."""
    if name in REGISTRY:
        return REGISTRY[name]
    for b in REGISTRY.values():
        if b.constructor == name:
            return b
    raise WorkflowError(f"BACKBONE={name}: not registered; choose one of {', '.join(REGISTRY)} "
                        f"(extract/backbones.py; adding one is one entry there)")


def table() -> str:
    """The registry as a Markdown table (README, docs)."""
    rows = ["| BACKBONE | keras.applications | size (min) | preprocessing | LAYER | UNFREEZE_FROM | FROM_CACHE cut |",
            "|---|---|---|---|---|---|---|"]
    for b in REGISTRY.values():
        rows.append(f"| {b.name} | {b.constructor} | {b.default_size} ({b.min_size}) | {b.preprocessing} | "
                    f"{b.feature_layer} | {b.unfreeze_from} | {b.cached_cut or 'none'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
