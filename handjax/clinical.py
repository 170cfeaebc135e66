"""Results a clinical reader can trust: out-of-fold predictions -> metrics with subject-level CIs.

Pure numpy + sklearn statistics on a run's pooled out-of-fold predictions (no JAX):

* ``predictions.csv`` I/O (:func:`write_predictions`, :func:`read_predictions`);
* :func:`clinical_metrics` — per-class sensitivity / specificity / PPV / NPV, AUROCs, quadratic
  kappa, grade errors, Brier, ECE and log loss, computed with ``sklearn.metrics``;
* :func:`bootstrap_ci` — a **subject-level (cluster) bootstrap**: subjects are drawn with
  replacement and every photo of a drawn subject comes along, so photos of one hand or one
  person are never treated as independent evidence;
* temperature scaling fitted on data that excludes the test fold (:func:`fit_temperature`),
  operating points chosen on inner validation data and then frozen (:func:`choose_threshold`),
  subgroup tables, and :func:`metrics_from_predictions`, the one function that turns a
  ``predictions.csv`` into the ``clinical`` block of ``results.json``.

Classes are ordered by severity: 0 normal < 1 heberden < 2 ra. A value that is undefined on some
data (a class absent from a resample, a 0/0 ratio) is NaN, never an exception; bootstrap
intervals then use the finite resamples and say how many there were (``n_finite``).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import optimize
from sklearn import metrics as skm

from handjax.errors import HandjaxError

CLASSES = ("normal", "heberden", "ra")  # == handjax.data.CLASSES (kept here: no tfds import)
RULES = ("cnn", "cnn_calibrated", "svm")  # decision rules that carry probabilities
MEC_RULE = "cnn_mec"  # minimum-expected-cost decisions on the cnn probabilities
BASE_COLUMNS = ("file", "subject", "fold", "label")
PROB_TOLERANCE = 1e-3  # |sum_k p_k - 1| allowed in a predictions.csv row
ECE_BINS = 10
_BOOT_CHUNK = 2 ** 21  # photo weights per batched bootstrap chunk (16 MiB of float64)


class PredictionsError(HandjaxError, ValueError):
    """A predictions.csv (or a pair of them) that cannot be read or compared."""


# --------------------------------------------------------------------------------------------
# predictions.csv


@dataclasses.dataclass
class Predictions:
    """Pooled out-of-fold predictions of one run, one row per photo.

    ``probs[rule]`` is ``(N, 3)`` float64 for rule in :data:`RULES` (those present);
    ``pred[rule]`` is ``(N,)`` int class ids for the same rules plus ``"cnn_mec"``. ``extra``
    holds any further CSV columns (e.g. subgroup metadata) as string arrays.
    """
    file: np.ndarray
    subject: np.ndarray
    fold: np.ndarray
    label: np.ndarray
    probs: dict
    pred: dict
    extra: dict = dataclasses.field(default_factory=dict)
    class_names: tuple = CLASSES

    def probs_for(self, rule: str) -> np.ndarray:
        """The probabilities behind ``rule``'s decisions (cnn_mec decides on the cnn's)."""
        return self.probs["cnn" if rule == MEC_RULE else rule]


def prediction_columns(rules=RULES + (MEC_RULE,)) -> list[str]:
    """The CSV header, in order, for the given rules (``cnn_mec`` has a decision column only)."""
    cols = list(BASE_COLUMNS)
    for rule in rules:
        if rule != MEC_RULE:
            cols += [f"p_{rule}_{c}" for c in CLASSES]
        cols.append(f"pred_{rule}")
    return cols


def _present_rules(pred: dict) -> list[str]:
    return [r for r in RULES + (MEC_RULE,) if r in pred]


def write_predictions(path, preds: Predictions) -> Path:
    """Write ``preds`` as ``predictions.csv``: class names for labels and decisions, floats as
    shortest round-trip reprs of the float64 probabilities renormalised to sum to 1 (so a
    recomputation from the file equals the in-memory figures)."""
    rules = _present_rules(preds.pred)
    n = len(preds.file)
    columns = {"subject": preds.subject, "fold": preds.fold, "label": preds.label,
               **{f"p_{r}": p for r, p in preds.probs.items()},
               **{f"pred_{r}": p for r, p in preds.pred.items()}, **preds.extra}
    for name, values in columns.items():
        if len(values) != n:
            raise PredictionsError(f"{path}: column {name} has {len(values)} rows, file has {n}")
    lacking = [r for r in rules if ("cnn" if r == MEC_RULE else r) not in preds.probs]
    if lacking:
        raise PredictionsError(f"{path}: decisions pred_{lacking[0]} come without the "
                               "probabilities behind them (probs['cnn'] for cnn_mec)")
    probs = {r: _normalised(np.asarray(p, np.float64), f"probs[{r!r}]", path)
             for r, p in preds.probs.items()}
    extra_cols = list(preds.extra)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(prediction_columns(rules) + extra_cols)
        for i in range(n):
            row = [preds.file[i], preds.subject[i], int(preds.fold[i]),
                   CLASSES[int(preds.label[i])]]
            for r in rules:
                if r != MEC_RULE:
                    row += [repr(float(v)) for v in probs[r][i]]
                row.append(CLASSES[int(preds.pred[r][i])])
            w.writerow(row + [preds.extra[c][i] for c in extra_cols])
    return Path(path)


def _normalised(p: np.ndarray, column: str, path) -> np.ndarray:
    """Rows checked to sum to 1 within :data:`PROB_TOLERANCE`, then renormalised in float64."""
    s = p.sum(-1)
    bad = ~(np.abs(s - 1) <= PROB_TOLERANCE) | ~np.isfinite(p).all(-1) | (p < 0).any(-1)
    if bad.any():
        i = int(np.argmax(bad))
        raise PredictionsError(
            f"{path}: column {column}: data row {i + 1} probabilities sum to {s[i]:.6g} (or are "
            f"negative / not finite); each row must sum to 1 within {PROB_TOLERANCE}")
    return p / s[:, None]


def _class_ids(values, column: str, path) -> np.ndarray:
    index = {c: i for i, c in enumerate(CLASSES)}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise PredictionsError(f"{path}: column {column}: unknown class name {unknown[0]!r}; "
                               f"expected one of {', '.join(CLASSES)}")
    return np.array([index[v] for v in values], np.int64)


def _float_column(rows, column: str, path) -> np.ndarray:
    try:
        return np.array([float(r[column]) for r in rows], np.float64)
    except (TypeError, ValueError) as e:  # TypeError: a short row's missing cell
        raise PredictionsError(f"{path}: column {column}: not a number ({e})") from None


def read_predictions(path) -> Predictions:
    """Read a ``predictions.csv`` written by :func:`write_predictions`.

    Required columns: ``file, subject, fold, label`` and, for each rule present (one whose
    ``pred_<rule>`` column exists), its ``p_<rule>_<class>`` columns; ``pred_cnn_mec`` needs the
    cnn's. A malformed file raises :class:`PredictionsError` (a ``ValueError``) with one line
    naming the file and the column.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in BASE_COLUMNS if c not in header]
    rules = [r for r in RULES + (MEC_RULE,) if f"pred_{r}" in header]
    if not rules:
        missing.append("pred_cnn")
    if MEC_RULE in rules and "cnn" not in rules:
        missing.append("pred_cnn")
    missing += [c for c in prediction_columns(rules) if c not in header and c not in missing]
    if missing:
        raise PredictionsError(f"{path}: missing column {missing[0]} (header: {', '.join(header)})")
    if not rows:
        raise PredictionsError(f"{path}: no rows (a run writes one row per photo)")
    ragged = [i for i, r in enumerate(rows) if None in r or None in r.values()]
    if ragged:  # DictReader: None keys hold surplus cells, None values stand for missing ones
        raise PredictionsError(f"{path}: data row {ragged[0] + 1} has a different number of "
                               f"cells than the header's {len(header)} columns")
    try:
        fold = np.array([int(r["fold"]) for r in rows], np.int64)
    except (TypeError, ValueError) as e:
        raise PredictionsError(f"{path}: column fold: not an integer ({e})") from None
    probs = {}
    for r in rules:
        if r != MEC_RULE:
            p = np.stack([_float_column(rows, f"p_{r}_{c}", path) for c in CLASSES], -1)
            probs[r] = _normalised(p.reshape(len(rows), len(CLASSES)), f"p_{r}_*", path)
    known = set(prediction_columns(rules))
    return Predictions(
        file=np.array([r["file"] for r in rows], dtype=object),
        subject=np.array([r["subject"] for r in rows], dtype=object),
        fold=fold,
        label=_class_ids([r["label"] for r in rows], "label", path),
        probs=probs,
        pred={r: _class_ids([x[f"pred_{r}"] for x in rows], f"pred_{r}", path) for r in rules},
        extra={c: np.array([r[c] for r in rows], dtype=object) for c in header if c not in known},
    )


