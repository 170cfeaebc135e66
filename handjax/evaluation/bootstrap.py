"""Intervals over subjects: the subject-level (cluster) bootstrap, where subjects are drawn
with replacement and every photo of a drawn subject comes along, so photos of one hand or
one person are never treated as independent evidence, and for proportions a Wilson interval
at the effective sample size that clustering leaves (:mod:`handjax.evaluation.intervals`);
per-fold and per-subgroup tables built on them."""
from __future__ import annotations

import numpy as np

from handjax.evaluation.clinical import any_disease_metrics, as_arrays, clinical_metrics
from handjax.evaluation.intervals import (auroc_score_interval, kish_subjects,
                                         percentile_interval, proportion_interval)

_BOOT_CHUNK = 2 ** 21  # photo weights per batched bootstrap chunk (16 MiB of float64)


def subject_bootstrap_blocks(subjects, n_boot: int, seed: int = 0, rows: int | None = None):
    """``(rows, N)`` blocks of photo weights, ``n_boot`` rows in all (default: one block):
    each row draws the S distinct subjects S times with replacement; a photo's weight is how
    often its subject was drawn. One generator draws the subjects block after block, so any
    ``rows`` gives the same rows in the same order, while memory holds ``rows`` x N weights
    rather than ``n_boot`` x N."""
    _, subject_id = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    s = subject_id.max() + 1
    rng = np.random.default_rng(seed)
    rows = rows or n_boot
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, s, (b, s))
        counts = np.bincount((draws + s * np.arange(b)[:, None]).ravel(), minlength=b * s)
        yield counts.reshape(b, s)[:, subject_id].astype(np.float64)


def _resample_loop(metric_fn, y, prob, pred, w) -> dict[str, np.ndarray]:
    """Fallback for a metric_fn without a ``.batched`` form: repeat the photos row by row."""
    out: dict[str, list] = {}
    idx_all = np.arange(len(y))
    for row in w:
        idx = np.repeat(idx_all, row.astype(np.int64))
        for k, v in metric_fn(y[idx], prob[idx], pred[idx]).items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _resamples(metric_fn, y, prob, pred, w) -> dict[str, np.ndarray]:
    """``metric_fn`` under each row of photo weights ``w`` ``(B, N)``: all at once through
    its ``.batched`` form where it has one, else photo by photo."""
    batched = getattr(metric_fn, "batched", None)
    if batched is None:
        return _resample_loop(metric_fn, y, prob, pred, w)
    return {k: np.asarray(v, np.float64) for k, v in batched(y, prob, pred, w).items()}


