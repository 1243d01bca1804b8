"""Predict with the fine-tuned model: one CSV row `path,prob_dog,label` per decodable image; broken ones are skipped.

Reads INPUT (an image file, or a folder searched recursively) and MODEL (the model.keras `make finetune` wrote).
Writes OUT (default artifacts/predictions.csv) and, next to it, `<name>.skipped.txt` (finetune/predictions.py).
Example: python -m finetune.predict --input data/test --model artifacts/finetune/model.keras --out artifacts/predictions.csv
"""
import argparse

from core import cli

from .finishing import add_options
from .predictions import write_predictions


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m finetune.predict", description=__doc__.splitlines()[0])
    p.add_argument("--input", default="data/test", help="an image file or a folder of images (INPUT)")
    p.add_argument("--model", default="artifacts/finetune/model.keras", help="model from make finetune (MODEL)")
    p.add_argument("--out", default="artifacts/predictions.csv", help="CSV to write (PREDICTIONS)")
    add_options(p)
    return p.parse_args(argv)


@cli
def main(argv=None):
    a = parse_args(argv)
    return write_predictions(a.input, a.model, a.out, a.batch, a.tta, bool(a.calibrate))


if __name__ == "__main__":
    raise SystemExit(main())
