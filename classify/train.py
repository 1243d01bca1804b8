"""Training the dense head on cached features: deterministic, early-stopped, resumable after SIGKILL.

Reads batches from classify.data.Feeds. Writes HEAD_DIR/_work/ while training (core.runs: run.json, history.csv,
backup/: the last commit), which the stage removes once head.keras is saved.
Example: python -m classify --features artifacts/features.h5 --head-dir artifacts/head --epochs 20

Feature scale: the head sees features divided by one number, the RMS of the train features, and that number is
folded into the first Dense kernel before the head is saved (Dense(x / s) == Dense with kernel / s; every layer
before it, Flatten or average pooling, is linear), so the saved
head takes raw backbone output and stage 3 needs no extra layer. Why: Adam's step moves each weight by about LR
whatever the gradient's size, so the first layer's output moves by about LR x sum|x|. A random-init backbone
(WEIGHTS=none) gives mixed7 values of RMS ~1e-3; at LR=1e-4 the head then did not leave chance in 20 epochs on
the synthetic set, where on unit-RMS inputs it reaches 1.0 val accuracy in a few epochs. One scalar, not
per-feature standardising, because ReLU features that are always 0 on the train rows have no usable std.
"""
import numpy as np

from core import WorkflowError
from core.optimizer import adam
from core.runs import RunState

from .head import build_head, first_dense, loss_name


def train_head(feeds, epochs: int, lr: float, seed: int, run: RunState, patience: int, verbose="auto", xla=False,
               deterministic=True, head=None, weight_decay=None, extra_callbacks=()):
    """Fit the head on `feeds`, resuming `run`; return the best-val-loss head (taking raw features).

    `head`: build_head's kind/units/dropout (default the recipe's); `weight_decay`: Adam's decoupled decay (None:
    plain Adam, the recipe's); `extra_callbacks`: run after the bookkeeping ones, e.g. the sweep's pruning."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # initial weights and dropout masks
    if deterministic:  # same SEED, same batches -> same weights, bit for bit
        tf.config.experimental.enable_op_determinism()
    start = run.prepare()
    if start:
        print(f"{run.dir}: resuming at epoch {start + 1} (delete it to start afresh)")
    model = build_head(feeds.shape, **(head or {}))
    # Adam's update of the 38.5M weights of a 150 px head is one fused kernel per weight (core/optimizer.py), so the
    # deterministic default needs no XLA for it. XLA stays a choice (--xla 1 with --deterministic 0); Keras refuses it
    # under op determinism (not every XLA op has a deterministic form), so the caller asks for at most one of them.
    assert not (xla and deterministic), "Keras would drop XLA under op determinism, with only a warning"
    model.compile(optimizer=adam(lr, weight_decay),
                  loss=loss_name((head or {}).get("classes", 2)), jit_compile=xla, metrics=["accuracy"])
    if start < epochs:
        model.fit(feeds.train(), validation_data=feeds.val(), epochs=epochs, initial_epoch=start, verbose=verbose,
                  shuffle=False, callbacks=[*run.callbacks(patience, feeds), *extra_callbacks])  # data shuffles itself
    if not run.load_best(model):
        raise WorkflowError(f"no epoch gave a finite val loss (diverged?); rerun with a smaller LR, "
                            f"e.g. LR={lr / 10:g}")
    return export(model, feeds.shape, feeds.scale, head)


def export(model, feature_shape, scale: float, head_cfg=None):
    """A fresh, uncompiled head with `model`'s weights and the feature scale folded into its first Dense."""
    head = build_head(feature_shape, **(head_cfg or {}))
    head.set_weights(model.get_weights())
    dense = first_dense(head)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * np.float32(1.0 / scale), bias])
    return head
