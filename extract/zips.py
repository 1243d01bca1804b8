"""Safe unpacking for `make data`: nothing written outside OUT, damaged zips stopped with the fix, duplicates decided.

Reads ZIP (and the zips inside it); writes their files under OUT. extract/unpack.py (`make data`) calls `unpack_all`.
Example: python -m extract.unpack --zip dogs-vs-cats.zip --out data

Rules (also in README, "Hardening"):
- a zip with any entry that is absolute, has a drive letter, or holds `..` is refused whole, before anything of it
  is written: Kaggle's zips never have such entries, so one that does is not the file you meant to download;
- a truncated or damaged zip (no central directory, a CRC mismatch, an entry cut short) stops with exit 2 and
  "download it again"; files already unpacked stay, and a rerun overwrites them;
- duplicate images, i.e. the same folder and file stem up to case (`test/1.jpg` and `test/1.JPG`, or `test/1.jpg`
  in the outer zip and again in a nested one): the first in unpacking order wins (outer zip in entry order, then each
  nested zip in turn); the others are not written, and each is named in one log line.
"""
import os
import re
import zipfile
import zlib

from core import WorkflowError
from extract.images import is_image_name


class UnsafeZip(WorkflowError):
    """A zip entry would be written outside the output folder."""


class DamagedZip(WorkflowError):
    """The zip is truncated or its data does not match its CRCs."""


def unsafe(name: str) -> bool:
    """Absolute, drive-lettered or `..`-holding entry names (either slash)."""
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/")


def duplicate_key(relpath: str) -> str:
    """Images collide on folder + stem up to case (one Kaggle id); other files on their path up to case."""
    d, base = os.path.split(relpath.replace("\\", "/"))
    stem = os.path.splitext(base)[0] if is_image_name(base) else base
    return f"{d.lower()}/{stem.lower()}"


def _extract(zip_path, out, top, seen: dict, label: str) -> list:
    """Extract one zip into `out` (inside `top`) after checking every entry; return the nested .zip files it wrote."""
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DamagedZip(f"ZIP={label}: truncated or not a zip file ({e}; interrupted download?); download it "
                         f"again, then rerun `make data ZIP={label}`") from None
    with z:
        infos = z.infolist()
        bad = [i.filename for i in infos if unsafe(i.filename)]
        if bad:
            raise UnsafeZip(f"ZIP={label}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} would be written outside "
                            f"{out}/ (e.g. {bad[0]!r}); refused whole, nothing of it was unpacked: get the zip "
                            f"from Kaggle again")
        root = os.path.realpath(out)
        nested = []
        for info in infos:
            target = os.path.realpath(os.path.join(out, info.filename))
            assert target == root or target.startswith(root + os.sep), target  # unsafe() already refused these
            if info.is_dir():
                continue
            rel = os.path.relpath(target, os.path.realpath(top))
            key = duplicate_key(rel)
            if key in seen:
                print(f"duplicate: {rel} (in {label}) not written; {seen[key]} wins (the first unpacked)")
                continue
            seen[key] = f"{rel} (in {label})"
            try:
                z.extract(info, out)
            except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                raise DamagedZip(f"ZIP={label}: entry {info.filename} is damaged or cut short ({e}); download the "
                                 f"zip again, then rerun `make data ZIP={label}`") from None
            if info.filename.lower().endswith(".zip"):
                nested.append(target)
    return nested


def unpack_all(zip_path, out) -> list:
    """Extract `zip_path` into `out`, then every .zip it contained (into that zip's folder); return the folders."""
    seen = {}
    os.makedirs(out, exist_ok=True)
    for inner in _extract(zip_path, out, out, seen, str(zip_path)):
        _extract(inner, os.path.dirname(inner), out, seen, f"{zip_path}:{os.path.basename(inner)}")
        os.remove(inner)
    return sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
