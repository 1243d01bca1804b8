"""How stage 3 trains, whichever its input: the device strategy, the batch rule, the compile, and the resumable fit.

Reads batches from the path's datasets. Writes MODEL_DIR/_work/ while training (core.runs.RunState).
Example: python -m finetune --data data/demo/train --features artifacts/demo/features.h5 --head-dir artifacts/demo/head --model-dir artifacts/demo/finetune --epochs 1

The batch rule, for the end-to-end and the cached path alike: BATCH is the global batch, it must divide evenly
over the N replicas, and every training batch holds exactly BATCH rows, the last one padded with zero-weight rows
(extract.pipeline.labelled_dataset, classify.data.Feeds with pad_last). So each replica gets BATCH / N rows at
every step, never an empty batch, and a step on N devices is the step on one: Keras' sum_over_batch_size divides
the weighted loss by BATCH either way. On several replicas the validation batches are padded too; on one device
they stay short, so that its val_loss (early stopping, history) is the plain mean over the val rows.
"""
from core import WorkflowError

PATIENCE = 3  # epochs without a better val_loss before stopping; at LR 1e-5 progress is slow but steady


def make_strategy(devices=None):
    """tf.distribute.MirroredStrategy over `devices` (default: every visible GPU) when there are two or more, else
    TF's default one-device strategy.

    The route Keras 3 documents for several GPUs of one host on TensorFlow: build and compile the model inside
    `strategy.scope()`, then `fit` as usual. Multi-worker strategies are broken with Keras 3
    (keras-team/keras#20585, tensorflow/tensorflow#72388).
    """
    import tensorflow as tf

    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) < 2:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(list(devices))


def check_batch(batch: int, replicas: int):
    """The batch rule's first half: BATCH splits evenly over the replicas."""
    if batch % replicas:
        raise WorkflowError(f"BATCH={batch}: with {replicas} devices the global batch must split evenly; use "
                            f"BATCH={max(1, batch // replicas) * replicas}")


def compile_for_finetuning(model, lr: float, xla: bool, classes: int = 2):
    """Adam at `lr` on the head's loss for `classes` (classify.head.loss_name). Call after every change of
    `trainable`: Keras fixes the set of trained variables when it compiles."""
    import keras

    from classify.head import loss_name
    from core.optimizer import adam

    from .gradients import input_gradient

    input_gradient(model)  # the head's input gradient without a transposed copy of its kernel (finetune/gradients.py)
    # Keras' AUC metric reads one probability per row: the binary model's; K > 2 records its macro AUC after training
    auc = [keras.metrics.AUC(name="auc")] if classes == 2 else []
    model.compile(optimizer=adam(lr), loss=loss_name(classes), metrics=["accuracy", *auc],
                  jit_compile=bool(xla))


def fit(model, ds_train, ds_val, run, epochs: int, patience: int, feeds=None):
    """Train `model`, resuming `run` (core.runs.RunState) where a killed run stopped; return the epoch it resumed at."""
    resume = run.prepare()
    if resume:
        print(f"{run.dir}: resuming a killed run after epoch {resume}/{epochs}")
    model.fit(ds_train, validation_data=ds_val, epochs=epochs, initial_epoch=resume, verbose=1,
              shuffle=False, callbacks=run.callbacks(patience, feeds, verbose=1))  # the data shuffles itself
    run.load_best(model)  # the best val_loss epoch, not the last one
    return resume
