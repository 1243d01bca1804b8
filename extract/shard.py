"""Stage 1 on Ray Data: shard workers each write one `<stem>-0000k.h5`; the driver joins them in FEATURES (a VDS).

Reads: DATA. Writes, next to FEATURES: the shard files, `<stem>.manifest.json`, `<stem>.skipped.txt`, and FEATURES
itself as the front file with the single-file layout (README, "Scaling out"; cache/shards.py).
Example: python -m extract --engine ray --shards 8 --data data/train --features artifacts/features.h5

With RAY_ADDRESS set it joins that cluster (the checkout, the venv, DATA and FEATURES must be at the same paths on
every node, e.g. a shared filesystem); otherwise it starts a local Ray. A rerun checks every shard (complete,
fingerprint, manifest sha256) and recomputes only the missing, damaged or stale ones; with nothing to recompute it
never starts Ray.

Why Ray Data, for work whose unit is a whole shard: `map_batches` over a dataset of shard numbers (one block, and
one batch, per shard) with a callable class gives a fixed pool of actors that each build the Keras backbone once
and keep it across shards, places them by `num_cpus`/`num_gpus`, hands the next shard to whichever actor is free,
and restarts an actor that dies and retries its block. Each shard is written by the one actor that holds it, with
the same resumable `CacheWriter` as the local engine, and its HDF5 file is opened and closed inside that actor.
"""
import json
import math
import os
import shutil
import socket
import sys
import time
import traceback

import numpy as np

from cache import CacheWriter, cache_state, fingerprint, stale_reason
from cache.shards import (ShardFailed, inspect_shard, manifest_path, read_manifest, shard_path, shard_ranges,
                          write_front, write_manifest)
from core import WorkflowError, precision, space
from core.files import file_hash
from core.versions import package_versions
from extract import backbone, backbones, images, update, verify
from extract.features import (Plan, Settings, make_forward, make_plan, provenance, resolve_config, resume_line,
                              run_extraction, split_of, write_skipped)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = "make features ENGINE=ray"
ACTOR_START_TIMEOUT_S = 600  # Ray start-up, TF import, model build and tracing on a busy node take a minute or two
INSTALL_HINT = ("ENGINE=ray needs Ray, an optional extra: run `make install SCALE=1` (pins in "
                "requirements-scale.txt), or use ENGINE=local")


# -- the driver's side ---------------------------------------------------------------------------------------
def connect(num_cpus=None) -> bool:
    """Join the cluster at RAY_ADDRESS, or start a local Ray; return True if this call did it (then shut it down)."""
    try:
        import ray
    except ImportError:
        raise WorkflowError(INSTALL_HINT) from None
    if ray.is_initialized():
        return False
    # Workers import this checkout's packages; their tqdm bars are off because N processes' bars interleave
    # into one garbled line on the driver: Ray Data's own progress counts finished shards instead.
    env = {"PYTHONPATH": ROOT, "TQDM_DISABLE": "1",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, runtime_env={"env_vars": env})
        else:
            # "local": a new instance even if another one runs on this machine (plain init() would join it)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as e:
        if not address:
            raise WorkflowError(f"cannot start a local Ray ({str(e)[:160]}); see `ray status`, or use ENGINE=local")
        raise WorkflowError(f"RAY_ADDRESS={address}: cannot join the Ray cluster ({str(e)[:160]}); start it with "
                            f"`ray start --head` on the head node (with token authentication, Ray's default, also "
                            f"set RAY_AUTH_MODE=token here and the cluster's token in ~/.ray/auth_token or "
                            f"RAY_AUTH_TOKEN), or unset RAY_ADDRESS for a local Ray") from None
    return True


