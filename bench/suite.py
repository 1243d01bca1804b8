"""`make bench` as a library: every figure of bench.json, section by section, timed.

Reads nothing (it generates its own ~350x400 JPEGs). Writes artifacts/bench.json and artifacts/bench.md.
Example: python -m bench --n 600

Every figure is the median of repeated timings with the warm-up (graph tracing) excluded. WEIGHTS=none:
throughput does not depend on the weights' values. Ratios compare runs on the same machine in the same process.
Beside each speedup it reports the ratio's FLOP ceiling (TensorFlow's profiler on each path's traced step).
Against the machine itself (bench/limits.py): its GEMM peaks and memory bandwidth, measured first in the same run
(bench/peaks.py), give each stage a roofline and the fraction of it achieved; a missed target names the part of the
step that loses the time. Every precision-dependent stage also runs in bfloat16 (`bf16`).
"""
import contextlib
import importlib.util
import os
import shutil
import time
from dataclasses import asdict, dataclass

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from cache.checks import checksum_cost
from classify.head import build_head
from classify.stage import DEFAULT_BATCH as HEAD_BATCH
from core.files import write_json, write_text
from core.lock import output_lock
from core.runs import DEFAULT_CHECKPOINT_S
from extract import images
from extract.synth import make_dataset

from . import exports, finetuning as bft, iteration, limits, stages, updates
from .peaks import machine_peaks
from .profile import flop_ceiling
from .report import check, markdown
from .timing import machine, median, read_history_seconds, run_head_cli


@dataclass(frozen=True)
class Options:
    """`make bench`'s settings (python -m bench --help)."""

    n: int = 600
    img_size: int = 150
    batch: int = 32
    repeats: int = 3
    rss_rows: int = 800
    mem_budget: str = "64M"
    ft_n: int = 320
    baseline_rows: int = 20_000
    head_epochs: int = 6
    skip_ray: bool = False
    device_figures: bool = False
    sweep_trials: int = 20
    sweep_epochs: int = 20
    report_rows: int = 25_000
    peak_seconds: float = 2.0
    only_exports: bool = False  # the export section alone (bench/exports.py), into its own OUT
    exports: str = "all"  # which exports the section times: all, or e.g. onnx,litert:int8
    work: str = "artifacts/bench_work"
    out: str = "artifacts/bench.json"


def head_parameters(feature_shape) -> int:
    """Weights of stage 2's default head on features of `feature_shape` (all of them trained)."""
    return int(build_head(tuple(feature_shape)).count_params())


def run_bench(a: Options) -> int:
    """Every section in turn, under a lock on bench.json; writes bench.json and bench.md, prints the table."""
    with output_lock(a.out, "OUT"):  # python -m bench --out
        return _run_exports(a) if a.only_exports else _run(a)


