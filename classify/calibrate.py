"""Temperature scaling for Kaggle's log loss: one number T fitted on val P(dog), applied as sigmoid(logit(p) / T).

Reads and writes nothing (stage 2 and both stage-3 paths record its result; predict and submission apply it).
Example: python -c "from classify.calibrate import fit_temperature; print(fit_temperature([0, 1, 1, 0], [0.1, 0.99, 0.6, 0.7]))"

Why one number: a head trained to the lowest val loss is still over- or under-confident by a roughly constant factor
in logit space (Guo et al. 2017, "On Calibration of Modern Neural Networks"); dividing the logit by T fixes that
without moving any prediction across 0.5, so accuracy and AUC are unchanged and only log loss moves.
"""
import numpy as np

EPS = 1e-7  # the clip binary_metrics and Keras apply before a log: keeps logit(0) and logit(1) finite
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: far beyond any head seen, and bounded so the search cannot run off


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T); T = 1 gives back `p` (up to the EPS clip)."""
    z = logit(p) / float(temperature)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow for large |z|


def log_loss(y, p) -> float:
    y, p = np.asarray(y, np.float64).reshape(-1), np.clip(np.asarray(p, np.float64).reshape(-1), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if len(y) else float("nan")


def fit_temperature(y, p) -> dict:
    """{"temperature", "val_log_loss_before", "val_log_loss_after", "n"}: T minimising val log loss of `p`.

    The search runs on log T (bounded, scipy's minimize_scalar); T = 1 is kept whenever it is no worse, so
    calibrating never raises the val log loss it is fitted on.
    """
    from scipy.optimize import minimize_scalar

    y, p = np.asarray(y, np.float64).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    before = log_loss(y, p)
    t, after = 1.0, before
    if len(y) and len(np.unique(y)) == 2:
        res = minimize_scalar(lambda s: log_loss(y, apply_temperature(p, np.exp(s))), bounds=LOG_T_BOUNDS,
                              method="bounded")
        if res.fun < before:
            t, after = float(np.exp(res.x)), float(res.fun)
    return {"temperature": t, "val_log_loss_before": before, "val_log_loss_after": after, "n": int(len(y)),
            "method": "temperature scaling: p' = sigmoid(logit(p) / T), T fitted on val P(dog) by log loss"}


def describe(cal: dict) -> str:
    """One log line: T and the val log loss it moved."""
    return (f"calibration: T={cal['temperature']:.3f}, val log loss {cal['val_log_loss_before']:.4f} -> "
            f"{cal['val_log_loss_after']:.4f} on {cal['n']} val rows")
