"""Detect damage, never read it: HDF5 checksums on every byte of the cache that a reader uses, and one clean error.

Reads and writes nothing itself: cache/store.py and cache/shards.py create their datasets through it and wrap reads
in `reading`. Example, what checksums cost:
    python -c "from cache.integrity import checksum_cost; print(checksum_cost())"

What is checked: the file is written with `libver=LIBVER`, HDF5's newer format, whose superblock, object headers,
B-trees, chunk indices and heaps carry checksums (metadata), and every dataset is chunked with the Fletcher32
filter (raw data). Fixed-length strings keep paths and reasons inside checksummed chunks (variable-length strings
live in the global heap, which has no checksum). A mismatch makes h5py raise OSError; `reading` turns it into
CacheCorrupt with the file and the rebuild command. README "Hardening" lists what is still not caught.
"""
import contextlib
import os
import tempfile
import time

import h5py
import numpy as np

from core import WorkflowError

LIBVER = ("v110", "latest")  # v110: superblock v3 and v2 object headers, all metadata checksummed


class CacheCorrupt(WorkflowError):
    """The cache's bytes do not match their checksums: the file was damaged after it was written."""


def fletcher32_dcpl(dcpl=None):
    """Add the Fletcher32 checksum filter to a dataset-creation property list (a new one when None)."""
    dcpl = dcpl or h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_fletcher32()
    return dcpl


def fixed_strings(values) -> tuple:
    """(array, h5py dtype) of UTF-8 fixed-length strings: checksummed with the chunks, unlike variable-length ones."""
    enc = [str(v).encode("utf-8") for v in np.ravel(np.asarray(values, dtype=object))]
    dt = h5py.string_dtype("utf-8", max([1] + [len(b) for b in enc]))
    return np.array(enc, dtype=dt).reshape(np.shape(values)), dt


def small_dataset(f, name, data, dtype=None):
    """A chunked, Fletcher32-checksummed, row-extensible dataset for the small per-row arrays (labels, paths ...)."""
    data = np.asarray(data)
    rows = max(1, min(len(data), 1 << 16))
    return f.create_dataset(name, data=data, dtype=dtype or data.dtype, chunks=(rows,) + data.shape[1:],
                            maxshape=(None,) + data.shape[1:], fletcher32=True)


SEAL = "attrs_seal"  # an integer attribute: stored inline in the (checksummed) attribute message


def _attrs_digest(f) -> int:
    import hashlib
    import json

    def plain(v):
        v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return v.tolist() if hasattr(v, "tolist") else v

    items = [(k, plain(f.attrs[k])) for k in sorted(f.attrs) if k != SEAL]
    return int.from_bytes(hashlib.sha256(json.dumps(items, default=str).encode()).digest()[:8], "little") >> 1


def seal_attrs(f):
    """Record a digest of every root attribute, once they are final.

    Why: variable-length string attributes (config, fingerprint, provenance ...) keep their text in HDF5's global
    heap, which has no checksum; the digest, an integer, lives in a checksummed attribute message.
    """
    f.attrs[SEAL] = np.int64(_attrs_digest(f))


def check_attrs(f, path, fix="make features"):
    """Raise CacheCorrupt unless the root attributes still match the digest `seal_attrs` recorded."""
    if SEAL not in f.attrs or int(f.attrs[SEAL]) != _attrs_digest(f):
        raise CacheCorrupt(f"{path}: damaged (its attributes no longer match their recorded digest); delete it and "
                           f"rebuild it with `{fix} FEATURES={path}`")


def is_damage(e: BaseException) -> bool:
    """True for what h5py raises on a checksum mismatch or damaged structure (OSError, KeyError, RuntimeError).

    A missing or unreadable file (FileNotFoundError, PermissionError) is not damage: its own message is clearer.
    """
    return isinstance(e, (OSError, KeyError, RuntimeError)) and not isinstance(e, (FileNotFoundError,
                                                                                 PermissionError))


@contextlib.contextmanager
def reading(path, fix="make features"):
    """Turn h5py's damage errors inside the block into CacheCorrupt naming `path` and the rebuild command."""
    try:
        yield
    except CacheCorrupt:
        raise
    except (OSError, KeyError, RuntimeError) as e:
        if not is_damage(e):
            raise
        raise CacheCorrupt(f"{path}: damaged (HDF5 checksum or structure error: {str(e).splitlines()[0][:90]}); "
                           f"delete it and rebuild it with `{fix} FEATURES={path}`") from None


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

    from .store import open_cache

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
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle, the checksum of HDF5's metadata (H5_checksum_lookup3)."""
    m = 0xFFFFFFFF
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & m
        a = (a - c) & m; a ^= _rot(c, 4); c = (c + b) & m  # noqa: E702 (the reference's own layout)
        b = (b - a) & m; b ^= _rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= _rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 4); b = (b + a) & m  # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:i + n] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - _rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & m  # noqa: E702
    return c


def clear_write_flags(path) -> bool:
    """Clear a v2/v3 superblock's file-consistency flags (as `h5clear -s`); True if they were set.

    Only for a file no live process writes (the caller holds its output lock). The superblock's checksum must
    match before and is rewritten after, so a damaged superblock is left alone for HDF5 to report.
    """
    with open(path, "r+b") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != _SIGNATURE or head[8] not in (2, 3) or head[11] == 0:
            return False
        size = 12 + 4 * head[9] + 4  # four addresses of `size of offsets` bytes, then the checksum
        f.seek(0)
        sb = bytearray(f.read(size))
        if len(sb) < size or lookup3(bytes(sb[:-4])) != int.from_bytes(sb[-4:], "little"):
            return False
        sb[11] = 0
        sb[-4:] = lookup3(bytes(sb[:-4])).to_bytes(4, "little")
        f.seek(0)
        f.write(sb)
    return True
