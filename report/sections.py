"""The report's seven sections as HTML bodies, from what report/build.py computed.

Reads the thumbnails' source images under DATA and the stages' curves.png files. Writes nothing.
Example: (called by report.build.build_report) python -m report --features ... --head-dir ... --data ...
"""
import os

from classify.record import CURVES_FILE, read_metrics_or_empty
from finetune.record import CURVES_FILE as MODEL_CURVES, read_metrics_or_empty as model_metrics

from . import figures, html, thumbs

SUMMARY_KEYS = ("backbone", "backbones", "layer", "layers", "image_size", "weights", "weights_file", "weights_sha256",
                "dtype", "class_names", "val_split", "split_seed", "data", "layout", "n_inputs", "exclude")


def _members(records) -> str:
    """An ensemble's members, one per line: name, size, layer, weights hash."""
    return "; ".join(f"{r['name']} {r['image_size']} px {r['layer']} weights {r['weights_sha256'][:12]}"
                     for r in records)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)


class Thumbs:
    """Thumbnails from DATA with a tqdm bar, each path decoded once."""

    def __init__(self, root, total):
        from tqdm import tqdm

        self.root, self.done, self.bar = root, {}, tqdm(total=total, desc="thumbnails", unit="img")

    def __call__(self, path):
        if path not in self.done:
            self.done[path] = thumbs.thumbnail(self.root, path)
            self.bar.update(1)
        return self.done[path]

    def close(self):
        self.bar.close()


def run_summary(cache, head_dir, model_dir, model_meta, summary) -> str:
    cfg = cache.config
    rows = [(k, _members(cfg[k]) if k == "backbones" else cfg[k]) for k in SUMMARY_KEYS if k in cfg]
    rows += [("fingerprint", cache.fingerprint), ("created", cache.f.attrs.get("created", "")),
             ("rows", f"{summary['rows']['labelled']} labelled: {summary['rows']['train']} train, "
                      f"{summary['rows']['val']} val")]
    body = "<h3>Cache</h3>" + html.table(rows, ["key", "value"])
    body += f"<h3>Skipped files ({len(cache.skipped)})</h3>"
    body += html.table(cache.skipped, ["path", "reason"]) if cache.skipped else '<p class="note">none</p>'
    head = read_metrics_or_empty(head_dir)
    stages = []
    for name in ("head", "baseline"):
        m = head.get(name, {})
        stages.append((f"stage 2: {name}", m.get("seconds"), _settings(head.get("config", {}), name, m)))
    if model_meta is not None:
        ft = model_metrics(model_dir)
        cfg_ft = ft.get("config", model_meta.get("config", {}))
        keep = ("path", "unfreeze_from", "epochs", "batch", "lr", "seed", "mixed_precision", "xla")
        stages.append(("stage 3: fine-tuned", ft.get("seconds", {}).get("total_this_run"),
                       ", ".join(f"{k}={cfg_ft[k]}" for k in keep if k in cfg_ft)))
    stages.append(("this report (so far)", round(sum(summary["seconds"].values()), 2),
                   ", ".join(f"{k}={v}" for k, v in summary["config"].items())))
    body += "<h3>Stages</h3>" + html.table([(n, "-" if s is None else f"{s:.1f}", t) for n, s, t in stages],
                                           ["stage", "seconds", "settings"], num_cols=(1,))
    for note in summary["notes"]:
        body += f'<p class="flag">{html.escape(note)}</p>'
    return body


def _settings(config, name, m) -> str:
    if name == "baseline":
        return f"C={m.get('C')}, {m.get('features', '')}"
    keep = ("layer", "epochs", "batch", "lr", "seed", "optimizer", "deterministic", "xla", "mem_budget")
    return ", ".join(f"{k}={config[k]}" for k in keep if k in config) + f"; ran {m.get('epochs')} epochs"


def scores_section(scored, class_names, per_class=None) -> str:
    names = list(scored)
    keys = [("val accuracy", "val_accuracy"), ("val top-5 accuracy", "val_top5_accuracy"),
            ("val log loss", "val_log_loss"), ("val AUC (macro one-vs-rest)" if len(class_names) > 2 else "val AUC",
                                               "val_auc"),
            ("expected calibration error", "val_ece"), ("val rows", "n_val")]
    rows = [[label] + [_fmt(scored[n].get(k)) for n in names] for label, k in keys
            if any(k in scored[n] for n in names)]
    body = html.table(rows, [""] + names, num_cols=range(1, len(names) + 1))
    k = len(class_names)
    body += (f'<p class="note">ECE: val rows binned by confidence in the predicted (top) class (10 bins over '
             f'{1 / k:.2g}-1); the row-weighted mean |accuracy - confidence| over bins. '
             + ("Threshold 0.5 for the confusion matrices." if k == 2 else "Predicted class: the most probable.")
             + '</p>')
    cms = [html.img(figures.confusion(scored[n]["confusion_matrix"], n, class_names), f"confusion matrix {n}")
           for n in names]
    body += f'<div class="figs">{"".join(cms)}</div>'
    if per_class:
        body += "<h3>Per class</h3>" + html.table(
            [[c, str(nv)] + [_fmt(per_class[n][i][2]) for n in names] for i, (c, nv, _, _) in
             enumerate(per_class[names[0]])], ["class", "val rows"] + [f"accuracy {n}" for n in names],
            num_cols=range(1, len(names) + 2))
        body += "<h3>Most-confused pairs</h3>" + html.table(
            [[n, class_names[a], class_names[b], str(cnt)] for n in names
             for a, b, cnt in most_confused_pairs(scored[n]["confusion_matrix"])],
            ["model", "true", "predicted", "val rows"], num_cols=(3,))
    return body


