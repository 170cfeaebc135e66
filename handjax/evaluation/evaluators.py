"""Registered evaluators: each turns one ``Predictions`` object into one block of
``results.json``, behind one interface (``fn(preds, context) -> block``).

A command names the blocks it wants (:func:`evaluate`): a training run asks for :data:`RUN`
(:func:`handjax.evaluation.results.clinical_results`), ``validate`` for :data:`VALIDATION`.
A block a command's data cannot support (no repeats, no locked thresholds) is left out
rather than written empty.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from handjax.evaluation.bootstrap import bootstrap_ci, per_fold_metrics, subgroup_table
from handjax.evaluation.calibration import calibration_lines
from handjax.evaluation.clinical import ECE_BINS
from handjax.evaluation.net_benefit import decision_curves
from handjax.evaluation.operating import operating_point, operating_points
from handjax.evaluation.predictions import Predictions
from handjax.evaluation.results import REPEAT_POOLING, clinical_block
from handjax.evaluation.tasks import TASKS

RULE = "cnn_calibrated"   # the probabilities the clinical blocks describe (the locked model's)


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators need beside the predictions: the bootstrap's resamples and seed; for a
    run, its calibration record (per-fold temperatures and frozen threshold choices,
    :func:`handjax.evaluation.scoring.out_of_fold`) and the threshold ``targets``; for a
    validation, the locked model's threshold rules (``{name: (task, threshold)}``) with the
    card's ``operating_points`` (how each was chosen)."""

    n_boot: int
    seed: int
    calibration: dict = dataclasses.field(default_factory=dict)
    targets: dict = dataclasses.field(default_factory=dict)
    rules: dict = dataclasses.field(default_factory=dict)
    operating_points: dict = dataclasses.field(default_factory=dict)


EVALUATORS: dict[str, Callable[[Predictions, Context], dict | None]] = {}


def register(name: str):
    """Decorator: register ``fn(preds, context) -> block`` as the evaluator of ``name``."""
    def add(fn):
        EVALUATORS[name] = fn
        return fn
    return add


def evaluate(preds: Predictions, context: Context, names) -> dict:
    """``{name: block}`` of the registered evaluators ``names``, in that order (blocks that
    come back ``None`` are left out)."""
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise KeyError(f"no evaluator registered as {unknown[0]!r}; known: {sorted(EVALUATORS)}")
    blocks = {name: EVALUATORS[name](preds, context) for name in names}
    return {k: v for k, v in blocks.items() if v is not None}


@register("clinical")
def _clinical(preds: Predictions, ctx: Context) -> dict:
    return clinical_block(preds, n_boot=ctx.n_boot, seed=ctx.seed)


@register("clinical_per_repeat")
def _clinical_per_repeat(preds: Predictions, ctx: Context) -> list | None:
    """Repeated cross-validation: every clinical figure per repeat (nothing without)."""
    if preds.repeats == 1:
        return None
    return [clinical_block(preds.rows(preds.repeat == r), ctx.n_boot, ctx.seed)
            for r in range(preds.repeats)]


@register("repeat_pooling")
def _repeat_pooling(preds: Predictions, ctx: Context) -> str | None:
    return REPEAT_POOLING if preds.repeats > 1 else None


@register("clinical_per_fold")
def _clinical_per_fold(preds: Predictions, ctx: Context) -> dict:
    folds = (preds.fold if preds.repeats == 1 else
             np.char.add(np.char.add(preds.repeat.astype(str), "/"), preds.fold.astype(str)))
    return {r: {str(k): v for k, v in per_fold_metrics(
        preds.label, preds.probs_for(r), preds.pred[r], folds).items()} for r in preds.pred}


@register("operating_points")
def _operating_points(preds: Predictions, ctx: Context) -> dict | None:
    """A run's operating points: each fold's frozen threshold on its test photos."""
    if "thresholds" not in ctx.calibration:
        return None
    return operating_points(preds, ctx.calibration["thresholds"], ctx.targets, ctx.n_boot,
                            ctx.seed)


