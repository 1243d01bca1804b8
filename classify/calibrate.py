"""Temperature scaling for log loss: one number T fitted on val probabilities, applied as softmax(log P / T) (for K = 2
the same as sigmoid(logit(p) / T), which is what a binary model's single output gets).

Reads and writes nothing (stage 2 and both stage-3 paths record its result; predict and submission apply it).
Example: python -c "from classify.calibrate import fit_temperature; print(fit_temperature([0, 1, 1, 0], [0.1, 0.99, 0.6, 0.7]))"

Probabilities are the (n, K) contract (core.metrics.probabilities; a 1-D P(class 1) is K = 2). The logits are
log P: for a softmax head they differ from its pre-activation only by a per-row constant, which softmax ignores.

Why one number: a head trained to the lowest val loss is still over- or under-confident by a roughly constant factor
in logit space (Guo et al. 2017, "On Calibration of Modern Neural Networks"); dividing the logit by T fixes that
without moving any prediction across 0.5, so accuracy and AUC are unchanged and only log loss moves.
"""
import numpy as np

EPS = 1e-7  # the clip binary_metrics and Keras apply before a log: keeps logit(0) and logit(1) finite
LOG_T_BOUNDS = (-7.0, 7.0)  # the search's range, T in [0.0009, 1100]: the prior below keeps T far inside it
# The prior on log T: normal, centred on T = 1 (no change), sd 1 (T between 0.14 and 7.4 at 95%). Against the
# summed val log loss it weighs like about one val row: a few thousand rows overrule it, a few dozen are held by it.
LOG_T_PRIOR_SD = 1.0


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid_t(p, temperature: float) -> np.ndarray:
    z = logit(p) / float(temperature)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow for large |z|


def _softmax_t(p, temperature: float) -> np.ndarray:
    z = np.log(np.clip(p, EPS, 1.0)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)  # softmax is shift-invariant: this only keeps exp() finite
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(p, temperature: float) -> np.ndarray:
    """A 1-D (or scalar) P(class 1) -> sigmoid(logit(p) / T); (n, K) probabilities -> (n, K) softmax(log P / T),
    K = 2 through the sigmoid of its class-1 column. T = 1 gives back `p` (up to the EPS clip)."""
    p = np.asarray(p, np.float64)
    if p.ndim <= 1:
        return _sigmoid_t(p, temperature)
    if p.shape[1] == 2:
        q = _sigmoid_t(p[:, 1], temperature)
        return np.stack([1.0 - q, q], axis=1)
    return _softmax_t(p, temperature)


def log_loss(y, p) -> float:
    """Mean -log P(true class) of a 1-D P(class 1) or (n, K) probabilities, clipped to [EPS, 1 - EPS]."""
    p = np.asarray(p, np.float64)
    if p.ndim == 2 and p.shape[1] > 2:
        y = np.asarray(y).astype(int).reshape(-1)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)))) if len(y) else float("nan")
    if p.ndim == 2:
        p = p[:, 1]
    y, p = np.asarray(y, np.float64).reshape(-1), np.clip(p.reshape(-1), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if len(y) else float("nan")


def _wrong(y, p) -> np.ndarray:
    from core.metrics import predicted

    return predicted(p) != np.asarray(y).astype(int).reshape(-1)


def uninformative(y, p) -> str:
    """Why val cannot inform T (empty when it can): no rows, one class, or no misclassified row. Without an error
    the log loss falls monotonically as T -> 0, so it has no minimum: a fitted T would be the search's bound, and
    every later prediction would be pushed to 0 or 1."""
    if not len(y):
        return "no val rows"
    if len(np.unique(y)) < 2:
        return "val has one class only"
    if not np.any(_wrong(y, p)):  # argmax (K = 2: P(class 1) >= 0.5) right on every row
        return f"none of the {len(y)} val rows is misclassified, so the val log loss falls without a minimum as T -> 0"
    return ""


def fit_temperature(y, p) -> dict:
    """{"temperature", "val_log_loss_before", "val_log_loss_after", "n", "method", "reason"}: T for val probabilities
    `p` (a 1-D P(class 1) or (n, K)).

    Method: the maximum a posteriori T under a normal prior on log T (mean 0, sd LOG_T_PRIOR_SD): it minimises the
    summed val log loss + (log T)^2 / (2 sd^2), bounded (scipy's minimize_scalar). A large val set is fitted as by
    plain temperature scaling; a small one with few errors is pulled towards T = 1 instead of to an extreme. Where
    val cannot inform T at all (`uninformative`), T = 1 and `reason` says why. T = 1 is also kept whenever it is no
    worse, so calibrating never raises the val log loss it is fitted on.
    """
    from scipy.optimize import minimize_scalar

    from core.metrics import probabilities

    y, p = np.asarray(y, np.float64).reshape(-1), probabilities(p)
    k = p.shape[1]
    if k == 2:
        p = p[:, 1]  # the binary fit, number for number as before the (n, K) contract
    before = log_loss(y, p)
    t, after, reason = 1.0, before, uninformative(y, p)
    if not reason:
        def posterior(s):  # negative log posterior of log T = s, up to a constant
            return len(y) * log_loss(y, apply_temperature(p, np.exp(s))) + s * s / (2 * LOG_T_PRIOR_SD ** 2)

        res = minimize_scalar(posterior, bounds=LOG_T_BOUNDS, method="bounded")
        fitted = log_loss(y, apply_temperature(p, np.exp(res.x)))
        if fitted < before:
            t, after = float(np.exp(res.x)), fitted
        else:
            reason = "T = 1 is already the lowest val log loss"
    method = ("p' = sigmoid(logit(p) / T), T the MAP on val P(dog)" if k == 2 else
              f"P' = softmax(log P / T) over K={k} classes, T the MAP on val P")
    return {"temperature": t, "val_log_loss_before": before, "val_log_loss_after": after, "n": int(len(y)),
            "reason": reason,
            "method": f"temperature scaling: {method} under a N(0, {LOG_T_PRIOR_SD:g}) prior on log T"}


def describe(cal: dict) -> str:
    """One log line: T and the val log loss it moved, or why T stayed 1."""
    if cal.get("reason"):
        return (f"calibration: T=1 kept ({cal['reason']}); val log loss {cal['val_log_loss_before']:.4f} on "
                f"{cal['n']} val rows")
    return (f"calibration: T={cal['temperature']:.3f}, val log loss {cal['val_log_loss_before']:.4f} -> "
            f"{cal['val_log_loss_after']:.4f} on {cal['n']} val rows")
