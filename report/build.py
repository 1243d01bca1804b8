"""`make report`: read what the stages wrote, find the costly mistakes, doubtful labels and near-duplicates, write it.

Reads FEATURES (through cache.open_cache), HEAD_DIR (head.keras, baseline.joblib, metrics.json, curves.png),
MODEL_DIR/model.keras when given, and DATA (val images for the fine-tuned model, thumbnails). Writes into REPORT_DIR:
report.html, top_losses.csv, label_issues.csv, near_duplicates.csv, summary.json (each through a temporary file).
Example: python -m report --features artifacts/features.h5 --head-dir artifacts/head --data data/train --report-dir artifacts/report
"""
import os
import time

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from core import WorkflowError
from core.files import replacing, write_csv, write_json
from core.lock import output_lock
from core.metrics import BINS, predicted
from finetune.record import MODEL_FILE

from . import duplicates, labels, scores, sections

PREDICT_BATCH = 256  # cached feature rows per forward pass of the head: small next to a chunk window


def check_model_dir(model_dir, cache):
    """The fine-tuned model's record, after checking it was fine-tuned from `cache`."""
    from finetune.record import read_meta

    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.isfile(path):
        raise WorkflowError(f"MODEL_DIR={model_dir}: no {MODEL_FILE}; run `make finetune MODEL_DIR={model_dir}` "
                            f"first, or leave MODEL_DIR empty (MODEL_DIR=) to report without a fine-tuned model")
    meta = read_meta(path)
    fp = meta.get("config", {}).get("cache_fingerprint")
    if fp != cache.fingerprint:
        raise WorkflowError(f"{path}: fine-tuned from another cache than FEATURES={cache.path} now is "
                            f"({cache.stale_words(str(fp))}); rerun `make finetune FEATURES={cache.path} "
                            f"MODEL_DIR={model_dir}`, or leave MODEL_DIR empty")
    return path, meta


def check_data(data, cache) -> list:
    """DATA must be the cache's image set; notes (not an error) when it is the same folder, changed since."""
    from extract.verify import check_same_images as same_files

    try:
        same_files(data, cache)
    except WorkflowError:
        if os.path.abspath(data) != cache.config["data"]:
            raise
        # The folder the cache was built from, with files moved or deleted since: thumbnails show placeholders.
        return [f"DATA={data} changed since the cache was built (files moved or deleted): missing images show a "
                f"placeholder"]
    return []


def top_losses(model_name, rows, y, p, cache, n: int) -> list:
    """The `n` val rows with the highest log loss, as dicts (path, label, predicted, prob_label, prob_predicted, loss,
    model, row)."""
    loss, pred = scores.losses(y, p), predicted(p)
    order = np.argsort(-loss, kind="stable")[:n]
    names = cache.class_names
    return [{"path": cache.paths[rows[i]], "label": names[int(y[i])], "predicted": names[int(pred[i])],
             "prob_label": float(p[i, int(y[i])]), "prob_predicted": float(p[i, int(pred[i])]),
             "loss": float(loss[i]), "model": model_name, "row": int(rows[i])} for i in order]


def predictions(cache, layer, head_dir, model_dir, data, pooled_val, notes):
    """{model name: (val rows, labels, (n, K) probabilities)} for the baseline, the head and, when given, the
    fine-tuned model."""
    from classify.record import load_baseline, load_head
    from finetune.infer import predict_rows
    from finetune.probabilities import predict_files
    from finetune.record import load_model

    va = cache.rows(SPLIT_VAL)
    y = cache.labels[va]
    base = load_baseline(head_dir)
    out = {"baseline": (va, y, base.predict_proba(pooled_val)),
           "head": (va, y, predict_rows(load_head(head_dir), cache, layer, va, PREDICT_BATCH))}
    if model_dir:
        model, meta = load_model(os.path.join(model_dir, MODEL_FILE))
        p, broken, _ = predict_files(model, meta["image_size"], data, [cache.paths[i] for i in va],
                                     desc="fine-tuned on val images")
        ok = ~np.isnan(p).any(axis=1)
        if broken:
            notes.append(f"fine-tuned model: {len(broken)} val image(s) could not be read from DATA and are left out "
                         f"of its scores, e.g. {broken[0][0]}")
        out["fine-tuned"] = (va[ok], y[ok], p[ok])
    return out, base


def build_report(features, head_dir, model_dir, data, report_dir, top_n=24, seed=42, folds=labels.FOLDS,
                 dup_threshold=duplicates.THRESHOLD) -> dict:
    """Everything `make report` does, under REPORT_DIR's lock; returns summary.json's content (seconds per part)."""
    with output_lock(report_dir, "REPORT_DIR"):
        return _build(features, head_dir, model_dir, data, report_dir, top_n, seed, folds, dup_threshold)


