"""One cell of the study, end to end: prepare, fit K folds through both phases with
checkpoints and a per-epoch log, evaluate, write the results.

Data flow (module map: ``handjax/__init__.py``)::

    photos --features.prepare--> views [V, N, H, W, 3] --frozen prefix, once--> cache [V, N, h, w, c]
    phase 1: backbone frozen  -> pooled features [V, N, C]; K heads trained (folds.epoch_fn)
    phase 2: top block(s) + head trained per fold on the cached features
    evaluate: per-fold logits and pooled features -> argmax, min expected cost, SVM
"""
from __future__ import annotations

import time

_T_IMPORT = time.perf_counter()

# What importing this module's dependencies costs (jax, the data pipeline, ...): timing.json's
# imports_s, paid by the first run of a process.
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from handjax import console, distributed, features, folds, workdir as workdirs  # noqa: E402
from handjax.errors import TrainingError  # noqa: E402

IMPORT_S = time.perf_counter() - _T_IMPORT


def __getattr__(name: str):
    """``DECISIONS`` and ``METRIC_KEYS``, re-exported for callers of the old single-module
    trainer, from :mod:`handjax.evaluate` on first use: the evaluation stage (sklearn,
    scipy) is imported in the background while a run trains (:func:`preload`), not before."""
    if name in ("DECISIONS", "METRIC_KEYS"):
        from handjax import evaluate
        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preload(module: str = "handjax.evaluate"):
    """Import ``module`` in a daemon thread, overlapping its import (the evaluation stage:
    sklearn's SVM, pipeline, calibration and metrics, scipy.optimize, matplotlib's users)
    with the prepare and compile work that does not need it; the first real ``import`` of
    it then waits for that thread's, or finds it done. (``import handjax.train`` without
    them measured ~0.6x the time with them.) Started after prepare, when the main thread
    imports little else (orbax), so the two imports share no half-imported package."""
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


def schedule(train_spec) -> list[tuple[int, int]]:
    """(phase, epoch) in training order; the checkpoint step counts finished entries."""
    return ([(1, e) for e in range(train_spec.epochs1)]
            + [(2, e) for e in range(train_spec.epochs2)])


# --------------------------------------------------------------------------- checkpoints
def saved_states(states: folds.FoldState, final: bool) -> folds.FoldState:
    """What a checkpoint holds: the whole state, or after the last epoch (nothing left to
    train) all but the optimiser state: Adam's two moments would make it 3x larger (VGG19's
    top block, 5 folds: 565 MB instead of 189 MB) and cost ~1 s more to write."""
    return states.replace(opt_state=None) if final else states


def restore_states(manager, step: int, like: folds.FoldState, final: bool) -> folds.FoldState:
    """Checkpoint ``step`` restored into the structure of ``like``; a final one without an
    optimiser state keeps ``like``'s (fresh) one."""
    from handjax import checkpoint
    if final and not checkpoint.has_opt_state(manager, step, like):
        light = saved_states(like, final=True)
        return checkpoint.restore(manager, step, light).replace(opt_state=like.opt_state)
    return checkpoint.restore(manager, step, like)


def resume(prep: features.Prepared, spec, manager, sched) -> tuple[folds.FoldState, int]:
    """Fresh states, or those of the latest checkpoint; and how many epochs are done."""
    from handjax import checkpoint
    done = checkpoint.latest(manager)
    if done > len(sched):
        raise TrainingError(f"{manager.directory}: checkpoint is past this config's schedule; "
                            "use a fresh --workdir")
    phase = sched[done - 1][0] if done else 1
    states = folds.states_for(phase, prep, spec)
    if done:
        states = restore_states(manager, done, states, final=done == len(sched))
        console.say(f"resumed after {done} of {len(sched)} epochs")
    return states, done


class Saver:
    """Checkpoints at epoch ends: the last one, and any that ends ``every`` seconds after the
    previous save (saving 5 folds' Adam states every short epoch cost more than the epoch)."""

    def __init__(self, manager, every: float):
        self.manager, self.every, self.last = manager, float(every), time.perf_counter()

    def after_epoch(self, step: int, states, last: bool) -> None:
        from handjax import checkpoint
        if last or time.perf_counter() - self.last >= self.every:
            # The last save finishes in the background (nothing is donated after it) and
            # leaves out the optimiser state (see saved_states).
            checkpoint.save(self.manager, step, saved_states(states, final=last),
                            wait=not last)
            self.last = time.perf_counter()