# --------------------------------------------------------------------------------------------
# Metrics: sklearn for the point values, a weighted numpy form for the bootstrap


def _ratio(num, den):
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
        out[f"sensitivity_{c}"] = _ratio(tp[..., k], rows[..., k])
        out[f"specificity_{c}"] = _ratio(tn[..., k], tn[..., k] + fp[..., k])
        out[f"ppv_{c}"] = _ratio(tp[..., k], cols[..., k])
        out[f"npv_{c}"] = _ratio(tn[..., k], tn[..., k] + fn[..., k])
    return out


def _top_label(prob):
    """Top-label confidence and the 0-based bin of each photo, bins ``(j/10, (j+1)/10]`` (the
    first also takes 0)."""
    conf = prob.max(-1)
    bins = np.clip(np.ceil(conf * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
    return conf, bins


def _arrays(y, prob, pred):
    """Labels and decisions as int64, probabilities as float64."""
    return np.asarray(y, np.int64), np.asarray(prob, np.float64), np.asarray(pred, np.int64)


def _auroc(positive, score):
    """sklearn's binary AUROC, NaN when a class is absent."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return math.nan
    return float(skm.roc_auc_score(positive, score))


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
    ``ece`` — top-label expected calibration error with 10 equal-width confidence bins
    ``(0, .1], (.1, .2], …, (.9, 1]``, confidence = max_k p_k, correct = argmax p == y (the
    probabilities' own top label, not ``pred``), ``sum_b n_b/N |acc_b - conf_b|``; ``log_loss``
    (sklearn's, ``labels=[0, 1, 2]``). Undefined values (0/0, a class absent) are NaN.
    """
    y, prob, pred = _arrays(y, prob, pred)
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
        out["auroc_any_disease"] = _auroc(y != 0, prob[:, 1] + prob[:, 2])
        out["auroc_ra"] = _auroc(y == 2, prob[:, 2])
        out["qwk"] = float(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=labels))
    out["mae_grade"] = float(skm.mean_absolute_error(y, pred))
    out["under_severity_rate"] = float(np.mean(pred < y))
    onehot = np.eye(len(CLASSES))[y]
    out["brier"] = float(np.mean(((prob - onehot) ** 2).sum(-1)))
    out["ece"] = float(_ece_weighted(y, prob, np.ones((1, len(y))))[0])
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
    return _ratio(num, wp.sum(1) * wn.sum(1))


def ovr_aurocs_batched(y, prob, w) -> np.ndarray:
    """``(B, K)`` one-vs-rest AUROCs (class k scored by p_k) under each row of photo weights
    ``w``; their row mean is sklearn's ovr macro AUROC."""
    return np.stack([_weighted_auroc(y == c, prob[:, c], w) for c in range(prob.shape[1])], 1)


def _ece_weighted(y, prob, w):
    conf, bins = _top_label(prob)
    correct = (prob.argmax(-1) == y).astype(np.float64)
    onehot_bins = np.eye(ECE_BINS)[bins]  # (N, bins)
    gap = w @ (onehot_bins * (correct - conf)[:, None])  # sum over a bin of (acc - conf)
    return np.abs(gap).sum(1) / w.sum(1)


def _clinical_metrics_batched(y, prob, pred, w) -> dict[str, np.ndarray]:
    """:func:`clinical_metrics` for each row of photo weights ``w`` ``(B, N)`` at once (a
    bootstrap resample is a weight row: photo i drawn ``w[b, i]`` times). Tested equal to
    sklearn on the repeated photos."""
    y, prob, pred = _arrays(y, prob, pred)
    k = len(CLASSES)
    w = np.asarray(w, np.float64)
    n = w.sum(1)
    cm = (w @ np.eye(k * k)[y * k + pred]).reshape(-1, k, k)
    rows, cols = cm.sum(2), cm.sum(1)
    out = {"accuracy": np.trace(cm, axis1=1, axis2=2) / n}
    recall = _ratio(np.diagonal(cm, axis1=1, axis2=2), rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["balanced_accuracy"] = np.nanmean(recall, 1)
    out.update(_rates_from_cm(cm))
    ovr = ovr_aurocs_batched(y, prob, w)
    out["auroc_macro"] = ovr.mean(1)  # NaN as soon as one class is absent, as sklearn raises
    out["auroc_any_disease"] = _weighted_auroc(y != 0, prob[:, 1] + prob[:, 2], w)
    out["auroc_ra"] = ovr[:, 2]
    grade = (np.arange(k)[:, None] - np.arange(k)[None]) ** 2.0
    expected = rows[:, :, None] * cols[:, None, :] / n[:, None, None]
    out["qwk"] = 1 - _ratio((grade * cm).sum((1, 2)), (grade * expected).sum((1, 2)))
    out["mae_grade"] = w @ np.abs(pred - y) / n
    out["under_severity_rate"] = w @ (pred < y) / n
    out["brier"] = w @ ((prob - np.eye(k)[y]) ** 2).sum(-1) / n
    out["ece"] = _ece_weighted(y, prob, w)
    eps = np.finfo(np.float64).eps  # sklearn's clip
    out["log_loss"] = w @ -np.log(np.clip(prob[np.arange(len(y)), y], eps, 1 - eps)) / n
    return out


clinical_metrics.batched = _clinical_metrics_batched


def any_disease_metrics(y, prob, pred) -> dict[str, float]:
    """The triage question on its own: disease (heberden or ra) vs normal.

    ``accuracy`` (3-class), ``sensitivity_any_disease`` (pred != normal among label != normal),
    ``specificity_any_disease`` (pred == normal among label == normal), ``auroc_any_disease``
    (scored by p(heberden) + p(ra)).
    """
    y, pred = np.asarray(y), np.asarray(pred)
    sick, called = y != 0, pred != 0
    return {"accuracy": float(skm.accuracy_score(y, pred)),
            "sensitivity_any_disease": float(_ratio(np.sum(called & sick), np.sum(sick))),
            "specificity_any_disease": float(_ratio(np.sum(~called & ~sick), np.sum(~sick))),
            "auroc_any_disease": _auroc(sick, prob[:, 1] + prob[:, 2])}


def _any_disease_batched(y, prob, pred, w):
    y, pred = np.asarray(y), np.asarray(pred)
    sick, called = y != 0, pred != 0
    return {"accuracy": w @ (pred == y) / w.sum(1),
            "sensitivity_any_disease": _ratio(w @ (called & sick), w @ sick),
            "specificity_any_disease": _ratio(w @ (~called & ~sick), w @ ~sick),
            "auroc_any_disease": _weighted_auroc(sick, prob[:, 1] + prob[:, 2], w)}


any_disease_metrics.batched = _any_disease_batched


# --------------------------------------------------------------------------------------------
# Subject-level bootstrap


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
                 alpha: float = 0.05) -> dict[str, dict]:
    """Point values of ``metric_fn(y, prob, pred)`` with subject-level percentile intervals.

    Subjects are resampled with replacement (all photos of a drawn subject come along, counted
    as many times as it is drawn). ``metric_fn`` returns ``{name: float}``; if it has a
    ``.batched(y, prob, pred, weights)`` form (``clinical_metrics`` and ``any_disease_metrics``
    do), all resamples are computed at once, else photos are repeated resample by resample.
    The same ``seed`` gives the same resampled subjects, so CIs of different rules are paired.

    Returns ``{name: {"value": x, "ci95": [lo, hi], "n_finite": k}}`` (the key is ``ci<level>``
    for other ``alpha``): percentiles of the ``k`` finite resamples; ``[nan, nan]`` if none
    (``n_boot=0``: no resamples, point values only).
    """
    y, prob, pred = _arrays(y, prob, pred)
    value = metric_fn(y, prob, pred)
    if n_boot == 0:   # eval.bootstrap=0: point values only, every interval [nan, nan]
        return {k: _interval(v, np.zeros(0), alpha) for k, v in value.items()}
    w = subject_bootstrap_weights(subjects, n_boot, seed)
    batched = getattr(metric_fn, "batched", None)
    if batched is None:
        samples = _resample_loop(metric_fn, y, prob, pred, w)
    else:  # chunks of ~2M weights bound the (resamples, photos) intermediates on large N
        rows = max(1, _BOOT_CHUNK // max(len(y), 1))
        parts = [batched(y, prob, pred, w[i:i + rows]) for i in range(0, n_boot, rows)]
        samples = {k: np.concatenate([np.asarray(p[k], np.float64) for p in parts])
                   for k in parts[0]}
    return {k: _interval(v, samples[k], alpha) for k, v in value.items()}


def _interval(value, samples, alpha) -> dict:
    finite = samples[np.isfinite(samples)]
    key = f"ci{100 * (1 - alpha):g}"
    ci = (np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)]).tolist()
          if len(finite) else [math.nan, math.nan])
    return {"value": float(value), key: ci, "n_finite": len(finite)}


