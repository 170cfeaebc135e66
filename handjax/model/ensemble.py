"""A finished run's K fold models, rebuilt for inference (``predict``, Grad-CAM)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flax import struct

from handjax.train import checkpoint, features, fold_program as folds
from handjax import config as configs
from handjax.train import workdir as workdirs
from handjax.errors import RunError, TrainingError
from handjax import console
from handjax.models import classifier
from handjax.models.keras_weights import weights_fingerprint
from handjax.models.kernels import plan as plans
from handjax.models.kernels.plan import ConvPlan

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import RunSpec


class TrainedRun(struct.PyTreeNode):
    """The K fold models of a finished run, ready to apply to raw images.

    ``model`` is a ``Classifier`` that takes RGB images in [0, 255]; ``variables`` are its
    variables stacked along a leading fold axis (frozen prefix + that fold's trained top
    and head). ``run_spec`` is the run's RunSpec; ``results`` its ``results.json``.
    """

    variables: Any
    run_spec: Any = struct.field(pytree_node=False)
    model: classifier.Classifier = struct.field(pytree_node=False)
    results: dict = struct.field(pytree_node=False)


def read_json(path: Path) -> dict:
    """A JSON file of a workdir; a damaged one is one clear line naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); rerun the "
                       "training command into a fresh --workdir") from e


def load_run(workdir, replan: bool = False) -> TrainedRun:
    """Rebuild the fold models of the run in ``workdir`` from its config and last checkpoint,
    their convs by the run's recorded plan (:func:`run_plan`; ``replan``: this machine's)."""
    import ml_collections
    workdir = Path(workdir)
    for need in ("config.json", "results.json"):
        if not (workdir / need).is_file():
            raise RunError(f"{workdir / need} not found: point --workdir at a finished run "
                           "(python launch.py --config ...)")
    workdirs.check_finished(workdir)
    run_spec = configs.parse_run(ml_collections.ConfigDict(read_json(workdir / "config.json")))
    results = read_json(workdir / "results.json")
    check_weights(workdir, run_spec)
    plan = run_plan(workdir, run_spec, replan)
    like, fold_model, variables = _template(run_spec, len(results["data"]["class_names"]),
                                            plan)
    sched = checkpoint.schedule(run_spec.train)
    manager = checkpoint.manager(workdir)
    try:
        done = checkpoint.latest(manager)
        if done != len(sched):
            raise TrainingError(f"{workdir}: training is not finished ({done} of {len(sched)} "
                                "epochs); rerun its launch command to resume")
        states = checkpoint.restore_states(manager, done, like, final=True)
    finally:
        checkpoint.close(manager)
    # The fold models take raw images: the shared frozen prefix runs inside them.
    return TrainedRun(variables=_full_variables(variables, states, run_spec.n_models),
                      run_spec=run_spec, model=fold_model.model.clone(start=None),
                      results=results)


def check_weights(workdir: Path, run_spec: RunSpec) -> None:
    """The frozen layers come from the weight file named in the config: refuse it when its
    bytes differ from the ones the run trained with (``ledger.json``), so a changed or
    replaced file cannot change a prediction silently."""
    ledger = workdir / "ledger.json"
    if not ledger.is_file():
        raise RunError(f"{ledger} not found: this run predates weight checking; retrain it "
                       "(python launch.py --config ... --restart)")
    want = read_json(ledger).get("weights")
    try:
        have = weights_fingerprint(run_spec.model, run_spec.seed)
    except OSError as e:
        raise RunError(f"the run's weight file {run_spec.model.weights} cannot be read "
                       f"({e.strerror}); restore it or retrain") from e
    if have != want:
        raise RunError(f"the weight file {run_spec.model.weights} differs from the one this run "
                       f"was trained with (sha256 {have[:12]}... vs {str(want)[:12]}...); "
                       "restore the original file or retrain")


def run_plan(workdir: Path, run_spec: RunSpec, replan: bool = False) -> ConvPlan | None:
    """The conv plan the run in ``workdir`` ran (``conv_plan.json``, checked against
    ledger.json; one line when another machine measured it); ``replan``: this machine's
    instead (:func:`handjax.models.kernels.tuning.resolve_plan`). A run older than conv
    plans: None (the table's choices)."""
    from handjax.models.kernels import tuning
    if replan:
        return tuning.resolve_plan(run_spec.model, run_spec.data.image_size,
                                   run_spec.train.batch_size)[0]
    plan = plans.load_plan(workdir)
    if plan is None:
        return None
    want = read_json(workdir / "ledger.json").get("conv_plan")
    if want is not None and want != plan.fingerprint():
        raise RunError(f"{workdir / plans.PLAN_FILE} differs from the plan this run was "
                       "trained with (ledger.json); restore it, or pass replan to decide "
                       "one for this machine")
    if plan.measured_elsewhere():
        console.say(plans.elsewhere_line(plan, workdir))
    return plan


def _template(run_spec: RunSpec, num_classes: int, plan: ConvPlan | None = None):
    """The final fold states' structure (to restore into), the fold model they were trained
    from (its convs by ``plan``), and the backbone's full variables."""
    fold_model, variables = features.fold_model(
        run_spec.model, run_spec.data.image_size, run_spec.seed, num_classes,
        loss_name=run_spec.loss.name, plain=run_spec.train.mode == "plain", plan=plan)
    last_phase = 2 if run_spec.train.epochs2 else 1
    return folds.states_for(last_phase, fold_model, run_spec), fold_model, variables


def _full_variables(variables, states, k: int) -> dict:
    """The whole backbone per fold: the shared frozen layers + each fold's trained ones."""
    params = {"backbone": {**classifier.stack(variables["params"], k),
                           **states.params["backbone"]},
              "head": states.params["head"]}
    stats = {"backbone": {**classifier.stack(variables.get("batch_stats", {}), k),
                          **states.batch_stats["backbone"]}}
    return {"params": params, "batch_stats": stats}
