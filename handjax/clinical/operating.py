"""Operating points for the triage tasks (:data:`handjax.clinical.tasks.TASKS`): a threshold
chosen on rows that exclude the test photos, frozen, then applied to them."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from handjax.clinical.bootstrap import bootstrap_ci
from handjax.clinical.metrics import ratio
from handjax.clinical.tasks import TASKS


def operating_point(scores, positive, threshold) -> dict[str, float]:
    """Sensitivity and specificity of the rule ``score >= threshold`` -> positive.

    ``threshold`` is a number, or one per photo (e.g. ``thresholds[fold]``: each fold's own
    frozen threshold, pooled over the out-of-fold photos)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    called = scores >= np.asarray(threshold, np.float64)
    point = {"sensitivity": float(ratio(np.sum(called & positive), np.sum(positive))),
             "specificity": float(ratio(np.sum(~called & ~positive), np.sum(~positive)))}
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




def fold_thresholds(probs: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                    targets: dict) -> dict:
    """``{task: {kind: threshold}}`` chosen on the photos ``rows`` only (NaN when they lack
    positives or negatives)."""
    out = {}
    for task, spec in TASKS.items():
        s, pos = spec.score(probs[rows]), spec.positive(labels[rows])
        out[task] = {}
        for kind, target in targets.items():
            ok = len(rows) and pos.any() and not pos.all()
            out[task][kind] = (choose_threshold(s, pos, target=target, kind=kind)
                               if ok else float("nan"))
    return out


def operating_points(preds, thresholds: list, targets: dict, n_boot: int, seed: int) -> dict:
    """Sensitivity and specificity reached on the test folds by each fold's frozen threshold,
    pooled out of fold, with subject-bootstrap CIs (``preds``: ``Predictions``)."""
    p = preds.probs["cnn_calibrated"]
    out = {}
    for task, spec in TASKS.items():
        out[task] = {}
        for kind, target in targets.items():
            thr = np.array([thresholds[k][task][kind] for k in preds.fold], np.float64)
            entry = {"target": f"{kind} >= {target}",
                     "thresholds": [thresholds[k][task][kind] for k in range(len(thresholds))]}
            if np.isfinite(thr).all():
                pair = np.stack([spec.score(p), thr], 1)
                entry.update(bootstrap_ci(_point_metric(task), preds.label, pair, preds.label,
                                          preds.subject, n_boot=n_boot, seed=seed))
            out[task][kind] = entry
    return out


def _point_metric(task: str):
    def fn(y, pair, _):
        return {k: v for k, v in operating_point(
            pair[:, 0], TASKS[task].positive(y), pair[:, 1]).items() if k != "threshold"}
    return fn
