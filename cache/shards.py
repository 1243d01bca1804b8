"""A sharded cache: shard files, their manifest, and the HDF5 virtual-dataset front file that joins them.

Reads and writes, next to FEATURES: `<stem>-00000.h5` ... (one single-file cache per shard), `<stem>.manifest.json`
(each shard's input range, rows, skipped count, sha256 and fingerprint) and FEATURES itself, the front file, with
the single-file layout in which `layers/<name>` are virtual datasets over the shards, in shard order.
Example: python -c "from cache.shards import read_manifest; print(read_manifest('artifacts/features.h5'))"

An HDF5 virtual dataset reads its fill value wherever a source file is missing, without an error. So the front
file lists its shards (attribute `shard_files`), `open_cache` checks that each one is there, complete and the one it
was built from (`check_sources`), and the fill value is NaN so that even a reader that bypasses `cache/` cannot
take a hole for features.
"""
import json
import os

import h5py
import numpy as np

from .errors import CacheIncomplete, WorkflowError
from core.files import file_hash

from .format import FORMAT, WriteSummary, chunk_rows_for, partial_path, write_attrs
from .integrity import LIBVER, fixed_strings, inputs_table, small_dataset, write_footer

MANIFEST_VERSION = 1


class ShardFailed(WorkflowError):
    """A shard worker raised or died; the shards that did finish are kept for the rerun."""


