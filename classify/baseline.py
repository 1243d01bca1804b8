"""The scikit-learn baseline: StandardScaler + logistic regression (multinomial for K > 2) on globally average-pooled
features; predict_proba gives the (n, K) contract.

Reads pooled features from classify.data (never the whole cache). Writes HEAD_DIR/baseline.joblib.
Example: python -c "import joblib; print(joblib.load('artifacts/head/baseline.joblib'))"
"""
import time

import numpy as np

from core import WorkflowError

CS = np.logspace(-4, 2, 7)  # C from strong to weak L2: 768 standardised inputs need anything from heavy to light
CV_FOLDS = 5
MAX_ITER = 1000  # lbfgs at weak regularisation needs more than sklearn's default 100 on 768 features


def build(folds: int, seed: int):
    """Pipeline(StandardScaler, LogisticRegressionCV): C by stratified k-fold CV on the rows it is fitted on."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler sees all the train rows before CV splits them: it uses no labels, so C's choice is not biased.
    lr = LogisticRegressionCV(Cs=CS, l1_ratios=(0.0,), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              scoring="neg_log_loss", max_iter=MAX_ITER, random_state=seed,
                              use_legacy_attributes=False)
    return make_pipeline(StandardScaler(), lr)


def fit(x_train, y_train, seed: int, classes: int = 2):
    """Fit on the train rows only; return (pipeline, seconds)."""
    # lbfgs fits the multinomial (softmax) model for K > 2 and the binary one for K = 2: sklearn's default
    smallest = int(np.bincount(y_train, minlength=classes).min())
    folds = min(CV_FOLDS, smallest)
    if folds < 2:
        raise WorkflowError(f"the cache has {smallest} train row(s) of one class; choosing C by cross-validation "
                            f"needs at least 2 of each: add images or lower VAL_SPLIT, then rerun `make features`")
    t0 = time.perf_counter()
    model = build(folds, seed).fit(x_train, y_train)
    return model, time.perf_counter() - t0


def chosen_c(model) -> float:
    return float(np.ravel(model[-1].C_)[0])
