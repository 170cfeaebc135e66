"""``results.json``, assembled in one place: the run's header, the study's per-fold decision
metrics, and the clinical figures, every one recomputed from ``predictions.csv`` with
subject-bootstrap 95% CIs (pooled out of fold per rule, per fold, per subgroup, operating
points, calibration)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handjax.evaluation.bootstrap import bootstrap_ci
from handjax.evaluation.clinical import clinical_metrics
from handjax.evaluation.predictions import Predictions, present_rules, read_predictions

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import EvalSpec, RunSpec


def clinical_block(preds: Predictions, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{rule: {metric: {"value", "ci95", "n_finite"}}}`` for every rule in ``preds`` (cnn,
    cnn_calibrated, svm, and cnn_mec with the probabilities it decides on). Every rule uses
    the same resampled subjects (same ``seed``), so their intervals are paired."""
    return {rule: bootstrap_ci(clinical_metrics, preds.label, preds.probs_for(rule),
                               preds.pred[rule], preds.subject, n_boot=n_boot, seed=seed,
                               repeat=preds.repeat)
            for rule in present_rules(preds.pred)}


def clinical_results(csv_path: Path, calib: dict, eval_spec: EvalSpec, seed: int) -> dict:
    """The clinical figures of a run, each with a subject-bootstrap 95% CI, from its
    ``predictions.csv``: pooled out of fold per rule, per fold, per subgroup (each metadata
    column), the operating points (``calib["thresholds"]``: each fold's frozen thresholds),
    the calibration record (``calib``: :func:`handjax.evaluation.scoring.out_of_fold`'s) and the
    decision curves of the cnn_calibrated probabilities, pooled out of fold (with repeats,
    the mean over repeats: net benefit is linear in the counts)."""
    from handjax.evaluation import evaluators   # the registry builds on this module
    context = evaluators.Context(
        n_boot=eval_spec.bootstrap, seed=seed, calibration=calib,
        targets={"sensitivity": eval_spec.sensitivity, "specificity": eval_spec.specificity})
    return evaluators.evaluate(read_predictions(csv_path), context, evaluators.RUN)


REPEAT_POOLING = ("each figure is the mean over repeats of the repeat's own value; each "
                  "bootstrap resample draws the subjects with replacement and one repeat at "
                  "random, so the 95% CI holds both the subject sampling and the between-repeat "
                  "(fold assignment) variation")


def run_results(run_spec: RunSpec, data_desc: dict, cache_bytes: int, decisions: dict,
                clinical: dict) -> dict:
    """The whole ``results.json`` of a run: a pure function of config + data (timing goes
    to ``timing.json``), strict JSON (NaN and infinities as ``null``)."""
    return json_safe({
        "name": run_spec.name, "model": run_spec.model.name, "loss": run_spec.loss.label,
        "weights": str(run_spec.model.weights or "none"),
        "image_size": run_spec.data.image_size, "n_folds": run_spec.n_folds,
        "repeats": run_spec.repeats,
        "seed": run_spec.seed, "data": data_desc, "decisions": decisions,
        "cache_bytes": cache_bytes, **clinical,
    })


def json_safe(value):
    """``value`` with every NaN or infinity replaced by None (``null``: strict JSON, and
    equal to itself when a rerun is compared with a first run)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value
