"""The one metric dictionary of a binary classifier's P(class 1): what every stage, the sweep and the report record.

Reads and writes nothing. Example: python -c "from core.metrics import scores; print(scores([0, 1, 1], [0.2, 0.9, 0.4]))"
"""
import numpy as np

THRESHOLD = 0.5  # P(dog) >= 0.5 is a dog: the Kaggle task scores probabilities, the confusion matrix needs a cut
EPS = 1e-7  # log loss clips P to [EPS, 1 - EPS], as sklearn did before it stopped clipping
BINS = 10  # equal-width bins of P(predicted class): the usual reliability diagram; ~50 val rows a bin at 5,000


def reliability(y, p, bins: int = BINS) -> dict:
    """Per bin of confidence max(p, 1-p): rows, mean confidence, accuracy (NaN where empty)."""
    y, p = np.asarray(y).astype(int).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= THRESHOLD).astype(int) == y).astype(np.float64)
    # Confidence of a binary prediction lies in [0.5, 1]: bins over that range, the top edge included.
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, correct, bins) / count
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": mean_conf.tolist(),
            "accuracy": acc.tolist()}


def expected_calibration_error(y, p, bins: int = BINS) -> float:
    """Sum over confidence bins of (rows in bin / rows) x |accuracy - mean confidence| (NaN without rows)."""
    r = reliability(y, p, bins)
    count = np.asarray(r["count"], np.float64)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.nan_to_num(np.asarray(r["accuracy"]) - np.asarray(r["confidence"])))
    return float((count / count.sum() * gap).sum())


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
