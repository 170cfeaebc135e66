"""Scoring the trained folds: the decision rules (CNN argmax, minimum expected cost, the
SVM probe on pooled features) and their per-fold metrics.

The study's SVM columns: per fold, the pooled features of that fold's fine-tuned backbone
(the head's input) go through ``Pipeline([StandardScaler(), SVC(...)])`` fitted on the fold's
training split and scored on its test split.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

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
@functools.partial(jax.jit, static_argnums=0)
def probabilities(loss_name: str, logits):
    """Class probabilities from logits: softmax, or normalised sigmoids for binary CE."""
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


def evaluate(outputs, prep: Prepared, *, loss_name: str, svm, seed: int) -> dict:
    """CNN argmax, CNN minimum-expected-cost and SVM decisions, scored per fold.

    ``outputs``: :func:`fold_outputs` (logits, pooled); ``svm``: an SvmSpec."""
    logits, pooled = outputs
    labels = prep.examples.labels
    probs = np.asarray(probabilities(loss_name, jnp.asarray(logits)))
    cost = jnp.asarray(losses.DEFAULT_COST, jnp.float32)
    mec = np.asarray(jax.vmap(lambda p: metrics.min_expected_cost(p, cost))(jnp.asarray(probs)))
    svm_pred = svm_fold_predictions(pooled, labels, prep.folds, kernel=svm.kernel, C=svm.C,
                                    class_weight=svm.class_weight, seed=seed)
    c = len(prep.examples.class_names)

    def cm(y, p):
        return np.asarray(metrics.confusion_matrix(jnp.asarray(y), jnp.asarray(p), c))

    cms = {"cnn": [], "cnn_mec": [], "svm": []}
    for k, (_, te) in enumerate(prep.folds):
        cms["cnn"].append(cm(labels[te], logits[k, te].argmax(-1)))
        cms["cnn_mec"].append(cm(labels[te], mec[k, te]))
        cms["svm"].append(cm(labels[te], svm_pred[k]))
    return {name: decision_summary(np.stack(v)) for name, v in cms.items()}
