"""The triage tasks, defined once: which photos are positive, and the score that ranks them.

Every figure of a task (its AUROC, ROC curve, operating points, decision curve) reads it
from here. Classes by severity: 0 normal < 1 heberden < 2 ra.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


class Task(NamedTuple):
    """A yes/no question asked of the three-class probabilities."""

    title: str
    positive: Callable[[np.ndarray], np.ndarray]   # labels [N] -> bool [N]
    score: Callable[[np.ndarray], np.ndarray]      # probabilities [N, 3] -> score [N]


def _any_disease(y: np.ndarray) -> np.ndarray:
    return np.asarray(y) != 0


def _p_disease(p: np.ndarray) -> np.ndarray:
    """p(heberden) + p(ra): the probability of any disease."""
    return p[:, 1] + p[:, 2]


def _is_ra(y: np.ndarray) -> np.ndarray:
    return np.asarray(y) == 2


def _p_ra(p: np.ndarray) -> np.ndarray:
    return p[:, 2]


TASKS = {
    "any_disease": Task("any disease vs normal", _any_disease, _p_disease),
    "ra": Task("RA vs rest", _is_ra, _p_ra),
}