def _bootstrap_samples(metric_fn, y, prob, pred, subjects, masks, n_boot: int, seed: int,
                       names: list) -> dict[str, np.ndarray]:
    """The ``n_boot`` subject-resampled values of each of ``names``, each the mean over the
    repeats (``masks``) recomputed on the same drawn subjects. The weights come in blocks of
    ~2M photo weights (:data:`_BOOT_CHUNK`, 16 MiB of float64), which bound the (resamples,
    photos) arrays on large N."""
    rows = max(1, _BOOT_CHUNK // max(len(y), 1))
    blocks = []
    for w in subject_bootstrap_blocks(subjects, n_boot, seed, rows):
        per_repeat = [_resamples(metric_fn, y[m], prob[m], pred[m], w[:, m]) for m in masks]
        blocks.append({k: np.mean([r[k] for r in per_repeat], axis=0) for k in names})
    return {k: np.concatenate([b[k] for b in blocks]) for k in names}


def bootstrap_ci(metric_fn, y, prob, pred, subjects, *, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05, repeat=None) -> dict[str, dict]:
    """Point values of ``metric_fn(y, prob, pred)`` with 95% intervals over subjects.

    ``metric_fn`` returns ``{name: float}``. Its proportions (the names its
    ``.proportions(y, prob, pred)`` form returns as ``(numerator, denominator)`` photo masks:
    ``clinical_metrics``, ``any_disease_metrics`` and the operating points have one) get a
    Wilson interval at the effective sample size of the subjects' clustering
    (:func:`handjax.evaluation.intervals.proportion_interval`: never zero width at 0 or 1).
    Every other figure gets a subject percentile bootstrap: subjects are resampled with
    replacement (all photos of a drawn subject come along, counted as many times as it is
    drawn), through ``metric_fn.batched(y, prob, pred, weights)`` where it exists (all
    resamples at once), else photo by photo. The same ``seed`` gives the same resampled
    subjects, so intervals of different rules are paired.

    Repeated cross-validation (``repeat``: each row's repeat, R > 1 of them; a photo has one
    row per repeat): the value is the mean over repeats of each repeat's value, and its
    interval is that of this mean: every resample draws the subjects once and recomputes
    *all* repeats on them, so the interval narrows as R grows (what the fold assignments
    happened to do averages out); ``between_repeat_sd``, the standard deviation of the R
    repeats' values, is reported beside it.

    Returns ``{name: {"value", "ci95", ...}}`` (the key is ``ci<level>`` for other
    ``alpha``): bootstrap entries add ``n_finite``, ``n_resamples`` and ``unbounded``
    (:func:`~handjax.evaluation.intervals.percentile_interval`), proportions ``interval``,
    ``n``, ``n_eff`` and ``design_effect``. ``n_boot=0``: point values only, every interval
    ``[nan, nan]``. A bootstrap interval of zero width (every resample gave the point value,
    e.g. a kappa of 1 on a small set) is flagged ``"collapsed": true``: the bootstrap cannot
    tell its width there, and it is no claim of certainty. An AUROC at 1 (or 0) whose
    resamples all agreed (the ones ``metric_fn.aurocs(y)`` names, with their positives)
    gets Newcombe's score interval instead (``"interval": "newcombe score ..."``).
    """
    y, prob, pred = as_arrays(y, prob, pred)
    repeat = np.zeros(len(y), np.int64) if repeat is None else np.asarray(repeat)
    masks = [repeat == r for r in np.unique(repeat)]
    if prob.ndim == 0:   # a metric of the decisions alone may be given prob=None
        prob = np.zeros(len(y))
    each = [metric_fn(y[m], prob[m], pred[m]) for m in masks]
    value = {k: float(np.mean([e[k] for e in each])) for k in each[0]}
    if n_boot == 0:   # eval.bootstrap=0: point values only
        return {k: _with_sd(percentile_interval(v, np.zeros(0), alpha), each, k)
                for k, v in value.items()}
    props = getattr(metric_fn, "proportions", None)
    parts = props(y, prob, pred) if props is not None else {}
    aurocs = metric_fn.aurocs(y) if hasattr(metric_fn, "aurocs") else {}
    rest = [k for k in value if k not in parts]
    samples = {}
    if rest:
        samples = _bootstrap_samples(metric_fn, y, prob, pred, subjects, masks, n_boot, seed,
                                     rest)
    out = {}
    for k, v in value.items():
        if k in parts:
            entry = _proportion_entry(parts[k], subjects, repeat, alpha)
            entry["value"] = v      # metric_fn's own value (equal; tested)
        else:
            entry = percentile_interval(v, samples[k], alpha)
            if entry.get("collapsed") and v in (0.0, 1.0) and k in aurocs:
                entry = _auroc_at_bound(entry, aurocs[k], subjects, alpha)
        out[k] = _with_sd(entry, each, k)
    return out


def _proportion_entry(part: tuple, subjects, repeat, alpha: float) -> dict:
    """:func:`proportion_interval` of one ``.proportions`` item: ``(num, den)``, or
    ``(num, den, component)`` for a mean of proportions (one per component, e.g. per class:
    averaged like repeats), or ``(num, den, component, scale)`` for a figure that is
    ``scale`` times such a mean (the grade error, ``2 * mean(|pred - y| / 2)``)."""
    num, den, *rest = part
    group, scale = (list(rest) + [None, 1.0][len(rest):])[:2]
    comp = repeat if group is None else np.unique(
        np.stack([repeat, np.asarray(group)], 1), axis=0, return_inverse=True)[1]
    entry = proportion_interval(num, den, subjects, np.ravel(comp), alpha)
    if scale != 1.0:
        key = next(k for k in entry if k.startswith("ci"))
        entry[key] = [scale * x for x in entry[key]]
        entry["scale"] = scale
    return entry


def _auroc_at_bound(entry: dict, positives: list, subjects, alpha: float) -> dict:
    """An AUROC of 1 (or 0) whose every resample agreed: the widest Newcombe score interval
    over its one-vs-rest splits ``positives``, at the effective numbers of positive and
    negative subjects (:func:`~handjax.evaluation.intervals.auroc_score_interval`)."""
    key = next(k for k in entry if k.startswith("ci"))
    cis = [auroc_score_interval(entry["value"], kish_subjects(p, subjects),
                                kish_subjects(~np.asarray(p, bool), subjects), alpha)
           for p in positives]
    entry = {k: v for k, v in entry.items() if k != "collapsed"}
    entry[key] = [min(c[0] for c in cis), max(c[1] for c in cis)]
    entry["interval"] = "newcombe score (the bootstrap collapsed at the bound)"
    return entry


def _with_sd(entry: dict, each: list[dict], name: str) -> dict:
    """``entry`` with ``between_repeat_sd`` (ddof 1) when there are repeats."""
    if len(each) > 1:
        entry["between_repeat_sd"] = float(np.std([e[name] for e in each], ddof=1))
    return entry


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
    ``{column: {value: {"n": photos, "n_subjects": ..., "accuracy": {"value", "ci95", ...},
    "sensitivity_any_disease": ..., "specificity_any_disease": ...,
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


