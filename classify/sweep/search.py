"""`make sweep`: search head kinds and training settings on the cache with Optuna; resumable, several workers at once.

Reads FEATURES (only through `cache/`). Writes SWEEP_DIR/study.db (Optuna's RDB storage in SQLite, unless STORAGE
names another database), SWEEP_DIR/trials/<n>/ (each trial's history.csv and metrics.json), the leaderboard, plots
and best/ (classify/sweep/outputs.py): a HEAD_DIR, so `make finetune HEAD_DIR=SWEEP_DIR/best` works. How workers
share the study is in classify/sweep/study.py.
Example: python -m classify.sweep --features artifacts/features.h5 --sweep-dir artifacts/sweep --trials 40 --timeout 30m

Each trial is stage 2's own training (classify.train.train_head on classify.data.Feeds, same MEM_BUDGET rule), with
a callback that reports val loss per epoch to Optuna's pruner. Killed at any moment (SIGKILL included), the same
command resumes: finished trials stay in the database, the trial that was running is marked FAIL, and only the
trials still missing to reach TRIALS (COMPLETE + PRUNED) are run. Several processes on one study (one SWEEP_DIR, or
one STORAGE across machines) together run exactly TRIALS: a trial runs only if fewer than TRIALS unfailed trials
were created before it (trial numbers are handed out by the database, in order), else it is refused as surplus.
A worker that finds the quota filled by trials still running elsewhere waits for them instead of leaving: a trial
whose worker died on another machine is failed by Optuna's heartbeat after GRACE_S and rerun once with the same
parameters (classify/sweep/study.py), so the study still ends with TRIALS.
"""
import os
import shutil
import time
import warnings

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from core import WorkflowError, tblogs
from core.files import fingerprint
from core.runs import RunState

from .. import data, record, train
from ..head import head_config, loss_name
from ..stage import PATIENCE, head_metrics
from . import outputs
from .study import HEARTBEAT_S, Surplus, counts, fail_dead_trials, make_storage, parse_duration, process_identity, shown

# The search space, written once: (name, kind, values). "log": log-uniform in [lo, hi]; "float": uniform.
SPACE = (
    ("head", "categorical", ("flatten", "pooled")),
    ("units", "categorical", (0, 128, 512, 1024)),  # 0: no hidden layer (a logistic head)
    ("dropout", "float", (0.0, 0.6)),
    ("lr", "log", (1e-5, 1e-2)),
    ("batch", "categorical", (16, 32, 64, 128)),
    ("weight_decay", "log", (1e-6, 1e-1)),  # Adam's decoupled decay (w -= LR x wd x w each step), as AdamW
)
PARAMS = tuple(name for name, _, _ in SPACE)
# Pruner: MedianPruner stops a trial whose best val loss so far is worse than the median of earlier trials at the
# same epoch. Chosen over Hyperband because a sweep here is tens of trials of at most EPOCHS epochs: Hyperband's
# brackets would each get a handful of trials, where the median rule needs no budget tuning. n_startup_trials: the
# median means nothing over fewer trials; n_warmup_steps: a high LR often overshoots in its first epochs and recovers.
PRUNER = {"n_startup_trials": 4, "n_warmup_steps": 3}
TPE_STARTUP = 8  # random trials before TPE models the space: enough to cover 6 parameters coarsely


def describe_space() -> str:
    """The search space as text (printed by --help)."""
    return "\n".join(f"  {n:<13} {k:<12} {' .. '.join(map(str, v)) if k != 'categorical' else ', '.join(map(str, v))}"
                     for n, k, v in SPACE)


def suggest(trial) -> dict:
    """One point of SPACE from Optuna's sampler."""
    out = {}
    for name, kind, values in SPACE:
        if kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(values))
        else:
            out[name] = trial.suggest_float(name, *values, log=kind == "log")
    return out


