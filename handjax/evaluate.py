"""Scoring the trained folds: out-of-fold predictions for every decision rule, the study's
per-fold metrics, and the clinical figures with subject-level bootstrap CIs.

Decision rules, each photo scored by the one fold model that never saw it:

- ``cnn``: the network's decision (argmax; for ordinal heads the count of P(y > k) > 0.5);
- ``cnn_calibrated``: the CNN's probabilities with one temperature per fold, fitted on that
  fold's inner validation split (``train.inner_val``), never on its test photos; with
  ``inner_val=0`` the temperature is 1 and the columns equal ``cnn``;
- ``cnn_mec``: the minimum-expected-cost decision on the calibrated probabilities;
- ``svm``: the study's SVM columns: per fold, the pooled features of that fold's fine-tuned
  backbone (the head's input) go through ``Pipeline([StandardScaler(), SVC(...)])`` fitted on
  the fold's training split; its decisions stay SVC's ``predict`` (so they may differ from
  the argmax of its probabilities). Its probabilities: Platt scaling by
  ``CalibratedClassifierCV(SVC, method="sigmoid", ensemble=False)`` fitted inside the
  training split, its internal folds grouped by subject (sklearn 1.9 deprecates SVC's own
  ``probability=True``).

Operating points ("any disease": score p(heberden) + p(ra); "ra": score p(ra)) are chosen per
fold on the inner split's calibrated probabilities, for sensitivity >= ``eval.sensitivity``
and for specificity >= ``eval.specificity``, then frozen and applied to the test fold.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from handjax import clinical, ordinal
from handjax import folds as fold_program
from handjax import losses, metrics
from handjax.features import Prepared

# The one list of decision rules and of the study's metrics (results.json, tables).
DECISIONS = ("cnn", "cnn_mec", "svm")
METRIC_KEYS = ("accuracy", "custom_multi", "custom_plus", "custom_precision")


# --------------------------------------------------------------------------- SVM probe
def make_svm(*, kernel: str = "rbf", C: float = 1.0, class_weight=None,
             seed: int = 0) -> Pipeline:
    """StandardScaler + SVC, the features standardised on the training split only."""
    svc = SVC(kernel=kernel, C=C, class_weight=class_weight or None, random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("svc", svc)])


def svm_fit_predict(train_x, train_y, test_x, **svm_kwargs) -> np.ndarray:
    """Fit on one fold's training features and labels, return test predictions."""
    model = make_svm(**svm_kwargs)
    model.fit(np.asarray(train_x, np.float64), np.asarray(train_y))
    return model.predict(np.asarray(test_x, np.float64)).astype(np.int32)


def svm_fold_predictions(pooled, labels, folds, **svm_kwargs) -> list[np.ndarray]:
    """Per fold ``k``: SVM fitted on ``pooled[k][train]``, predictions on ``pooled[k][test]``."""
    pooled = np.asarray(pooled)
    labels = np.asarray(labels)
    return [svm_fit_predict(pooled[k][tr], labels[tr], pooled[k][te], **svm_kwargs)
            for k, (tr, te) in enumerate(folds)]


# --------------------------------------------------------------------------- CNN outputs
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


def svm_fold_probabilities(pooled, labels, folds, subjects=None, **svm_kwargs):
    """Per fold: (test decisions, test probabilities) of SVMs fitted on the training split.

    Decisions: the study's SVC ``predict``. Probabilities: Platt scaling fitted by
    ``CalibratedClassifierCV(SVC(...), method="sigmoid", ensemble=False)`` inside the
    training split (cross-validated by :func:`platt_cv`, grouped by ``subjects`` when given),
    never on the test photos."""
    from sklearn.calibration import CalibratedClassifierCV
    labels = np.asarray(labels)
    out = []
    for k, (tr, te) in enumerate(folds):
        x_tr, y_tr = np.asarray(pooled[k][tr], np.float64), labels[tr]
        x_te = np.asarray(pooled[k][te], np.float64)
        decide = make_svm(**svm_kwargs).fit(x_tr, y_tr)
        cv = platt_cv(y_tr, None if subjects is None else np.asarray(subjects)[tr],
                      svm_kwargs.get("seed", 0))
        platt = make_svm(**svm_kwargs)
        platt.steps[-1] = ("svc", CalibratedClassifierCV(platt.steps[-1][1], method="sigmoid",
                                                         cv=cv, ensemble=False))
        platt.fit(x_tr, y_tr)
        out.append((decide.predict(x_te).astype(np.int32), platt.predict_proba(x_te)))
    return out


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


