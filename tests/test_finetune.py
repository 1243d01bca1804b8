"""Stage 3: the rebuilt network reproduces the head, trains only what the rules say, keeps BN frozen, resumes after a kill."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import ROOT, run_module

HEAD_EPOCHS, HEAD_LR = 15, 1e-2  # random-init features are tiny (std ~1e-3): a large LR spreads P over 0..1


def write_head(cache_path, head_dir, epochs=HEAD_EPOCHS, lr=HEAD_LR, seed=0):
    """A stage-2 HEAD_DIR, written by stage 2's own record module, of a head trained briefly on the cached features."""
    import keras

    from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
    from classify import record
    from classify.head import build_head
    from core.metrics import scores, val_keys

    with open_cache(cache_path, need_labels=True) as c:
        keras.utils.set_random_seed(seed)
        head = build_head(c.feature_shape())
        head.compile(keras.optimizers.Adam(lr), "binary_crossentropy")
        tr = c.rows(SPLIT_TRAIN)
        head.fit(c.read(tr), c.labels[tr].astype("float32"), epochs=epochs, batch_size=16, verbose=0)
        va = c.rows(SPLIT_VAL)
        record.begin(head_dir)
        record.save_head(head_dir, head)
        head_scores = val_keys(scores(c.labels[va], head.predict(c.read(va), verbose=0)))  # as stage 2 records them
        record.write_metrics(head_dir, head_scores, {}, c, c.layer, {"epochs": epochs, "lr": lr})
    return head_dir


def build_from_cache(cache_path, head_dir):
    """(full model, cut backbone, open cache, loaded head) exactly as `python -m finetune` assembles them."""
    from cache import open_cache
    from finetune import model as fm

    cache = open_cache(cache_path, need_labels=True)
    model, trunk, head_src = fm.assemble(cache, head_dir, cache.layer)
    return model, trunk, cache, head_src


@pytest.fixture(scope="module")
def head_dir(cache_path, tmp_path_factory):
    return write_head(cache_path, str(tmp_path_factory.mktemp("head")))


@pytest.fixture(scope="module")
def built(cache_path, head_dir):
    model, trunk, cache, head_src = build_from_cache(cache_path, head_dir)
    yield model, trunk, cache, head_src
    cache.close()


def ft_args(train_dir, cache_path, head_dir, model_dir, *extra):
    return ["--data", str(train_dir), "--features", str(cache_path), "--head-dir", str(head_dir),
            "--model-dir", str(model_dir), "--batch", "16", *extra]


def run_main(argv, capsys):
    """`python -m finetune` in this process: (exit code, stderr)."""
    from finetune.__main__ import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_refused_before_training(result, model_dir):
    """`python -m finetune` stopped by the equivalence check: exit 2, its one line, nothing trained or written."""
    code, err = result
    assert code == 2
    assert "equivalence check failed, not fine-tuning" in err and "Traceback" not in err
    assert not (model_dir / "model.keras").exists() and not (model_dir / "_work").exists()


# -- the equivalence check -------------------------------------------------------------------------------
@pytest.mark.slow
def test_equivalence_passes_on_the_cached_val_images(built, train_dir):
    from cache import SPLIT_VAL
    from finetune import equivalence

    model, _, cache, head_src = built
    eq, p_full = equivalence.full_model(model, head_src, cache, cache.layer, str(train_dir), 16)
    rows = cache.rows(SPLIT_VAL)
    p_head = head_src.predict(cache.read(rows), verbose=0).ravel()
    assert eq["n_val"] == len(rows) > 10
    assert eq["max_abs_diff"] <= 1e-3
    assert p_full.shape == (len(rows), 2)  # the (n, K) contract; the binary head's sigmoid is its class-1 column
    np.testing.assert_allclose(p_full.sum(axis=1), 1, atol=1e-6)
    assert np.max(np.abs(p_full[:, 1] - p_head)) == pytest.approx(eq["max_abs_diff"], abs=1e-6)  # predict() vs traced
    assert eq["val_accuracy_full"] == eq["val_accuracy_head"] == np.mean((p_head >= 0.5) == cache.labels[rows])
    assert p_full[:, 1].std() > 0.2  # predictions spread over 0..1, so agreeing within 1e-3 is not a coincidence


