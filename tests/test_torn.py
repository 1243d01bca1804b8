"""A SIGKILL mid-commit can tear the chunk that holds committed rows: the resume rolls it back, never fails.

A killed run's partial is made in this process (extraction stopped after a few commits, as a kill leaves it), then
the last committed chunk of one dataset is torn as a torn write leaves it (the second half of its bytes replaced),
and `make features` resumes: it says which rows it rewrites, finishes, and equals an uninterrupted run. A damaged
superblock is set aside. The stress test kills real `python -m extract` processes at random moments.
"""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from cache import open_cache, partial_path
from cache.writer import damaged_path
from conftest import ROOT, committed_inputs, extract_args
from extract.synth import make_dataset

pytestmark = pytest.mark.slow
SIZE = 150  # mixed7 and mixed6 are 7x7x768 here: 27 rows a chunk, so commits of BATCH rows end mid-chunk
BATCH = 8
COMMITS = 5  # the killed run committed 40 rows: rows 27-39 share the chunk 27-53 with rows still to come


def _args(data, out):
    args = extract_args(data, out, "--layers", "mixed7,mixed6", "--aug-views", "1", "--batch", str(BATCH))
    args[args.index("--img-size") + 1] = str(SIZE)
    return args


def _run(data, out, capsys):
    from extract.__main__ import main

    assert main(_args(data, out)) == 0
    return capsys.readouterr().out


class _Killed(BaseException):
    """Stands in for SIGKILL after COMMITS commits: the file is left with what those commits flushed."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data folder, an uninterrupted cache, the partial of a run stopped after COMMITS commits)."""
    from cache.writer import CacheWriter
    from extract.__main__ import main

    root = tmp_path_factory.mktemp("torn")
    make_dataset(root / "d", n=64, seed=9)
    assert main(_args(root / "d", root / "ref.h5")) == 0
    commit, done = CacheWriter.commit, []

    def stop_after(self, *a, **k):
        if len(done) == COMMITS:
            raise _Killed
        done.append(1)
        return commit(self, *a, **k)

    CacheWriter.commit = stop_after
    try:
        with pytest.raises(_Killed):
            main(_args(root / "d", root / "killed.h5"))
    finally:
        CacheWriter.commit = commit
    killed = partial_path(root / "killed.h5")
    with h5py.File(killed, "r") as f:
        assert int(f.attrs["rows_committed"]) == COMMITS * BATCH
    return root / "d", root / "ref.h5", killed


def _tear(path, dataset, row):
    """Overwrite the second half of the bytes of `dataset`'s chunk holding `row` (first view, for views)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        info = ds.id.get_chunk_info_by_coord((row // ds.chunks[0] * ds.chunks[0],) + (0,) * (ds.ndim - 1))
        first = info.chunk_offset[0]
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(np.random.default_rng(0).integers(0, 256, info.size - info.size // 2, np.uint8).tobytes())
    with h5py.File(path, "r") as f, pytest.raises(OSError, match="filter"):
        f[dataset][first:first + 1]  # really torn: its checksum fails
    return first


def _assert_same_cache(a_path, b_path):
    with open_cache(a_path) as a, open_cache(b_path) as b:
        assert a.paths == b.paths and (a.labels == b.labels).all() and (a.split == b.split).all()
        assert a.skipped == b.skipped
        for layer in ("mixed7", "mixed6"):
            np.testing.assert_allclose(a.read(np.arange(len(a)), layer=layer), b.read(np.arange(len(b)), layer=layer),
                                       rtol=1e-5, atol=1e-6)
        with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
            np.testing.assert_allclose(fa["views/mixed6"][:], fb["views/mixed6"][:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dataset", ["layers/mixed7", "views/mixed6", "_progress/row_input"])
def test_a_torn_last_committed_chunk_is_rolled_back_and_the_run_equals_an_uninterrupted_one(runs, tmp_path, capsys,
                                                                                            dataset):
    data, ref, killed = runs
    out = tmp_path / "f.h5"
    shutil.copyfile(killed, partial_path(out))
    with h5py.File(partial_path(out), "r") as f:
        rows = int(f.attrs["rows_committed"])
    first = _tear(partial_path(out), dataset, rows - 1)  # views too are stored by row (every row's)
    cut = first
    assert 0 < cut < rows, "the torn chunk must hold committed rows and not start at row 0: adjust the sizes"
    line = _run(data, out, capsys)
    assert re.search(rf"resuming at input {cut}/64 \(rows {cut}-{rows - 1} rewritten: a chunk was torn by the last "
                     rf"kill\)", line), line
    _assert_same_cache(ref, out)


def test_a_torn_reason_chunk_rolls_back_to_its_first_input(runs, tmp_path, capsys):
    data, ref, killed = runs
    out = tmp_path / "f.h5"
    shutil.copyfile(killed, partial_path(out))
    first = _tear(partial_path(out), "_progress/reason", COMMITS * BATCH - 1)
    line = _run(data, out, capsys)
    assert f"resuming at input {first}/64 (rows {first}-{COMMITS * BATCH - 1} rewritten" in line, line
    _assert_same_cache(ref, out)


def test_a_damaged_superblock_is_set_aside_and_the_run_starts_over(runs, tmp_path, capsys):
    data, ref, killed = runs
    out = tmp_path / "f.h5"
    shutil.copyfile(killed, partial_path(out))
    with open(partial_path(out), "r+b") as fh:
        fh.seek(12)
        fh.write(b"\xff" * 16)  # the superblock's addresses: its checksum no longer matches
    line = _run(data, out, capsys)
    aside = damaged_path(out)
    assert f"{partial_path(out)} was damaged beyond resume" in line and f"set aside as {aside}, starting over" in line
    assert "resuming" not in line and os.path.exists(aside)
    _assert_same_cache(ref, out)


# A process that writes a cache as fast as the disk takes it (features made from the input index, no network), so
# that a random moment is most likely mid-write: 4 MiB chunks of rows that commits of 10 inputs end inside.
CHILD = r"""
import sys
import numpy as np
from cache import BackgroundCommits, CacheWriter
N, B, K, A, V = 900, 10, 2, (16, 16, 256), (16, 16, 64)
split = (np.arange(N) % 5 == 0).astype(np.int8)
w = CacheWriter(sys.argv[1], {"layer": "a", "child": 1}, [f"{i:04d}.jpg" for i in range(N)], np.arange(N) % 2, split,
                {"a": A, "b": V}, view_shapes={"b": V}, n_views=K)