def _prepare(a: Options):
    """(scratch folder, image folder, their paths, the results dict started): the bench's generated images."""
    work = a.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = os.path.join(work, "images")
    make_dataset(data, n=a.n, layout="kaggle", size=(320, 420), seed=0, junk=False)  # ~350x400, as Kaggle's
    res = {"config": asdict(a), "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return work, data, images.discover(data), res


def _run_exports(a: Options) -> int:
    """--only-exports: the images, a cache, a head, model.keras and the export section; OUT and its .md."""
    work, data, _, res = _prepare(a)
    cache32 = stages.build_cache(a, data, os.path.join(work, "features.h5"))
    run_head_cli(cache32, os.path.join(work, "head-float32"), "--epochs", str(a.head_epochs))
    t0 = time.perf_counter()
    res["exports"] = exports.exports_section(cache32, os.path.join(work, "head-float32"), data,
                                             os.path.join(work, "exports"), a.repeats,
                                                 exports.parse_exports(a.exports))
    res["section_s"] = {"exports": round(time.perf_counter() - t0, 1)}
    write_json(a.out, res)
    md = "\n".join(exports.markdown_rows(res["exports"])) + "\n"
    write_text(os.path.splitext(a.out)[0] + ".md", md)
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    print(f"wrote {a.out} and {os.path.splitext(a.out)[0]}.md")
    return 0


def _run(a: Options) -> int:
    work, data, imgs, res = _prepare(a)
    print(f"bench: {a.n} images of ~350x400 at {a.img_size}px, {a.repeats} timed repeats each")

    spent = res["section_s"] = {}  # wall seconds per part, so that a slow bench shows where its time goes

    @contextlib.contextmanager
    def section(name):
        t0 = time.perf_counter()
        yield
        spent[name] = round(time.perf_counter() - t0, 1)

    with section("machine_peaks"):
        res["machine_peaks"] = machine_peaks(a.peak_seconds)
    with section("extraction"):  # float32 and bfloat16, alternating
        res["extraction"] = ext = stages.bench_extraction(a, imgs, work)
    with section("head"):
        cache32 = stages.build_cache(a, data, os.path.join(work, "features.h5"))
        head_epochs_arg = ("--epochs", str(a.head_epochs))
        # `make head` as it is (deterministic), for the deterministic epoch time, the baseline and the float16 check
        head_m, _ = run_head_cli(cache32, os.path.join(work, "head-float32"), *head_epochs_arg)
        det_epochs = read_history_seconds(os.path.join(work, "head-float32"))
        # Like for like with the recipe, which runs without op determinism (Keras' default): a second head run.
        nondet = ("--deterministic", "0", "--epochs", str(1 + a.repeats))
        commits = {}
        # CHECKPOINT_S's default against a commit every epoch (the old per-epoch checkpoints wrote more still):
        # what the resume state costs a `make head` epoch, wall time with every callback.
        for every in ("0", f"{DEFAULT_CHECKPOINT_S:g}"):
            m, _ = run_head_cli(cache32, os.path.join(work, f"head-nondet-{every}"), *nondet, "--checkpoint-s", every)
            commits[f"checkpoint_s_{every}"] = {**m["head"]["commits_this_run"], "epochs": m["head"]["epochs"],
                                                "wall_s_per_epoch": m["head"]["train_wall_seconds_this_run"] /
                                                m["head"]["epochs"]}
        res["head_commits"] = commits
        head_epochs = read_history_seconds(os.path.join(work, f"head-nondet-{DEFAULT_CHECKPOINT_S:g}"))
        res["head_breakdown"] = stages.bench_head_breakdown(a, cache32)
    with section("recipe"):
        recipe_epochs, gflops = stages.bench_recipe_epoch(a, cache32, epochs=1 + a.repeats)
    with open_cache(cache32) as c:
        n_train, n_val = res["n_train"], res["n_val"] = len(c.rows(SPLIT_TRAIN)), len(c.rows(SPLIT_VAL))
        feature_shape = c.feature_shape()
    res["gflops_per_example"] = gflops
    res["head_epoch_flop_ceiling"] = flop_ceiling(gflops["recipe"], gflops["head"], n_train, n_val)
    res["head_epoch_s_runs"], res["recipe_epoch_s_runs"] = head_epochs, recipe_epochs
    res["head_epoch_s"], res["recipe_epoch_s"] = median(head_epochs[1:]), median(recipe_epochs[1:])
    res["head_epoch_s_deterministic_runs"] = det_epochs
    res["head_epoch_s_deterministic"] = median(det_epochs[1:])
    res["head_epoch_speedup_deterministic"] = res["recipe_epoch_s"] / res["head_epoch_s_deterministic"]
    res["extract_img_s"], res["forward_img_s"] = ext["extract_img_s"], ext["forward_img_s"]
    res["baseline_fit_s"] = head_m["baseline"]["seconds"]
    with section("baseline_at_scale"):
        res["baseline_at_scale"] = stages.bench_baseline_at_scale(a.baseline_rows)
    with section("float16"):
        res["float16_vs_float32"] = stages.bench_dtype(cache32, work, head_m, *head_epochs_arg)
    with section("bf16_cache"):
        bf16_cache = stages.bench_bf16_cache(a, data, cache32, work, head_m, *head_epochs_arg)
    with section("rss"), open_cache(cache32) as c:
        res["rss"] = stages.bench_rss(a, work, c.feature_shape())
    if a.skip_ray or importlib.util.find_spec("ray") is None:
        res["ray_note"] = ("not measured: --skip-ray" if a.skip_ray else
                           "not measured: Ray is not installed (make install SCALE=1)")
    else:
        from extract import shard

        res["ray"] = {}
        with section("ray"):
            for k in (1, 2):
                r = shard.throughput(data, work, k, a.img_size, a.batch)
                res["ray"][f"ray_extract_img_s_{k}_workers"] = r["images_per_s"]
                res["ray"][f"ray_extract_end_to_end_img_s_{k}_workers"] = r["end_to_end_images_per_s"]
    if res["machine"]["gpus"] or a.device_figures:
        with section("device"):
            res["device"] = {"device": ", ".join(res["machine"]["gpus"]) or "CPU (forced by --device-figures)",
                             "extract_img_s": ext["extract_img_s"],
                             "finetune_img_s_float32": bft.bench_finetune_img_s(a, cache32, mixed=False),
                             "finetune_img_s_mixed_float16": bft.bench_finetune_img_s(a, cache32, mixed=True)}
    # Both fine-tuning paths with XLA, as the like-for-like head run: it fuses Adam's update of the head's weights.
    with section("cached_finetune"):
        res["cached_finetune"] = ft = bft.cached_finetune_speedup(os.path.join(work, "finetune"), a.ft_n, a.img_size,
                                                              a.batch, repeats=a.repeats, xla=True,
                                                              precisions=("float32", "bfloat16"))
    with section("head_kinds"):
        res["head_kinds"] = iteration.pooled_vs_flatten_epoch(cache32, work, epochs=1 + a.repeats)
        res["pooled_vs_flatten_epoch"] = res["head_kinds"]["pooled_vs_flatten_epoch"]
    with section("sweep"):
        res["sweep"] = iteration.sweep_s(cache32, work, a.sweep_trials, a.sweep_epochs)
        res[f"sweep_{a.sweep_trials}_s"] = res["sweep"]["seconds"]
    with section("tta"):
        res["tta"] = iteration.tta_flip_cost(data, a.img_size, a.batch, repeats=a.repeats)
    with section("report"):
        res["report"] = iteration.report_seconds(cache32, os.path.join(work, "head-float32"), data, work,
                                                 a.report_rows)
        res["report_s"] = res["report"]["report_s"]
    with section("exports"):  # model.keras against each export format and quantisation
        res["exports"] = exports.exports_section(cache32, os.path.join(work, "head-float32"), data,
                                                 os.path.join(work, "exports"), a.repeats,
                                                 exports.parse_exports(a.exports))
    with section("updates"):  # the incremental cache against a full extraction (bench/updates.py)
        res["updates"] = updates.updates_section(data, os.path.join(work, "updates"), a.img_size, a.batch)
    with section("checksums"):
        res["checksums"] = checksum_cost(repeats=a.repeats, folder=work)
        res["checksum_read_cost"] = res["checksums"]["checksum_read_cost"]
    res["roofline"] = limits.against_limits(res, head_parameters(feature_shape), HEAD_BATCH, feature_shape)
    for stage in ("extraction", "head_epoch", "cached_finetune", "end_to_end_finetune"):
        res[f"{stage}_roofline_fraction"] = res["roofline"][stage]["fraction"]
    res["bf16"] = limits.bf16_section(res, bf16_cache)
    res["targets"] = {
        "extract_vs_forward": check("extract_vs_forward", ext["extract_vs_forward"]),
        "head_epoch_speedup": check("head_epoch_speedup", res["recipe_epoch_s"] / res["head_epoch_s"]),
        "first_head_speedup": check("first_head_speedup", 5 * res["recipe_epoch_s"] /
                                    (ext["extract_s"] + 5 * res["head_epoch_s"])),
        "head_rss_growth": check("head_rss_growth", res["rss"]["head_rss_growth"]),
        "cached_finetune_speedup": check("cached_finetune_speedup", ft["cached_finetune_speedup"]),
        **{f"{stage}_roofline_fraction": check(f"{stage}_roofline_fraction", res[f"{stage}_roofline_fraction"])
           for stage in ("extraction", "head_epoch", "cached_finetune")},
    }
    if res["bf16"]["native_bf16"]:  # the 1.3x is a promise of native bf16 only; emulated, bf16 cannot be faster
        res["targets"]["bf16_extraction_speedup"] = check("bf16_extraction_speedup",
                                                          res["bf16"]["speedup_over_float32"]["extraction"])
    write_json(a.out, res)
    md = markdown(res)
    write_text(os.path.splitext(a.out)[0] + ".md", md)
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    print(f"wrote {a.out} and {os.path.splitext(a.out)[0]}.md")
    return 0
