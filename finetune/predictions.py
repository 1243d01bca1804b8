"""The two files that carry the fine-tuned model's probabilities: PREDICTIONS (any K) and Kaggle's SUBMISSION (K = 2).

Reads INPUT or TEST (an image, or a folder searched recursively) and MODEL through finetune/probabilities.py.
Writes PREDICTIONS (`path,label,prob,prob_<class>...`) or SUBMISSION (Kaggle Redux: `id,label` = P(dog)) and, next to
each, `<name>.skipped.txt` listing undecodable files; each under a lock on its file (one writer per output).
Example: python -m finetune.predict --input data/test --model artifacts/finetune/model.keras --out artifacts/predictions.csv

PREDICTIONS: `label` is the predicted class, `prob` its probability, and one `prob_<class>` column per class of the
model (the cache's class names, in their order) holds the (n, K) row; the columns sum to 1 (to the 6 decimals
written). SUBMISSION is the Kaggle Dogs vs Cats file: P(class 1) of a cat/dog model, clipped to [CLIP, 1 - CLIP].

Predicting from the feature cache for already-cached images is not offered: the cache holds `mixed7` outputs,
and fine-tuning changed the layers that compute them, so cached features no longer describe this model.
"""
import os

import numpy as np

from core import WorkflowError
from core.files import write_csv, write_text
from core.lock import output_lock
from core.metrics import predicted

from .probabilities import DEFAULT_BATCH, list_inputs, predict_path
from .record import num_classes, read_meta

# The competition is scored on log loss: one confident mistake at P = 1e-15 costs 34.5, as much as ~50
# images at 0.5. Clipping to [0.005, 0.995] caps a mistake at -ln(0.005) = 5.3 while a correct answer still
# costs only -ln(0.995) = 0.005: a cheap insurance on a leaderboard where the top scores are ~0.03-0.05.
CLIP = 0.005  # the default of CLIP: P(dog) goes to [CLIP, 1 - CLIP]
# Kaggle needs a row for every id. A test image that cannot be decoded gets the uninformed answer, 0.5,
# whose log loss (ln 2 = 0.69) is the least that can be guaranteed without looking at the image.
BROKEN_PROB = 0.5
LABEL_FORMAT = "{:.6f}"


def write_skipped(out, root, broken) -> str:
    """`<out stem>.skipped.txt`: one `path<TAB>reason` line per file that did not decode; returns its path."""
    path = os.path.splitext(out)[0] + ".skipped.txt"
    write_text(path, "".join(f"{os.path.join(root, p)}\t{r}\n" for p, r in broken))
    return path


def prediction_columns(class_names) -> list:
    """PREDICTIONS' header: path, label, prob, then prob_<class> for each class in the model's order."""
    return ["path", "label", "prob"] + [f"prob_{n}" for n in class_names]


def prediction_rows(pred, single_file: str = "") -> list:
    """One row per decodable image of `pred` (probabilities.Predicted): its path, predicted class, that class's P,
    and the K probabilities."""
    names, ok = pred.class_names, ~np.isnan(pred.probs).any(axis=1)
    label = predicted(pred.probs[ok]) if ok.any() else np.zeros(0, int)
    rows = []
    for rel, k, p in zip([r for r, good in zip(pred.paths, ok) if good], label, pred.probs[ok]):
        path = single_file or os.path.join(pred.root, rel)
        rows.append([path, names[int(k)], LABEL_FORMAT.format(p[k]), *(LABEL_FORMAT.format(v) for v in p)])
    return rows


def write_predictions(input_path, model_path, out, batch=DEFAULT_BATCH, tta="none", calibrate=True,
                      precision="") -> int:
    """`make predict`: PREDICTIONS for an image or a folder, under a lock on the file."""
    with output_lock(out, "PREDICTIONS"):
        pred = predict_path(input_path, model_path, batch, tta, calibrate, precision, "predict")
        rows = prediction_rows(pred, str(input_path) if os.path.isfile(input_path) else "")
        write_csv(out, prediction_columns(pred.class_names), rows)
        skipped_txt = write_skipped(out, pred.root, pred.broken)
    counts = ", ".join(f"{sum(r[1] == n for r in rows)} {n}" for n in pred.class_names)
    n, dt = len(pred.paths), pred.seconds
    print(f"{out}: {len(rows):,} images predicted ({counts}), {len(pred.broken):,} broken skipped (see "
          f"{skipped_txt}); {n:,} files in {dt:.1f}s, {n / dt if dt else 0.0:.1f} images/s; TTA={tta}, "
          f"T={pred.temperature:.3f}, PRECISION={pred.meta['precision_used']}")
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
    """[(id, label string)] sorted by id; `probs` is P(dog) per id (or the (n, 2) rows); broken (NaN) ->
    BROKEN_PROB; everything clipped to [clip, 1 - clip]."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 2:
        probs = probs[:, 1]
    p = np.clip(np.where(np.isnan(probs), BROKEN_PROB, probs), clip, 1 - clip)
    order = np.argsort(ids, kind="stable")
    return [(int(ids[i]), LABEL_FORMAT.format(p[i])) for i in order]


def check_kaggle_model(model_path):
    """A submission is Kaggle Dogs vs Cats' P(dog): the model must have two classes, class 1 a dog."""
    meta = read_meta(model_path)
    k, names = num_classes(meta), meta["class_names"]
    if k != 2:
        raise WorkflowError(f"MODEL={model_path}: a {k}-class model ({', '.join(names[:5])}{', ...' if k > 5 else ''}"
                            f"); make submission writes Kaggle's Dogs vs Cats P(dog) file; for K classes use `make "
                            f"predict INPUT=<folder> MODEL={model_path}` (one prob_<class> column per class)")
    if not names[1].lower().startswith("dog"):
        raise WorkflowError(f"MODEL={model_path}: its class 1 is {names[1]!r}, not dog; Kaggle's label is "
                            f"P(dog), so train on a cat/dog folder")


def write_submission(test, model_path, out, batch=DEFAULT_BATCH, tta="none", calibrate=True, clip=CLIP,
                     precision="") -> int:
    """`make submission`: SUBMISSION in Kaggle Redux format for the images in TEST, under a lock on the file."""
    with output_lock(out, "SUBMISSION"):
        if not os.path.isdir(test):
            raise WorkflowError(f"TEST={test}: no such folder; unpack Kaggle's test zip with `make data` first")
        root, paths = list_inputs(test)
        ids = kaggle_ids(paths, root)
        check_kaggle_model(model_path)
        pred = predict_path(test, model_path, batch, tta, calibrate, precision, "submission")
        rows = submission_rows(ids, pred.probs, clip)
        write_csv(out, ["id", "label"], rows)
        skipped_txt = write_skipped(out, root, pred.broken)
    n, dt = len(paths), pred.seconds
    print(f"{out}: {len(rows):,} rows (ids {rows[0][0]}..{rows[-1][0]}), P(dog) clipped to [{clip:g}, {1 - clip:g}], "
          f"{len(pred.broken):,} broken image(s) given {BROKEN_PROB} (see {skipped_txt}); {n:,} files in "
          f"{dt:.1f}s, {n / dt if dt else 0.0:.1f} images/s; TTA={tta}, T={pred.temperature:.3f}, "
          f"PRECISION={pred.meta['precision_used']}")
    return 0
