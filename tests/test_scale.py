"""Sharded stage 1 on a local two-worker Ray: equal to the single-process cache row for row, stable shards, resume
of exactly the missing or damaged shards, no fill values ever read as features, and the CLI."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: `make install SCALE=1` (requirements-scale.txt)")

from cache import CacheIncomplete, open_cache  # noqa: E402
from cache.shards import ShardFailed, manifest_path, read_manifest, shard_path, shard_ranges  # noqa: E402
from conftest import build_cache, extract_args, run_module  # noqa: E402
from extract.__main__ import parse_args  # noqa: E402  (the CLI, as `make` runs it)
from extract.features import make_plan  # noqa: E402
from extract.shard import connect, pool_plan, run_sharded  # noqa: E402
from extract.synth import make_dataset  # noqa: E402

N_IMAGES, N_BROKEN, SHARDS = 40, 2, 2


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module; the driver joins it rather than starting one per run."""
    assert connect(num_cpus=2), "a Ray was already connected in this process"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale") / "d"
    make_dataset(d, n=N_IMAGES, layout="kaggle", seed=7, broken=N_BROKEN)
    return d


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    return build_cache(data, tmp_path_factory.mktemp("single") / "features.h5")


def _sharded(data, out, shards=SHARDS):
    return run_sharded(make_plan(parse_args(extract_args(data, out, "--engine", "ray", "--shards", str(shards)))))