# --------------------------------------------------------------------------- epochs
@dataclasses.dataclass(frozen=True)
class Plan:
    """What every epoch of a run shares: labels, splits, the device mesh, fold mappings."""

    labels: jax.Array
    train_sets: list             # per fold: the training photos less its inner split
    score_sets: dict             # "test" (and "val": the inner split) -> (idx, mask) [K, M]
    mesh: object
    key: jax.Array
    lax_conv: bool

    @classmethod
    def build(cls, prep: features.Prepared, spec, states) -> "Plan":
        sets = {"test": [te for _, te in prep.folds]}
        if any(len(v) for v in prep.inner):
            sets["val"] = list(prep.inner)
        score_sets = {k: folds.pad_indices(v, max(len(s) for s in v)) for k, v in sets.items()}
        train_sets = [np.asarray(tr)[~np.isin(tr, inner)]
                      for (tr, _), inner in zip(prep.folds, prep.inner)]
        return cls(jnp.asarray(prep.examples.labels), train_sets, score_sets,
                   folds.fold_mesh(spec.n_folds, spec.train.shard_folds),
                   jax.random.fold_in(jax.random.key(spec.seed), 3),
                   folds.trains_lax_conv(states, prep))

    def fold_maps(self, phase: int, prep: features.Prepared, kind: str) -> tuple[str, str]:
        """(training, evaluation) fold mappings of ``phase``."""
        fmap = folds.resolve_fold_map(kind, (phase == 2 or prep.mode1 != "pooled")
                                      and self.lax_conv)
        # Evaluation (forward only) of the phase-2 models may map folds differently.
        return fmap, fmap if phase == 1 else folds.resolve_eval_fold_map(kind, fmap)


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
    from handjax.flops import jaxpr_flops
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
def epoch_scores(states, prep, plan: "Plan", inputs, phase: int, emap: str,
                 outputs=None) -> dict:
    """Per-fold loss and accuracy on each fold's test split (``test_*``: for the curves
    only, never for tuning) and, with an inner split, on it (``val_*``)."""
    out = {}
    for name, (idx, mask) in plan.score_sets.items():
        loss, acc = _split_scores(states, prep, inputs, idx, mask, phase, emap, outputs)
        out[f"{name}_loss"], out[f"{name}_accuracy"] = loss, acc
    return out


