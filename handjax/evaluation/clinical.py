"""The clinical metrics of one set of decisions: sklearn for the point values, a weighted
numpy form of the same for the subject bootstrap (a resample is a row of photo weights).

Classes are ordered by severity: 0 normal < 1 heberden < 2 ra. A value that is undefined on
some data (a class absent from a resample, a 0/0 ratio) is NaN, never an exception.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn import metrics as skm

from handjax.evaluation.tasks import TASKS
from handjax.data.records import CLASSES, DataError

ECE_BINS = 10


def ratio(num, den):
    """num / den with x/0 -> NaN (an undefined rate), elementwise."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _rates_from_cm(cm) -> dict:
    """Per-class one-vs-rest rates from ``(..., K, K)`` confusion matrices (NaN for 0/0)."""
    cm = np.asarray(cm, np.float64)
    n = cm.sum((-2, -1))
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    rows, cols = cm.sum(-1), cm.sum(-2)
    fn, fp = rows - tp, cols - tp
    tn = n[..., None] - tp - fn - fp
    out = {}
    for k, c in enumerate(CLASSES):
        out[f"sensitivity_{c}"] = ratio(tp[..., k], rows[..., k])
        out[f"specificity_{c}"] = ratio(tn[..., k], tn[..., k] + fp[..., k])
        out[f"ppv_{c}"] = ratio(tp[..., k], cols[..., k])
        out[f"npv_{c}"] = ratio(tn[..., k], tn[..., k] + fn[..., k])
    return out


def as_arrays(y, prob, pred):
    """Labels and decisions as int64, probabilities as float64."""
    return np.asarray(y, np.int64), np.asarray(prob, np.float64), np.asarray(pred, np.int64)


