"""The one metric dictionary of a binary classifier's P(class 1): what every stage, the sweep and the report record.

Reads and writes nothing. Example: python -c "from core.metrics import scores; print(scores([0, 1, 1], [0.2, 0.9, 0.4]))"
"""
import numpy as np

THRESHOLD = 0.5  # P(dog) >= 0.5 is a dog: the Kaggle task scores probabilities, the confusion matrix needs a cut
EPS = 1e-7  # log loss clips P to [EPS, 1 - EPS], as sklearn did before it stopped clipping
ECE_BINS = 10  # equal-width bins of P(class 1) for the expected calibration error


def expected_calibration_error(y, p, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of |mean P - fraction positive| weighted by the bin's share of rows."""
    y, p = np.asarray(y, np.float64).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    if not len(y):
        return 0.0
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def scores(y, p) -> dict:
    """n, accuracy, log_loss, auc (None when y holds one class), ece and the confusion matrix [[tn, fp], [fn, tp]]."""
    from sklearn.metrics import confusion_matrix, log_loss, roc_auc_score

    y, p = np.asarray(y).astype(int).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    pred = (p >= THRESHOLD).astype(int)
    one_class = len(np.unique(y)) < 2  # AUC is undefined then: recorded as null rather than made up
    return {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "log_loss": float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])) if len(y) else float("nan"),
        "auc": None if one_class else float(roc_auc_score(y, p)),
        "ece": expected_calibration_error(y, p),
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }


def val_keys(s: dict) -> dict:
    """`scores` as stage 2's metrics.json names them (val_accuracy, val_log_loss, val_auc, val_ece, confusion_matrix)."""
    return {("confusion_matrix" if k == "confusion_matrix" else f"val_{k}"): v for k, v in s.items() if k != "n"}
