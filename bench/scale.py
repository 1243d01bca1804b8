"""`make bench SCALE_N=25000`: one full iteration at Kaggle's size, every part run for real, and the small bench's
per-row cost measured beside it in the same run.

Reads nothing (it generates its own JPEGs). Writes artifacts/bench_scale.json and bench_scale.md; its scratch
folder (--work: ~17 GB at 25,000 images and 150 px) is deleted at the end, on failure too.
Example: python -m bench --scale-n 25000 --img-size 150

Not in CI: about 40 min on 2 cores (docs/bench_scale.json). The parts, each in its own process (its peak RSS is its
own), WEIGHTS=none (speed does not depend on the weights' values):
- images: N generated ~350x400 JPEGs (Kaggle's sizes), and --small of them apart, the small bench's set;
- extraction: `make features LAYERS=<feature layer>,<cached cut>` of both sets in float32, then of the N images in
  bfloat16 (only where the CPU has native bf16) and with --other-backbone;
- head: `make head` (the flatten head, MEM_BUDGET) on both caches; `make head HEAD=pooled` on the big one;
- report: `make report` on the big cache and its head; sweep: a --sweep-trials `make sweep` of --sweep-epochs each;
- cached_finetune: epochs of `make finetune FROM_CACHE=1`'s training (its model, feeds, compile and fit) on both
  caches' cut rows, in float32 and, where native, bfloat16; and the small bench's end-to-end against cached epochs
  (bench/finetuning.py), for the FLOP ceiling.
`scale_penalty` = seconds per train row at N / seconds per train row on the small set, for the head and for cached
fine-tuning (target: at most 1.1); `roofline` puts both against this machine's peaks at both sizes.
"""
import contextlib
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from classify import stage as head_stage
from core import space
from core.files import write_json, write_text
from core.lock import output_lock
from core.precision import native_bf16
from core.runs import read_history
from extract import backbones
from extract.features import Settings as ExtractSettings, make_plan
from finetune import run as ft_run, train as ft_train

from .limits import training_stage
from .scalereport import KAGGLE_TRAIN, kaggle_estimate, markdown
from .timing import machine, peak_rss_mib, read_history_seconds, run_head_cli, steady_epoch_s

RECIPE = backbones.get(backbones.DEFAULT)  # the Kaggle-size run measures the default backbone
FEATURE_LAYER = RECIPE.feature_layer
LAYERS = (FEATURE_LAYER, RECIPE.cached_cut)  # the head's layer (the cache's `features`), then cached fine-tuning's
JPEG_BYTES = 40_000  # room per generated ~350x400 JPEG, for the space check
# Timed epochs of each path in the small bench's end-to-end against cached comparison, after the tracing one: its
# cached epochs take 1.6-1.8 s on 2 cores, and one slow epoch (2.2 s in the run kept) would move a median of two by
# a sixth
REPEATS_SMALL = 4


@dataclass(frozen=True)
class ScaleOptions:
    """The Kaggle-size run's settings (python -m bench --help, "Kaggle-size run")."""

    n: int = KAGGLE_TRAIN
    img_size: int = 150
    mem_budget: str = head_stage.Settings.mem_budget  # stage 2's default (auto)
    small: int = 600  # the small bench's images (make bench's BENCH_N), measured in the same run
    head_epochs: int = 2
    small_epochs: int = 4  # epochs on the small set: its epochs are short, so the median of 3 after the first
    head_batch: int = head_stage.DEFAULT_BATCH
    ft_batch: int = ft_run.DEFAULT_BATCH
    extract_batch: int = ExtractSettings.batch
    sweep_trials: int = 20
    sweep_epochs: int = 2  # of make sweep's 20: 20 trials x 20 epochs of 20,000 rows would take most of a day here
    ft_n: int = 320  # images of the small bench's end-to-end against cached epochs (bench/finetuning.py)
    other_backbone: str = "mobilenet_v2"
    seed: int = 42
    work: str = "artifacts/bench_scale_work"
    out: str = "artifacts/bench_scale.json"