def fold_outputs(states, prep: Prepared, fmap: str):
    """Per-fold logits [K, N, C] and pooled features [K, N, D] on every image (view 0);
    ``fmap`` is the evaluation fold mapping (:func:`folds.resolve_eval_fold_map`)."""
    n = len(prep.examples.labels)
    k = len(prep.folds)
    idx = np.broadcast_to(np.arange(n, dtype=np.int32), (k, n))
    logits, pooled = fold_program.eval_columns(
        states, prep.inputs2[0], idx, mode="tune", fold_map=fmap,
        width=fold_program.eval_width([te for _, te in prep.folds]))
    return np.asarray(logits), np.asarray(pooled)


decide = ordinal.decide


# --------------------------------------------------------------------------- metrics
_fold_metrics = jax.jit(jax.vmap(metrics.all_metrics))  # one compilation, not one per op


def decision_summary(cms: np.ndarray) -> dict:
    """Per-fold metrics of stacked confusion matrices [K, C, C], their mean and std (ddof 0)."""
    per_fold = _fold_metrics(jnp.asarray(cms))
    per_fold = {k: [float(v) for v in np.asarray(per_fold[k])] for k in METRIC_KEYS}
    return {"per_fold": per_fold,
            "mean": {k: float(np.mean(v)) for k, v in per_fold.items()},
            "std": {k: float(np.std(v)) for k, v in per_fold.items()},
            "confusion": np.asarray(cms).astype(int).tolist(),
            "confusion_sum": np.asarray(cms).sum(0).astype(int).tolist()}


def calibrate(probs: np.ndarray, labels: np.ndarray, inner: np.ndarray) -> tuple[float, np.ndarray]:
    """One fold's temperature, fitted on its inner-split photos ``inner`` only, and its
    calibrated probabilities for every photo. ``log p`` serves as logits, so softmax, sigmoid
    and ordinal heads calibrate alike; no inner split -> temperature 1."""
    if len(inner) == 0:
        return 1.0, probs
    z = np.log(np.clip(probs, 1e-12, 1.0))
    t = clinical.fit_temperature(z[inner], labels[inner])
    return t, clinical.apply_temperature(z, t)


TASKS = {"any_disease": lambda p: p[:, 1] + p[:, 2], "ra": lambda p: p[:, 2]}
TASK_POSITIVE = {"any_disease": lambda y: y != 0, "ra": lambda y: y == 2}


def fold_thresholds(probs: np.ndarray, labels: np.ndarray, inner: np.ndarray,
                    targets: dict) -> dict:
    """``{task: {kind: threshold}}`` chosen on the inner-split photos ``inner`` only (NaN
    when the inner split lacks positives or negatives)."""
    out = {}
    for task, score in TASKS.items():
        s, pos = score(probs[inner]), TASK_POSITIVE[task](labels[inner])
        out[task] = {}
        for kind, target in targets.items():
            ok = len(inner) and pos.any() and not pos.all()
            out[task][kind] = (clinical.choose_threshold(s, pos, target=target, kind=kind)
                               if ok else float("nan"))
    return out


def out_of_fold(outputs, prep: Prepared, *, loss_name: str, svm, seed: int,
                targets: dict) -> tuple[clinical.Predictions, dict]:
    """Every photo's prediction by the fold model that held it out, for every rule, plus
    the per-fold temperatures and frozen thresholds. ``targets``:
    ``{"sensitivity": 0.9, "specificity": 0.9}``."""
    logits, pooled = outputs
    labels = np.asarray(prep.examples.labels)
    n = len(labels)
    probs_all = np.asarray(probabilities(loss_name, jnp.asarray(logits)), np.float64)
    fold_of = np.full(n, -1)
    probs = {r: np.zeros((n, probs_all.shape[-1])) for r in clinical.RULES}
    pred = {r: np.zeros(n, np.int64) for r in clinical.RULES + (clinical.MEC_RULE,)}
    cost = jnp.asarray(losses.DEFAULT_COST, jnp.float32)
    svm_out = svm_fold_probabilities(pooled, labels, prep.folds, subjects=prep.subjects,
                                     kernel=svm.kernel, C=svm.C,
                                     class_weight=svm.class_weight, seed=seed)
    temps, thresholds = [], []
    for k, (_, te) in enumerate(prep.folds):
        fold_of[te] = k
        t, cal = calibrate(probs_all[k], labels, prep.inner[k])
        temps.append(t)
        thresholds.append(fold_thresholds(cal, labels, prep.inner[k], targets))
        probs["cnn"][te], probs["cnn_calibrated"][te] = probs_all[k, te], cal[te]
        pred["cnn"][te] = np.asarray(decide(loss_name, jnp.asarray(logits[k, te])))
        pred["cnn_calibrated"][te] = cal[te].argmax(-1)
        pred["cnn_mec"][te] = np.asarray(metrics.min_expected_cost(
            jnp.asarray(cal[te], jnp.float32), cost))
        pred["svm"][te], probs["svm"][te] = svm_out[k]
    probs = {r: p / p.sum(-1, keepdims=True) for r, p in probs.items()}  # exact in float64
    preds = clinical.Predictions(file=np.asarray(prep.examples.ids, str),
                                 subject=np.asarray(prep.subjects, str), fold=fold_of,
                                 label=labels, probs=probs, pred=pred,
                                 extra=dict(prep.metadata),
                                 class_names=tuple(prep.examples.class_names))
    return preds, {"temperatures": temps, "thresholds": thresholds}


