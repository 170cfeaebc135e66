"""Calibration: temperature scaling (fitted on rows that exclude the photos it is applied
to) and top-label reliability curves."""
from __future__ import annotations

import numpy as np
from scipy import optimize

from handjax.clinical.metrics import ECE_BINS, ratio, top_label_bins


def _nll(logits, y, temperature):
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]))


def fit_temperature(logits, y, bounds=(1e-2, 1e2)) -> float:
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


def reliability_curve(y, prob, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability: per equal-width bin ``(j/n, (j+1)/n]`` of confidence = max_k p_k,
    the mean confidence, the accuracy of the probabilities' argmax and the photo count (empty
    bins have NaN means). :func:`handjax.clinical.metrics.ece_binned` is
    ``sum count/N |acc - conf|`` over these bins."""
    y, prob = np.asarray(y, np.int64), np.asarray(prob, np.float64)
    conf, bins = top_label_bins(prob, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    correct = (prob.argmax(-1) == y).astype(np.float64)
    return {"confidence": ratio(np.bincount(bins, conf, n_bins), count),
            "accuracy": ratio(np.bincount(bins, correct, n_bins), count),
            "count": count.astype(np.int64),
            "edges": np.linspace(0, 1, n_bins + 1)}


