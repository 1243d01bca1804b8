"""Predictions with the fine-tuned model: the files to predict, P(dog) per image, and the two CSVs that carry it.

Reads INPUT or TEST (an image, or a folder searched recursively) and MODEL (the model.keras `make finetune` wrote).
Writes PREDICTIONS (`path,prob_dog,label`) or SUBMISSION (Kaggle Redux: `id,label` = P(dog)) and, next to each,
`<name>.skipped.txt` listing undecodable files; each under a lock on its file (one writer per output).
Example: python -m finetune.predict --input data/test --model artifacts/finetune/model.keras --out artifacts/predictions.csv

`prob_dog` is P(class 1) of the model's classes (the cache's class names: 'dog', 'dogs' or 'Dog' in every supported
layout), decoded by the one image pipeline (extract/pipeline.py) at the model's own image size, then finished for
log loss (finetune/finishing.py): TTA=flip averages the image and its mirror, CALIBRATE=1 applies the temperature
make finetune recorded, and a submission clips to [CLIP, 1 - CLIP].

Predicting from the feature cache for already-cached images is not offered: the cache holds `mixed7` outputs,
and fine-tuning changed the layers that compute them, so cached features no longer describe this model.
"""
import os
import time

import numpy as np

from core import WorkflowError
from core.files import write_csv, write_text
from core.lock import output_lock
from extract import images

from .finishing import DEFAULT_BATCH, finish, tta_forward
from .infer import forward_fn, predict_images
from .record import load_model

# The competition is scored on log loss: one confident mistake at P = 1e-15 costs 34.5, as much as ~50
# images at 0.5. Clipping to [0.005, 0.995] caps a mistake at -ln(0.005) = 5.3 while a correct answer still
# costs only -ln(0.995) = 0.005: a cheap insurance on a leaderboard where the top scores are ~0.03-0.05.
CLIP = 0.005  # the default of CLIP: P(dog) goes to [CLIP, 1 - CLIP]
# Kaggle needs a row for every id. A test image that cannot be decoded gets the uninformed answer, 0.5,
# whose log loss (ln 2 = 0.69) is the least that can be guaranteed without looking at the image.
BROKEN_PROB = 0.5
LABEL_FORMAT = "{:.6f}"


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


