"""Training objectives, optax-shaped: ``fn(logits, labels, ...) -> per-example loss``.

``logits`` are ``(..., K)`` floats, ``labels`` integer class ids ``(...)`` in severity
order (0 normal, 1 Heberden's nodes, 2 rheumatoid arthritis). Each loss returns one
value per example; the trainer takes masked means (folds have unequal sizes). All are
stable for logits of magnitude 1e4 and differentiable everywhere.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

# cost[i, j]: cost of predicting j when the truth is i (rows true, columns predicted).
# Under-severity (i > j, the dangerous miss) costs the number of grades too mild:
# H->N 1, R->H 1, R->N 2. Over-severity (i < j) costs a quarter per grade: N->H 0.25,
# H->R 0.25, N->R 0.5 -- an unnecessary referral or worry is a real but much smaller
# harm than a missed disease, and it must not be free or the loss would learn to call
# everything R. The diagonal is 0.
DEFAULT_COST = np.array(
    [[0.0, 0.25, 0.5],
     [1.0, 0.0, 0.25],
     [2.0, 1.0, 0.0]])


def categorical(logits, labels):
    """Softmax cross-entropy with integer labels (optax's)."""
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def binary(logits, labels):
    """Sigmoid binary cross-entropy against one-hot targets, mean over classes (optax's).

    The study trained with Keras' ``binary_crossentropy`` on its 3-way head; here each
    class is an independent yes/no on its logit (the stable log-sigmoid form).
    Decisions stay the argmax of the logits.
    """
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.losses.sigmoid_binary_cross_entropy(logits, targets).mean(-1)


def severity(logits, labels, *, cost=None, ce_weight=1.0, class_weights=None):
    """Cross-entropy plus the expected misclassification cost.

    ``loss = w_y * (ce_weight * CE(logits, y) + sum_j softmax(logits)_j * cost[y, j])``

    The expected-cost term is a differentiable stand-in for the custom metrics: with
    ``cost`` the under-severity indicator (``i > j``) and ``class_weights`` ``1/n_i``
    (``w_y`` above, 1 if None), the batch sum is a soft custom_plus. ``ce_weight=0`` is
    the study's pure custom loss, which trained badly (its table: accuracy 0.34–0.57);
    the CE term keeps the gradient informative when the expected cost is flat.

    Args:
      logits: ``(..., K)``.
      labels: ``(...)`` integer class ids.
      cost: ``(K, K)``, rows true, columns predicted; default :data:`DEFAULT_COST`.
      ce_weight: weight of the cross-entropy term.
      class_weights: optional ``(K,)`` per-true-class weights on the whole loss.
    """
    cost = jnp.asarray(DEFAULT_COST if cost is None else cost, logits.dtype)
    probs = jax.nn.softmax(logits, axis=-1)
    expected_cost = (probs * cost[labels]).sum(-1)
    loss = ce_weight * categorical(logits, labels) + expected_cost
    if class_weights is not None:
        loss = loss * jnp.asarray(class_weights, logits.dtype)[labels]
    return loss


# ---- ordinal losses (CORN, CORAL) -----------------------------------------------------
# Ordinal heads emit K-1 logits, one binary task "y > k" per threshold k = 0..K-2 (classes
# in severity order). Heads, class probabilities and decisions: handjax/ordinal.py.

def _threshold_bce(logits, labels):
    """``(bce, targets)``, each ``(..., K-1)``: BCE of task ``k`` against ``1[y > k]``."""
    tasks = jnp.arange(logits.shape[-1])
    targets = (labels[..., None] > tasks).astype(logits.dtype)
    return optax.losses.sigmoid_binary_cross_entropy(logits, targets), tasks


def coral_loss(logits, labels):
    """CORAL (Cao, Mirjalili & Raschka 2020): ``sum_k BCE(z_k, 1[y > k])`` per example.

    ``logits`` ``(..., K-1)`` from :class:`handjax.ordinal.CoralLayer`; every example
    takes part in every task. coral-pytorch averages this over the batch, which is what
    the trainer's masked mean does.
    """
    bce, _ = _threshold_bce(logits, labels)
    return bce.sum(-1)


def _corn_terms(logits, labels):
    """``(bce masked to the conditional subsets, subset indicator)``, each ``(..., K-1)``.

    Task ``k`` trains only on examples with ``y >= k`` (CORN's conditional subset), so
    its logit estimates ``P(y > k | y >= k)``.
    """
    bce, tasks = _threshold_bce(logits, labels)
    member = (labels[..., None] >= tasks).astype(logits.dtype)
    return bce * member, member


def corn_loss(logits, labels):
    """CORN (Shi, Cao & Raschka 2021, arXiv 2111.08851), per example.

    ``sum_{k <= min(y, K-2)} BCE(z_k, 1[y > k])``: the sum over the tasks whose
    conditional subset the example belongs to. Its masked mean over the batch (the
    trainer's reduction) is the mean of the per-example sums: every example weighs the
    same whatever the batch's label mix, and a higher grade (more tasks) weighs more.
    :func:`corn_loss_batch` is the paper's / coral-pytorch's normalisation instead.
    """
    terms, _ = _corn_terms(logits, labels)
    return terms.sum(-1)


def corn_loss_batch(logits, labels, mask=None):
    """CORN normalised as in the paper and coral-pytorch's ``corn_loss``: a scalar.

    ``sum over tasks of the task's summed BCE / the number of (example, task) pairs``,
    counting only examples with ``mask`` 1 (``None``: all); a masked example adds nothing
    to either sum. It equals ``corn_loss``'s masked mean times ``n / n_pairs``, a factor
    in ``[1/(K-1), 1]`` that changes with each batch's label mix.
    """
    terms, member = _corn_terms(logits, labels)
    if mask is not None:
        keep = jnp.asarray(mask, logits.dtype)[..., None] > 0
        terms, member = jnp.where(keep, terms, 0.0), jnp.where(keep, member, 0.0)
    return terms.sum() / jnp.maximum(member.sum(), 1.0)


_LOSSES = {"categorical": categorical, "binary": binary, "severity": severity,
           "corn": corn_loss, "coral": coral_loss}


def get(name: str, **kwargs):
    """The loss called ``name`` with ``kwargs`` bound: ``fn(logits, labels) -> (n,)``.

    Names: ``"categorical"``, ``"binary"``, ``"severity"`` (which takes ``cost``,
    ``ce_weight``, ``class_weights``). Unknown names or arguments raise at once rather
    than at the first training step.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(_LOSSES)}")
    allowed = {"cost", "ce_weight", "class_weights"} if name == "severity" else set()
    unexpected = set(kwargs) - allowed
    if unexpected:
        raise TypeError(f"loss {name!r} takes no arguments {sorted(unexpected)}")
    return functools.partial(_LOSSES[name], **kwargs)
