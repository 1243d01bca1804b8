"""The resumable, crash-safe writer of one cache file, and the thread that overlaps its commits with the forward pass.

Writes `<FEATURES>.partial`, renamed onto FEATURES when complete (layout: README, "The cache file").
Example: python -m extract --data data/demo/train --features artifacts/features.h5 --weights none --img-size 75

Crash safety: every dataset touched while extracting is allocated up front (early allocation, never filled), so a
commit is raw in-place writes, a flush, then the two counters (`rows_committed`, `inputs_committed`) and another
flush. The file is renamed to `<path>` only when finalised, so no reader ever sees a half-written cache as complete.

Torn chunks: a commit that ends mid-chunk is followed by one that rewrites the rest of that chunk, committed rows
included. A SIGKILL during that write can leave the chunk half old, half new, failing its Fletcher32 checksum, and
HDF5 must read a chunk before it writes part of it. So `start` verifies, before resuming, every chunk that the
commit in flight could have written (from the committed counters up to the largest commit, `commit_rows`), and
rolls a torn one back: the counters move back to its first row, its bytes are replaced by a valid empty chunk, and
those rows are extracted again. A kill costs at most the batch in flight plus one chunk of rows. Rolling back was
chosen over committing whole chunks only: chunk boundaries differ per dataset (each chunk is ~4 MiB whatever the
row size), so no commit point aligns them all, and verifying a few chunks once per resume costs nothing while
extracting.
A partial whose structure is damaged (superblock, object headers, chunk index) is set aside as
`<path>.partial.damaged` and the run starts over.

Augmented views (`make features AUG_VIEWS=K`, extract/views.py) go to `views/<layer>`, (n_rows, K, h, w, c): one
entry per row, val rows included (so that a new split needs no forward pass: extract/update.py), allocated,
committed and compacted with the rows themselves. Caches written before that hold train rows' views only.
"""
import os
import queue
import threading

import h5py
import numpy as np

from .format import FORMAT, REASON_BYTES, VIEWS_EVERY_ROW, WriteSummary, chunk_rows_for, fingerprint, \
    partial_path, write_attrs