def folder_bytes(path) -> int:
    """Bytes allocated on disk under `path` (a file or a folder), skipping files that vanish while counting."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # replaced or removed by the writer meanwhile
                pass
    return total


class Watch:
    """While a child process writes `folder`: its peak size on disk, and a bar of the epochs its history.csv logs."""

    def __init__(self, folder, epochs: int, desc: str):
        from tqdm import tqdm

        self.folder, self.peak, self.done = folder, 0, threading.Event()
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch")
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while True:
            self.peak = max(self.peak, folder_bytes(self.folder))
            n = len(read_history(os.path.join(self.folder, "_work", "history.csv")))  # gone once the run ends
            if n > self.bar.n:
                self.bar.update(n - self.bar.n)
            if self.done.wait(0.5):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.bar.close()


def _measured(fn, *args) -> dict:
    """Run in the child: fn's result, the child's wall seconds from the call and its peak RSS."""
    t0 = time.perf_counter()
    out = fn(*args)
    return {"result": out, "wall_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def in_child(fn, *args) -> dict:
    """{result: fn(*args), wall_s, peak_rss_mib} from a fresh (spawned) process, so that the peak RSS is its own;
    its errors are raised here."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(_measured, fn, *args).result()


def setup(img_size: int, peak_seconds: float = 2.0) -> dict:
    """This machine, its peaks (bench/peaks.py), the layers' shapes and weights, and the flatten head's work."""
    import keras

    from classify.head import build_head
    from extract import backbone

    from .peaks import machine_peaks
    from .profile import gflops_per_example

    model = backbone.build_backbone(RECIPE, img_size, list(LAYERS), "none")
    shapes = {l: tuple(int(d) for d in o.shape[1:]) for l, o in zip(LAYERS, model.outputs)}
    n_weights = model.count_params()
    head = build_head(shapes[FEATURE_LAYER])
    out = {"machine": machine(), "peaks": machine_peaks(peak_seconds), "shapes": shapes, "backbone_weights": n_weights,
           "head_gflops": gflops_per_example(head, shapes[FEATURE_LAYER]), "head_weights": head.count_params()}
    keras.backend.clear_session()
    return out


def _generate_shard(root, n, seed, offset):
    """`n` ~350x400 JPEGs (bench images, as Kaggle's) named cat|dog.<offset + i>.jpg directly under `root`."""
    from extract.synth import make_dataset

    tmp = os.path.join(root, f"_shard{offset}")
    for rel in make_dataset(tmp, n=n, layout="kaggle", size=(320, 420), seed=seed, junk=False):
        cls, i, ext = rel.split(".")
        os.replace(os.path.join(tmp, rel), os.path.join(root, f"{cls}.{offset + int(i)}.{ext}"))
    os.rmdir(tmp)
    return n