@pytest.fixture(scope="module")
def sharded(data, local_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "features.h5"
    return out, _sharded(data, out)


def _copy(sharded, tmp_path):
    """A private copy of the sharded cache (front file, manifest, shards) for a test that damages it."""
    src = os.path.dirname(sharded[0])
    shutil.copytree(src, tmp_path / "c")
    return tmp_path / "c" / "features.h5"


def _assert_same(a_path, b_path):
    with open_cache(a_path) as a, open_cache(b_path) as b:
        assert a.paths == b.paths and len(a) == N_IMAGES
        assert (a.labels == b.labels).all() and (a.split == b.split).all()
        assert a.skipped == b.skipped and len(a.skipped) == N_BROKEN
        rows = np.arange(len(a))
        np.testing.assert_allclose(a.read(rows), b.read(rows), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_sharded_equals_single_process_row_for_row(sharded, single):
    out, result = sharded
    assert result["computed"] == [0, 1] and result["workers"] == 2
    assert len({r["pid"] for r in result["results"]}) == 2  # two actors, one shard each
    _assert_same(out, single)
    with open_cache(out) as c, open_cache(single) as s:
        f = c.f
        assert f["features"].is_virtual and f["layers/mixed7"].is_virtual and f["features"] == f["layers/mixed7"]
        assert [m.file_name for m in f["features"].virtual_sources()] == [os.path.basename(shard_path(out, k))
                                                                           for k in range(SHARDS)]
        assert c.feature_shape() == s.feature_shape() and c.features().dtype == s.features().dtype
        assert {k: v for k, v in c.config.items() if k != "shards"} == s.config and c.config["shards"] == SHARDS
        assert c.provenance["backbone_digest"] == s.provenance["backbone_digest"]  # same weights in every worker
    # each shard is itself a complete single-file cache of its slice; bad images are counted per shard
    m = read_manifest(out)
    assert sum(e["rows"] for e in m["shards"]) == N_IMAGES and sum(e["skipped"] for e in m["shards"]) == N_BROKEN
    assert all(e["skipped"] == 1 for e in m["shards"])  # synth's broken files are cat.140 and dog.141: one each
    with open_cache(out) as c:
        r0 = 0
        for e in m["shards"]:
            with open_cache(os.path.join(os.path.dirname(out), e["file"])) as part:
                assert part.paths == c.paths[r0:r0 + e["rows"]] and len(part.skipped) == e["skipped"]
                np.testing.assert_array_equal(part.read(np.arange(len(part))), c.read(np.arange(r0, r0 + len(part))))
            r0 += e["rows"]
    assert (out.parent / "features.skipped.txt").read_text().count("\n") == N_BROKEN


@pytest.mark.slow
def test_assignment_is_contiguous_stable_and_balanced(sharded):
    for n, k in [(42, 2), (7, 3), (25_000, 8), (5, 5)]:
        ranges = shard_ranges(n, k)
        assert ranges == shard_ranges(n, k) and ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous: the front is a concatenation
        assert max(h - l for l, h in ranges) - min(h - l for l, h in ranges) <= 1
    m = read_manifest(sharded[0])
    assert [e["inputs"] for e in m["shards"]] == [list(r) for r in shard_ranges(N_IMAGES + N_BROKEN, SHARDS)]


def test_pool_plan_fits_the_nodes():
    assert pool_plan([(2, 0)], todo=2) == (2, 1, 0)  # this machine: two one-CPU workers
    assert pool_plan([(2, 0)], todo=1) == (1, 2, 0)  # one shard left: one worker gets both CPUs
    assert pool_plan([(8, 0), (8, 0)], todo=3) == (3, 4, 0)  # each fits on one node
    assert pool_plan([(16, 4)], todo=10) == (4, 4, 1)  # one worker per GPU
    assert pool_plan([(2, 0)], todo=8, workers=1, cpus_per_worker=1) == (1, 1, 0)


@pytest.mark.slow
def test_deleted_shard_reads_as_an_error_then_only_it_is_recomputed(data, sharded, single, tmp_path):
    out = _copy(sharded, tmp_path)
    kept, gone = shard_path(out, 0), shard_path(out, 1)
    before = os.stat(kept)
    fp_before = read_manifest(out)["shards"][1]["fingerprint"]
    os.remove(gone)
    with h5py.File(out, "r") as f:  # what a reader that skipped the check would get: NaN fill, never zeros
        assert np.isnan(f["features"][-1]).all() and not np.isnan(f["features"][0]).any()
    with pytest.raises(CacheIncomplete, match="missing"):
        open_cache(out)
    result = _sharded(data, out)
    assert result["computed"] == [1]
    after = os.stat(kept)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert read_manifest(out)["shards"][1]["fingerprint"] == fp_before  # same assignment, same shard identity
    _assert_same(out, single)


@pytest.mark.slow
def test_damaged_shards_are_detected_and_recomputed(data, sharded, single, tmp_path, capsys):
    out = _copy(sharded, tmp_path)
    truncated, flipped = shard_path(out, 0), shard_path(out, 1)
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    with open(flipped, "r+b") as f:  # same size, valid HDF5: only the manifest's sha256 can tell
        f.seek(os.path.getsize(flipped) // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(CacheIncomplete, match="damaged"):
        open_cache(out)
    with h5py.File(flipped, "r") as f:
        assert bool(f.attrs["complete"])  # the flipped shard still looks complete by its own attributes
    result = _sharded(data, out)
    assert result["computed"] == [0, 1]
    said = capsys.readouterr().out
    assert "features-00000.h5: damaged (not a readable HDF5" in said
    assert "features-00001.h5: damaged (sha256 differs from the manifest)" in said
    _assert_same(out, single)


@pytest.mark.slow
def test_cli_engine_ray_then_up_to_date_without_starting_ray(data, single, tmp_path):
    out = tmp_path / "features.h5"
    r = run_module("extract", *extract_args(data, out, "--engine", "ray", "--shards", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{N_IMAGES} cached, {N_BROKEN} skipped" in r.stdout and "2 computed this run by 2 Ray workers" in r.stdout
    _assert_same(out, single)
    r = run_module("extract", *extract_args(data, out, "--engine", "ray", "--shards", "2"))
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    assert "Started a local Ray" not in r.stdout + r.stderr
    assert os.path.exists(manifest_path(out))
    r = run_module("extract", *extract_args(data, out, "--engine", "ray", "--shards", "0"))
    assert r.returncode == 2 and r.stderr.startswith("error: SHARDS=0") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_lost_front_file_is_rebuilt_from_valid_shards_without_recomputing(data, sharded, single, tmp_path):
    out = _copy(sharded, tmp_path)
    os.remove(out)
    assert _sharded(data, out)["computed"] == []
    _assert_same(out, single)


@pytest.mark.slow
def test_fewer_shards_recompute_and_drop_the_unused_shard_files(data, sharded, single, tmp_path, capsys):
    out = _copy(sharded, tmp_path)
    assert _sharded(data, out, shards=1)["computed"] == [0]
    assert "features-00000.h5: stale" in capsys.readouterr().out  # its identity includes the shard count
    assert not os.path.exists(shard_path(out, 1)) and [e["file"] for e in read_manifest(out)["shards"]] == [
        "features-00000.h5"]
    _assert_same(out, single)


@pytest.mark.slow
def test_a_failing_shard_is_named_and_the_others_are_kept(data, sharded, single, tmp_path, capsys):
    out = _copy(sharded, tmp_path)
    for k in range(SHARDS):
        os.remove(shard_path(out, k))
    os.mkdir(shard_path(out, 1) + ".partial")  # shard 1's writer cannot start: it fails inside its worker
    with pytest.raises(ShardFailed, match=r"1 of 2 shards failed \(.*features-00001\.h5 on .*IsADirectoryError"):
        _sharded(data, out)
    assert "IsADirectoryError" in capsys.readouterr().err  # the worker's traceback is shown
    assert os.path.exists(shard_path(out, 0)) and not os.path.exists(shard_path(out, 1))
    with pytest.raises(CacheIncomplete, match="features-00001.h5 is missing"):
        open_cache(out)  # the old front file still lists shard 1, which is gone: refused, never NaN rows
    os.rmdir(shard_path(out, 1) + ".partial")
    assert _sharded(data, out)["computed"] == [1]
    _assert_same(out, single)


@pytest.mark.slow
def test_stage_2_trains_on_the_sharded_front_file_as_on_the_single_file(sharded, single, tmp_path):
    """The front file is read through cache/ unchanged: streamed (tiny MEM_BUDGET, so the virtual datasets' recorded
    `chunk_rows` drive the reads), the head and the baseline give the same metrics as on the single-file cache.
    Not bit for bit: a one-CPU Ray worker's features differ from the two-thread local run's in float rounding
    (_assert_same allows rtol 1e-5), and the metrics inherit that."""
    from classify.__main__ import main as head_main

    metrics = {}
    for name, path in (("sharded", sharded[0]), ("single", single)):
        out = tmp_path / name
        assert head_main(["--features", str(path), "--head-dir", str(out), "--epochs", "2", "--batch", "8",
                          "--seed", "0", "--mem-budget", "1K"]) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())
    for part in ("head", "baseline"):
        for key in ("val_accuracy", "val_log_loss", "n_train", "n_val"):
            assert metrics["sharded"][part][key] == pytest.approx(metrics["single"][part][key], rel=1e-3), (part, key)
    assert metrics["sharded"]["head"]["data"] == "streamed"