def _auroc(positive, score):
    """sklearn's binary AUROC, NaN when a class is absent."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return math.nan
    return float(skm.roc_auc_score(positive, score))


def _task_auroc(task: str, y, prob) -> float:
    """AUROC of a triage task (:data:`TASKS`): its positives ranked by its score."""
    return _auroc(TASKS[task].positive(y), TASKS[task].score(prob))


def _task_auroc_weighted(task: str, y, prob, w) -> np.ndarray:
    return _weighted_auroc(TASKS[task].positive(y), TASKS[task].score(prob), w)


def clinical_metrics(y, prob, pred) -> dict[str, float]:
    """The clinical metrics of one set of decisions, computed with ``sklearn.metrics``.

    Args:
      y: ``(N,)`` true class ids (0 normal, 1 heberden, 2 ra).
      prob: ``(N, 3)`` class probabilities (rows sum to 1) behind the decisions.
      pred: ``(N,)`` decided class ids (argmax, calibrated argmax, MEC, SVM ...).

    Returns ``{name: float}``: ``accuracy``, ``balanced_accuracy`` (mean recall over the classes
    present); ``sensitivity_/specificity_/ppv_/npv_<class>`` one-vs-rest on the decisions;
    ``auroc_macro`` (one-vs-rest macro), ``auroc_any_disease`` (normal vs the rest, scored by
    p(heberden) + p(ra)), ``auroc_ra`` (ra vs rest, scored by p(ra)); ``qwk`` (quadratic-weighted
    kappa of the decisions); ``mae_grade`` (mean |pred - y| in grades); ``under_severity_rate``
    (fraction with pred < y); ``brier`` — the multi-class Brier score, mean over photos of
    ``sum_k (p_k - onehot_k)^2`` (range 0 … 2, i.e. the sum of the K one-vs-rest binary Briers);
    ``ece_10bin`` — top-label expected calibration error with 10 equal-width confidence bins
    ``(0, .1], (.1, .2], …, (.9, 1]``, confidence = max_k p_k, correct = argmax p == y (the
    probabilities' own top label, not ``pred``), ``sum_b n_b/N |acc_b - conf_b|``: biased
    upward at a few hundred photos (simulated perfectly calibrated data average ~0.07 at
    N = 150);
    ``ece_sweep`` — the same top-label L1 error with equal-mass bins, as many as keep the
    bins' accuracy monotone (:func:`ece_sweep_weighted`, Roelofs et al. 2022), less biased;
    ``log_loss`` (sklearn's, ``labels=[0, 1, 2]``). Undefined values (0/0, a class absent)
    are NaN.
    """
    y, prob, pred = as_arrays(y, prob, pred)
    labels = list(range(len(CLASSES)))
    cm = skm.confusion_matrix(y, pred, labels=labels)
    out = {"accuracy": float(skm.accuracy_score(y, pred))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes: sklearn warns, we report NaN
        out["balanced_accuracy"] = float(skm.balanced_accuracy_score(y, pred))
        out.update({k: float(v) for k, v in _rates_from_cm(cm).items()})
        present = np.isin(labels, y).all()
        out["auroc_macro"] = (float(skm.roc_auc_score(y, prob, multi_class="ovr", average="macro",
                                                      labels=labels)) if present else math.nan)
        out["auroc_any_disease"] = _task_auroc("any_disease", y, prob)
        out["auroc_ra"] = _task_auroc("ra", y, prob)
        out["qwk"] = float(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=labels))
    out["mae_grade"] = float(skm.mean_absolute_error(y, pred))
    out["under_severity_rate"] = float(np.mean(pred < y))
    onehot = np.eye(len(CLASSES))[y]
    out["brier"] = float(np.mean(((prob - onehot) ** 2).sum(-1)))
    out["ece_10bin"] = float(ece_binned(y, prob)[0])
    out["ece_sweep"] = float(ece_sweep_weighted(y, prob, np.ones((1, len(y))))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float32 rows sum to 1 within 1e-7, not sklearn's 1e-8
        out["log_loss"] = float(skm.log_loss(y, prob, labels=labels))
    return out


def _weighted_auroc(positive, score, w):
    """AUROC of each row of weights ``w`` ``(B, N)`` (photo i counted ``w[b, i]`` times): the
    Mann-Whitney statistic with ties counted 1/2, which is sklearn's trapezoidal ROC area.
    One sort for all resamples; NaN where a class has zero weight."""
    positive = np.asarray(positive, bool)
    order = np.argsort(score, kind="stable")
    s = score[order]
    _, first, inverse = np.unique(s, return_index=True, return_inverse=True)
    last = np.append(first[1:], len(s))  # one past each tie group's end
    wn = w[:, order] * ~positive[order]
    cneg = np.concatenate([np.zeros((len(w), 1)), np.cumsum(wn, 1)], 1)
    below = cneg[:, first[inverse]]
    ties = cneg[:, last[inverse]] - below
    wp = w[:, order] * positive[order]
    num = (wp * (below + 0.5 * ties)).sum(1)
    return ratio(num, wp.sum(1) * wn.sum(1))


def ovr_aurocs_batched(y, prob, w) -> np.ndarray:
    """``(B, K)`` one-vs-rest AUROCs (class k scored by p_k) under each row of photo weights
    ``w``; their row mean is sklearn's ovr macro AUROC."""
    return np.stack([_weighted_auroc(y == c, prob[:, c], w) for c in range(prob.shape[1])], 1)


def top_label_bins(prob, n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence max_k p_k and the 0-based equal-width bin of each photo, bins
    ``(j/n, (j+1)/n]`` (the first also takes 0)."""
    conf = np.asarray(prob, np.float64).max(-1)
    return conf, np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def ece_binned(y, prob, w=None, n_bins: int = ECE_BINS) -> np.ndarray:
    """Top-label ECE with ``n_bins`` equal-width bins, ``sum_b n_b/N |acc_b - conf_b|``, for
    each row of photo weights ``w`` ``(B, N)`` (default: one row of ones). The one ECE of
    handjax: the metrics, the bootstrap and the reliability plot all call it."""
    y, prob = np.asarray(y, np.int64), np.asarray(prob, np.float64)
    w = np.ones((1, len(y))) if w is None else np.asarray(w, np.float64)
    conf, bins = top_label_bins(prob, n_bins)
    correct = (prob.argmax(-1) == y).astype(np.float64)
    onehot_bins = np.eye(n_bins)[bins]  # (N, bins)
    gap = w @ (onehot_bins * (correct - conf)[:, None])  # sum over a bin of (acc - conf)
    return np.abs(gap).sum(1) / w.sum(1)


def _cumulative_at(cum_w, cum_v, v, at):
    """For each row b, the sum of ``v`` over the first ``at[b, m]`` units of mass of the
    photos in sorted order, photo j spanning ranks ``[cum_w[b, j-1], cum_w[b, j])``: the
    cumulative sum is linear inside a photo's block, so a bin edge that splits a photo's
    copies gets the right share of them. ``cum_w``/``cum_v`` are ``(B, N + 1)`` with a
    leading 0; ``at`` ``(B, M)``."""
    b, n1 = cum_w.shape
    offset = (np.arange(b) * (cum_w[:, -1].max() + 1))[:, None]
    j = np.searchsorted((cum_w[:, 1:] + offset).ravel(), (at + offset).ravel(), side="right")
    j = j.reshape(at.shape) - np.arange(b)[:, None] * (n1 - 1)   # photos wholly below ``at``
    j = np.minimum(j, n1 - 2)
    rows = np.arange(b)[:, None]
    return cum_v[rows, j] + v[j] * (at - cum_w[rows, j])


def ece_sweep_weighted(y, prob, w) -> np.ndarray:
    """The equal-mass monotonic-sweep ECE (Roelofs, Cain, Shlens & Mozer, "Mitigating bias in
    calibration error estimation", AISTATS 2022) of each row of photo weights ``w`` ``(B, N)``.

    Top-label: confidence = max_k p_k, correct = (argmax p == y). The photos, repeated by their
    weights, are sorted by confidence (ties: photo order) and cut into ``b`` equal-mass bins,
    rank ``i`` of ``M`` into bin ``floor(i * b / M)``. ``b`` is the largest number of bins,
    counting up from 2, for which the bins' accuracies still rise with confidence (never
    fall); the first ``b`` that breaks this stops the sweep (1 bin if ``b = 2`` does). The
    value is the L1 ECE of those bins: the sum over bins of ``|sum correct - sum confidence|``
    over the bin's photos, divided by ``M``.

    Why: the 10-equal-width-bin ECE is biased upward at a few hundred photos (every bin's
    noise adds to an absolute value: simulated perfectly calibrated probabilities average
    0.07 at N = 150), and its subject-bootstrap resamples sit above its own point value. The
    sweep uses as many bins as the data support: on the same data it averages 0.05 (0.035
    against 0.043 at N = 400), less biased but not unbiased — any L1 error of noisy bins is
    positive. With integer weights it equals the unweighted estimator on the repeated rows
    (tested); other weights act as masses.
    """
    y, prob = np.asarray(y, np.int64), np.asarray(prob, np.float64)
    w = np.atleast_2d(np.asarray(w, np.float64))
    conf = prob.max(-1)
    correct = (prob.argmax(-1) == y).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    conf, correct, ws = conf[order], correct[order], w[:, order]
    zero = np.zeros((len(w), 1))
    cum_w = np.concatenate([zero, np.cumsum(ws, 1)], 1)
    cum_c = np.concatenate([zero, np.cumsum(ws * correct, 1)], 1)
    cum_p = np.concatenate([zero, np.cumsum(ws * conf, 1)], 1)
    mass = cum_w[:, -1:]
    ece = np.abs(cum_c[:, -1] - cum_p[:, -1]) / mass[:, 0]      # one bin
    active = mass[:, 0] > 2  # the sweep tries b = 2 … M - 1 bins
    n_bins = 2
    while active.any():
        rows = np.flatnonzero(active)
        # bin edges, rank ceil(k M / b): the first rank of bin k (exact for integer masses)
        edges = np.ceil(np.arange(n_bins + 1)[None] * mass[rows] / n_bins - 1e-9)
        hits = _cumulative_at(cum_w[rows], cum_c[rows], correct, edges)
        confs = _cumulative_at(cum_w[rows], cum_p[rows], conf, edges)
        size = np.diff(edges, axis=1)
        hit, cnf = np.diff(hits, axis=1), np.diff(confs, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = hit / size
        monotone = ~(np.diff(acc, axis=1) < -1e-12).any(1) & (size > 0).all(1)
        ece[rows[monotone]] = np.abs(hit - cnf)[monotone].sum(1) / mass[rows[monotone], 0]
        active[rows[~monotone]] = False
        active &= mass[:, 0] > n_bins + 1
        n_bins += 1
    return ece


def _clinical_metrics_batched(y, prob, pred, w) -> dict[str, np.ndarray]:
    """:func:`clinical_metrics` for each row of photo weights ``w`` ``(B, N)`` at once (a
    bootstrap resample is a weight row: photo i drawn ``w[b, i]`` times). Tested equal to
    sklearn on the repeated photos."""
    y, prob, pred = as_arrays(y, prob, pred)
    k = len(CLASSES)
    w = np.asarray(w, np.float64)
    n = w.sum(1)
    cm = (w @ np.eye(k * k)[y * k + pred]).reshape(-1, k, k)
    rows, cols = cm.sum(2), cm.sum(1)
    out = {"accuracy": np.trace(cm, axis1=1, axis2=2) / n}
    recall = ratio(np.diagonal(cm, axis1=1, axis2=2), rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["balanced_accuracy"] = np.nanmean(recall, 1)
    out.update(_rates_from_cm(cm))
    ovr = ovr_aurocs_batched(y, prob, w)
    out["auroc_macro"] = ovr.mean(1)  # NaN as soon as one class is absent, as sklearn raises
    out["auroc_any_disease"] = _task_auroc_weighted("any_disease", y, prob, w)
    out["auroc_ra"] = ovr[:, 2]
    grade = (np.arange(k)[:, None] - np.arange(k)[None]) ** 2.0
    expected = rows[:, :, None] * cols[:, None, :] / n[:, None, None]
    out["qwk"] = 1 - ratio((grade * cm).sum((1, 2)), (grade * expected).sum((1, 2)))
    out["mae_grade"] = w @ np.abs(pred - y) / n
    out["under_severity_rate"] = w @ (pred < y) / n
    out["brier"] = w @ ((prob - np.eye(k)[y]) ** 2).sum(-1) / n
    out["ece_10bin"] = ece_binned(y, prob, w)
    out["ece_sweep"] = ece_sweep_weighted(y, prob, w)
    eps = np.finfo(np.float64).eps  # sklearn's clip
    out["log_loss"] = w @ -np.log(np.clip(prob[np.arange(len(y)), y], eps, 1 - eps)) / n
    return out


def _clinical_proportions(y, prob, pred) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The proportions among :func:`clinical_metrics`, as ``{name: (numerator, denominator)}``
    photo masks (or ``(numerator, denominator, component)`` for a mean of proportions, one
    per component: balanced accuracy, the mean recall of the classes present; a fourth item
    scales it: the grade error is twice the mean of ``|pred - y| / 2``, a fraction in
    [0, 1]): what :func:`handjax.evaluation.bootstrap_ci` gives a clustered Wilson interval
    instead of a bootstrap one."""
    y, _, pred = as_arrays(y, prob, pred)
    every = np.ones(len(y), bool)
    out = {"accuracy": (pred == y, every), "under_severity_rate": (pred < y, every),
           # the mean of the present classes' recalls: a mean of proportions (third item:
           # the component each photo's ratio belongs to, averaged like repeats)
           "balanced_accuracy": (pred == y, every, y),
           # |pred - y| / 2 lies in [0, 1]: a Wilson interval on its mean is conservative
           # (a 0/1 variable has the largest variance a [0, 1] one can have for its mean)
           "mae_grade": (np.abs(pred - y) / 2.0, every, None, 2.0)}
    for k, c in enumerate(CLASSES):
        truth, called = y == k, pred == k
        out[f"sensitivity_{c}"] = (truth & called, truth)
        out[f"specificity_{c}"] = (~truth & ~called, ~truth)
        out[f"ppv_{c}"] = (truth & called, called)
        out[f"npv_{c}"] = (~truth & ~called, ~called)
    return out


def _clinical_aurocs(y) -> dict[str, list[np.ndarray]]:
    """The AUROCs among :func:`clinical_metrics` and the positives of each of their
    one-vs-rest splits (the macro AUROC has one per class)."""
    y = np.asarray(y, np.int64)
    return {"auroc_macro": [y == k for k in range(len(CLASSES))],
            "auroc_any_disease": [TASKS["any_disease"].positive(y)],
            "auroc_ra": [TASKS["ra"].positive(y)]}


clinical_metrics.batched = _clinical_metrics_batched
clinical_metrics.proportions = _clinical_proportions
clinical_metrics.aurocs = _clinical_aurocs


def any_disease_metrics(y, prob, pred) -> dict[str, float]:
    """The triage question on its own: disease (heberden or ra) vs normal.

    ``accuracy`` (3-class), ``sensitivity_any_disease`` (pred != normal among label != normal),
    ``specificity_any_disease`` (pred == normal among label == normal), ``auroc_any_disease``
    (scored by p(heberden) + p(ra)).
    """
    y, pred = np.asarray(y), np.asarray(pred)
    sick, called = TASKS["any_disease"].positive(y), pred != 0
    return {"accuracy": float(skm.accuracy_score(y, pred)),
            "sensitivity_any_disease": float(ratio(np.sum(called & sick), np.sum(sick))),
            "specificity_any_disease": float(ratio(np.sum(~called & ~sick), np.sum(~sick))),
            "auroc_any_disease": _task_auroc("any_disease", y, prob)}


def _any_disease_batched(y, prob, pred, w):
    y, pred = np.asarray(y), np.asarray(pred)
    sick, called = TASKS["any_disease"].positive(y), pred != 0
    return {"accuracy": w @ (pred == y) / w.sum(1),
            "sensitivity_any_disease": ratio(w @ (called & sick), w @ sick),
            "specificity_any_disease": ratio(w @ (~called & ~sick), w @ ~sick),
            "auroc_any_disease": _task_auroc_weighted("any_disease", y, prob, w)}


def _any_disease_proportions(y, prob, pred):
    y, pred = np.asarray(y), np.asarray(pred)
    sick, called = TASKS["any_disease"].positive(y), pred != 0
    return {"accuracy": (pred == y, np.ones(len(y), bool)),
            "sensitivity_any_disease": (called & sick, sick),
            "specificity_any_disease": (~called & ~sick, ~sick)}


any_disease_metrics.batched = _any_disease_batched
any_disease_metrics.proportions = _any_disease_proportions
any_disease_metrics.aurocs = lambda y: {"auroc_any_disease": [TASKS["any_disease"].positive(y)]}




def class_coverage(y) -> dict:
    """What a photo set with labels ``y`` can assess, when a class has no photo.

    Returns ``{"missing": [classes with no photo], "tasks": [triage tasks (:data:`TASKS`)
    with both positives and negatives, the ones it assesses], "skipped": [tasks it cannot],
    "undefined": [figures left undefined (NaN) by the missing classes]}``. A missing class
    leaves its own sensitivity and the macro AUROC undefined (no positives to find) and the
    tasks without positives or negatives unassessable; everything else is computed as
    usual."""
    y = np.asarray(y, np.int64)
    counts = np.bincount(y, minlength=len(CLASSES))
    missing = [c for c, n in zip(CLASSES, counts) if n == 0]
    tasks, skipped = [], []
    for task, spec in TASKS.items():
        positive = spec.positive(y)
        (tasks if positive.any() and not positive.all() else skipped).append(task)
    undefined = [f"sensitivity_{c}" for c in missing] + (["auroc_macro"] if missing else [])
    return {"missing": missing, "tasks": tasks, "skipped": skipped, "undefined": undefined}


def coverage_line(coverage: dict, source) -> str | None:
    """One line saying what a set missing a class skips and what it assesses (None when no
    class is missing)."""
    if not coverage["missing"]:
        return None
    skipped = [TASKS[t].title for t in coverage["skipped"]]
    done = [TASKS[t].title for t in coverage["tasks"]]
    skips = f"skips the task(s) {', '.join(skipped)} and " if skipped else ""
    return (f"{source} has no photos of {', '.join(coverage['missing'])}: validation {skips}"
            f"leaves {', '.join(coverage['undefined'])} undefined; it assesses "
            f"{', '.join(done)}")


def assessable(y, source) -> tuple[dict, str | None]:
    """:func:`class_coverage` of labels ``y`` and its :func:`coverage_line`; a set that can
    assess no triage task (photos of one class only) is one DataError naming ``source``."""
    coverage = class_coverage(y)
    if not coverage["tasks"]:
        present = [c for c in CLASSES if c not in coverage["missing"]]
        raise DataError(f"{source} holds photos of {' and '.join(present)} only: no triage "
                        "task can be assessed (any disease needs normal and diseased photos, "
                        "RA needs RA and other photos); add photos of another class")
    return coverage, coverage_line(coverage, source)
