"""`make predict`: one CSV row `path,label,prob,prob_<class>...` per decodable image with the fine-tuned model.

Reads INPUT (an image or a folder) and MODEL; writes PREDICTIONS and `<stem>.skipped.txt` (finetune/predictions.py).
Example: python -m finetune.predict --input data/test --model artifacts/finetune/model.keras --out artifacts/predictions.csv
"""
from core import cli

from .cli import prediction_parser
from .predictions import write_predictions


def parse_args(argv=None):
    return prediction_parser("python -m finetune.predict", __doc__.splitlines()[0], "input", "data/test",
                  "an image file or a folder of images (INPUT)", "artifacts/predictions.csv", "PREDICTIONS"
                  ).parse_args(argv)


@cli
def main(argv=None):
    a = parse_args(argv)
    return write_predictions(a.input, a.model, a.out, a.batch, a.tta, bool(a.calibrate), a.precision)


if __name__ == "__main__":
    raise SystemExit(main())
