"""The HDF5 feature cache: the one contract between the stages (layout documented in README, "The cache file").

Reads and writes one HDF5 file (default `artifacts/features.h5`). Nothing else in the project opens it directly.
Example: python -c "from cache import open_cache; print(open_cache('artifacts/features.h5').summary())"

Crash safety: work goes to `<path>.partial`. Every dataset touched while extracting is allocated up front
(early allocation, never filled), so a commit is raw in-place writes, a flush, then the two counters
(`rows_committed`, `inputs_committed`) and another flush. A SIGKILL loses at most the uncommitted batch; the
file is renamed to `<path>` only when finalised, so no reader ever sees a half-written cache as complete.

Augmented views (`make features AUG_VIEWS=K`, extract/views.py) go to `views/<layer>`, (n_train, K, h, w, c): one
entry per train row, in row order, allocated, committed and compacted with the rows themselves.
"""
import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass

import h5py
import numpy as np

from .errors import CacheIncomplete, CacheMismatch

FORMAT = "dogcat-feature-cache"
FORMAT_VERSION = 1
SPLIT_TRAIN, SPLIT_VAL, SPLIT_NONE = 0, 1, -1
CHUNK_BYTES = 4 << 20  # ~4 MiB row chunks: big sequential reads, few chunk-index entries
REASON_BYTES = 160  # skip reasons are short ("cannot identify image file"); fixed width keeps commits in place
_STR = h5py.string_dtype("utf-8")


