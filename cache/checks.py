"""What the cache's checksums catch and what they cost, measured (for `make bench` and the tests).

Reads a cache (damage_scan) or writes scratch HDF5 files in a temporary folder (checksum_cost); removes what it wrote.
Example: python -c "from cache.checks import checksum_cost; print(checksum_cost())"
         python -c "from cache.checks import damage_scan; print(damage_scan('artifacts/features.h5'))"
"""
import os
import tempfile
import time

import h5py
import numpy as np

from core import WorkflowError

from .integrity import LIBVER
from .reader import open_cache


def checksum_cost(rows: int = 500, row_shape=(8, 8, 768), chunk_rows: int = 20, repeats: int = 3, folder=None) -> dict:
    """Write and read the same float32 array with and without Fletcher32 + checksummed metadata; MB/s and ratios.

    Defaults: 500 rows of mixed7 at 150 px (98 MB) in the cache's ~4 MiB chunks. Each figure is the best of
    `repeats` (the least disturbed by other work). Reads come from the page cache (the file was just written), so
    they measure the checksum's CPU cost, not the disk. For `make bench` key `checksum_read_cost`: the fraction of
    extra read time, e.g. 1.0 = reads take twice as long.
    """
    x = np.random.default_rng(0).standard_normal((rows,) + tuple(row_shape)).astype(np.float32)
    out = {"mb": round(x.nbytes / 1e6, 1), "repeats": repeats}
    with tempfile.TemporaryDirectory(dir=folder) as d:
        for tag, checked in (("plain", False), ("checksummed", True)):
            path = os.path.join(d, f"{tag}.h5")
            write_s, read_s = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                with h5py.File(path, "w", **({"libver": LIBVER} if checked else {})) as f:
                    ds = f.create_dataset("x", shape=x.shape, dtype=x.dtype, chunks=(chunk_rows,) + x.shape[1:],
                                          fletcher32=checked)
                    for lo in range(0, rows, chunk_rows):
                        ds[lo:lo + chunk_rows] = x[lo:lo + chunk_rows]
                write_s.append(time.perf_counter() - t0)
                with h5py.File(path, "r") as f:
                    t0 = time.perf_counter()
                    y = f["x"][:]
                    read_s.append(time.perf_counter() - t0)
                assert np.array_equal(x, y)
            out[f"{tag}_write_mb_s"] = round(x.nbytes / 1e6 / min(write_s), 1)
            out[f"{tag}_read_mb_s"] = round(x.nbytes / 1e6 / min(read_s), 1)
    out["checksum_read_cost"] = round(out["plain_read_mb_s"] / out["checksummed_read_mb_s"] - 1, 3)
    out["checksum_write_cost"] = round(out["plain_write_mb_s"] / out["checksummed_write_mb_s"] - 1, 3)
    return out


def damage_scan(path, n: int = 450, seed: int = 1, workdir=None) -> dict:
    """Damage copies of the cache `path` (8 bytes XOR 0x5A at one offset each: n/3 in the first 6 KB of metadata,
    the rest at random) and count how each reads through `open_cache`: 'same' values, 'refused' (exit 2), or
    'different' (the failure this module exists to prevent; the offsets are listed)."""
    import shutil

    def snapshot(p):
        with open_cache(p) as c:
            feats = [c.read(np.arange(len(c)), layer) for layer in c.layers]
            views = [c.read_views(c.rows(0), k, layer) for layer in c.view_layers for k in range(c.n_views(layer))]
            return feats + views + [c.labels, c.split, c.paths, c.skipped, c.config, c.provenance, c.fingerprint]

    def same(a, b):
        return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))

    original, size = snapshot(path), os.path.getsize(path)
    rng = np.random.default_rng(seed)
    offsets = sorted(set(np.linspace(0, min(6000, size - 8), n // 3).astype(int).tolist()
                         + rng.integers(0, size - 8, n - n // 3).tolist()))
    out = {"copies": len(offsets), "same": 0, "refused": 0, "different": []}
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        copy = os.path.join(d, "damaged.h5")
        for off in offsets:
            shutil.copyfile(path, copy)
            with open(copy, "r+b") as f:
                f.seek(off)
                b = f.read(8)
                f.seek(off)
                f.write(bytes(x ^ 0x5A for x in b))
            try:
                got = snapshot(copy)
            except WorkflowError:
                out["refused"] += 1
                continue
            if same(got, original):
                out["same"] += 1
            else:
                out["different"].append(off)
    return out


# -- a killed writer's status flags ------------------------------------------------------------------------
# The v110 superblock (version 3) records "open for write" in its flags byte; a process killed while writing
# leaves it set, and HDF5 then refuses to open the file at all ("may use <h5clear file>"). The resumable
# writer holds the output lock (cache/lock.py), so when it finds its partial file, no live process writes it:
# it clears the flags as `h5clear -s` does, and resumes.
