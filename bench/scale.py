"""`make bench SCALE_N=25000`: stages 1 to 3 at Kaggle's size on this machine, and the time the whole train set takes.

Reads nothing (it generates its own rows and JPEGs). Writes artifacts/bench_scale.json and bench_scale.md; its scratch
folder (--work: ~7.5 GB at 25,000 rows and 150 px) is deleted at the end, on failure too.
Example: python -m bench --scale-n 25000 --img-size 150 --mem-budget 2G

A separate, longer mode than `make bench`, not in CI: 15 min at SCALE_N=3000 on 2 busy cores, so about 75 min
predicted at 25,000 there (most of it grows with the rows: the head's epochs and the fine-tuning epoch). Parts:
- cache: N rows of synthetic mixed7 and mixed6 features (bench/synthcache.py), written as stage 1 writes a cache;
- head: `make head EPOCHS=2` on it as a child process, streamed with MEM_BUDGET, with the logistic baseline;
- cached_finetune: one epoch of `make finetune FROM_CACHE=1`'s training on the N rows of mixed6 features (the
  project's model, feeds and fit; the equivalence check cannot hold on synthetic features, so it is not run);
- extraction: `make features` (LAYERS=mixed7) on --scale-images generated ~350x400 JPEGs, extrapolated to N.
Each part runs in its own process, so its peak RSS is its own. WEIGHTS=none: speed does not depend on weights.
`kaggle_estimate` turns the figures into the time of each stage on Kaggle's 25,000 train images, measured where
N = 25,000, else scaled linearly in rows, and says which.
"""
import contextlib
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from classify import stage as head_stage
from core import space
from core.files import write_json, write_text
from core.lock import output_lock
from core.runs import read_history
from extract import backbones
from extract.features import Settings as ExtractSettings, make_plan
from finetune import run as ft_run, train as ft_train

from .scalereport import KAGGLE_TRAIN, kaggle_estimate, markdown
from .synthcache import layer_shapes, write_synthetic_cache
from .timing import machine, median, peak_rss_mib, read_history_seconds, run_head_cli

RECIPE = backbones.get(backbones.DEFAULT)  # the Kaggle-size run measures the default backbone
FEATURE_LAYER = RECIPE.feature_layer
LAYERS = (FEATURE_LAYER, RECIPE.cached_cut)  # the head's layer (the cache's `features`), then cached fine-tuning's
JPEG_BYTES = 40_000  # room per generated ~350x400 JPEG, for the space check


@dataclass(frozen=True)
class ScaleOptions:
    """The Kaggle-size run's settings (python -m bench --help, "Kaggle-size run")."""

    n: int = KAGGLE_TRAIN
    img_size: int = 150
    mem_budget: str = head_stage.Settings.mem_budget  # stage 2's default: 25,000 rows at 150 px are streamed
    images: int = 2000
    head_epochs: int = 2
    head_batch: int = head_stage.DEFAULT_BATCH
    ft_batch: int = ft_run.DEFAULT_BATCH
    extract_batch: int = ExtractSettings.batch
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


def setup(img_size: int) -> tuple:
    """(bench.timing.machine(), the LAYERS' shapes and the backbone's weight count at `img_size`)."""
    return machine(), layer_shapes(img_size, LAYERS)


def build_cache(path, n, img_size, shapes, seed) -> dict:
    write_synthetic_cache(path, n, img_size, shapes, seed)
    return {"disk_bytes": folder_bytes(path)}


def cached_finetune_epoch(cache_path, run_dir, batch: int, seed: int) -> dict:
    """One epoch of FROM_CACHE=1's training (train + validation) on the cache's mixed6 rows, as finetune/cached.py
    and finetune/train.py run it: its model, ViewFeeds, compile, resumable fit and checkpoints; WEIGHTS=none.

    A fit on two batches first traces the train and val steps (`trace_s`), so that `epoch_s` is an epoch's cost
    without them: a run traces once, whatever its number of epochs."""
    from core.runs import RunState
    from finetune import model as fm
    from finetune.cached import ViewFeeds, build_cached_model

    with open_cache(cache_path, need_labels=True) as cache:
        model, trunk = fm.build_full_model(cache.config, fm.resolve_cache_weights(cache), FEATURE_LAYER,
                                           cache.feature_shape(FEATURE_LAYER))
        cached, _ = build_cached_model(model, trunk, RECIPE.cached_cut)
        ft_train.compile_for_finetuning(cached, ft_run.DEFAULT_LR, xla=False)  # XLA=0, stage 3's default
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        warm = ViewFeeds(cache, RECIPE.cached_cut, tr[:2 * batch], va[:batch], batch, seed, 1.0, False, pad_last=True)
        t0 = time.perf_counter()
        cached.fit(warm.train(), validation_data=warm.val(), epochs=1, verbose=0)  # Keras keeps the traced steps
        trace_s = time.perf_counter() - t0
        feeds = ViewFeeds(cache, RECIPE.cached_cut, tr, va, batch, seed, 1.0, False, pad_last=True)  # as CachedPath's
        run = RunState(run_dir, {"bench": "scale", "rows": len(cache)})
        ft_train.fit(cached, feeds.train(), feeds.val(), run, 1, ft_train.PATIENCE, feeds)
        row = run.rows()[0]
        disk = folder_bytes(run.dir)  # the epoch's checkpoints (backup and best weights)
        run.clear()
        trained = int(sum(w.numpy().size for w in cached.trainable_weights))
    return {"epoch_s": row["seconds"], "trace_s": trace_s, "train_rows": len(tr), "val_rows": len(va),
            "disk_bytes": disk, "trained_weights": trained}


