"""``results.json``, assembled in one place: the run's header, the study's per-fold decision
metrics, and the clinical figures, every one recomputed from ``predictions.csv`` with
subject-bootstrap 95% CIs (pooled out of fold per rule, per fold, per subgroup, operating
points, calibration)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handjax.evaluation import evaluators
from handjax.evaluation.predictions import Predictions, read_predictions

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import EvalSpec, RunSpec


def clinical_results(csv_path: Path, calib: dict, eval_spec: EvalSpec, seed: int) -> dict:
    """The clinical figures of a run, each with a subject-bootstrap 95% CI, from its
    ``predictions.csv``: pooled out of fold per rule, per fold, per subgroup (each metadata
    column), the operating points (``calib["thresholds"]``: each fold's frozen thresholds),
    the calibration record (``calib``: :func:`handjax.evaluation.scoring.out_of_fold`'s) and the
    decision curves of the cnn_calibrated probabilities, pooled out of fold (with repeats,
    the mean over repeats: net benefit is linear in the counts)."""
    context = evaluators.Context(
        n_boot=eval_spec.bootstrap, seed=seed, calibration=calib,
        targets={"sensitivity": eval_spec.sensitivity, "specificity": eval_spec.specificity})
    return evaluators.evaluate(read_predictions(csv_path), context, evaluators.RUN)


def run_results(run_spec: RunSpec, data_desc: dict, cache_bytes: int, preds: Predictions,
                clinical: dict) -> dict:
    """The whole ``results.json`` of a run: a pure function of config + data (timing goes
    to ``timing.json``), strict JSON (NaN and infinities as ``null``). ``decisions``: the
    study's per-fold metrics of the out-of-fold ``preds``
    (:func:`handjax.evaluation.scoring.decisions_per_fold`)."""
    from handjax.evaluation.scoring import decisions_per_fold   # here: the face loads no JAX
    return json_safe({
        "name": run_spec.name, "model": run_spec.model.name, "loss": run_spec.loss.label,
        "weights": str(run_spec.model.weights or "none"),
        "image_size": run_spec.data.image_size, "n_folds": run_spec.n_folds,
        "repeats": run_spec.repeats, "seed": run_spec.seed, "data": data_desc,
        "decisions": decisions_per_fold(preds, len(preds.class_names)),
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