def predict_files(model, image_size: int, root, paths, batch: int = DEFAULT_BATCH, desc="predict", tta="none"):
    """(P(class 1) per path, NaN where broken; [(path, reason)] of broken files; seconds), with a tqdm bar.

    tta='flip': the mean of P over each image and its horizontal mirror (finetune/finishing.py)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        def on_batch(n, bad):
            for path, reason in bad:
                tqdm.write(f"skipped {os.path.join(root, path)}: {reason}")
            bar.update(n)

        probs, broken = predict_images(model, root, paths, image_size, batch, tta_forward(forward_fn(model), tta),
                                       on_batch)
    return probs, broken, time.perf_counter() - t0


def write_skipped(out, root, broken) -> str:
    """`<out stem>.skipped.txt`: one `path<TAB>reason` line per file that did not decode; returns its path."""
    path = os.path.splitext(out)[0] + ".skipped.txt"
    write_text(path, "".join(f"{os.path.join(root, p)}\t{r}\n" for p, r in broken))
    return path


def _finished(model_path, root, paths, batch, tta, calibrate, desc, precision=""):
    """(P(dog) finished for log loss, broken files, seconds, T, the model's record + `precision_used`) for `paths`
    under `root`, computed in PRECISION=`precision` (empty: the model's own)."""
    model, meta = load_model(model_path, precision)
    probs, broken, dt = predict_files(model, meta["image_size"], root, paths, batch, desc=desc, tta=tta)
    probs, t = finish(probs, meta, model_path, calibrate)
    return probs, broken, dt, t, meta


def write_predictions(input_path, model_path, out, batch=DEFAULT_BATCH, tta="none", calibrate=True,
                      precision="") -> int:
    """`make predict`: PREDICTIONS for an image or a folder, under a lock on the file."""
    with output_lock(out, "PREDICTIONS"):
        root, paths = list_inputs(input_path)
        probs, broken, dt, t, meta = _finished(model_path, root, paths, batch, tta, calibrate, "predict", precision)
        names = meta["class_names"]
        single = os.path.isfile(input_path)
        rows = [(input_path if single else os.path.join(root, rel), f"{p:.6f}", names[int(p >= 0.5)])
                for rel, p in zip(paths, probs) if not np.isnan(p)]
        write_csv(out, ["path", "prob_dog", "label"], rows)
        skipped_txt = write_skipped(out, root, broken)
    counts = ", ".join(f"{sum(r[2] == n for r in rows)} {n}" for n in names)
    print(f"{out}: {len(rows):,} images predicted ({counts}), {len(broken):,} broken skipped (see {skipped_txt}); "
          f"{len(paths):,} files in {dt:.1f}s, {len(paths) / dt if dt else 0.0:.1f} images/s; TTA={tta}, T={t:.3f}, "
          f"PRECISION={meta['precision_used']}")
    return 0


def kaggle_ids(paths, root) -> np.ndarray:
    """The numeric file stems as ints; raise WorkflowError on a non-numeric or duplicated stem."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    bad = [p for p, s in zip(paths, stems) if not s.isdigit()]
    if bad:
        raise WorkflowError(f"TEST={root}: {len(bad)} file name(s) are not numeric ids, e.g. {bad[:3]}; a submission "
                            f"needs Kaggle's test folder (1.jpg, 2.jpg, ...). For other folders use `make predict "
                            f"INPUT={root}`")
    ids = np.array([int(s) for s in stems], np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0])
        raise WorkflowError(f"TEST={root}: id {dup} appears {int(counts[uniq == dup][0])} times "
                            f"({[p for p, i in zip(paths, ids) if i == dup]}); keep one file per id")
    return ids


def submission_rows(ids, probs, clip: float = CLIP):
    """[(id, label string)] sorted by id; broken (NaN) -> BROKEN_PROB; everything clipped to [clip, 1 - clip]."""
    p = np.clip(np.where(np.isnan(probs), BROKEN_PROB, probs), clip, 1 - clip)
    order = np.argsort(ids, kind="stable")
    return [(int(ids[i]), LABEL_FORMAT.format(p[i])) for i in order]


def write_submission(test, model_path, out, batch=DEFAULT_BATCH, tta="none", calibrate=True, clip=CLIP,
                     precision="") -> int:
    """`make submission`: SUBMISSION in Kaggle Redux format for the images in TEST, under a lock on the file."""
    with output_lock(out, "SUBMISSION"):
        if not os.path.isdir(test):
            raise WorkflowError(f"TEST={test}: no such folder; unpack Kaggle's test zip with `make data` first")
        root, paths = list_inputs(test)
        ids = kaggle_ids(paths, root)
        positive = load_model_classes(model_path)[1]
        if not positive.lower().startswith("dog"):
            raise WorkflowError(f"MODEL={model_path}: its class 1 is {positive!r}, not dog; Kaggle's label is "
                                f"P(dog), so train on a cat/dog folder")
        probs, broken, dt, t, meta = _finished(model_path, root, paths, batch, tta, calibrate, "submission",
                                               precision)
        rows = submission_rows(ids, probs, clip)
        write_csv(out, ["id", "label"], rows)
        skipped_txt = write_skipped(out, root, broken)
    print(f"{out}: {len(rows):,} rows (ids {rows[0][0]}..{rows[-1][0]}), P(dog) clipped to [{clip:g}, {1 - clip:g}], "
          f"{len(broken):,} broken image(s) given {BROKEN_PROB} (see {skipped_txt}); {len(paths):,} files in "
          f"{dt:.1f}s, {len(paths) / dt if dt else 0.0:.1f} images/s; TTA={tta}, T={t:.3f}, "
          f"PRECISION={meta['precision_used']}")
    return 0


def load_model_classes(model_path) -> list:
    """The model's class names, from its record alone (no weights loaded)."""
    from .record import read_meta

    return read_meta(model_path)["class_names"]
