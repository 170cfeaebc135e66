"""Calibration: temperature scaling (fitted on rows that exclude the photos it is applied
to), top-label reliability curves, and the calibration intercept and slope of external
validation."""
from __future__ import annotations

import numpy as np
from scipy import optimize, special

from handjax.evaluation.clinical import ECE_BINS, ratio, top_label_bins
from handjax.evaluation.tasks import TASKS


def _nll(logits, y, temperature):
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]))


TEMPERATURE_BOUNDS = (1e-2, 1e2)


def fit_temperature(logits, y, bounds=TEMPERATURE_BOUNDS) -> float:
    """The temperature T > 0 minimising the mean NLL of ``softmax(logits / T)``, in float64.

    Fit it on data that never includes the test fold (the inner validation split). The NLL is
    convex in 1/T, hence unimodal in log T: a bounded Brent search in log T over ``bounds``
    finds the minimum (a bound is returned when the data push past it, e.g. separable data).
    For heads of independent sigmoids (binary cross-entropy) pass ``log(p / p.sum(-1))``, the
    log of the normalised probabilities, as ``logits``.
    """
    logits, y = np.asarray(logits, np.float64), np.asarray(y, np.int64)
    lo, hi = np.log(bounds)
    res = optimize.minimize_scalar(lambda t: _nll(logits, y, np.exp(t)), bounds=(lo, hi),
                                   method="bounded", options={"xatol": 1e-7})
    return float(np.exp(res.x))


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` in float64."""
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def log_probs(prob) -> np.ndarray:
    """``log p`` (clipped at 1e-12) in float64: the logits temperature scaling works on, so
    softmax, sigmoid and ordinal heads calibrate alike."""
    return np.log(np.clip(np.asarray(prob, np.float64), 1e-12, 1.0))


def at_bound(temperature: float, bounds=TEMPERATURE_BOUNDS, rtol: float = 1e-3) -> bool:
    """Whether a fitted temperature sits at a search bound: the NLL kept falling past it
    (e.g. separable rows), so it is a limit, not a fit."""
    return any(abs(np.log(temperature) - np.log(b)) < rtol for b in bounds)


def cross_fitted_temperatures(prob, y, fold) -> list[float]:
    """Per fold k, the temperature minimising the NLL of the *other* folds' out-of-fold
    probabilities ``prob`` (each row predicted by the fold model that held it out): fold k's
    own photos never touch T_k, and no photo is taken from training."""
    z, y, fold = log_probs(prob), np.asarray(y, np.int64), np.asarray(fold)
    return [fit_temperature(z[fold != k], y[fold != k]) for k in range(int(fold.max()) + 1)]


def reliability_curve(y, prob, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability: per equal-width bin ``(j/n, (j+1)/n]`` of confidence = max_k p_k,
    the mean confidence, the accuracy of the probabilities' argmax and the photo count (empty
    bins have NaN means). :func:`handjax.evaluation.clinical.ece_binned` is
    ``sum count/N |acc - conf|`` over these bins."""
    y, prob = np.asarray(y, np.int64), np.asarray(prob, np.float64)
    conf, bins = top_label_bins(prob, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    correct = (prob.argmax(-1) == y).astype(np.float64)
    return {"confidence": ratio(np.bincount(bins, conf, n_bins), count),
            "accuracy": ratio(np.bincount(bins, correct, n_bins), count),
            "count": count.astype(np.int64),
            "edges": np.linspace(0, 1, n_bins + 1)}




def _logistic_newton(y, design, offset, start, max_iter: int = 100, tol: float = 1e-10):
    """Unpenalised logistic regression ``logit P(y) = offset + design @ beta`` by Newton's
    method in float64, with step halving; NaNs where it does not converge (separated data:
    the maximum-likelihood estimate is infinite)."""
    beta = np.asarray(start, np.float64)

    def loglik(b):
        eta = offset + design @ b
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    current = loglik(beta)
    for _ in range(max_iter):
        mu = special.expit(offset + design @ beta)
        grad = design.T @ (y - mu)
        hess = (design * (mu * (1 - mu))[:, None]).T @ design
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        for _ in range(30):   # halve until the likelihood does not fall
            new = loglik(beta + step)
            if new >= current - 1e-12:
                break
            step = step / 2
        beta, current = beta + step, new
        if np.max(np.abs(step)) < tol:
            return beta
    return np.full(len(beta), np.nan)


def calibration_intercept_slope(positive, p, eps: float = 1e-12) -> dict[str, float]:
    """Calibration of predicted probabilities ``p`` of a yes/no outcome, as external
    validation papers report it (Steyerberg; Van Calster et al. 2016), both in float64:

    * ``intercept`` (calibration-in-the-large): ``a`` in ``logit P(y) = a + logit(p)``, the
      slope fixed at 1; 0 when the predicted risks are right on average, < 0 when they are
      too high.
    * ``slope``: ``b`` in ``logit P(y) = a' + b logit(p)``; 1 is ideal, < 1 means the
      predictions are too extreme (overfitting), > 1 too modest.

    NaN where undefined (one class only, or every ``p`` equal). Where the outcome is
    separated by ``p`` (every positive at or above every negative, or the reverse), the
    slope's maximum-likelihood estimate does not exist: it grows without bound, and is
    returned as ``+inf`` (or ``-inf``), so a bootstrap counts such a resample as an unbounded
    one instead of dropping it. ``p`` is clipped to ``[eps, 1 - eps]`` before the logit."""
    y = np.asarray(positive, bool).astype(np.float64)
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    if y.size == 0 or y.min() == y.max():
        return {"intercept": float("nan"), "slope": float("nan")}
    lp = np.log(p) - np.log1p(-p)
    ones = np.ones((len(y), 1))
    (a,) = _logistic_newton(y, ones, lp, [0.0])
    b = _separated_slope(y.astype(bool), lp)
    if b is None:
        _, b = _logistic_newton(y, np.column_stack([ones, lp]), np.zeros_like(lp), [0.0, 1.0])
    return {"intercept": float(a), "slope": float(b)}


def _separated_slope(y: np.ndarray, lp: np.ndarray):
    """``+inf`` / ``-inf`` when ``lp`` separates the outcome ``y`` (completely or with ties at
    the border: the logistic slope diverges), NaN when ``lp`` is constant (no slope to fit),
    else None."""
    if lp.max() == lp.min():
        return float("nan")
    if lp[y].min() >= lp[~y].max():
        return float("inf")
    if lp[y].max() <= lp[~y].min():
        return float("-inf")
    return None


def calibration_lines(y, prob, pred=None) -> dict[str, float]:
    """:func:`calibration_intercept_slope` of every triage task (``intercept_<task>``,
    ``slope_<task>``: the task's positives against its score), in the ``metric_fn(y, prob,
    pred)`` form :func:`handjax.evaluation.bootstrap_ci` resamples (``pred`` is unused)."""
    out = {}
    for task, spec in TASKS.items():
        fit = calibration_intercept_slope(spec.positive(np.asarray(y)),
                                          spec.score(np.asarray(prob, np.float64)))
        out.update({f"{k}_{task}": v for k, v in fit.items()})
    return out
