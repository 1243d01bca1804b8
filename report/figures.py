"""The report's figures (confusion matrices, reliability diagram), as inline PNG data URIs.

Reads nothing but the PNG files it is asked to inline (stage 2's and stage 3's curves.png). Writes nothing.
Example: python -c "from report.figures import confusion; print(confusion([[5, 1], [0, 6]], 'head', 'ab')[:40])"
"""
import base64
import io
import os

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def data_uri(png: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


def fig_uri(fig) -> str:
    """The figure as a PNG data URI (no metadata: the page holds no URL at all, not even matplotlib's)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    _plt().close(fig)
    return data_uri(buf.getvalue())


def file_uri(path):
    """An existing PNG file inlined, or None when it is not there."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return data_uri(f.read())


ANNOTATE_MAX = 12  # counts are written in the cells up to 12 x 12; beyond, the colour alone (and metrics.json)


def confusion(cm, title: str, class_names) -> str:
    """A K x K confusion matrix (rows true, columns predicted) as a heat map; counts in the cells up to ANNOTATE_MAX
    classes, and a figure that grows with K so that 37 class names stay readable."""
    plt = _plt()
    cm = np.asarray(cm)
    k = len(cm)
    side = 3.0 if k == 2 else min(14.0, 2.0 + 0.3 * k)
    fig, ax = plt.subplots(figsize=(side, side * 0.93))
    # Row-normalised colour: a class with few val rows shows its errors as clearly as a large one
    with np.errstate(invalid="ignore", divide="ignore"):
        shade = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    ax.imshow(cm if k == 2 else shade, cmap="Blues")
    if k <= ANNOTATE_MAX:
        top = (cm if k == 2 else shade).max()
        for (r, c), v in np.ndenumerate(cm):
            hi = (v if k == 2 else shade[r, c]) > top / 2
            ax.text(c, r, str(v), ha="center", va="center", color="white" if hi else "black",
                    fontsize=10 if k <= 5 else 7)
    small = 9 if k <= 10 else 8 if k <= 40 else 6  # 8 pt names fit 37 rows of the 14-inch figure
    if k == 2:
        ax.set_xticks([0, 1], [f"pred {n}" for n in class_names])
        ax.set_yticks([0, 1], [f"true {n}" for n in class_names])
    else:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=small)
        ax.set_yticks(range(k), class_names, fontsize=small)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig_uri(fig)


def reliability(curves: dict) -> str:
    """Accuracy against mean confidence per bin, one line per model ({name: report.scores.reliability()})."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    lo = min([0.5] + [float(r["edges"][0]) for r in curves.values()])  # 1/K: the lowest top-class probability
    ax.plot([lo, 1], [lo, 1], ":", color="grey", label="perfectly calibrated")
    for name, r in curves.items():
        conf, acc, n = (np.asarray(r[k], np.float64) for k in ("confidence", "accuracy", "count"))
        keep = n > 0
        ax.plot(conf[keep], acc[keep], "o-", label=f"{name} ({int(n.sum())} val rows)")
    ax.set_xlabel("mean confidence in the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(lo - 0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)
