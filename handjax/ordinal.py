"""Ordinal heads: CORN and CORAL logits, class probabilities and ordinal decisions.

The classes are ordered by severity (0 normal < 1 Heberden's nodes < 2 rheumatoid
arthritis). An ordinal head emits ``K-1`` logits ``z_k``, one binary task "is the grade
above ``k``?" per threshold ``k = 0..K-2``; the losses are ``losses.corn_loss`` /
``losses.coral_loss``.

* CORN (Shi, Cao & Raschka 2021, arXiv 2111.08851): ``z_k`` is the logit of the
  *conditional* ``P(y > k | y >= k)``, so ``P(y > k) = prod_{j <= k} sigmoid(z_j)``,
  non-increasing in ``k`` for any logits (rank-consistent by construction). The last
  layer is a plain ``Dense(K-1)``.
* CORAL (Cao, Mirjalili & Raschka 2020): ``P(y > k) = sigmoid(w . x + b_k)``, one weight
  vector shared by all tasks (:class:`CoralLayer`); rank-consistent whenever the biases
  are non-increasing, which the loss's minimiser satisfies but training need not.

Both give class probabilities ``P(y = k) = P(y > k-1) - P(y > k)`` (with ``P(y > -1) =
1`` and ``P(y > K-1) = 0``), so minimum-expected-cost decisions, AUROC and prediction
work on them unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from handjax import losses


class CoralLayer(nn.Module):
    """CORAL's last layer: ``z_k = x @ kernel + bias_k``, ``kernel`` ``(d, 1)`` shared by
    all ``K-1`` tasks, ``bias`` ``(K-1,)`` one threshold per task.

    The biases start strictly descending, ``(K-1, ..., 1) / (K-1)`` (``[1, 0.5]`` for
    K = 3, coral-pytorch's ``preinit_bias``): the head is rank-consistent from the first
    step and every class starts with some mass. All-zero biases would give ``P(y > k)``
    equal for every ``k``, so each middle class would start at probability exactly 0.
    The kernel uses ``nn.Dense``'s default initialiser. The parameter names are Dense's
    (``kernel``, ``bias``); only the shapes differ.
    """

    num_classes: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        tasks = num_outputs(self.num_classes)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 1))
        bias = self.param("bias", _descending, (tasks,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return x @ kernel + bias


def _descending(_, shape, dtype=jnp.float32):
    """``(n, ..., 1) / n`` for ``shape == (n,)``: CORAL's initial thresholds."""
    return (jnp.arange(shape[0], 0, -1) / shape[0]).astype(dtype)


def num_outputs(num_classes: int) -> int:
    """Logits an ordinal head emits for ``num_classes`` ordered classes: ``K - 1``."""
    if num_classes < 2:
        raise ValueError(f"an ordinal head needs num_classes >= 2, got {num_classes}")
    return num_classes - 1


def logits_layer(kind: str, num_classes: int, dtype: Any = jnp.float32,
                 name: str = "head_logits") -> nn.Module:
    """The ordinal replacement of the head's final ``Dense(num_classes)``.

    ``"corn"``: ``Dense(K-1)``; ``"coral"``: :class:`CoralLayer`. Call it inside a
    compact ``__call__`` so the layer binds to that module under ``name``.
    """
    if kind == "corn":
        return nn.Dense(num_outputs(num_classes), dtype=dtype, name=name)
    if kind == "coral":
        return CoralLayer(num_classes, dtype=dtype, name=name)
    raise ValueError(f"unknown ordinal head {kind!r}; choose 'corn' or 'coral'")


# ---- probabilities -------------------------------------------------------------------
def corn_greater(logits):
    """``P(y > k)`` ``(..., K-1)``: the running product of the conditional sigmoids
    (summed in log space, so it is non-increasing in ``k`` to the last bit)."""
    return jnp.exp(jnp.cumsum(jax.nn.log_sigmoid(logits), axis=-1))


def coral_greater(logits):
    """``P(y > k)`` ``(..., K-1)``: one sigmoid per threshold."""
    return jax.nn.sigmoid(logits)


def class_probabilities(p_greater):
    """``(..., K)`` class probabilities from the exceedance probabilities ``P(y > k)``.

    ``P(y = k) = P(y > k-1) - P(y > k)``. The differences telescope to 1; when the
    ``P(y > k)`` increase somewhere (CORAL with crossed biases; never CORN) the negative
    differences are clipped to 0 and the row is renormalised (its sum is then > 1, so the
    division is safe). Rows of non-increasing ``P(y > k)`` come back unchanged.
    """
    ones = jnp.ones_like(p_greater[..., :1])
    upper = jnp.concatenate([ones, p_greater], axis=-1)
    lower = jnp.concatenate([p_greater, jnp.zeros_like(ones)], axis=-1)
    probs = jnp.maximum(upper - lower, 0.0)
    return probs / probs.sum(-1, keepdims=True)


def corn_probabilities(logits):
    """``(..., K)`` class probabilities of a CORN head's ``(..., K-1)`` logits."""
    return class_probabilities(corn_greater(logits))


def coral_probabilities(logits):
    """``(..., K)`` class probabilities of a CORAL head's ``(..., K-1)`` logits."""
    return class_probabilities(coral_greater(logits))


# ---- decisions -----------------------------------------------------------------------
def ordinal_decision(p_greater):
    """``sum_k 1[P(y > k) > 0.5]`` as int32: both papers' rank prediction.

    For non-increasing ``P(y > k)`` this is the median of the class distribution, which
    can differ from its argmax (the mode): ``P(y > k) = (0.6, 0.33)`` gives class
    probabilities ``(0.4, 0.27, 0.33)``, decision 1, argmax 0.
    """
    return jnp.sum(p_greater > 0.5, axis=-1).astype(jnp.int32)


def corn_decision(logits):
    """The ordinal decision of a CORN head's logits."""
    return ordinal_decision(corn_greater(logits))


def coral_decision(logits):
    """The ordinal decision of a CORAL head's logits."""
    return ordinal_decision(coral_greater(logits))


class Ordinal(NamedTuple):
    """What the trainer needs for one ordinal head; fields are named, use them by name."""

    loss: Callable           # optax-shaped per example: fn(logits, labels) -> (...)
    probabilities: Callable  # fn(logits (..., K-1)) -> (..., K)
    decision: Callable       # fn(logits) -> (...) int32, the ordinal decision
    num_outputs: Callable    # fn(num_classes) -> logits the head emits


ORDINAL = {
    "corn": Ordinal(losses.corn_loss, corn_probabilities, corn_decision, num_outputs),
    "coral": Ordinal(losses.coral_loss, coral_probabilities, coral_decision, num_outputs),
}


def decide(loss_name: str, logits):
    """A network's own decision: the ordinal rule for an ordinal head, else the argmax."""
    if loss_name in ORDINAL:
        return ORDINAL[loss_name].decision(logits)
    return jnp.argmax(logits, -1)
