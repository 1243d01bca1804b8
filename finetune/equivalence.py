"""Proofs that the network stage 3 trains is the one stages 1 and 2 computed, to RELOAD_TOL, before and after training.

Reads the cache's val rows (features) and DATA's val images. Writes nothing; raises EquivalenceError with the fix.
Example: python -m finetune ...   # prints "equivalence: ... max |P(full) - P(head on cache)| = ..."
"""
import os
import time

import numpy as np

from cache import SPLIT_VAL
from core import WorkflowError
from core.metrics import predicted, scores

from .infer import predict_images, predict_rows

RELOAD_TOL = 1e-3  # max |P(full model) - P(head on cached features)| over all K outputs; float32 gives ~1e-6


class EquivalenceError(WorkflowError):
    """The rebuilt full network does not reproduce the head's predictions on the cached features."""


def check_recorded_scores(p_head, y, record, head_dir):
    """head.keras must score on the cached val features what stage 2 recorded for it (metrics.json): else the file
    was replaced, e.g. by a head trained on another cache, and the record that vouches for it describes another head.

    Both sides of the equivalence check use head.keras, so this is the part that ties it to stage 2's run."""
    if record is None or record.val_log_loss is None:
        return
    s, n = scores(y, p_head), max(len(y), 1)
    if abs(s["log_loss"] - record.val_log_loss) > RELOAD_TOL * max(1.0, record.val_log_loss) or \
            abs(s["accuracy"] - record.val_accuracy) > 1.0 / n:
        raise EquivalenceError(
            f"equivalence check failed, not fine-tuning: {os.path.join(head_dir, 'head.keras')} scores val log loss "
            f"{s['log_loss']:.4f} and accuracy {s['accuracy']:.4f} on the cached features, but stage 2 recorded "
            f"{record.val_log_loss:.4f} and {record.val_accuracy:.4f} for the head it trained: the file is "
            f"not that head (copied from another run?); retrain it with `make head HEAD_DIR={head_dir}`")


def full_model(model, head_src, cache, layer, data_root, batch: int, record=None, head_dir=""):
    """Full model on DATA's val images vs the stage-2 head on the cached features, every one of the K probabilities:
    (report, the full model's (n, K) probabilities).

    Raises EquivalenceError when they differ by more than RELOAD_TOL or disagree on val accuracy, or when the head
    does not reproduce the val scores of stage 2's `record` (check_recorded_scores).
    """
    rows = cache.rows(SPLIT_VAL)
    paths, y = [cache.paths[i] for i in rows], cache.labels[rows]
    t0 = time.perf_counter()
    p_head = predict_rows(head_src, cache, layer, rows, batch)  # streamed: val features can be GBs at 150 px
    check_recorded_scores(p_head, y, record, head_dir)
    p_full, broken = predict_images(model, data_root, paths, cache.config["image_size"], batch)
    if broken:
        raise EquivalenceError(f"DATA={data_root}: {len(broken)} val image(s) cached in stage 1 no longer decode, "
                               f"e.g. {broken[0][0]} ({broken[0][1]}); restore them or rerun `make features`")
    dt = time.perf_counter() - t0
    diff = float(np.max(np.abs(p_full - p_head))) if len(rows) else 0.0
    acc_head, acc_full = (float(np.mean(predicted(p) == y)) for p in (p_head, p_full))
    out = {"n_val": len(rows), "max_abs_diff": diff, "tolerance": RELOAD_TOL, "val_accuracy_head": acc_head,
           "val_accuracy_full": acc_full, "seconds": dt, "images_per_second": len(rows) / dt if dt else 0.0}
    if not diff <= RELOAD_TOL or acc_head != acc_full:  # `not <=` also catches NaN
        raise EquivalenceError(
            f"equivalence check failed, not fine-tuning: the rebuilt backbone + head on the {len(rows)} val images "
            f"differs "
            f"from the head on the cached features by up to {diff:.3g} (tolerance {RELOAD_TOL}), val accuracy "
            f"{acc_full:.4f} vs {acc_head:.4f}. The backbone, preprocessing, image decode or head weights do not "
            f"match the cache; rebuild both with the same settings: `make features FEATURES={cache.path}` "
            f"then `make head FEATURES={cache.path}`")
    print(f"equivalence: {len(rows)} val images, max |P(full) - P(head on cache)| = {diff:.2e} <= {RELOAD_TOL}, val "
          f"accuracy {acc_full:.4f} both ({dt:.1f}s, {out['images_per_second']:.1f} images/s)")
    return out, p_full


def cached_block(cached, head_src, cache, unfreeze_from, head_layer, batch: int, record=None, head_dir=""):
    """(report, P before fine-tuning): the cached model on val `unfreeze_from` features vs the stage-2 head on val
    `head_layer` features; raises EquivalenceError beyond RELOAD_TOL (the cache's layers and the rebuilt backbone
    disagree)."""
    rows = cache.rows(SPLIT_VAL)
    t0 = time.perf_counter()
    p_cached = predict_rows(cached, cache, unfreeze_from, rows, batch)
    p_head = predict_rows(head_src, cache, head_layer, rows, batch)
    check_recorded_scores(p_head, cache.labels[rows], record, head_dir)
    diff = float(np.max(np.abs(p_cached - p_head))) if len(rows) else 0.0
    if not diff <= RELOAD_TOL:  # `not <=` also catches NaN
        raise EquivalenceError(
            f"equivalence check failed, not fine-tuning: the {unfreeze_from}->{head_layer} block + head on the cached "
            f"{unfreeze_from} features of {len(rows)} val rows differs from the head on their cached {head_layer} "
            f"features by up to {diff:.3g} (tolerance {RELOAD_TOL}); rebuild both with the same settings: "
            f"`make features LAYERS={unfreeze_from},{head_layer} FEATURES={cache.path}` then `make head`")
    dt = time.perf_counter() - t0
    print(f"equivalence: {len(rows)} val rows, max |P(block + head on {unfreeze_from}) - P(head on "
          f"{head_layer})| = {diff:.2e} <= {RELOAD_TOL} ({dt:.1f}s)")
    return {"n_val": len(rows), "max_abs_diff": diff, "tolerance": RELOAD_TOL, "seconds": dt}, p_head


def exported(model, cached, cache, unfreeze_from, data_root, batch: int, n: int) -> dict:
    """The full model on the first `n` val images vs the cached model on their cached features, before saving."""
    rows = cache.rows(SPLIT_VAL)[:n]
    p_cached = predict_rows(cached, cache, unfreeze_from, rows, batch)
    # An image that no longer decodes gives NaN: it fails the check below
    p_full, _ = predict_images(model, data_root, [cache.paths[i] for i in rows], cache.config["image_size"], batch)
    diff = float(np.max(np.abs(p_full - p_cached))) if len(rows) else 0.0
    if not diff <= RELOAD_TOL:
        raise EquivalenceError(
            f"export check failed, model.keras not written: the full model on {len(rows)} val images of "
            f"DATA={data_root} differs from the cached model on their features by up to {diff:.3g} (tolerance "
            f"{RELOAD_TOL}); are these the images the cache was built from? Rebuild with `make features "
            f"FEATURES={cache.path}`")
    print(f"export: full model on {len(rows)} val images vs the cached model on their features, max |diff| = "
          f"{diff:.2e} <= {RELOAD_TOL}")
    return {"n_images": len(rows), "max_abs_diff": diff, "tolerance": RELOAD_TOL}