@register("calibration")
def _calibration(preds: Predictions, ctx: Context) -> dict | None:
    """A run's calibration record (its thresholds are in ``operating_points``)."""
    if not ctx.calibration:
        return None
    return {**{k: v for k, v in ctx.calibration.items() if k != "thresholds"},
            "ece_10bin": f"{ECE_BINS} equal-width bins of top-label confidence",
            "ece_sweep": "equal-mass bins, as many as keep accuracy monotone "
                         "(Roelofs et al. 2022)"}


@register("bootstrap")
def _bootstrap(preds: Predictions, ctx: Context) -> dict:
    return {"resamples": ctx.n_boot, "unit": "subject", "seed": ctx.seed}


@register("subgroups")
def _subgroups(preds: Predictions, ctx: Context) -> dict:
    return subgroup_table(preds.label, preds.probs[RULE], preds.pred[RULE], preds.subject,
                          dict(preds.extra), n_boot=ctx.n_boot, seed=ctx.seed,
                          repeat=preds.repeat)


@register("decision_curve")
def _decision_curve(preds: Predictions, ctx: Context) -> dict:
    return decision_curves(preds.label, preds.probs[RULE])


@register("calibration_lines")
def _calibration_lines(preds: Predictions, ctx: Context) -> dict:
    return {"intercept_slope": bootstrap_ci(
                calibration_lines, preds.label, preds.probs[RULE], preds.pred[RULE],
                preds.subject, n_boot=ctx.n_boot, seed=ctx.seed),
            "intercept_slope_method": (
                "logistic recalibration of each task's outcome on the logit of its "
                "locked probability: intercept with the slope fixed at 1 "
                "(calibration-in-the-large), slope from the two-parameter fit")}


def _at_threshold(task: str, threshold: float):
    """``metric_fn(y, prob, pred)``: sensitivity and specificity of ``task``'s score at the
    fixed ``threshold``. Both are proportions; ``.proportions`` gives their (numerator,
    denominator) photo masks, for intervals that take them (clustered Wilson)."""
    spec = TASKS[task]

    def fn(y, prob, _pred):
        point = operating_point(spec.score(prob), spec.positive(y), threshold)
        return {"sensitivity": point["sensitivity"], "specificity": point["specificity"]}

    def proportions(y, prob, _pred):
        positive = spec.positive(np.asarray(y))
        called = spec.score(np.asarray(prob, np.float64)) >= threshold
        return {"sensitivity": (called & positive, positive),
                "specificity": (~called & ~positive, ~positive)}

    fn.proportions = proportions
    return fn


def locked_operating_points(preds: Predictions, rules: dict, choices: dict, n_boot: int,
                            seed: int) -> dict:
    """``{task: [entry per locked threshold]}``: the rule ``score >= threshold`` (the
    threshold chosen in development, frozen) applied to ``preds``' locked probabilities;
    each entry holds ``rule``, ``target``, ``threshold``, ``development`` (the rate it reached
    on the rows it was chosen on) and ``sensitivity`` / ``specificity`` with
    subject-bootstrap CIs."""
    out: dict = {}
    for name, (task, threshold) in rules.items():
        kind = name[len(task) + 1:]
        choice = choices.get(task, {}).get(kind, {})
        entry = {"rule": name, "target": choice.get("target"), "threshold": threshold,
                 "development": {kind: choice.get("reached"),
                                 "n_chosen_on": choice.get("n_chosen_on")}}
        entry.update(bootstrap_ci(_at_threshold(task, threshold), preds.label,
                                  preds.probs[RULE], preds.pred[RULE], preds.subject,
                                  n_boot=n_boot, seed=seed))
        out.setdefault(task, []).append(entry)
    return out


@register("locked_operating_points")
def _locked(preds: Predictions, ctx: Context) -> dict | None:
    if not ctx.rules:
        return None
    return locked_operating_points(preds, ctx.rules, ctx.operating_points, ctx.n_boot,
                                   ctx.seed)


RUN = ("clinical", "clinical_per_repeat", "repeat_pooling", "clinical_per_fold", "subgroups",
       "operating_points", "calibration", "decision_curve", "bootstrap")
VALIDATION = ("clinical", "locked_operating_points", "calibration_lines", "subgroups",
              "decision_curve", "bootstrap")

