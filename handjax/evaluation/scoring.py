"""Scoring the trained folds: out-of-fold predictions for every decision rule (the rows of
``predictions.csv``) and the study's per-fold metrics. The clinical figures computed from
those rows live in :mod:`handjax.evaluation`.

Decision rules, each photo scored by the one fold model that never saw it:

- ``cnn``: the network's decision (argmax; for ordinal heads the count of P(y > k) > 0.5);
- ``cnn_calibrated`` (ours): the CNN's probabilities with one temperature per fold, T_k,
  cross-fitted: the NLL minimiser over the other folds' out-of-fold predictions, so fold k's
  photos never tune fold k and no photo is taken from training (:func:`fold_calibration`;
  with ``train.inner_val > 0``, fitted on each fold's inner split instead);
- ``cnn_mec`` (ours): the minimum-expected-cost decision on the calibrated probabilities,
  and scored with them;
- ``svm``: the study's SVM columns: per fold, the pooled features of that fold's fine-tuned
  backbone (the head's input) go through ``Pipeline([StandardScaler(), SVC(...)])`` fitted on
  the fold's training split; its decisions stay SVC's ``predict`` (so they may differ from
  the argmax of its probabilities). Its probabilities: Platt scaling by
  ``CalibratedClassifierCV(SVC, method="sigmoid", ensemble=False)`` fitted inside the
  training split, its internal folds grouped by subject (sklearn 1.9 deprecates SVC's own
  ``probability=True``). Ours: where a fold's training split holds more than
  ``svm.max_train`` photos (2,000 by default; 0: no bound), the SVM is fitted on that many
  of them, drawn stratified by class with the run's seed (:func:`svm_rows`): an RBF SVC's
  fit costs O(n^2) kernel evaluations and more, so above the bound the stage would grow
  faster than the rest of the run (10,000 photos: 189 s of 838). The study's ~120 photos, and
  any set up to 2,500 photos in 5 folds, are fitted on the whole split as before.

Operating points (the triage tasks of :data:`handjax.evaluation.TASKS`) are chosen per fold on
the same rows as its temperature (calibrated with it), for sensitivity >= ``eval.sensitivity``
and for specificity >= ``eval.specificity``, then frozen and applied to the test fold.
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from handjax import evaluation as clinical, metrics, ordinal
from handjax.losses import DEFAULT_COST
from handjax.data.cohort import Cohort

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import SvmSpec


# --------------------------------------------------------------------------- SVM probe
def make_svm(*, kernel: str = "rbf", C: float = 1.0, class_weight=None,
             seed: int = 0) -> Pipeline:
    """StandardScaler + SVC, the features standardised on the training split only."""
    svc = SVC(kernel=kernel, C=C, class_weight=class_weight or None, random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("svc", svc)])


def platt_cv(y_train, subjects_train=None, seed: int = 0):
    """The internal CV of the SVM's Platt scaling: ``StratifiedGroupKFold`` splits that keep
    each subject's photos on one side (a person's other hand would otherwise score the
    calibration fit), at most 5 and at most the fewest subjects of any class, so every
    training part holds every class. Without subjects, or where a class has fewer than two
    subjects (tiny smoke data): an int, sklearn's photo-level StratifiedKFold."""
    from sklearn.model_selection import StratifiedGroupKFold
    y_train = np.asarray(y_train)
    if subjects_train is None:
        return int(min(5, np.bincount(y_train).min()))
    groups = np.asarray(subjects_train).astype(str)
    per_class = min(len(np.unique(groups[y_train == c])) for c in np.unique(y_train))
    if per_class >= 2:
        cv = StratifiedGroupKFold(n_splits=int(min(5, per_class)), shuffle=True,
                                  random_state=seed)
        splits = list(cv.split(np.zeros(len(y_train)), y_train, groups))
        if all(len(np.unique(y_train[fit])) == len(np.unique(y_train)) for fit, _ in splits):
            return splits
    # A class held by one subject (tiny smoke data) cannot be split by subject: photo folds.
    return int(min(5, np.bincount(y_train).min()))