def per_fold_metrics(y, prob, pred, folds, metric_fn=clinical_metrics) -> dict[int, dict]:
    """``{fold: metric_fn(...) on that fold's photos}`` (NaN where a fold lacks a class)."""
    y, prob, pred, folds = map(np.asarray, (y, prob, pred, folds))
    return {int(f): metric_fn(y[folds == f], prob[folds == f], pred[folds == f])
            for f in np.unique(folds)}


def subgroup_table(y, prob, pred, subjects, groups: dict, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """Triage metrics within each subgroup, with subject-bootstrap CIs inside the subgroup.

    ``groups`` maps a column name (e.g. ``"fold"``, ``"sex"``) to one value per photo. Returns
    ``{column: {value: {"n": photos, "n_subjects": ..., "accuracy": {"value", "ci95",
    "n_finite"}, "sensitivity_any_disease": ..., "specificity_any_disease": ...,
    "auroc_any_disease": ...}}}`` (see :func:`any_disease_metrics`).
    """
    y, prob, pred, subjects = map(np.asarray, (y, prob, pred, subjects))
    table = {}
    for column, values in groups.items():
        values = np.asarray(values).astype(str)
        table[column] = {}
        for v in np.unique(values):
            m = values == v
            row = {"n": int(m.sum()), "n_subjects": len(np.unique(subjects[m].astype(str)))}
            row.update(bootstrap_ci(any_disease_metrics, y[m], prob[m], pred[m], subjects[m],
                                    n_boot=n_boot, seed=seed))
            table[column][str(v)] = row
    return table


# --------------------------------------------------------------------------------------------
# Calibration


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
    bins have NaN means). ``ece`` in :func:`clinical_metrics` is ``sum count/N |acc - conf|``
    over these bins for ``n_bins = 10``."""
    y, prob = np.asarray(y, np.int64), np.asarray(prob, np.float64)
    conf = prob.max(-1)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    correct = (prob.argmax(-1) == y).astype(np.float64)
    return {"confidence": _ratio(np.bincount(bins, conf, n_bins), count),
            "accuracy": _ratio(np.bincount(bins, correct, n_bins), count),
            "count": count.astype(np.int64),
            "edges": np.linspace(0, 1, n_bins + 1)}


# --------------------------------------------------------------------------------------------
# Operating points


def operating_point(scores, positive, threshold) -> dict[str, float]:
    """Sensitivity and specificity of the rule ``score >= threshold`` -> positive.

    ``threshold`` is a number, or one per photo (e.g. ``thresholds[fold]``: each fold's own
    frozen threshold, pooled over the out-of-fold photos)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    called = scores >= np.asarray(threshold, np.float64)
    point = {"sensitivity": float(_ratio(np.sum(called & positive), np.sum(positive))),
             "specificity": float(_ratio(np.sum(~called & ~positive), np.sum(~positive)))}
    return ({"threshold": float(threshold)} if np.ndim(threshold) == 0 else {}) | point


