"""The resumable, crash-safe writer of one cache file, and the thread that overlaps its commits with the forward pass.

Writes `<FEATURES>.partial`, renamed onto FEATURES when complete (layout: README, "The cache file").
Example: python -m extract --data data/demo/train --features artifacts/features.h5 --weights none --img-size 75

Crash safety: every dataset touched while extracting is allocated up front (early allocation, never filled), so a
commit is raw in-place writes, a flush, then the two counters (`rows_committed`, `inputs_committed`) and another
flush. A SIGKILL loses at most the uncommitted batch; the file is renamed to `<path>` only when finalised, so no
reader ever sees a half-written cache as complete.

Augmented views (`make features AUG_VIEWS=K`, extract/views.py) go to `views/<layer>`, (n_train, K, h, w, c): one
entry per train row, in row order, allocated, committed and compacted with the rows themselves.
"""
import os
import queue
import threading
import time

import h5py
import numpy as np

from .format import FORMAT, REASON_BYTES, SPLIT_TRAIN, WriteSummary, chunk_rows_for, fingerprint, partial_path, \
    write_attrs
from .integrity import (LIBVER, clear_write_flags, fixed_strings, fletcher32_dcpl, inputs_table, seal_attrs,
                        small_dataset)

def _early_dcpl():
    # Allocate every chunk at creation and never write fill values: later writes then change raw data only,
    # never the chunk index, which is what makes a SIGKILL between flushes harmless.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    # With a filter, early allocation writes every chunk (checksummed fill) at creation: the disk is taken up
    # front, and commits still rewrite chunks in place, at the same size and address.
    return fletcher32_dcpl(dcpl)



class CacheWriter:
    """Resumable, append-only writer of one cache file (see module docstring for the commit protocol)."""

    def __init__(self, path, config: dict, paths, labels, split, layer_shapes: dict, dtype="float32",
                 provenance=None, view_shapes=None, n_views=0, input_sizes=None):
        self.path, self.tmp = str(path), partial_path(path)
        self.config = dict(config)  # identity: its fingerprint decides resume / up-to-date / stale
        self.provenance = dict(provenance or {})  # recorded, not identity: versions, backbone digest
        self.fp = fingerprint(self.config)
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int8)
        self.split = np.asarray(split, np.int8)
        self.input_sizes = input_sizes  # bytes of each input, in order: recorded as `inputs/` (None: not recorded)
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
            clear_write_flags(self.tmp)  # left set by a killed writer; the caller holds the output lock
            try:
                f = h5py.File(self.tmp, "r+", libver=LIBVER)
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
        f = h5py.File(self.tmp, "w", libver=LIBVER)
        write_attrs(f, self.config, self.fp, self.provenance)
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
        g.create_dataset("row_input", shape=(max(n, 1),), dtype=np.int64, chunks=(min(max(n, 1), 1 << 16),),
                         dcpl=_early_dcpl())  # chunked: Fletcher32 needs chunks
        g.create_dataset("reason", shape=(max(n, 1),), dtype=f"S{REASON_BYTES}", chunks=(min(max(n, 1), 4096),),
                         dcpl=_early_dcpl())
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
        for name in ("features", "labels", "paths", "split", "skipped", "inputs"):
            if name in f:  # a previous finalise was killed half-way: redo it
                del f[name]
        for name in self.layer_shapes:
            f[f"layers/{name}"].resize(n_rows, axis=0)
        n_train = int((self.split[rows] == SPLIT_TRAIN).sum())
        for name in self.view_shapes:
            f[f"views/{name}"].resize(n_train, axis=0)
        f["features"] = f[f"layers/{self.config['layer']}"]  # hard link: the primary layer, no copy
        small_dataset(f, "labels", self.labels[rows])
        small_dataset(f, "paths", *fixed_strings([self.paths[i] for i in rows]))
        small_dataset(f, "split", self.split[rows])
        small_dataset(f, "skipped", *fixed_strings(np.array(skipped, dtype=object).reshape(-1, 2)))
        if self.input_sizes is not None:
            inputs_table(f, self.paths, self.input_sizes)
        del f["_progress"]
        f.attrs["n_rows"] = n_rows
        f.attrs["n_skipped"] = len(skipped)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["complete"] = True
        seal_attrs(f)
        f.flush()
        f.close()
        self.f = None
        os.replace(self.tmp, self.path)
        return WriteSummary(self.path, n_rows, skipped)

    def close(self):
        if self.f is not None:
            try:
                self.f.close()
            except OSError:  # after a failed write (a full disk): what was not flushed was not committed either
                pass
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
