"""One cell of the study, end to end: prepare, fit, evaluate, write the results.

Data flow (the floor plan: ``handjax/__init__.py``)::

    photos --data.load_cohort--> views [V, N, H, W, 3] --features.prepare: frozen prefix,
        once--> cache [V, N, h, w, c]
    fit: phase 1 (backbone frozen, K heads on pooled features [V, N, C]), phase 2 (the top
        block(s) + head per fold on the cached features)           (:mod:`handjax.train.fit`;
        its programs compile from shapes while the prefix runs:   :class:`~handjax.train.fit.Ahead`)
    evaluate: per-fold logits and pooled features -> the decision rules, the SVM probe,
        predictions.csv, the clinical figures                        (:mod:`handjax.evaluation`)
    write: results.json, timing.json, results.md and the PNGs        (:mod:`handjax.report`)

Every process computes; process 0 alone writes (:class:`Primary`).
"""
from __future__ import annotations

# The evaluation stage (sklearn's SVM, calibration and metrics, scipy.optimize) is not
# imported here: :func:`preload` imports it in the background while the folds train.
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from handjax import console
from handjax.data.cohort import Cohort, data_fingerprint, load_cohort
from handjax.data.store import photo_store
from handjax.errors import TrainingError
from handjax.metrics import STUDY_METRICS
from handjax.models.keras_weights import weights_fingerprint
from handjax.models.kernels import plan as plans
from handjax.models.kernels.plan import ConvPlan
from handjax.train import checkpoint, distributed, features, fit as fitting, fold_program as folds
from handjax.train import workdir as workdirs
from handjax.train.features import FoldInputs
from handjax.train.timings import Timings

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax import evaluation as clinical
    from handjax.config import RunSpec


