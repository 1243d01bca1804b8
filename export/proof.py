"""The proof every export gives: its probabilities on the val images against model.keras plus the temperature.

Reads FEATURES (the val and train rows, through `cache/`) and DATA (their image files, through the one image
pipeline, at the model's image size). Writes nothing.
Example: python -c "from export.proof import BOUNDS; print(BOUNDS)"

Both sides get the same uint8 pixels, decoded once: the comparison measures the export, not two decoders. The
reference is what `make predict` computes (finetune/probabilities.py applies T to the float32 model's P).
"""
import os

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from classify.calibrate import EPS
from core import WorkflowError

# The largest max |export - reference| a proof accepts, per (format, QUANTIZE). float32 exports compute the same
# graph with other kernels: 1e-4 is the issue's bound, far above float32's round-off through InceptionV3 (~1e-6).
# Quantised LiteRT is lossy by design: the bounds below are ceilings that keep a broken conversion (wrong scale,
# swapped classes) from passing, while the measured figure, accuracy and log loss are recorded with the export.
FLOAT32_BOUND = 1e-4
BOUNDS = {("savedmodel", "none"): FLOAT32_BOUND, ("onnx", "none"): FLOAT32_BOUND,
          ("litert", "none"): FLOAT32_BOUND, ("litert", "float16"): 0.02, ("litert", "int8"): 0.15,
          ("litert", "int8-full"): 0.3}
BATCH = 32


def image_set(meta: dict, data, features, split=SPLIT_VAL, limit=None):
    """(uint8 images (n, S, S, 3), labels (n,)) of the cache's `split` rows that decode, at the model's size."""
    from extract.pipeline import image_batches

    data = data or meta.get("config", {}).get("data")
    features = features or meta.get("config", {}).get("features")
    if not features:
        raise WorkflowError("the model's record names no FEATURES; pass FEATURES=<the cache it was trained from>")
    if not data:
        raise WorkflowError("the model's record names no DATA (FROM_CACHE=1 models); pass DATA=<the image folder "
                            "the cache was built from>")
    if not os.path.isdir(data):
        raise WorkflowError(f"DATA={data}: no such folder; pass DATA=<the image folder FEATURES was built from>")
    size = int(meta["image_size"])
    with open_cache(features, need_labels=True, fix="make features") as cache:
        if list(cache.class_names) != list(meta["class_names"]):
            raise WorkflowError(f"FEATURES={features}: classes {cache.class_names}, the model's are "
                                f"{meta['class_names']}; pass the cache the model was trained from")
        rows = cache.rows(split)[:limit]
        paths, labels = [cache.paths[i] for i in rows], cache.labels[rows]
    xs, ys = [], []
    for idx, x, ok, _ in image_batches(data, paths, size, BATCH):
        ok = ok.numpy()
        xs.append(x.numpy()[ok])
        ys.append(labels[idx.numpy()[ok]])
    if not xs or not sum(len(x) for x in xs):
        raise WorkflowError(f"DATA={data}: none of the {len(paths)} images (split {split}) of FEATURES={features} decode; "
                            f"pass the folder the cache was built from")
    return np.concatenate(xs), np.concatenate(ys)


def reference(model, meta: dict, images, model_path="", kind=None) -> np.ndarray:
    """(n, K) float64: model.keras (float32) on `images`, then the record's temperature. `kind` as graph.to_logits
    returned: the model outputs logits z and this is sigmoid(z / T) or softmax(z / T) in float64; None: it outputs
    probabilities, calibrated as `make predict` does (classify.calibrate.apply_temperature)."""
    from classify.calibrate import apply_temperature

    from finetune.probabilities import temperature_of

    t = temperature_of(meta, model_path)
    out = np.concatenate([np.asarray(model(images[i:i + BATCH].astype(np.float32), training=False), np.float64)
                          for i in range(0, len(images), BATCH)])
    if kind == "sigmoid":
        q = 1.0 / (1.0 + np.exp(-out[:, 0] / t))
        return np.stack([1.0 - q, q], axis=1)
    if kind is None and out.shape[-1] == 1:
        p = apply_temperature(out[:, 0], t)
        return np.stack([1.0 - p, p], axis=1)
    z = (out if kind == "softmax" else np.log(np.clip(out, EPS, 1.0))) / t
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def run_batches(fn, images, batch=BATCH) -> np.ndarray:
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def quality(probs, labels) -> dict:
    """Accuracy and log loss of (n, K) probabilities."""
    p = np.clip(probs[np.arange(len(labels)), labels.astype(int)], EPS, 1.0)
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == labels)), "log_loss": float(-np.mean(np.log(p)))}


def prove(fmt: str, quantize: str, probs, ref, labels) -> dict:
    """The proof's figures (max and mean |diff|, the bound, accuracy and log loss of both) and whether it holds."""
    diff = np.abs(np.asarray(probs, np.float64) - ref)
    bound = BOUNDS[(fmt, quantize)]
    ok = probs.shape == ref.shape and bool(np.isfinite(probs).all()) and float(diff.max()) <= bound
    return {"n": int(len(labels)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "bound": bound, "passed": bool(ok), "export": quality(probs, labels),
            "reference": quality(ref, labels)}


def describe(fmt: str, quantize: str, proof: dict) -> str:
    e, r = proof["export"], proof["reference"]
    return (f"{fmt} QUANTIZE={quantize} on {proof['n']} val images: max |diff| {proof['max_abs_diff']:.3g} "
            f"(bound {proof['bound']:g}), mean {proof['mean_abs_diff']:.3g}; accuracy {e['accuracy']:.4f} vs "
            f"{r['accuracy']:.4f}, log loss {e['log_loss']:.4f} vs {r['log_loss']:.4f} (model.keras + T)")
