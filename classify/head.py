"""The dense head, built by exactly one function that stages 2 and 3 and the sweep all call.

Reads and writes nothing. Example: python -c "from classify.head import build_head; build_head((3, 3, 768), kind='pooled', units=256).summary()"

Kinds (HEAD=...):
- flatten: the recipe's Flatten -> Dense(UNITS, relu) -> Dropout -> Dense(1, sigmoid); at 150 px and mixed7 that
  is 38.5M weights, nearly all in head_dense.
- pooled: GlobalAveragePooling2D -> Dropout -> Dense(UNITS, relu) -> Dropout -> Dense(1, sigmoid): 768 inputs
  instead of 3 x 3 x 768 or 7 x 7 x 768, so an epoch costs a fraction; UNITS=0 is a logistic head on the pooled
  features (GAP -> Dropout -> Dense(1)).
- concat: Flatten -> Dropout -> Dense(1, sigmoid), for an ensemble cache's concatenated pooled features (BACKBONES=,
  extract/ensemble.py), as the ypwhs/dogs_vs_cats entry did with DROPOUT=0.5; UNITS adds Dense(UNITS, relu) ->
  Dropout before the output.

K classes: the output is Dense(1, sigmoid) for K = 2 (the recipe's, so existing heads and models load unchanged)
and Dense(K, softmax) for K > 2; `probabilities` turns either into the (n, K) array every caller takes.
Every layer before the first Dense is linear (Flatten, average pooling, inference-mode Dropout), which is what
lets classify.train fold the feature scale into that Dense's kernel (`first_dense`).
"""
HEAD_KINDS = ("flatten", "pooled", "concat")
HEAD_UNITS = 1024
HEAD_DROPOUT = 0.2
DEFAULT = {"kind": "flatten", "units": HEAD_UNITS, "dropout": HEAD_DROPOUT}


def head_config(kind="flatten", units=HEAD_UNITS, dropout=HEAD_DROPOUT, classes=2) -> dict:
    """The checked {"kind", "units", "dropout"} record that metrics.json keeps and build_head takes back, with
    "classes" where K > 2 (a binary head's record, and so its run fingerprint, stays as it was)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"HEAD={kind!r}: choose one of {', '.join(HEAD_KINDS)}")
    if int(units) < 0 or not 0 <= float(dropout) < 1:
        raise ValueError(f"UNITS={units} DROPOUT={dropout}: need UNITS >= 0 and 0 <= DROPOUT < 1")
    return {"kind": kind, "units": int(units), "dropout": float(dropout),
            **({"classes": int(classes)} if int(classes) != 2 else {})}


def loss_name(classes: int) -> str:
    """The training loss of a head with `classes` outputs (K = 2: one sigmoid)."""
    return "binary_crossentropy" if classes == 2 else "sparse_categorical_crossentropy"


def probabilities(output):
    """A head's (or a full model's) output as the (n, K) float64 array: one sigmoid column p becomes (1 - p, p)."""
    from core.metrics import probabilities as as_nk

    return as_nk(output)


def read_head_config(metrics: dict) -> dict:
    """The head's kind and settings from a HEAD_DIR/metrics.json dict; heads written before kinds existed are
    the recipe's flatten head."""
    return head_config(**{**DEFAULT, **(metrics.get("config", {}).get("head") or {})})


def build_head(feature_shape, kind="flatten", units=HEAD_UNITS, dropout=HEAD_DROPOUT, classes=2, name="head"):
    """The head of `kind` as a Model on (h, w, c) feature maps, ending in Dense(1, sigmoid) (K = 2) or
    Dense(K, softmax).

    The output layer is float32 even under a mixed-precision policy: a float16 sigmoid saturates and its
    log loss is unstable.
    """
    import keras

    cfg = head_config(kind, units, dropout, classes)
    inp = keras.Input(tuple(feature_shape), name="features")
    if cfg["kind"] == "flatten":  # the recipe's layers and names: stage 3 copies weights by name
        x = keras.layers.Flatten(name="head_flatten")(inp)
        if cfg["units"]:
            x = keras.layers.Dense(cfg["units"], activation="relu", name="head_dense")(x)
        x = keras.layers.Dropout(cfg["dropout"], name="head_dropout")(x)
    elif cfg["kind"] == "concat":
        x = keras.layers.Flatten(name="head_flatten")(inp)
        x = keras.layers.Dropout(cfg["dropout"], name="head_dropout_in")(x)
        if cfg["units"]:
            x = keras.layers.Dense(cfg["units"], activation="relu", name="head_dense")(x)
            x = keras.layers.Dropout(cfg["dropout"], name="head_dropout")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(inp)
        x = keras.layers.Dropout(cfg["dropout"], name="head_dropout_in")(x)
        if cfg["units"]:
            x = keras.layers.Dense(cfg["units"], activation="relu", name="head_dense")(x)
            x = keras.layers.Dropout(cfg["dropout"], name="head_dropout")(x)
    k = int(classes)
    out = keras.layers.Dense(1 if k == 2 else k, activation="sigmoid" if k == 2 else "softmax", dtype="float32",
                             name="head_output")(x)
    return keras.Model(inp, out, name=name)


def first_dense(head):
    """The first Dense layer: every layer before it is linear, so features / s == that kernel / s."""
    import keras

    return next(l for l in head.layers if isinstance(l, keras.layers.Dense))
