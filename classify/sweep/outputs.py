"""What a sweep writes: the leaderboard (CSV + Markdown), two plots and SWEEP_DIR/best/, a HEAD_DIR replaced atomically.

Reads the Optuna study (trials, their parameters and the metrics each trial stored as user attributes) and the
finished trial's folder. Writes SWEEP_DIR/leaderboard.csv, leaderboard.md, val_log_loss.png, importance.png and
best/ -> best-<trial>-<id>/ (a symlink swapped with os.replace, so a reader sees the old head or the new one, never
half of one). Example: python -m classify.sweep --features artifacts/features.h5 --sweep-dir artifacts/sweep
(This module is classify/sweep/outputs.py.)

Several workers share SWEEP_DIR: every write here happens under one file lock (SWEEP_DIR/.lock), so two workers
never interleave a leaderboard or promote a worse head over a better one.
"""
import contextlib
import fcntl
import json
import os
import shutil
import uuid

import numpy as np

from core.files import replacing, write_csv, write_json, write_text

from ..record import CURVES_FILE, HEAD_FILE, HISTORY_FILE, METRICS_FILE

METRICS = ("val_log_loss", "val_accuracy", "val_auc", "epochs", "seconds")
BEST = "best"
HEAD_FILES = (HEAD_FILE, HISTORY_FILE, CURVES_FILE)  # + metrics.json, written last (classify/record.py)


@contextlib.contextmanager
def locked(sweep_dir):
    """An exclusive lock on SWEEP_DIR/.lock for this process (flock: released if the process dies)."""
    with open(os.path.join(sweep_dir, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def leaderboard_rows(study, param_names) -> list:
    """One dict per trial that got parameters (surplus trials, refused before training, are left out), sorted by
    val log loss, missing last."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or not t.params:
            continue
        row = {"trial": t.number, **{p: t.params.get(p) for p in param_names},
               **{m: t.user_attrs.get(m) for m in METRICS}, "state": t.state.name}
        rows.append(row)
    return sorted(rows, key=lambda r: (r["val_log_loss"] is None, r["val_log_loss"] or 0.0, r["trial"]))


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_leaderboard(sweep_dir, rows, columns):
    """leaderboard.csv (every value) and leaderboard.md (rounded), both replaced atomically."""
    write_csv(os.path.join(sweep_dir, "leaderboard.csv"), columns, [[r[c] for c in columns] for r in rows])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    write_text(os.path.join(sweep_dir, "leaderboard.md"), "\n".join(lines) + "\n")


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_losses(path, rows):
    """Val log loss by trial number, coloured by state, with the best so far (completed trials) as a step line."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for state, style in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = sorted((r["trial"], r["val_log_loss"]) for r in rows if r["state"] == state and r["val_log_loss"])
        if pts:
            ax.plot(*zip(*pts), style, label=state.lower())
    done = sorted((r["trial"], r["val_log_loss"]) for r in rows if r["state"] == "COMPLETE" and r["val_log_loss"])
    if done:
        ax.step([t for t, _ in done], np.minimum.accumulate([v for _, v in done]), where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("val log loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_importance(path, study, seed: int) -> dict:
    """Optuna's parameter importances (fANOVA on completed trials) as a matplotlib bar chart; {} while too few."""
    import optuna

    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError):  # fewer than two completed trials, or a parameter that never varied
        imp = {}
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if imp:
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance for val log loss (fANOVA)")
    else:
        ax.text(0.5, 0.5, "not enough completed trials yet", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return imp


def best_cache(sweep_dir) -> str:
    """The fingerprint of the cache SWEEP_DIR/best/ was trained on ('' where there is no best head yet)."""
    try:
        with open(os.path.join(sweep_dir, BEST, METRICS_FILE)) as f:
            return str(json.load(f)["cache"]["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def best_loss(sweep_dir, fingerprint: str) -> float:
    """The val log loss recorded in SWEEP_DIR/best/metrics.json; inf where there is no best head yet, or one of
    another cache (its loss was measured on other rows: any head of this cache replaces it)."""
    try:
        with open(os.path.join(sweep_dir, BEST, METRICS_FILE)) as f:
            m = json.load(f)
        return float(m["head"]["val_log_loss"]) if m["cache"]["fingerprint"] == fingerprint else np.inf
    except (OSError, ValueError, KeyError, TypeError):
        return np.inf


def promote(sweep_dir, trial_dir, metrics: dict) -> bool:
    """Make the trial's head SWEEP_DIR/best/ if it beats the current one; call under `locked`.

    A directory cannot be renamed over a non-empty one, so best is a symlink to best-<trial>-<id>/: the new folder
    is written in full (metrics.json last), then a new link is renamed over the old one (atomic), then the old
    folder goes."""
    if not metrics["head"]["val_log_loss"] < best_loss(sweep_dir, metrics["cache"]["fingerprint"]):
        return False
    name = f"{BEST}-{metrics['config']['trial']:04d}-{uuid.uuid4().hex[:8]}"
    target = os.path.join(sweep_dir, name)
    os.makedirs(target)
    for f in HEAD_FILES:
        shutil.copy2(os.path.join(trial_dir, f), os.path.join(target, f))
    write_json(os.path.join(target, METRICS_FILE), metrics)
    link = os.path.join(sweep_dir, BEST)
    old = os.path.realpath(link) if os.path.islink(link) else None
    tmp = os.path.join(sweep_dir, f".{BEST}.{uuid.uuid4().hex[:8]}")
    os.symlink(name, tmp)
    os.replace(tmp, link)
    if old and os.path.isdir(old) and old != os.path.realpath(target):
        shutil.rmtree(old, ignore_errors=True)
    return True


def write_outputs(sweep_dir, study, param_names, seed: int):
    """Leaderboard, both plots; returns the rows. Call under `locked`."""
    rows = leaderboard_rows(study, param_names)
    write_leaderboard(sweep_dir, rows, ["trial", *param_names, *METRICS, "state"])
    plot_losses(os.path.join(sweep_dir, "val_log_loss.png"), rows)
    plot_importance(os.path.join(sweep_dir, "importance.png"), study, seed)
    return rows
