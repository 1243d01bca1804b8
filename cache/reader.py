"""Reading a complete cache: the one gate every stage opens it through (`open_cache`), and chunk-aligned reads.

Reads FEATURES (and, for a sharded cache, the shard files its front file lists). Writes nothing.
Example: python -c "from cache import open_cache; print(open_cache('artifacts/features.h5').summary())"
"""
import json
import os

import h5py
import numpy as np

from .errors import CacheIncomplete, CacheMismatch
from .format import FORMAT, FORMAT_VERSION, SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL, VIEWS_EVERY_ROW, partial_path
from .integrity import CacheCorrupt, check_attrs, reading
from .shards import check_sources

class FeatureCache:
    """A complete cache opened read-only. Arrays other than the features are small and loaded eagerly."""

    def __init__(self, path):
        self.path = str(path)
        self.f = None
        try:
            with reading(self.path):
                self._open()
        except BaseException:
            if self.f is not None:
                self.f.close()
            raise

    def _open(self):
        self.f = h5py.File(self.path, "r")
        check_attrs(self.f, self.path)
        self.config = json.loads(self.f.attrs["config"])
        self.provenance = json.loads(self.f.attrs["provenance"])
        # DATA's path is provenance since format 2 (not identity); readers still find it under config["data"].
        self.config.setdefault("data", self.provenance.get("data"))
        self.fingerprint = str(self.f.attrs["fingerprint"])
        self.layer = self.config["layer"]
        self.layers = list(self.config["layers"])
        self.class_names = list(self.config["class_names"])
        self.labels = self.f["labels"][:].astype(np.int64)
        self.split = self.f["split"][:].astype(np.int64)
        self.paths = [p.decode() if isinstance(p, bytes) else p for p in self.f["paths"][:]]
        self.skipped = [tuple(x.decode() if isinstance(x, bytes) else x for x in row) for row in self.f["skipped"][:]]
        self.view_layers = sorted(self.f["views"]) if "views" in self.f else []
        # The views entry of row r, or -1 for a row whose views are not read (val, unlabelled): views/<layer> holds
        # every row (VIEWS_EVERY_ROW), or, in caches written before updates existed, train rows only, in row order.
        is_train = self.split == SPLIT_TRAIN
        every = all(self.f[f"views/{l}"].attrs.get("rows") == VIEWS_EVERY_ROW for l in self.view_layers)
        self.view_rows = np.where(is_train, np.arange(len(is_train)) if every else np.cumsum(is_train) - 1, -1)
        self.views_every_row = every and bool(self.view_layers)

    def __len__(self):
        return len(self.labels)

    @property
    def precision(self) -> str:
        """The backbone's compute precision when the features were extracted (PRECISION; caches without it: float32)."""
        return self.config.get("precision", "float32")

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
        with reading(self.path):
            return self._read(rows, layer, dtype)

    def _read(self, rows, layer, dtype):
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
        with reading(self.path):
            return self._read_views(self.f[f"views/{layer}"], rows, view_idx, dtype)

    def _read_views(self, ds, rows, view_idx, dtype):
        rows = np.asarray(rows, np.int64)
        view_idx = np.broadcast_to(np.asarray(view_idx, np.int64), rows.shape)
        pos = self.view_rows[rows]
        if (pos < 0).any():
            raise ValueError(f"rows {rows[pos < 0][:5].tolist()} are not train rows: only train rows have views")
        if ((view_idx < 0) | (view_idx >= ds.shape[1])).any():
            raise ValueError(f"view_idx must be in 0..{ds.shape[1] - 1}, got {sorted(set(view_idx.tolist()))}")
        out = np.empty((len(rows),) + ds.shape[2:], dtype)
        # A front file's views are virtual (no chunks of their own): it records the row block to read at a time.
        cr = int(ds.attrs["chunk_rows"]) if ds.chunks is None else ds.chunks[1] == 1 and ds.chunks[0]
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

    def changes_since(self, fp: str) -> str:
        """What `make features` updates changed since this cache had fingerprint `fp`, in words ('100 new, 131
        excluded'); '' when no recorded update leads from `fp` (another cache, or one rebuilt since)."""
        from .front import changes_since

        return changes_since(self, fp)

    def stale_words(self, fp: str) -> str:
        """Why an artifact made from the cache with fingerprint `fp` is stale, for its one line."""
        changed = self.changes_since(fp)
        return (f"FEATURES changed since: {changed}" if changed
                else f"fingerprint {fp[:12]}, FEATURES has {self.fingerprint[:12]}")

    def input_paths(self) -> list:
        """Every input the cache was built from (cached or skipped), as relative paths in input order."""
        return list(recorded_inputs(self.f))

    def summary(self) -> str:
        counts = {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}
        if len(counts) > 5:  # 37 breeds do not fit a line: K and the range of rows per class
            counts = f"{len(counts)} classes of {min(counts.values())}..{max(counts.values())} rows"
        return (f"{self.path}: {len(self)} rows x {self.feature_shape()} {self.features().dtype} at layer "
                f"{self.layer!r}, {counts}, train={len(self.rows(SPLIT_TRAIN))} val={len(self.rows(SPLIT_VAL))} "
                f"unlabelled={len(self.rows(SPLIT_NONE))}, skipped={len(self.skipped)}")



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
    except (OSError, KeyError, RuntimeError) as e:  # KeyError: h5py's report of a damaged root group
        raise CacheIncomplete(f"{path}: not a readable HDF5 file, or damaged ({str(e)[:120]}); delete it and rerun "
                              f"`{fix} FEATURES={path}`") from None
    if fmt != FORMAT:
        raise CacheMismatch(f"{path}: not a feature cache of this project (format={fmt!r}); "
                            f"rerun `{fix} FEATURES={path}`")
    if not complete:
        raise CacheIncomplete(f"{path}: cache is incomplete; rerun `{fix} FEATURES={path}` to finish it")
    if shard_files is not None:
        check_sources(path, json.loads(shard_files), fix)  # a missing shard would otherwise read as fill values
    with reading(path, fix):
        version = _format_version(path)
    if version != FORMAT_VERSION:
        raise CacheMismatch(f"{path}: format_version={version}, this code reads {FORMAT_VERSION} (2 added "
                            f"checksums); rebuild it with `{fix} FEATURES={path}`")
    cache = FeatureCache(path)
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


