"""`make submission`: Kaggle Dogs vs Cats Redux's `id,label` (label = P(dog)), one row per test image, sorted by id;
a model of more than two classes is refused (`make predict` writes its probabilities).

Reads TEST (`1.jpg` ... `12500.jpg`) and MODEL; writes SUBMISSION and `<stem>.skipped.txt` (finetune/predictions.py).
Example: python -m finetune.submission --test data/test --model artifacts/finetune/model.keras --out artifacts/submission.csv
"""
from core import WorkflowError, cli

from .cli import prediction_parser
from .predictions import CLIP, write_submission


def parse_args(argv=None):
    p = prediction_parser("python -m finetune.submission", __doc__.splitlines()[0], "test", "data/test",
               "Kaggle's test folder of <id>.jpg (TEST)", "artifacts/submission.csv", "SUBMISSION")
    p.add_argument("--clip", type=float, default=CLIP, help="clip P(dog) to [CLIP, 1 - CLIP]; 0: no clipping (CLIP)")
    a = p.parse_args(argv)
    if not 0 <= a.clip < 0.5:
        raise WorkflowError(f"CLIP={a.clip}: must be in [0, 0.5), e.g. CLIP=0.005")
    return a


@cli
def main(argv=None):
    a = parse_args(argv)
    return write_submission(a.test, a.model, a.out, a.batch, a.tta, bool(a.calibrate), a.clip, a.precision)


if __name__ == "__main__":
    raise SystemExit(main())
