"""The dense head of the recipe, built by exactly one function that stages 2 and 3 both call.

Reads and writes nothing. Example: python -c "from classify.head import build_head; build_head((3, 3, 768)).summary()"
"""
HEAD_UNITS = 1024
HEAD_DROPOUT = 0.2


def build_head(feature_shape, name="head"):
    """Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid), as a Model on (h, w, c) feature maps.

    The output layer is float32 even under a mixed-precision policy: a float16 sigmoid saturates and its
    log loss is unstable.
    """
    import keras

    inp = keras.Input(tuple(feature_shape), name="features")
    x = keras.layers.Flatten(name="head_flatten")(inp)
    x = keras.layers.Dense(HEAD_UNITS, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout")(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head_output")(x)
    return keras.Model(inp, out, name=name)
