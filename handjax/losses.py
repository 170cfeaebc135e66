"""Training objectives: per-example (optax-shaped) and batch-level.

``logits`` are ``(..., K)`` floats, ``labels`` integer class ids ``(...)`` in severity
order (0 normal, 1 Heberden's nodes, 2 rheumatoid arthritis).

* Per-example losses (``categorical``, ``binary``, ``severity``): ``fn(logits, labels)
  -> (n,)``; the trainer takes masked means (folds have unequal sizes). Stable for logits
  of magnitude 1e4 and differentiable everywhere.
* Batch-level losses (:data:`BATCH_LOSSES`: ``soft_plus``, ``soft_multi``,
  ``soft_custom``): ``fn(logits, labels, mask) -> scalar``, the study's custom metrics
  (``handjax.metrics``) evaluated on a *soft* confusion matrix (:func:`soft_confusion`).
  Padding examples (``mask`` 0) contribute exactly nothing, to the value and to the
  gradient, whatever their logits.

The study says only that its ``custom_loss`` was "a loss based on the custom metrics".
handjax's reading is :func:`soft_custom`: ``soft_plus + soft_multi + (1 - soft custom_precision)``,
all three metrics with their better direction made lower. **It collapses to "always RA"**
(tested): calling every photo RA makes ``soft_plus`` and ``soft_multi`` exactly 0, and the
precision term does not prevent it — for a constant prediction the soft precisions are
ratios of class counts whatever the probabilities, so among constant predictions always-RA
is the unique minimum (0.7148 for 40/30/30 photos, 5/7 for equal classes), which beats a
symmetric classifier of accuracy below ~0.75; and a model that can rank photos keeps N's and
H's precision high with vanishing, well-placed probabilities while still calling nearly
everything RA. Gradient descent finds that from every start tried; a smoke run (random
weights) predicts RA for every photo. The study's custom-loss CNNs collapsed the *other*
way: accuracy 0.34–0.57 with custom_plus 1.04–1.29 for three of the four backbones (0.50
for ResNet50), against 0.21–0.31 for categorical CE — they under-called. So ``soft_custom``
is a reading of the study's words, not a reproduction of its loss, and not a loss to use
for fewer under-severity errors: ``severity`` (cross-entropy plus an expected cost,
handjax's own objective, not the study's) is built for that and keeps CE's gradient, and the
``cnn_mec`` decision rule moves borderline calls up without retraining.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from handjax import metrics

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
    """Cross-entropy plus the expected misclassification cost (handjax's own objective).

    Not the study's custom_loss (see :func:`soft_custom` for a reading of that): the cost
    matrix is handjax's choice (:data:`DEFAULT_COST`).

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
    The paper's / coral-pytorch's normalisation (per batch) differs by a factor that changes
    with the batch's label mix; the tests compare both.
    """
    terms, _ = _corn_terms(logits, labels)
    return terms.sum(-1)


def _masked_probs(logits, mask):
    """Softmax probabilities with padding rows set to exactly 0 (value and gradient)."""
    keep = jnp.asarray(mask).astype(bool)[..., None]
    # Sanitise first: a NaN/inf padding logit would otherwise poison softmax's VJP.
    probs = jax.nn.softmax(jnp.where(keep, logits, 0.0), axis=-1)
    return jnp.where(keep, probs, 0.0)


def soft_confusion(logits, labels, mask, num_classes: int = 3):
    """Soft confusion matrix ``cm[i, j] = sum_n mask_n [y_n = i] softmax(logits_n)_j``.

    Row sums are the (hard) true counts; at one-hot probabilities it equals
    :func:`handjax.metrics.confusion_matrix`. Labels outside ``[0, K)`` count nothing.

    Args:
      logits: ``(..., n, K)``.
      labels: ``(..., n)`` integer class ids.
      mask: ``(..., n)`` bool/0-1, 0 for padding.
      num_classes: K.

    Returns:
      ``(..., K, K)`` float matrix, differentiable in ``logits``.
    """
    probs = _masked_probs(logits, mask)
    truth = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
    return jnp.einsum("...ni,...nj->...ij", truth, probs)


def soft_plus(logits, labels, mask):
    """custom_plus of the soft confusion matrix: the expected under-severity rates."""
    return metrics.custom_plus(soft_confusion(logits, labels, mask, logits.shape[-1]))


def soft_multi(logits, labels, mask):
    """custom_multi (the adopted reading, :func:`handjax.metrics.custom_multi`) of the soft
    confusion matrix."""
    return metrics.custom_multi(soft_confusion(logits, labels, mask, logits.shape[-1]))


def soft_custom(logits, labels, mask):
    """handjax's reading of the study's custom_loss: ``soft_plus + soft_multi +
    (1 - soft custom_precision)``, all three custom metrics made lower-is-better, from one soft
    confusion matrix. 0 only for a perfect, confident batch.

    What it does in training: it is drawn to "always RA" (see the module docstring). Among
    predictions that ignore the photo, always-RA is its unique minimum, ``1 - (n_N/n +
    n_H/(n_H + 1.5 n_N + n_R) + n_R/(n_R + 2 n_N + 1.2 n_H)) / 3`` (0.7148 for 40/30/30
    photos); on weakly informative features it calls >= 85% of photos RA where
    cross-entropy reaches 0.6 accuracy (both tested). The study's own custom-loss rows
    under-called instead (custom_plus 1.0–1.3), so this is not the study's loss in effect."""
    cm = soft_confusion(logits, labels, mask, logits.shape[-1])
    return metrics.custom_plus(cm) + metrics.custom_multi(cm) + 1.0 - metrics.custom_precision(cm)


_LOSSES = {"categorical": categorical, "binary": binary, "severity": severity,
           "corn": corn_loss, "coral": coral_loss}

# Batch-level losses: fn(logits (n, K), labels (n,), mask (n,)) -> scalar (vmap over folds).
BATCH_LOSSES = {"soft_plus": soft_plus, "soft_multi": soft_multi, "soft_custom": soft_custom}


def is_batch_level(fn) -> bool:
    """Whether ``fn`` (as :func:`get` returns it) is a batch-level loss
    ``fn(logits, labels, mask) -> scalar`` rather than a per-example one."""
    return getattr(fn, "func", fn) in BATCH_LOSSES.values()


def get(name: str, **kwargs):
    """The loss called ``name`` with ``kwargs`` bound.

    Per-example names: ``"categorical"``, ``"binary"``, ``"severity"`` (which takes
    ``cost``, ``ce_weight``, ``class_weights``) give ``fn(logits, labels) -> (n,)``.
    Batch-level names (``name in BATCH_LOSSES``: ``"soft_plus"``, ``"soft_multi"``,
    ``"soft_custom"``, no arguments) give ``fn(logits, labels, mask) -> scalar``.
    Unknown names or arguments raise at once rather than at the first training step.
    """
    known = {**_LOSSES, **BATCH_LOSSES}
    if name not in known:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(known)}")
    allowed = {"cost", "ce_weight", "class_weights"} if name == "severity" else set()
    unexpected = set(kwargs) - allowed
    if unexpected:
        raise TypeError(f"loss {name!r} takes no arguments {sorted(unexpected)}")
    return functools.partial(known[name], **kwargs)