def generate_images(root, n: int, seed: int) -> float:
    """`n` generated JPEGs under `root`, one shard per core (PIL's encoding holds the GIL); returns the seconds."""
    from tqdm import tqdm

    os.makedirs(root)
    t0 = time.perf_counter()
    # Even shard sizes keep each class's names unique: shard offsets are even, and labels alternate within a shard.
    shards = max(1, min(os.cpu_count() or 1, n // 256))
    size = -(-n // shards // 2) * 2
    with ProcessPoolExecutor(shards, mp_context=multiprocessing.get_context("spawn")) as ex, \
            tqdm(total=n, desc=f"generate {root}", unit="image") as bar:
        jobs = [ex.submit(_generate_shard, root, min(size, n - lo), seed * 1000 + k, lo)
                for k, lo in enumerate(range(0, n, size))]
        for j in jobs:
            bar.update(j.result())
    return time.perf_counter() - t0


def extraction(data, features, img_size: int, batch: int, backbone: str, layers, precision: str) -> dict:
    """`make features` (ENGINE=local, WEIGHTS=none) of `data` into `features`, timed from the call."""
    from extract.features import extract_features

    t0 = time.perf_counter()
    assert extract_features(make_plan(ExtractSettings(
        data=data, features=features, backbone=backbone, img_size=img_size, layers=tuple(layers), weights="none",
        batch=batch, precision=precision))) == 0
    return {"seconds": time.perf_counter() - t0, "disk_bytes": folder_bytes(features)}


def cached_finetune_epochs(cache_path, run_dir, batch: int, seed: int, epochs: int, precision: str,
                           mem_budget: str) -> dict:
    """`epochs` epochs of FROM_CACHE=1's training (train + validation) on the cache's cut rows, as finetune/cached.py
    and finetune/train.py run them: its model (built under `precision`), ViewFeeds in memory or streamed under
    MEM_BUDGET, compile, resumable fit and checkpoints; WEIGHTS=none, clean rows (AUG_VIEWS=0: a view read costs
    what a clean read does).

    A fit on two batches first traces the train and val steps (`trace_s`), so that each epoch's seconds are its cost
    without them: a run traces once, whatever its number of epochs."""
    from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
    from core.precision import building
    from core.runs import RunState
    from finetune import model as fm
    from finetune.cached import ViewFeeds, build_cached_model, hold_views

    with open_cache(cache_path, need_labels=True) as cache, building(precision):
        model, trunk = fm.build_full_model(cache.config, fm.resolve_cache_weights(cache), FEATURE_LAYER,
                                           cache.feature_shape(FEATURE_LAYER))
        cached, _ = build_cached_model(model, trunk, RECIPE.cached_cut)
        ft_train.compile_for_finetuning(cached, ft_run.DEFAULT_LR, xla=False)  # XLA=0, stage 3's default
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        warm = ViewFeeds(cache, RECIPE.cached_cut, tr[:2 * batch], va[:batch], batch, seed, 1.0, False, pad_last=True)
        t0 = time.perf_counter()
        cached.fit(warm.train(), validation_data=warm.val(), epochs=1, verbose=0)  # Keras keeps the traced steps
        trace_s = time.perf_counter() - t0
        in_memory, note = hold_views(cache, RECIPE.cached_cut, tr, va, mem_budget)  # as CachedPath decides
        feeds = ViewFeeds(cache, RECIPE.cached_cut, tr, va, batch, seed, 1.0, in_memory, pad_last=True)
        run = RunState(run_dir, {"bench": "scale", "rows": len(cache)})
        ft_train.fit(cached, feeds.train(), feeds.val(), run, epochs, epochs + 1, feeds)  # no early stop
        seconds = [r["seconds"] for r in run.rows()]
        disk = folder_bytes(run.dir)  # the epochs' checkpoints (backup and best weights)
        run.clear()
        trained = int(sum(w.numpy().size for w in cached.trainable_weights))
    return {"epoch_s_runs": seconds, "trace_s": trace_s, "train_rows": len(tr), "val_rows": len(va),
            "disk_bytes": disk, "trained_weights": trained, "data": feeds.source, "data_note": note}


def report_part(cache_path, head_dir, data, report_dir) -> dict:
    """`make report` (no MODEL_DIR) on the cache and its head: summary.json's seconds per part."""
    from report.build import build_report

    s = build_report(cache_path, head_dir, "", data, report_dir)
    return {"seconds": s["seconds"]["total"], "parts_s": s["seconds"], "rows": s["rows"]["labelled"],
            "disk_bytes": folder_bytes(report_dir)}


def sweep_part(cache_path, sweep_dir, trials: int, epochs: int, seed: int, mem_budget: str) -> dict:
    """`make sweep TRIALS=trials EPOCHS=epochs` on the cache, in a fresh SWEEP_DIR; how its trials ended."""
    from classify.sweep.search import run_sweep

    t0 = time.perf_counter()
    c = run_sweep(cache_path, sweep_dir, trials, epochs=epochs, seed=seed, mem_budget=mem_budget)
    return {"seconds": time.perf_counter() - t0, "trials": trials, "epochs": epochs, "complete": c["complete"],
            "pruned": c["pruned"], "disk_bytes": folder_bytes(sweep_dir)}


def ft_small_bench(work, n_images: int, img_size: int, batch: int, mem_budget: str) -> dict:
    """The small bench's end-to-end against cached fine-tuning epochs (float32, bench/finetuning.py)."""
    from .finetuning import cached_finetune_speedup

    return cached_finetune_speedup(work, n_images, img_size, batch, repeats=REPEATS_SMALL, mem_budget=mem_budget)


def run_scale(o: ScaleOptions) -> int:
    """The Kaggle-size run under a lock on bench_scale.json; writes it and bench_scale.md, prints the table."""
    with output_lock(o.out, "OUT"):  # python -m bench --scale-n N --out
        shutil.rmtree(o.work, ignore_errors=True)
        try:
            res = _run(o)
        finally:
            shutil.rmtree(o.work, ignore_errors=True)  # 17 GB at 25,000 images: never left behind
        write_json(o.out, res)
        with contextlib.suppress(FileNotFoundError):
            os.remove(o.out + ".partial")
        md = markdown(res)
        write_text(os.path.splitext(o.out)[0] + ".md", md)
    print(md)
    print(f"wrote {o.out} and {os.path.splitext(o.out)[0]}.md")
    return 0


@contextlib.contextmanager
def section(res, name):
    """Wall seconds of one part into res["section_s"], so that a slow run shows where its time went."""
    t0 = time.perf_counter()
    print(f"--- bench scale: {name}", flush=True)
    yield
    res["section_s"][name] = round(time.perf_counter() - t0, 1)
    write_json(res["config"]["out"] + ".partial", res)  # a long run's figures so far survive a crash


def _run(o: ScaleOptions) -> dict:
    # TensorFlow runs in child processes only, each measuring its own VmHWM (bench.timing.peak_rss_mib): this
    # process stays small (`parent_rss_mib`), and each figure is one part's alone.
    t0 = time.perf_counter()
    s = in_child(setup, o.img_size)["result"]
    shapes = s["shapes"]
    bf16 = native_bf16()
    cache_bytes = space.cache_bytes(o.n + o.small, shapes, "float32")
    needed = (cache_bytes * (2 if bf16 else 1) + (o.n + o.small + o.ft_n) * JPEG_BYTES
              + 2 * space.checkpoint_bytes(s["head_weights"]) + space.checkpoint_bytes(s["backbone_weights"]))
    space.check_space(o.work, needed, "--work")
    os.makedirs(o.work)
    res = {"config": {**asdict(o), "layers": {l: list(v) for l, v in shapes.items()}, "weights": "none",
                      "head_flags": "make head's defaults (deterministic, no XLA) but EPOCHS and BATCH",
                      "kaggle_train_images": KAGGLE_TRAIN},
           "machine": s["machine"], "machine_peaks": s["peaks"], "native_bf16": bf16,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "section_s": {}}
    print(f"bench scale: {o.n:,} and {o.small:,} generated images at {o.img_size}px, LAYERS={','.join(LAYERS)} "
          f"({space.human(cache_bytes)}), MEM_BUDGET={o.mem_budget}; native bf16: {bf16}")
    res["section_s"]["setup"] = round(time.perf_counter() - t0, 1)
    w = lambda *p: os.path.join(o.work, *p)  # noqa: E731
    sets = {"small": (o.small, w("images-small"), w("small.h5")), "big": (o.n, w("images"), w("features.h5"))}
    with section(res, "images"):
        res["images"] = {name: {"images": n, "seconds": generate_images(root, n, o.seed + k),
                                "disk_bytes": folder_bytes(root)} for k, (name, (n, root, _)) in enumerate(sets.items())}
    with section(res, "extraction"):
        res["extraction"] = extraction_part(o, sets, bf16)
    with section(res, "head"):
        res["head"], res["baseline"] = {}, {}
        for name, epochs in (("small", o.small_epochs), ("big", o.head_epochs)):
            res["head"][name], res["baseline"][name] = head_part(o, sets[name][2], w(f"head-{name}"), epochs)
        res["head"]["big_pooled"], _ = head_part(o, sets["big"][2], w("head-pooled"), o.head_epochs, "--head", "pooled")
    with section(res, "report"):
        r = in_child(report_part, sets["big"][2], w("head-big"), sets["big"][1], w("report"))
        res["report"] = {**r["result"], "peak_rss_mib": r["peak_rss_mib"], "wall_s": r["wall_s"]}
    with section(res, "sweep"):
        r = in_child(sweep_part, sets["big"][2], w("sweep"), o.sweep_trials, o.sweep_epochs, o.seed, o.mem_budget)
        res["sweep"] = {**r["result"], "peak_rss_mib": r["peak_rss_mib"], "rows": o.n}
    with section(res, "cached_finetune"):
        res["cached_finetune"] = finetune_part(o, sets, bf16)
    with section(res, "updates"):  # the incremental cache at both sizes (bench/updates.py): RSS flat in the rows
        from .updates import updates_section

        res["updates"] = {name: updates_section(root, w(f"updates-{name}"), o.img_size, 32)
                          for name, (_, root, _) in sets.items()}
    with section(res, "finetune_small_bench"):
        res["finetune_small_bench"] = in_child(ft_small_bench, w("ft-small"), o.ft_n, o.img_size, o.ft_batch,
                                                   o.mem_budget)["result"]
    res["scale_penalty"] = scale_penalty(res)
    res["roofline"] = roofline(res, s)
    res["parent_rss_mib"] = peak_rss_mib()
    res["kaggle_estimate"] = kaggle_estimate(res)
    return res


def extraction_part(o: ScaleOptions, sets: dict, bf16: bool) -> dict:
    """`make features` of each set in float32; of the big set in bfloat16 (where native) and with the other backbone.
    The caches the later parts read stay; the others are removed once measured."""
    out = {}
    other = backbones.get(o.other_backbone)
    runs = [(name, n, root, path, RECIPE.name, LAYERS, "float32") for name, (n, root, path) in sets.items()]
    n, root, _ = sets["big"]
    if bf16:
        runs.append(("big_bfloat16", n, root, os.path.join(o.work, "features-bf16.h5"), RECIPE.name, LAYERS,
                     "bfloat16"))
    for p in ("float32", "bfloat16") if bf16 else ("float32",):
        runs.append((f"{other.name}_{p}", n, root, os.path.join(o.work, f"{other.name}-{p}.h5"), other.name,
                     (other.feature_layer,), p))
    for name, n, root, path, backbone, layers, precision in runs:
        r = in_child(extraction, root, path, o.img_size, o.extract_batch, backbone, layers, precision)
        secs = r["result"]["seconds"]
        out[name] = {"backbone": backbone, "layers": list(layers), "precision": precision, "rows": n, "images": n,
                     "seconds": secs, "rows_per_s": n / secs, "peak_rss_mib": r["peak_rss_mib"],
                     "disk_bytes": r["result"]["disk_bytes"], "batch": o.extract_batch,
                     "seconds_note": "extract_features' wall time in a fresh process: imports, backbone build and "
                                     "tracing included"}
        if name not in sets:
            os.remove(path)
    return out


def head_part(o: ScaleOptions, path, head_dir, epochs: int, *extra) -> tuple:
    """`make head EPOCHS=epochs` on one cache, as a child process: (head figures, baseline figures)."""
    t0 = time.perf_counter()
    with Watch(head_dir, epochs, f"make head {' '.join(extra)} (child)") as watch:
        m, rss = run_head_cli(path, head_dir, "--layer", FEATURE_LAYER, "--epochs", str(epochs),
                              "--batch", str(o.head_batch), "--mem-budget", o.mem_budget, *extra)
    wall = time.perf_counter() - t0
    secs, h, b = read_history_seconds(head_dir), m["head"], m["baseline"]
    epoch_s = steady_epoch_s(secs)
    n = h["n_train"] + h["n_val"]
    head = {"kind": h["kind"], "rows": n, "train_rows": h["n_train"], "val_rows": h["n_val"], "epochs": len(secs),
            "epoch_s_runs": secs, "seconds": epoch_s, "seconds_note": "per epoch (train + validation), the median "
            "after the first, which also traces", "s_per_train_row": epoch_s / h["n_train"],
            "rows_per_s": h["n_train"] / epoch_s, "data": h["data"], "data_note": m["config"].get("data_note"),
            "wall_s": wall, "peak_rss_mib": rss, "disk_bytes": watch.peak, "parameters": h["parameters"],
            "disk_note": "HEAD_DIR's peak size while training (checkpoints)", "val_accuracy": h["val_accuracy"]}
    base = {"rows": b["n_train"], "seconds": b["seconds"], "rows_per_s": b["n_train"] / b["seconds"],
            "peak_rss_mib": rss, "rss_note": "the `make head` process's: the baseline runs in it, first",
            "disk_bytes": folder_bytes(os.path.join(head_dir, "baseline.joblib")),
            "val_accuracy": b["val_accuracy"], "C": b.get("C")}
    return head, base


def finetune_part(o: ScaleOptions, sets: dict, bf16: bool) -> dict:
    """Cached fine-tuning epochs on the small and the big cache in float32, and on the big one in bf16 if native."""
    out = {}
    runs = [("small", o.small_epochs, "float32"), ("big", 1, "float32")] + ([("big_bfloat16", 1, "bfloat16")]
                                                                            if bf16 else [])
    for name, epochs, precision in runs:
        path = sets[name.split("_")[0]][2]
        r = in_child(cached_finetune_epochs, path, os.path.join(o.work, f"ft-{name}"), o.ft_batch, o.seed, epochs,
                     precision, o.mem_budget)
        f = r["result"]
        secs = steady_epoch_s(f["epoch_s_runs"])
        out[name] = {**f, "precision": precision, "rows": f["train_rows"] + f["val_rows"], "seconds": secs,
                     "seconds_note": "per epoch (train + validation) after the steps were traced; the median after "
                                     "the first where there are several", "s_per_train_row": secs / f["train_rows"],
                     "rows_per_s": f["train_rows"] / secs, "peak_rss_mib": r["peak_rss_mib"], "wall_s": r["wall_s"],
                     "batch": o.ft_batch, "disk_note": "the epochs' checkpoints (MODEL_DIR/_work)"}
    return out


def scale_penalty(res) -> dict:
    """Seconds per train row at N over seconds per train row on the small set, measured in this run."""
    h, f = res["head"], res["cached_finetune"]
    out = {"head": h["big"]["s_per_train_row"] / h["small"]["s_per_train_row"],
           "cached_finetune": f["big"]["s_per_train_row"] / f["small"]["s_per_train_row"], "target": 1.1,
           "note": (f"seconds per train row: {h['big']['train_rows']:,} train rows over {h['small']['train_rows']:,}, "
                    f"same machine, same run, same settings (head: MEM_BUDGET={res['config']['mem_budget']}, "
                    f"{h['big']['data']} / {h['small']['data']}; cached fine-tuning: float32, "
                    f"{f['big']['data']} / {f['small']['data']})")}
    out["met"] = bool(max(out["head"], out["cached_finetune"]) <= out["target"])
    return out


def roofline(res, s) -> dict:
    """The head's and cached fine-tuning's epochs against this machine's peaks, at both sizes (bench/limits.py's
    training_stage, as `make bench` counts them), and cached against end-to-end epochs on the small bench's set,
    against their FLOP ceiling."""
    peaks = s["peaks"]
    gemm, bw = peaks["gemm_gflops_float32"], peaks["memory_gb_s"]
    sb = res["finetune_small_bench"]

    def stage(gflops, params, batch, n_train, n_val, measured, **extra):
        out = training_stage(gflops, params, batch, n_train, n_val, measured, gemm, bw)
        return {**extra, **out, "roofline_s": out["roofline"]["roofline_s"]}

    out = {"peaks": {"gemm_gflops_float32": gemm, "memory_gb_s": bw}}
    for name, part, gflops, params, batch in (
            ("head", res["head"], s["head_gflops"], s["head_weights"], res["config"]["head_batch"]),
            ("cached_finetune", res["cached_finetune"], sb["gflops_per_example"]["cached"], sb["trained_weights"],
             res["config"]["ft_batch"])):
        for size in ("small", "big"):
            p = part[size]
            out[f"{name}_{size}"] = stage(gflops, params, batch, p["train_rows"], p["val_rows"], p["seconds"],
                                          rows=p["rows"])
    out["cached_vs_end_to_end"] = {
        "images": sb["n_images"], "end_to_end_epoch_s": sb["end_to_end_epoch_s"], "cached_epoch_s": sb["cached_epoch_s"],
        "speedup": sb["cached_finetune_speedup"], "flop_ceiling": sb["flop_ceiling"],
        "fraction_of_ceiling": sb["cached_finetune_speedup"] / sb["flop_ceiling"],
        "note": f"bench/finetuning.py on the small bench's set: float32, AUG_VIEWS=2, XLA=0, median of "
                f"{REPEATS_SMALL} epochs after the first; {sb['cached_data']}"}
    out["cached_finetune_small_bench"] = stage(sb["gflops_per_example"]["cached"], sb["trained_weights"], sb["batch"],
                                               sb["n_train"], sb["n_val"], sb["cached_epoch_s"])
    return out
