"""One cell of the study, end to end: prepare, fit K folds through both phases with
checkpoints and a per-epoch log, evaluate, write the results.

Data flow (module map: ``handjax/__init__.py``)::

    photos --data.load_cohort--> views [V, N, H, W, 3] --features.prepare: frozen prefix,
        once--> cache [V, N, h, w, c]
    phase 1: backbone frozen  -> pooled features [V, N, C]; K heads trained (folds.epoch_fn)
    phase 2: top block(s) + head trained per fold on the cached features
    evaluate: per-fold logits and pooled features -> argmax, min expected cost, SVM
"""
from __future__ import annotations

# The evaluation stage (evaluate, clinical: sklearn's SVM, calibration and metrics,
# scipy.optimize) is not imported here: :func:`preload` imports it in the background while
# the folds train.
import contextlib
import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from handjax.train import checkpoint, distributed, features, fold_program as folds
from handjax import console
from handjax.train import workdir as workdirs
from handjax.data.cohort import Cohort, load_cohort
from handjax.errors import TrainingError
from handjax.train.features import FoldInputs
from handjax.metrics import STUDY_METRICS


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; elsewhere None)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


# timing.json's imports_s: the process's age once this module and its imports are loaded.
# For ``launch.py`` that is Python's start, every import and the flags; in a longer-lived
# process (bench, tests) it includes whatever ran before.
IMPORT_S = process_age()

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax import evaluation as clinical
    from handjax.config import RunSpec


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


# --------------------------------------------------------------------------- resuming
def resume(fold_model: features.FoldModel, run_spec: RunSpec, manager,
           sched: list) -> tuple[folds.FoldState, int]:
    """Fresh states, or those of the latest checkpoint; and how many epochs are done."""
    done = checkpoint.latest(manager)
    if done > len(sched):
        raise TrainingError(f"{manager.directory}: checkpoint is past this config's schedule; "
                            "use a fresh --workdir")
    phase = sched[done - 1][0] if done else 1
    states = folds.states_for(phase, fold_model, run_spec)
    if done:
        states = checkpoint.restore_states(manager, done, states, final=done == len(sched))
        console.say(f"resumed after {done} of {len(sched)} epochs")
    return states, done


# --------------------------------------------------------------------------- epochs
@dataclasses.dataclass(frozen=True)
class Plan:
    """What every epoch of a run shares: labels, splits, the device mesh, fold mappings."""

    labels: jax.Array
    train_sets: list             # per fold: the training photos less its inner split
    test_sets: list              # per fold: its test photos
    score_sets: dict             # "test" (and "val": the inner split) -> (idx, mask) [K, M]
    mesh: object
    key: jax.Array
    fold_model: features.FoldModel

    @classmethod
    def build(cls, cohort: Cohort, fold_model: features.FoldModel, run_spec: RunSpec) -> "Plan":
        sets = {"test": cohort.test_sets}
        if any(len(v) for v in cohort.inner):
            sets["val"] = list(cohort.inner)
        score_sets = {k: folds.pad_indices(v, max(len(s) for s in v)) for k, v in sets.items()}
        return cls(jnp.asarray(cohort.labels), cohort.train_sets, cohort.test_sets, score_sets,
                   distributed.fold_mesh(run_spec.n_models, run_spec.train.shard_folds),
                   jax.random.fold_in(jax.random.key(run_spec.seed), 3), fold_model)

    def fold_maps(self, phase: int, kind: str) -> tuple[str, str]:
        """(training, evaluation) fold mappings of ``phase``."""
        fm = self.fold_model
        trained = (fm.trained_algorithms if phase == 2 or fm.mode1 != "pooled"
                   else frozenset())   # phase 1 on pooled features trains the heads only
        fmap = folds.resolve_fold_map(kind, trained)
        # Evaluation (forward only) of the phase-2 models may map folds differently.
        return fmap, fmap if phase == 1 else folds.resolve_eval_fold_map(kind, trained)


def compile_epoch(plain: bool, fmap: str, mesh, timing: dict, phase: int, args):
    """The phase's epoch program, compiled ahead of time (the states donated).

    ``plain``: Keras-style, one jitted step per call (:func:`folds.plain_epoch`)."""
    states, inputs, labels, batches, key = args
    if plain:
        one = jax.tree.map(lambda a: a[0], states)
        b0 = jax.tree.map(lambda a: a[0, 0], batches)
        return folds.plain_epoch(_compile(folds.plain_batch_step, timing, f"phase{phase}",
                                          one, inputs, labels, b0, key))
    if isinstance(inputs, np.memmap):   # a spilled cache: streamed in chunks of steps
        return folds.StreamedEpoch(fmap, min(folds.STREAM_CHUNK_BYTES, inputs.nbytes / 8))
    fn = functools.partial(folds.epoch_fn, fold_map=fmap, mesh=mesh)
    if mesh is not None:   # folds padded, sharded over every process's devices, gathered
        t = time.perf_counter()
        program = distributed.FoldSharded(fn, mesh).compile(*args)
        timing[f"compile_phase{phase}_s"] = time.perf_counter() - t
        return program
    return _compile(fn, timing, f"phase{phase}", *args)


