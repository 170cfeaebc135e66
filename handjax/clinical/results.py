"""``results.json``, assembled in one place: the run's header, the study's per-fold decision
metrics, and the clinical figures, every one recomputed from ``predictions.csv`` with
subject-bootstrap 95% CIs (pooled out of fold per rule, per fold, per subgroup, operating
points, calibration)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handjax.clinical.bootstrap import bootstrap_ci, per_fold_metrics, subgroup_table
from handjax.clinical.metrics import ECE_BINS, clinical_metrics
from handjax.clinical.operating import operating_points
from handjax.clinical.predictions import Predictions, present_rules, read_predictions

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import EvalSpec, RunSpec


def clinical_block(preds: Predictions, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{rule: {metric: {"value", "ci95", "n_finite"}}}`` for every rule in ``preds`` (cnn,
    cnn_calibrated, svm, and cnn_mec with the probabilities it decides on). Every rule uses
    the same resampled subjects (same ``seed``), so their intervals are paired."""
    return {rule: bootstrap_ci(clinical_metrics, preds.label, preds.probs_for(rule),
                               preds.pred[rule], preds.subject, n_boot=n_boot, seed=seed)
            for rule in present_rules(preds.pred)}


def clinical_results(csv_path: Path, calib: dict, eval_spec: EvalSpec, seed: int) -> dict:
    """The clinical figures of a run, each with a subject-bootstrap 95% CI, from its
    ``predictions.csv``: pooled out of fold per rule, per fold, per subgroup (each metadata
    column), the operating points (``calib["thresholds"]``: each fold's frozen thresholds)
    and the calibration record (``calib["temperatures"]``)."""
    preds = read_predictions(csv_path)
    targets = {"sensitivity": eval_spec.sensitivity, "specificity": eval_spec.specificity}
    n_boot, rule = eval_spec.bootstrap, "cnn_calibrated"
    return {
        "clinical": clinical_block(preds, n_boot=n_boot, seed=seed),
        "clinical_per_fold": {r: {str(k): v for k, v in per_fold_metrics(
            preds.label, preds.probs_for(r), preds.pred[r], preds.fold).items()}
            for r in preds.pred},
        "subgroups": subgroup_table(preds.label, preds.probs[rule], preds.pred[rule],
                                    preds.subject, dict(preds.extra), n_boot=n_boot, seed=seed),
        "operating_points": operating_points(preds, calib["thresholds"], targets, n_boot,
                                             seed),
        "calibration": {"temperatures": [float(t) for t in calib["temperatures"]],
                        "fitted_on": "each fold's inner validation split"
                        if any(t != 1.0 for t in calib["temperatures"]) else
                        "nothing: train.inner_val=0, so cnn_calibrated equals cnn",
                        "ece_bins": f"{ECE_BINS} equal-width bins of top-label confidence"},
        "bootstrap": {"resamples": n_boot, "unit": "subject", "seed": seed},
    }


def run_results(run_spec: RunSpec, data_desc: dict, cache_bytes: int, decisions: dict,
                clinical: dict) -> dict:
    """The whole ``results.json`` of a run: a pure function of config + data (timing goes
    to ``timing.json``), strict JSON (NaN and infinities as ``null``)."""
    return json_safe({
        "name": run_spec.name, "model": run_spec.model.name, "loss": run_spec.loss.label,
        "weights": str(run_spec.model.weights or "none"),
        "image_size": run_spec.data.image_size, "n_folds": run_spec.n_folds,
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
