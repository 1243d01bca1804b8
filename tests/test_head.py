"""Stage 2 tests: the head and the baseline learn the synthetic task, streaming equals in-memory, a cache over
MEM_BUDGET is never loaded whole, wrong caches exit 2 naming `make features`, and a SIGKILLed run resumes.

Reads the session caches of conftest.py; writes only under tmp_path. Example: python -m pytest tests/test_head.py -q
"""
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref

import h5py
import numpy as np
import pytest

from conftest import ROOT, extract_args, run_module

import cache
import cache.format
from core import WorkflowError
from cache import (SPLIT_TRAIN, SPLIT_VAL, CacheWriter, FeatureCache, epoch_windows, fingerprint,
                   open_cache)
from classify.__main__ import parse_args
from classify import data
from classify.data import parse_bytes
from core.files import partial_name


def classify_args(features, head_dir, *extra):
    return ["--features", str(features), "--head-dir", str(head_dir), *map(str, extra)]


def load_metrics(head_dir):
    with open(os.path.join(head_dir, "metrics.json")) as f:
        return json.load(f)


# -- learning: the real CLI, default settings ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(cache_path, tmp_path_factory):
    head_dir = tmp_path_factory.mktemp("head")
    proc = run_module("classify", *classify_args(cache_path, head_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return head_dir, proc


@pytest.mark.slow
def test_head_and_baseline_learn_the_synthetic_task(trained, cache_path):
    head_dir, proc = trained
    m = load_metrics(head_dir)
    with open_cache(cache_path) as c:
        n_train, n_val, fp = len(c.rows(SPLIT_TRAIN)), len(c.rows(SPLIT_VAL)), c.fingerprint
    for part in ("head", "baseline"):
        r = m[part]
        assert r["val_accuracy"] >= 0.9, (part, r)
        assert (r["n_train"], r["n_val"]) == (n_train, n_val)
        assert np.sum(r["confusion_matrix"]) == n_val
        assert r["val_auc"] is not None and r["val_log_loss"] >= 0 and r["seconds"] > 0 and r["examples_per_s"] > 0
    assert 1 <= m["head"]["epochs"] <= 20
    assert m["cache"] == {"path": str(cache_path), "fingerprint": fp, "layer": "mixed7", "feature_shape": [3, 3, 768],
                          "backbone": "InceptionV3", "image_size": 75, "weights_sha256": "random-init-seed-1337"}
    assert m["config"]["lr"] == 1e-4 and m["config"]["cache_config"]["weights"] == "none"
    assert re.search(r"^\s+head\s+baseline$", proc.stdout, re.M)  # the side-by-side table
    assert re.search(r"^val accuracy\s+[\d.]+\s+[\d.]+$", proc.stdout, re.M)
    with open(os.path.join(head_dir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(head_dir, "_work"))  # finished runs leave nothing to resume


@pytest.mark.slow
def test_saved_head_and_baseline_reproduce_their_metrics_on_raw_features(trained, cache_path):
    """head.keras is the recipe's head, takes raw cached features (the scale is folded in), and is the one scored."""
    import joblib
    import keras
    from sklearn.metrics import log_loss

    head_dir, _ = trained
    m = load_metrics(head_dir)
    head = keras.saving.load_model(os.path.join(head_dir, "head.keras"))
    assert [l.name for l in head.layers[1:]] == ["head_flatten", "head_dense", "head_dropout", "head_output"]
    with open_cache(cache_path) as c:
        va = c.rows(SPLIT_VAL)
        x, y = c.read(va), c.labels[va]
    p = head.predict(x, verbose=0)[:, 0]
    assert float(np.mean((p >= 0.5) == y)) == pytest.approx(m["head"]["val_accuracy"])
    assert float(log_loss(y, p, labels=[0, 1])) == pytest.approx(m["head"]["val_log_loss"], rel=1e-4)
    baseline = joblib.load(os.path.join(head_dir, "baseline.joblib"))
    assert [type(s).__name__ for s in baseline] == ["StandardScaler", "LogisticRegressionCV"]
    assert float(np.mean(baseline.predict(x.mean(axis=(1, 2))) == y)) == pytest.approx(m["baseline"]["val_accuracy"])


# -- streaming versus in memory, on a cache four times over the budget ------------------------------------------
@pytest.fixture(scope="module")
def big_cache(cache_path, tmp_path_factory):
    """600 rows resampled (with 10% multiplicative noise) from the real cache, written by CacheWriter with 256 KiB
    chunks, so that one epoch spans many 8-chunk windows while training stays cheap."""
    from extract.images import stratified_split

    rng = np.random.default_rng(0)
    with open_cache(cache_path) as c:
        src = np.flatnonzero(c.labels >= 0)
        feats, labels, config = c.read(src), c.labels[src], dict(c.config)
    n = 600
    pick = rng.integers(0, len(src), n)
    x = feats[pick] * rng.uniform(0.9, 1.1, (n,) + feats.shape[1:]).astype(np.float32)
    y = labels[pick]
    paths = [f"resampled/{i}.jpg" for i in range(n)]
    config.update(data="resampled", n_inputs=n, inputs_fingerprint=fingerprint(paths))
    path = tmp_path_factory.mktemp("big") / "big.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache.format, "CHUNK_BYTES", 256 << 10)  # the file records its chunking; readers follow it
        w = CacheWriter(path, config, paths, y, stratified_split(y, 0.2, 42), {"mixed7": x.shape[1:]})
        w.start()
        w.commit(np.arange(n), {"mixed7": x}, [], n)
        w.finalize()
    return path


class ReadLog:
    """Wraps FeatureCache.read: the size of every read, and the most bytes of read arrays alive at one time."""

    def __init__(self):
        self.rows, self.live, self.peak_live = [], 0, 0
        self.lock = threading.Lock()

    def _freed(self, n):
        with self.lock:
            self.live -= n

    def wrap(self, real_read):
        def read(cache_self, rows, *args, **kwargs):
            out = real_read(cache_self, rows, *args, **kwargs)
            with self.lock:
                self.rows.append(np.array(rows))
                self.live += out.nbytes
                self.peak_live = max(self.peak_live, self.live)
            weakref.finalize(out, self._freed, out.nbytes)
            return out
        return read

    @property
    def sizes(self):
        return [len(r) for r in self.rows]


def _train_in_process(features, head_dir, budget, monkeypatch):
    """Run `python -m classify` in this process; return (metrics, history rows, head weights, ReadLog)."""
    import keras

    from classify.__main__ import main

    log = ReadLog()
    monkeypatch.setattr(FeatureCache, "read", log.wrap(FeatureCache.read))
    assert main(classify_args(features, head_dir, "--epochs", 2, "--batch", 32, "--mem-budget", budget)) == 0
    monkeypatch.undo()
    with open(os.path.join(head_dir, "history.csv")) as f:
        history = [line.split(",") for line in f.read().splitlines()]
    weights = keras.saving.load_model(os.path.join(head_dir, "head.keras")).get_weights()
    return load_metrics(head_dir), history, weights, log


@pytest.fixture(scope="module")
def both_paths(big_cache, tmp_path_factory):
    with FeatureCache(big_cache) as c:
        labelled = np.concatenate([c.rows(SPLIT_TRAIN), c.rows(SPLIT_VAL)])
        held = len(labelled) * int(np.prod(c.feature_shape())) * 4
        info = {"held": held, "n_train": len(c.rows(SPLIT_TRAIN)), "n_labelled": len(labelled),
                "window": 8 * c.chunk_rows(), "window_bytes": 8 * c.chunk_rows() * int(np.prod(c.feature_shape())) * 4}
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        runs["memory"] = _train_in_process(big_cache, tmp_path_factory.mktemp("mem"), "1G", mp)
    with pytest.MonkeyPatch.context() as mp:
        runs["stream"] = _train_in_process(big_cache, tmp_path_factory.mktemp("stream"), str(held // 4), mp)
    # MEM_BUDGET=auto both ways: this machine's free memory (ample for these rows), then a machine where half of what
    # is free is less than the features
    with pytest.MonkeyPatch.context() as mp:
        runs["auto"] = _train_in_process(big_cache, tmp_path_factory.mktemp("auto"), "auto", mp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "available_bytes", lambda: held)
        runs["auto_scarce"] = _train_in_process(big_cache, tmp_path_factory.mktemp("auto_scarce"), "auto", mp)
    return runs, info


@pytest.mark.slow
def test_streaming_and_in_memory_give_the_same_head(both_paths):
    runs, _ = both_paths
    (m_mem, h_mem, w_mem, _), (m_str, h_str, w_str, _) = runs["memory"], runs["stream"]
    assert m_mem["head"]["data"] == "in memory" and m_str["head"]["data"] == "streamed"
    timing = {"seconds", "examples_per_s", "seconds_per_epoch", "data", "load_seconds", "train_wall_seconds_this_run",
              "commits_this_run"}  # commits_this_run holds its seconds
    for part in ("head", "baseline"):
        assert {k: v for k, v in m_mem[part].items() if k not in timing} == \
               {k: v for k, v in m_str[part].items() if k not in timing}
    col = h_mem[0].index("seconds")
    assert [r[:col] + r[col + 1:] for r in h_mem] == [r[:col] + r[col + 1:] for r in h_str]  # every epoch's metrics
    assert len(w_mem) == len(w_str) and all(np.array_equal(a, b) for a, b in zip(w_mem, w_str))  # bit for bit


@pytest.mark.slow
def test_mem_budget_auto_gives_the_weights_of_both_explicit_paths(both_paths):
    runs, _ = both_paths
    assert runs["auto"][0]["head"]["data"] == "in memory" and runs["auto_scarce"][0]["head"]["data"] == "streamed"
    note = runs["auto_scarce"][0]["config"]["data_note"]
    assert "MEM_BUDGET auto: 0.5 of the" in note and note.endswith("streamed in chunk-aligned windows"), note
    for run in ("auto", "auto_scarce"):
        for ref in ("memory", "stream"):
            w, w_ref = runs[run][2], runs[ref][2]
            assert len(w) == len(w_ref) and all(np.array_equal(a, b) for a, b in zip(w, w_ref)), (run, ref)


@pytest.mark.slow
def test_cache_over_budget_is_never_read_whole(both_paths):
    runs, info = both_paths
    mem, streamed = runs["memory"][3], runs["stream"][3]
    assert info["n_labelled"] in mem.sizes and mem.peak_live >= info["held"]  # in memory: one read of it all, kept
    # Streamed: no read is larger than one window, and read data alive at once stays within two windows,
    # a fraction of the features' size; yet every train row was read in each of the 2 epochs.
    assert max(streamed.sizes) <= info["window"] < info["n_train"]
    assert streamed.peak_live <= 2 * info["window_bytes"] < info["held"] / 2, (streamed.peak_live, info)
    assert sum(streamed.sizes) >= 2 * info["n_train"]


@pytest.mark.slow
def test_streamed_reads_follow_each_epochs_shuffled_windows(both_paths, big_cache):
    """The epoch number reaches the generator: epoch e reads exactly epoch_windows(seed, e), in order."""
    streamed = both_paths[0]["stream"][3]
    with FeatureCache(big_cache) as c:
        windows = [epoch_windows(c.rows(SPLIT_TRAIN), c.chunk_rows(), 42, e) for e in (0, 1)]
    assert [w.tolist() for w in windows[0]] != [w.tolist() for w in windows[1]]  # reshuffled every epoch
    expected = iter([w.tolist() for w in windows[0] + windows[1]])
    want = next(expected)
    for r in streamed.rows:  # an ordered subsequence of all reads (pooling and validation reads come between)
        if want is not None and r.tolist() == want:
            want = next(expected, None)
    assert want is None, "the streamed train reads did not follow epoch_windows for epochs 0 then 1"


# -- wrong caches: exit 2, no traceback, the message names `make features` ------------------------------------------
def _small_cache(tmp_path, name, layout="kaggle", layers="mixed7"):
    from extract.__main__ import main
    from extract.synth import make_dataset

    make_dataset(tmp_path / name, n=6, layout=layout, seed=5, junk=False)
    path = tmp_path / f"{name}.h5"
    assert main(extract_args(tmp_path / name, path, "--layers", layers)) == 0
    return path


def _flat_cache(tmp_path):
    """A valid cache whose features are vectors, not (h, w, c) maps."""
    y = np.array([0, 1] * 5, np.int8)
    config = {"layer": "mixed7", "layers": ["mixed7"], "class_names": ["cat", "dog"]}
    w = CacheWriter(tmp_path / "flat.h5", config, [f"{i}.jpg" for i in range(10)], y,
                    np.array([0, 0, 0, 1] * 2 + [0, 1], np.int8), {"mixed7": (768,)})
    w.start()
    w.commit(np.arange(10), {"mixed7": np.ones((10, 768), np.float32)}, [], 10)
    w.finalize()
    return tmp_path / "flat.h5"


def _foreign_hdf5(tmp_path):
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    return tmp_path / "foreign.h5"


def _partial_only(tmp_path):
    (tmp_path / "half.h5.partial").write_bytes(b"")
    return tmp_path / "half.h5"


def _not_hdf5(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5\n")
    return tmp_path / "text.h5"


@pytest.mark.parametrize("make, expect", [
    (lambda t: t / "missing.h5", "no feature cache here"),
    (_partial_only, "half-written"),
    (_not_hdf5, "not a readable HDF5 file"),
    (_foreign_hdf5, "not a feature cache of this project"),
    (lambda t: _small_cache(t, "unlabelled", layout="unlabelled"), "needs labelled train and val rows"),
    (lambda t: _small_cache(t, "mixed6", layers="mixed6"), "layer='mixed6', expected 'mixed7'"),
    (_flat_cache, "the head needs (h, w, c) maps"),
], ids=["missing", "partial", "not-hdf5", "foreign", "unlabelled", "wrong-layer", "wrong-shape"])
@pytest.mark.slow
def test_wrong_cache_exits_2_naming_the_fix(make, expect, tmp_path):
    # LAYER given: a cache without it is refused (LAYER empty takes the cache's own layer)
    proc = run_module("classify", *classify_args(make(tmp_path), tmp_path / "head", "--layer", "mixed7"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expect in proc.stderr and "make features" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "head" / "metrics.json")


def test_mem_budget_parsing():
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512m") == 512 << 20 and parse_bytes("100") == 100
    assert parse_bytes("1.5K") == 1536 and parse_bytes("2GiB") == 2 << 30
    with pytest.raises(WorkflowError, match="MEM_BUDGET='lots'"):
        parse_bytes("lots")
    assert data.resolve_budget("2G")[0] == 2 << 30
    budget, why = data.resolve_budget("Auto")
    assert 0 < budget <= data.available_bytes() and why.startswith("auto: 0.5 of the"), why
    assert partial_name("/a/head.keras") == "/a/head.partial.keras"
    assert partial_name("best.weights.h5") == "best.partial.weights.h5"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_this_stage_with_flags_argparse_accepts():
    out = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True).stdout
    line = next(l for l in out.replace("\\\n", " ").splitlines() if " -m classify " in l)
    a = parse_args(shlex.split(line.split(" -m classify ", 1)[1]))
    assert (a.features, a.head_dir, a.epochs, a.mem_budget) == ("artifacts/demo/features.h5", "artifacts/demo/head",
                                                                 10, "auto")


# -- resume after SIGKILL -----------------------------------------------------------------------------------------
def _backup_epoch(head_dir):
    try:
        with open(os.path.join(head_dir, "_work", "backup", "training_metadata.json")) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_last_epoch(cache_path, tmp_path):
    head_dir = tmp_path / "head"
    args = classify_args(cache_path, head_dir, "--epochs", 6, "--batch", 16, "--checkpoint-s", 0)  # commit each epoch
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "classify", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while _backup_epoch(head_dir) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _backup_epoch(head_dir)
    assert 2 <= done < 6 and not os.path.exists(head_dir / "metrics.json")

    again = run_module("classify", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at epoch {done + 1}" in again.stdout
    first_epoch = next(line for line in again.stdout.splitlines() if line.startswith("Epoch "))
    assert first_epoch.startswith(f"Epoch {done + 1}/6")  # it did not start over
    m = load_metrics(head_dir)
    with open(head_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(m["head"]["epochs"])) and m["head"]["epochs"] > done
    print("train loss by epoch:", [round(float(r["loss"]), 3) for r in rows], "resumed at", done)
    # The weights came back too, not just the epoch counter: a restarted head would be back at epoch 0's loss.
    assert float(rows[done]["loss"]) < 0.75 * float(rows[0]["loss"])
    assert m["head"]["val_accuracy"] >= 0.9
