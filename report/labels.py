"""Suspected label errors: out-of-fold (n, K) probabilities over every labelled row, then cleanlab's confident learning.

Reads pooled features and labels handed in (report/build.py pools them from the cache). Writes nothing.
Example: python -c "from report.labels import time_label_issues; print(time_label_issues(25000))"

Which model, and why: the baseline's pipeline (classify.baseline: StandardScaler + logistic regression on globally
average-pooled features), with the C that stage 2's cross-validation chose for it (baseline.joblib). Confident
learning needs a held-out P(label) for *every* labelled row, train and val alike, so the model is refitted K
times: the dense head takes minutes per fit, this pipeline 1-2 s at 25,000 rows. Re-choosing C in every fold
(7 Cs x 3 inner folds) took 10.7 s already at 5,000 rows.
"""
import time

import numpy as np

FOLDS = 5  # each row is predicted by a model fitted on the other 80%: cleanlab's usual K


def fold_model(c: float, seed: int):
    """The baseline's pipeline, StandardScaler + LogisticRegression, at a fixed C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from classify.baseline import MAX_ITER

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))


def out_of_fold(x, y, c: float, seed: int, folds: int = FOLDS, classes: int = 2) -> np.ndarray:
    """(n, K) P(class) for every row from a model that never saw it: stratified k-fold CV of `fold_model`."""
    from sklearn.model_selection import StratifiedKFold
    from tqdm import tqdm

    y = np.asarray(y, np.int64)
    classes = max(classes, int(y.max()) + 1)
    folds = max(2, min(folds, int(np.bincount(y, minlength=classes).min())))
    out = np.zeros((len(y), classes))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    for fit_rows, held_out in tqdm(splits, total=folds, desc="out-of-fold P(class)", unit="fold"):
        m = fold_model(c, seed).fit(x[fit_rows], y[fit_rows])
        out[np.ix_(held_out, m[-1].classes_)] = m.predict_proba(x[held_out])  # a class absent from a fold keeps 0
    return out


def find_issues(y, probs) -> np.ndarray:
    """Row positions whose given label cleanlab doubts, most doubtful first (ranked by self-confidence)."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: cleanlab's pool shares its inputs through module globals, which only fork-started workers see; in a
    # process whose start method is spawn (a bench child, for one) its workers fail with a NameError. What it
    # parallelises is one pass per class; `make report` took 16.5 s in all at 25,000 rows (docs/bench_scale.json).
    return np.asarray(find_label_issues(np.asarray(y, np.int64), np.asarray(probs), n_jobs=1,
                                        return_indices_ranked_by="self_confidence"), np.int64)


def time_label_issues(n: int = 25000, dim: int = 768, seed: int = 0) -> dict:
    """Seconds for out_of_fold + find_issues on `n` random pooled-like rows (the report's heaviest part)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, dim)).astype(np.float32) + 0.3 * y[:, None]
    t0 = time.perf_counter()
    p = out_of_fold(x, y, 1.0, seed)
    t1 = time.perf_counter()
    find_issues(y, p)
    return {"rows": n, "dim": dim, "out_of_fold_s": round(t1 - t0, 2), "cleanlab_s": round(time.perf_counter() - t1, 2)}