def make_sampler(seed: int, number: int):
    """TPE seeded per trial number: one worker alone reproduces its sweep; parallel workers differ (constant_liar
    keeps them off the point a running trial is already trying)."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed * 100_003 + number, n_startup_trials=TPE_STARTUP, constant_liar=True)


class PruningCallback:
    """Keras callback: report val loss to Optuna each epoch; on should_prune, stop training and remember it."""

    def __new__(cls, trial):
        import keras

        class _Cb(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.pruned_at = None

            def on_epoch_end(self, epoch, logs=None):
                loss = (logs or {}).get("val_loss")
                if loss is None or not np.isfinite(loss):
                    return
                trial.report(float(loss), epoch)
                if trial.should_prune():
                    self.pruned_at = epoch + 1
                    self.model.stop_training = True

        return _Cb()


def study_name(cache, layer: str, epochs: int, seed: int) -> str:
    """Fixed by the cache and the settings that make trials comparable: rerunning the command finds the same study."""
    settings = {"layer": layer, "epochs": epochs, "seed": seed, "space": SPACE, "pruner": PRUNER}
    return f"heads-{cache.fingerprint[:12]}-{fingerprint(settings)[:8]}"


def run_trial(trial, ctx: dict) -> float:
    """Train one head with stage 2's code; store its metrics on the trial; promote it to best/ if it is the best."""
    import keras
    import optuna

    for k, v in process_identity().items():  # first: a kill from here on leaves a trial fail_dead_trials can see
        trial.set_user_attr(k, v)
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and
               t.state != optuna.trial.TrialState.FAIL]
    if len(earlier) >= ctx["trials"]:
        trial.set_user_attr("surplus", True)
        raise Surplus(f"trial {trial.number}: {len(earlier)} unfailed trials before it already fill TRIALS")
    trial.study.sampler = make_sampler(ctx["seed"], trial.number)
    p = suggest(trial)
    cache, t0 = ctx["cache"], time.perf_counter()
    hc = head_config(p["head"], p["units"], p["dropout"], len(cache.class_names))
    trial_dir = os.path.join(ctx["sweep_dir"], "trials", f"{trial.number:04d}")
    keras.backend.clear_session()  # each trial builds a new graph: don't let the last ones pile up
    feeds = data.Feeds(cache, ctx["layer"], ctx["tr"], ctx["va"], p["batch"], ctx["seed"], ctx["scale"],
                       ctx["in_memory"], held=ctx["held"])
    identity = {"cache_fingerprint": cache.fingerprint, "layer": ctx["layer"], "trial": trial.number,
                "study": ctx["study"], **p}
    pruning = PruningCallback(trial)
    # Stage 2's own bookkeeping, without commits: a killed trial is failed and never resumed, so they would only write.
    tb_run = os.path.join(ctx["tb_dir"], f"trial-{trial.number:04d}") if ctx["tb_dir"] else None
    run = RunState(trial_dir, identity, checkpoint_s=None, tb_dir=tb_run)
    try:
        head = train.train_head(feeds, ctx["epochs"], p["lr"], ctx["seed"], run, PATIENCE, verbose=0, head=hc,
                                weight_decay=p["weight_decay"], extra_callbacks=[pruning])
    except WorkflowError as e:  # no finite val loss at all (an LR that diverges): a bad trial, stopped, not a crash
        trial.set_user_attr("diverged", str(e))
        shutil.rmtree(trial_dir, ignore_errors=True)
        raise optuna.TrialPruned(f"diverged: {e}") from None
    history = run.rows()
    head_m = {**head_metrics(head, feeds, history, hc["kind"]), "pruned_at_epoch": pruning.pruned_at,
              "seconds": round(time.perf_counter() - t0, 3)}  # the trial's wall time, data and tracing included
    for k in (*outputs.METRICS, "temperature"):
        trial.set_user_attr(k, head_m[k])
    if tb_run:  # TensorBoard's HParams view: this trial's point and its result
        tblogs.write_trial(tb_run, f"trial-{trial.number:04d}", p, {"val_log_loss": head_m["val_log_loss"]})
    config = {"features": os.path.abspath(cache.path), "layer": ctx["layer"], "head": hc,
              "epochs": ctx["epochs"], "batch": p["batch"], "lr": p["lr"], "seed": ctx["seed"],
              "weight_decay": p["weight_decay"], "optimizer": "adam (decoupled weight decay)",
              "loss": loss_name(len(cache.class_names)), "patience": PATIENCE, "deterministic": True,
              "checkpoint_s": None, "tb_dir": tb_run,
              "mem_budget": ctx["mem_budget"], "feature_scale": ctx["scale"],
              "feature_scale_note": "folded into the head's first Dense kernel: head.keras takes raw features",
              "cache_config": cache.config, "trial": trial.number,
              "sweep": {"study": ctx["study"], "trial": trial.number, "params": p,
                        "sweep_dir": os.path.abspath(ctx["sweep_dir"])}}
    run.clear()
    if pruning.pruned_at is not None:  # recorded, without the head: nothing will load it
        record.write_metrics(trial_dir, head_m, None, cache, ctx["layer"], config)
        raise optuna.TrialPruned(f"val loss above the median at epoch {pruning.pruned_at}")
    record.save_outputs(trial_dir, head, history, f"trial {trial.number}: {hc['kind']}, units {hc['units']}, "
                                                  f"LR={p['lr']:.2g}, BATCH={p['batch']}")
    metrics = record.write_metrics(trial_dir, head_m, None, cache, ctx["layer"], config)  # last: the HEAD_DIR contract
    with outputs.locked(ctx["sweep_dir"]):
        if outputs.promote(ctx["sweep_dir"], trial_dir, metrics):
            from tqdm import tqdm

            tqdm.write(f"trial {trial.number}: new best, val log loss {head_m['val_log_loss']:.4f} -> "
                       f"{os.path.join(ctx['sweep_dir'], outputs.BEST)}")
    os.remove(os.path.join(trial_dir, record.HEAD_FILE))  # best/ has its copy; 40 heads of 38.5M weights would not fit
    return head_m["val_log_loss"]