@pytest.mark.slow
def test_equivalence_check_catches_a_changed_head(built, train_dir):
    from finetune import equivalence
    from finetune.equivalence import EquivalenceError

    model, _, cache, head_src = built
    out = model.get_layer("head").get_layer("head_output")
    kernel, bias = out.get_weights()
    out.set_weights([kernel, bias + 1.0])
    try:
        with pytest.raises(EquivalenceError, match="equivalence check failed"):
            equivalence.full_model(model, head_src, cache, cache.layer, str(train_dir), 16)
    finally:
        out.set_weights([kernel, bias])


@pytest.mark.slow
def test_broken_head_stops_before_fine_tuning(train_dir, cache_path, head_dir, tmp_path, monkeypatch, capsys):
    from finetune import model as fm

    copy = fm.copy_head_weights

    def copy_then_break(dst, src, where=""):  # as if the head's weights were mangled on the way into the network
        copy(dst, src, where)
        out = dst.get_layer("head_output")
        kernel, bias = out.get_weights()
        out.set_weights([kernel * -1.0, bias])

    monkeypatch.setattr(fm, "copy_head_weights", copy_then_break)
    model_dir = tmp_path / "ft"
    assert_refused_before_training(run_main(ft_args(train_dir, cache_path, head_dir, model_dir, "--epochs", "1"),
                                            capsys), model_dir)


@pytest.mark.slow
def test_equivalence_fails_for_a_head_from_another_cache(train_dir, cache_path, head_dir, tmp_path, capsys):
    """head.keras of another cache (same feature shape) dropped into this HEAD_DIR: its metrics.json still names this
    cache, so the fingerprint check passes, and the equivalence check must catch it. Both sides of the comparison
    use head.keras, so it is the scores that stage 2 recorded for its head that expose the swap. (The other cache's
    labels are swapped, so that its head surely predicts something else.)"""
    from extract.__main__ import main as extract_main
    from extract.synth import make_dataset

    from conftest import extract_args

    make_dataset(tmp_path / "other", n=40, layout="kaggle", seed=11, junk=False)
    for f in (tmp_path / "other").iterdir():
        kind, rest = f.name.split(".", 1)
        f.rename(f.with_name(f"{'dog' if kind == 'cat' else 'cat'}.{rest}"))
    other_cache = tmp_path / "other.h5"
    assert extract_main(extract_args(tmp_path / "other", other_cache)) == 0
    other_head = write_head(other_cache, str(tmp_path / "other_head"))
    mixed = tmp_path / "mixed_head"
    shutil.copytree(head_dir, mixed)
    shutil.copy(os.path.join(other_head, "head.keras"), mixed / "head.keras")
    model_dir = tmp_path / "ft"
    assert_refused_before_training(run_main(ft_args(train_dir, cache_path, mixed, model_dir, "--epochs", "1"),
                                            capsys), model_dir)


@pytest.mark.slow
def test_refuses_a_head_trained_on_another_cache(train_dir, cache_path, head_dir, tmp_path, capsys):
    other = tmp_path / "other_head"
    shutil.copytree(head_dir, other)
    record = json.loads((other / "metrics.json").read_text())
    record["cache"]["fingerprint"] = "0" * 64
    record["cache"]["path"] = "elsewhere/features.h5"
    (other / "metrics.json").write_text(json.dumps(record))
    code, err = run_main(ft_args(train_dir, cache_path, other, tmp_path / "ft"), capsys)
    assert code == 2
    assert "trained on another cache" in err and "make head FEATURES=" in err
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_refuses_a_backbone_whose_weights_differ_from_the_cache(built):
    from cache import CacheMismatch
    from finetune import model as fm

    _, _, cache, _ = built
    info = fm.resolve_cache_weights(cache)
    with pytest.raises(CacheMismatch, match="holds other weights"):  # as if Keras or the weights file had changed
        fm.build_full_model(cache.config, info, cache.layer, cache.feature_shape(), "0" * 64, cache.path)


