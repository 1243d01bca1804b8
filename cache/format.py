"""The cache file's format: its name and version, split codes, chunking, and the identity attributes every writer sets.

Reads nothing; `write_attrs` writes the identity attributes into an open HDF5 file (layout: README, "The cache file").
Example: python -c "from cache.format import chunk_rows_for; print(chunk_rows_for((3, 3, 768), 'float32'))"
"""
import json
from dataclasses import dataclass

import numpy as np

from core.files import fingerprint  # noqa: F401  (the cache's fingerprint is the sha256 of its config's JSON)

FORMAT = "dogcat-feature-cache"
FORMAT_VERSION = 2  # 2: Fletcher32 on every dataset, checksummed metadata, fixed-length strings, sealed attributes
SPLIT_TRAIN, SPLIT_VAL, SPLIT_NONE = 0, 1, -1
CHUNK_BYTES = 4 << 20  # ~4 MiB row chunks: big sequential reads, few chunk-index entries
# views/<layer>'s `rows` attribute: which rows it holds. Caches written before updates existed hold train rows only.
VIEWS_EVERY_ROW = "every row, in row order (val rows too: a new split needs no forward pass)"
VIEWS_TRAIN_ROWS = "train rows only, in row order; FeatureCache.view_rows maps a row to its entry"
REASON_BYTES = 160  # skip reasons are short ("cannot identify image file"); fixed width keeps commits in place


def partial_path(path) -> str:
    """Where a cache is written until it is complete (resumable; renamed onto `path` when finalised)."""
    return f"{path}.partial"


def chunk_rows_for(row_shape, dtype) -> int:
    """Rows per ~4 MiB chunk."""
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // row_bytes)


@dataclass
class WriteSummary:
    path: str
    rows: int
    skipped: list  # [(relpath, reason)]


def write_attrs(f, config, fp, provenance):
    """Format, version, fingerprint, config and provenance (JSON), and flat copies of their keys."""
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["fingerprint"] = fp
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    for key, value in {**config, **provenance}.items():  # flat copies so that `h5dump -A` / h5py users can read them at a glance
        f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