def _compile(fn, timing: dict, label: str, *args):
    """Ahead-of-time compile (donating the states), timing compile apart from running."""
    from handjax.train.flops import jaxpr_flops
    t = time.perf_counter()
    traced = jax.jit(fn, donate_argnums=0).trace(*args)
    compiled = traced.lower().compile()
    timing[f"compile_{label}_s"] = time.perf_counter() - t
    # The epoch's model work (convs and matmuls, a scan's body times its length), and
    # XLA's own count (which leaves out cuDNN's convs on GPU), for MFU figures.
    timing[f"flops_{label}"] = jaxpr_flops(traced.jaxpr)
    timing[f"xla_flops_{label}"] = xla_flops(compiled)
    return compiled


def xla_flops(compiled) -> float:
    """FLOPs of a compiled program by XLA's cost analysis (0.0 where it gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without a cost model
        return 0.0
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return float((cost or {}).get("flops", 0.0))


def check_finite(sums, phase: int, epoch: int, steps_per_epoch: int) -> None:
    """A non-finite loss stops the run with the fold, phase, epoch and step."""
    finite = np.asarray(sums["finite"])           # [steps, K]
    if finite.all():
        return
    step, fold = map(int, np.argwhere(~finite)[0])
    raise TrainingError(
        f"non-finite loss in fold {fold}, phase {phase}, epoch {epoch}, step "
        f"{epoch * steps_per_epoch + step}: lower the learning rate (config.train.lr{phase}) "
        "or check the input data")


# --------------------------------------------------------------------------- per-epoch scores
def epoch_scores(states: folds.FoldState, plan: Plan, inputs, phase: int, emap: str,
                 outputs=None) -> dict:
    """Per-fold loss and accuracy on each fold's test split (``test_*``: for the curves
    only, never for tuning) and, with an inner split, on it (``val_*``)."""
    out = {}
    for name, (idx, mask) in plan.score_sets.items():
        loss, acc = _split_scores(states, plan, inputs, idx, mask, phase, emap, outputs)
        out[f"{name}_loss"], out[f"{name}_accuracy"] = loss, acc
    return out


def _split_scores(states, plan: Plan, inputs, idx, mask, phase: int, emap: str, outputs):
    """Masked per-fold loss and accuracy of the fold models on ``idx`` [K, M] (view 0,
    inference mode); read off ``outputs`` (:func:`folds.fold_outputs`) when given."""
    if outputs is not None:
        logits = np.take_along_axis(outputs[0], idx[..., None], axis=1)
    else:
        mode = plan.fold_model.mode1 if phase == 1 else "tune"
        logits, _ = folds.eval_columns(states, inputs[0], idx, mode=mode, fold_map=emap,
                                       width=folds.eval_width(plan.test_sets))
    y = plan.labels[jnp.asarray(idx)]
    loss, acc = _masked_loss_and_accuracy(states.loss_fn, states.decide, jnp.asarray(logits),
                                          y, jnp.asarray(mask, jnp.float32))
    return np.asarray(loss), np.asarray(acc)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _masked_loss_and_accuracy(loss_fn, decide, logits, y, mask):
    """Per-fold masked mean loss and accuracy of logits [K, M, C] against labels [K, M]."""
    n = jnp.maximum(mask.sum(1), 1.0)
    loss = jax.vmap(functools.partial(folds.masked_loss, loss_fn))(logits, y, mask)
    pred = decide(logits) if decide is not None else jnp.argmax(logits, -1)
    correct = (pred == y).astype(jnp.float32)
    return loss, (correct * mask).sum(1) / n


class MetricsLog:
    """``metrics.jsonl``: one line per fold, phase and epoch; on resume, keeps what is done."""

    def __init__(self, path: Path, keep):
        self.path = path
        self.writes = distributed.is_primary()
        if not self.writes:
            return
        keep = set(keep)
        lines = []
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if (rec["phase"], rec["epoch"]) in keep:
                    lines.append(line)
        path.write_text("".join(l + "\n" for l in lines))

    def write_epoch(self, phase, epoch, steps, sums, scores):
        """One line per fold: training loss/accuracy, then ``scores`` (``test_*`` on the
        fold's test split, for the curves only; ``val_*`` on its inner split)."""
        if not self.writes:
            return
        count = np.maximum(np.asarray(sums["count"]).sum(0), 1.0)
        loss = np.asarray(sums["loss"]).sum(0) / count
        acc = np.asarray(sums["correct"]).sum(0) / count
        with self.path.open("a") as f:
            for k in range(len(loss)):
                rec = {"fold": k, "phase": phase, "epoch": epoch, "step": int(steps[k]),
                       "loss": float(loss[k]), "accuracy": float(acc[k])}
                rec.update({name: float(v[k]) for name, v in scores.items()})
                f.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------------------- the fit loop
def fit(cohort: Cohort, inputs: FoldInputs, run_spec: RunSpec, workdir: Path, timing: dict,
        manager) -> tuple[folds.FoldState, tuple | None]:
    """Train all folds through both phases, checkpointing (and resuming) at epoch ends.
    The caller owns ``manager`` and closes it, which waits for the last checkpoint.

    Returns ``(states, outputs)``: ``outputs`` is :func:`folds.fold_outputs` of the final
    states when the last epoch ran here in phase 2 (its test scores are read off them),
    else ``None``."""
    train_spec = run_spec.train
    sched = checkpoint.schedule(train_spec)
    states, done = resume(inputs.fold_model, run_spec, manager, sched)
    plan = Plan.build(cohort, inputs.fold_model, run_spec)
    log = MetricsLog(workdir / "metrics.jsonl", keep=sched[:done])
    saver = checkpoint.Saver(manager, train_spec.checkpoint_secs)
    programs, bar, outputs = {}, None, None
    for g, (phase, epoch) in enumerate(sched[done:], start=done):
        if phase == 2 and states.mode != "tune":
            states = folds.to_phase2(states, inputs.fold_model, train_spec.lr2)
        x = inputs.inputs1 if phase == 1 else inputs.inputs2
        batches = folds.epoch_batches(plan.train_sets, batch_size=train_spec.batch_size,
                                      n_views=x.shape[0], seed=run_spec.seed, phase=phase,
                                      epoch=epoch)
        fmap, emap = plan.fold_maps(phase, train_spec.fold_map)
        key = jax.random.fold_in(jax.random.fold_in(plan.key, phase), epoch)
        args = (states, x, plan.labels, batches, key)
        if phase not in programs:
            bar = _phase_bar(bar, phase, run_spec, batches)
            programs[phase] = compile_epoch(train_spec.mode == "plain", fmap, plan.mesh,
                                            timing, phase, args)
        t = time.perf_counter()
        states, sums = programs[phase](*args)
        check_finite(sums, phase, epoch, batches["idx"].shape[0])
        timing[f"epochs{phase}_s"] = timing.get(f"epochs{phase}_s", 0.0) + time.perf_counter() - t
        last = g + 1 == len(sched)
        if last and phase == 2:
            outputs = folds.fold_outputs(states, inputs, plan.test_sets, emap)
        scores = epoch_scores(states, plan, x, phase, emap, outputs)
        timing["run_s"] = timing.get("run_s", 0.0) + time.perf_counter() - t
        log.write_epoch(phase, epoch, states.step, sums, scores)
        bar.update(run_spec.n_models * batches["idx"].shape[0])
        bar.set_postfix(loss=f"{float(np.sum(sums['loss']) / np.sum(sums['count'])):.4f}")
        saver.after_epoch(g + 1, states, last)
    if bar is not None:
        bar.close()
    return states, outputs


def _phase_bar(bar, phase: int, run_spec: RunSpec, batches: dict):
    """A fresh progress bar for ``phase`` (the previous one closed)."""
    if bar is not None:
        bar.close()
    epochs = run_spec.train.epochs1 if phase == 1 else run_spec.train.epochs2
    return tqdm(total=epochs * run_spec.n_models * batches["idx"].shape[0],
                desc=f"phase {phase}", unit="step")


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


def ledger_entries(run_spec: RunSpec, cohort: Cohort) -> dict:
    """What the workdir's ledger pins: the data and the weights the run trains from."""
    return {"data": workdirs.data_fingerprint(cohort.examples),
            "weights": workdirs.weights_fingerprint(run_spec.model, run_spec.seed)}


def tune_convs(run_spec: RunSpec) -> float:
    """Seconds the conv tuner spent measuring what this machine's cache lacked for the run's
    model (:func:`handjax.models.kernels.tuning.tune`; 0.0 when it had all, or off CPU)."""
    from handjax.models.kernels import tuning
    return tuning.tune(run_spec.model, run_spec.data.image_size, run_spec.train.batch_size)


def _run_locked(run_spec: RunSpec, workdir: Path) -> dict:
    t0 = time.perf_counter()
    workdirs.enable_compilation_cache(workdir)
    if distributed.is_primary():   # the others only compute (and call orbax)
        workdirs.claim(workdir, run_spec.config_json)
        workdirs.mark_incomplete(workdir)     # until every result is written
    timing: dict = {} if IMPORT_S is None else {"imports_s": IMPORT_S}
    repeats = f" x {run_spec.repeats} repeats" if run_spec.repeats > 1 else ""
    console.say(f"{run_spec.name}: {run_spec.n_folds} folds{repeats}, {run_spec.model.name} "
                f"at {run_spec.data.image_size} px, loss {run_spec.loss.label} -> {workdir}")
    timing["tune_s"] = tune_convs(run_spec)
    cohort = load_cohort(run_spec.data, run_spec.seed, run_spec.n_folds,
                         run_spec.train.inner_val, run_spec.repeats)
    if distributed.is_primary():
        workdirs.check_ledger(workdir, ledger_entries(run_spec, cohort))
    inputs = features.prepare(run_spec, cohort, workdir)
    preload()  # after prepare, whose data splits import sklearn's core themselves
    timing["prepare_s"] = time.perf_counter() - t0 - timing["tune_s"]
    console.say(f"{len(cohort.labels)} photos; frozen features "
                f"{inputs.cache_bytes / 2**20:.1f} MiB")
    t = time.perf_counter()
    decisions, preds, calib = _train_and_evaluate(cohort, inputs, run_spec, workdir, timing)
    bound = [k for k, b in enumerate(calib["at_bound"]) if b]
    if bound and distributed.is_primary():
        console.say(f"calibration: the temperature of fold(s) {', '.join(map(str, bound))} "
                    f"sits at a search bound {calib['bounds']} (the NLL kept falling: a "
                    "limit, not a fit); results.json says so")
    results = _results(run_spec, cohort, inputs, workdir, decisions, preds, calib)
    timing["evaluate_s"] = time.perf_counter() - t - timing.get("fit_s", 0.0)
    timing["wall_time_s"] = time.perf_counter() - t0
    _write_outputs(workdir, preds, results, timing)
    if distributed.is_primary():
        _write_model(workdir, run_spec, preds, results)
        workdirs.mark_finished(workdir)
    return results


def _train_and_evaluate(cohort: Cohort, inputs: FoldInputs, run_spec: RunSpec, workdir: Path,
                        timing: dict) -> tuple[dict, clinical.Predictions, dict]:
    """Fit (resuming), then the out-of-fold decisions while the last checkpoint is written."""
    from handjax.evaluation import scoring as evaluate
    manager = checkpoint.manager(workdir)
    try:
        t = time.perf_counter()
        states, outputs = fit(cohort, inputs, run_spec, workdir, timing, manager)
        timing["fit_s"] = time.perf_counter() - t
        if outputs is None:
            emap = folds.eval_fold_map(inputs.fold_model, run_spec.train.fold_map)
            outputs = folds.fold_outputs(states, inputs, cohort.test_sets, emap)
        eval_spec = run_spec.eval
        targets = {"sensitivity": eval_spec.sensitivity, "specificity": eval_spec.specificity}
        return evaluate.evaluate(outputs, cohort, loss_name=run_spec.loss.name,
                                 svm_spec=run_spec.svm, seed=run_spec.seed, targets=targets)
    finally:
        checkpoint.close(manager)


def _results(run_spec: RunSpec, cohort: Cohort, inputs: FoldInputs, workdir: Path, decisions: dict,
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
    return clinical.run_results(run_spec, cohort.description(), inputs.cache_bytes,
                                decisions, figures)


def _write_outputs(workdir: Path, preds: clinical.Predictions, results: dict,
                   timing: dict) -> None:
    from handjax.report import markdown as report
    try:
        write_results(workdir, results, timing)
        report.write(workdir, preds, results)
    except OSError as e:  # a full disk or a folder made read-only under the run
        raise TrainingError(f"cannot write the results into {workdir} ({e.strerror}); free "
                            "space or fix permissions, then rerun the same command (it "
                            "resumes from the last checkpoint)") from e
    if distributed.is_primary():
        console.summary(results, STUDY_METRICS, str(workdir / "results.md"))


def _write_model(workdir: Path, run_spec: RunSpec, preds: clinical.Predictions,
                 results: dict) -> None:
    """``model/``: the locked model predict, validate and serve load
    (:func:`handjax.model.locked.write_model`)."""
    from handjax.model import locked
    try:
        locked.write_model(workdir, run_spec, preds, results)
    except OSError as e:
        raise TrainingError(f"cannot write {workdir / locked.MODEL_DIR} ({e.strerror}); free "
                            "space or fix permissions, then rerun the same command") from e


def write_results(workdir: Path, results: dict, timing: dict) -> None:
    """``results.json`` (null where a figure is undefined) and ``timing.json``."""
    if not distributed.is_primary():
        return
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (workdir / "timing.json").write_text(
        json.dumps({k: round(v, 3) for k, v in timing.items()}, indent=2) + "\n")