@pytest.mark.slow
def test_refuses_data_that_is_not_the_cached_image_set(cache_path, head_dir, tmp_path, capsys):
    from extract.synth import make_dataset

    make_dataset(tmp_path / "imgs", n=10, layout="kaggle", seed=9)
    code, err = run_main(ft_args(tmp_path / "imgs", cache_path, head_dir, tmp_path / "ft"), capsys)
    assert code == 2 and "not the image set" in err


# -- what is trained -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_trainable_set_is_the_non_bn_layers_from_unfreeze_from(built):
    from core import WorkflowError
    from finetune import model as fm

    model, trunk, _, _ = built
    names = [l.name for l in trunk.layers]
    k = names.index("mixed6")
    expected = {l.name for l in trunk.layers[k:] if type(l).__name__ != "BatchNormalization"} | {"head"}
    fm.set_trainable(model, trunk, "mixed6")
    assert {l.name for l in model.layers if l.trainable} == expected
    # The mixed7 block has 10 convolutions (no bias in InceptionV3) and the head 2 kernels + 2 biases.
    convs = [l for l in model.layers if l.trainable and type(l).__name__ == "Conv2D"]
    assert len(convs) == 10 and all(names.index(l.name) > k for l in convs)
    assert len(model.trainable_weights) == 10 + 4
    assert all(not l.trainable for l in model.layers if type(l).__name__ == "BatchNormalization")

    fm.set_trainable(model, trunk, "mixed7")  # nothing of the backbone is left to train after its last layer
    assert len(model.trainable_weights) == 4
    with pytest.raises(WorkflowError, match="UNFREEZE_FROM=mixed99"):
        fm.set_trainable(model, trunk, "mixed99")
    fm.set_trainable(model, trunk, "mixed6")


@pytest.mark.slow
def test_bn_stays_frozen_in_inference_mode_through_an_epoch(built, train_dir):
    import keras

    from cache import SPLIT_TRAIN
    from extract.pipeline import labelled_dataset
    from finetune import model as fm, train

    model, trunk, cache, _ = built
    saved = model.get_weights()
    try:
        fm.set_trainable(model, trunk, "mixed6")
        train.compile_for_finetuning(model, lr=1e-5, xla=False)
        bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
        stats = {l.name: (l.moving_mean.numpy().tobytes(), l.moving_variance.numpy().tobytes()) for l in bns}
        convs = {l.name: l.kernel.numpy().copy() for l in model.layers if isinstance(l, keras.layers.Conv2D)}
        tr = cache.rows(SPLIT_TRAIN)[:32]
        ds = labelled_dataset(str(train_dir), [cache.paths[i] for i in tr], cache.labels[tr], 75, 16,
                                   seed=1, augment=True)
        model.fit(ds, epochs=1, verbose=0, shuffle=False)

        assert len(bns) > 50 and all(not l.trainable for l in bns)
        assert {l.name: (l.moving_mean.numpy().tobytes(), l.moving_variance.numpy().tobytes()) for l in bns} == stats
        changed = {n for n, k in convs.items() if not np.array_equal(k, model.get_layer(n).kernel.numpy())}
        trained = {l.name for l in model.layers if l.trainable and isinstance(l, keras.layers.Conv2D)}
        assert changed == trained and len(trained) == 10  # the epoch did train, and only the unfrozen convs
        # Inference mode: a frozen BN normalises with its moving statistics even when called with training=True.
        bn = bns[-1]  # in the unfrozen mixed7 block
        x = np.random.default_rng(0).normal(3.0, 2.0, (4, 3, 3, bn.moving_mean.shape[0])).astype("float32")
        np.testing.assert_array_equal(bn(x, training=True).numpy(), bn(x, training=False).numpy())
    finally:
        model.set_weights(saved)


