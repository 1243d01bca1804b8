"""`make export`: a self-contained SavedModel, LiteRT or ONNX export of MODEL that proves itself (export/run.py).

Reads MODEL, FEATURES and DATA (default: those the model's record names); writes EXPORT_DIR/<export> and its .json.
Example: python -m export --model artifacts/finetune/model.keras --format litert --quantize int8 --export-dir artifacts/export
"""
import argparse

from core import cli

from . import formats
from .run import export_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="artifacts/finetune/model.keras", help="model.keras from make finetune (MODEL)")
    p.add_argument("--format", default="savedmodel", choices=formats.FORMATS, help="what to write (FORMAT)")
    p.add_argument("--export-dir", default="artifacts/export", help="output folder (EXPORT_DIR)")
    p.add_argument("--quantize", default="none", choices=formats.QUANTIZE,
                   help="LiteRT only: float16 weights, int8 dynamic range, or int8-full (activations too, calibrated "
                        "on train images) (QUANTIZE)")
    p.add_argument("--data", default=None, help="image folder of the proof's val images; default: the model's record")
    p.add_argument("--features", default=None, help="the cache naming the val split; default: the model's record")
    return p.parse_args(argv)


@cli
def main(argv=None):
    a = parse_args(argv)
    export_model(a.model, a.format, a.export_dir, a.quantize, a.data, a.features)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