# Above this many bytes of float64 training features per fold, the folds' SVMs are fitted one
# after another: each fit also holds copies of its features and libsvm's kernel cache (200 MB
# by default), so fits in parallel cost that per core (20,000 photos at 64 px, 2 threads: the
# SVM stage peaked at 3.1 GB of RSS against 2.2 GB in phase 2). 2,400 photos: 7.9 MB a fold.
SVM_THREADS_MAX_BYTES = 2**25


def svm_rows(train_idx, y_train, max_train: int, seed: int = 0) -> np.ndarray:
    """The rows of a fold's training split that its SVM is fitted on: all of ``train_idx``
    when it holds at most ``max_train`` (0: no bound), else ``max_train`` of them drawn
    stratified by class (sklearn's ``train_test_split``, ``random_state=seed``), in their
    original order."""
    train_idx = np.asarray(train_idx)
    if not max_train or len(train_idx) <= max_train:
        return train_idx
    from sklearn.model_selection import train_test_split
    kept, _ = train_test_split(train_idx, train_size=max_train, stratify=np.asarray(y_train),
                               random_state=seed)
    return np.sort(kept)


def svm_fold_probabilities(pooled, labels, folds, subjects=None, max_train: int = 0,
                           **svm_kwargs):
    """Per fold: (test decisions, test probabilities) of SVMs fitted on the training split.

    Decisions: the study's SVC ``predict``. Probabilities: Platt scaling fitted by
    ``CalibratedClassifierCV(SVC(...), method="sigmoid", ensemble=False)`` inside the
    training split (cross-validated by :func:`platt_cv`, grouped by ``subjects`` when given),
    never on the test photos. With ``ensemble=False`` the calibrated classifier's own SVC is
    fitted on the whole training split, the very fit the study's ``predict`` makes, so each
    fold fits it once and reads both off it. The folds run in threads, one per core (libsvm
    releases the GIL while it fits; each fold's fits are the same in any order), unless a
    fold's training features exceed :data:`SVM_THREADS_MAX_BYTES` as float64: then one after
    another, so that memory does not grow with the cores. ``max_train``: each fold's SVM is
    fitted on at most that many of its training photos (:func:`svm_rows`; 0: all)."""
    from concurrent.futures import ThreadPoolExecutor
    from sklearn.calibration import CalibratedClassifierCV
    labels = np.asarray(labels)
    groups = None if subjects is None else np.asarray(subjects)

    seed = svm_kwargs.get("seed", 0)
    fitted = [svm_rows(tr, labels[tr], max_train, seed) for tr, _ in folds]

    def fold(k):
        tr, te = fitted[k], folds[k][1]
        x_tr, y_tr = np.asarray(pooled[k][tr], np.float64), labels[tr]
        x_te = np.asarray(pooled[k][te], np.float64)
        cv = platt_cv(y_tr, None if groups is None else groups[tr], seed)
        platt = make_svm(**svm_kwargs)
        platt.steps[-1] = ("svc", CalibratedClassifierCV(platt.steps[-1][1], method="sigmoid",
                                                         cv=cv, ensemble=False))
        platt.fit(x_tr, y_tr)
        svc = platt.named_steps["svc"].calibrated_classifiers_[0].estimator
        decisions = svc.predict(platt.named_steps["scale"].transform(x_te))
        return decisions.astype(np.int32), platt.predict_proba(x_te)

    train_bytes = max(len(tr) for tr in fitted) * np.shape(pooled)[-1] * 8
    threads = 1 if train_bytes > SVM_THREADS_MAX_BYTES else min(len(folds), os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fold, range(len(folds))))


@functools.partial(jax.jit, static_argnums=0)
def probabilities(loss_name: str, logits):
    """Class probabilities from logits: softmax, normalised sigmoids for binary CE, and the
    chained (CORN) or cumulative (CORAL) conditionals of the ordinal heads."""
    if loss_name in ordinal.ORDINAL:
        return ordinal.ORDINAL[loss_name].probabilities(logits)
    if loss_name == "binary":
        p = jax.nn.sigmoid(logits)
        return p / jnp.sum(p, axis=-1, keepdims=True)
    return jax.nn.softmax(logits, axis=-1)


