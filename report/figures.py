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


def confusion(cm, title: str, class_names) -> str:
    """A 2x2 confusion matrix [[tn, fp], [fn, tp]] with counts in the cells."""
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(3.0, 2.8))
    ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], [f"pred {n}" for n in class_names])
    ax.set_yticks([0, 1], [f"true {n}" for n in class_names])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig_uri(fig)


def reliability(curves: dict) -> str:
    """Accuracy against mean confidence per bin, one line per model ({name: report.scores.reliability()})."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.plot([0.5, 1], [0.5, 1], ":", color="grey", label="perfectly calibrated")
    for name, r in curves.items():
        conf, acc, n = (np.asarray(r[k], np.float64) for k in ("confidence", "accuracy", "count"))
        keep = n > 0
        ax.plot(conf[keep], acc[keep], "o-", label=f"{name} ({int(n.sum())} val rows)")
    ax.set_xlabel("mean confidence in the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.48, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)