def decisions_per_fold(preds: clinical.Predictions, n_classes: int) -> dict:
    """The study's per-fold metrics of the cnn, cnn_mec and svm decisions (out of fold)."""
    out = {}
    for name in DECISIONS:
        cms = [np.asarray(metrics.confusion_matrix(
            jnp.asarray(preds.label[preds.fold == k]),
            jnp.asarray(preds.pred[name][preds.fold == k]), n_classes))
            for k in range(int(preds.fold.max()) + 1)]
        out[name] = decision_summary(np.stack(cms))
    return out


def operating_points(preds: clinical.Predictions, thresholds: list, targets: dict,
                     n_boot: int, seed: int) -> dict:
    """Sensitivity and specificity reached on the test folds by each fold's frozen threshold
    (chosen on its inner split), pooled out of fold, with subject-bootstrap CIs."""
    p = preds.probs["cnn_calibrated"]
    out = {}
    for task, score in TASKS.items():
        out[task] = {}
        for kind, target in targets.items():
            thr = np.array([thresholds[k][task][kind] for k in preds.fold], np.float64)
            entry = {"target": f"{kind} >= {target}",
                     "thresholds": [thresholds[k][task][kind] for k in range(len(thresholds))]}
            if np.isfinite(thr).all():
                pair = np.stack([score(p), thr], 1)
                entry.update(clinical.bootstrap_ci(
                    _point_metric(task), preds.label, pair, preds.label, preds.subject,
                    n_boot=n_boot, seed=seed))
            out[task][kind] = entry
    return out


def _point_metric(task: str):
    def fn(y, pair, _):
        return {k: v for k, v in clinical.operating_point(
            pair[:, 0], TASK_POSITIVE[task](y), pair[:, 1]).items() if k != "threshold"}
    return fn


def evaluate(outputs, prep: Prepared, *, loss_name: str, svm, seed: int,
             targets: dict | None = None) -> tuple[dict, clinical.Predictions, dict]:
    """Out-of-fold predictions (:func:`out_of_fold`) and the study's per-fold metrics of the
    cnn, cnn_mec and svm decisions. Returns ``(decisions, predictions, calibration)``."""
    targets = targets or {"sensitivity": 0.9, "specificity": 0.9}
    preds, calib = out_of_fold(outputs, prep, loss_name=loss_name, svm=svm, seed=seed,
                               targets=targets)
    return decisions_per_fold(preds, len(prep.examples.class_names)), preds, calib


def clinical_results(csv_path, preds: clinical.Predictions, calib: dict, eval_spec,
                     seed: int) -> dict:
    """The clinical figures of a run, each with a subject-bootstrap 95% CI: pooled out of
    fold per rule (recomputed from ``predictions.csv`` itself, so anyone can reproduce them
    with sklearn), per fold, per subgroup (each metadata column), and the operating points.
    """
    targets = {"sensitivity": eval_spec.sensitivity, "specificity": eval_spec.specificity}
    n_boot = eval_spec.bootstrap
    rule = "cnn_calibrated"
    prob, pred = preds.probs[rule], preds.pred[rule]
    return {
        "clinical": clinical.metrics_from_predictions(csv_path, n_boot=n_boot, seed=seed),
        "clinical_per_fold": {r: {str(k): v for k, v in clinical.per_fold_metrics(
            preds.label, preds.probs_for(r), preds.pred[r], preds.fold).items()}
            for r in preds.pred},
        "subgroups": clinical.subgroup_table(preds.label, prob, pred, preds.subject,
                                             dict(preds.extra), n_boot=n_boot, seed=seed),
        "operating_points": operating_points(preds, calib["thresholds"], targets, n_boot,
                                             seed),
        "calibration": {"temperatures": [float(t) for t in calib["temperatures"]],
                        "fitted_on": "each fold's inner validation split"
                        if any(t != 1.0 for t in calib["temperatures"]) else
                        "nothing: train.inner_val=0, so cnn_calibrated equals cnn",
                        "ece_bins": f"{clinical.ECE_BINS} equal-width bins of top-label "
                                    "confidence"},
        "bootstrap": {"resamples": n_boot, "unit": "subject", "seed": seed},
    }
