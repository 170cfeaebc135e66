"""The locked model: the one model a run hands on, and the one every number about it is about.

Every run writes ``RUN/model/model.json`` (:func:`write_model`), and ``predict``, ``validate``
and the server load it (:func:`load_model`) and decide with it alone:

* **members**: the run's R x K fold models (its final checkpoint, ``RUN/checkpoints``, pinned
  by a SHA-256 of its files), each applied to the raw photo;
* **calibration**: one temperature T, fitted (NLL minimum) on the run's pooled out-of-fold
  CNN probabilities (``predictions.csv``'s ``p_cnn_*``: every photo scored by the member that
  never saw it). The locked probability of a photo is the mean over members of
  ``softmax(log p_k / T)`` (:func:`calibrate_members`);
* **operating thresholds**: per triage task and target (``eval.sensitivity``,
  ``eval.specificity``), one threshold chosen (:func:`handjax.evaluation.threshold_choice`)
  on the same pooled out-of-fold rows, calibrated with T;
* **decision rules** (:func:`decide`): ``argmax``, ``mec`` (minimum expected cost under the
  card's cost matrix) and one ``<task>_<kind>`` rule per chosen threshold (1 = the task's
  positive call, e.g. "RA", 0 = not).

Why the pooled out-of-fold rows stand in for the ensemble: each row is one member's
prediction on a photo it never saw, as a new photo will be. The mean of calibrated members
keeps their mean predicted risk exactly (the mean is linear), and its Brier score and log loss
are at most the members' average (both are convex in the probabilities), so figures computed
on those rows are fair for the ensemble's calibration-in-the-large and conservative for its
accuracy. Averaging pulls probabilities towards the middle, so the ensemble may be less
extreme than one member (calibration slope above 1 on new photos): ``validate`` measures it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from handjax import losses
from handjax.data.decode import decode_image
from handjax.errors import RunError
from handjax.evaluation.calibration import (TEMPERATURE_BOUNDS, apply_temperature, at_bound,
                                            fit_temperature, log_probs)
from handjax.evaluation.operating import fold_thresholds
from handjax.evaluation.scoring import mec_decisions, probabilities
from handjax.evaluation.tasks import TASKS
from handjax.model.ensemble import TrainedRun, load_run, read_json
from handjax.train import workdir as workdirs

if TYPE_CHECKING:   # annotations only
    from handjax.config import RunSpec
    from handjax.evaluation.predictions import Predictions

MODEL_DIR = "model"
CARD = "model.json"
FORMAT = 1            # bump when the card's meaning changes
BATCH_SIZE = 8        # photos per forward pass: padded, so one compilation serves every call
CONV_PLAN = "conv_plan.json"   # a run's conv plan, where the run wrote one
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


def caveats(run_spec: RunSpec, results: dict, calibration: dict) -> list[str]:
    """What the card's figures cannot mean, in plain words."""
    data = results.get("data", {})
    out = []
    if calibration.get("at_bound"):
        out.append(f"The locked temperature ({calibration['temperature']:.3g}) sits at a "
                   f"search bound {calibration['bounds']}: the NLL kept falling past it, so "
                   "it is a limit, not a fit (e.g. a model that says nothing).")
    if not run_spec.model.weights:
        out.append("Random weights: no pretrained backbone; the figures only show that the "
                   "pipeline runs.")
    if data.get("source") == "synthetic":
        out.append("Synthetic data: procedurally drawn hands whose disease signs are medically "
                   "meaningless; nothing here is about real patients.")
    n = data.get("n_subjects")
    if isinstance(n, int) and n < 100:
        out.append(f"Few subjects ({n}): every interval is wide, and a threshold chosen on "
                   "them moves a lot from one photo set to the next.")
    out += [
        ("The threshold rates reached on the rows they were chosen on are optimistic; test "
         "them on new photos (python -m handjax.validate)."),
        ("Fold k's labels reach its temperature T_k through the other folds' models, which "
         "trained on fold k: 'fold k never tunes T_k' holds only with the predictions fixed."),
        ("Photos unlike the training ones (another camera, clinic, skin tone or resolution) "
         "may be scored with confidence and still be wrong.")]
    return out


