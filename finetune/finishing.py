"""Finishing P(dog) for Kaggle's log loss at prediction time: test-time flip averaging and the recorded temperature.

Reads the model's workflow.json record (its `calibration`, written by `make finetune`); writes nothing.
Example: python -m finetune.predict --input data/test --model artifacts/finetune/model.keras --tta flip --calibrate 1

Order: average over the image and its mirror first, then calibrate. T was fitted on single-image val predictions,
and a flip average is a little less confident than either view, so this order can leave it slightly under-confident;
it is the order that keeps each step equal to what it claims (the test checks the TTA mean on raw probabilities).
"""
import numpy as np

from core import WorkflowError
from classify.calibrate import apply_temperature
from core.precision import CHOICES

TTA_MODES = ("none", "flip")
DEFAULT_BATCH = 32  # images per forward pass when predicting: what a 2-core CPU or any GPU handles at 150 px


def tta_forward(forward, tta: str = "none"):
    """`forward` (a batch of images -> P(class 1)) or, with tta='flip', the mean over the batch and its mirror."""
    if tta not in TTA_MODES:
        raise WorkflowError(f"TTA={tta}: choose one of {', '.join(TTA_MODES)}")
    if tta == "none":
        return forward
    import tensorflow as tf

    # Horizontal only: a dog seen in a mirror is still a dog, and Kaggle's photos have no handedness; a vertical flip
    # would show upside-down animals the backbone never learned.
    return lambda x: 0.5 * (forward(x) + forward(tf.reverse(x, axis=[2])))


def temperature_of(meta: dict, model_path) -> float:
    """T recorded by `make finetune` in the model's record; models written before calibration existed give 1."""
    cal = meta.get("calibration")
    if cal is None:
        print(f"note: {model_path} records no temperature (written before calibration existed); probabilities "
              f"are left raw. Rerun `make finetune` to fit one")
        return 1.0
    return float(cal["temperature"])


def finish(probs, meta: dict, model_path, calibrate: bool):
    """(P(class 1) with the model's temperature applied when `calibrate`, NaNs kept; the T used)."""
    t = temperature_of(meta, model_path) if calibrate else 1.0
    probs = np.asarray(probs, np.float64)
    if t == 1.0:
        return probs, t
    out = probs.copy()
    ok = ~np.isnan(probs)
    out[ok] = apply_temperature(probs[ok], t)
    return out, t


def parser(prog: str, description: str, source: str, source_default: str, source_help: str, out_default: str,
           out_var: str):
    """The parser both prediction commands start from: what to predict, MODEL, the output, batch, CALIBRATE, TTA."""
    import argparse

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
