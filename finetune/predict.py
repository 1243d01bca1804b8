"""Predict with the fine-tuned model: one CSV row `path,prob_dog,label` per decodable image; broken ones are skipped.

Reads INPUT (an image file, or a folder searched recursively) and MODEL (the model.keras `make finetune` wrote).
Writes OUT (default artifacts/predictions.csv) and, next to it, `<name>.skipped.txt` listing undecodable files.
Example: python -m finetune.predict --input data/test --model artifacts/finetune/model.keras --out artifacts/predictions.csv

`prob_dog` is P(class 1) of the model's classes (the cache's class names: 'dog', 'dogs' or 'Dog' in every
supported layout); `label` is the class name with the larger probability. Images are decoded by stage 1's
image pipeline (extract/pipeline.py) at the model's own image size, read from the record inside the .keras file.

Predicting from the feature cache for already-cached images is not offered: the cache holds `mixed7` outputs,
and fine-tuning changed the layers that compute them, so cached features no longer describe this model.
"""
import argparse
import os
import time

import numpy as np

from core import WorkflowError, cli
from core.files import write_csv, write_text
from extract import images
from extract.pipeline import image_batches

from .infer import forward_fn
from .record import load_model

DEFAULT_BATCH = 32


def list_inputs(path):
    """(root, relative image paths, sorted) for one image file or every image under a folder."""
    path = str(path)
    if os.path.isfile(path):
        if not images.is_image_name(os.path.basename(path)):
            raise WorkflowError(f"INPUT={path}: not an image file name (expected one of "
                                f"{', '.join(sorted(images.IMAGE_EXTS))})")
        return os.path.dirname(path) or ".", [os.path.basename(path)]
    if not os.path.isdir(path):
        raise WorkflowError(f"INPUT={path}: no such file or folder; pass an image or a folder of images")
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.relpath(os.path.join(dirpath, n), path) for n in filenames if images.is_image_name(n)]
    if not found:
        raise WorkflowError(f"INPUT={path}: no images found (looked for {', '.join(sorted(images.IMAGE_EXTS))})")
    return path, sorted(found)


def predict_files(model, image_size: int, root, paths, batch: int = DEFAULT_BATCH, desc="predict"):
    """(P(class 1) per path, NaN where broken; [(path, reason)] of broken files; seconds), with a tqdm bar."""
    from tqdm import tqdm

    probs, broken = np.full(len(paths), np.nan), []
    forward = forward_fn(model)
    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for idx, x, ok, reason in image_batches(root, paths, image_size, batch):
            idx, ok = idx.numpy(), ok.numpy()
            p = forward(x)
            probs[idx[ok]] = p[ok]
            for i, good, r in zip(idx, ok, reason.numpy()):
                if not good:
                    broken.append((paths[i], r.decode()))
                    tqdm.write(f"skipped {os.path.join(root, paths[i])}: {r.decode()}")
            bar.update(len(idx))
    return probs, broken, time.perf_counter() - t0


def write_skipped(out, root, broken) -> str:
    """`<out stem>.skipped.txt`: one `path<TAB>reason` line per file that did not decode; returns its path."""
    path = os.path.splitext(out)[0] + ".skipped.txt"
    write_text(path, "".join(f"{os.path.join(root, p)}\t{r}\n" for p, r in broken))
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m finetune.predict", description=__doc__.splitlines()[0])
    p.add_argument("--input", default="data/test", help="an image file or a folder of images (INPUT)")
    p.add_argument("--model", default="artifacts/finetune/model.keras", help="model from make finetune (MODEL)")
    p.add_argument("--out", default="artifacts/predictions.csv", help="CSV to write (OUT)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per forward pass")
    return p.parse_args(argv)


@cli
def main(argv=None):
    a = parse_args(argv)
    root, paths = list_inputs(a.input)
    model, meta = load_model(a.model)
    names = meta["class_names"]
    probs, broken, dt = predict_files(model, meta["image_size"], root, paths, a.batch)
    single = os.path.isfile(a.input)
    rows = [(a.input if single else os.path.join(root, rel), f"{p:.6f}", names[int(p >= 0.5)])
            for rel, p in zip(paths, probs) if not np.isnan(p)]
    write_csv(a.out, ["path", "prob_dog", "label"], rows)
    skipped_txt = write_skipped(a.out, root, broken)
    counts = ", ".join(f"{sum(r[2] == n for r in rows)} {n}" for n in names)
    print(f"{a.out}: {len(rows):,} images predicted ({counts}), {len(broken):,} broken skipped (see {skipped_txt}); "
          f"{len(paths):,} files in {dt:.1f}s, {len(paths) / dt if dt else 0.0:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
