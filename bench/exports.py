"""`make bench`'s export section: size on disk, single-image latency and batch-32 throughput of every export format
and quantisation (export/), against model.keras (+ T, as `make predict` runs it) in the same run.

Reads the bench's cache, images and HEAD_DIR. Writes WORK/exports/ (model.keras and each export; the bench deletes
its scratch folder at the end).
Example: python -m bench --only-exports --n 64 --img-size 75   # this section alone, into artifacts/bench_exports.json

Latency: one image per call, median of LATENCY_CALLS calls after a warm-up. Throughput: a batch of BATCH images per
call, median of `repeats` calls. Each runtime uses every core it sees (onnxruntime, LiteRT with num_threads =
cores), as deployed. Every export has passed its proof (export/proof.py) before it is timed; its figures are copied.
"""
import os
import time

import numpy as np

EXPORTS = (("savedmodel", "none"), ("onnx", "none"), ("litert", "none"), ("litert", "float16"), ("litert", "int8"),
           ("litert", "int8-full"))
BATCH = 32
LATENCY_CALLS = 20


def parse_exports(text: str) -> tuple:
    """'all' -> EXPORTS; else a comma list of FORMAT or FORMAT:QUANTIZE, e.g. 'onnx,litert:int8'."""
    from core import WorkflowError

    if text == "all":
        return EXPORTS
    out = tuple((item.partition(":")[0], item.partition(":")[2] or "none") for item in text.split(",") if item)
    bad = [f"{f}:{q}" for f, q in out if (f, q) not in EXPORTS]
    if bad or not out:
        raise WorkflowError(f"--exports {text!r}: {', '.join(bad) or 'empty'} not among "
                            f"{', '.join(f'{f}:{q}' for f, q in EXPORTS)} (or 'all')")
    return out


def build_model(cache_path, head_dir, data, path) -> str:
    """model.keras (float32, T = the head's) from the cache's backbone and the head, recorded as `make finetune`
    does, so that export/ finds its val images (DATA, FEATURES) through the record."""
    from cache import open_cache
    from classify.record import read_metrics
    from finetune import model as fm
    from finetune.record import save_model, to_precision

    t = read_metrics(head_dir)["head"].get("temperature", 1.0)
    with open_cache(cache_path, need_labels=True) as cache:
        model, _, _ = fm.assemble(cache, head_dir, cache.layer)
        save_model(to_precision(model, "float32"), path,
                   {"image_size": cache.config["image_size"], "class_names": cache.class_names, "precision": "float32",
                    "calibration": {"temperature": t},
                    # the backbone's record, as stage 3's config carries it (PRECISION=auto reads it)
                    "config": {"data": os.path.abspath(data), "features": os.path.abspath(cache_path),
                               **{k: v for k, v in cache.config.items()
                                  if k in ("backbone", "backbones", "backbone_entry", "backbone_args")}}})
    return path


def timings(fn, images, repeats: int) -> dict:
    """Single-image latency (ms, median) and batch-BATCH throughput (images/s, median) of `fn` on uint8 images."""
    one, batch = images[:1], np.resize(images, (BATCH,) + images.shape[1:])  # np.resize repeats rows if fewer
    fn(one), fn(batch)  # warm-up: tracing, allocation, the runtime's plan for each shape
    lat = []
    for _ in range(LATENCY_CALLS):
        t0 = time.perf_counter()
        fn(one)
        lat.append(time.perf_counter() - t0)
    thr = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn(batch)
        thr.append(BATCH / (time.perf_counter() - t0))
    return {"latency_ms": round(1000 * float(np.median(lat)), 3), "batch_img_s": round(float(np.median(thr)), 2)}


def exports_section(cache_path, head_dir, data, work, repeats: int, which=EXPORTS) -> dict:
    """{"rows": [one per model.keras and export: bytes, latency_ms, batch_img_s, proof], "image_size", ...}."""
    from export import formats, proof
    from export.run import export_model
    from finetune.infer import forward_fn
    from finetune.record import load_model, read_meta

    os.makedirs(work, exist_ok=True)
    path = build_model(cache_path, head_dir, data, os.path.join(work, "model.keras"))
    meta = read_meta(path)
    images, _ = proof.image_set(meta, None, None)
    model, meta = load_model(path, "float32")
    forward = forward_fn(model)  # make predict's traced graph; T is applied after, in numpy (as make predict does)
    rows = [{"format": "model.keras", "quantize": "none", "bytes": os.path.getsize(path),
             **timings(lambda x: forward(x), images, repeats)}]
    for fmt, quantize in which:
        rec = export_model(path, fmt, work, quantize)
        fn = formats.runner(fmt, os.path.join(work, rec["artifact"]))
        p = rec["proof"]
        rows.append({"format": fmt, "quantize": quantize, "bytes": rec["bytes"], "export_s": rec["seconds"],
                     **timings(fn, images, repeats), "max_abs_diff": p["max_abs_diff"],
                     "accuracy": p["export"]["accuracy"], "log_loss": p["export"]["log_loss"],
                     "reference": p["reference"]})
    return {"rows": rows, "image_size": int(meta["image_size"]), "val_images": int(len(images)), "batch": BATCH,
            "latency_calls": LATENCY_CALLS, "cores": os.cpu_count()}


def markdown_rows(section: dict) -> list:
    """The section as a markdown table (bench.md)."""
    lines = [f"Exports at {section['image_size']} px on {section['cores']} cores; proof on {section['val_images']} val "
             f"images (accuracy and log loss of model.keras + T: {section['rows'][1]['reference']['accuracy']:.4f}, "
             f"{section['rows'][1]['reference']['log_loss']:.4f})." if len(section["rows"]) > 1 else "", "",
             "| format | QUANTIZE | size MB | 1-image latency ms | batch-32 images/s | max abs diff | accuracy | "
             "log loss |", "|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        extra = (f"{r['max_abs_diff']:.2g} | {r['accuracy']:.4f} | {r['log_loss']:.4f}" if "max_abs_diff" in r
                 else "reference | | ")
        lines.append(f"| {r['format']} | {r['quantize']} | {r['bytes'] / 1e6:.1f} | {r['latency_ms']:.2f} | "
                     f"{r['batch_img_s']:.1f} | {extra} |")
    return lines
