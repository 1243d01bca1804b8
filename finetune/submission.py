"""Write a Kaggle Dogs vs Cats Redux submission: `id,label` with label = P(dog), one row per test image, sorted by id.

Reads TEST (Kaggle's test folder: `1.jpg` ... `12500.jpg`) and MODEL (the model.keras `make finetune` wrote).
Writes SUBMISSION (default artifacts/submission.csv) and, next to it, `<name>.skipped.txt` listing broken files.
Example: python -m finetune.submission --test data/test --model artifacts/finetune/model.keras --out artifacts/submission.csv
"""
import argparse
import os

import numpy as np

from core import WorkflowError, cli
from core.files import write_csv

from .predict import DEFAULT_BATCH, list_inputs, predict_files, write_skipped
from .record import load_model

# The competition is scored on log loss: one confident mistake at P = 1e-15 costs 34.5, as much as ~50
# images at 0.5. Clipping to [0.005, 0.995] caps a mistake at -ln(0.005) = 5.3 while a correct answer still
# costs only -ln(0.995) = 0.005: a cheap insurance on a leaderboard where the top scores are ~0.03-0.05.
CLIP_LO, CLIP_HI = 0.005, 0.995
# Kaggle needs a row for every id. A test image that cannot be decoded gets the uninformed answer, 0.5,
# whose log loss (ln 2 = 0.69) is the least that can be guaranteed without looking at the image.
BROKEN_PROB = 0.5
LABEL_FORMAT = "{:.6f}"


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


def submission_rows(ids, probs):
    """[(id, label string)] sorted by id; broken (NaN) -> BROKEN_PROB; everything clipped to [CLIP_LO, CLIP_HI]."""
    p = np.clip(np.where(np.isnan(probs), BROKEN_PROB, probs), CLIP_LO, CLIP_HI)
    order = np.argsort(ids, kind="stable")
    return [(int(ids[i]), LABEL_FORMAT.format(p[i])) for i in order]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m finetune.submission", description=__doc__.splitlines()[0])
    p.add_argument("--test", default="data/test", help="Kaggle's test folder of <id>.jpg (TEST)")
    p.add_argument("--model", default="artifacts/finetune/model.keras", help="model from make finetune (MODEL)")
    p.add_argument("--out", default="artifacts/submission.csv", help="CSV to write (SUBMISSION)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per forward pass")
    return p.parse_args(argv)


@cli
def main(argv=None):
    a = parse_args(argv)
    if not os.path.isdir(a.test):
        raise WorkflowError(f"TEST={a.test}: no such folder; unpack Kaggle's test zip with `make data` first")
    root, paths = list_inputs(a.test)
    ids = kaggle_ids(paths, root)
    model, meta = load_model(a.model)
    positive = meta["class_names"][1]
    if not positive.lower().startswith("dog"):
        raise WorkflowError(f"MODEL={a.model}: its class 1 is {positive!r}, not dog; Kaggle's label is P(dog), "
                            f"so train on a cat/dog folder")
    probs, broken, dt = predict_files(model, meta["image_size"], root, paths, a.batch, desc="submission")
    rows = submission_rows(ids, probs)
    write_csv(a.out, ["id", "label"], rows)
    skipped_txt = write_skipped(a.out, root, broken)
    print(f"{a.out}: {len(rows):,} rows (ids {rows[0][0]}..{rows[-1][0]}), P(dog) clipped to [{CLIP_LO}, {CLIP_HI}], "
          f"{len(broken):,} broken image(s) given {BROKEN_PROB} (see {skipped_txt}); {len(paths):,} files in "
          f"{dt:.1f}s, {len(paths) / dt if dt else 0.0:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
