"""The subject-level (cluster) bootstrap: subjects are drawn with replacement and every photo
of a drawn subject comes along, so photos of one hand or one person are never treated as
independent evidence; per-fold and per-subgroup tables built on it."""
from __future__ import annotations

import math

import numpy as np

from handjax.evaluation.clinical import any_disease_metrics, as_arrays, clinical_metrics

_BOOT_CHUNK = 2 ** 21  # photo weights per batched bootstrap chunk (16 MiB of float64)


def subject_bootstrap_weights(subjects, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, N)`` photo weights: each row draws the S distinct subjects S times with
    replacement; a photo's weight is how often its subject was drawn."""
    _, subject_id = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    s = subject_id.max() + 1
    draws = np.random.default_rng(seed).integers(0, s, (n_boot, s))
    counts = np.bincount((draws + s * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * s)
    return counts.reshape(n_boot, s)[:, subject_id].astype(np.float64)


def _resample_loop(metric_fn, y, prob, pred, w) -> dict[str, np.ndarray]:
    """Fallback for a metric_fn without a ``.batched`` form: repeat the photos row by row."""
    out: dict[str, list] = {}
    idx_all = np.arange(len(y))
    for row in w:
        idx = np.repeat(idx_all, row.astype(np.int64))
        for k, v in metric_fn(y[idx], prob[idx], pred[idx]).items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def bootstrap_ci(metric_fn, y, prob, pred, subjects, *, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05, repeat=None) -> dict[str, dict]:
    """Point values of ``metric_fn(y, prob, pred)`` with subject-level percentile intervals.

    Subjects are resampled with replacement (all photos of a drawn subject come along, counted
    as many times as it is drawn). ``metric_fn`` returns ``{name: float}``; if it has a
    ``.batched(y, prob, pred, weights)`` form (``clinical_metrics`` and ``any_disease_metrics``
    do), all resamples are computed at once, else photos are repeated resample by resample.
    The same ``seed`` gives the same resampled subjects, so CIs of different rules are paired.

    Repeated cross-validation (``repeat``: each row's repeat, R > 1 of them; a photo has one
    row per repeat): the point value is the mean over repeats of the repeat's value, and each
    resample draws the subjects *and* one repeat at random, so the interval holds both the
    subject sampling and how the fold assignments happened to fall.

    Returns ``{name: {"value": x, "ci95": [lo, hi], "n_finite": k}}`` (the key is ``ci<level>``
    for other ``alpha``): percentiles of the ``k`` finite resamples; ``[nan, nan]`` if none
    (``n_boot=0``: no resamples, point values only).
    """
    y, prob, pred = as_arrays(y, prob, pred)
    if n_boot == 0:   # eval.bootstrap=0: point values only, every interval [nan, nan]
        n_boot, no_intervals = 1, True
    else:
        no_intervals = False
    w = subject_bootstrap_weights(subjects, n_boot, seed)
    ids = np.unique(repeat) if repeat is not None else np.zeros(1)
    if len(ids) == 1:
        value = metric_fn(y, prob, pred)
    else:
        repeat = np.asarray(repeat)
        each = [metric_fn(y[repeat == r], prob[repeat == r], pred[repeat == r]) for r in ids]
        value = {k: float(np.mean([e[k] for e in each])) for k in each[0]}
        drawn = ids[np.random.default_rng([seed, 1]).integers(0, len(ids), n_boot)]
        w = w * (repeat[None, :] == drawn[:, None])
    batched = getattr(metric_fn, "batched", None)
    if batched is None:
        samples = _resample_loop(metric_fn, y, prob, pred, w)
    else:  # chunks of ~2M weights bound the (resamples, photos) intermediates on large N
        rows = max(1, _BOOT_CHUNK // max(len(y), 1))
        parts = [batched(y, prob, pred, w[i:i + rows]) for i in range(0, n_boot, rows)]
        samples = {k: np.concatenate([np.asarray(p[k], np.float64) for p in parts])
                   for k in parts[0]}
    if no_intervals:
        return {k: _interval(v, np.zeros(0), alpha) for k, v in value.items()}
    return {k: _interval(v, samples[k], alpha) for k, v in value.items()}


def _interval(value, samples, alpha) -> dict:
    finite = samples[np.isfinite(samples)]
    key = f"ci{100 * (1 - alpha):g}"
    ci = (np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)]).tolist()
          if len(finite) else [math.nan, math.nan])
    return {"value": float(value), key: ci, "n_finite": len(finite)}


def per_fold_metrics(y, prob, pred, folds, metric_fn=clinical_metrics) -> dict:
    """``{fold: metric_fn(...) on that fold's photos}`` (NaN where a fold lacks a class);
    ``folds`` may be any labels (e.g. ``"repeat/fold"`` strings)."""
    y, prob, pred, folds = map(np.asarray, (y, prob, pred, folds))
    return {f.item(): metric_fn(y[folds == f], prob[folds == f], pred[folds == f])
            for f in np.unique(folds)}


def subgroup_table(y, prob, pred, subjects, groups: dict, n_boot: int = 2000,
                   seed: int = 0, repeat=None) -> dict:
    """Triage metrics within each subgroup, with subject-bootstrap CIs inside the subgroup.

    ``groups`` maps a column name (e.g. ``"fold"``, ``"sex"``) to one value per photo. Returns
    ``{column: {value: {"n": photos, "n_subjects": ..., "accuracy": {"value", "ci95",
    "n_finite"}, "sensitivity_any_disease": ..., "specificity_any_disease": ...,
    "auroc_any_disease": ...}}}`` (see :func:`any_disease_metrics`).
    """
    y, prob, pred, subjects = map(np.asarray, (y, prob, pred, subjects))
    repeat = np.zeros(len(y), np.int64) if repeat is None else np.asarray(repeat)
    table = {}
    for column, values in groups.items():
        values = np.asarray(values).astype(str)
        table[column] = {}
        for v in np.unique(values):
            m = values == v
            first = m & (repeat == 0)   # photos are counted once, not once per repeat
            row = {"n": int(first.sum()),
                   "n_subjects": len(np.unique(subjects[first].astype(str)))}
            row.update(bootstrap_ci(any_disease_metrics, y[m], prob[m], pred[m], subjects[m],
                                    n_boot=n_boot, seed=seed, repeat=repeat[m]))
            table[column][str(v)] = row
    return table