def shard_ranges(n: int, shards: int):
    """Shard k holds candidates [k*n//shards, (k+1)*n//shards) of the sorted input list: stable for the same
    inputs, and in order, so the front file is a plain concatenation equal row for row to the single-file cache."""
    return [(k * n // shards, (k + 1) * n // shards) for k in range(shards)]


def shard_path(features, k: int) -> str:
    return f"{os.path.splitext(str(features))[0]}-{k:05d}.h5"


def manifest_path(features) -> str:
    return f"{os.path.splitext(str(features))[0]}.manifest.json"


def read_manifest(features):
    """The manifest as a dict, or None when it is missing or unreadable (then every shard is hashed afresh)."""
    try:
        with open(manifest_path(features)) as f:
            m = json.load(f)
        return m if m.get("manifest_version") == MANIFEST_VERSION else None
    except (OSError, ValueError):
        return None


def write_manifest(features, fp: str, entries):
    path = manifest_path(features)
    with open(partial_path(path), "w") as f:
        json.dump({"manifest_version": MANIFEST_VERSION, "format": FORMAT, "fingerprint": fp,
                   "front": os.path.basename(str(features)), "shards": entries}, f, indent=1)
    os.replace(partial_path(path), path)


def inspect_shard(path, fp: str, recorded=None, hashed=None):
    """(entry, '') for a valid shard, else (None, why).

    `recorded` is its manifest entry, if the manifest has one for this fingerprint. The same write of the shard
    (same `created`) must then still have the recorded rows and sha256; a later write (a worker finished it after
    the last manifest, in a run that failed or was killed before writing a new one) is complete by its own
    attributes and is hashed afresh. `hashed` is the sha256 its writer computed just now, saving a second read.
    """
    if not os.path.exists(path):
        return None, "missing"
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if a.get("format") != FORMAT or not bool(a.get("complete", False)):
                return None, "incomplete"
            if a.get("fingerprint") != fp:
                return None, "stale (made for another configuration or other input files)"
            entry = {"file": os.path.basename(path), "fingerprint": fp, "rows": int(a["n_rows"]),
                     "skipped": int(a["n_skipped"]), "created": str(a["created"]),
                     "backbone_digest": json.loads(a["provenance"])["backbone_digest"]}
    except (OSError, KeyError, ValueError) as e:
        return None, f"damaged (not a readable HDF5 cache: {str(e)[:80]})"
    entry["sha256"] = hashed or file_hash(path)
    if recorded is not None and recorded.get("created") == entry["created"]:
        if recorded.get("sha256") != entry["sha256"]:
            return None, "damaged (sha256 differs from the manifest)"
        if recorded.get("rows") != entry["rows"]:
            return None, f"damaged ({entry['rows']} rows, the manifest says {recorded.get('rows')})"
    return entry, ""


def write_front(features, config: dict, fp: str, provenance: dict, entries, inputs=None) -> WriteSummary:
    """Write FEATURES as the virtual-dataset front file over the shards in `entries` (in order), via a rename;
    `inputs`: (relative paths, sizes) of every input, recorded as in a single-file cache."""
    features = str(features)
    folder = os.path.dirname(os.path.abspath(features))
    tmp = partial_path(features)
    sources = [os.path.join(folder, e["file"]) for e in entries]
    labels, paths, split, skipped, shapes, dtypes = [], [], [], [], {}, {}
    for src in sources:
        with h5py.File(src, "r") as s:
            labels.append(s["labels"][:])
            paths.append(s["paths"][:])
            split.append(s["split"][:])
            skipped.append(s["skipped"][:])
            for name in config["layers"]:
                ds = s[f"layers/{name}"]
                shapes[name], dtypes[name] = ds.shape[1:], ds.dtype
    n = sum(e["rows"] for e in entries)
    with h5py.File(tmp, "w", libver=LIBVER) as f:
        write_attrs(f, config, fp, provenance)
        for name in config["layers"]:
            layout = h5py.VirtualLayout((n,) + shapes[name], dtypes[name])
            r = 0
            for e in entries:
                if e["rows"]:
                    # A relative source name: HDF5 looks for it next to the front file, so the folder can move.
                    layout[r:r + e["rows"]] = h5py.VirtualSource(e["file"], f"layers/{name}",
                                                                 (e["rows"],) + shapes[name])
                    r += e["rows"]
            ds = f.create_virtual_dataset(f"layers/{name}", layout, fillvalue=np.nan)
            # A virtual dataset has no chunks of its own; readers still want a row block to read at a time.
            ds.attrs["chunk_rows"] = chunk_rows_for(shapes[name], dtypes[name])
        f["features"] = f[f"layers/{config['layer']}"]  # hard link, as in the single-file cache
        small_dataset(f, "labels", np.concatenate(labels))
        small_dataset(f, "paths", *fixed_strings([_text(p) for p in np.concatenate(paths)]))
        small_dataset(f, "split", np.concatenate(split))
        skipped = np.array([_text(x) for x in np.concatenate(skipped).ravel()], dtype=object).reshape(-1, 2)
        small_dataset(f, "skipped", *fixed_strings(skipped))
        if inputs is not None:
            inputs_table(f, *inputs)
        f.attrs["shard_files"] = json.dumps([{k: e[k] for k in ("file", "fingerprint", "rows")} for e in entries])
        f.attrs["manifest"] = os.path.basename(manifest_path(features))
        write_footer(f, n, len(skipped))
    os.replace(tmp, features)
    return WriteSummary(features, n, [tuple(x.decode() if isinstance(x, bytes) else x for x in row) for row in skipped])


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def check_sources(path, shards, fix="make features"):
    """Raise CacheIncomplete unless every shard of the front file `path` is there, complete and the one it lists.

    Cheap (attributes only, no hashing), so `open_cache` runs it on every open; the sharded driver also checks the
    manifest's sha256 before it trusts a shard.
    """
    folder = os.path.dirname(os.path.abspath(str(path)))
    for s in shards:
        src = os.path.join(folder, s["file"])
        # A segment of an updated cache (cache/front.py) is redone by a rebuild, a shard by ENGINE=ray.
        redo = (f"rerun `{fix} FEATURES={path}` to rebuild the cache" if ".seg-" in s["file"] else
                f"rerun `{fix} ENGINE=ray SHARDS={len(shards)} FEATURES={path}` to recompute it")
        if not os.path.exists(src):
            raise CacheIncomplete(f"{path}: shard {src} is missing, so its rows would read as fill values; {redo}")
        try:
            with h5py.File(src, "r") as f:
                ok = (bool(f.attrs.get("complete", False)) and f.attrs.get("fingerprint") == s["fingerprint"]
                      and int(f.attrs.get("n_rows", -1)) == s["rows"])
        except OSError as e:
            raise CacheIncomplete(f"{path}: shard {src} is damaged ({str(e)[:80]}); {redo}") from None
        if not ok:
            raise CacheIncomplete(f"{path}: shard {src} is incomplete or not the one this front file was built "
                                  f"from; {redo}")
