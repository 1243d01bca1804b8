"""`make sweep`: trials finish, the leaderboard is sorted, best/ is a HEAD_DIR stage 3 accepts, and the study holds
exactly TRIALS finished-or-pruned trials after a SIGKILL and with two workers at once. On the harder synthetic set."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_module

TRIALS = 3
EPOCHS = "3"


def sweep_args(features, sweep_dir, trials=TRIALS):
    return ["--features", features, "--sweep-dir", sweep_dir, "--trials", trials, "--epochs", EPOCHS, "--seed", "0"]


def study_states(sweep_dir) -> dict:
    """{state name: count} of the one study in SWEEP_DIR/study.db, read as Optuna reads it.

    Under the SWEEP_DIR lock, as every worker does: an Optuna client opening a database whose tables a sweep is
    creating at that moment creates them too, and one of the two then fails with "table already exists"."""
    import optuna

    from classify.sweep.outputs import locked

    url = f"sqlite:///{os.path.join(sweep_dir, 'study.db')}"
    with locked(sweep_dir):
        names = optuna.get_all_study_names(url)
        assert len(names) == 1, names
        trials = optuna.load_study(study_name=names[0], storage=url).get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    return {s: states.count(s) for s in set(states)}


def finished(states) -> int:
    return states.get("COMPLETE", 0) + states.get("PRUNED", 0)


def test_help_prints_the_search_space():
    r = run_module("classify.sweep", "--help")
    assert r.returncode == 0
    from classify.sweep.search import SPACE

    for name, kind, _ in SPACE:
        assert name in r.stdout and kind in r.stdout
    assert {n for n, _, _ in SPACE} == {"head", "lr", "batch", "dropout", "units", "weight_decay"}


def test_timeout_parsing():
    from classify.sweep.study import parse_duration
    from core import WorkflowError

    assert parse_duration("30m") == 1800 and parse_duration("90") == 90 and parse_duration(None) == float("inf")
    with pytest.raises(WorkflowError, match="TIMEOUT"):
        parse_duration("soon")


@pytest.fixture(scope="module")
def swept(hard_cache_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    r = run_module("classify.sweep", *sweep_args(hard_cache_path, d), "--tb-dir", d / "tb")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d, r


def test_tb_dir_holds_each_trial_and_the_hparams_experiment(swept):
    """TB_DIR/sweep: the HParams experiment (every searched parameter), one run per trial with its parameters,
    its val log loss and Keras' per-epoch scalars."""
    from test_tensorboard import hparams_of, scalars, summary_plugins

    from classify.sweep.search import PARAMS

    d, _ = swept
    tb = d / "tb" / "sweep"
    experiment = hparams_of(summary_plugins(tb)["hparams"]["_hparams_/experiment"]).experiment
    assert {h.name for h in experiment.hparam_infos} == set(PARAMS)
    assert "val_log_loss" in {m.name.tag for m in experiment.metric_infos}
    runs = sorted(n for n in os.listdir(tb) if n.startswith("trial-"))
    assert len(runs) >= TRIALS  # every trial ran here (a pruned one too)
    for run in runs:
        found = summary_plugins(tb / run)
        start = hparams_of(found["hparams"]["_hparams_/session_start_info"]).session_start_info
        assert set(start.hparams) == set(PARAMS) and "val_log_loss" in found["scalars"]
        val = scalars(tb / run / "validation")
        assert val["epoch_loss"] and [s for s, _ in val["epoch_loss"]] == list(range(len(val["epoch_loss"])))