def model_card(run_spec: RunSpec, preds: Predictions, results: dict, workdir) -> dict:
    """``model.json``: everything the locked model is and what is known about it."""
    workdir = Path(workdir)
    e = run_spec.eval
    targets = {"sensitivity": e.sensitivity, "specificity": e.specificity}
    calibration = fit_calibration(preds)
    points = fit_operating_points(preds, calibration["temperature"], targets)
    ledger = read_json(workdir / workdirs.LEDGER)
    plan = workdir / CONV_PLAN
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
        "cost_matrix": np.asarray(losses.DEFAULT_COST).tolist(),
        "cost_matrix_axes": "rows: true class, columns: decided class (classes' order)",
        "conv_plan": read_json(plan) if plan.is_file() else None,
        "fingerprints": {"data": ledger.get("data"), "weights": ledger.get("weights"),
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


def write_model(workdir, run_spec: RunSpec, preds: Predictions, results: dict) -> Path:
    """Write ``workdir/model/model.json`` (the card: :func:`model_card`) and return its path.
    ``preds`` are the run's pooled out-of-fold predictions, ``results`` its results.json."""
    from handjax.evaluation.results import json_safe
    folder = Path(workdir) / MODEL_DIR
    folder.mkdir(exist_ok=True)
    card = json_safe(model_card(run_spec, preds, results, workdir))
    tmp = folder / f".{CARD}.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, folder / CARD)   # a reader never sees half a card
    return folder / CARD


# --------------------------------------------------------------------------- loading
class LockedModel:
    """A run's locked model, ready for photos (:func:`load_model`).

    ``classes``, ``image_size``, ``card`` (model.json), ``batch_size``; :meth:`prepare`
    decodes a photo, :meth:`probabilities` gives the locked probabilities, :meth:`decide`
    every rule's decisions and :meth:`grad_cam` where the members looked.
    """

    def __init__(self, run: TrainedRun, card: dict, batch_size: int = BATCH_SIZE):
        self.run, self.card, self.batch_size = run, card, batch_size
        self.classes = tuple(card["classes"])
        self.image_size = int(card["image_size"])
        self.temperature = float(card["calibration"]["temperature"])
        self.cost = np.asarray(card["cost_matrix"], np.float64)
        self.rules = threshold_rules(card["operating_points"])
        self.loss_name = run.run_spec.loss.name
        model = run.model
        self._forward = jax.jit(lambda v, x: model.apply(v, x, train=False, mode="tune"))
        self._cam_forward = None

    @property
    def n_members(self) -> int:
        return int(jax.tree.leaves(self.run.variables)[0].shape[0])

    def member(self, k: int):
        """Member ``k``'s variables."""
        return jax.tree.map(lambda a: a[k], self.run.variables)

    def prepare(self, source, name: str | None = None) -> np.ndarray:
        """A photo (path, or its bytes) -> uint8 [S, S, 3], decoded as training decoded it;
        a bad photo raises ``DataError`` naming it (``name`` for bytes)."""
        return decode_image(source, self.image_size, name=name)

    def _batched(self, fn, v, images) -> list:
        """``fn(v, x)`` over ``images`` in padded batches of ``batch_size``; per output, the
        rows of the real photos concatenated."""
        images = np.asarray(images, np.uint8)
        b, outs = self.batch_size, []
        for i in range(0, len(images), b):
            x = images[i:i + b]
            pad = b - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            out = fn(v, jnp.asarray(x))
            outs.append([np.asarray(o)[:b - pad] for o in (out if isinstance(out, tuple)
                                                           else (out,))])
        return [np.concatenate(parts) for parts in zip(*outs)]

    def member_outputs(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Every member's logits [M, N, C] and pooled features [M, N, D] (the head's input)."""
        self._check(images)
        outs = [self._batched(self._forward, self.member(k), images)
                for k in range(self.n_members)]   # a loop: vmap over conv weights is slow on CPU
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])

    def member_probabilities(self, logits) -> np.ndarray:
        """Raw class probabilities [M, N, C] (float64) of members' logits."""
        return np.asarray(probabilities(self.loss_name, jnp.asarray(logits)), np.float64)

    def calibrated(self, logits) -> np.ndarray:
        """The locked probabilities [N, C] of members' logits [M, N, C]."""
        return calibrate_members(self.member_probabilities(logits), self.temperature)

    def probabilities(self, images) -> np.ndarray:
        """The locked (calibrated ensemble) probabilities [N, C] of uint8 images [N, S, S, 3]."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)))
        return self.calibrated(self.member_outputs(images)[0])

    def decide(self, probs) -> dict[str, np.ndarray]:
        """``{rule: [N] int}``: ``argmax``, ``mec`` (class index), and per locked threshold
        ``<task>_<kind>`` (1 = the task's positive call)."""
        return decide(probs, self.cost, self.rules)

    def grad_cam(self, images, classes=None) -> np.ndarray:
        """Grad-CAM [N, h, w] in [0, 1]: the mean over members of each member's map for the
        photo's class (default: the locked argmax), rescaled to a peak of 1."""
        from handjax.model.gradcam import member_forward
        self._check(images)
        if classes is None:
            classes = self.probabilities(images).argmax(-1)
        if self._cam_forward is None:
            self._cam_forward = member_forward(self.run.model, self.loss_name)
        cams = np.mean([self._batched(self._cam_forward, self.member(k), images)[0]
                        for k in range(self.n_members)], axis=0)      # [N, C, h, w]
        cam = cams[np.arange(len(cams)), np.asarray(classes)]
        peak = cam.max(axis=(1, 2), keepdims=True)
        return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0)

    def _check(self, images) -> None:
        shape = np.shape(images)
        if len(shape) != 4 or shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be [N, {self.image_size}, {self.image_size}, 3] "
                             f"uint8 (LockedModel.prepare), got shape {shape}")


def load_model(workdir, batch_size: int = BATCH_SIZE) -> LockedModel:
    """The locked model of the finished run in ``workdir`` (its ``model/model.json`` and
    members); a missing, unfinished or altered run is one ``RunError`` line."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise RunError(f"{workdir / 'config.json'} not found: point --workdir at a finished "
                       "run (python launch.py --config ...)")
    workdirs.check_finished(workdir)
    path = workdir / MODEL_DIR / CARD
    if not path.is_file():
        raise RunError(f"{path} not found: the run finished before handjax wrote its locked "
                       "model; rerun its launch command (it resumes and writes model/)")
    card = read_json(path)
    if card.get("format") != FORMAT:
        raise RunError(f"{path} has format {card.get('format')!r}, this handjax reads "
                       f"{FORMAT}; rerun the run's launch command to rewrite it")
    # Checked before restoring: an altered file may not even restore. (A missing checkpoint
    # is load_run's to report: "training is not finished".)
    if ((workdir / "checkpoints").is_dir()
            and checkpoint_fingerprint(workdir) != card["fingerprints"]["checkpoint"]):
        raise RunError(f"{workdir / 'checkpoints'} differs from the checkpoint {path} was "
                       "written for; restore it or rerun the launch command")
    return LockedModel(load_run(workdir), card, batch_size)
