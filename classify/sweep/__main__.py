"""`make sweep`: search head kinds and training settings on the cache with Optuna (classify/sweep/search.py).

Reads FEATURES; writes SWEEP_DIR (study.db, trials/, leaderboard.csv/.md, val_log_loss.png, importance.png, best/).
Example: python -m classify.sweep --features artifacts/features.h5 --sweep-dir artifacts/sweep --trials 40 --timeout 30m
"""
import argparse
import os

from core import cli
from core.options import add_tb_dir

from . import outputs, search


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m classify.sweep", description=search.__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="search space (classify/sweep/search.py SPACE):\n" + search.describe_space())
    p.add_argument("--features", default="artifacts/features.h5", help="the stage-1 cache (FEATURES)")
    p.add_argument("--sweep-dir", default="artifacts/sweep", help="output folder (SWEEP_DIR)")
    p.add_argument("--trials", type=int, default=40, help="COMPLETE + PRUNED trials the study must hold (TRIALS)")
    p.add_argument("--timeout", default=None, help="start no trial after this long, e.g. 30m (TIMEOUT)")
    p.add_argument("--storage", default=None,
                   help="SQLAlchemy URL shared by workers, e.g. postgresql://user@host/db (STORAGE); "
                        "default sqlite:///SWEEP_DIR/study.db")
    p.add_argument("--layer", default="", help="cached layer (LAYER); empty: the cache's own")
    p.add_argument("--epochs", type=int, default=20, help="most epochs per trial; early stopping/pruning end sooner")
    p.add_argument("--seed", type=int, default=42, help="weights init, shuffling and the sampler (SEED)")
    p.add_argument("--mem-budget", default="auto", help="features in memory up to this size, else streamed (MEM_BUDGET)")
    add_tb_dir(p)
    return p.parse_args(argv)


@cli
def main(argv=None):
    a = parse_args(argv)
    c = search.run_sweep(a.features, a.sweep_dir, a.trials, a.layer, a.epochs, a.seed, a.mem_budget, a.timeout, a.storage,
                         a.tb_dir)
    best = os.path.join(a.sweep_dir, outputs.BEST)
    print(f"{a.sweep_dir}: study {c['study']} holds {c['complete']} complete + {c['pruned']} pruned (TRIALS="
          f"{a.trials}), {c['fail']} failed; {c['ran_here']} run by this process. best val log loss "
          f"{outputs.best_loss(a.sweep_dir, outputs.best_cache(a.sweep_dir)):.4f} in {best}/ (make finetune HEAD_DIR={best}); "
          f"leaderboard.md, val_log_loss.png, importance.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