def _split_scores(states, prep, inputs, idx, mask, phase: int, emap: str, outputs):
    """Masked per-fold loss and accuracy of the fold models on ``idx`` [K, M] (view 0,
    inference mode); read off ``outputs`` (:func:`evaluate.fold_outputs`) when given."""
    if outputs is not None:
        logits = np.take_along_axis(outputs[0], idx[..., None], axis=1)
    else:
        mode = prep.mode1 if phase == 1 else "tune"
        logits, _ = folds.eval_columns(states, inputs[0], idx, mode=mode, fold_map=emap,
                                       width=folds.eval_width([te for _, te in prep.folds]))
    y = jnp.asarray(prep.examples.labels[idx])
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
def fit(prep: features.Prepared, spec, workdir: Path, timing: dict, manager):
    """Train all folds through both phases, checkpointing (and resuming) at epoch ends.
    The caller owns ``manager`` and closes it, which waits for the last checkpoint.

    Returns ``(states, outputs)``: ``outputs`` is :func:`evaluate.fold_outputs` of the
    final states when the last epoch ran here in phase 2 (its test scores are read off
    them), else ``None``."""
    sched = schedule(spec.train)
    states, done = resume(prep, spec, manager, sched)
    plan = Plan.build(prep, spec, states)
    log = MetricsLog(workdir / "metrics.jsonl", keep=sched[:done])
    saver = Saver(manager, spec.train.checkpoint_secs)
    programs, bar, outputs = {}, None, None
    for g, (phase, epoch) in enumerate(sched[done:], start=done):
        if phase == 2 and states.mode != "tune":
            states = folds.to_phase2(states, prep, spec.train.lr2)
        inputs = prep.inputs1 if phase == 1 else prep.inputs2
        batches = folds.epoch_batches(plan.train_sets, batch_size=spec.train.batch_size,
                                      n_views=inputs.shape[0], seed=spec.seed, phase=phase,
                                      epoch=epoch)
        fmap, emap = plan.fold_maps(phase, prep, spec.train.fold_map)
        key = jax.random.fold_in(jax.random.fold_in(plan.key, phase), epoch)
        args = (states, inputs, plan.labels, batches, key)
        if phase not in programs:
            bar = _phase_bar(bar, phase, spec, batches)
            programs[phase] = compile_epoch(spec.train.mode == "plain", fmap, plan.mesh,
                                            timing, phase, args)
        t = time.perf_counter()
        states, sums = programs[phase](*args)
        check_finite(sums, phase, epoch, batches["idx"].shape[0])
        timing[f"epochs{phase}_s"] = timing.get(f"epochs{phase}_s", 0.0) + time.perf_counter() - t
        last = g + 1 == len(sched)
        if last and phase == 2:
            from handjax import evaluate
            outputs = evaluate.fold_outputs(states, prep, emap)
        scores = epoch_scores(states, prep, plan, inputs, phase, emap, outputs)
        timing["run_s"] = timing.get("run_s", 0.0) + time.perf_counter() - t
        log.write_epoch(phase, epoch, states.step, sums, scores)
        bar.update(spec.n_folds * batches["idx"].shape[0])
        bar.set_postfix(loss=f"{float(np.sum(sums['loss']) / np.sum(sums['count'])):.4f}")
        saver.after_epoch(g + 1, states, last)
    if bar is not None:
        bar.close()
    return states, outputs


def _phase_bar(bar, phase: int, spec, batches):
    """A fresh progress bar for ``phase`` (the previous one closed)."""
    if bar is not None:
        bar.close()
    epochs = spec.train.epochs1 if phase == 1 else spec.train.epochs2
    return tqdm(total=epochs * spec.n_folds * batches["idx"].shape[0], desc=f"phase {phase}",
                unit="step")


# --------------------------------------------------------------------------- the run
def run(spec, workdir, restart: bool = False) -> dict:
    """Run one cell of the study (``spec``: a RunSpec): train K folds, evaluate, write
    ``results.json``, ``results.md`` and plots in ``workdir`` (locked meanwhile; with
    ``restart`` a previous run there is discarded first)."""
    workdir = workdirs.open_workdir(workdir)
    with workdirs.Lock(workdir) if distributed.is_primary() else contextlib.nullcontext():
        if restart and distributed.is_primary():
            workdirs.restart(workdir)
        distributed.barrier("handjax_run_start")
        return _run_locked(spec, workdir)


def ledger_entries(spec, prep: features.Prepared) -> dict:
    """What the workdir's ledger pins: the data and the weights the run trains from."""
    return {"data": workdirs.data_fingerprint(prep.examples),
            "weights": weights_fingerprint(spec.model, spec.seed)}


def weights_fingerprint(model_spec, seed: int) -> str:
    """SHA-256 of the backbone's weight file, or the seed of a random init."""
    from handjax import backbones
    if model_spec.weights is None:
        return f"random init, seed {seed}"
    path = (backbones.fetch_weights(model_spec.name) if model_spec.weights == "imagenet"
            else model_spec.weights)
    return workdirs.file_fingerprint(path)


def tune_convs(spec) -> float:
    """Seconds the conv tuner spent measuring what this machine's cache lacked for the run's
    model (:func:`handjax.models.tuning.tune`; 0.0 when it had all, or off CPU)."""
    from handjax.models import tuning
    return tuning.tune(spec.model, spec.data.image_size, spec.train.batch_size)