start = w.start()
print("note:", w.note, flush=True)
def rows(idx, shape, scale=1.0):
    return np.full((len(idx),) + shape, 1.0, np.float32) * (scale * idx.astype(np.float32)).reshape(-1, 1, 1, 1)
with BackgroundCommits(w) as commits:
    for lo in range(start, N, B):
        idx = np.arange(lo, min(lo + B, N))
        ok = idx % 37 != 5
        done = idx[ok]
        views = np.stack([rows(done, V, -1.0)] * K, axis=1)
        commits.commit(done, {"a": rows(done, A), "b": rows(done, V, 0.5)}, [(int(i), f"bad {i}") for i in idx[~ok]],
                       int(idx[-1]) + 1, views={"b": views})
w.finalize()
w.close()
"""


def test_twenty_kills_at_random_moments_then_the_rerun_equals_an_uninterrupted_run(tmp_path):
    """Real SIGKILLs of a process that runs the cache writer, each at a random moment once it has committed."""
    out = tmp_path / "f.h5"
    rng, rounds, failures, killed, torn = random.Random(30), 20, [], 0, 0
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-c", CHILD, str(out)]
    for k in range(rounds):
        before = committed_inputs(partial_path(out)) if os.path.exists(partial_path(out)) else 0
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and committed_inputs(partial_path(out)) <= before:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # anywhere in the next commits: mid-write is the likeliest moment
        proc.send_signal(signal.SIGKILL)
        text = proc.communicate()[0].decode()
        torn += "torn by the last kill" in text
        if proc.returncode == -signal.SIGKILL:
            killed += 1
        elif proc.returncode != 0 or "Traceback" in text:
            failures.append((k, proc.returncode, text[-1500:]))
        if os.path.exists(out):  # finished before the kill: the next round starts afresh
            os.remove(out)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    torn += "torn by the last kill" in r.stdout
    print(f"kill-and-resume: {rounds} rounds, {killed} killed mid-run, {torn} torn chunks rolled back, "
          f"{len(failures)} failures")
    assert not failures, failures
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert killed >= rounds // 2, f"only {killed} of {rounds} rounds were killed mid-run: lengthen the run"
    with h5py.File(out, "r") as f:
        n, idx = 900, np.arange(900)
        kept = idx[idx % 37 != 5]
        assert [p.decode() for p in f["paths"][:]] == [f"{i:04d}.jpg" for i in kept]
        assert [r.decode() for r in f["skipped"][:, 1]] == [f"bad {i}" for i in idx[idx % 37 == 5]]
        a, b, views = f["layers/a"][:], f["layers/b"][:], f["views/b"][:]
        assert (a == kept[:, None, None, None]).all() and (b == 0.5 * kept[:, None, None, None]).all()
        assert len(views) == len(kept) and (views == -kept[:, None, None, None, None]).all()
        assert n == len(kept) + len(f["skipped"])
