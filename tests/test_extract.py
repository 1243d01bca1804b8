"""Stage 1: layouts, odd and broken files, the cache's metadata, live-vs-cached features, resume, staleness, errors."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from cache import SPLIT_TRAIN, SPLIT_VAL, CacheIncomplete, open_cache, partial_path
from conftest import IMG, ROOT, assert_user_error, committed_inputs, extract_args, run_module
from extract.__main__ import main as extract_main
from extract.images import discover, load_image, stratified_split
from extract.synth import make_dataset


def _extract(data, out, *extra):
    assert extract_main(extract_args(data, out, *extra)) == 0
    return open_cache(out)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kaggle", "folders", "petimages", "unlabelled"])
def test_every_layout_caches_every_decodable_file_and_skips_broken_ones(tmp_path, layout):
    written = make_dataset(tmp_path / "d", n=12, layout=layout, seed=1, broken=4, odd=True)
    with _extract(tmp_path / "d", tmp_path / "f.h5") as c:
        assert sorted(c.paths) == sorted(written)  # odd formats all cached; junk ignored; broken absent
        assert len(c.skipped) == 4 and all(reason for _, reason in c.skipped)
        assert not set(p for p, _ in c.skipped) & set(c.paths)
        if layout == "unlabelled":
            assert (c.labels == -1).all() and (c.split == -1).all()
        else:
            # labels against the file names / folder names
            for p, lab in zip(c.paths, c.labels):
                assert lab == written[p]
            assert c.class_names == {"kaggle": ["cat", "dog"], "folders": ["cats", "dogs"],
                                     "petimages": ["Cat", "Dog"]}[layout]
    assert (tmp_path / "f.skipped.txt").read_text().count("\n") == 4


def test_shapes_and_metadata_describe_the_file(cache_path):
    with open_cache(cache_path) as c:
        f = c.f
        n = len(c)
        assert f["features"].shape == (n, 3, 3, 768) == (n,) + c.feature_shape()
        assert f["labels"].shape == f["paths"].shape == f["split"].shape == (n,)
        assert f["skipped"].shape == (4, 2)
        assert f["features"].chunks[0] == c.chunk_rows() and f["features"].chunks[1:] == (3, 3, 768)
        for key in ("backbone", "layer", "image_size", "preprocessing", "resize", "weights", "weights_sha256",
                    "class_names", "split_seed", "inputs_fingerprint", "versions", "created", "backbone_digest"):
            assert key in f.attrs, key
        assert (f.attrs["backbone"], f.attrs["layer"], int(f.attrs["image_size"])) == ("InceptionV3", "mixed7", IMG)
        assert bool(f.attrs["complete"]) and int(f.attrs["n_rows"]) == n


def test_split_is_stratified_and_deterministic(cache_path):
    with open_cache(cache_path) as c:
        for label in (0, 1):
            rows = c.labels == label
            frac = (c.split[rows] == SPLIT_VAL).mean()
            assert abs(frac - 0.2) < 0.05
        assert set(np.unique(c.split)) == {SPLIT_TRAIN, SPLIT_VAL}
    labels = np.array([0] * 50 + [1] * 30)
    a, b = stratified_split(labels, 0.2, 7), stratified_split(labels, 0.2, 7)
    assert (a == b).all() and (a != stratified_split(labels, 0.2, 8)).any()


@pytest.mark.slow
def test_cached_features_equal_the_live_model(cache_path, train_dir):
    from extract.backbone import build_backbone, weights_digest
    from extract.backbones import get

    with open_cache(cache_path) as c:
        model = build_backbone(get("inception_v3"), IMG, ["mixed7"], "none")
        assert weights_digest(model) == c.provenance["backbone_digest"]
        rows = [0, 5, len(c) - 1]
        x = np.stack([load_image(os.path.join(train_dir, c.paths[r]), IMG) for r in rows]).astype("float32")
        live = model(x, training=False).numpy()
        np.testing.assert_allclose(c.read(rows), live, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_several_layers_in_one_pass(tmp_path, train_dir, cache_path):
    with _extract(train_dir, tmp_path / "f.h5", "--layers", "mixed6,mixed7") as c, open_cache(cache_path) as one:
        assert c.layers == ["mixed6", "mixed7"] and c.layer == "mixed6"
        assert c.feature_shape("mixed6") == c.feature_shape("mixed7") == (3, 3, 768)
        assert not np.allclose(c.read([0], "mixed6"), c.read([0], "mixed7"))
        rows = np.arange(len(c))  # mixed7 from the two-layer pass == mixed7 from a mixed7-only pass
        np.testing.assert_allclose(c.read(rows, "mixed7"), one.read(rows), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_up_to_date_then_stale_on_config_or_input_change(tmp_path):
    make_dataset(tmp_path / "d", n=10, seed=2)
    out = tmp_path / "f.h5"
    _extract(tmp_path / "d", out).close()
    r = run_module("extract", *extract_args(tmp_path / "d", out))
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    fp0 = h5py.File(out, "r").attrs["fingerprint"]
    r = run_module("extract", *extract_args(tmp_path / "d", out, "--dtype", "float16"))  # the features' identity
    assert r.returncode == 0 and "stale (dtype float32 -> float16); rebuilding" in r.stdout, r.stdout  # says what
    fp1 = h5py.File(out, "r").attrs["fingerprint"]
    before = {p: os.path.getsize(tmp_path / "d" / p) for p in os.listdir(tmp_path / "d")}
    make_dataset(tmp_path / "d", n=12, seed=5)  # input change: two more files, others rewritten
    resized = sum(os.path.getsize(tmp_path / "d" / p) != n for p, n in before.items())
    r = run_module("extract", *extract_args(tmp_path / "d", out, "--dtype", "float16"))
    # data, not identity: an update extracts the new and the resized files alone (tests/test_update.py)
    assert r.returncode == 0 and f"{10 - resized} rows kept, 2 new, {resized} changed" in r.stdout, r.stdout
    with open_cache(out) as c:
        assert len({fp0, fp1, c.fingerprint}) == 3 and len(c) == 12


def _committed(path):
    return committed_inputs(path)  # HDF5 refuses to open a file being written: conftest reads a copy


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    make_dataset(tmp_path / "d", n=400, seed=4, broken=2, size=(40, 90))
    out, ref = tmp_path / "f.h5", tmp_path / "ref.h5"
    args = ["-m", "extract", *extract_args(tmp_path / "d", out, "--batch", "8")]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while _committed(partial_path(out)) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: make it longer"
    assert not out.exists() and os.path.exists(partial_path(out))
    with pytest.raises(CacheIncomplete, match="half-written"):
        open_cache(out)  # no reader accepts a half-written cache
    r = run_module("extract", *args[2:])
    assert r.returncode == 0, r.stdout + r.stderr
    resumed_at = int(r.stdout.split("resuming at input ")[1].split("/")[0])
    assert 40 <= resumed_at < 402
    with _extract(tmp_path / "d", ref, "--batch", "8") as a, open_cache(out) as b:
        assert a.paths == b.paths and (a.labels == b.labels).all() and (a.split == b.split).all()
        assert a.skipped == b.skipped and len(a.skipped) == 2
        np.testing.assert_allclose(a.read(np.arange(len(a))), b.read(np.arange(len(b))), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case, expect", [  # what went wrong, then the fix the message must hold
    ("missing", ["no such folder", "kaggle competitions download -c dogs-vs-cats", "make demo"]),
    ("empty", ["no images found", "make data ZIP="]),
    ("one_class", ["one class", "add the other class"]),
    ("small", ["at least 75", "IMG_SIZE=150"]),
    ("layer", ["no such layer in InceptionV3", "its registered layer is mixed7"]),
    ("splits", ["look like splits", "DATA="]),
    ("bad_weights", ["md5 does not match", "WEIGHTS=none"]),
    ("other_weights", ["not loadable as InceptionV3", "WEIGHTS=imagenet"]),
    ("batch", ["BATCH=0", "BATCH=32"]),
])
def test_user_errors_exit_2_with_the_fix_and_no_traceback(tmp_path, case, expect):
    d = tmp_path / "d"
    args = extract_args(d, tmp_path / "f.h5")
    if case == "empty":
        d.mkdir()
        (d / "Thumbs.db").write_bytes(b"x")
    elif case == "one_class":
        make_dataset(d, n=6, layout="folders")
        for f in (d / "dogs").iterdir():
            f.unlink()
        (d / "dogs").rmdir()
    elif case == "small":
        args[args.index("--img-size") + 1] = "60"
    elif case == "batch":
        make_dataset(d, n=6)
        args[args.index("--batch") + 1] = "0"
    elif case in ("layer", "splits", "bad_weights", "other_weights"):
        make_dataset(d / "train" if case == "splits" else d, n=6)
        if case == "splits":
            make_dataset(d / "test", n=4, layout="unlabelled")
        if case == "layer":
            args += ["--layers", "mixed77"]
        if case == "bad_weights":
            bad = tmp_path / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
            bad.write_bytes(b"truncated download")
            args[args.index("--weights") + 1] = str(bad)
        if case == "other_weights":  # any other name is not md5-checked: loading it must still fail cleanly
            bad = tmp_path / "my_weights.h5"
            bad.write_bytes(b"not an HDF5 file")
            args[args.index("--weights") + 1] = str(bad)
    assert_user_error(run_module("extract", *args), *expect)


@pytest.mark.slow
def test_imagenet_offline_says_where_to_put_the_weights(tmp_path):
    make_dataset(tmp_path / "d", n=4)
    args = extract_args(tmp_path / "d", tmp_path / "f.h5")
    args[args.index("--weights") + 1] = "imagenet"
    # A closed local port as the proxy: offline even on a machine with internet access (urllib honours it).
    offline = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    r = run_module("extract", *args, env={"KERAS_HOME": str(tmp_path / "keras"), "no_proxy": "", "NO_PROXY": "",
                                          **offline})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "WEIGHTS=none" in r.stderr and str(tmp_path / "keras" / "models") in r.stderr


def test_discover_ignores_junk_and_mixed_flat_folders_are_an_error(tmp_path):
    make_dataset(tmp_path / "d", n=6, junk=True)
    s = discover(tmp_path / "d")
    assert s.layout == "kaggle-flat" and len(s.paths) == 6 and s.ignored == 4  # Thumbs.db .DS_Store .txt .csv
    (tmp_path / "d" / "7.jpg").write_bytes((tmp_path / "d" / "cat.0.jpg").read_bytes())
    from core import WorkflowError

    with pytest.raises(WorkflowError, match="mixes Kaggle-named"):
        discover(tmp_path / "d")


def test_every_input_pipeline_runs_without_the_tfdata_autotuner(train_dir, cache_path):
    """With the autotuner on, dropping an iterator waits for its next wake-up (up to seconds, see
    core.pipeline.fixed_pipeline): stage 1's and stage 3's image pipelines and stage 2's feature feeds turn it off."""
    from classify.data import Feeds
    from extract import images, pipeline

    imgs = images.discover(train_dir)
    with open_cache(cache_path) as c:
        feeds = Feeds(c, c.layer, c.rows(SPLIT_TRAIN), c.rows(SPLIT_VAL), 8, 0, 1.0, True, pad_last=True)
        pipelines = {"image_batches": pipeline.image_batches(imgs.root, imgs.paths[:4], IMG, 2),
                     "labelled_dataset": pipeline.labelled_dataset(imgs.root, imgs.paths[:4], imgs.labels[:4], IMG, 2,
                                                                   seed=0, augment=True, pad_last=True),
                     "Feeds.train": feeds.train(), "Feeds.val": feeds.val(), "Feeds.val padded": feeds.val(pad=True)}
        for name, ds in pipelines.items():
            assert ds.options().autotune.enabled is False, name
            assert next(iter(ds)) is not None, name  # and it still yields
