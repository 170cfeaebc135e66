"""A finished run's K fold models, rebuilt for inference (``predict``, Grad-CAM)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flax import struct

from handjax import config as configs
from handjax import features, folds
from handjax import workdir as workdirs
from handjax.errors import RunError, TrainingError
from handjax.models import classifier


class TrainedRun(struct.PyTreeNode):
    """The K fold models of a finished run, ready to apply to raw images.

    ``model`` is a ``Classifier`` that takes RGB images in [0, 255]; ``variables`` are its
    variables stacked along a leading fold axis (frozen prefix + that fold's trained top
    and head). ``spec`` is the run's RunSpec; ``results`` its ``results.json``.
    """

    variables: Any
    spec: Any = struct.field(pytree_node=False)
    model: classifier.Classifier = struct.field(pytree_node=False)
    results: dict = struct.field(pytree_node=False)


def read_json(path: Path) -> dict:
    """A JSON file of a workdir; a damaged one is one clear line naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); rerun the "
                       "training command into a fresh --workdir") from e


def load_run(workdir) -> TrainedRun:
    """Rebuild the fold models of the run in ``workdir`` from its config and last checkpoint."""
    import ml_collections
    from handjax import checkpoint, train
    workdir = Path(workdir)
    for need in ("config.json", "results.json"):
        if not (workdir / need).is_file():
            raise RunError(f"{workdir / need} not found: point --workdir at a finished run "
                           "(python launch.py --config ...)")
    workdirs.check_finished(workdir)
    spec = configs.parse_run(ml_collections.ConfigDict(read_json(workdir / "config.json")))
    results = read_json(workdir / "results.json")
    check_weights(workdir, spec)
    like, stub, variables = _template(spec, len(results["data"]["class_names"]))
    sched = train.schedule(spec.train)
    manager = checkpoint.manager(workdir)
    try:
        done = checkpoint.latest(manager)
        if done != len(sched):
            raise TrainingError(f"{workdir}: training is not finished ({done} of {len(sched)} "
                                "epochs); rerun its launch command to resume")
        states = train.restore_states(manager, done, like, final=True)
    finally:
        checkpoint.close(manager)
    return TrainedRun(variables=_full_variables(variables, states, spec.n_folds), spec=spec,
                      model=stub.model, results=results)


def check_weights(workdir: Path, spec) -> None:
    """The frozen layers come from the weight file named in the config: refuse it when its
    bytes differ from the ones the run trained with (``ledger.json``), so a changed or
    replaced file cannot change a prediction silently."""
    from handjax import train
    ledger = workdir / "ledger.json"
    if not ledger.is_file():
        raise RunError(f"{ledger} not found: this run predates weight checking; retrain it "
                       "(python launch.py --config ... --restart)")
    want = read_json(ledger).get("weights")
    try:
        have = train.weights_fingerprint(spec.model, spec.seed)
    except OSError as e:
        raise RunError(f"the run's weight file {spec.model.weights} cannot be read "
                       f"({e.strerror}); restore it or retrain") from e
    if have != want:
        raise RunError(f"the weight file {spec.model.weights} differs from the one this run "
                       f"was trained with (sha256 {have[:12]}... vs {str(want)[:12]}...); "
                       "restore the original file or retrain")


def _template(spec, num_classes: int):
    """The final fold states' structure (to restore into), a stub Prepared whose model takes
    raw images, and the backbone's full variables."""
    backbone, variables, top, common = classifier.model_parts(
        spec.model, spec.data.image_size, spec.seed, num_classes, loss_name=spec.loss.name)
    params, stats = variables["params"], variables.get("batch_stats", {})
    plain = spec.train.mode == "plain"
    if not plain:
        params, stats = classifier.subtree(params, top), classifier.subtree(stats, top)
    dim = classifier.feature_dim(backbone, variables, spec.data.image_size, common["dtype"])
    stub = features.Prepared(None, None, None, classifier.Classifier(start=None, **common),
                             frozenset(top), params, stats, None,
                             "frozen" if plain else "pooled", None, 0, dim)
    last_phase = 2 if spec.train.epochs2 else 1
    return folds.states_for(last_phase, stub, spec), stub, variables


def _full_variables(variables, states, k: int) -> dict:
    """The whole backbone per fold: the shared frozen layers + each fold's trained ones."""
    params = {"backbone": {**classifier.stack(variables["params"], k),
                           **states.params["backbone"]},
              "head": states.params["head"]}
    stats = {"backbone": {**classifier.stack(variables.get("batch_stats", {}), k),
                          **states.batch_stats["backbone"]}}
    return {"params": params, "batch_stats": stats}