def mec_decisions(probs, cost=DEFAULT_COST) -> np.ndarray:
    """The minimum-expected-cost class of each row of ``probs`` [N, C] under ``cost``
    (``cost[true, decided]``), int64 [N]. The one place the rule is applied: the run's
    ``cnn_mec`` column and the locked model's ``mec`` decision both call it. Computed in
    float32 (:func:`handjax.metrics.min_expected_cost`), as every run has computed it."""
    return np.asarray(metrics.min_expected_cost(jnp.asarray(probs, jnp.float32),
                                                jnp.asarray(cost, jnp.float32)), np.int64)


# --------------------------------------------------------------------------- metrics
_fold_metrics = jax.jit(jax.vmap(metrics.all_metrics))  # one compilation, not one per op


def decision_summary(cms: np.ndarray) -> dict:
    """Per-fold metrics of stacked confusion matrices [K, C, C], their mean and std (ddof 0)."""
    per_fold = _fold_metrics(jnp.asarray(cms))
    per_fold = {k: [float(v) for v in np.asarray(per_fold[k])] for k in metrics.STUDY_METRICS}
    mean, std = metrics.mean_std(per_fold)
    return {"per_fold": per_fold, "mean": mean, "std": std,
            "confusion": np.asarray(cms).astype(int).tolist(),
            "confusion_sum": np.asarray(cms).sum(0).astype(int).tolist()}


def fold_calibration(probs_all: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
                     inner: list) -> tuple[list[float], list[tuple], str]:
    """Per fold k: its temperature T_k, and the photos its operating points are chosen on
    (``(calibrated probabilities, labels)``), never one of fold k's test photos and none taken
    from training.

    Cross-fitting (``train.inner_val=0``, the default): T_k minimises the NLL of the other
    folds' out-of-fold CNN probabilities (:func:`clinical.cross_fitted_temperatures`), and
    fold k's thresholds are chosen on those same rows, calibrated with T_k. With an inner
    split (``inner_val > 0``): both on fold k's inner photos, predicted by fold k's model."""
    k_folds = len(probs_all)
    if not any(len(v) for v in inner):
        oof = probs_all[fold_of, np.arange(len(labels))]
        temps = clinical.cross_fitted_temperatures(oof, labels, fold_of)
        rows = [fold_of != k for k in range(k_folds)]
        z = clinical.log_probs(oof)
        choose = [(clinical.apply_temperature(z[r], t), labels[r]) for r, t in zip(rows, temps)]
        return temps, choose, "cross-fitted"
    temps, choose = [], []
    for k in range(k_folds):
        z = clinical.log_probs(probs_all[k, inner[k]])
        t = clinical.fit_temperature(z, labels[inner[k]]) if len(inner[k]) else 1.0
        temps.append(t)
        choose.append((clinical.apply_temperature(z, t), labels[inner[k]]))
    return temps, choose, "inner split"


CALIBRATION_METHODS = {
    "cross-fitted": "per fold k, the NLL minimiser over the other folds' out-of-fold "
                    "predictions (fold k's photos never used for fold k; no extra training)",
    "inner split": "each fold's inner validation split (train.inner_val), held out of CNN "
                   "training",
}


def out_of_fold(outputs: tuple[np.ndarray, np.ndarray], cohort: Cohort, *, loss_name: str,
                svm_spec: SvmSpec, seed: int, targets: dict) -> tuple[clinical.Predictions, dict]:
    """Every photo's prediction by the fold model that held it out, for every rule (one row
    per photo per repeat), plus the calibration record (per-fold temperatures, how they were
    fitted, the frozen threshold choices). ``outputs``: per-fold logits and pooled features
    on every photo (:func:`handjax.train.fold_program.fold_outputs`), repeat-major; ``targets``:
    ``{"sensitivity": 0.9, ...}``. Each repeat is calibrated within itself."""
    logits, pooled = outputs
    k = cohort.n_folds
    parts, calibs = [], []
    for r in range(cohort.repeats):
        models = slice(r * k, (r + 1) * k)
        preds, calib = _repeat_out_of_fold(logits[models], pooled[models], cohort, r,
                                           loss_name=loss_name, svm_spec=svm_spec, seed=seed,
                                           targets=targets)
        preds.repeat = np.full(len(preds.file), r)
        parts.append(preds)
        calibs.append(calib)
    per_model = ("temperatures", "at_bound", "thresholds")   # R x K entries, repeat-major
    calib = {key: sum((c[key] for c in calibs), []) if key in per_model else calibs[0][key]
             for key in calibs[0]}
    return clinical.Predictions.concat(parts), calib


