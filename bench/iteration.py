"""The bench's figures for iterating: head kinds, a sweep, TTA, the report, and what the cache's checksums cost.

Reads the bench's cache and images; writes scratch folders under the bench's work folder.
Example: python -m bench --n 600   # bench/suite.py runs these
"""
import os
import shutil
import statistics
import time

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from classify import data
from classify.head import build_head, head_config
from core.runs import RunState

from .timing import steady_epoch_s


def pooled_vs_flatten_epoch(cache_path, work, epochs: int = 4, batch: int = 64, lr: float = 1e-4, seed: int = 0,
                            mem_budget="2G") -> dict:
    """Seconds per head epoch (median, the first, tracing, epoch left out) of flatten and pooled heads trained by
    stage 2's own train_head on the same cache and batches, and their ratio (how many times faster pooled is)."""
    from classify.stage import PATIENCE
    from classify.train import train_head

    out = {}
    with open_cache(cache_path, need_labels=True) as cache:
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        in_memory = data.hold_in_memory(cache, np.concatenate([tr, va]), cache.layer, mem_budget)[0]
        _, _, scale = data.pool_and_scale(cache, cache.layer, np.concatenate([tr, va]), tr)
        for kind in ("flatten", "pooled"):
            hc = head_config(kind)  # the default UNITS and DROPOUT of `make head`
            feeds = data.Feeds(cache, cache.layer, tr, va, batch, seed, scale, in_memory)
            run = RunState(os.path.join(work, f"head-{kind}"), {"bench": kind})
            head = train_head(feeds, epochs, lr, seed, run, PATIENCE, verbose=0, head=hc)
            seconds = [r["seconds"] for r in run.rows()]
            out[f"{kind}_epoch_s"] = steady_epoch_s(seconds)
            out[f"{kind}_parameters"] = head.count_params()
            run.clear()
    out["pooled_vs_flatten_epoch"] = out["flatten_epoch_s"] / out["pooled_epoch_s"]
    out["note"] = (f"seconds per head epoch, flatten / pooled, UNITS=1024, BATCH={batch}, {len(tr)} train + "
                   f"{len(va)} val rows, {'in memory' if in_memory else 'streamed'}")
    return out


def sweep_s(cache_path, work, trials: int = 20, epochs: int = 20, seed: int = 0) -> dict:
    """Wall seconds of `make sweep TRIALS=trials` on `cache_path` in a fresh SWEEP_DIR, and how the trials ended."""
    from classify.sweep.search import run_sweep

    d = os.path.join(work, "sweep")
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    c = run_sweep(cache_path, d, trials, epochs=epochs, seed=seed)
    seconds = time.perf_counter() - t0
    shutil.rmtree(d, ignore_errors=True)
    return {"seconds": seconds, "trials": trials, "epochs": epochs, "complete": c["complete"], "pruned": c["pruned"]}


def tta_flip_cost(image_root, img_size: int, batch: int, repeats: int = 2) -> dict:
    """Seconds of prediction on every image under `image_root` with TTA=none and TTA=flip (median of `repeats`,
    after a warm-up), through predict_files on InceptionV3 (WEIGHTS=none) + a pooled head."""
    import keras

    from extract import backbone, backbones
    from finetune.probabilities import list_inputs, predict_files

    recipe = backbones.get(backbones.DEFAULT)
    trunk = backbone.build_backbone(recipe, img_size, [recipe.feature_layer], "none")
    model = keras.Model(trunk.input, build_head(tuple(trunk.output.shape[1:]), "pooled")(trunk.output))
    root, paths = list_inputs(image_root)
    out = {}
    for tta in ("none", "flip"):
        predict_files(model, img_size, root, paths[:batch], batch, desc=f"warm-up {tta}", tta=tta)
        out[f"predict_s_tta_{tta}"] = statistics.median(
            predict_files(model, img_size, root, paths, batch, desc=f"TTA={tta}", tta=tta)[2] for _ in range(repeats))
    out["tta_flip_cost"] = out["predict_s_tta_flip"] / out["predict_s_tta_none"]
    out["note"] = f"{len(paths)} images at {img_size} px, BATCH={batch}: seconds with TTA=flip / TTA=none"
    return out


def report_seconds(cache_path, head_dir, data_root, work, scale_rows: int) -> dict:
    """`make report` on the bench's cache and head (seconds, per part), and its row-dependent parts on `scale_rows`
    synthetic pooled rows (what grows with the data set: out-of-fold fits, cleanlab, the cosines)."""
    from report.build import build_report, time_report

    summary = build_report(cache_path, head_dir, "", data_root, os.path.join(work, "report"))
    return {"report_s": summary["seconds"]["total"], "parts_s": summary["seconds"],
            "rows": summary["rows"]["labelled"], "at_scale": {"rows": scale_rows, **time_report(scale_rows)}}
