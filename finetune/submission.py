"""Write a Kaggle Dogs vs Cats Redux submission: `id,label` with label = P(dog), one row per test image, sorted by id.

Reads TEST (Kaggle's test folder: `1.jpg` ... `12500.jpg`) and MODEL (the model.keras `make finetune` wrote).
Writes SUBMISSION (default artifacts/submission.csv) and, next to it, `<name>.skipped.txt` (finetune/predictions.py).
Example: python -m finetune.submission --test data/test --model artifacts/finetune/model.keras --out artifacts/submission.csv
"""
import argparse

from core import cli

from .finishing import add_options
from .predictions import CLIP, write_submission


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m finetune.submission", description=__doc__.splitlines()[0])
    p.add_argument("--test", default="data/test", help="Kaggle's test folder of <id>.jpg (TEST)")
    p.add_argument("--model", default="artifacts/finetune/model.keras", help="model from make finetune (MODEL)")
    p.add_argument("--out", default="artifacts/submission.csv", help="CSV to write (SUBMISSION)")
    add_options(p)
    p.add_argument("--clip", type=float, default=CLIP, help="clip P(dog) to [CLIP, 1 - CLIP]; 0: no clipping (CLIP)")
    a = p.parse_args(argv)
    if not 0 <= a.clip < 0.5:
        p.error(f"--clip {a.clip}: must be in [0, 0.5), e.g. CLIP=0.005")
    return a


@cli
def main(argv=None):
    a = parse_args(argv)
    return write_submission(a.test, a.model, a.out, a.batch, a.tta, bool(a.calibrate), a.clip)


if __name__ == "__main__":
    raise SystemExit(main())
