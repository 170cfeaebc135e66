"""The fit loop: every fold through both phases, one compiled epoch program per phase,
checkpoints (and resuming) at epoch ends, and ``metrics.jsonl``. What an epoch computes
(steps, fold mappings, scores) is the fold program's (:mod:`handjax.train.fold_program`);
the run around the loop is :mod:`handjax.train.run`'s."""
from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
from tqdm.auto import tqdm

from handjax import console
from handjax.errors import TrainingError
from handjax.train import checkpoint, distributed, features, fold_program as folds
from handjax.train.features import FoldInputs
from handjax.train.timings import Timings

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import RunSpec
    from handjax.data.cohort import Cohort


# --------------------------------------------------------------------------- resuming
def resume(fold_model: features.FoldModel, run_spec: RunSpec, manager,
           sched: list, fresh: folds.FoldState | None = None) -> tuple[folds.FoldState, int]:
    """Fresh states, or those of the latest checkpoint; and how many epochs are done.
    ``fresh``: the phase-1 states :func:`folds.states_for` gives, when made already."""
    done = checkpoint.latest(manager)
    if done > len(sched):
        raise TrainingError(f"{manager.directory}: checkpoint is past this config's schedule; "
                            "use a fresh --workdir")
    phase = sched[done - 1][0] if done else 1
    states = (fresh if fresh is not None and phase == 1
              else folds.states_for(phase, fold_model, run_spec))
    if done:
        states = checkpoint.restore_states(manager, done, states, final=done == len(sched))
        console.say(f"resumed after {done} of {len(sched)} epochs")
    return states, done


# --------------------------------------------------------------------------- epochs
def compile_epoch(plain: bool, fmap: str, mesh, timings: Timings, phase: int, args):
    """The phase's epoch program, compiled ahead of time (the states donated).

    ``plain``: Keras-style, one jitted step per call (:func:`folds.plain_epoch`)."""
    states, inputs, labels, batches, key = args
    if plain:
        one = jax.tree.map(lambda a: a[0], states)
        b0 = jax.tree.map(lambda a: a[0, 0], batches)
        return folds.plain_epoch(_compile(folds.plain_batch_step, timings, f"phase{phase}",
                                          one, inputs, labels, b0, key))
    if isinstance(inputs, np.memmap):   # a spilled cache: streamed in chunks of steps
        return folds.StreamedEpoch(fmap)
    fn = functools.partial(folds.epoch_fn, fold_map=fmap, mesh=mesh)
    if mesh is not None:   # folds padded, sharded over every process's devices, gathered
        t = time.perf_counter()
        program = distributed.FoldSharded(fn, mesh).compile(*args)
        timings.set(f"compile_phase{phase}_s", time.perf_counter() - t)
        return program
    return _compile(fn, timings, f"phase{phase}", *args)


def _compile(fn, timings: Timings, label: str, *args):
    """Ahead-of-time compile (donating the states), timing compile apart from running."""
    from handjax.train.flops import jaxpr_flops, xla_flops
    t = time.perf_counter()
    traced = jax.jit(fn, donate_argnums=0).trace(*args)
    compiled = traced.lower().compile()
    timings.set(f"compile_{label}_s", time.perf_counter() - t)
    # The epoch's model work (convs and matmuls, a scan's body times its length), and
    # XLA's own count (which leaves out cuDNN's convs on GPU), for MFU figures.
    timings.set(f"flops_{label}", jaxpr_flops(traced.jaxpr))
    timings.set(f"xla_flops_{label}", xla_flops(compiled))
    return compiled


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


# --------------------------------------------------------------------------- compiling ahead
def epoch_args(states, x, plan: folds.EpochPlan, run_spec: RunSpec, phase: int, epoch: int):
    """The arguments of ``phase``'s epoch program for ``epoch``: ``(states, inputs, labels,
    batches, key)``."""
    batches = folds.epoch_batches(plan.train_sets, batch_size=run_spec.train.batch_size,
                                  n_views=x.shape[0], seed=run_spec.seed, phase=phase,
                                  epoch=epoch)
    key = jax.random.fold_in(jax.random.fold_in(plan.key, phase), epoch)
    return states, x, plan.labels, batches, key


