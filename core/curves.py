"""Training curves: train and val loss, accuracy (and AUC where logged) per epoch, with the kept epoch marked.

Writes one PNG, atomically. Example: python -c "from core.curves import save_curves; save_curves('c.png', [{'epoch': 0, 'loss': 1, 'val_loss': 1}], 't')"
"""
import numpy as np

from .files import replacing

KEYS = ("loss", "accuracy", "auc")


def save_curves(path, rows, title=""):
    """One panel per metric of KEYS present in `rows` (one dict per epoch, as core.runs reads history.csv)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in KEYS if rows and (k in rows[0] or f"val_{k}" in rows[0])]
    epochs = [int(r["epoch"]) + 1 for r in rows]
    best = epochs[int(np.argmin([r["val_loss"] for r in rows]))] if rows and "val_loss" in rows[0] else None
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [r[prefix + key] for r in rows], style, label=f"{prefix or 'train '}{key}".replace("_", " "))
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", label=f"kept: epoch {best}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
