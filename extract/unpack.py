"""Unpack a downloaded Kaggle Dogs vs Cats zip into data/, nested zips (train.zip, test1.zip) included.

Reads: ZIP (dogs-vs-cats.zip or dogs-vs-cats-redux-kernels-edition.zip). Writes: data/train/, data/test*/.
Example: python -m extract.unpack --zip dogs-vs-cats.zip --out data
"""
import argparse
import os
import zipfile

from core import WorkflowError, cli
from extract.images import KAGGLE_HINT


def unpack(zip_path, out):
    """Extract `zip_path` into `out`, then every .zip it contained; return the folders made."""
    if not os.path.isfile(zip_path):
        raise WorkflowError(f"ZIP={zip_path}: no such file; {KAGGLE_HINT}")
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = z.namelist()
            z.extractall(out)
    except zipfile.BadZipFile:
        raise WorkflowError(f"ZIP={zip_path}: not a zip file (interrupted download?); download it again") from None
    for name in names:
        if name.endswith(".zip"):
            inner = os.path.join(out, name)
            with zipfile.ZipFile(inner) as z:
                z.extractall(os.path.dirname(inner))
            os.remove(inner)
    return sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zip", required=True)
    p.add_argument("--out", default="data")
    a = p.parse_args(argv)
    folders = unpack(a.zip, a.out)
    print(f"unpacked {a.zip} into {a.out}/: {', '.join(folders)}; train with DATA={a.out}/train")


if __name__ == "__main__":
    raise SystemExit(main())
