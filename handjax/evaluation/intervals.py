"""Confidence intervals that do not claim more than the photos can tell.

Two kinds, one per kind of figure:

* **Proportions** (sensitivity, specificity, PPV, NPV, accuracy, the under-severity rate: a
  count of photos over a count of photos) get a Wilson score interval at an *effective*
  sample size: photos of one subject are not independent, so the count is shrunk by the
  design effect the subjects' clustering shows (:func:`proportion_interval`). A Wilson
  interval never has zero width at 0 or 1 (20 of 20 gives [0.839, 1], where a percentile
  bootstrap gives [1, 1]).
* **Everything else** (AUROC, kappa, Brier, ECE, calibration slopes ...) keeps the subject
  percentile bootstrap (:func:`percentile_interval`), with the resamples that gave no finite
  value counted (``n_finite``) and an infinite limit written as unbounded, never as a finite
  number.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def wilson_interval(p: float, n: float, alpha: float = 0.05) -> list[float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` trials (``n`` may be
    fractional: an effective sample size), without continuity correction; equal to
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` at integer ``k = p n``."""
    if not (math.isfinite(p) and math.isfinite(n) and n > 0):
        return [math.nan, math.nan]
    z2 = stats.norm.ppf(1 - alpha / 2) ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def _mean_ratio(num, den, repeat):
    """Per repeat r: numerator X_r, denominator N_r and p_r = X_r / N_r (NaN when N_r = 0)."""
    ids, r = np.unique(repeat, return_inverse=True)
    x = np.bincount(r, num, len(ids))
    n = np.bincount(r, den, len(ids))
    with np.errstate(invalid="ignore", divide="ignore"):
        return x, n, np.where(n > 0, x / np.where(n > 0, n, 1), np.nan), r


def proportion_interval(num, den, subjects, repeat=None, alpha: float = 0.05) -> dict:
    """A proportion's value and its Wilson interval at the effective sample size of
    clustered photos.

    Args:
      num, den: per row, whether the photo counts in the numerator / the denominator
        (``num`` implies ``den``; e.g. sensitivity: called positive and positive / positive).
      subjects: per row, its subject (the cluster).
      repeat: per row, its cross-validation repeat (a photo has one row per repeat); the
        value is the mean over repeats of each repeat's proportion.

    The variance of the value is the linearised (delta-method) variance of a mean of ratios
    under sampling of whole subjects, ``sum_s u_s^2`` with subject s's influence
    ``u_s = 1/R sum_r sum_{i in s, r} (num_i - p_r den_i) / N_r``: what a subject bootstrap
    that recomputes every repeat on the drawn subjects estimates (tested). The effective
    sample size is ``n_eff = p (1 - p) / var``, at most ``N R`` (N photos in the denominator,
    R repeats: never more informative than N R independent photos). With one photo per
    subject and one repeat, ``n_eff = N`` exactly (the plain Wilson interval); with every
    photo of a subject decided alike, ``n_eff`` is the number of subjects.

    At ``p = 0`` or ``1`` the data carry no variance to measure, and the limit of every photo
    of a subject agreeing is taken: ``n_eff`` is Kish's effective number of subjects,
    ``(sum m_s)^2 / sum m_s^2`` (``m_s``: the subject's photos in the denominator).

    Returns ``{"value", "ci<level>", "interval": "wilson", "n", "n_eff", "design_effect"}``
    (``design_effect = n / n_eff``; NaN everywhere when a repeat's denominator is 0).
    """
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    repeat = np.zeros(len(num), np.int64) if repeat is None else np.asarray(repeat)
    _, sid = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    x, n, p_r, r = _mean_ratio(num, den, repeat)
    key = f"ci{100 * (1 - alpha):g}"
    reps = len(n)
    if not (n > 0).all():
        return {"value": math.nan, key: [math.nan, math.nan], "interval": "wilson",
                "n": float(n.mean()), "n_eff": math.nan, "design_effect": math.nan}
    p = float(p_r.mean())
    u = np.bincount(sid, (num - p_r[r] * den) / n[r], sid.max() + 1) / reps
    var = float(np.sum(u * u))
    m = np.bincount(sid, den, sid.max() + 1) / reps      # the subject's photos per repeat
    kish = float(m.sum() ** 2 / np.sum(m * m))
    at_bound = p <= 1e-12 or p >= 1 - 1e-12 or var <= 0
    n_eff = kish if at_bound else p * (1 - p) / var
    # a cap, not a floor: never more informative than N R independent photos (var -> 0
    # inside (0, 1) would otherwise claim certainty); below it, repeats may narrow it
    n_eff = min(n_eff, float(n.mean()) * reps)
    return {"value": p, key: wilson_interval(p, n_eff, alpha), "interval": "wilson",
            "n": float(n.mean()), "n_eff": n_eff, "design_effect": float(n.mean()) / n_eff}


