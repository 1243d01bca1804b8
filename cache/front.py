"""A cache whose rows live in segment files: the front file FEATURES maps each of its rows onto a segment's row.

Reads the segments' shapes; writes FEATURES through `<FEATURES>.partial` and a rename (layout: README, "The cache
file"). The segments are complete single-file caches (cache/writer.py) next to FEATURES: the first one is the cache
as it was first built (a hard link to it), each update adds one holding only the images it had to extract.
Example: python -c "from cache import open_cache; from cache.front import row_sources as r; print(r(open_cache('f.h5')))"

Why a front file: an update must leave the old cache readable until the new one is whole, and must not copy the
rows it keeps (gigabytes at Kaggle size). A front file is a few megabytes of view (paths, labels, split, skipped,
inputs) and virtual datasets over rows that never move, so any update is one new segment (or none) and one rename.
Rows the view leaves out (EXCLUDE, removed or changed images) stay in their segment, unread.
"""
import json
import os

import h5py
import numpy as np

from .format import VIEWS_EVERY_ROW, WriteSummary, chunk_rows_for, partial_path, write_attrs
from .integrity import LIBVER, fixed_strings, inputs_table, small_dataset, write_footer



def segment_path(features, k: int) -> str:
    """Segment k of FEATURES: `<stem>.seg-000k.h5` next to it."""
    return f"{os.path.splitext(str(features))[0]}.seg-{k:04d}.h5"


def _runs(seg, row):
    """Maximal runs of front rows whose sources are consecutive rows of one segment: (front lo, segment, row lo, n)."""
    if not len(seg):
        return []
    breaks = np.flatnonzero((np.diff(seg) != 0) | (np.diff(row) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(seg)]])
    return [(int(a), int(seg[a]), int(row[a]), int(b - a)) for a, b in zip(starts, ends)]


def _virtual(f, name, n, shape, dtype, runs, segments, sizes):
    layout = h5py.VirtualLayout((n,) + tuple(shape), dtype)
    for lo, k, r0, m in runs:
        # A relative source name: HDF5 looks for it next to the front file, so the folder can move.
        src = h5py.VirtualSource(segments[k]["file"], name, (sizes[k],) + tuple(shape))
        layout[lo:lo + m] = src[r0:r0 + m]
    ds = f.create_virtual_dataset(name, layout, fillvalue=np.nan)
    # A virtual dataset has no chunks of its own; readers still want a row block to read at a time.
    ds.attrs["chunk_rows"] = chunk_rows_for(shape, dtype)
    return ds


def write_front(features, config: dict, fp: str, provenance: dict, segments: list, store: dict, view: dict,
                inputs, changes: list) -> WriteSummary:
    """Write FEATURES as a front file over `segments` ([{file, fingerprint, rows}], files next to FEATURES).

    `store`: {relative path: (segment, row)} of every image with features, the view's rows and the ones it leaves
    out (EXCLUDE) alike, so that a later update finds them; `view`: labels, split, paths and skipped ([(path,
    reason)]) of its rows, each path a key of `store`; `inputs`: (relative paths, sizes) of every input; `changes`:
    the update log (`changes_since`)."""
    features = str(features)
    folder = os.path.dirname(os.path.abspath(features))
    seg = np.array([store[p][0] for p in view["paths"]], np.int64)
    row = np.array([store[p][1] for p in view["paths"]], np.int64)
    n, runs = len(seg), _runs(seg, row)
    shapes, views = {}, {}
    sizes = [s["rows"] for s in segments]
    with h5py.File(os.path.join(folder, segments[0]["file"]), "r") as s0:
        for name in config["layers"]:
            shapes[name] = (s0[f"layers/{name}"].shape[1:], s0[f"layers/{name}"].dtype)
        for name in (s0["views"] if "views" in s0 else []):
            views[name] = (s0[f"views/{name}"].shape[1:], s0[f"views/{name}"].dtype)
    tmp = partial_path(features)
    with h5py.File(tmp, "w", libver=LIBVER) as f:
        write_attrs(f, config, fp, provenance)
        for name, (shape, dtype) in shapes.items():
            _virtual(f, f"layers/{name}", n, shape, dtype, runs, segments, sizes)
        for name, (shape, dtype) in views.items():
            _virtual(f, f"views/{name}", n, shape, dtype, runs, segments, sizes).attrs["rows"] = VIEWS_EVERY_ROW
        f["features"] = f[f"layers/{config['layer']}"]  # hard link, as in the single-file cache
        small_dataset(f, "labels", np.asarray(view["labels"], np.int8))
        small_dataset(f, "paths", *fixed_strings(list(view["paths"])))
        small_dataset(f, "split", np.asarray(view["split"], np.int8))
        skipped = np.array(view["skipped"], dtype=object).reshape(-1, 2)
        small_dataset(f, "skipped", *fixed_strings(skipped))
        held = sorted(store)
        small_dataset(f, "store/path", *fixed_strings(held))
        small_dataset(f, "store/segment", np.array([store[p][0] for p in held], np.int32))
        small_dataset(f, "store/row", np.array([store[p][1] for p in held], np.int64))
        inputs_table(f, *inputs)  # (paths, sizes, sha256s or [])
        # `shard_files`: what open_cache checks before any read (cache/shards.check_sources), as for ENGINE=ray.
        f.attrs["shard_files"] = json.dumps([{k: s[k] for k in ("file", "fingerprint", "rows")} for s in segments])
        f.attrs["changes"] = json.dumps(changes)
        write_footer(f, n, len(skipped))
    os.replace(tmp, features)
    return WriteSummary(features, n, [tuple(r) for r in skipped.tolist()])


def row_sources(cache) -> tuple:
    """(segments, {relative path: (segment, row)}) of an open FeatureCache: a front file's store, or a single-file
    cache as one segment (itself, under its segment name once an update links it there)."""
    f = cache.f
    if "store" in f:
        paths = [p.decode() if isinstance(p, bytes) else p for p in f["store/path"][:]]
        return (json.loads(f.attrs["shard_files"]),
                dict(zip(paths, zip(f["store/segment"][:].tolist(), f["store/row"][:].tolist()))))
    if "shard_files" in f.attrs:  # ENGINE=ray's front file: its shards are its segments, concatenated in order
        shards = json.loads(f.attrs["shard_files"])
        starts = np.cumsum([0] + [s["rows"] for s in shards])
        seg = np.searchsorted(starts, np.arange(len(cache)), side="right") - 1
        return shards, {p: (int(k), int(r - starts[k])) for r, (p, k) in enumerate(zip(cache.paths, seg))}
    segment = {"file": os.path.basename(segment_path(cache.path, 0)), "fingerprint": cache.fingerprint,
               "rows": len(cache)}
    return [segment], {p: (0, r) for r, p in enumerate(cache.paths)}


def change_log(cache) -> list:
    """The update log of an open FeatureCache ([] for a cache never updated): [{from, to, counts}], oldest first."""
    return json.loads(cache.f.attrs.get("changes", "[]"))


def changes_since(cache, fp: str) -> str:
    """What the updates since the cache had fingerprint `fp` changed, in words ('' when none is recorded)."""
    log = change_log(cache)
    starts = [i for i, c in enumerate(log) if c["from"] == fp]
    if not starts:
        return ""
    total = {}
    for c in log[starts[-1]:]:
        for k, v in c["counts"].items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{v:,} {k}" for k, v in total.items() if v) or "no rows or labels"
