"""Files written whole or not at all, JSON and CSV writing, file hashes and the fingerprint of a configuration.

Reads and writes whatever path it is given. Example: python -c "from core.files import file_hash; print(file_hash('README.md'))"

Every output of the project that is replaced as a whole (JSON records, CSVs, PNGs, .keras and .joblib files) is
written to `partial_name(path)` and renamed onto `path` only once complete: a reader, or a rerun after a kill,
never sees half a file. (The cache itself is different: it is appended to in place and committed by counters,
see cache/writer.py.)
"""
import contextlib
import csv
import hashlib
import json
import os


def partial_name(path) -> str:
    """`head.keras` -> `head.partial.keras`: the suffix stays last, since Keras and matplotlib check it."""
    folder, name = os.path.split(str(path))
    stem, _, ext = name.partition(".")
    return os.path.join(folder, f"{stem}.partial.{ext}" if ext else f"{stem}.partial")


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path to write; rename it onto `path` only if the block finishes (write, then commit)."""
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    """`obj` as indented, key-sorted JSON, atomically."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_csv(path, header, rows):
    """A CSV with `header` then `rows`, atomically."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_text(path, text: str):
    """A text file, atomically."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def file_hash(path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def fingerprint(obj) -> str:
    """sha256 of the canonical JSON of `obj`: the identity of a configuration or a file list."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
