"""Decision curves (Vickers & Elkin, Med Decis Making 2006): is acting on the model better
than treating (referring) everyone or no one, at the threshold a clinician would act on?

A threshold probability ``t`` says how a clinician weighs the two errors: referring when
``p >= t`` is worth it exactly when a missed case costs ``(1 - t) / t`` times an unneeded
referral. The net benefit of a rule at ``t`` counts true positives per photo, less false
positives per photo weighted by those odds::

    net benefit = TP / n - FP / n * t / (1 - t)

"Treat all" refers every photo (its net benefit is ``prevalence - (1 - prevalence) * t / (1 -
t)``), "treat none" refers no one (0). A model is useful at ``t`` where its curve lies above
both; only the range of thresholds a clinician would actually act on matters.
"""
from __future__ import annotations

import numpy as np

from handjax.evaluation.tasks import TASKS

THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)   # 0.01 ... 0.99


def net_benefit(positive, score, thresholds=THRESHOLDS) -> np.ndarray:
    """Net benefit of referring every photo with ``score >= t``, per threshold ``t``, float64.

    ``positive``: bool [N] (the task's truth); ``score``: [N] the task's probability. NaN for
    an empty set."""
    positive = np.asarray(positive, bool)
    score, t = np.asarray(score, np.float64), np.asarray(thresholds, np.float64)
    n = len(positive)
    if n == 0:
        return np.full(len(t), np.nan)
    refer = score[None, :] >= t[:, None]                       # [T, N]
    tp = (refer & positive[None, :]).sum(1)
    fp = (refer & ~positive[None, :]).sum(1)
    return tp / n - fp / n * t / (1 - t)


def treat_all(positive, thresholds=THRESHOLDS) -> np.ndarray:
    """Net benefit of referring every photo, per threshold."""
    prevalence = float(np.mean(np.asarray(positive, bool))) if len(positive) else np.nan
    t = np.asarray(thresholds, np.float64)
    return prevalence - (1 - prevalence) * t / (1 - t)


def decision_curve(y, prob, task: str, thresholds=THRESHOLDS) -> list[dict]:
    """``[{"threshold", "net_benefit", "treat_all"}]`` of one task of :data:`TASKS` (its
    positives and its score) for labels ``y`` [N] and class probabilities ``prob`` [N, 3]."""
    spec = TASKS[task]
    positive = spec.positive(np.asarray(y))
    model = net_benefit(positive, spec.score(np.asarray(prob, np.float64)), thresholds)
    everyone = treat_all(positive, thresholds)
    return [{"threshold": float(t), "net_benefit": float(m), "treat_all": float(a)}
            for t, m, a in zip(np.asarray(thresholds, np.float64), model, everyone)]


def decision_curves(y, prob, thresholds=THRESHOLDS) -> dict[str, list[dict]]:
    """:func:`decision_curve` of every task of :data:`TASKS`."""
    return {task: decision_curve(y, prob, task, thresholds) for task in TASKS}
