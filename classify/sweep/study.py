"""The sweep's study as several workers share it: storage, who runs which trial, and trials left by dead workers.

Reads and writes the Optuna study in its RDB storage (SQLite at SWEEP_DIR/study.db, or STORAGE); nothing else.
Example: python -c "from classify.sweep.study import parse_duration; print(parse_duration('30m'))"
"""
import re
import socket

from core import WorkflowError

HEARTBEAT_S, GRACE_S = 10, 60  # a trial whose worker stopped beating for GRACE_S is failed (other machines)
SQLITE_TIMEOUT_S = 60  # SQLite takes one writer at a time: wait for the lock instead of failing the trial


class Surplus(Exception):
    """This trial would exceed TRIALS: other workers already hold the quota."""


def parse_duration(text) -> float:
    """'30m' -> 1800.0 seconds; s/m/h suffixes, a bare number is seconds; None or '' -> no limit (inf)."""
    if text in (None, ""):
        return float("inf")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise WorkflowError(f"TIMEOUT={text!r}: expected a duration such as 90s, 30m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def shown(url) -> str:
    """`url` with its password masked, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password to find: show it as given
        return url


def make_storage(url):
    """Optuna's RDBStorage at `url`, with a heartbeat: a trial whose worker stopped beating (killed on another
    machine) is failed after GRACE_S and rerun once with the same parameters. A URL that does not parse, a missing
    driver or a server that does not answer raise WorkflowError with the fix."""
    import optuna
    import sqlalchemy.exc

    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    fix = ("STORAGE takes a SQLAlchemy URL such as postgresql://user:password@host:5432/db or sqlite:///path.db; "
           "`make postgres` starts a local PostgreSQL server")
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except ImportError as e:  # SQLAlchemy imports the dialect's driver when the engine is made (Optuna rewraps it)
        cause = e.__cause__ or e
        raise WorkflowError(f"STORAGE={shown(url)}: its database driver is not installed ({cause}); run `make "
                            f"install` (requirements.txt pins psycopg[binary], SQLAlchemy's driver for "
                            f"postgresql://)") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise WorkflowError(f"STORAGE={shown(url)}: not a usable SQLAlchemy URL ({e}); {fix}") from None
    except sqlalchemy.exc.OperationalError as e:  # server down, wrong host/port/password, no such database
        reason = " ".join(str(e.orig or e).split())[:300]
        raise WorkflowError(f"STORAGE={shown(url)}: cannot connect ({reason}); start the server or fix the URL. "
                            f"{fix}") from None


def process_identity(pid=None) -> dict:
    import psutil

    p = psutil.Process(pid)
    return {"host": socket.gethostname(), "pid": p.pid, "pid_started": p.create_time()}


def fail_dead_trials(study) -> int:
    """Mark FAIL the RUNNING trials whose worker on this host is gone (SIGKILL); returns how many.

    Optuna's heartbeat does the same for every host but only after GRACE_S; this makes a rerun right after a kill
    see the killed trial as failed at once. pid_started guards against a reused pid."""
    import optuna
    import psutil

    n, host = 0, socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("host") != host or "pid" not in a:
            continue
        try:
            alive = psutil.Process(a["pid"]).create_time() == a["pid_started"]
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def counts(study) -> dict:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s.name.lower(): states.count(s) for s in TrialState}
