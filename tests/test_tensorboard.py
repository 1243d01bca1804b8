"""TB_DIR: TensorBoard event files of a training run (loss, metrics and learning rate per epoch), read back with
TensorBoard's own reader; the sweep's HParams records are checked in test_sweep.py."""
import os

from conftest import head_args


def scalars(run_dir) -> dict:
    """{tag: [(step, value)]} of the scalar summaries in one TensorBoard run folder."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def summary_plugins(run_dir) -> dict:
    """{plugin name: {tag: plugin content bytes}} of the summaries in `run_dir`'s own event files (not subfolders)."""
    import tensorflow as tf

    out = {}
    for name in os.listdir(run_dir):
        if name.startswith("events.out"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, name)):
                for v in event.summary.value:
                    out.setdefault(v.metadata.plugin_data.plugin_name, {})[v.tag] = v.metadata.plugin_data.content
    return out


def hparams_of(content: bytes) -> dict:
    """The HParams plugin's record (experiment or session start) as a message."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData()
    data.ParseFromString(content)
    return data


def test_head_writes_loss_metrics_and_learning_rate_per_epoch(cache_path, tmp_path):
    import csv

    from classify.__main__ import main

    tb = tmp_path / "tb"
    assert main(head_args(cache_path, tmp_path / "head", "--tb-dir", str(tb))) == 0
    train, val = scalars(tb / "head" / "train"), scalars(tb / "head" / "validation")
    with open(tmp_path / "head" / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    epochs = list(range(len(history)))
    assert [s for s, _ in train["epoch_loss"]] == epochs and [s for s, _ in val["epoch_loss"]] == epochs
    assert [s for s, _ in train["epoch_learning_rate"]] == epochs
    assert all(abs(v - 1e-3) < 1e-9 for _, v in train["epoch_learning_rate"])  # head_args' LR
    for (_, v), row in zip(val["epoch_loss"], history):  # the same figures as history.csv's val_loss
        assert abs(v - float(row["val_loss"])) < 1e-5
    assert any(t.startswith("epoch_") and t not in ("epoch_loss", "epoch_learning_rate") for t in val)  # a metric


def test_no_tb_dir_writes_no_logs(cache_path, tmp_path):
    from classify.__main__ import main

    assert main(head_args(cache_path, tmp_path / "head", "--epochs", "1")) == 0
    assert not any(n.startswith("events.out") for _, _, files in os.walk(tmp_path) for n in files)