def most_confused_pairs(cm, n: int = 5) -> list:
    """[(true, predicted, rows)] of the largest off-diagonal cells (core.metrics.most_confused)."""
    from core.metrics import most_confused

    return most_confused(cm, n)


def curves_section(head_dir, model_dir) -> str:
    items = [("head (stage 2)", os.path.join(head_dir, CURVES_FILE))]
    if model_dir:
        items.append(("fine-tuned (stage 3)", os.path.join(model_dir, MODEL_CURVES)))
    body = ""
    for name, path in items:
        uri = figures.file_uri(path)
        body += f"<h3>{html.escape(name)}</h3>" + (html.img(uri, f"curves {name}") if uri else
                                                    f'<p class="note">{html.escape(path)} not found</p>')
    return body


def document(cache, head_dir, model_dir, model_meta, data, summary, scored, losses, issues, dups, top_n,
             per_class=None) -> dict:
    """{'title', 'subtitle', 'sections': [(id, title, body)]} for report.html.page."""
    names = cache.class_names
    shown_issues, shown_dups = issues[:top_n * 2], dups[:top_n]
    thumb = Thumbs(data, sum(len(v) for v in losses.values()) + len(shown_issues) + 2 * len(shown_dups))
    secs = [("summary", "1. Run summary", run_summary(cache, head_dir, model_dir, model_meta, summary)),
            ("scores", "2. Scores side by side", scores_section(scored, names, per_class)),
            ("curves", "3. Curves", curves_section(head_dir, model_dir))]
    body = f'<p class="note">The {top_n} val images with the highest log loss, per model (top_losses.csv).</p>'
    for model, items in losses.items():
        body += f"<h3>{html.escape(model)}</h3>" + html.grid(
            [html.card(thumb(r["path"]), r["path"], [f"true {r['label']} (P {r['prob_label']:.3f})",
                                                     f"predicted {r['predicted']} (P {r['prob_predicted']:.3f})",
                                                     f"loss {r['loss']:.3f}"]) for r in items])
    secs.append(("top-losses", "4. Top losses", body))
    body = (f'<p>{len(issues)} labelled row(s) flagged (label_issues.csv lists all, most doubtful first; '
            f'{len(shown_issues)} shown). Out-of-fold P(class) for all {len(names)} classes from {summary["config"]["folds"]}-fold '
            f'cross-validation over every labelled row (train and val) with {summary["config"]["oof_model"]}: the '
            f'baseline\'s pipeline, refitted per fold in 1-2 s at 25,000 rows where the dense head takes minutes; then '
            f'{summary["config"]["cleanlab"]}. To leave them out: <code>make features EXCLUDE=label_issues.csv</code> '
            f'(edit the CSV first to keep the ones you disagree with).</p>')
    body += html.grid([html.card(thumb(r["path"]), r["path"],
                                 [f"#{r['rank']} given {r['given_label']}", f"predicted {r['predicted_label']}",
                                  f"P(given) {r['prob_given']:.3f}"], flag=True) for r in shown_issues])
    secs.append(("label-issues", "5. Suspected label errors", body))
    nd = summary["near_duplicates"]
    body = (f'<p>{nd["pairs"]} pair(s) with cosine >= {summary["config"]["dup_threshold"]} '
            f'({summary["config"]["dup_features"]}); <span class="flag">{nd["train_val_pairs"]} straddle train and '
            f'val (leakage), {nd["label_conflicts"]} carry different labels</span>. near_duplicates.csv lists all; '
            f'{len(shown_dups)} shown.</p>')
    body += html.grid([html.pair(thumb(d["path_a"]), thumb(d["path_b"]), d["path_a"], d["path_b"],
                                 [f"cosine {d['cosine']:.4f}", f"{d['split_a']}/{d['split_b']}",
                                  f"{d['label_a']}/{d['label_b']}"]
                                 + (["train/val leakage"] if d["split_a"] != d["split_b"] else [])
                                 + (["labels differ"] if d["label_a"] != d["label_b"] else []),
                                 flag=d["split_a"] != d["split_b"] or d["label_a"] != d["label_b"])
                       for d in shown_dups])
    secs.append(("near-duplicates", "6. Near-duplicates", body))
    curves = {n: s["reliability"] for n, s in scored.items() if n != "baseline"}
    secs.append(("reliability", "7. Reliability diagram",
                 html.img(figures.reliability(curves), "reliability diagram") +
                 '<p class="note">Points under the diagonal: over-confident; above: under-confident.</p>'))
    thumb.close()
    return {"title": f"Report: {os.path.basename(cache.path)} ({cache.config['layer']})",
            "subtitle": f"FEATURES={cache.path} HEAD_DIR={head_dir}" + (f" MODEL_DIR={model_dir}" if model_dir else "")
                        + f" DATA={data}", "sections": secs}