def _repeat_out_of_fold(logits, pooled, cohort: Cohort, r: int, *, loss_name: str,
                        svm_spec: SvmSpec, seed: int,
                        targets: dict) -> tuple[clinical.Predictions, dict]:
    """:func:`out_of_fold` of repeat ``r`` (its K fold models' outputs)."""
    labels = cohort.labels
    n = len(labels)
    splits = cohort.repeat_folds(r)
    inner = cohort.inner[r * cohort.n_folds:(r + 1) * cohort.n_folds]
    probs_all = np.asarray(probabilities(loss_name, jnp.asarray(logits)), np.float64)
    fold_of = np.full(n, -1)
    for k, (_, te) in enumerate(splits):
        fold_of[te] = k
    temps, choose, method = fold_calibration(probs_all, labels, fold_of, inner)
    probs = {r: np.zeros((n, probs_all.shape[-1])) for r in clinical.RULES
             if r != clinical.MEC_RULE}
    pred = {r: np.zeros(n, np.int64) for r in clinical.RULES}
    svm_out = svm_fold_probabilities(pooled, labels, splits, subjects=cohort.subjects,
                                     kernel=svm_spec.kernel, C=svm_spec.C,
                                     class_weight=svm_spec.class_weight, seed=seed,
                                     max_train=svm_spec.max_train)
    thresholds = []
    for k, (_, te) in enumerate(splits):
        cal = clinical.apply_temperature(clinical.log_probs(probs_all[k, te]), temps[k])
        thresholds.append(clinical.fold_thresholds(*choose[k], targets))
        probs["cnn"][te], probs["cnn_calibrated"][te] = probs_all[k, te], cal
        pred["cnn"][te] = np.asarray(ordinal.decide(loss_name, jnp.asarray(logits[k, te])))
        pred["cnn_calibrated"][te] = cal.argmax(-1)
        pred["cnn_mec"][te] = mec_decisions(cal)
        pred["svm"][te], probs["svm"][te] = svm_out[k]
    probs = {r: p / p.sum(-1, keepdims=True) for r, p in probs.items()}  # exact in float64
    preds = clinical.Predictions(file=np.asarray(cohort.examples.ids, str),
                                 subject=np.asarray(cohort.subjects, str), fold=fold_of,
                                 label=labels, probs=probs, pred=pred,
                                 extra=dict(cohort.metadata),
                                 class_names=tuple(cohort.examples.class_names))
    calib = {"method": method, "fitted_on": CALIBRATION_METHODS[method],
             "temperatures": [float(t) for t in temps],
             "at_bound": [clinical.at_bound(t) for t in temps],
             "bounds": list(clinical.TEMPERATURE_BOUNDS), "thresholds": thresholds}
    return preds, calib


def decisions_per_fold(preds: clinical.Predictions, n_classes: int) -> dict:
    """The study's per-fold metrics of the decisions of :data:`handjax.evaluation.STUDY_RULES`
    (cnn, svm, cnn_mec; out of fold); with repeats, over all R x K folds (repeat-major), so
    the mean pools the repeats."""
    model = preds.repeat * (int(preds.fold.max()) + 1) + preds.fold
    out = {}
    for name in clinical.STUDY_RULES:
        cms = [np.asarray(metrics.confusion_matrix(
            jnp.asarray(preds.label[model == k]),
            jnp.asarray(preds.pred[name][model == k]), n_classes))
            for k in range(int(model.max()) + 1)]
        out[name] = decision_summary(np.stack(cms))
    return out