from .integrity import (LIBVER, clear_write_flags, fixed_strings, fletcher32_dcpl, inputs_table, is_damage,
                        small_dataset, torn_chunks, write_empty_chunk, write_footer)

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
                 provenance=None, view_shapes=None, n_views=0, input_sizes=None, input_hashes=None):
        self.path, self.tmp = str(path), partial_path(path)
        self.config = dict(config)  # identity: its fingerprint decides resume / up-to-date / stale
        self.provenance = dict(provenance or {})  # recorded, not identity: versions, backbone digest
        self.fp = fingerprint(self.config)
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int8)
        self.split = np.asarray(split, np.int8)
        self.input_sizes = input_sizes  # bytes of each input, in order: recorded as `inputs/` (None: not recorded)
        self.input_hashes = input_hashes  # sha256 of each input under VERIFY=content, recorded beside them
        self.layer_shapes = {k: tuple(int(d) for d in v) for k, v in layer_shapes.items()}
        self.dtype = np.dtype(dtype)
        # K augmented views per row at these layers (val rows too: a later split may make them train rows).
        self.view_shapes = {k: tuple(int(d) for d in v) for k, v in (view_shapes or {}).items()}
        self.n_views = int(n_views) if self.view_shapes else 0
        self.f = None
        self.note, self.resumed = "", False  # what `start` repaired or set aside, in words; whether it resumed

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> int:
        """Open the partial file if it belongs to this configuration, else start afresh; return the resume input index.

        `note` then says, in words, anything the resume had to repair or set aside ('' when nothing).
        """
        self.note, self.resumed = "", False
        if os.path.exists(self.tmp):
            try:
                clear_write_flags(self.tmp)  # left set by a killed writer; the caller holds the output lock
                self.f = h5py.File(self.tmp, "r+", libver=LIBVER)
                # `_progress` goes during finalize: a partial without it was killed there, and is redone whole.
                a = self.f.attrs
                # A partial from before views held every row cannot take this writer's view commits: redone whole.
                if (a.get("fingerprint") == self.fp and a.get("format") == FORMAT and "_progress" in self.f
                        and "inputs_committed" in a
                        and all(self.f[f"views/{n}"].attrs.get("rows") == VIEWS_EVERY_ROW for n in self.view_shapes)):
                    self.resumed = True
                    return self._resume()
                self.close()
                os.remove(self.tmp)  # another configuration's partial: nothing of it is this run's
            except Exception as e:  # noqa: BLE001 (damage is handled here; anything else is re-raised)
                if not is_damage(e):
                    raise
                self.close()
                self.resumed = False
                os.replace(self.tmp, damaged_path(self.path))
                self.note = (f"{self.tmp} was damaged beyond resume ({str(e).splitlines()[0][:80]}); set aside as "
                             f"{damaged_path(self.path)}, starting over")
        self._create()
        return 0

    def _resume(self) -> int:
        """Roll back any chunk the last kill tore (module docstring); return the input index to resume from."""
        f = self.f
        r0, i0 = int(f.attrs["rows_committed"]), int(f.attrs["inputs_committed"])
        span = int(f.attrs.get("commit_rows", len(self.paths)))  # a partial from before the attribute: check all
        row_input, reason = f["_progress/row_input"], f["_progress/reason"]
        # _progress first: the rows before its first torn chunk still map rows to inputs. It is small (bytes a row),
        # so it is checked to the end: the in-flight commit wrote rows from r0 on, reasons for inputs from i0 on.
        cut, torn = r0, []
        for ds, lo in ((row_input, r0), (reason, i0)):
            bad = torn_chunks(ds, lo, ds.shape[0])
            torn += [(ds, o) for o in bad]
            if bad and ds is row_input:
                cut = bad[0][0]
            elif bad:  # inputs from the torn chunk on are redone, and with them the rows that hold them
                cut = min(cut, int(np.searchsorted(row_input[:cut], bad[0][0])))
        rows = row_input[:cut] if cut else np.zeros(0, np.int64)
        for ds in [f[f"layers/{name}"] for name in self.layer_shapes] + [f[f"views/{n}"] for n in self.view_shapes]:
            bad = torn_chunks(ds, cut, r0 + span)
            torn += [(ds, o) for o in bad]
            cut = min([cut] + [o[0] for o in bad])
        if cut < r0:
            # Counters first, and the verified span widened to the old one's end: a kill before the repairs below
            # are flushed leaves every torn chunk inside the next resume's window (repairs first would hide them).
            f.attrs["commit_rows"] = span + (r0 - cut)
            f.attrs["rows_committed"] = cut
            f.attrs["inputs_committed"] = i0 = int(rows[cut - 1]) + 1 if cut else 0
            f.flush()
            self.note = f"rows {cut}-{r0 - 1} rewritten: a chunk was torn by the last kill"
        elif torn:
            self.note = "a chunk past the committed rows was torn by the last kill, and is rewritten"
        for ds, origin in torn:  # whole-chunk writes: valid checksummed bytes, never a read of the torn ones
            write_empty_chunk(ds, origin)
        f.flush()
        return i0

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
        for name, shape in self.view_shapes.items():
            # One chunk holds `cr` rows of one view: a read of view v touches no other view's bytes.
            cr = chunk_rows_for(shape, self.dtype)
            ds = f.create_dataset(f"views/{name}", shape=(max(n, 1), self.n_views) + shape,
                                  maxshape=(max(n, 1), self.n_views) + shape, chunks=(min(cr, max(n, 1)), 1) + shape,
                                  dtype=self.dtype, dcpl=_early_dcpl())
            ds.attrs["rows"] = VIEWS_EVERY_ROW
        # Chunked as finely as the finest layer (Fletcher32 needs chunks): a torn one costs no more rows than a layer's.
        rows = min([max(n, 1)] + [chunk_rows_for(shape, self.dtype) for shape in self.layer_shapes.values()])
        g = f.create_group("_progress")
        g.create_dataset("row_input", shape=(max(n, 1),), dtype=np.int64, chunks=(rows,), dcpl=_early_dcpl())
        g.create_dataset("reason", shape=(max(n, 1),), dtype=f"S{REASON_BYTES}", chunks=(rows,), dcpl=_early_dcpl())
        f.attrs["commit_rows"] = 0  # the largest commit so far: how far past the counters a resume must verify
        f.flush()
        self.f = f

    def commit(self, input_idx, feats: dict, skipped, inputs_done: int, views=None):
        """Append rows for candidates `input_idx` (in order), record `skipped` [(input index, reason)], then commit.

        With views, `views[layer]` is (k, K, h, w, c): the K views of each of the k rows, in the same order.
        """
        f = self.f
        r0 = int(f.attrs["rows_committed"])
        k = len(input_idx)
        assert bool(self.view_shapes) == (views is not None), "views must come with every commit, and only then"
        if k > int(f.attrs.get("commit_rows", 0)):  # durable before the data: how far past the counters to verify
            f.attrs["commit_rows"] = k
            f.flush()
        if k:
            for name, arr in feats.items():
                f[f"layers/{name}"][r0:r0 + k] = np.asarray(arr, self.dtype)
            for name, arr in (views or {}).items():
                assert len(arr) == k, f"views/{name}: {len(arr)} entries for {k} rows"
                f[f"views/{name}"][r0:r0 + k] = np.asarray(arr, self.dtype)
            f["_progress/row_input"][r0:r0 + k] = np.asarray(input_idx, np.int64)
        reason = f["_progress/reason"]
        for i, why in skipped:
            reason[i] = why.encode("utf-8", "replace")[:REASON_BYTES]
        f.flush()  # data first, counters second: a kill in between leaves the old counters, hence old rows
        f.attrs["rows_committed"] = r0 + k
        f.attrs["inputs_committed"] = int(inputs_done)
        f.flush()

    def finalize(self, reasons=None) -> WriteSummary:
        """Compact the per-row datasets, mark complete and rename into place atomically.

        `reasons` ({input index: reason}) skips inputs that were never committed as rows without writing their reason
        into `_progress` (EXCLUDE: known before the run, and spread over every input, so writing them there would put
        committed rows' chunks in play again).
        """
        f = self.f
        n_rows = int(f.attrs["rows_committed"])
        assert int(f.attrs["inputs_committed"]) == len(self.paths), "finalize before all inputs were committed"
        rows = f["_progress/row_input"][:n_rows] if n_rows else np.zeros(0, np.int64)
        done = np.zeros(len(self.paths), bool)
        done[rows] = True
        recorded = f["_progress/reason"][:len(self.paths)] if self.paths else []
        given = reasons or {}
        skipped = [(self.paths[i], given[i] if i in given else recorded[i].decode("utf-8", "replace"))
                   for i in np.flatnonzero(~done)]
        for name in ("features", "labels", "paths", "split", "skipped", "inputs"):
            if name in f:  # a previous finalise was killed half-way: redo it
                del f[name]
        for name in self.layer_shapes:
            f[f"layers/{name}"].resize(n_rows, axis=0)
        for name in self.view_shapes:
            f[f"views/{name}"].resize(n_rows, axis=0)
        f["features"] = f[f"layers/{self.config['layer']}"]  # hard link: the primary layer, no copy
        small_dataset(f, "labels", self.labels[rows])
        small_dataset(f, "paths", *fixed_strings([self.paths[i] for i in rows]))
        small_dataset(f, "split", self.split[rows])
        small_dataset(f, "skipped", *fixed_strings(np.array(skipped, dtype=object).reshape(-1, 2)))
        if self.input_sizes is not None:
            inputs_table(f, self.paths, self.input_sizes, self.input_hashes)
        del f["_progress"]
        write_footer(f, n_rows, len(skipped))
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


def damaged_path(path) -> str:
    """Where a partial that cannot be resumed is set aside (kept for inspection, never read again)."""
    return f"{partial_path(path)}.damaged"


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
