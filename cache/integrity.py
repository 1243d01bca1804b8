"""Detect damage, never read it: HDF5 checksums on every byte of the cache that a reader uses, and one clean error.

Reads and writes nothing itself: cache/writer.py and cache/shards.py create their datasets through it, and
cache/reader.py wraps reads in `reading`. What the checksums catch and cost is measured by cache/checks.py.

What is checked: the file is written with `libver=LIBVER`, HDF5's newer format, whose superblock, object headers,
B-trees, chunk indices and heaps carry checksums (metadata), and every dataset is chunked with the Fletcher32
filter (raw data). Fixed-length strings keep paths and reasons inside checksummed chunks (variable-length strings
live in the global heap, which has no checksum). A mismatch makes h5py raise OSError; `reading` turns it into
CacheCorrupt with the file and the rebuild command. README "Hardening" lists what is still not caught.
"""
import contextlib

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


def inputs_table(f, paths, sizes, hashes=None):
    """`inputs/path`, `inputs/size` (and `inputs/sha256` under VERIFY=content): every input file, in input order,
    cached or skipped. Not identity (the fingerprint covers them): what lets a stale cache say which files changed,
    and an update find the files it has already extracted."""
    small_dataset(f, "inputs/path", *fixed_strings(list(paths)))
    small_dataset(f, "inputs/size", np.asarray(sizes, np.int64))
    if hashes:
        small_dataset(f, "inputs/sha256", *fixed_strings(list(hashes)))


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


def write_footer(f, n_rows: int, n_skipped: int):
    """The last attributes of every cache file (single, sharded front, updated front): its counts, the time, complete,
    then the seal over all of them."""
    import time

    f.attrs["n_rows"] = n_rows
    f.attrs["n_skipped"] = n_skipped
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.attrs["complete"] = True
    seal_attrs(f)


def check_attrs(f, path, fix="make features"):
    """Raise CacheCorrupt unless the root attributes still match the digest `seal_attrs` recorded."""
    if SEAL not in f.attrs or int(f.attrs[SEAL]) != _attrs_digest(f):
        raise CacheCorrupt(f"{path}: damaged (its attributes no longer match their recorded digest); delete it and "
                           f"rebuild it with `{fix} FEATURES={path}`")


def is_damage(e: BaseException) -> bool:
    """True for what h5py raises on a checksum mismatch or damaged structure (OSError, KeyError, RuntimeError).

    A missing or unreadable file (FileNotFoundError, PermissionError, a folder in its place) is not damage: its own
    message is clearer.
    """
    return isinstance(e, (OSError, KeyError, RuntimeError)) and not isinstance(
        e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


def torn_chunks(ds, lo: int, hi: int) -> list:
    """Origins (sorted by row) of `ds`'s chunks that overlap rows [lo, hi) and fail their checksum when read."""
    import itertools

    chunks, shape = ds.chunks, ds.shape
    hi = min(int(hi), shape[0])
    first = max(int(lo), 0) // chunks[0] * chunks[0]
    grid = [range(first, hi, chunks[0])] + [range(0, n, c) for n, c in zip(shape[1:], chunks[1:])]
    bad = []
    for origin in itertools.product(*grid):
        try:
            ds[tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape))]
        except (OSError, KeyError, RuntimeError) as e:
            if not is_damage(e):
                raise
            bad.append(origin)
    return bad


def write_empty_chunk(ds, origin):
    """Replace the chunk of `ds` at `origin` by an all-zero one with valid checksums, without reading it.

    HDF5 reads a chunk before writing part of it, and an edge chunk even when it is written whole; a direct chunk
    write never reads. Its bytes come from HDF5 itself: a chunk of zeros written through the same filters (the
    same creation properties) in a file held in memory.
    """
    import h5py

    with h5py.File("empty-chunk", "w", driver="core", backing_store=False) as mem:
        scratch = mem.create_dataset("c", shape=ds.chunks, dtype=ds.dtype, dcpl=ds.id.get_create_plist())
        scratch[...] = np.zeros(ds.chunks, ds.dtype)
        mask, raw = scratch.id.read_direct_chunk((0,) * len(ds.chunks))
    ds.id.write_direct_chunk(tuple(int(o) for o in origin), raw, mask)


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