# -- the command, killed and resumed -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])  # a resume holds in either training precision
def test_finetune_resumes_after_sigkill_and_writes_its_artifacts(train_dir, cache_path, head_dir, tmp_path,
                                                                 precision):
    from finetune.record import load_model

    model_dir = tmp_path / "ft"
    args = ft_args(train_dir, cache_path, head_dir, model_dir, "--epochs", "3", "--seed", "7", "--checkpoint-s", "0",
                   "--precision", precision)
    marker = model_dir / "_work" / "backup" / "training_metadata.json"  # each commit writes it last
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT})
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = (tmp_path / "first.log").read_text()
    assert marker.exists() and still_running, first[-3000:]
    assert json.loads(marker.read_text())["epoch"] >= 1
    assert not (model_dir / "model.keras").exists()

    r = run_module("finetune", *args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming a killed run after epoch" in r.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["resumed_after_epoch"] >= 1
    assert metrics["history"]["epoch"] == [0, 1, 2]  # every epoch once, across both processes
    assert not (model_dir / "_work").exists()

    assert metrics["reload_max_abs_diff"] <= 1e-3
    assert metrics["equivalence"]["val_accuracy_full"] == metrics["equivalence"]["val_accuracy_head"]
    for when in ("before", "after"):
        assert set(metrics[when]) >= {"accuracy", "log_loss", "auc"} and metrics[when]["n"] > 10
    assert metrics["before"]["accuracy"] == metrics["equivalence"]["val_accuracy_full"]
    assert metrics["config"]["unfreeze_from"] == "mixed6" and metrics["config"]["lr"] == 1e-5
    assert metrics["config"]["mixed_precision"] is False and metrics["config"]["xla"] is False
    assert metrics["images_per_second"]["fit"] > 0
    assert (model_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert metrics["config"]["training_precision"] == precision
    model, meta = load_model(str(model_dir / "model.keras"))
    assert meta["image_size"] == 75 and meta["class_names"] == ["cat", "dog"] and meta["precision"] == precision
    assert meta["config"]["run_fingerprint"] == metrics["config"]["run_fingerprint"]
    assert model.input_shape == (None, 75, 75, 3) and model.output_shape == (None, 1)
    with zipfile.ZipFile(model_dir / "model.keras") as z:  # weights only: no Adam moments riding along
        assert z.getinfo("model.weights.h5").file_size < 1.1 * 4 * model.count_params()

    again = run_module("finetune", *args)
    assert again.returncode == 0 and "up to date" in again.stdout


# -- several GPUs: MirroredStrategy, exercised on two logical CPU devices ------------------------------------------
# A fresh process: logical devices can be configured only before TensorFlow initialises its runtime.
MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from extract import images
from extract.pipeline import labelled_dataset
from core.precision import building
from extract.backbones import DEFAULT, get
from finetune import model as fm, train

RECIPE = get(DEFAULT)

imgs = images.discover(sys.argv[1])
PRECISION = sys.argv[2]
# Stage 3's batch rule, as finetune/run.py applies it: 24 rows are 3 whole batches of 8; 17 rows end in a batch of
# one real row and 7 zero-weight ones, which without the rule tf.distribute split as 1 + 0 (an empty replica batch).
DATASETS = {n: labelled_dataset(imgs.root, imgs.paths[:n], imgs.labels[:n], 75, 8, pad_last=True) for n in (24, 17)}


def run(strategy, ds, w0=None):
    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(logs["loss"]))

    seen = []
    with strategy.scope(), building(PRECISION):  # stage 3's own build, trainable rule and compile, as run.py
        model, trunk = fm.build_full_model({"image_size": 75, "backbone": RECIPE.constructor}, {"weights": "none"},
                                           RECIPE.feature_layer, (3, 3, 768))
        if w0 is not None:
            model.set_weights(w0)
        # Dropout off: a replica draws masks for its half-batch, so masks (not the maths) would differ from one
        # device; without it both runs compute the same gradient up to summation order.
        model.get_layer("head").get_layer("head_dropout").rate = 0.0
        fm.set_trainable(model, trunk, RECIPE.unfreeze_from)
        train.compile_for_finetuning(model, 1e-3, xla=False)
    w_start = model.get_weights()
    model.fit(ds, epochs=1, verbose=0, callbacks=[Losses()])
    moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), w_start))
    return seen, model.get_weights(), w_start, moved


