"""TensorBoard logs of training runs (TB_DIR; empty: off): the Keras callback every run adds, and the HParams records
that let TensorBoard's HParams view compare a sweep's trials.

Writes TensorBoard event files under the folder it is given; reads nothing.
Example: make sweep TB_DIR=artifacts/tb && tensorboard --logdir artifacts/tb

Layout: TB_DIR/head (make head), TB_DIR/finetune (make finetune), TB_DIR/sweep (the sweep's HParams experiment) and
TB_DIR/sweep/trial-<n> (each trial). Each run folder holds Keras' train/ and validation/ event files: loss and
metrics per epoch, and the learning rate (Keras logs the optimizer's `learning_rate` with each epoch).
"""
import os


def callback(log_dir):
    """keras.callbacks.TensorBoard writing per-epoch scalars into `log_dir` (no graph, no profiler: small logs)."""
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                       update_freq="epoch", profile_batch=0)


def stage_dir(tb_dir, stage: str):
    """TB_DIR/<stage>, or None when TB_DIR is empty (no logs)."""
    return os.path.join(str(tb_dir), stage) if tb_dir else None


def write_experiment(log_dir, space, metric: str):
    """The HParams experiment at `log_dir`: each searched parameter (SPACE rows: name, kind, values) and `metric`."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    params = [hp.HParam(name, hp.Discrete(list(values)) if kind == "categorical" else hp.RealInterval(*map(float, values)))
              for name, kind, values in space]
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams_config(hparams=params, metrics=[hp.Metric(metric, display_name=metric),
                                                   hp.Metric("epoch_loss", group="validation", display_name="val loss")])


def write_trial(log_dir, trial_id: str, params: dict, metrics: dict):
    """One trial's HParams record at `log_dir` (its run folder): its parameters and final `metrics` (name -> float)."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams(params, trial_id=trial_id)
        for name, value in metrics.items():
            if value is not None:
                tf.summary.scalar(name, float(value), step=0)
