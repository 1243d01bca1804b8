"""`make bench`: speed and memory of every stage against the recipe it replaces, measured side by side in one run.

Reads nothing (it generates its own ~350x400 JPEGs). Writes artifacts/bench.json and artifacts/bench.md.
Example: python -m bench --n 600   (the sections: bench/suite.py)
With --scale-n N, the Kaggle-size run instead (bench/scale.py): artifacts/bench_scale.json and bench_scale.md.
"""
import argparse

from core import cli

from .scale import ScaleOptions, run_scale
from .suite import Options, run_bench


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600, help="synthetic images (BENCH_N)")
    p.add_argument("--img-size", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median reported)")
    p.add_argument("--rss-rows", type=int, default=800, help="rows of the 1x cache for the RSS test (4x is 4x)")
    p.add_argument("--mem-budget", default=None,
                   help="MEM_BUDGET: 64M for the RSS test (both caches exceed it); with --scale-n, stage 2's auto")
    p.add_argument("--ft-n", type=int, default=320,
                   help="images for cached_finetune_speedup (end-to-end epochs are the slowest part of the bench)")
    p.add_argument("--baseline-rows", type=int, default=20_000, help="train rows of the baseline's fit at scale")
    p.add_argument("--head-epochs", type=int, default=6,
                   help="epochs of the `make head` runs on the float32 and the float16 cache (compared at equal epochs)")
    p.add_argument("--skip-ray", action="store_true", help="leave out the Ray throughput figures (quick test)")
    p.add_argument("--device-figures", action="store_true",
                   help="measure the GPU figures (fine-tuning images/s with and without mixed precision) even "
                        "without a GPU: they are measured by default only where one is visible")
    p.add_argument("--sweep-trials", type=int, default=20, help="TRIALS of the timed `make sweep` (sweep_20_s)")
    p.add_argument("--sweep-epochs", type=int, default=20, help="EPOCHS of each sweep trial")
    p.add_argument("--report-rows", type=int, default=25_000,
                   help="synthetic pooled rows for the report's row-dependent parts (report_s at scale)")
    p.add_argument("--peak-seconds", type=float, default=2.0,
                   help="seconds of repeats per GEMM size and dtype when measuring the machine's peaks")
    p.add_argument("--only-exports", action="store_true",
                   help="only the export section (model.keras against SavedModel, ONNX and LiteRT: size, latency, "
                        "batch throughput), into artifacts/bench_exports.json unless --out")
    p.add_argument("--exports", default="all", help="exports the export section times: all, or a comma list of "
                                                   "FORMAT[:QUANTIZE], e.g. onnx,litert:int8")
    p.add_argument("--work", default=None, help="scratch folder, deleted at the end (artifacts/bench_work; with "
                                               "--scale-n artifacts/bench_scale_work)")
    p.add_argument("--out", default=None, help="artifacts/bench.json; with --scale-n artifacts/bench_scale.json")
    g = p.add_argument_group("Kaggle-size run (make bench SCALE_N=25000, bench/scale.py): uses --img-size, "
                             "--mem-budget, --work, --out")
    g.add_argument("--scale-n", type=int, default=0, help="generated images: run this mode (SCALE_N)")
    g.add_argument("--scale-small", type=int, default=ScaleOptions.small,
                   help="images of the small set measured beside them, for scale_penalty")
    g.add_argument("--scale-sweep-trials", type=int, default=ScaleOptions.sweep_trials, help="TRIALS of its sweep")
    g.add_argument("--scale-sweep-epochs", type=int, default=ScaleOptions.sweep_epochs, help="EPOCHS of each trial")
    g.add_argument("--scale-ft-n", type=int, default=ScaleOptions.ft_n,
                   help="images of the end-to-end against cached fine-tuning epochs")
    g.add_argument("--scale-backbone", default=ScaleOptions.other_backbone,
                   help="the backbone extracted beside the default one (extract/backbones.py)")
    a = vars(p.parse_args(argv))
    scale = {k[len("scale_"):]: a.pop(k) for k in list(a) if k.startswith("scale_")}
    n = scale.pop("n")
    if n < 0 or min(scale["small"], scale["sweep_trials"], scale["sweep_epochs"], scale["ft_n"]) < 1:
        p.error("--scale-n must be >= 0 (0: the bench), the other --scale-* counts >= 1")
    if n:
        given = {k: a[k] for k in ("img_size", "mem_budget", "work", "out") if a[k] is not None}
        scale["other_backbone"] = scale.pop("backbone")
        return ScaleOptions(n=n, **scale, **given)
    if a["only_exports"] and a["out"] is None:
        a["out"] = "artifacts/bench_exports.json"
    return Options(**{k: v for k, v in a.items() if v is not None})


@cli
def main(argv=None):
    opts = parse_args(argv)
    return run_scale(opts) if isinstance(opts, ScaleOptions) else run_bench(opts)


if __name__ == "__main__":
    raise SystemExit(main())
