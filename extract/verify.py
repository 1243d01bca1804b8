"""The input files' identity: relative paths and sizes (VERIFY=size, default), or also their bytes (VERIFY=content).

Reads every image under DATA (content mode only). Writes nothing.
Example: python -m extract.verify --data data/train --verify content      # prints the fingerprint and images/s

Neither mode depends on where DATA is: a copied or moved folder gives the same fingerprint. Size mode is free but
misses a file replaced by another of exactly the same size; content mode hashes every file (sha256, in parallel:
hashlib releases the GIL on large buffers, so threads scale with cores and disk).
"""
import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core import WorkflowError
from core.files import file_hash as file_sha256, fingerprint

from .images import ImageSet, discover

MODES = ("size", "content")


def content_hashes(root, paths, threads=None, desc="hash inputs") -> list:
    """sha256 of every `root/path`, in order, on a thread pool, with a tqdm bar."""
    from tqdm import tqdm

    threads = threads or min(32, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        it = pool.map(file_sha256, [os.path.join(root, p) for p in paths])
        return list(tqdm(it, total=len(paths), desc=desc, unit="file", leave=False))


def input_sizes(root, paths) -> list:
    """The size in bytes of every `root/path`, in order."""
    return [os.path.getsize(os.path.join(root, p)) for p in paths]


def inputs_fingerprint(root, paths, mode: str = "size", sizes=None, hashes=None) -> str:
    """Fingerprint of the relative paths and sizes under `root` (`sizes`: input_sizes, when already measured); with
    mode 'content' also of every file's sha256 (`hashes`: content_hashes, when already computed)."""
    sizes = list(zip(paths, input_sizes(root, paths) if sizes is None else sizes))
    if mode == "size":
        return fingerprint(sizes)  # the same value as before VERIFY existed: existing caches stay up to date
    assert mode == "content", mode
    return fingerprint({"files": sizes, "sha256": list(hashes) if hashes else content_hashes(root, paths)})


def check_same_images(root, cache):
    """DATA must hold exactly the files the cache was built from (relative paths and sizes, and contents with
    VERIFY=content), wherever it lies now: a moved or copied folder is accepted. For stage 3 and the report."""
    mode = cache.config.get("verify", "size")
    if "labels_fingerprint" in cache.config:  # LABELS chose the images: the cache's own list of them is the set
        paths = sorted(cache.input_paths())
        missing = [p for p in paths if not os.path.isfile(os.path.join(root, p))]
        if missing:
            raise WorkflowError(f"DATA={root}: {len(missing)} of the {len(paths)} images FEATURES={cache.path} was "
                                f"built from are missing, e.g. {missing[0]}; pass the folder LABELS' paths are "
                                f"relative to ({cache.provenance.get('data')})")
        imgs = ImageSet(str(root), "labels-csv", paths, np.full(len(paths), -1, np.int8), cache.class_names)
    else:
        imgs = discover(root)
    if inputs_fingerprint(imgs.root, imgs.paths, mode) != cache.config["inputs_fingerprint"]:
        raise WorkflowError(f"DATA={root}: not the image set FEATURES={cache.path} was built from "
                            f"({cache.provenance.get('data')}, {cache.config['n_inputs']} files, VERIFY={mode}); pass "
                            f"that folder as DATA, or rebuild the cache with `make features DATA={root} "
                            f"FEATURES={cache.path}`")
    return imgs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m extract.verify", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/train")
    p.add_argument("--verify", default="content", choices=MODES)
    a = p.parse_args(argv)
    imgs = discover(a.data)
    t0 = time.perf_counter()
    fp = inputs_fingerprint(imgs.root, imgs.paths, a.verify)
    dt = time.perf_counter() - t0
    print(f"{a.data}: {len(imgs.paths)} files, VERIFY={a.verify} fingerprint {fp[:12]} in {dt:.2f}s "
          f"({dt / max(len(imgs.paths), 1) * 1000:.3f} s per 1,000 images)")


if __name__ == "__main__":
    main()