def fingerprint(obj) -> str:
    """sha256 of the canonical JSON of `obj`: the identity of a configuration or a file list."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def partial_path(path) -> str:
    return f"{path}.partial"


def chunk_rows_for(row_shape, dtype) -> int:
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // row_bytes)


def _early_dcpl():
    # Allocate every chunk at creation and never write fill values: later writes then change raw data only,
    # never the chunk index, which is what makes a SIGKILL between flushes harmless.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


@dataclass
class WriteSummary:
    path: str
    rows: int
    skipped: list  # [(relpath, reason)]


class CacheWriter:
    """Resumable, append-only writer of one cache file (see module docstring for the commit protocol)."""

    def __init__(self, path, config: dict, paths, labels, split, layer_shapes: dict, dtype="float32",
                 provenance=None, view_shapes=None, n_views=0):
        self.path, self.tmp = str(path), partial_path(path)
        self.config = dict(config)  # identity: its fingerprint decides resume / up-to-date / stale
        self.provenance = dict(provenance or {})  # recorded, not identity: versions, backbone digest
        self.fp = fingerprint(self.config)
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int8)
        self.split = np.asarray(split, np.int8)
        self.layer_shapes = {k: tuple(int(d) for d in v) for k, v in layer_shapes.items()}
        self.dtype = np.dtype(dtype)
        # K augmented views per train row at these layers; val and unlabelled rows get none (they are never
        # augmented), so the views datasets hold only train rows, in row order.
        self.view_shapes = {k: tuple(int(d) for d in v) for k, v in (view_shapes or {}).items()}
        self.n_views = int(n_views) if self.view_shapes else 0
        self.views_done = 0  # view entries committed: the train rows among the committed rows
        self.f = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> int:
        """Open the partial file if it belongs to this configuration, else start afresh; return the resume input index."""
        if os.path.exists(self.tmp):
            try:
                f = h5py.File(self.tmp, "r+")
                # `_progress` goes during finalize: a partial without it was killed there, and is redone whole.
                if (f.attrs.get("fingerprint") == self.fp and f.attrs.get("format") == FORMAT and "_progress" in f
                        and "inputs_committed" in f.attrs):
                    self.f = f
                    if self.view_shapes and "_progress" in f:  # derived, not stored: no third counter to commit
                        done = f["_progress/row_input"][:int(f.attrs["rows_committed"])]
                        self.views_done = int((self.split[done] == SPLIT_TRAIN).sum())
                    return int(f.attrs["inputs_committed"])
                f.close()
            except OSError:
                pass  # unreadable partial (killed while finalising): start over, nothing committed is lost
            os.remove(self.tmp)
        self._create()
        return 0

    def _create(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.tmp)), exist_ok=True)
        n = len(self.paths)
        f = h5py.File(self.tmp, "w")
        _write_attrs(f, self.config, self.fp, self.provenance)
        f.attrs["complete"] = False
        f.attrs["rows_committed"] = 0
        f.attrs["inputs_committed"] = 0
        for name, shape in self.layer_shapes.items():
            cr = chunk_rows_for(shape, self.dtype)
            f.create_dataset(f"layers/{name}", shape=(max(n, 1),) + shape, maxshape=(max(n, 1),) + shape,
                             chunks=(min(cr, max(n, 1)),) + shape, dtype=self.dtype, dcpl=_early_dcpl())
        n_train = max(int((self.split == SPLIT_TRAIN).sum()), 1)
        for name, shape in self.view_shapes.items():
            # One chunk holds `cr` rows of one view: a read of view v touches no other view's bytes.
            cr = chunk_rows_for(shape, self.dtype)
            ds = f.create_dataset(f"views/{name}", shape=(n_train, self.n_views) + shape,
                                  maxshape=(n_train, self.n_views) + shape, chunks=(min(cr, n_train), 1) + shape,
                                  dtype=self.dtype, dcpl=_early_dcpl())
            ds.attrs["rows"] = "train rows only, in row order; FeatureCache.view_rows maps a row to its entry"
        self.views_done = 0
        g = f.create_group("_progress")
        g.create_dataset("row_input", shape=(max(n, 1),), dtype=np.int64, dcpl=_early_dcpl())
        g.create_dataset("reason", shape=(max(n, 1),), dtype=f"S{REASON_BYTES}", dcpl=_early_dcpl())
        f.flush()
        self.f = f

    def commit(self, input_idx, feats: dict, skipped, inputs_done: int, views=None):
        """Append rows for candidates `input_idx` (in order), record `skipped` [(input index, reason)], then commit.

        With views, `views[layer]` is (t, K, h, w, c) for the t train rows among `input_idx`, in the same order.
        """
        f = self.f
        r0 = int(f.attrs["rows_committed"])
        k = len(input_idx)
        n_train = int((self.split[np.asarray(input_idx, np.int64)] == SPLIT_TRAIN).sum()) if k else 0
        assert bool(self.view_shapes) == (views is not None), "views must come with every commit, and only then"
        if k:
            for name, arr in feats.items():
                f[f"layers/{name}"][r0:r0 + k] = np.asarray(arr, self.dtype)
            v0 = self.views_done
            for name, arr in (views or {}).items():
                assert len(arr) == n_train, f"views/{name}: {len(arr)} entries for {n_train} train rows"
                if n_train:
                    f[f"views/{name}"][v0:v0 + n_train] = np.asarray(arr, self.dtype)
            f["_progress/row_input"][r0:r0 + k] = np.asarray(input_idx, np.int64)
        reason = f["_progress/reason"]
        for i, why in skipped:
            reason[i] = why.encode("utf-8", "replace")[:REASON_BYTES]
        f.flush()  # data first, counters second: a kill in between leaves the old counters, hence old rows
        f.attrs["rows_committed"] = r0 + k
        f.attrs["inputs_committed"] = int(inputs_done)
        f.flush()
        self.views_done += n_train if self.view_shapes else 0

    def finalize(self) -> WriteSummary:
        """Compact the per-row datasets, mark complete and rename into place atomically."""
        f = self.f
        n_rows = int(f.attrs["rows_committed"])
        assert int(f.attrs["inputs_committed"]) == len(self.paths), "finalize before all inputs were committed"
        rows = f["_progress/row_input"][:n_rows] if n_rows else np.zeros(0, np.int64)
        done = np.zeros(len(self.paths), bool)
        done[rows] = True
        reasons = f["_progress/reason"][:len(self.paths)] if self.paths else []
        skipped = [(self.paths[i], reasons[i].decode("utf-8", "replace")) for i in np.flatnonzero(~done)]
        for name in ("features", "labels", "paths", "split", "skipped"):
            if name in f:  # a previous finalise was killed half-way: redo it
                del f[name]
        for name in self.layer_shapes:
            f[f"layers/{name}"].resize(n_rows, axis=0)
        n_train = int((self.split[rows] == SPLIT_TRAIN).sum())
        for name in self.view_shapes:
            f[f"views/{name}"].resize(n_train, axis=0)
        f["features"] = f[f"layers/{self.config['layer']}"]  # hard link: the primary layer, no copy
        f.create_dataset("labels", data=self.labels[rows])
        f.create_dataset("paths", data=np.array([self.paths[i] for i in rows], dtype=object), dtype=_STR)
        f.create_dataset("split", data=self.split[rows])
        f.create_dataset("skipped", data=np.array(skipped, dtype=object).reshape(-1, 2), dtype=_STR,
                         maxshape=(None, 2))
        del f["_progress"]
        f.attrs["n_rows"] = n_rows
        f.attrs["n_skipped"] = len(skipped)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["complete"] = True
        f.flush()
        f.close()
        self.f = None
        os.replace(self.tmp, self.path)
        return WriteSummary(self.path, n_rows, skipped)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


class BackgroundCommits:
    """`writer.commit` calls run in order on one thread, so that HDF5 writes overlap the next forward pass.

    At most `depth` batches wait in the queue: a SIGKILL loses those and the one being written, never a committed
    one. Leaving the `with` block waits for every queued commit, then re-raises a commit's error, if any.
    """

    def __init__(self, writer: CacheWriter, depth: int = 2):
        self.writer, self.queue, self.error = writer, queue.Queue(depth), None
        self.thread = threading.Thread(target=self._run, name="cache-commits", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def _run(self):
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after a failed commit nothing more is written: rows stay contiguous
                try:
                    self.writer.commit(*item[0], **item[1])
                except BaseException as e:  # handed to the main thread, which raises it
                    self.error = e

    def commit(self, *args, **kwargs):
        """Queue `writer.commit(*args, **kwargs)`; blocks while `depth` commits wait (the writer sets the pace)."""
        if self.error is not None:
            raise self.error
        self.queue.put((args, kwargs))

    def __exit__(self, exc_type, *_):
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc_type is None:
            raise self.error


def _write_attrs(f, config, fp, provenance):
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["fingerprint"] = fp
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    for key, value in {**config, **provenance}.items():  # flat copies so that `h5dump -A` / h5py users can read them at a glance
        f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


# -- reading ---------------------------------------------------------------------------------------------
class FeatureCache:
    """A complete cache opened read-only. Arrays other than the features are small and loaded eagerly."""

    def __init__(self, path):
        self.path = str(path)
        self.f = h5py.File(self.path, "r")
        self.config = json.loads(self.f.attrs["config"])
        self.provenance = json.loads(self.f.attrs["provenance"])
        self.fingerprint = str(self.f.attrs["fingerprint"])
        self.layer = self.config["layer"]
        self.layers = list(self.config["layers"])
        self.class_names = list(self.config["class_names"])
        self.labels = self.f["labels"][:].astype(np.int64)
        self.split = self.f["split"][:].astype(np.int64)
        self.paths = [p.decode() if isinstance(p, bytes) else p for p in self.f["paths"][:]]
        self.skipped = [tuple(x.decode() if isinstance(x, bytes) else x for x in row) for row in self.f["skipped"][:]]
        self.view_layers = sorted(self.f["views"]) if "views" in self.f else []
        # views/<layer> holds the train rows only, in row order: entry of row r, or -1 for a row without views.
        is_train = self.split == SPLIT_TRAIN
        self.view_rows = np.where(is_train, np.cumsum(is_train) - 1, -1)

    def __len__(self):
        return len(self.labels)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.f.close()

    def features(self, layer=None) -> h5py.Dataset:
        return self.f[f"layers/{layer or self.layer}"]

    def feature_shape(self, layer=None):
        return tuple(self.features(layer).shape[1:])

    def chunk_rows(self, layer=None) -> int:
        ds = self.features(layer)
        # A sharded cache's front file holds virtual datasets, which have no chunks: it records the row block.
        return int(ds.chunks[0] if ds.chunks else ds.attrs["chunk_rows"])

    def rows(self, split) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def nbytes(self, rows, layer=None) -> int:
        ds = self.features(layer)
        return len(rows) * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize

    def read(self, rows, layer=None, dtype=np.float32) -> np.ndarray:
        """Rows in the order given, read as whole chunks (one contiguous slice per chunk touched, never per row)."""
        ds = self.features(layer)
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows),) + ds.shape[1:], dtype)
        cr = self.chunk_rows(layer)
        chunk_of = rows // cr
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == c)
            lo = int(c) * cr
            block = ds[lo:min(lo + cr, ds.shape[0])]
            out[sel] = block[rows[sel] - lo]
        return out

    def n_views(self, layer=None) -> int:
        """K, the augmented views stored per train row at `layer` (0 when the cache has none there)."""
        name = f"views/{layer or self.layer}"
        return int(self.f[name].shape[1]) if name in self.f else 0

    def read_views(self, rows, view_idx, layer=None, dtype=np.float32) -> np.ndarray:
        """Augmented view `view_idx[i]` (0..K-1; one int for all) of train row `rows[i]`, in the order given."""
        layer = layer or self.layer
        if self.n_views(layer) == 0:
            raise CacheMismatch(f"{self.path}: no augmented views at layer {layer!r}; rebuild the cache with "
                                f"`make features LAYERS={','.join(self.layers)} AUG_VIEWS=2 FEATURES={self.path}`")
        ds = self.f[f"views/{layer}"]
        rows = np.asarray(rows, np.int64)
        view_idx = np.broadcast_to(np.asarray(view_idx, np.int64), rows.shape)
        pos = self.view_rows[rows]
        if (pos < 0).any():
            raise ValueError(f"rows {rows[pos < 0][:5].tolist()} are not train rows: only train rows have views")
        if ((view_idx < 0) | (view_idx >= ds.shape[1])).any():
            raise ValueError(f"view_idx must be in 0..{ds.shape[1] - 1}, got {sorted(set(view_idx.tolist()))}")
        out = np.empty((len(rows),) + ds.shape[2:], dtype)
        cr = ds.chunks[1] == 1 and ds.chunks[0]
        assert cr, "views/<layer> is chunked one view per chunk (CacheWriter)"
        # Whole (chunk, view) slabs, as `read`: one contiguous read each. Listing rows instead (h5py point
        # selections) measured 30x slower for a 4 MiB chunk, though it reads fewer bytes.
        key = (pos // cr) * ds.shape[1] + view_idx
        for k in np.unique(key):
            sel = np.flatnonzero(key == k)
            c, v = divmod(int(k), ds.shape[1])
            block = ds[c * cr:min((c + 1) * cr, ds.shape[0]), v]
            out[sel] = block[pos[sel] - c * cr]
        return out

    def summary(self) -> str:
        counts = {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}
        return (f"{self.path}: {len(self)} rows x {self.feature_shape()} {self.features().dtype} at layer "
                f"{self.layer!r}, {counts}, train={len(self.rows(SPLIT_TRAIN))} val={len(self.rows(SPLIT_VAL))} "
                f"unlabelled={len(self.rows(SPLIT_NONE))}, skipped={len(self.skipped)}")


def epoch_windows(rows, chunk_rows: int, seed: int, epoch: int, window_chunks: int = 8):
    """One epoch's shuffled order of `rows`, as a list of index arrays, each drawn from `window_chunks` whole chunks.

    Shuffling whole chunks, then rows within a window of chunks, gives a well-mixed order that can still be read
    from disk a chunk at a time. The in-memory and the streaming training paths both follow this order, so the
    same seed gives the same batches either way. It depends only on (seed, epoch), so a resumed run continues it.
    """
    rng = np.random.default_rng([seed, epoch])
    rows = np.asarray(rows, np.int64)
    chunk_of = rows // chunk_rows
    chunks = np.unique(chunk_of)
    rng.shuffle(chunks)
    out = []
    for i in range(0, len(chunks), window_chunks):
        sel = rows[np.isin(chunk_of, chunks[i:i + window_chunks])]
        out.append(rng.permutation(sel))
    return out


def open_cache(path, *, layer=None, need_labels=False, fix="make features") -> FeatureCache:
    """Open a complete cache or raise CacheIncomplete/CacheMismatch with the command that fixes it."""
    path = str(path)
    if not os.path.exists(path):
        if os.path.exists(partial_path(path)):
            raise CacheIncomplete(f"{path}: only a half-written cache ({partial_path(path)}) exists; "
                                  f"rerun `{fix} FEATURES={path}` to finish it")
        raise CacheIncomplete(f"{path}: no feature cache here; run `{fix} FEATURES={path}` first")
    try:
        with h5py.File(path, "r") as f:
            fmt, complete = f.attrs.get("format"), bool(f.attrs.get("complete", False))
            shard_files = f.attrs.get("shard_files")  # only in the front file of a sharded cache (cache/shards.py)
    except OSError as e:
        raise CacheIncomplete(f"{path}: not a readable HDF5 file ({e}); delete it and rerun `{fix}`") from None
    if fmt != FORMAT:
        raise CacheMismatch(f"{path}: not a feature cache of this project (format={fmt!r}); "
                            f"rerun `{fix} FEATURES={path}`")
    if not complete:
        raise CacheIncomplete(f"{path}: cache is incomplete; rerun `{fix} FEATURES={path}` to finish it")
    if shard_files is not None:
        from .shards import check_sources  # imported here: cache/shards.py builds on this module

        check_sources(path, json.loads(shard_files), fix)  # a missing shard would otherwise read as fill values
    cache = FeatureCache(path)
    version = int(cache.f.attrs["format_version"])
    if version != FORMAT_VERSION:
        cache.close()
        raise CacheMismatch(f"{path}: format_version={version}, this code reads "
                            f"{FORMAT_VERSION}; rerun `{fix} FEATURES={path}`")
    if layer is not None and layer not in cache.layers:
        cache.close()
        raise CacheMismatch(f"{path}: layer={cache.layer!r}, expected {layer!r}; "
                            f"rerun `{fix} LAYER={layer} FEATURES={path}`")
    if need_labels:
        n_tr, n_va = len(cache.rows(SPLIT_TRAIN)), len(cache.rows(SPLIT_VAL))
        if n_tr == 0 or n_va == 0:
            cache.close()
            fix_it = (f"VAL_SPLIT=0 leaves no val rows; rerun `{fix} VAL_SPLIT=0.2 FEATURES={path}`" if n_tr else
                      f"an unlabelled folder?; rerun `{fix} DATA=<labelled images> FEATURES={path}`")
            raise CacheMismatch(f"{path}: needs labelled train and val rows, has train={n_tr} val={n_va} ({fix_it})")
    return cache


def cache_state(path, fp: str) -> str:
    """'up-to-date' if a complete cache with fingerprint `fp` is at `path`; else 'missing', 'stale' or 'unreadable'."""
    if not os.path.exists(path):
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            ok = f.attrs.get("format") == FORMAT and bool(f.attrs.get("complete", False))
            return "up-to-date" if ok and f.attrs.get("fingerprint") == fp else "stale"
    except OSError:
        return "unreadable"