def run_sweep(features, sweep_dir, trials: int, layer="", epochs: int = 20, seed: int = 42,
              mem_budget=data.AUTO, timeout=None, storage=None, tb_dir="") -> dict:
    """Run trials until the study holds `trials` COMPLETE + PRUNED ones (or `timeout` passes); returns counts.
    `tb_dir` (TB_DIR): TensorBoard logs in TB_DIR/sweep, one run per trial and the HParams experiment."""
    import optuna
    from tqdm import tqdm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tqdm bar and leaderboard say what matters
    if trials < 1:
        raise WorkflowError(f"TRIALS={trials}: must be at least 1")
    deadline = time.monotonic() + parse_duration(timeout)
    os.makedirs(os.path.join(sweep_dir, "trials"), exist_ok=True)
    url = storage or f"sqlite:///{os.path.abspath(os.path.join(sweep_dir, 'study.db'))}"
    data.resolve_budget(mem_budget)  # a wrong MEM_BUDGET fails before any work
    # Under the lock: two workers starting together would both create SQLite's tables ("table already exists").
    # First: a wrong STORAGE, a server that is down or a missing driver fails before any work.
    with outputs.locked(sweep_dir):
        storage = make_storage(url)
    with open_cache(features, layer=layer or None, need_labels=True, fix="make features") as cache:
        layer = layer or cache.layer  # the cache's own layer unless LAYER is given
        if (made_from := outputs.best_cache(sweep_dir)) and made_from != cache.fingerprint:
            print(f"{os.path.join(sweep_dir, outputs.BEST)}: stale ({cache.stale_words(made_from)}); this sweep's "
                  f"best head replaces it")
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        in_memory, line = data.hold_in_memory(cache, np.concatenate([tr, va]), layer, mem_budget)
        tqdm.write(line)
        _, _, scale = data.pool_and_scale(cache, layer, np.concatenate([tr, va]), tr)
        name = study_name(cache, layer, epochs, seed)
        with outputs.locked(sweep_dir):
            study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                        load_if_exists=True, sampler=make_sampler(seed, 0),
                                        pruner=optuna.pruners.MedianPruner(**PRUNER))
            study.set_metric_names(["val_log_loss"])
        held = data.hold(cache, layer, tr, va) if in_memory else None  # read once, shared by every trial
        ctx = {"cache": cache, "layer": layer, "tr": tr, "va": va, "scale": scale, "in_memory": in_memory, "held": held,
               "epochs": epochs, "seed": seed, "sweep_dir": sweep_dir, "trials": trials, "study": name,
               "mem_budget": mem_budget, "tb_dir": tblogs.stage_dir(tb_dir, "sweep")}
        if ctx["tb_dir"]:
            tblogs.write_experiment(ctx["tb_dir"], SPACE, "val_log_loss")
        killed = fail_dead_trials(study)
        c = counts(study)
        tqdm.write(f"study {name} in {shown(url)}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed"
                   f"{f' ({killed} left running by a killed worker, now failed)' if killed else ''}; "
                   f"TRIALS={trials}, {len(tr)} train / {len(va)} val rows {'in memory' if in_memory else 'streamed'}")
        ran = 0
        with tqdm(total=trials, initial=min(trials, c["complete"] + c["pruned"]), desc="sweep", unit="trial") as bar:
            while True:
                fail_dead_trials(study)
                c = counts(study)
                done = c["complete"] + c["pruned"]
                bar.n = min(trials, done)
                if c["complete"]:
                    bar.set_postfix(best=f"{study.best_value:.4f}", trial=study.best_trial.number)
                bar.refresh()
                if done >= trials or time.monotonic() >= deadline:
                    break
                if done + c["running"] >= trials:
                    # Other workers' running trials would complete the quota, unless one of them died (on another
                    # machine: only its stopped heartbeat tells). Wait and see: a stale trial is failed and rerun.
                    optuna.storages.fail_stale_trials(study)
                    time.sleep(HEARTBEAT_S / 2)
                    continue
                n_before = len(study.get_trials(deepcopy=False))
                study.optimize(lambda t: run_trial(t, ctx), n_trials=1, catch=(Surplus,), gc_after_trial=True)
                last = [t for t in study.get_trials(deepcopy=False)[n_before:]]
                ran += 1
                if any(t.user_attrs.get("surplus") for t in last):
                    break
                with outputs.locked(sweep_dir):
                    outputs.write_outputs(sweep_dir, study, PARAMS, seed)
        with outputs.locked(sweep_dir):
            outputs.write_outputs(sweep_dir, study, PARAMS, seed)
        c = counts(study)
        c.update({"ran_here": ran, "study": name, "storage": shown(url)})
        return c