def kish_subjects(mask, subjects) -> float:
    """Kish's effective number of subjects among the rows ``mask``: ``(sum m)^2 / sum m^2``
    for subjects with ``m`` such rows (the number of subjects when each has as many)."""
    _, sid = np.unique(np.asarray(subjects).astype(str)[np.asarray(mask, bool)],
                       return_inverse=True)
    m = np.bincount(sid).astype(np.float64)
    return float(m.sum() ** 2 / np.sum(m * m)) if len(m) else 0.0


def _hanley_mcneil_var(theta: float, m: float, n: float) -> float:
    """Hanley & McNeil's variance of an AUROC ``theta`` from ``m`` positives and ``n``
    negatives, with both counts set to ``N* = (m + n) / 2 - 1`` inside the bracket
    (Newcombe 2006)."""
    nstar = (m + n) / 2 - 1
    return theta * (1 - theta) / (m * n) * (
        1 + (nstar - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))


def auroc_score_interval(theta: float, m: float, n: float, alpha: float = 0.05) -> list[float]:
    """The Wilson-type score interval of an AUROC (Newcombe, "Confidence intervals for an
    effect size measure based on the Mann-Whitney statistic. Part 2", Stat Med 2006, method
    5): the ``t`` with ``(theta - t)^2 = z^2 V(t)``, ``V`` :func:`_hanley_mcneil_var` at
    ``m`` positives and ``n`` negatives (effective counts may be fractional). Like Wilson's
    it keeps its width at 0 and 1, where the bootstrap's collapses."""
    from scipy.optimize import brentq
    if not (math.isfinite(theta) and m > 0 and n > 0):
        return [math.nan, math.nan]
    z2 = stats.norm.ppf(1 - alpha / 2) ** 2

    def gap(t):
        return (theta - t) ** 2 - z2 * _hanley_mcneil_var(t, m, n)

    # V vanishes at 0 and 1, so at a bound the bracket starts just inside it (gap < 0 there)
    inner = min(max(theta, 1e-9), 1 - 1e-9)
    lo = brentq(gap, 0.0, inner, xtol=1e-13) if theta > 0 else 0.0
    hi = brentq(gap, inner, 1.0, xtol=1e-13) if theta < 1 else 1.0
    return [float(lo), float(hi)]


def _quantile(sorted_x: np.ndarray, q: float) -> float:
    """numpy's default (linear) percentile of sorted values that may hold +-inf: a quantile
    that interpolates toward an infinite neighbour is that infinity (unbounded)."""
    pos = q * (len(sorted_x) - 1)
    i = int(math.floor(pos))
    j, f = min(i + 1, len(sorted_x) - 1), pos - i
    a, b = float(sorted_x[i]), float(sorted_x[j])
    if f == 0 or a == b:
        return a
    if a == -math.inf:
        return a
    if b == math.inf:
        return b
    return a + f * (b - a)


def percentile_interval(value: float, samples, alpha: float = 0.05) -> dict:
    """The percentile interval of bootstrap ``samples`` around a point ``value``.

    NaN samples (undefined on that resample: a class absent, 0/0) are left out; infinite
    ones (a calibration slope on separated data: the maximum-likelihood estimate does not
    exist) stay in, as the largest or smallest values, so a limit that falls on them is
    unbounded. Returns ``{"value", "ci<level>", "n_finite", "n_resamples", "unbounded"}``:
    ``n_finite`` counts the finite samples of the ``n_resamples``, ``unbounded`` lists which of
    ``"value"``, ``"lower"``, ``"upper"`` are infinite (each written as null in
    results.json); ``[nan, nan]`` when no sample is defined. ``"collapsed": true`` marks an
    interval of zero width (all the central resamples equal): the bootstrap cannot measure
    the spread there (an AUROC of 1 on 20 photos), which is not certainty."""
    samples = np.asarray(samples, np.float64)
    defined = np.sort(samples[~np.isnan(samples)])
    key = f"ci{100 * (1 - alpha):g}"
    ci = ([_quantile(defined, alpha / 2), _quantile(defined, 1 - alpha / 2)]
          if len(defined) else [math.nan, math.nan])
    flags = [name for name, x in (("value", value), ("lower", ci[0]), ("upper", ci[1]))
             if math.isinf(x)]
    out = {"value": float(value), key: ci, "n_finite": int(np.isfinite(defined).sum()),
           "n_resamples": len(samples), "unbounded": flags}
    if len(defined) and ci[0] == ci[1]:
        out["collapsed"] = True    # every resample agreed: the width is unknown, not zero
    return out
