"""Operating points for the triage tasks (:data:`handjax.evaluation.tasks.TASKS`): a threshold
chosen on rows that exclude the test photos, frozen, then applied to them."""
from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from handjax.evaluation.bootstrap import bootstrap_ci
from handjax.evaluation.clinical import ratio
from handjax.evaluation.tasks import TASKS


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




MIN_TO_CHOOSE = 10  # photos of the class a target is a rate of, below which none is chosen


def threshold_choice(scores, positive, *, target: float, kind: str,
                     min_count: int = MIN_TO_CHOOSE) -> dict:
    """:func:`choose_threshold` with its evidence, in a form that cannot be misread.

    Returns ``{"status", "target", "n_chosen_on", "n_positive", "n_negative", ...}`` where
    ``n_chosen_on`` counts the photos of the class the target is a rate of (positives for
    ``"sensitivity"``, negatives for ``"specificity"``) and ``status`` is:

    * ``"chosen"``: ``threshold`` (finite) and ``reached``, the targeted rate it gives here;
    * ``"unreachable"``: no threshold that calls at least one photo positive meets the target
      (only "call nothing positive", threshold +inf, would); ``best_reached`` is the best
      targeted rate such a threshold gives, and no threshold is reported;
    * ``"too few to choose"``: fewer than ``min_count`` photos of that class (or none of the
      other): a rate of 9 photos moves in steps of 0.11, so a 0.9 target means nothing.

    Why: ``choose_threshold`` returns +inf for an unreachable target, which JSON writes as
    ``null``, the same as "undefined"; and a threshold chosen on 3 photos reads as one chosen
    on 300.
    """
    if kind not in ("sensitivity", "specificity"):
        raise ValueError(f"kind must be 'sensitivity' or 'specificity', got {kind!r}")
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    relevant, other = (n_pos, n_neg) if kind == "sensitivity" else (n_neg, n_pos)
    out = {"target": f"{kind} >= {target:g}", "n_chosen_on": relevant,
           "n_positive": n_pos, "n_negative": n_neg}
    if relevant < min_count or other == 0:
        return {"status": "too few to choose", **out}
    threshold = choose_threshold(scores, positive, target=target, kind=kind)
    if math.isfinite(threshold):
        reached = operating_point(scores, positive, threshold)[kind]
        return {"status": "chosen", "threshold": threshold, "reached": reached, **out}
    # sensitivity falls and specificity rises with the threshold: the best is at an end
    scores = np.asarray(scores, np.float64)
    best = max(operating_point(scores, positive, t)[kind] for t in (scores.min(), scores.max()))
    return {"status": "unreachable", "best_reached": best, **out}


def describe_choice(choice: dict, digits: int = 3) -> str:
    """One cell of text for a :func:`threshold_choice`: ``"0.412 (on 24 positives)"``,
    ``"unreachable: best specificity 0.850 (on 7 negatives)"``, ``"reachable only at
    sensitivity 0 (specificity 0.938 there; on 16 negatives)"`` (the target is met, but only
    by thresholds that find no positive, so none is chosen) or ``"too few to choose
    (6 positives)"``."""
    kind = choice["target"].split()[0]
    cls = "positives" if kind == "sensitivity" else "negatives"
    n = choice["n_chosen_on"]
    if choice["status"] == "chosen":
        return f"{choice['threshold']:.{digits}f} (on {n} {cls})"
    if choice["status"] == "unreachable":
        best, target = choice["best_reached"], float(choice["target"].split(">=")[1])
        if best >= target:   # met only by thresholds that find no case of the other kind
            other = "specificity" if kind == "sensitivity" else "sensitivity"
            return (f"reachable only at {other} 0 ({kind} {best:.{digits}f} there; "
                    f"on {n} {cls})")
        return f"unreachable: best {kind} {best:.{digits}f} (on {n} {cls})"
    return f"too few to choose ({n} {cls})"


def fold_thresholds(probs: np.ndarray, labels: np.ndarray, targets: dict) -> dict:
    """``{task: {kind: threshold_choice(...)}}`` for one fold, chosen on the calibrated
    probabilities ``probs`` and ``labels`` of photos that exclude that fold's test photos
    (the other folds' out-of-fold rows, or its inner split)."""
    return {task: {kind: threshold_choice(spec.score(probs), spec.positive(labels),
                                          target=target, kind=kind)
                   for kind, target in targets.items()}
            for task, spec in TASKS.items()}


def _pooled_status(choices: list[dict]) -> str:
    """One status for the pooled operating point: chosen only when every fold chose one."""
    statuses = {c["status"] for c in choices}
    for status in ("too few to choose", "unreachable"):
        if status in statuses:
            return status
    return "chosen"


def operating_points(preds, thresholds: list, targets: dict, n_boot: int, seed: int) -> dict:
    """Sensitivity and specificity reached on the test folds by each fold's frozen threshold
    (``thresholds[k][task][kind]``: a :func:`threshold_choice`), pooled out of fold, with
    subject-bootstrap CIs (``preds``: ``Predictions``). Where a fold's target was unreachable
    or had too few photos to choose on, the pooled point says so and reports no rates."""
    p = preds.probs["cnn_calibrated"]
    model = preds.repeat * (int(preds.fold.max()) + 1) + preds.fold   # repeat-major index
    out = {}
    for task, spec in TASKS.items():
        out[task] = {}
        for kind, target in targets.items():
            choices = [thresholds[k][task][kind] for k in range(len(thresholds))]
            entry = {"target": f"{kind} >= {target:g}", "status": _pooled_status(choices),
                     "per_fold": choices}
            if entry["status"] == "chosen":
                thr = np.array([choices[k]["threshold"] for k in model], np.float64)
                pair = np.stack([spec.score(p), thr], 1)
                entry.update(bootstrap_ci(point_metric(task), preds.label, pair, preds.label,
                                          preds.subject, n_boot=n_boot, seed=seed,
                                          repeat=preds.repeat))
            out[task][kind] = entry
    return out


def point_metric(task: str):
    """Sensitivity and specificity of ``task`` at per-photo thresholds, in the ``metric_fn(y,
    pair, _)`` form :func:`bootstrap_ci` takes: ``pair[:, 0]`` is the task's score and
    ``pair[:, 1]`` the threshold applied to that photo. Both are proportions
    (``.proportions``), so their intervals are clustered Wilson ones."""
    def fn(y, pair, _):
        return {k: v for k, v in operating_point(
            pair[:, 0], TASKS[task].positive(y), pair[:, 1]).items() if k != "threshold"}

    def proportions(y, pair, _):
        positive = TASKS[task].positive(np.asarray(y))
        called = np.asarray(pair)[:, 0] >= np.asarray(pair)[:, 1]
        return {"sensitivity": (called & positive, positive),
                "specificity": (~called & ~positive, ~positive)}

    fn.proportions = proportions
    return fn