@pytest.mark.slow
def test_sweep_finishes_with_a_sorted_leaderboard_and_plots(swept):
    d, r = swept
    assert finished(study_states(d)) == TRIALS
    with open(d / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TRIALS and sorted(int(x["trial"]) for x in rows) == list(range(TRIALS))
    for col in ("head", "units", "dropout", "lr", "batch", "weight_decay", "val_log_loss", "val_accuracy", "val_auc",
                "epochs", "seconds", "state"):
        assert col in rows[0]
    losses = [float(x["val_log_loss"]) for x in rows]
    assert losses == sorted(losses)
    assert (d / "leaderboard.md").read_text().count("\n") == TRIALS + 2
    for png in ("val_log_loss.png", "importance.png", "best/curves.png"):
        assert (d / png).read_bytes()[:4] == b"\x89PNG"
    assert "sweep" in r.stderr  # the tqdm bar over trials


@pytest.mark.slow
def test_best_is_a_head_dir_that_passes_stage3s_equivalence_check(swept, hard_cache_path, hard_train_dir):
    from cache import open_cache
    from classify.record import read_head_record
    from finetune import equivalence, model as fm

    d, _ = swept
    best = str(d / "best")
    with open(d / "leaderboard.csv", newline="") as f:
        top = [x for x in csv.DictReader(f) if x["state"] == "COMPLETE"][0]
    with open_cache(hard_cache_path, need_labels=True) as cache:
        record = read_head_record(best, cache)
        assert record.val_log_loss == pytest.approx(float(top["val_log_loss"]))
        assert record.head["kind"] == top["head"] and record.head["units"] == int(top["units"])
        model, _, head_src = fm.assemble(cache, best, record.layer, head_config=record.head)
        eq, _ = equivalence.full_model(model, head_src, cache, record.layer, str(hard_train_dir), 16, record, best)
    assert eq["max_abs_diff"] <= 1e-3
    for f in ("head.keras", "metrics.json", "history.csv", "curves.png"):
        assert os.path.isfile(os.path.join(best, f))


@pytest.mark.slow
def test_rerun_of_a_finished_sweep_runs_nothing(swept, hard_cache_path):
    d, _ = swept
    r = run_module("classify.sweep", *sweep_args(hard_cache_path, d))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 run by this process" in r.stdout and finished(study_states(d)) == TRIALS


def start_sweep(features, sweep_dir, trials):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-m", "classify.sweep", *map(str, sweep_args(features, sweep_dir,
                                                                                          trials))],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_holds_exactly_trials(hard_cache_path, tmp_path):
    trials = 4
    p = start_sweep(hard_cache_path, tmp_path, trials)
    deadline = time.monotonic() + 300
    states = {}
    while time.monotonic() < deadline and p.poll() is None:  # kill while a trial runs, after one has finished
        time.sleep(0.5)
        if os.path.exists(tmp_path / "study.db"):
            try:
                states = study_states(tmp_path)
            except Exception:  # the tables are being created
                continue
            if finished(states) >= 1 and states.get("RUNNING"):
                break
    assert p.poll() is None, "the sweep ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    before = study_states(tmp_path)
    killed = before.get("RUNNING", 0)  # 1 unless the kill fell between two trials
    assert killed <= 1 and finished(before) < trials
    r = run_module("classify.sweep", *sweep_args(hard_cache_path, tmp_path, trials))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = study_states(tmp_path)
    assert finished(after) == trials and "RUNNING" not in after
    assert after.get("FAIL", 0) == killed  # the killed trial, marked failed at once and not counted
    assert f"{trials - finished(before)} run by this process" in r.stdout  # only the missing ones
    assert killed == 0 or "(1 left running by a killed worker, now failed)" in r.stderr + r.stdout


@pytest.mark.slow
def test_two_workers_on_one_sweep_dir_run_exactly_trials(hard_cache_path, tmp_path):
    trials = 3
    procs = [start_sweep(hard_cache_path, tmp_path, trials) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-2000:]
    states = study_states(tmp_path)
    assert finished(states) == trials and "RUNNING" not in states
    ran = [int(out.split(" run by this process")[0].rsplit(" ", 1)[1]) for out, _ in outs]
    assert sum(ran) >= trials  # every finished trial was run by one of them (a refused surplus trial also counts)
    with open(tmp_path / "leaderboard.csv", newline="") as f:
        assert len([x for x in csv.DictReader(f) if x["state"] in ("COMPLETE", "PRUNED")]) == trials
    assert os.path.islink(tmp_path / "best") and os.path.isfile(tmp_path / "best" / "metrics.json")
