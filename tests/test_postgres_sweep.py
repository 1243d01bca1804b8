"""`make sweep` on STORAGE=postgresql://: a study shared by two workers on a real PostgreSQL server, one of them
SIGKILLed mid-trial, and the one-line errors for a wrong URL, a server that is down and a missing driver.

Needs a server (`make postgres`, as root; .ci/run does it). PG_URL names a role that may create databases; each
test run gets a fresh database, dropped at the end. Without a server the test skips, except under CI=true.
"""
import os
import signal
import subprocess
import time
import uuid

import pytest

from conftest import ROOT, assert_user_error, run_module

PG_URL = os.environ.get("PG_URL", "postgresql://dogcat:dogcat@127.0.0.1:5432/dogcat")  # the Makefile's default
TRIALS = 4
OTHER_HOST = "other-machine"  # the killed worker's hostname (its own UTS namespace): a second machine, to the study


@pytest.fixture
def database():
    """A fresh database on the server at PG_URL, as a SQLAlchemy URL; dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    try:
        conn = psycopg.connect(PG_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as e:
        msg = f"no PostgreSQL server at PG_URL={PG_URL} ({str(e).strip()}); run `make postgres` (as root)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {msg}; .ci/run must start it")
        pytest.skip(msg)
    name = f"dogcat_test_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


def make_sweep(features, sweep_dir, storage, other_host=False):
    """`make sweep` as a user types it, in its own process group; on `other_host`, under another hostname."""
    cmd = ["make", "-s", "--no-print-directory", "sweep", f"FEATURES={features}", f"SWEEP_DIR={sweep_dir}",
           f"STORAGE={storage}", f"TRIALS={TRIALS}", "EPOCHS=3", "SEED=0"]
    if other_host:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def trials_of(url):
    import optuna

    names = optuna.get_all_study_names(url)
    return [] if not names else optuna.load_study(study_name=names[0], storage=url).get_trials(deepcopy=False)


@pytest.mark.slow
def test_two_workers_one_killed_mid_trial_end_with_exactly_trials(hard_cache_path, tmp_path, database):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from classify.sweep.study import GRACE_S

    far = make_sweep(hard_cache_path, tmp_path, database, other_host=True)
    near = make_sweep(hard_cache_path, tmp_path, database)
    killed, deadline = None, time.monotonic() + 300
    try:
        while killed is None and time.monotonic() < deadline and far.poll() is None:
            time.sleep(0.3)
            try:
                running = [t for t in trials_of(database) if t.state == TrialState.RUNNING and
                           t.user_attrs.get("host") == OTHER_HOST]
            except Exception:  # Optuna is creating its tables
                continue
            if running:
                os.killpg(far.pid, signal.SIGKILL)  # mid-trial: its heartbeat stops, nothing else tells
                killed = running[0]
        far_out = far.communicate(timeout=60)[0]
        assert killed is not None, "the far worker held no running trial to kill:\n" + far_out[-3000:]
        near_out = near.communicate(timeout=GRACE_S + 540)[0]
    finally:
        for p in (far, near):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert near.returncode == 0, near_out[-4000:]
    trials = trials_of(database)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == TRIALS, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    dead = next(t for t in trials if t.number == killed.number)
    assert dead.state == TrialState.FAIL and dead.user_attrs["host"] == OTHER_HOST
    # Failed by Optuna's heartbeat (fail_dead_trials only fails this host's trials), then rerun with its parameters.
    reruns = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert len(reruns) == 1 and reruns[0].state in (TrialState.COMPLETE, TrialState.PRUNED), reruns
    assert reruns[0].params == dead.params
    other_fails = [t for t in trials if t.state == TrialState.FAIL and t.number != killed.number]
    assert all(t.user_attrs.get("surplus") for t in other_fails), other_fails  # refused as surplus, nothing else
    # The study lives in PostgreSQL, and best/ is the study's best trial, written once (one best-<trial>-<id>/).
    assert not os.path.exists(tmp_path / "study.db")
    best = [n for n in os.listdir(tmp_path) if n.startswith("best-")]
    assert len(best) == 1 and os.path.realpath(tmp_path / "best") == str(tmp_path / best[0])
    study = optuna.load_study(study_name=optuna.get_all_study_names(database)[0], storage=database)
    assert best[0].startswith(f"best-{study.best_trial.number:04d}-"), (best, study.best_trial.number)
    print(f"trials: {len(trials)} created, {TRIALS} complete+pruned, killed trial {killed.number} failed by the "
          f"heartbeat and rerun as {reruns[0].number}, {len(other_fails)} surplus refused")


@pytest.mark.parametrize("storage, expected", [
    ("postgresq://dogcat@127.0.0.1/dogcat", "not a usable SQLAlchemy URL"),
    ("postgresql://dogcat:secret@127.0.0.1:1/dogcat", "cannot connect"),
])
def test_wrong_url_or_server_down_is_one_error_line(cache_path, tmp_path, storage, expected):
    r = run_module("classify.sweep", "--features", cache_path, "--sweep-dir", tmp_path, "--trials", "1",
                   "--storage", storage)
    assert_user_error(r, expected, "make postgres")
    assert "secret" not in r.stderr  # the password is masked


def test_missing_driver_is_one_error_line(cache_path, tmp_path):
    fake = tmp_path / "no_driver" / "psycopg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    r = run_module("classify.sweep", "--features", cache_path, "--sweep-dir", tmp_path / "sweep", "--trials", "1",
                   "--storage", "postgresql://dogcat:dogcat@127.0.0.1:5432/dogcat",
                   env={"PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"})
    assert_user_error(r, "driver is not installed", "make install")