def _run_locked(spec, workdir: Path) -> dict:
    t0 = time.perf_counter()
    workdirs.enable_compilation_cache(workdir)
    if distributed.is_primary():   # the others only compute (and call orbax)
        workdirs.claim(workdir, spec.config_json)
    timing: dict = {"imports_s": IMPORT_S}
    timing["tune_s"] = tune_convs(spec)
    prep = features.prepare(spec, workdir)
    preload()  # after prepare, whose data splits import sklearn's core themselves
    if distributed.is_primary():
        workdirs.check_ledger(workdir, ledger_entries(spec, prep))
    timing["prepare_s"] = time.perf_counter() - t0 - timing["tune_s"]
    console.say(f"{spec.name}: {len(prep.examples.labels)} photos, {spec.n_folds} folds, "
                f"{spec.model.name} at {spec.data.image_size} px, loss {spec.loss.label}; "
                f"frozen features {prep.cache_bytes / 2**20:.1f} MiB -> {workdir}")
    t = time.perf_counter()
    decisions, preds, calib = _train_and_evaluate(prep, spec, workdir, timing)
    results = _clinical_results(spec, prep, workdir, decisions, preds, calib)
    timing["evaluate_s"] = time.perf_counter() - t - timing.get("fit_s", 0.0)
    timing["wall_time_s"] = time.perf_counter() - t0
    _write_outputs(workdir, results, timing, preds)
    return results


def _train_and_evaluate(prep, spec, workdir: Path, timing: dict):
    """Fit (resuming), then the out-of-fold decisions while the last checkpoint is written."""
    from handjax import checkpoint, evaluate
    manager = checkpoint.manager(workdir)
    try:
        t = time.perf_counter()
        states, outputs = fit(prep, spec, workdir, timing, manager)
        timing["fit_s"] = time.perf_counter() - t
        if outputs is None:
            emap = folds.eval_fold_map(states, prep, spec.train.fold_map)
            outputs = evaluate.fold_outputs(states, prep, emap)
        targets = {"sensitivity": spec.eval.sensitivity, "specificity": spec.eval.specificity}
        return evaluate.evaluate(outputs, prep, loss_name=spec.loss.name, svm=spec.svm,
                                 seed=spec.seed, targets=targets)
    finally:
        checkpoint.close(manager)


def _clinical_results(spec, prep, workdir: Path, decisions, preds, calib) -> dict:
    """``predictions.csv`` (process 0 writes it), then results.json's record with the
    clinical figures recomputed from that file."""
    from handjax import evaluate, report
    csv_path = workdir / "predictions.csv"
    if distributed.is_primary():   # one writer; every process then reads the same file
        try:
            report.write_predictions(workdir, preds)
        except OSError as e:
            raise TrainingError(f"cannot write {csv_path} ({e.strerror}); free space or fix "
                                "permissions, then rerun") from e
    distributed.barrier("handjax_predictions_written")
    results = results_record(spec, prep, decisions)
    results.update(evaluate.clinical_results(csv_path, preds, calib, spec.eval, spec.seed))
    return json_safe(results)


def _write_outputs(workdir: Path, results: dict, timing: dict, preds) -> None:
    from handjax import evaluate, report
    try:
        write_results(workdir, results, timing)
        report.write_run(workdir, results, preds)
    except OSError as e:  # a full disk or a folder made read-only under the run
        raise TrainingError(f"cannot write the results into {workdir} ({e.strerror}); free "
                            "space or fix permissions, then rerun the same command (it "
                            "resumes from the last checkpoint)") from e
    if distributed.is_primary():
        console.summary(results, evaluate.METRIC_KEYS, str(workdir / "results.md"))


def results_record(spec, prep: features.Prepared, decisions: dict) -> dict:
    """``results.json``: a pure function of config + data (timing goes elsewhere)."""
    return {
        "name": spec.name, "model": spec.model.name, "loss": spec.loss.label,
        "weights": str(spec.model.weights or "none"), "image_size": spec.data.image_size,
        "n_folds": spec.n_folds, "seed": spec.seed, "data": prep.data_desc,
        "decisions": decisions, "cache_bytes": prep.cache_bytes,
    }


def json_safe(value):
    """``value`` with every NaN or infinity replaced by None (``null``: strict JSON, and
    equal to itself when a rerun is compared with a first run)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_results(workdir: Path, results: dict, timing: dict) -> None:
    """``results.json`` (null where a figure is undefined) and ``timing.json``."""
    if not distributed.is_primary():
        return
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (workdir / "timing.json").write_text(
        json.dumps({k: round(v, 3) for k, v in timing.items()}, indent=2) + "\n")
