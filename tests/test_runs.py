"""core/runs.py's commits: at most every CHECKPOINT_S seconds and at the end, so far fewer bytes written than a
checkpoint per epoch, and a SIGKILL between commits (several epochs uncommitted) still resumes to the weights of an
uninterrupted run, bit for bit.

Reads the session cache of conftest.py; writes only under tmp_path. Example: python -m pytest tests/test_runs.py -q
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, head_args, run_module

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from classify import data
from core.runs import RunState

EPOCHS = 4


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (/proc/self/io wchar)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def train(cache_path, out, **run_kw):
    """train_head in this process (deterministic, 75 px cache); returns (RunState, head, bytes written meanwhile)."""
    from classify.train import train_head

    with open_cache(cache_path) as c:
        tr, va = c.rows(SPLIT_TRAIN), c.rows(SPLIT_VAL)
        feeds = data.Feeds(c, c.layer, tr, va, 16, 0, 1e-3, True)
        run = RunState(out, {"test": 1}, **run_kw)
        before = written_bytes()
        head = train_head(feeds, EPOCHS, 1e-3, 0, run, patience=99, verbose=0)
        return run, head, written_bytes() - before


@pytest.mark.slow  # ~25 s on 2 busy cores: three short runs
def test_commits_at_most_every_checkpoint_s_write_far_less_than_per_epoch(cache_path, tmp_path):
    # The default interval (60 s) over a run of a few seconds: one commit, at the end. A checkpoint per epoch (the
    # old design: weights + Adam twice, plus the best weights) wrote over 2 states per epoch.
    run, head, wrote = train(cache_path, tmp_path / "default")
    state = 3 * 4 * head.count_params()  # float32 weights + Adam's two moments
    assert run.commits["commits"] == 1 and run.committed == EPOCHS
    assert wrote < 1.5 * state, f"{wrote / 1e6:.1f} MB written for one commit of a {state / 1e6:.1f} MB state"
    assert sorted(os.listdir(run.backup))[-1] == "training_metadata.json" and len(os.listdir(run.backup)) <= 3

    every, head0, wrote0 = train(cache_path, tmp_path / "every", checkpoint_s=0)  # CHECKPOINT_S=0: every epoch
    assert every.commits["commits"] == EPOCHS and wrote0 > EPOCHS * state > 2 * wrote
    nothing, head_n, wrote_n = train(cache_path, tmp_path / "none", checkpoint_s=None)  # a sweep trial's: none
    assert nothing.commits["commits"] == 0 and wrote_n < state / 10 and not os.path.exists(nothing.backup)
    for other in (head0, head_n):  # how often it commits never changes the weights
        assert all(np.array_equal(a, b) for a, b in zip(head.get_weights(), other.get_weights()))


def _marker_epoch(head_dir) -> int:
    try:
        with open(os.path.join(head_dir, "_work", "backup", "training_metadata.json")) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError):
        return 0


def _logged(head_dir) -> int:
    """Epochs in HEAD_DIR/_work/history.csv (CSVLogger flushes each row)."""
    try:
        with open(os.path.join(head_dir, "_work", "history.csv"), newline="") as f:
            return len(list(csv.DictReader(f)))
    except OSError:
        return 0


def _kill_when(args, ready, what):
    """Start `python -m classify args`, SIGKILL it once ready() holds; fail if it ended first."""
    proc = subprocess.Popen([sys.executable, "-m", "classify", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before {what}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_between_commits_resumes_to_the_uninterrupted_weights(cache_path, tmp_path):
    from classify.record import load_head

    def args(head_dir, checkpoint_s):
        return head_args(cache_path, head_dir, "--epochs", 10, "--checkpoint-s", checkpoint_s)

    whole = run_module("classify", *args(tmp_path / "whole", 0))
    assert whole.returncode == 0, whole.stderr[-3000:]

    head_dir = tmp_path / "killed"
    # 1: commits every epoch; killed once 2 epochs are committed.
    _kill_when(args(head_dir, 0), lambda: _marker_epoch(head_dir) >= 2, "2 epochs were committed")
    committed = _marker_epoch(head_dir)
    # 2: resumed with commits an hour apart: killed with 2 epochs run since the last commit, none of them committed.
    _kill_when(args(head_dir, 3600), lambda: _logged(head_dir) >= committed + 2, "2 uncommitted epochs ran")
    assert _marker_epoch(head_dir) == committed and _logged(head_dir) >= committed + 2
    # 3: resumes from the same commit, reruns the uncommitted epochs, finishes.
    done = run_module("classify", *args(head_dir, 3600))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming at epoch {committed + 1}" in done.stdout and "1 commit(s)" in done.stdout

    a, b = load_head(str(tmp_path / "whole")), load_head(str(head_dir))
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))  # bit for bit
    ha, hb = (json.loads((d / "metrics.json").read_text())["head"] for d in (tmp_path / "whole", head_dir))
    assert (ha["epochs"], ha["best_epoch"], ha["val_log_loss"]) == (hb["epochs"], hb["best_epoch"], hb["val_log_loss"])
    assert not os.path.exists(head_dir / "_work")


def test_a_history_row_cut_short_by_a_kill_is_dropped_and_the_rows_before_it_kept(tmp_path):
    """CSVLogger appends history.csv in place: a kill mid-append leaves a short last row, past the last commit."""
    from core.runs import read_history

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,0.7,0.69\n1,0.5,0.52\n2,0.4")
    assert read_history(path) == [{"epoch": 0, "loss": 0.7, "val_loss": 0.69},
                                  {"epoch": 1, "loss": 0.5, "val_loss": 0.52}]
    path.write_text("epoch,loss,val_loss\n0,0.7,0.69\n1,0.5,0.5")  # cut inside the last number: still a number
    assert [r["epoch"] for r in read_history(path)] == [0, 1]