def _signature(args) -> tuple:
    """What a compiled program is specific to: the pytree structure and every leaf's shape
    and dtype."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(np.shape(a)), str(a.dtype)) for a in leaves)


class Ahead:
    """The folds' fresh states, both phases' epoch programs and the evaluation programs
    their epochs call, made in a background thread (the programs from shapes alone) while
    the frozen prefix runs.

    A first run on a machine compiles ~4 s of these programs (VGG19, 112 px): here they
    overlap the prefix pass (the compiler on one core, the prefix's matmuls on the others)
    instead of following it, and a warm run reads them from JAX's cache there too. :func:`fit`
    takes the states from :meth:`initial_states` and each phase's program from
    :meth:`program`, which wait for them; the evaluation programs land in JAX's own caches,
    where their first call finds them. A program is the same computation whichever thread
    compiles it, so the results are the same bytes. Only for the usual case: cached mode, the
    cache in RAM, one process (:meth:`start` returns ``None`` otherwise); anything that
    fails here is made again by the fit, which then says what is wrong.
    """

    def __init__(self, plan: folds.EpochPlan, run_spec: RunSpec, specs: tuple):
        self._jobs = {job: threading.Event() for job in (0, 1, 2)}  # 0: the initial states
        self._programs: dict[int, tuple] = {}
        self._states = None
        self._thread = threading.Thread(target=self._compile_all, args=(plan, run_spec, specs),
                                        daemon=True, name="handjax compile ahead")
        self._thread.start()

    @classmethod
    def start(cls, cohort: Cohort, fold_model: features.FoldModel, run_spec: RunSpec,
              specs: tuple | None) -> Ahead | None:
        """Start compiling for a run of ``run_spec`` on ``cohort``; ``specs``: the phases'
        input shapes (:func:`handjax.train.features.input_specs`; ``None``: nothing to do
        ahead)."""
        if specs is None:
            return None
        plan = folds.EpochPlan.build(cohort, fold_model, run_spec)
        return None if plan.mesh is not None else cls(plan, run_spec, specs)

    def _compile_all(self, plan: folds.EpochPlan, run_spec: RunSpec, specs: tuple) -> None:
        train, fresh, states = run_spec.train, None, None
        try:   # the K fresh phase-1 states (a program of their own to compile, too)
            fresh = self._states = folds.states_for(1, plan.fold_model, run_spec)
        except Exception:  # noqa: BLE001 - fit makes them itself and says what is wrong
            pass
        finally:
            self._jobs[0].set()
        for phase, x in zip((1, 2), specs):
            try:
                # Each phase's state shapes from the last: phase 1's those of the states
                # just made (traced, where making them failed), phase 2's through to_phase2.
                if phase == 1:
                    states = (jax.eval_shape(lambda: fresh) if fresh is not None else
                              jax.eval_shape(functools.partial(folds.states_for, 1,
                                                               plan.fold_model, run_spec)))
                else:
                    states = jax.eval_shape(lambda s: folds.to_phase2(s, plan.fold_model,
                                                                      train.lr2), states)
                epochs = train.epochs1 if phase == 1 else train.epochs2
                if epochs == 0:
                    continue
                fmap, emap = plan.fold_maps(phase, train.fold_map, epochs)
                args = epoch_args(states, x, plan, run_spec, phase, 0)
                timings = Timings(imports_s=None)
                fn = functools.partial(folds.epoch_fn, fold_map=fmap, mesh=None)
                program = _compile(fn, timings, f"phase{phase}", *args)
                self._programs[phase] = (program, _signature(args), timings)
                _warm_evaluation(plan, states, x, phase, emap, epochs)
            except Exception:  # noqa: BLE001 - fit compiles it itself and says what is wrong
                pass
            finally:
                self._jobs[phase].set()

    def initial_states(self) -> folds.FoldState | None:
        """The fresh phase-1 states (:func:`folds.states_for`), waiting for them; ``None``
        where making them failed (the fit makes them itself)."""
        self._jobs[0].wait()
        states, self._states = self._states, None
        return states

    def program(self, phase: int, args, timings: Timings):
        """``phase``'s compiled epoch program for ``args`` (waiting for it; the seconds
        waited are the run's ``compile_phase{phase}_s``, the compile's own seconds
        ``ahead_phase{phase}_s``), or ``None`` where none was compiled for them."""
        t = time.perf_counter()
        self._jobs[phase].wait()
        got = self._programs.pop(phase, None)
        if got is None or got[1] != _signature(args):
            return None
        program, _, own = got
        timings.set(f"compile_phase{phase}_s", time.perf_counter() - t)
        timings.set(f"ahead_phase{phase}_s", own.get(f"compile_phase{phase}_s"))
        for k in (f"flops_phase{phase}", f"xla_flops_phase{phase}"):
            timings.set(k, own.get(k))
        return program


def _warm_evaluation(plan: folds.EpochPlan, states, x, phase: int, emap: str,
                     epochs: int) -> None:
    """Compile the forward programs ``phase``'s epochs call (:func:`folds.epoch_scores` on
    each score set, and after phase 2 :func:`folds.fold_outputs` on every photo) for the
    shapes of ``states`` and ``x``: JAX keeps them, and their first call finds them."""
    mode = plan.fold_model.mode1 if phase == 1 else "tune"
    widths = set()
    if phase == 1 or epochs > 1:   # phase 2's last epoch reads its scores off the outputs
        widths |= {idx.shape[1] for idx, _ in plan.score_sets.values()}
    if phase == 2:
        widths.add(x.shape[1])
    rows = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    for m in sorted(widths):
        cols = jax.ShapeDtypeStruct((len(plan.train_sets), folds.column_width(m)), np.int32)
        folds.eval_program(mode, emap).trace(states, rows, cols).lower().compile()


# --------------------------------------------------------------------------- the fit loop
def fit(cohort: Cohort, inputs: FoldInputs, run_spec: RunSpec, workdir: Path, timings: Timings,
        manager, ahead: Ahead | None = None) -> tuple[folds.FoldState, tuple | None]:
    """Train all folds through both phases, checkpointing (and resuming) at epoch ends.
    The caller owns ``manager`` and closes it, which waits for the last checkpoint.
    ``ahead``: the epoch programs being compiled meanwhile (:class:`Ahead`), else each is
    compiled when its phase starts.

    Returns ``(states, outputs)``: ``outputs`` is :func:`folds.fold_outputs` of the final
    states when the last epoch ran here in phase 2 (its test scores are read off them),
    else ``None``."""
    train_spec = run_spec.train
    sched = checkpoint.schedule(train_spec)
    states, done = resume(inputs.fold_model, run_spec, manager, sched,
                          ahead.initial_states() if ahead else None)
    plan = folds.EpochPlan.build(cohort, inputs.fold_model, run_spec)
    log = MetricsLog(workdir / "metrics.jsonl", keep=sched[:done])
    saver = checkpoint.Saver(manager, train_spec.checkpoint_secs)
    programs, bar, outputs = {}, None, None
    for g, (phase, epoch) in enumerate(sched[done:], start=done):
        console.check_interrupt()
        if phase == 2 and states.mode != "tune":
            states = folds.to_phase2(states, inputs.fold_model, train_spec.lr2)
        x = inputs.inputs1 if phase == 1 else inputs.inputs2
        args = epoch_args(states, x, plan, run_spec, phase, epoch)
        batches = args[3]
        fmap, emap = plan.fold_maps(phase, train_spec.fold_map,
                                    train_spec.epochs1 if phase == 1 else train_spec.epochs2)
        if phase not in programs:
            bar = _phase_bar(bar, phase, run_spec, batches)
            programs[phase] = ((ahead and ahead.program(phase, args, timings))
                               or compile_epoch(train_spec.mode == "plain", fmap, plan.mesh,
                                                timings, phase, args))
        t = time.perf_counter()
        states, sums = programs[phase](*args)
        check_finite(sums, phase, epoch, batches["idx"].shape[0])
        timings.add(f"epochs{phase}_s", time.perf_counter() - t)
        last = g + 1 == len(sched)
        if last and phase == 2:
            outputs = folds.fold_outputs(states, inputs, emap)
        scores = folds.epoch_scores(states, plan, x, phase, emap, outputs)
        timings.add("run_s", time.perf_counter() - t)
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