def extraction(data, features, img_size: int, batch: int) -> dict:
    """`make features` (ENGINE=local, LAYERS=mixed7, WEIGHTS=none) of `data` into `features`, timed."""
    from extract.features import extract_features

    t0 = time.perf_counter()
    assert extract_features(make_plan(ExtractSettings(data=data, features=features, img_size=img_size,
                                                      weights="none", batch=batch))) == 0
    return {"seconds": time.perf_counter() - t0, "disk_bytes": folder_bytes(features)}


def run_scale(o: ScaleOptions) -> int:
    """The Kaggle-size run under a lock on bench_scale.json; writes it and bench_scale.md, prints the table."""
    with output_lock(o.out, "OUT"):  # python -m bench --scale-n N --out
        shutil.rmtree(o.work, ignore_errors=True)
        try:
            res = _run(o)
        finally:
            shutil.rmtree(o.work, ignore_errors=True)  # 7+ GB at 25,000 rows: never left behind
        write_json(o.out, res)
        md = markdown(res)
        write_text(os.path.splitext(o.out)[0] + ".md", md)
    print(md)
    print(f"wrote {o.out} and {os.path.splitext(o.out)[0]}.md")
    return 0


def _run(o: ScaleOptions) -> dict:
    # TensorFlow runs in child processes only, each measuring its own VmHWM (bench.timing.peak_rss_mib): this
    # process stays small (`parent_rss_mib`), and each figure is one part's alone.
    t0 = time.perf_counter()
    info, (shapes, backbone_weights) = in_child(setup, o.img_size)["result"]
    head_weights = space.head_weights(shapes[FEATURE_LAYER])
    cache_bytes = space.cache_bytes(o.n, shapes, "float32")
    needed = (cache_bytes + space.checkpoint_bytes(head_weights) + space.checkpoint_bytes(backbone_weights + head_weights)
              + space.cache_bytes(o.images, {FEATURE_LAYER: shapes[FEATURE_LAYER]}, "float32") + o.images * JPEG_BYTES)
    space.check_space(o.work, needed, "--work")
    os.makedirs(o.work)
    res = {"config": {**asdict(o), "layers": {l: list(s) for l, s in shapes.items()}, "weights": "none",
                      "head_flags": "make head's defaults (deterministic, no XLA), EPOCHS=head_epochs",
                      "kaggle_train_images": KAGGLE_TRAIN},
           "machine": info, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "section_s": {}}
    print(f"bench scale: {o.n:,} synthetic rows of {', '.join(f'{l} {s}' for l, s in shapes.items())} at "
          f"{o.img_size}px ({space.human(cache_bytes)}), MEM_BUDGET {o.mem_budget}; extraction on {o.images:,} JPEGs")
    res["section_s"]["setup"] = round(time.perf_counter() - t0, 1)
    path = os.path.join(o.work, "features.h5")
    with section(res, "cache"):
        c = in_child(build_cache, path, o.n, o.img_size, shapes, o.seed)
        disk = c["result"]["disk_bytes"]
        res["cache"] = {"rows": o.n, "seconds": c["wall_s"], "rows_per_s": o.n / c["wall_s"],
                        "peak_rss_mib": c["peak_rss_mib"], "disk_bytes": disk, "disk_bytes_per_row": disk / o.n}
    with section(res, "head"):
        res["head"], res["baseline"] = head_part(o, path)
    with section(res, "cached_finetune"):
        f = in_child(cached_finetune_epoch, path, os.path.join(o.work, "finetune"), o.ft_batch, o.seed)
        r = f["result"]
        res["cached_finetune"] = {
            "rows": o.n, "train_rows": r["train_rows"], "val_rows": r["val_rows"], "seconds": r["epoch_s"],
            "seconds_note": "one epoch (train + validation) after the steps were traced; clean rows only (AUG_VIEWS=0): "
                            "a view read costs what a clean read does", "trace_s": r["trace_s"],
            "trace_note": "a fit on two batches before it: tracing the train and val steps, once per run",
            "rows_per_s": r["train_rows"] / r["epoch_s"], "peak_rss_mib": f["peak_rss_mib"],
            "disk_bytes": r["disk_bytes"], "disk_note": "the epoch's checkpoints (MODEL_DIR/_work)",
            "wall_s": f["wall_s"], "trained_weights": r["trained_weights"], "batch": o.ft_batch}
    os.remove(path)  # 7+ GB: gone before the extraction part writes its own
    with section(res, "extraction"):
        res["extraction"] = extraction_part(o)
    res["parent_rss_mib"] = peak_rss_mib()
    res["kaggle_estimate"] = kaggle_estimate(res)
    return res