def _format_version(path) -> int:
    with h5py.File(path, "r") as f:
        return int(f.attrs["format_version"])


def cache_state(path, fp: str) -> str:
    """'up-to-date' if a complete cache with fingerprint `fp` is at `path`; else 'missing', 'stale' or 'unreadable'."""
    if not os.path.exists(path):
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            ok = (f.attrs.get("format") == FORMAT and bool(f.attrs.get("complete", False))
                  and f.attrs.get("format_version") == FORMAT_VERSION)
            if ok and f.attrs.get("fingerprint") == fp:
                check_attrs(f, path)  # damaged attributes: rebuild (damaged data is found by the readers)
                if "shard_files" in f.attrs:  # a front file is only as whole as its segments or shards
                    check_sources(path, json.loads(f.attrs["shard_files"]))
                return "up-to-date"
            return "stale"
    except (OSError, KeyError, RuntimeError, CacheCorrupt):
        return "unreadable"
    except CacheIncomplete:
        return "stale"


# Keys whose change is said by the input files' counts (or, for hashes, in two words), not by their values.
_INPUT_KEYS = ("inputs_fingerprint", "n_inputs")
_DEFAULTS = {"precision": "float32"}  # what an absent key means (caches written before the key existed)


def stale_reason(path, config: dict, inputs: dict = None) -> str:
    """What differs between the cache at `path` and `config`, in one line: its settings as `key old -> new`, then the
    input files as counts against `inputs` ({relative path: size}), e.g. 'precision float32 -> bfloat16, image_size
    75 -> 150, 3 files added, 1 changed in size'. Empty when the file cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            old = json.loads(f.attrs["config"])
            had = recorded_inputs(f)
    except (OSError, KeyError, RuntimeError, ValueError):
        return ""
    parts = []
    for key in sorted(set(old) | set(config)):
        a, b = old.get(key, _DEFAULTS.get(key)), config.get(key, _DEFAULTS.get(key))
        if a == b or key in _INPUT_KEYS:
            continue
        parts.append(f"{key.replace('_', ' ')} differs" if key.endswith(("sha256", "fingerprint"))
                     else f"{key} {_short(a)} -> {_short(b)}")
    if old.get("inputs_fingerprint") != config.get("inputs_fingerprint"):
        parts.append(_input_changes(had, inputs, old, config))
    return ", ".join(parts) or "its fingerprint differs"


def _short(v, width=40) -> str:
    text = "unset" if v is None else v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _input_changes(had, now, old, config) -> str:
    if had is None or now is None:
        return (f"input files changed ({old.get('n_inputs')} -> {config.get('n_inputs')} files; the cache predates "
                f"its list of file sizes)")
    added, removed = len(now.keys() - had.keys()), len(had.keys() - now.keys())
    resized = sum(had[p] != now[p] for p in had.keys() & now.keys())
    counts = [(n, what) for n, what in ((added, "added"), (removed, "removed"), (resized, "changed in size")) if n]
    if not counts:  # same names and sizes: VERIFY=content saw other bytes
        return f"{config.get('n_inputs')} files, same names and sizes, contents differ"
    first = f"{counts[0][0]} file{'s' if counts[0][0] != 1 else ''} {counts[0][1]}"  # '3 files added, 1 removed'
    return ", ".join([first] + [f"{n} {what}" for n, what in counts[1:]])


def recorded_inputs(f) -> dict:
    """{relative path: size in bytes} of every input the cache was built from (open h5py file `f`; None for caches
    written before the list existed)."""
    if "inputs" not in f:
        return None
    paths = [p.decode() if isinstance(p, bytes) else p for p in f["inputs/path"][:]]
    return dict(zip(paths, f["inputs/size"][:].tolist()))