mirrored = train.make_strategy(["/cpu:0", "/cpu:1"])
single = train.make_strategy()  # no GPU here: the default one-device strategy
res = {"replicas": [single.num_replicas_in_sync, mirrored.num_replicas_in_sync], "kind": type(mirrored).__name__}
for n, ds in DATASETS.items():
    one, w_one, w0, moved_one = run(single, ds)
    two, w_two, _, moved_two = run(mirrored, ds, w0)
    res[n] = {"one": one, "two": two, "moved": [moved_one, moved_two],
              "weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(w_one, w_two))}
# Then the command itself, as it runs where 2 GPUs are visible: make_strategy() finds these two devices instead.
from finetune.__main__ import main
train.make_strategy = lambda devices=None: mirrored
res["exit"] = main(sys.argv[3:])
print(json.dumps(res))
"""


# How far two devices may end from one, as a fraction of the smaller run's largest weight move: the same gradient
# summed in another order. float32 rounds that sum at ~1e-7 relative (measured: 1.5e-8 of a 3e-3 move). bfloat16
# rounds every activation and gradient to an 8-bit mantissa (~4e-3 relative), and Adam's first steps move each weight
# by about lr * sign(gradient): a near-zero gradient whose sign the rounding flips moves that weight the other way by
# up to lr a step. Measured here: 3.1e-4 of a 3.0e-3 move (24 rows), 3.2e-4 of 2.9e-3 (17); bound about twice that.
WEIGHT_DIFF = {"float32": 1e-2, "bfloat16": 0.25}
LOSS_RTOL = {"float32": 1e-4, "bfloat16": 1e-2}  # per-step running loss, one device against two


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mirrored_strategy_on_two_logical_devices_matches_one_device(train_dir, cache_path, head_dir, tmp_path,
                                                                      precision):
    model_dir = tmp_path / "ft"
    args = ft_args(train_dir, cache_path, head_dir, model_dir, "--epochs", "1", "--precision", precision)
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(train_dir), precision, *args], cwd=ROOT,
                       capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["replicas"] == [1, 2] and res["kind"] == "MirroredStrategy"
    for n in ("24", "17"):  # 17: the last batch (1 real row) is smaller than the number of replicas
        one, two = np.array(res[n]["one"]), np.array(res[n]["two"])
        assert len(one) == len(two) == 3 and np.isfinite(two).all(), n
        assert one[-1] != one[0]  # the running loss changed: the steps really trained something
        np.testing.assert_allclose(two, one, rtol=LOSS_RTOL[precision])
        assert min(res[n]["moved"]) > 1e-4  # Adam at 1e-3 moved the weights in both runs ...
        print(f"{precision} {n} rows: weight diff {res[n]['weight_diff']:.3g}, moved {min(res[n]['moved']):.3g}")
    for n in ("24", "17"):  # ... to the same place
        assert res[n]["weight_diff"] < WEIGHT_DIFF[precision] * min(res[n]["moved"]), res[n]
    # `make finetune` under the strategy: the replicated copy trained, the float32 single-device model was saved
    assert res["exit"] == 0 and "2 replica(s) x 8 images" in r.stdout, r.stdout[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["config"]["replicas"] == 2 and metrics["config"]["per_replica_batch"] == 8
    assert metrics["reload_max_abs_diff"] <= 1e-3 and np.isfinite(metrics["history"]["loss"]).all()
    from finetune.record import load_model

    from core.precision import policy_of

    model, _ = load_model(str(model_dir / "model.keras"))
    assert policy_of(model) == precision  # the single-device model, saved in the training precision