@contextlib.contextmanager
def section(res, name):
    """Wall seconds of one part into res["section_s"], so that a slow run shows where its time went."""
    t0 = time.perf_counter()
    yield
    res["section_s"][name] = round(time.perf_counter() - t0, 1)


def head_part(o: ScaleOptions, path) -> tuple:
    """`make head EPOCHS=head_epochs` on the synthetic cache, as a child process: (head figures, baseline figures)."""
    head_dir = os.path.join(o.work, "head")
    t0 = time.perf_counter()
    with Watch(head_dir, o.head_epochs, "make head (child)") as watch:
        m, rss = run_head_cli(path, head_dir, "--layer", FEATURE_LAYER, "--epochs", str(o.head_epochs),
                              "--batch", str(o.head_batch), "--mem-budget", o.mem_budget)
    wall = time.perf_counter() - t0
    epochs, h, b = read_history_seconds(head_dir), m["head"], m["baseline"]
    epoch_s = median(epochs[1:]) if len(epochs) > 1 else epochs[0]  # the first epoch also traces the step
    if h["data"] != "streamed":
        print(f"note: {o.n:,} rows fit MEM_BUDGET={o.mem_budget}: the head held them in memory, unlike "
              f"{KAGGLE_TRAIN:,} rows at 150 px with the default 2G")
    head = {"rows": o.n, "train_rows": h["n_train"], "val_rows": h["n_val"], "epochs": len(epochs),
            "epoch_s_runs": epochs, "seconds": epoch_s, "seconds_note": "per epoch (train + validation), the median "
            "after the first, which also traces", "rows_per_s": h["n_train"] / epoch_s, "data": h["data"],
            "streamed": h["data"] == "streamed", "wall_s": wall, "peak_rss_mib": rss, "disk_bytes": watch.peak,
            "disk_note": "HEAD_DIR's peak size while training (checkpoints)", "val_accuracy": h["val_accuracy"]}
    base = {"rows": b["n_train"], "seconds": b["seconds"], "rows_per_s": b["n_train"] / b["seconds"],
            "peak_rss_mib": rss, "rss_note": "the `make head` process's: the baseline runs in it, first",
            "disk_bytes": folder_bytes(os.path.join(head_dir, "baseline.joblib")),
            "val_accuracy": b["val_accuracy"], "C": b.get("C")}
    return head, base


def extraction_part(o: ScaleOptions) -> dict:
    """`make features` on one batch and on o.images generated JPEGs, each in its own process; the difference gives
    the rate per image, the rest the fixed cost (imports, backbone build, tracing), both extrapolated to o.n."""
    from extract.synth import make_dataset

    t0 = time.perf_counter()
    sets = {}
    for name, n, seed in (("small", o.extract_batch, 1), ("full", o.images, 0)):
        data = os.path.join(o.work, f"images-{name}")
        make_dataset(data, n=n, layout="kaggle", size=(320, 420), seed=seed, junk=False)  # ~350x400, as Kaggle's
        sets[name] = (n, data)
    gen_s = time.perf_counter() - t0
    runs = {name: in_child(extraction, data, os.path.join(o.work, f"extract-{name}.h5"), o.img_size, o.extract_batch)
            for name, (n, data) in sets.items()}
    (n0, _), (n1, _) = sets["small"], sets["full"]
    t_0, t_1 = runs["small"]["result"]["seconds"], runs["full"]["result"]["seconds"]
    rate = (n1 - n0) / (t_1 - t_0) if t_1 > t_0 and n1 > n0 else n1 / t_1
    fixed = max(t_1 - n1 / rate, 0.0)
    disk = runs["full"]["result"]["disk_bytes"]
    return {"rows": n1, "images": n1, "seconds": t_1, "images_per_s": rate, "rows_per_s": rate,
            "fixed_s": fixed, "small_run": {"images": n0, "seconds": t_0}, "peak_rss_mib": runs["full"]["peak_rss_mib"],
            "disk_bytes": disk, "generate_jpegs_s": gen_s, "layers": [FEATURE_LAYER], "batch": o.extract_batch,
            "seconds_note": "extract_features' wall time in a fresh process: imports, backbone build and tracing included",
            "extrapolated": True, "images_extrapolated": o.n, "seconds_extrapolated": fixed + o.n / rate,
            "disk_bytes_extrapolated": disk / n1 * o.n,
            "formula": (f"seconds(N) = fixed_s + N / images_per_s, from make features on {n0} and {n1} images: "
                        f"images_per_s = ({n1} - {n0}) / (seconds - small_run.seconds), fixed_s = seconds - {n1} / "
                        f"images_per_s")}
