"""The Kaggle-size run's estimate of one pass over the whole train set, and bench_scale.md.

Reads the results dict bench/scale.py builds. Writes nothing itself (bench/scale.py writes the files).
Example: python -m bench --scale-n 25000 --img-size 150
"""
from classify import stage as head_stage
from core.precision import resolve
from finetune import run as ft_run, train as ft_train

KAGGLE_TRAIN = 25_000  # images in Kaggle's Dogs vs Cats train set (bench/scale.py measures N of them)


def extraction_run(res) -> dict:
    """The big set's extraction in the precision PRECISION=auto picks for inference on this CPU."""
    e = res["extraction"]
    return e["big_bfloat16"] if resolve("auto", "inference") == "bfloat16" and "big_bfloat16" in e else e["big"]


def kaggle_estimate(res) -> dict:
    """Seconds of one pass on KAGGLE_TRAIN images (`make features`, `make head`, `make finetune FROM_CACHE=1`,
    `make report`, each at its defaults): measured where N is KAGGLE_TRAIN, else scaled linearly (`extrapolated`)."""
    n = res["config"]["n"]
    k = KAGGLE_TRAIN / n
    basis = "measured" if n == KAGGLE_TRAIN else "extrapolated"
    e, h, f, r = extraction_run(res), res["head"]["big"], res["cached_finetune"]["big"], res["report"]
    # The head's process also starts, pools the rows, fits the baseline, predicts the val rows and saves: `rest`.
    # Its first epoch also traces the step, once per run: not scaled.
    trace = max(h["epoch_s_runs"][0] - h["seconds"], 0.0) if len(h["epoch_s_runs"]) > 1 else 0.0
    rest = h["wall_s"] - sum(h["epoch_s_runs"])
    head_epochs, ft_epochs = head_stage.DEFAULT_EPOCHS, ft_run.DEFAULT_EPOCHS
    stages = {
        "extraction": {
            "seconds": k * e["seconds"], "basis": basis,
            "formula": f"{k:g} x {e['seconds']:.1f} s (`make features LAYERS={','.join(e['layers'])}` in "
                       f"{e['precision']}, PRECISION=auto's pick here, on {e['images']:,} generated ~350x400 JPEGs)",
            "note": "AUG_VIEWS=2 adds the views' forward passes: not in it"},
        "head": {
            "seconds": trace + k * (rest + head_epochs * h["seconds"]), "basis": basis,
            "formula": f"{trace:.1f} s of tracing + {k:g} x ({rest:.1f} s of start, loading, pooling, baseline, "
                       f"scoring and saving + {head_epochs} epochs x {h['seconds']:.1f} s)",
            "note": f"EPOCHS={head_epochs} is make head's bound: early stopping (PATIENCE={head_stage.PATIENCE}) "
                    f"usually ends sooner"},
        "cached_finetune": {
            "seconds": f["trace_s"] + k * ft_epochs * f["seconds"], "basis": basis,
            "formula": f"{f['trace_s']:.1f} s of tracing + {k:g} x {ft_epochs} epochs x {f['seconds']:.1f} s "
                       f"(float32, PRECISION=auto's pick for training)",
            "note": f"EPOCHS={ft_epochs} is make finetune's bound: early stopping (PATIENCE={ft_train.PATIENCE}) "
                    f"may end sooner; the equivalence and export checks (a few hundred images) are not in it"},
        "report": {"seconds": k * r["wall_s"], "basis": basis, "formula": f"{k:g} x {r['wall_s']:.1f} s",
                   "note": "without MODEL_DIR"},
    }
    total = sum(s["seconds"] for s in stages.values())
    return {"images": KAGGLE_TRAIN, "stages": stages, "total_seconds": total,
            "total_note": "make features + make head + make finetune FROM_CACHE=1 + make report, each at its defaults "
                          "and epoch bounds; a sweep is extra (the `sweep` row)"}


def _minutes(s) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def _row(label, p, extra="") -> str:
    return (f"| {label} | {p['rows']:,} | {p['seconds']:.1f} | {p['rows_per_s']:,.1f} | {p['peak_rss_mib']:,.0f} | "
            f"{p['disk_bytes'] / 1e6:,.1f} MB | {extra} |")


def markdown(res) -> str:
    c, m = res["config"], res["machine"]
    lines = [f"Measured by `make bench SCALE_N={c['n']}` ({c['img_size']}px, MEM_BUDGET={c['mem_budget']}, "
             f"WEIGHTS=none, generated images) on {m['cpu']}, {m['cores']} cores; {res['created']}. "
             f"Native bf16: {res['native_bf16']}.", "",
             "| part | rows | seconds | rows/s | peak RSS MiB | disk | note |", "|---|---|---|---|---|---|---|"]
    for name, e in res["extraction"].items():
        lines.append(_row(f"make features, {name}", e, f"{e['backbone']} {','.join(e['layers'])} {e['precision']}"))
    for name, h in res["head"].items():
        lines.append(_row(f"make head ({h['kind']}), {name}", h, f"per epoch; {h['data']}"))
    b = res["baseline"]["big"]
    lines.append(_row("baseline (in make head), big", b, f"C={b['C']}"))
    r, s = res["report"], res["sweep"]
    lines.append(_row("make report, big", {**r, "rows_per_s": r["rows"] / r["seconds"]}, "no MODEL_DIR"))
    lines.append(_row("make sweep, big", {**s, "rows_per_s": s["trials"] * s["rows"] / s["seconds"]},
                      f"{s['trials']} trials x EPOCHS={s['epochs']}: {s['complete']} complete, {s['pruned']} pruned; "
                      f"rows/s: trial-rows"))
    for name, f in res["cached_finetune"].items():
        lines.append(_row(f"cached fine-tuning, {name}", f, f"per epoch; {f['precision']}"))
    if "updates" in res:  # older runs predate the incremental cache
        from .report import update_row

        lines += ["", "| updates | figures | targets | met |", "|---|---|---|---|"]
        lines += [update_row(u) for u in res["updates"].values()]
    p, rf = res["scale_penalty"], res["roofline"]
    cv = rf["cached_vs_end_to_end"]
    lines += ["", f"scale_penalty (seconds per train row at {c['n']:,} over {c['small']:,} images, target "
                  f"<= {p['target']}): head {p['head']:.2f}, cached fine-tuning {p['cached_finetune']:.2f}.", "",
              "Roofline fraction (bench/roofline.py, this machine's peaks): "
              + ", ".join(f"{k} {v['fraction']:.2f}" for k, v in rf.items() if "fraction" in v) + "; cached against "
              f"end-to-end epochs {cv['speedup']:.2f}x of a {cv['flop_ceiling']:.2f}x FLOP ceiling "
              f"({cv['fraction_of_ceiling']:.2f} of it, {cv['images']} images).", ""]
    est = res["kaggle_estimate"]
    lines += [f"One pass over Kaggle's {est['images']:,} train images on this machine:", "",
              "| stage | time | basis | how |", "|---|---|---|---|"]
    for name, st in est["stages"].items():
        lines.append(f"| {name} | {_minutes(st['seconds'])} | {st['basis']} | {st['formula']}; {st['note']} |")
    lines.append(f"| total | {_minutes(est['total_seconds'])} | | {est['total_note']} |")
    lines.append(f"| sweep | {_minutes(s['seconds'])} | measured at {c['n']:,} | {s['trials']} trials x "
                 f"EPOCHS={s['epochs']} |")
    return "\n".join(lines) + "\n"
