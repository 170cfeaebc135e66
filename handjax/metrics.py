"""The study's metrics as pure jnp functions of a confusion matrix, and decisions.

Classes are ordered by severity: 0 normal (N), 1 Heberden's nodes (H), 2 rheumatoid
arthritis (R). A confusion matrix ``cm[i, j]`` counts cases of true class ``i``
predicted ``j``; ``n_i`` are its row sums (true counts), ``m_j`` its column sums
(predicted counts). Cells with ``i > j`` are *under-severity* errors: the case was
called milder than it is, the error the study cares most about.

Every metric takes a ``(..., K, K)`` matrix (integer or float), is jit-able and
broadcasts over leading axes, so ``jax.vmap`` over a fold axis and a direct call on a
stacked ``(folds, K, K)`` array both work. A ratio whose denominator is zero (an empty
row or column) counts as 0: an absent class contributes nothing rather than NaN.

The study lost the formula images of custom_plus and custom_multi; the readings here are
handjax's. custom_multi's is one of a family of readings consistent with the study's table
(the pairwise sum fits it best; ``per_class``, r_HN·r_RN and twice the pairwise sum fit
nearly as well; see ``docs/custom_multi.md``), so its values are ours, not the study's.
Worked example, the study's example matrix with our readings: ``cm = [[6,0,0],[4,4,1],
[3,3,3]]`` gives accuracy 0.5417, custom_plus 1.1111, custom_multi 0.4074 (33/81),
custom_precision 0.5824.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# W[k, i]: weight of a false positive *predicted* k whose true class is i (diagonal
# unused). The study's surviving custom_precision formula, read in class order:
#   N: from H 1,   from R 1     -> TP/(TP + FP + FP)
#   H: from N 1.5, from R 1     -> TP/(TP + FP*1.5 + FP)
#   R: from N 2,   from H 1.2   -> TP/(TP + FP*2 + FP*1.2)
# Over-severity false positives (a milder true class predicted as more severe) weigh
# more for H and R, so "precision" of the severe classes punishes alarm-raising.
# The study's four metrics, in its table's order: the one list (results.json, tables).
STUDY_METRICS = ("accuracy", "custom_multi", "custom_plus", "custom_precision")

DEFAULT_PRECISION_WEIGHTS = np.array(
    [[0.0, 1.0, 1.0],
     [1.5, 0.0, 1.0],
     [2.0, 1.2, 0.0]])


def _as_float(cm):
    """Integer counts -> the default float dtype; float inputs keep their precision."""
    cm = jnp.asarray(cm)
    return cm.astype(jnp.promote_types(cm.dtype, jnp.float32))


def _safe_div(num, den):
    """num / den with 0/0 (and x/0) defined as 0, and no NaN in the gradient either."""
    zero = den == 0
    return jnp.where(zero, 0.0, num / jnp.where(zero, 1.0, den))


def _under_severity_mask(k: int):
    """Strictly lower-triangular (i > j) indicator, a static numpy constant."""
    return np.tril(np.ones((k, k)), -1)


def confusion_matrix(labels, preds, num_classes: int = 3, mask=None):
    """Counts ``cm[i, j]`` of examples with true class ``i`` predicted ``j``.

    Args:
      labels: integer true classes, shape ``(n,)``.
      preds: integer predicted classes, shape ``(n,)``.
      num_classes: K, the matrix is ``(K, K)``.
      mask: optional ``(n,)`` bool/0-1 weights; masked-out (padding) examples are not
        counted. Labels or predictions outside ``[0, K)`` are not counted either.

    Returns:
      ``(K, K)`` int32 matrix. Jit-able and vmappable (e.g. over a fold axis).
    """
    # one_hot of an out-of-range id is all zeros, so padding ids like -1 drop out.
    t = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    p = jax.nn.one_hot(preds, num_classes, dtype=jnp.int32)
    if mask is not None:
        t = t * jnp.asarray(mask).astype(jnp.int32)[..., None]
    return jnp.einsum("...ni,...nj->...ij", t, p)


def accuracy(cm):
    """Fraction of correct decisions: ``trace(cm) / sum(cm)`` (0 for an empty matrix)."""
    cm = _as_float(cm)
    return _safe_div(jnp.trace(cm, axis1=-2, axis2=-1), cm.sum((-2, -1)))


def custom_plus(cm):
    """Summed under-severity rates: ``sum_{i>j} cm[i, j] / n_i`` (range 0 … K−1).

    Each term is the fraction of true class ``i`` called the milder class ``j``; an
    empty row (``n_i = 0``) contributes 0. Lower is better.
    """
    return under_severity_rates(cm).sum((-2, -1))


def under_severity_rates(cm):
    """``r[i, j] = cm[i, j] / n_i`` below the diagonal (``i > j``), 0 elsewhere.

    The fraction of true class ``i`` called the milder class ``j``; an empty row gives 0.
    """
    cm = _as_float(cm)
    rates = _safe_div(cm, cm.sum(-1, keepdims=True))
    return rates * _under_severity_mask(cm.shape[-1])


def custom_multi_per_class(cm):
    """The product over the classes that have a milder class (H and R) of their
    under-severity rates: ``u_H * u_R`` with ``u_i = sum_{j<i} cm[i, j] / n_i``.

    The runner-up reading of custom_multi; for K = 3 it is :func:`custom_multi` less
    ``r_RN * r_RH``."""
    u = under_severity_rates(cm).sum(-1)[..., 1:]
    return jnp.prod(u, axis=-1)


def custom_multi_weighted(cm):
    """Under-severity rates weighted by their share of the milder prediction.

    ``sum_{i>j} (cm[i, j] / n_i) * (cm[i, j] / m_j)``: the rate at which true class
    ``i`` is called ``j``, times the fraction of all ``j`` predictions that are such
    misses. Empty rows or columns contribute 0. handjax's first reading of custom_multi;
    it is 0 only when custom_plus is, so it cannot produce the study's table (see
    ``docs/custom_multi.md``).
    """
    cm = _as_float(cm)
    col_rates = _safe_div(cm, cm.sum(-2, keepdims=True))
    return (under_severity_rates(cm) * col_rates).sum((-2, -1))


def custom_multi(cm):
    """The sum of the pairwise products of the under-severity rates (handjax's reading).

    For 3 classes ``r_HN r_RN + r_HN r_RH + r_RN r_RH`` with ``r_ij = cm[i, j] / n_i``;
    in general ``((sum r)^2 - sum r^2) / 2`` over the cells ``i > j``. It is 0 whenever at
    most one kind of under-severity error occurs, so, unlike custom_plus, it can be 0 with
    under-severity errors present, as four rows of the study's table are. It is one of a
    family of readings consistent with all 24 (plus, multi) pairs of that table — with
    :func:`custom_multi_per_class`, ``r_HN * r_RN`` and ``2 *`` this sum — and the best fit
    among them, computed per whole test fold (``docs/custom_multi.md``,
    ``python -m handjax.evaluation.readings``); the table does not single it out.
    Range 0 … 1.25 for K = 3 (every H called N, R split evenly between N and H).
    Lower is better.
    """
    r = under_severity_rates(cm)
    return 0.5 * (r.sum((-2, -1)) ** 2 - (r ** 2).sum((-2, -1)))


def custom_precision(cm, weights=None):
    """The study's weighted precision, averaged over the K classes.

    ``(1/K) sum_k TP_k / (TP_k + sum_{i != k} W[k, i] * cm[i, k])`` where ``W[k, i]``
    weighs a false positive predicted ``k`` whose true class is ``i`` (the diagonal of
    ``W`` is ignored). Default ``W`` is :data:`DEFAULT_PRECISION_WEIGHTS` (K = 3). A class
    that is never predicted correctly or otherwise (0/0) contributes 0 to the average.
    Higher is better.
    """
    cm = _as_float(cm)
    k = cm.shape[-1]
    w = DEFAULT_PRECISION_WEIGHTS if weights is None else weights
    w = jnp.asarray(w, cm.dtype)
    if w.shape != (k, k):
        raise ValueError(f"weights must be ({k}, {k}) for a {k}-class matrix, got {w.shape}")
    w = w * (1.0 - jnp.eye(k, dtype=cm.dtype))
    tp = jnp.diagonal(cm, axis1=-2, axis2=-1)
    # cm[..., i, k] -> (..., k, i) so that W[k, i] lines up with its count.
    weighted_fp = (w * jnp.swapaxes(cm, -2, -1)).sum(-1)
    return _safe_div(tp, tp + weighted_fp).mean(-1)


def all_metrics(cm) -> dict:
    """The four table metrics of one (or a stack of) confusion matrices, as a dict.

    Keys: ``"accuracy"``, ``"custom_multi"``, ``"custom_plus"``, ``"custom_precision"``
    (default weights). Pure jnp, so ``jax.vmap(all_metrics)(cms)`` gives per-fold arrays.
    """
    return {
        "accuracy": accuracy(cm),
        "custom_multi": custom_multi(cm),
        "custom_plus": custom_plus(cm),
        "custom_precision": custom_precision(cm),
    }


def min_expected_cost(probs, cost):
    """Bayes decision: ``argmin_j sum_i probs[..., i] * cost[i, j]`` per example.

    Args:
      probs: ``(..., K)`` class probabilities (rows sum to 1).
      cost: ``(K, K)`` with ``cost[i, j]`` the cost of deciding ``j`` when the truth is
        ``i``. With ``cost = 1 - I`` this is the argmax; an expensive under-severity
        region (``i > j``) pushes borderline cases towards the more severe class without
        retraining.

    Returns:
      ``(...)`` int32 decisions.
    """
    probs = jnp.asarray(probs)
    expected = probs @ jnp.asarray(cost, probs.dtype)
    return jnp.argmin(expected, axis=-1).astype(jnp.int32)


def mean_std(per_fold: dict) -> tuple[dict, dict]:
    """Mean and *population* std (``ddof=0``) of each metric's per-fold list: the one
    definition of every "mean ± std" handjax reports (results.json and every table)."""
    mean = {k: float(np.mean(v)) for k, v in per_fold.items()}
    std = {k: float(np.std(v, ddof=0)) for k, v in per_fold.items()}
    return mean, std