def _build(features, head_dir, model_dir, data, report_dir, top_n, seed, folds, dup_threshold) -> dict:
    from classify import baseline
    from classify.data import pool_and_scale
    from classify.record import load_baseline, read_head_record

    t = {"start": time.perf_counter()}
    seconds = {}

    def lap(part):
        now = time.perf_counter()
        seconds[part] = round(now - t.get("last", t["start"]), 2)
        t["last"] = now

    cache = open_cache(features, need_labels=True, fix="make features")
    with cache:
        record = read_head_record(head_dir, cache)
        load_baseline(head_dir)  # HEAD_DIR must be a whole stage-2 run: a sweep's best/ has no baseline
        model_meta = check_model_dir(model_dir, cache)[1] if model_dir else None
        notes = check_data(data, cache)
        layer = record.layer
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        rows, pooled, _ = pool_and_scale(cache, layer, np.concatenate([tr, va]), tr, desc="pool")
        lap("pool")
        preds, base = predictions(cache, layer, head_dir, model_dir, data, pooled[np.searchsorted(rows, va)], notes)
        lap("predict")
        y_all = cache.labels[rows]
        c = baseline.chosen_c(base)
        oof = labels.out_of_fold(pooled, y_all, c, seed, folds, len(cache.class_names))
        issues = labels.find_issues(y_all, oof)
        lap("label_issues")
        ia, ib, cos = duplicates.pairs_above(pooled, dup_threshold)
        lap("near_duplicates")

        scored = {name: scores.score(y, p) for name, (_, y, p) in preds.items()}
        per_class = {name: scores.per_class(y, p, cache.class_names) for name, (_, y, p) in preds.items()}
        losses = {name: top_losses(name, r, y, p, cache, top_n) for name, (r, y, p) in preds.items()
                  if name != "baseline"}
        issue_rows = [{"path": cache.paths[rows[i]], "given_label": cache.class_names[int(y_all[i])],
                       "predicted_label": cache.class_names[int(np.argmax(oof[i]))],
                       "prob_given": float(oof[i, y_all[i]]), "rank": k + 1, "row": int(rows[i])}
                      for k, i in enumerate(issues)]
        split_name = {SPLIT_TRAIN: "train", SPLIT_VAL: "val"}
        dup_rows = [{"path_a": cache.paths[rows[a]], "path_b": cache.paths[rows[b]], "cosine": float(s),
                     "split_a": split_name[int(cache.split[rows[a]])], "split_b": split_name[int(cache.split[rows[b]])],
                     "label_a": cache.class_names[int(y_all[a])], "label_b": cache.class_names[int(y_all[b])]}
                    for a, b, s in zip(ia, ib, cos)]

        os.makedirs(report_dir, exist_ok=True)
        write_csv(os.path.join(report_dir, "top_losses.csv"),
                  ["path", "label", "predicted", "prob_label", "prob_predicted", "loss", "model"],
                  [(r["path"], r["label"], r["predicted"], f"{r['prob_label']:.6f}", f"{r['prob_predicted']:.6f}",
                    f"{r['loss']:.6f}", r["model"]) for m in losses.values() for r in m])
        write_csv(os.path.join(report_dir, "label_issues.csv"),
                  ["path", "given_label", "prob_given", "rank", "predicted_label"],
                  [(r["path"], r["given_label"], f"{r['prob_given']:.6f}", r["rank"], r["predicted_label"])
                   for r in issue_rows])
        # RELABEL's format (extract/relabel.py): each suspect's suggested label, for the user to edit and pass back.
        write_csv(os.path.join(report_dir, "label_fixes.csv"), ["path", "label"],
                  [(r["path"], r["predicted_label"]) for r in issue_rows])
        write_csv(os.path.join(report_dir, "near_duplicates.csv"),
                  ["path_a", "path_b", "cosine", "split_a", "split_b", "label_a", "label_b"],
                  [(d["path_a"], d["path_b"], f"{d['cosine']:.6f}", d["split_a"], d["split_b"], d["label_a"],
                    d["label_b"]) for d in dup_rows])
        lap("csv")

        n_leak = sum(d["split_a"] != d["split_b"] for d in dup_rows)
        n_conflict = sum(d["label_a"] != d["label_b"] for d in dup_rows)
        summary = {
            "report_dir": os.path.abspath(report_dir),
            "inputs": {"features": os.path.abspath(features), "cache_fingerprint": cache.fingerprint,
                       "head_dir": os.path.abspath(head_dir), "model_dir": os.path.abspath(model_dir) if model_dir
                       else None, "data": os.path.abspath(data), "layer": layer},
            "config": {"top_n": top_n, "seed": seed, "folds": folds, "oof_model": "StandardScaler + "
                       f"LogisticRegression(C={c:g}, the C stage 2's CV chose) on pooled {layer}",
                       "cleanlab": "cleanlab.filter.find_label_issues, ranked by self_confidence",
                       "dup_threshold": dup_threshold,
                       "dup_features": f"pooled {layer}, PCA-whitened ({duplicates.WHITEN_DIMS} axes at most), "
                                       "L2-normalised",
                       "ece_bins": BINS},
            "rows": {"labelled": len(rows), "train": len(tr), "val": len(va), "skipped": len(cache.skipped)},
            "scores": {name: {k: v for k, v in s.items() if k != "reliability"} for name, s in scored.items()},
            "label_issues": len(issue_rows),
            "near_duplicates": {"pairs": len(dup_rows), "train_val_pairs": n_leak, "label_conflicts": n_conflict},
            "notes": notes, "seconds": seconds,
        }
        summary["per_class"] = {name: [{"class": c, "n_val": n, "accuracy": a, "mean_prob": m} for c, n, a, m in rows_]
                                for name, rows_ in per_class.items()}
        doc = sections.document(cache, head_dir, model_dir, model_meta, data, summary, scored, losses, issue_rows,
                                dup_rows, top_n, per_class)
        lap("thumbnails_html")
    from .html import page

    with replacing(os.path.join(report_dir, "report.html")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page(doc))
    seconds["total"] = round(time.perf_counter() - t["start"], 2)
    write_json(os.path.join(report_dir, "summary.json"), summary)
    return summary


def time_report(n: int = 25000, dim: int = 768, seed: int = 0) -> dict:
    """Seconds of the report's row-dependent heavy parts on `n` synthetic pooled rows (for `make bench`: report_s)."""
    out = {**labels.time_label_issues(n, dim, seed), **duplicates.time_duplicates(n, dim, seed)}
    out["report_s"] = round(out["out_of_fold_s"] + out["cleanlab_s"] + out["duplicates_s"], 2)
    return out
