"""Unpack a downloaded Kaggle Dogs vs Cats zip into data/, nested zips (train.zip, test1.zip) included.

Reads: ZIP (dogs-vs-cats.zip or dogs-vs-cats-redux-kernels-edition.zip). Writes: data/train/, data/test*/.
Example: python -m extract.unpack --zip dogs-vs-cats.zip --out data
"""
import argparse
import os

from core import WorkflowError, cli
from core.lock import output_lock
from extract.images import KAGGLE_HINT
from extract.zips import unpack_all


def unpack(zip_path, out):
    """Extract `zip_path` into `out`, then every .zip it contained; return the folders made."""
    if not os.path.isfile(zip_path):
        raise WorkflowError(f"ZIP={zip_path}: no such file; {KAGGLE_HINT}")
    return unpack_all(zip_path, out)  # extract/zips.py: no write outside `out`, damaged zips, duplicates

@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zip", required=True)
    p.add_argument("--out", default="data")
    a = p.parse_args(argv)
    with output_lock(a.out, "OUT"):  # one unpacker per folder
        folders = unpack(a.zip, a.out)
    print(f"unpacked {a.zip} into {a.out}/: {', '.join(folders)}; train with DATA={a.out}/train")


if __name__ == "__main__":
    raise SystemExit(main())