def choose_threshold(scores, positive, *, target: float, kind: str) -> float:
    """The threshold (rule ``score >= t``) that meets ``kind >= target`` on these data.

    ``kind`` is ``"sensitivity"`` or ``"specificity"``. Among the thresholds that meet the
    target, the one with the best other metric wins; ties go to the better targeted metric,
    then to the lower threshold. Candidates are the observed scores and +inf (nothing
    positive), so the target is always reachable. Choose on inner validation data, then freeze
    it and apply :func:`operating_point` to the test fold.
    """
    if kind not in ("sensitivity", "specificity"):
        raise ValueError(f"kind must be 'sensitivity' or 'specificity', got {kind!r}")
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError("choose_threshold needs both positive and negative cases")
    fpr, tpr, thr = skm.roc_curve(positive, scores, drop_intermediate=False)
    sens, spec = tpr, 1 - fpr
    met, other = (sens, spec) if kind == "sensitivity" else (spec, sens)
    ok = met >= target - 1e-12
    # lexsort: last key is primary. Best other metric, then best targeted one, then lowest t.
    order = np.lexsort((thr, -met, -other))
    best = order[ok[order]][0]
    return float(thr[best])


# --------------------------------------------------------------------------------------------
# The results.json block


def clinical_block(preds: Predictions, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{rule: {metric: {"value", "ci95", "n_finite"}}}`` for every rule in ``preds`` (cnn,
    cnn_calibrated, svm, and cnn_mec on the cnn probabilities with the MEC decisions). Every
    rule uses the same resampled subjects (same ``seed``), so their intervals are paired."""
    return {rule: bootstrap_ci(clinical_metrics, preds.label, preds.probs_for(rule),
                               preds.pred[rule], preds.subject, n_boot=n_boot, seed=seed)
            for rule in _present_rules(preds.pred)}


def metrics_from_predictions(path, n_boot: int = 2000, seed: int = 0) -> dict:
    """The ``clinical`` block recomputed from a ``predictions.csv`` alone (see
    :func:`clinical_block`); a run writes the file first and calls this, so results.json's
    figures are exactly what anyone recomputes from the file."""
    return clinical_block(read_predictions(path), n_boot=n_boot, seed=seed)
