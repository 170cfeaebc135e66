"""The locked model's definition and its card, written at the end of every run from the
run's pooled out-of-fold predictions alone (no fold model is loaded here: loading is
:mod:`handjax.model.locked`'s). What the locked model is, and why those rows stand in for
it: :mod:`handjax.model.locked`."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handjax.losses import DEFAULT_COST
from handjax.evaluation.calibration import (TEMPERATURE_BOUNDS, apply_temperature, at_bound,
                                            fit_temperature, log_probs)
from handjax.evaluation.operating import fold_thresholds
from handjax.evaluation.scoring import mec_decisions
from handjax.evaluation.tasks import TASKS

if TYPE_CHECKING:   # annotations only
    from handjax.config import RunSpec
    from handjax.evaluation.predictions import Predictions

MODEL_DIR = "model"
CARD = "model.json"
FORMAT = 1            # bump when the card's meaning changes
INTENDED_USE = (
    "Research: triage of hand photos into normal / Heberden's nodes / rheumatoid arthritis, to "
    "study the method. Not a diagnosis and not a medical device; every figure holds only for "
    "photos like the ones it was trained on.")
DESCRIBES = {
    "locked_model": (
        "calibration (T) and operating_points: fitted on the pooled out-of-fold predictions "
        "of the fold models, applied to the mean of the members' calibrated probabilities; a "
        "threshold's 'reached' rate is measured on the rows it was chosen on (optimistic); "
        "its honest test is validate's locked_operating_points on new photos"),
    "fold_models": (
        "cv_figures: each photo scored by the one fold model that never saw it, calibrated "
        "with that fold's cross-fitted T_k, thresholds chosen per fold without its test "
        "photos; a fair estimate of one member and a conservative one of the ensemble "
        "(its Brier score and log loss are at most the members' average)"),
}


# --------------------------------------------------------------------------- the definition
def calibrate_members(member_probs, temperature: float) -> np.ndarray:
    """The locked probabilities [N, C] (float64) of members' raw probabilities [M, N, C]: the
    mean over members of ``softmax(log p_k / T)``, renormalised."""
    q = apply_temperature(log_probs(member_probs), temperature).mean(0)
    return q / q.sum(-1, keepdims=True)


def fit_calibration(preds: Predictions) -> dict:
    """The locked temperature, fitted on the pooled out-of-fold CNN probabilities (all rows,
    every repeat's), with how it was fitted."""
    t = fit_temperature(log_probs(preds.probs["cnn"]), preds.label)
    return {"method": "temperature scaling of each member, then the mean over members",
            "temperature": t, "at_bound": at_bound(t), "bounds": list(TEMPERATURE_BOUNDS),
            "n_rows": len(preds.label),
            "fitted_on": "the pooled out-of-fold predictions (predictions.csv p_cnn_*: each "
                         "photo scored by the fold model that never saw it; every repeat)"}


def fit_operating_points(preds: Predictions, temperature: float, targets: dict) -> dict:
    """``{task: {kind: threshold_choice}}`` on the pooled out-of-fold probabilities
    calibrated with the locked temperature."""
    calibrated = apply_temperature(log_probs(preds.probs["cnn"]), temperature)
    return fold_thresholds(calibrated, preds.label, targets)


def threshold_rules(operating_points: dict) -> dict[str, tuple[str, float]]:
    """``{"<task>_<kind>": (task, threshold)}`` for every chosen threshold (unreachable or
    too-few-to-choose targets give no rule)."""
    return {f"{task}_{kind}": (task, float(c["threshold"]))
            for task, kinds in operating_points.items() for kind, c in kinds.items()
            if c.get("status") == "chosen"}


def decide(probs, cost, rules: dict) -> dict[str, np.ndarray]:
    """Every decision rule on locked probabilities [N, C]: ``argmax`` and ``mec`` (class
    index), and per threshold rule 1 where the task's score reaches it, else 0."""
    probs = np.asarray(probs, np.float64)
    out = {"argmax": probs.argmax(-1).astype(np.int64), "mec": mec_decisions(probs, cost)}
    for name, (task, threshold) in rules.items():
        out[name] = (TASKS[task].score(probs) >= threshold).astype(np.int64)
    return out


# --------------------------------------------------------------------------- the card
def checkpoint_fingerprint(workdir) -> str:
    """SHA-256 over the run's checkpoint files (relative paths and bytes): the members'
    trained weights."""
    root = Path(workdir) / "checkpoints"
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def random_weights(weights) -> bool:
    """Whether a run's ``weights`` mean no pretrained backbone: the spec's None, or the
    ``"none"`` that results.json and the card write for it."""
    return str(weights or "none").lower() in ("none", "random")


# Subject counts under which figures carry a caveat.
FEW_SUBJECTS = 100     # every interval wide; a threshold chosen on them moves between sets
COARSE_SUBJECTS = 30   # the subject-bootstrap 95% CIs too coarse to read at all


def limitations(weights, data: dict) -> dict[str, int | None]:
    """What a run's figures cannot mean, by kind: decided here once for the card, results.md
    and the web page, each of which words them for its own reader. ``weights``: the run's
    (the spec's, or as results.json writes them); ``data``: results.json's data block.
    Keys present: ``"random_weights"`` (no pretrained backbone), ``"synthetic"`` (drawn
    hands, medically meaningless), ``"few_subjects"`` (fewer than :data:`FEW_SUBJECTS`) and
    ``"coarse_subjects"`` (fewer than :data:`COARSE_SUBJECTS`); the subject kinds map to the
    count, the others to None."""
    out: dict[str, int | None] = {}
    if random_weights(weights):
        out["random_weights"] = None
    if data.get("source") == "synthetic":
        out["synthetic"] = None
    n = data.get("n_subjects")
    if isinstance(n, int) and n < FEW_SUBJECTS:
        out["few_subjects"] = n
    if isinstance(n, int) and n < COARSE_SUBJECTS:
        out["coarse_subjects"] = n
    return out


def caveats(run_spec: RunSpec, results: dict, calibration: dict) -> list[str]:
    """What the card's figures cannot mean, in plain words."""
    out = []
    if calibration.get("at_bound"):
        out.append(f"The locked temperature ({calibration['temperature']:.3g}) sits at a "
                   f"search bound {calibration['bounds']}: the NLL kept falling past it, so "
                   "it is a limit, not a fit (e.g. a model that says nothing).")
    limits = limitations(run_spec.model.weights, results.get("data", {}))
    words = {
        "random_weights": "Random weights: no pretrained backbone; the figures only show that "
                          "the pipeline runs.",
        "synthetic": "Synthetic data: procedurally drawn hands whose disease signs are "
                     "medically meaningless; nothing here is about real patients.",
        "few_subjects": f"Few subjects ({limits.get('few_subjects')}): every interval is wide, "
                        "and a threshold chosen on them moves a lot from one photo set to the "
                        "next."}
    out += [words[kind] for kind in limits if kind in words]
    out += [
        ("The threshold rates reached on the rows they were chosen on are optimistic; test "
         "them on new photos (python -m handjax.validate)."),
        ("Fold k's labels reach its temperature T_k through the other folds' models, which "
         "trained on fold k: 'fold k never tunes T_k' holds only with the predictions fixed."),
        ("Photos unlike the training ones (another camera, clinic, skin tone or resolution) "
         "may be scored with confidence and still be wrong.")]
    return out


def model_card(run_spec: RunSpec, preds: Predictions, results: dict, workdir,
               fingerprints: dict, conv_plan: dict | None) -> dict:
    """``model.json``: everything the locked model is and what is known about it.
    ``fingerprints``: the run's ledger entries (data, weights); ``conv_plan``: the plan the
    run was traced with (:meth:`ConvPlan.to_json`)."""
    workdir = Path(workdir)
    e = run_spec.eval
    targets = {"sensitivity": e.sensitivity, "specificity": e.specificity}
    calibration = fit_calibration(preds)
    points = fit_operating_points(preds, calibration["temperature"], targets)
    clinical = results.get("clinical", {})
    return {
        "format": FORMAT,
        "name": run_spec.name,
        "kind": "fold ensemble",
        "final": "the mean of the R x K fold models (config.final=refit is not implemented)",
        "members": {"n": run_spec.n_models, "n_folds": run_spec.n_folds,
                    "repeats": run_spec.repeats, "checkpoint": "../checkpoints",
                    "config": "../config.json"},
        "classes": list(results["data"]["class_names"]),
        "image_size": run_spec.data.image_size,
        "preprocessing": {
            "decode": "handjax.data.decode_image: EXIF orientation applied, converted to RGB, "
                      "aspect kept and padded to a square with the border's mean colour, "
                      f"resized to {run_spec.data.image_size} px, uint8",
            "backbone": f"handjax.models.backbones.preprocess({run_spec.model.name!r}) "
                        "inside the model"},
        "model": run_spec.model.name, "loss": run_spec.loss.name,
        "weights": str(run_spec.model.weights or "none"),
        "calibration": calibration,
        "operating_points": points,
        "decision_rules": {
            "argmax": "the class of highest locked probability",
            "mec": "the class of minimum expected cost under cost_matrix",
            **{name: f"1 when the {TASKS[task].title} score (locked probability) >= "
                     f"{thr:.6g}, else 0" for name, (task, thr) in threshold_rules(points).items()}},
        "cost_matrix": np.asarray(DEFAULT_COST).tolist(),
        "cost_matrix_axes": "rows: true class, columns: decided class (classes' order)",
        "conv_plan": conv_plan,
        "fingerprints": {"data": fingerprints.get("data"), "weights": fingerprints.get("weights"),
                         "checkpoint": checkpoint_fingerprint(workdir)},
        "cv_figures": {
            "clinical": {r: clinical[r] for r in ("cnn_calibrated", "cnn_mec") if r in clinical},
            "operating_points": results.get("operating_points"),
            "fold_temperatures": results.get("calibration", {}).get("temperatures"),
            "bootstrap": results.get("bootstrap"),
            "data": results.get("data")},
        "describes": DESCRIBES,
        "intended_use": INTENDED_USE,
        "caveats": caveats(run_spec, results, calibration),
    }


def write_model(workdir, run_spec: RunSpec, preds: Predictions, results: dict,
                fingerprints: dict, conv_plan: dict | None = None) -> Path:
    """Write ``workdir/model/model.json`` (the card: :func:`model_card`) and return its path.
    ``preds`` are the run's pooled out-of-fold predictions, ``results`` its results.json."""
    from handjax.evaluation.results import json_safe
    folder = Path(workdir) / MODEL_DIR
    folder.mkdir(exist_ok=True)
    card = json_safe(model_card(run_spec, preds, results, workdir, fingerprints, conv_plan))
    tmp = folder / f".{CARD}.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, folder / CARD)   # a reader never sees half a card
    return folder / CARD


