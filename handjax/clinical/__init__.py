"""Results a clinical reader can trust: out-of-fold predictions -> figures with
subject-level CIs. Pure numpy + sklearn statistics (no JAX), one module per job:

* ``tasks``: the triage tasks, defined once (any disease: p(heberden) + p(ra); RA: p(ra));
* ``predictions``: ``predictions.csv`` I/O (``Predictions``, ``write_predictions``,
  ``read_predictions``), the one file every figure is computed from;
* ``metrics``: ``clinical_metrics`` (sensitivity / specificity / PPV / NPV, AUROCs, kappa,
  grade errors, Brier, ECE, log loss) and their weighted forms for the bootstrap;
* ``bootstrap``: the subject-level (cluster) bootstrap, per-fold and subgroup tables;
* ``calibration``: temperature scaling, reliability curves;
* ``operating``: thresholds chosen without the test photos, frozen, then applied;
* ``results``: ``results.json`` assembled in one place.

The face binds what callers use; it imports no TFDS and computes nothing with JAX.
"""
from handjax.clinical.bootstrap import (bootstrap_ci, per_fold_metrics, subgroup_table,
                                        subject_bootstrap_weights)
from handjax.clinical.calibration import apply_temperature, fit_temperature, reliability_curve
from handjax.clinical.metrics import (ECE_BINS, any_disease_metrics, clinical_metrics,
                                      ece_binned, ece_sweep_weighted, ovr_aurocs_batched)
from handjax.clinical.operating import (MIN_TO_CHOOSE, choose_threshold, describe_choice,
                                        fold_thresholds, operating_point, operating_points,
                                        threshold_choice)
from handjax.clinical.predictions import (MEC_RULE, RULES, Predictions, PredictionsError,
                                          prediction_columns, read_predictions,
                                          write_predictions)
from handjax.clinical.results import clinical_block, clinical_results, json_safe, run_results
from handjax.clinical.tasks import TASKS, Task