class Primary:
    """The workdir's one writer: process 0 claims, marks and writes; every other process
    computes the same things and writes nothing (each method is a no-op there)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.writes = distributed.is_primary()

    def start(self, config_json: str) -> None:
        if self.writes:
            workdirs.claim(self.workdir, config_json)

    def check_ledger(self, entries: dict, plan: ConvPlan, may_change=()) -> None:
        """Refuse other photos, weights or conv plan (``may_change``: the keys a replan
        may change); only then record ``plan`` (``conv_plan.json``: the plan the run is
        traced with) and mark the run unfinished (until every result is written), so a
        refused rerun leaves a finished run finished."""
        if self.writes:
            workdirs.check_ledger(self.workdir, entries, may_change=may_change,
                                  conv_plan=plan.to_text())
            workdirs.mark_incomplete(self.workdir)

    def say(self, line: str) -> None:
        if self.writes:
            console.say(line)

    def write_outputs(self, run_spec: RunSpec, preds: clinical.Predictions, results: dict,
                      timings: Timings, fingerprints: dict, plan: ConvPlan) -> None:
        """Everything a run hands on: ``results.json`` and ``timing.json``, ``results.md``
        and the PNGs (:mod:`handjax.report`), ``model/`` (the locked model's card, which
        predict, validate and serve load: :func:`handjax.evaluation.model_card.write_model`),
        then the summary on the console."""
        if not self.writes:   # process 0 writes; the others computed the same
            return
        from handjax.evaluation import model_card as card
        from handjax.report import markdown as report
        try:
            write_results(self.workdir, results, timings)
            report.write(self.workdir, preds, results)
        except OSError as e:  # a full disk or a folder made read-only under the run
            raise TrainingError(f"cannot write the results into {self.workdir} ({e.strerror}); "
                                "free space or fix permissions, then rerun the same command "
                                "(it resumes from the last checkpoint)") from e
        try:
            card.write_model(self.workdir, run_spec, preds, results, fingerprints,
                             plan.to_json())
        except OSError as e:
            raise TrainingError(f"cannot write {self.workdir / card.MODEL_DIR} ({e.strerror}); "
                                "free space or fix permissions, then rerun the same command") from e
        console.summary(results, STUDY_METRICS, str(self.workdir / "results.md"))

    def finish(self) -> None:
        if self.writes:
            workdirs.mark_finished(self.workdir)


def preload(module: str = "handjax.evaluation.scoring"):
    """Import ``module`` in a daemon thread, overlapping its import (the evaluation stage:
    sklearn's SVM, pipeline, calibration and metrics, scipy.optimize) with the compile and
    training work that does not need it; the first real ``import`` of it then waits for that
    thread's, or finds it done. (``import handjax.train`` without them measured ~0.6x the
    time with them.) Started after prepare, when the main thread imports little else, so
    the two imports share no half-imported package."""
    import importlib
    import threading

    def target():
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the real import later says what is wrong
            pass

    thread = threading.Thread(target=target, daemon=True, name=f"preload {module}")
    thread.start()
    return thread


# --------------------------------------------------------------------------- the run
def run(run_spec: RunSpec, workdir, restart: bool = False) -> dict:
    """Run one cell of the study (a RunSpec): train K folds, evaluate, write
    ``results.json``, ``results.md`` and plots in ``workdir`` (locked meanwhile; with
    ``restart`` a previous run there is discarded first)."""
    workdir = workdirs.open_workdir(workdir)
    with workdirs.Lock(workdir) if distributed.is_primary() else contextlib.nullcontext():
        if restart and distributed.is_primary():
            workdirs.restart(workdir)
        distributed.barrier("handjax_run_start")
        return _run_locked(run_spec, workdir)


def conv_plan(run_spec: RunSpec, workdir: Path) -> tuple[ConvPlan, float]:
    """The run's conv plan, decided once, before anything is traced, and the seconds spent
    measuring: a started run's recorded plan (``conv_plan.json``; one line when another
    machine measured it), unless ``model.replan``; else this machine's
    (:func:`handjax.models.kernels.tuning.resolve_plan`: the cache's, or one bounded
    tuning step the first time, its bound the run's share (:func:`~handjax.models.kernels.
    tuning.run_budget`))."""
    from handjax.models.kernels import tuning
    started = (workdir / "checkpoints").exists() or (workdir / "results.json").exists()
    recorded = plans.load_plan(workdir) if started and not run_spec.model.replan else None
    if recorded is not None:
        if recorded.measured_elsewhere() and distributed.is_primary():
            console.say(plans.elsewhere_line(recorded, workdir))
        return recorded, 0.0
    budget = tuning.run_budget(run_spec.train.epochs2 * run_spec.repeats)
    return tuning.resolve_plan(run_spec.model, run_spec.data.image_size,
                               run_spec.train.batch_size, budget_s=budget)


def _run_locked(run_spec: RunSpec, workdir: Path) -> dict:
    t0 = time.perf_counter()
    workdirs.enable_compilation_cache()
    primary = Primary(workdir)
    primary.start(run_spec.config_json)
    timings = Timings()
    repeats = f" x {run_spec.repeats} repeats" if run_spec.repeats > 1 else ""
    console.say(f"{run_spec.name}: {run_spec.n_folds} folds{repeats}, {run_spec.model.name} "
                f"at {run_spec.data.image_size} px, loss {run_spec.loss.label} -> {workdir}")
    plan, tune_s = conv_plan(run_spec, workdir)
    timings.set("tune_s", tune_s)
    # What the ledger pins: the weights (ImageNet's fetched here, once), the data the run
    # trains on and the conv plan it runs.
    weights = weights_fingerprint(run_spec.model, run_spec.seed)
    # The fold model and the frozen prefix's program are made while the photos load.
    model_ahead = features.ModelAhead(run_spec, plan)
    cohort = load_cohort(run_spec.data, run_spec.seed, run_spec.n_folds,
                         run_spec.train.inner_val, run_spec.repeats,
                         store=photo_store(workdir, run_spec.train.cache_budget_gb),
                         first=distributed.primary_first)
    entries = {"data": data_fingerprint(cohort.examples), "weights": weights,
               "conv_plan": plan.fingerprint()}
    data_desc = cohort.description()
    primary.check_ledger(entries, plan,
                         may_change=("conv_plan",) if run_spec.model.replan else ())
    model = model_ahead.model()
    # The epoch programs compile in the background while the frozen prefix runs.
    ahead = fitting.Ahead.start(cohort, model[0], run_spec,
                                features.input_specs(run_spec, cohort, model[0], workdir))
    inputs = features.prepare(run_spec, cohort, workdir, plan, model=model,
                              prefix=model_ahead.prefix())
    preload()  # after prepare, whose data splits import sklearn's core themselves
    timings.set("prepare_s", time.perf_counter() - t0 - timings.get("tune_s"))
    console.say(f"{len(cohort.labels)} photos; frozen features "
                f"{inputs.cache_bytes / 2**20:.1f} MiB")
    t = time.perf_counter()
    preds, calib = _train_and_score(cohort, inputs, run_spec, workdir, timings, ahead)
    bound = [k for k, b in enumerate(calib["at_bound"]) if b]
    if bound:
        primary.say(f"calibration: the temperature of fold(s) {', '.join(map(str, bound))} "
                    f"sits at a search bound {calib['bounds']} (the NLL kept falling: a "
                    "limit, not a fit); results.json says so")
    results = _results(run_spec, data_desc, inputs.cache_bytes, workdir, preds, calib)
    timings.set("evaluate_s", time.perf_counter() - t - timings.get("fit_s"))
    timings.set("wall_time_s", time.perf_counter() - t0)
    primary.write_outputs(run_spec, preds, results, timings, entries, plan)
    primary.finish()
    return results


def _train_and_score(cohort: Cohort, inputs: FoldInputs, run_spec: RunSpec, workdir: Path,
                     timings: Timings, ahead: fitting.Ahead | None = None
                     ) -> tuple[clinical.Predictions, dict]:
    """Fit (resuming), then every photo's out-of-fold prediction under every decision rule
    and the calibration record, while the last checkpoint is written."""
    from handjax.evaluation import scoring
    manager = checkpoint.manager(workdir)
    try:
        with timings.timed("fit_s"):
            states, outputs = fitting.fit(cohort, inputs, run_spec, workdir, timings, manager,
                                          ahead)
        if outputs is None:
            emap = folds.eval_fold_map(inputs.fold_model, run_spec.train.fold_map)
            outputs = folds.fold_outputs(states, inputs, emap)
        del states   # the fold models' weights (and Adam's moments): not needed to score
        eval_spec = run_spec.eval
        targets = {"sensitivity": eval_spec.sensitivity, "specificity": eval_spec.specificity}
        return scoring.out_of_fold(outputs, cohort, loss_name=run_spec.loss.name,
                                   svm_spec=run_spec.svm, seed=run_spec.seed, targets=targets)
    finally:
        checkpoint.close(manager)


def _results(run_spec: RunSpec, data_desc: dict, cache_bytes: int, workdir: Path,
             preds: clinical.Predictions, calib: dict) -> dict:
    """``predictions.csv`` (process 0 writes it), then results.json's record with the
    clinical figures recomputed from that file."""
    from handjax import evaluation as clinical
    csv_path = workdir / "predictions.csv"
    if distributed.is_primary():   # one writer; every process then reads the same file
        try:
            clinical.write_predictions(csv_path, preds)
        except OSError as e:
            raise TrainingError(f"cannot write {csv_path} ({e.strerror}); free space or fix "
                                "permissions, then rerun") from e
    distributed.barrier("handjax_predictions_written")
    figures = clinical.clinical_results(csv_path, calib, run_spec.eval, run_spec.seed)
    return clinical.run_results(run_spec, data_desc, cache_bytes, preds, figures)


def write_results(workdir: Path, results: dict, timings: Timings) -> None:
    """``results.json`` (null where a figure is undefined) and ``timing.json``."""
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (workdir / "timing.json").write_text(
        json.dumps(timings.as_dict(), indent=2) + "\n")
