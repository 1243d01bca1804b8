"""The command line both prediction commands take (`python -m finetune.predict`, `python -m finetune.submission`).

Reads and writes nothing. Example: python -m finetune.predict --help
"""
import argparse

from core.precision import CHOICES

from .probabilities import DEFAULT_BATCH, TTA_MODES


def prediction_parser(prog: str, description: str, source: str, source_default: str, source_help: str,
                      out_default: str, out_var: str):
    """What to predict, MODEL, the output, BATCH, CALIBRATE, TTA and PRECISION."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(f"--{source}", default=source_default, help=source_help)
    p.add_argument("--model", default="artifacts/finetune/model.keras", help="model from make finetune (MODEL)")
    p.add_argument("--out", default=out_default, help=f"CSV to write ({out_var})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per forward pass (BATCH)")
    p.add_argument("--calibrate", type=int, default=1, choices=[0, 1],
                   help="apply the temperature make finetune fitted; 0: raw probabilities (CALIBRATE)")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="flip: average over the image and its mirror (TTA)")
    p.add_argument("--precision", default="", choices=("",) + CHOICES,
                   help="compute precision; empty: the one the model records (PRECISION)")
    return p
