"""The fine-tuned model's (n, K) probabilities for image files: decode, forward, test-time flips, the temperature.

Reads MODEL (model.keras with its workflow.json record: image size, class names, `calibration`) and the images.
Writes nothing (finetune/predictions.py writes the files). Example:
    python -c "from finetune.probabilities import predict_path; print(predict_path('data/test', 'artifacts/finetune/model.keras').probs[:3])"

Prediction has one shape: finetune/infer.py runs a model (any batch -> (n, K)); this module turns a file or folder
into (n, K) probabilities finished for log loss; finetune/predictions.py writes them as PREDICTIONS or SUBMISSION;
finetune/predict.py and finetune/submission.py only parse arguments (finetune/cli.py).

Order: average over the image and its mirror first, then calibrate. T was fitted on single-image val predictions,
and a flip average is a little less confident than either view, so this order can leave it slightly under-confident;
it is the order that keeps each step equal to what it claims (the test checks the TTA mean on raw probabilities).
"""
import os
import time
from dataclasses import dataclass

import numpy as np

from classify.calibrate import apply_temperature
from core import WorkflowError
from extract import images

from .infer import forward_fn, predict_images
from .record import load_model

TTA_MODES = ("none", "flip")
DEFAULT_BATCH = 32  # images per forward pass when predicting: what a 2-core CPU or any GPU handles at 150 px


@dataclass
class Predicted:
    """What predicting a file or folder gives: (n, K) probabilities (a NaN row per undecodable file), in `paths`
    order under `root`, with the files that did not decode, the seconds, the temperature used and the model's
    record (+ `precision_used`)."""

    root: str
    paths: list
    probs: np.ndarray
    broken: list
    seconds: float
    temperature: float
    meta: dict

    @property
    def class_names(self) -> list:
        return list(self.meta["class_names"])


def list_inputs(path):
    """(root, relative image paths, sorted) for one image file or every image under a folder."""
    path = str(path)
    if os.path.isfile(path):
        if not images.is_image_name(os.path.basename(path)):
            raise WorkflowError(f"INPUT={path}: not an image file name (expected one of "
                                f"{', '.join(sorted(images.IMAGE_EXTS))})")
        return os.path.dirname(path) or ".", [os.path.basename(path)]
    if not os.path.isdir(path):
        raise WorkflowError(f"INPUT={path}: no such file or folder; pass an image or a folder of images")
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.relpath(os.path.join(dirpath, n), path) for n in filenames if images.is_image_name(n)]
    if not found:
        raise WorkflowError(f"INPUT={path}: no images found (looked for {', '.join(sorted(images.IMAGE_EXTS))})")
    return path, sorted(found)


def tta_forward(forward, tta: str = "none"):
    """`forward` (a batch of images -> (n, K)) or, with tta='flip', the mean over the batch and its mirror."""
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
    """((n, K) probabilities with the model's temperature applied when `calibrate`, NaN rows kept; the T used)."""
    t = temperature_of(meta, model_path) if calibrate else 1.0
    probs = np.asarray(probs, np.float64)
    if t == 1.0:
        return probs, t
    out = probs.copy()
    ok = ~np.isnan(probs).any(axis=1)
    out[ok] = apply_temperature(probs[ok], t)
    return out, t


def predict_files(model, image_size: int, root, paths, batch: int = DEFAULT_BATCH, desc="predict", tta="none"):
    """((n, K) probabilities per path, NaN rows where broken; [(path, reason)] of broken files; seconds), with a
    tqdm bar. tta='flip': the mean over each image and its horizontal mirror."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        def on_batch(n, bad):
            for path, reason in bad:
                tqdm.write(f"skipped {os.path.join(root, path)}: {reason}")
            bar.update(n)

        probs, broken = predict_images(model, root, paths, image_size, batch, tta_forward(forward_fn(model), tta),
                                       on_batch)
    return probs, broken, time.perf_counter() - t0


def predict_path(path, model_path, batch: int = DEFAULT_BATCH, tta="none", calibrate=True, precision="",
                 desc="predict") -> Predicted:
    """The model's probabilities for an image or every image under a folder, finished for log loss (TTA, then T),
    computed in PRECISION=`precision` (empty: the model's own)."""
    root, paths = list_inputs(path)
    model, meta = load_model(model_path, precision)
    probs, broken, dt = predict_files(model, meta["image_size"], root, paths, batch, desc=desc, tta=tta)
    probs, t = finish(probs, meta, model_path, calibrate)
    return Predicted(root, paths, probs, broken, dt, t, meta)
