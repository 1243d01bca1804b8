"""Stage 2: train the dense head and a scikit-learn baseline on the cached features, in minutes on a CPU.

Reads: FEATURES (a complete, labelled cache, only through `cache/`). Writes into HEAD_DIR: head.keras (the
best-val-loss head, taking raw features), baseline.joblib, metrics.json, history.csv and curves.png.
Example: python -m classify --features artifacts/features.h5 --head-dir artifacts/head --seed 42 --mem-budget 2G

Killed at any moment, the same command resumes the head from its last finished epoch (HEAD_DIR/_work/).
metrics.json is written last and removed when a run starts: where it exists, the other outputs belong to it.
"""
import argparse

from core import cli
from core.options import add_training

from .head import HEAD_DROPOUT, HEAD_KINDS, HEAD_UNITS, head_config
from .stage import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, Settings, train_head_dir


def parse_args(argv=None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m classify", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", default="artifacts/features.h5", help="the stage-1 cache (FEATURES)")
    p.add_argument("--head-dir", default="artifacts/head", help="output folder (HEAD_DIR)")
    p.add_argument("--layer", default="", help="cached layer to train on (LAYER); empty: the cache's own")
    add_training(p, DEFAULT_EPOCHS, DEFAULT_BATCH, DEFAULT_LR, batch_help="examples per step",
                 seed_help="weights init, dropout and shuffling")
    p.add_argument("--head", default="flatten", choices=HEAD_KINDS, help="head kind, see classify/head.py (HEAD)")
    p.add_argument("--units", type=int, default=HEAD_UNITS, help="hidden Dense units; 0: none (UNITS)")
    p.add_argument("--dropout", type=float, default=HEAD_DROPOUT, help="dropout rate (DROPOUT)")
    p.add_argument("--deterministic", type=int, default=1, choices=[0, 1],
                   help="op determinism: the same SEED gives the same weights bit for bit; Keras then runs "
                        "without XLA (make bench: head_epoch_s_deterministic against head_epoch_s)")
    p.add_argument("--xla", type=int, default=1, choices=[0, 1],
                   help="with --deterministic 0: compile the head's train step with XLA")
    p.add_argument("--mem-budget", default="auto",
                   help="hold the features in memory up to this size, else stream them (MEM_BUDGET: a size with K/M/G, or "
                        "auto: when they take at most half of the memory available now)")
    a = p.parse_args(argv)
    for name in ("epochs", "batch"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not a.lr > 0:
        p.error("--lr must be positive")
    if a.checkpoint_s < 0:
        p.error("--checkpoint-s must be >= 0 (0: commit every epoch)")
    try:
        head_config(a.head, a.units, a.dropout)
    except ValueError as e:
        p.error(str(e))
    return Settings(features=a.features, head_dir=a.head_dir, layer=a.layer, epochs=a.epochs, batch=a.batch, lr=a.lr,
                    seed=a.seed, deterministic=bool(a.deterministic), xla=bool(a.xla), mem_budget=a.mem_budget,
                    head=a.head, units=a.units, dropout=a.dropout, checkpoint_s=a.checkpoint_s,
                    tb_dir=a.tb_dir)


@cli
def main(argv=None):
    return train_head_dir(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
