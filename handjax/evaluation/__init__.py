"""Results a clinical reader can trust: out-of-fold predictions -> figures with
subject-level CIs. Pure numpy + sklearn statistics (no JAX), one module per job:

* ``tasks``: the triage tasks, defined once (any disease: p(heberden) + p(ra); RA: p(ra));
* ``predictions``: ``predictions.csv`` I/O (``Predictions``, ``write_predictions``,
  ``read_predictions``), the one file every figure is computed from;
* ``metrics``: ``clinical_metrics`` (sensitivity / specificity / PPV / NPV, AUROCs, kappa,
  grade errors, Brier, ECE, log loss) and their weighted forms for the bootstrap;
* ``intervals``: Wilson intervals at the subjects' effective sample size for proportions,
  percentile intervals that count non-finite resamples and flag unbounded limits;
* ``bootstrap``: the subject-level (cluster) bootstrap, per-fold and subgroup tables;
* ``calibration``: temperature scaling, reliability curves, calibration intercept and slope;
* ``operating``: thresholds chosen without the test photos, frozen, then applied;
* ``decision``: decision curves (net benefit against treat all / treat none);
* ``results``: ``results.json`` assembled in one place.

The face binds what callers use; it imports no TFDS and computes nothing with JAX.
"""
from handjax.evaluation.bootstrap import (bootstrap_ci, per_fold_metrics, subgroup_table, subject_bootstrap_blocks)
from handjax.evaluation.calibration import (TEMPERATURE_BOUNDS, apply_temperature, at_bound, calibration_intercept_slope, calibration_lines, cross_fitted_temperatures, fit_temperature, log_probs, reliability_curve)
from handjax.evaluation.net_benefit import decision_curve, decision_curves
from handjax.evaluation.clinical import (ECE_BINS, any_disease_metrics, assessable, class_coverage, clinical_metrics, coverage_line, ece_binned, ece_sweep_weighted, ovr_aurocs_batched)
from handjax.evaluation.intervals import (auroc_score_interval, kish_subjects, percentile_interval, proportion_interval, wilson_interval)
from handjax.evaluation.operating import (MIN_TO_CHOOSE, choose_threshold, describe_choice, fold_thresholds, operating_point, operating_points, threshold_choice)
from handjax.evaluation.predictions import (MEC_RULE, RULES, STUDY_RULES, Predictions, PredictionsError, prediction_columns, read_predictions, write_predictions)
from handjax.evaluation.evaluators import clinical_block
from handjax.evaluation.results import clinical_results, json_safe, run_results
from handjax.evaluation.tasks import TASKS, Task
