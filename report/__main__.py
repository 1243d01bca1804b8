"""`make report`: one self-contained report.html of what the model gets wrong and which labels look wrong.

Reads FEATURES, HEAD_DIR, MODEL_DIR (optional) and DATA; writes REPORT_DIR/report.html, top_losses.csv,
label_issues.csv, near_duplicates.csv and summary.json (see report/build.py).
Example: python -m report --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune --data data/train --report-dir artifacts/report
"""
import argparse

from core import cli

from .build import build_report
from .duplicates import THRESHOLD
from .labels import FOLDS


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m report", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", default="artifacts/features.h5", help="the stage-1 cache (FEATURES)")
    p.add_argument("--head-dir", default="artifacts/head", help="stage-2 output folder (HEAD_DIR)")
    p.add_argument("--model-dir", default="", help="stage-3 output folder with model.keras; empty: none (MODEL_DIR)")
    p.add_argument("--data", default="data/train", help="the image folder the cache was built from (DATA)")
    p.add_argument("--report-dir", default="artifacts/report", help="output folder (REPORT_DIR)")
    p.add_argument("--top-n", type=int, default=24, help="images per thumbnail grid (TOP_N)")
    p.add_argument("--seed", type=int, default=42, help="fold assignment of the out-of-fold model (SEED)")
    p.add_argument("--folds", type=int, default=FOLDS, help="K of the out-of-fold cross-validation")
    p.add_argument("--dup-threshold", type=float, default=THRESHOLD,
                   help="cosine of centred pooled features at or above which two images are near-duplicates")
    a = p.parse_args(argv)
    if a.top_n < 1 or a.folds < 2:
        p.error("--top-n must be >= 1 and --folds >= 2")
    return a


@cli
def main(argv=None):
    a = parse_args(argv)
    summary = build_report(a.features, a.head_dir, a.model_dir, a.data, a.report_dir, top_n=a.top_n, seed=a.seed,
                           folds=a.folds, dup_threshold=a.dup_threshold)
    nd = summary["near_duplicates"]
    print(f"{summary['label_issues']} suspected label errors, {nd['pairs']} near-duplicate pairs "
          f"({nd['train_val_pairs']} across train/val, {nd['label_conflicts']} with different labels); "
          f"{summary['seconds']['total']:.1f}s")
    print(f"report: {summary['report_dir']}/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
