"""The one metric dictionary of a classifier's (n, K) probabilities: what every stage, the sweep and the report record.

Reads and writes nothing.
Example: python -c "from core.metrics import scores; print(scores([0, 1, 2], [[.8, .1, .1], [.2, .7, .1], [.3, .3, .4]]))"

K = 2 is the binary case inside the same contract: a 1-D P(class 1) (a sigmoid head's output) is taken as
(1 - p, p), and its dictionary holds exactly the keys and numbers it always did. K > 2 adds per-class accuracy,
the most-confused pairs and, where K > 5, top-5 accuracy.
"""
import numpy as np

THRESHOLD = 0.5  # K = 2: P(class 1) >= 0.5 is class 1 (a tie goes to class 1, as it always did; argmax would say 0)
EPS = 1e-7  # log loss clips P to [EPS, 1 - EPS], as sklearn did before it stopped clipping
BINS = 10  # equal-width bins of P(predicted class): the usual reliability diagram; ~50 val rows a bin at 5,000
TOP_K = 5  # top-5 accuracy, recorded where K > TOP_K (with fewer classes it is 1 or close to it, and says nothing)
CONFUSED_PAIRS = 5  # most-confused (true, predicted) pairs recorded for K > 2


def probabilities(p) -> np.ndarray:
    """Any predictor's output as the (n, K) contract: a 1-D or (n, 1) P(class 1) becomes (1 - p, p); (n, K) stays."""
    p = np.asarray(p, np.float64)
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
        p = p.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    assert p.ndim == 2 and p.shape[1] >= 2, p.shape
    return p


def predicted(p) -> np.ndarray:
    """The predicted class of each row of (n, K) (or 1-D binary) probabilities."""
    p = probabilities(p)
    if p.shape[1] == 2:
        return (p[:, 1] >= THRESHOLD).astype(int)
    return np.argmax(p, axis=1)


def reliability(y, p, bins: int = BINS) -> dict:
    """Per bin of the top class's probability (max(p, 1-p) at K = 2): rows, mean confidence, accuracy (NaN where
    empty)."""
    y, p = np.asarray(y).astype(int).reshape(-1), probabilities(p)
    k = p.shape[1]
    conf = p.max(axis=1)
    correct = (predicted(p) == y).astype(np.float64)
    # The top class's probability lies in [1/K, 1]: bins over that range, the top edge included.
    edges = np.linspace(1.0 / k, 1.0, bins + 1)
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


def log_loss(y, p) -> float:
    """Mean -log P(true class), P clipped to [EPS, 1] (NaN without rows)."""
    y, p = np.asarray(y).astype(int).reshape(-1), probabilities(p)
    if not len(y):
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def macro_auc(y, p):
    """The mean over classes of the one-vs-rest AUC of P(class); None where y holds one class."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y).astype(int).reshape(-1), probabilities(p)
    present = [c for c in range(p.shape[1]) if 0 < np.sum(y == c) < len(y)]
    if len(np.unique(y)) < 2 or not present:
        return None
    return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))


def most_confused(cm, n: int = CONFUSED_PAIRS) -> list:
    """The `n` largest off-diagonal cells of a confusion matrix: [true class, predicted class, rows], largest first."""
    cm = np.asarray(cm)
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
    return [[i, j, c] for c, i, j in sorted(off, key=lambda t: (-t[0], t[1], t[2]))[:n]]


def scores(y, p) -> dict:
    """n, accuracy, log_loss, auc (macro one-vs-rest; None when y holds one class), ece (top class) and the K x K
    confusion matrix (K = 2: [[tn, fp], [fn, tp]]); K > 2 adds per_class_accuracy and most_confused, and top5_accuracy
    where K > 5."""
    from sklearn.metrics import confusion_matrix, log_loss as sk_log_loss, roc_auc_score

    y, p = np.asarray(y).astype(int).reshape(-1), probabilities(p)
    k, pred = p.shape[1], predicted(p)
    labels = list(range(k))
    cm = confusion_matrix(y, pred, labels=labels)
    out = {"n": int(len(y)), "accuracy": float(np.mean(pred == y)) if len(y) else float("nan")}
    if k == 2:  # the binary dictionary, number for number as before the (n, K) contract
        p1, one_class = p[:, 1], len(np.unique(y)) < 2
        out.update({
            "log_loss": float(sk_log_loss(y, np.clip(p1, EPS, 1 - EPS), labels=[0, 1])) if len(y) else float("nan"),
            "auc": None if one_class else float(roc_auc_score(y, p1)),
            "ece": expected_calibration_error(y, p), "confusion_matrix": cm.tolist()})
        return out
    if k > TOP_K:
        top = np.argsort(-p, axis=1, kind="stable")[:, :TOP_K]
        out["top5_accuracy"] = float(np.mean((top == y[:, None]).any(axis=1))) if len(y) else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(cm) / cm.sum(axis=1)
    out.update({"log_loss": log_loss(y, p), "auc": macro_auc(y, p), "ece": expected_calibration_error(y, p),
                "confusion_matrix": cm.tolist(),
                "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
                "most_confused": most_confused(cm)})
    return out


UNPREFIXED = ("confusion_matrix", "per_class_accuracy", "most_confused")  # tables, not val scalars


def val_keys(s: dict) -> dict:
    """`scores` as stage 2's metrics.json names them (val_accuracy, val_log_loss, val_auc, val_ece, confusion_matrix;
    K > 2: val_top5_accuracy, per_class_accuracy, most_confused)."""
    return {(k if k in UNPREFIXED else f"val_{k}"): v for k, v in s.items() if k != "n"}
