"""Scores of one model's val predictions as the report shows them: core.metrics' dictionary, its reliability bins,
and the log loss of each row.

Reads and writes nothing. Example: python -c "from report.scores import score; print(score([0, 1, 1], [0.2, 0.9, 0.4]))"
"""
import numpy as np

from core.metrics import EPS, reliability, scores, val_keys


def score(y, p) -> dict:
    """val_accuracy, val_log_loss, val_auc, val_ece, confusion_matrix (core.metrics), the reliability bins, n_val."""
    return {**val_keys(scores(y, p)), "reliability": reliability(y, p), "n_val": int(len(y))}


def losses(y, p) -> np.ndarray:
    """Per-row log loss of P(class 1) `p` for labels `y`, clipped as stage 2's log loss is."""
    y, p = np.asarray(y).astype(int), np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return -np.where(y == 1, np.log(p), np.log1p(-p))
