"""The Kaggle-size run's estimate for the whole train set, and bench_scale.md.

Reads the results dict bench/scale.py builds. Writes nothing itself (bench/scale.py writes the files).
Example: python -m bench --scale-n 25000 --img-size 150
"""
from classify import stage as head_stage
from finetune import run as ft_run, train as ft_train

KAGGLE_TRAIN = 25_000  # images in Kaggle's Dogs vs Cats train set (bench/scale.py measures N rows of it)


def kaggle_estimate(res) -> dict:
    """Seconds of each stage on KAGGLE_TRAIN images from the run's figures: measured where N is KAGGLE_TRAIN, else
    scaled linearly in rows (`extrapolated`), and extraction always extrapolated from its JPEGs."""
    n = res["config"]["n"]
    k = KAGGLE_TRAIN / n
    basis = "measured" if n == KAGGLE_TRAIN else "extrapolated"
    e, h, f = res["extraction"], res["head"], res["cached_finetune"]
    # The head's process also starts, pools the rows, fits the baseline, predicts the val rows and saves: `rest`,
    # scaled in rows. Its first epoch also traces the step, once per run: not scaled.
    trace = max(h["epoch_s_runs"][0] - h["seconds"], 0.0) if len(h["epoch_s_runs"]) > 1 else 0.0
    rest = h["wall_s"] - sum(h["epoch_s_runs"])
    head_epochs, ft_epochs = head_stage.DEFAULT_EPOCHS, ft_run.DEFAULT_EPOCHS
    stages = {
        "extraction": {
            "seconds": e["fixed_s"] + KAGGLE_TRAIN / e["images_per_s"], "basis": "extrapolated",
            "formula": f"{e['fixed_s']:.1f} s + {KAGGLE_TRAIN:,} / {e['images_per_s']:.1f} images/s (`make features`,"
                       f" LAYERS=mixed7, on {e['small_run']['images']} and {e['images']:,} generated ~350x400 JPEGs)",
            "note": "FROM_CACHE=1 also needs LAYERS=mixed6,mixed7 AUG_VIEWS=2: the views' forward passes are not in it"},
        "head": {
            "seconds": trace + k * (rest + head_epochs * h["seconds"]), "basis": basis,
            "formula": f"{trace:.1f} s of tracing + {k:g} x ({rest:.1f} s of start, pooling, baseline, scoring and "
                       f"saving + {head_epochs} epochs x {h['seconds']:.1f} s)",
            "note": f"EPOCHS={head_epochs} is make head's bound: early stopping (PATIENCE={head_stage.PATIENCE}) "
                    f"usually ends sooner; the baseline's {res['baseline']['seconds']:.1f} s fit is in it"
                    + ("" if n == KAGGLE_TRAIN else "; the process's start is scaled too (an overestimate)")},
        "cached_finetune": {
            "seconds": f["trace_s"] + k * ft_epochs * f["seconds"], "basis": basis,
            "formula": f"{f['trace_s']:.1f} s of tracing + {k:g} x {ft_epochs} epochs x {f['seconds']:.1f} s",
            "note": f"EPOCHS={ft_epochs} is make finetune's bound: early stopping (PATIENCE={ft_train.PATIENCE}) "
                    f"may end sooner; the equivalence and export checks (a few hundred images) are not in it"},
    }
    total = sum(s["seconds"] for s in stages.values())
    return {"images": KAGGLE_TRAIN, "stages": stages, "total_seconds": total,
            "total_note": "stage 1 (mixed7) + stage 2 + stage 3 FROM_CACHE=1, each at its default epoch bound"}


def _minutes(s) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def markdown(res) -> str:
    c, m = res["config"], res["machine"]
    lines = [f"Measured by `make bench SCALE_N={c['n']}` ({c['img_size']}px, MEM_BUDGET={c['mem_budget']}, "
             f"WEIGHTS=none, synthetic features) on {m['cpu']}, {m['cores']} cores; {res['created']}.", "",
             "| part | rows | seconds | rows/s | peak RSS MiB | disk |", "|---|---|---|---|---|---|"]
    for name, what in (("cache", "write"), ("head", "per epoch, " + res["head"]["data"]), ("baseline", "fit"),
                       ("cached_finetune", "one epoch"), ("extraction", "measured")):
        p = res[name]
        lines.append(f"| {name} ({what}) | {p['rows']:,} | {p['seconds']:.1f} | {p['rows_per_s']:,.1f} | "
                     f"{p['peak_rss_mib']:,.0f} | {p['disk_bytes'] / 1e6:,.1f} MB |")
    e = res["extraction"]
    lines.append(f"| extraction (extrapolated) | {e['images_extrapolated']:,} | {e['seconds_extrapolated']:.1f} | "
                 f"{e['images_per_s']:,.1f} | | {e['disk_bytes_extrapolated'] / 1e6:,.1f} MB |")
    est = res["kaggle_estimate"]
    lines += ["", f"Expected on this machine for Kaggle's {est['images']:,} train images:", "",
              "| stage | time | basis | how |", "|---|---|---|---|"]
    for name, s in est["stages"].items():
        lines.append(f"| {name} | {_minutes(s['seconds'])} | {s['basis']} | {s['formula']}; {s['note']} |")
    lines.append(f"| total | {_minutes(est['total_seconds'])} | | {est['total_note']} |")
    return "\n".join(lines) + "\n"