def pool_plan(nodes, todo: int, workers=None, cpus_per_worker=None):
    """(workers, CPUs each, GPUs each) for `todo` shards on `nodes` ([(cpus, gpus)] of the live nodes).

    One worker per GPU where there are GPUs. On CPUs, at most one worker per CPU and per shard, and each worker
    gets the same whole number of CPUs, small enough that the pool fits on the smallest node.
    """
    nodes = [(int(c), int(g)) for c, g in nodes if c > 0]
    total_cpus, total_gpus = sum(c for c, _ in nodes), sum(g for _, g in nodes)
    if total_gpus:
        cpus = cpus_per_worker or max(1, min(c // g for c, g in nodes if g))
        return min(todo, workers or total_gpus), cpus, 1
    if cpus_per_worker is None:
        per_node = math.ceil(min(todo, workers or total_cpus) / len(nodes))
        cpus_per_worker = max(1, min(c for c, _ in nodes) // per_node)
    fits = sum(c // cpus_per_worker for c, _ in nodes)
    return max(1, min(todo, workers or fits, fits)), cpus_per_worker, 0


def plan(s: Settings, imgs, split, config):
    """Each shard's spec: its file, its input range [lo, hi) of the sorted inputs, and its own config."""
    specs = []
    for k, (lo, hi) in enumerate(shard_ranges(len(imgs.paths), s.shards)):
        part = images.ImageSet(imgs.root, imgs.layout, imgs.paths[lo:hi], imgs.labels[lo:hi], imgs.class_names)
        # A shard is a single-file cache of its own inputs: its fingerprint follows what decides its rows (its
        # files and sizes, their split, its place) and the run's settings, so a changed file elsewhere keeps it.
        cfg = {**config, "n_inputs": hi - lo,
               "inputs_fingerprint": verify.inputs_fingerprint(part.root, part.paths, s.verify),  # VERIFY, per shard
               "split_fingerprint": fingerprint(split[lo:hi].tolist()), "shard": k, "shards": s.shards,
               "shard_inputs": [lo, hi]}
        specs.append({"index": k, "file": shard_path(os.path.abspath(s.features), k), "lo": lo, "hi": hi,
                      "config": cfg, "fingerprint": fingerprint(cfg)})
    return specs


def run_sharded(run_plan: Plan, workers=None, cpus_per_worker=None) -> dict:
    """Stage 1 with ENGINE=ray: check every shard, recompute the bad ones on Ray, then write manifest and front."""
    s, imgs = run_plan.settings, run_plan.imgs
    if not 1 <= s.shards <= len(imgs.paths):
        raise WorkflowError(f"SHARDS={s.shards}: must be between 1 and the number of images in DATA={s.data} "
                            f"({len(imgs.paths)}), e.g. SHARDS=2")
    split = split_of(imgs, s.val_split, s.seed)  # once, over all inputs: the local run's split
    # The plan's precision: the workers build in it (a worker may lack the GPU).
    weights_info, resolved = run_plan.weights_info, run_plan.precision
    print(precision.describe(s.precision, resolved, use="inference"))
    config = {**resolve_config(run_plan), "shards": s.shards}
    fp = fingerprint(config)
    specs = plan(s, imgs, split, config)

    manifest = read_manifest(s.features) or {}
    recorded = {e["file"]: e for e in manifest.get("shards", [])}
    entries, todo = {}, {}
    for spec in specs:
        rec = recorded.get(os.path.basename(spec["file"]))
        entry, why = inspect_shard(spec["file"], spec["fingerprint"],
                                   rec if rec and rec.get("fingerprint") == spec["fingerprint"] else None)
        if entry:
            entries[spec["index"]] = entry
        else:
            todo[spec["index"]] = why
    state = cache_state(s.features, fp)
    recorded_as_is = all(recorded.get(e["file"], {}).get("sha256") == e["sha256"] for e in entries.values())
    if not todo and state == "up-to-date" and manifest.get("fingerprint") == fp and recorded_as_is:
        print(f"{s.features}: up to date ({len(imgs.paths)} inputs in {s.shards} shards, every shard checked "
              f"against {manifest_path(s.features)}, fingerprint {fp[:12]}); nothing to do")
        return {"computed": [], "images": 0, "wall_s": 0.0, "loop_s": 0.0, "workers": 0, "results": []}
    if state not in ("missing", "up-to-date"):
        why = (stale_reason(s.features, config, dict(zip(imgs.paths, run_plan.sizes))) if state == "stale"
               else "damaged?")
        print(f"{s.features}: {state} ({why}); rebuilding from shards (ENGINE=ray recomputes whole shards; "
              f"ENGINE=local extracts only new or changed images)")
    for k, why in todo.items():
        if why != "missing":
            print(f"{shard_path(s.features, k)}: {why}; recomputing it")

    t0, results, pool = time.perf_counter(), [], (0, 0, 0)
    if todo:
        print(f"{s.features}: computing {len(todo)} of {s.shards} shards on Ray")
        job = {"specs": {sp["index"]: sp for sp in specs if sp["index"] in todo}, "root": os.path.abspath(imgs.root),
               "layout": imgs.layout, "paths": list(imgs.paths), "labels": imgs.labels.tolist(),
               "split": split.tolist(), "class_names": list(imgs.class_names), "img_size": run_plan.img_size,
               "backbone": run_plan.spec.name,
               "layers": config["layers"], "weights_info": weights_info, "batch": s.batch, "dtype": s.dtype,
               "precision": resolved, "precision_requested": s.precision}
        results, pool = _compute(job, sorted(todo), workers, cpus_per_worker)
        _raise_failures(s.features, todo, results)
    wall = time.perf_counter() - t0

    for r in results:  # just written by a worker, which hashed it while it was warm in its page cache
        entry, why = inspect_shard(specs[r["shard"]]["file"], specs[r["shard"]]["fingerprint"], hashed=r["sha256"])
        if not entry:
            raise ShardFailed(f"{specs[r['shard']]['file']}: shard worker on {r['host']} reported it done, but here "
                              f"it is {why}; FEATURES must be on a filesystem that every Ray node shares")
        entries[r["shard"]] = entry
    ordered = [{"index": sp["index"], "inputs": [sp["lo"], sp["hi"]], **entries[sp["index"]]} for sp in specs]
    digests = {e["backbone_digest"] for e in ordered}
    if len(digests) != 1:  # every worker builds its own backbone: same weights file and seed, same numbers?
        bad = ", ".join(f"{e['file']}={e['backbone_digest'][:12]}" for e in ordered)
        raise WorkflowError(f"{s.features}: shards were computed with different backbone weights ({bad}); make the "
                            f"weights file and package versions the same on every node, delete the shards and rerun")
    record = provenance(imgs, digests.pop(), COMMAND, s.precision)
    old = set(recorded) - {e["file"] for e in ordered}
    write_manifest(s.features, fp, ordered)
    # last: FEATURES appears only when whole
    summary = write_front(s.features, config, fp, record, ordered, (imgs.paths, run_plan.sizes))
    folder = os.path.dirname(os.path.abspath(s.features))
    for name in old:  # shards of an earlier SHARDS that this front file no longer uses
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    update.drop_segments(s.features)  # segments of an ENGINE=local update of this cache: the shards hold every row

    skipped_txt = write_skipped(s.features, summary.skipped)
    n_img = sum(r["images"] for r in results)
    loop = (max(r["t1"] for r in results) - min(r["t0"] for r in results)) if results else 0.0
    this_run = (f"{len(results)} computed this run by {pool[0]} Ray worker{'s' * (pool[0] != 1)} ({pool[1]} CPU"
                f"{', 1 GPU' if pool[2] else ''} each): {n_img:,} images in {wall:.1f}s, {n_img / wall:.1f} images/s "
                f"including Ray and model start-up" if results else "none recomputed, front file rebuilt")
    print(f"{s.features}: {summary.rows:,} cached, {len(summary.skipped):,} skipped (see {skipped_txt}) in "
          f"{s.shards} shards; {this_run}")
    return {"computed": sorted(r["shard"] for r in results), "images": n_img, "wall_s": wall, "loop_s": loop,
            "workers": pool[0], "cpus_per_worker": pool[1], "results": results}


def _compute(job, todo, workers, cpus_per_worker):
    """Run the shards `todo` on a fixed pool of ShardWorker actors; return (one result row per shard, pool)."""
    started = connect()  # first: it turns a missing Ray into the install hint
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.wait_for_min_actors_s
    try:
        nodes = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]]
        if not any(c > 0 for c, _ in nodes):
            raise WorkflowError("the Ray cluster has no live node with CPUs; check `ray status`")
        pool = pool_plan(nodes, len(todo), workers, cpus_per_worker)
        # One block per shard, so that each shard is one task for one actor. One task in flight per actor: a
        # shard is minutes of work, and a second one queued behind it would wait while another actor sits idle.
        # Start every actor before handing out the first shard: else the first one up takes the shards while the
        # others still build their model, and a pool that does not fit the cluster fails with a timeout, not hangs.
        ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        rows = ds.map_batches(ShardWorker, batch_size=1, batch_format="numpy", fn_constructor_kwargs={"job": job},
                              compute=ray.data.ActorPoolStrategy(size=pool[0], max_tasks_in_flight_per_actor=1),
                              num_cpus=pool[1], num_gpus=pool[2]).take_all()
    except ray.exceptions.RayError as e:  # past Ray's own retries: e.g. a worker that cannot build the backbone
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        raise ShardFailed(f"Ray could not finish the shards ({last}; full log above); shards that finished are kept: "
                          f"fix the cause and rerun the same command, which recomputes only the rest") from None
    finally:
        ctx.wait_for_min_actors_s = saved
        if started:
            ray.shutdown()
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows], pool


def _raise_failures(features, todo, results):
    done = {r["shard"] for r in results if not r["error"]}
    failed = [r for r in results if r["error"]]
    lost = sorted(set(todo) - done - {r["shard"] for r in failed})
    if not failed and not lost:
        return
    for r in failed:
        print(f"shard {r['shard']:05d} failed on {r['host']}:\n{r['error']}", file=sys.stderr)
    full = [r for r in failed if any(t in r["error"] for t in ("No space left on device", "errno = 28"))]
    if full:  # a full disk is the user's to fix: one line, like the local engine's (each shard keeps its .partial)
        raise space.NoSpace(f"no space left while writing {shard_path(features, full[0]['shard'])} on "
                            f"{full[0]['host']} ({len(full)} of {len(todo)} shards): free space, then rerun the same "
                            f"command; the finished shards and each shard's .partial are kept")
    what = [f"{shard_path(features, r['shard'])} on {r['host']}: {r['error'].strip().splitlines()[-1]}"
            for r in failed] + [f"{shard_path(features, k)}: no result from its worker" for k in lost]
    raise ShardFailed(f"{len(what)} of {len(todo)} shards failed ({'; '.join(what)}); the {len(done)} that finished "
                      f"are kept: fix the cause and rerun the same command, which recomputes only the rest")


# -- the worker's side ---------------------------------------------------------------------------------------
class ShardWorker:
    """A Ray Data actor: builds the backbone once, then extracts whole shards, each with its own HDF5 writer."""

    def __init__(self, job):
        import ray
        import tensorflow as tf

        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
        if cpus:  # TF sizes its thread pools to the whole node; N actors on one node would each take every core
            tf.config.threading.set_intra_op_parallelism_threads(cpus)
            tf.config.threading.set_inter_op_parallelism_threads(cpus)
        self.job = job
        with precision.building(job["precision"]):
            self.model = backbone.build_backbone(backbones.get(job["backbone"]), job["img_size"], job["layers"],
                                                 job["weights_info"])
        self.forward = make_forward(self.model)
        # Trace the graph now (seconds on a CPU), not inside the first shard: shard timings then measure extraction.
        self.forward(np.zeros((job["batch"], job["img_size"], job["img_size"], 3), np.uint8))
        self.shapes = {l: tuple(o.shape[1:]) for l, o in zip(job["layers"], self.model.outputs)}
        self.provenance = {"backbone_digest": backbone.weights_digest(self.model),
                           "versions": json.dumps(package_versions()), "command": COMMAND,
                           "host": socket.gethostname(), **precision.record(job["precision_requested"])}

    def __call__(self, batch):
        out = []
        for k in batch["shard"]:
            try:
                out.append(self.extract(int(k)))
            except Exception:  # reported to the driver, which names the shard; the other shards go on
                out.append({"shard": int(k), "error": traceback.format_exc(), "rows": 0, "skipped": 0, "sha256": "",
                            "images": 0, "resumed_at": 0, "t0": 0.0, "t1": 0.0, "cpu_s": 0.0})
            out[-1].update(host=socket.gethostname(), pid=os.getpid())
        return {key: np.array([o[key] for o in out]) for key in out[0]}

    def extract(self, k: int) -> dict:
        """Extract shard `k` into its file (resuming its `.partial` if there is one); return its result row."""
        j, s = self.job, self.job["specs"][k]
        lo, hi = s["lo"], s["hi"]
        imgs = images.ImageSet(j["root"], j["layout"], j["paths"][lo:hi], np.asarray(j["labels"][lo:hi], np.int8),
                               j["class_names"])
        writer = CacheWriter(s["file"], s["config"], imgs.paths, imgs.labels, j["split"][lo:hi], self.shapes,
                             j["dtype"], self.provenance)
        try:
            start, cpu0 = writer.start(), time.process_time()
            if line := resume_line(s["file"], writer, start, len(imgs.paths)):
                print(line)  # Ray forwards a worker's output to the driver's terminal
            n_done, n_skip, dt = run_extraction(self.forward, j["layers"], imgs, writer, start, j["img_size"],
                                                j["batch"])
            t1, cpu = time.time(), time.process_time() - cpu0
            summary = writer.finalize()
        finally:
            writer.close()
        return {"shard": k, "error": "", "rows": summary.rows, "skipped": len(summary.skipped),
                "sha256": file_hash(s["file"]), "images": n_done + n_skip, "resumed_at": start,
                "t0": t1 - dt, "t1": t1, "cpu_s": cpu}


# -- measurement ---------------------------------------------------------------------------------------------
def throughput(data_dir, work_dir, workers: int, img_size: int = 150, batch: int = 32,
               cpus_per_worker: int = 1) -> dict:
    """Images/s of a fresh sharded extraction of `data_dir` by `workers` local Ray workers (one shard each).

    WEIGHTS=none. `images_per_s` counts from the first worker's first batch to the last worker's last commit
    (decode, forward pass and HDF5 writes; the graph is traced before, at actor start); `end_to_end_images_per_s`
    also counts Ray's and the actors' start-up, model builds and tracing. `worker_cores_busy` is each worker's
    process CPU time over its wall time. Starts (and stops) a local Ray unless one is already connected.
    """
    out = os.path.join(str(work_dir), f"throughput-{workers}w")
    shutil.rmtree(out, ignore_errors=True)  # fresh: a resumed or up-to-date run would measure nothing
    settings = Settings(data=str(data_dir), features=os.path.join(out, "features.h5"), img_size=img_size,
                        weights="none", batch=batch, engine="ray", shards=workers)
    started = connect(num_cpus=max(os.cpu_count() or 1, workers * cpus_per_worker))
    try:
        r = run_sharded(make_plan(settings), workers=workers, cpus_per_worker=cpus_per_worker)
    finally:
        if started:
            import ray

            ray.shutdown()
    if r["workers"] != workers:
        raise WorkflowError(f"throughput: asked for {workers} workers, Ray ran {r['workers']}; give Ray at least "
                            f"{workers * cpus_per_worker} CPUs")
    return {"workers": workers, "cpus_per_worker": cpus_per_worker, "images": r["images"], "img_size": img_size,
            "batch": batch, "images_per_s": r["images"] / r["loop_s"], "loop_s": r["loop_s"], "wall_s": r["wall_s"],
            "end_to_end_images_per_s": r["images"] / r["wall_s"],
            "worker_images_per_s": [x["images"] / (x["t1"] - x["t0"]) for x in r["results"]],
            "worker_cores_busy": [x["cpu_s"] / (x["t1"] - x["t0"]) for x in r["results"]]}
