"""What stage 2 reports: val metrics shared by the head and the baseline, the curves PNG, the side-by-side table.

Reads nothing; writes whatever path it is given, always through a temporary file renamed into place.
Example: python -c "from classify.report import binary_metrics; print(binary_metrics([0, 1, 1], [0.2, 0.9, 0.4]))"
"""
import contextlib
import json
import os

import numpy as np

THRESHOLD = 0.5  # P(dog) >= 0.5 is a dog: the Kaggle task scores probabilities, the confusion matrix needs a cut


def partial_name(path) -> str:
    """`head.keras` -> `head.partial.keras`: the suffix stays last, since Keras and matplotlib check it."""
    folder, name = os.path.split(str(path))
    stem, _, ext = name.partition(".")
    return os.path.join(folder, f"{stem}.partial.{ext}" if ext else f"{stem}.partial")


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path to write; rename it onto `path` only if the block finishes (write, then commit)."""
    tmp = partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def binary_metrics(y, p) -> dict:
    """val_accuracy, val_log_loss, val_auc and the confusion matrix [[tn, fp], [fn, tp]] of P(class 1) `p`."""
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score

    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64).reshape(-1)
    pred = (p >= THRESHOLD).astype(int)
    one_class = len(np.unique(y)) < 2  # AUC is undefined then: reported as null rather than made up
    return {
        "val_accuracy": float(accuracy_score(y, pred)),
        "val_log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "val_auc": None if one_class else float(roc_auc_score(y, p)),
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }


def save_curves(path, history, title=""):
    """Loss and accuracy against epochs (train and val), with the kept (lowest val loss) epoch marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] + 1 for r in history]
    best = epochs[int(np.argmin([r["val_loss"] for r in history]))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[key] for r in history], "o-", label=f"train {key}")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label=f"val {key}")
        ax.axvline(best, color="grey", linestyle=":", label=f"kept: epoch {best}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def side_by_side(head: dict, baseline: dict) -> str:
    """A short text table of the head against the baseline."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec) if spec else str(v)

    rows = [("val accuracy", "val_accuracy", ".4f"), ("val log loss", "val_log_loss", ".4g"),
            ("val AUC", "val_auc", ".4f"), ("epochs", "epochs", "d"), ("seconds", "seconds", ".1f"),
            ("examples/s", "examples_per_s", ",.0f")]
    rows.append(("confusion", "confusion_matrix", ""))
    lines = [f"{'':<14}{'head':>20}{'baseline':>20}"]
    lines += [f"{label:<14}{fmt(head.get(k), s):>20}{fmt(baseline.get(k), s):>20}" for label, k, s in rows]
    return "\n".join(lines)
