"""Scores of one model's val predictions as the report shows them: core.metrics' dictionary, its reliability bins,
and the log loss of each row.

Reads and writes nothing. Example: python -c "from report.scores import score; print(score([0, 1, 1], [0.2, 0.9, 0.4]))"
"""
import numpy as np

from core.metrics import EPS, predicted, probabilities, reliability, scores, val_keys


def score(y, p) -> dict:
    """val_accuracy, val_log_loss, val_auc, val_ece, confusion_matrix (core.metrics), the reliability bins, n_val."""
    return {**val_keys(scores(y, p)), "reliability": reliability(y, p), "n_val": int(len(y))}


def losses(y, p) -> np.ndarray:
    """Per-row log loss -log P(true class) of (n, K) probabilities `p` (or a 1-D P(class 1)), clipped as stage 2's
    log loss is."""
    y, p = np.asarray(y).astype(int), np.clip(probabilities(p), EPS, 1 - EPS)
    return -np.log(p[np.arange(len(y)), y])


def per_class(y, p, class_names) -> list:
    """[(class, val rows, accuracy, mean P(class) on its rows)] for every class: where a model fails, by class."""
    y, p = np.asarray(y).astype(int), probabilities(p)
    pred, out = predicted(p), []
    for k, name in enumerate(class_names):
        mine = y == k
        n = int(mine.sum())
        out.append((name, n, float(np.mean(pred[mine] == k)) if n else None, float(p[mine, k].mean()) if n else None))
    return out
