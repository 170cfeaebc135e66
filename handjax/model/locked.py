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

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from handjax.data.decode import decode_image
from handjax.data.records import CLASSES, DISPLAY_NAMES
from handjax.errors import RunError
from handjax.evaluation.scoring import probabilities
from handjax.evaluation.model_card import CARD, FORMAT, MODEL_DIR, calibrate_members, decide, \
    checkpoint_fingerprint, threshold_rules
from handjax.model.ensemble import TrainedRun, load_run, read_json
from handjax.train import workdir as workdirs

BATCH_SIZE = 8        # photos per forward pass: padded, so one compilation serves every call

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


# --------------------------------------------------------------------------- how it is shown
def display_names(class_names) -> list[str]:
    """Readable names for the run's classes ("ra" -> "Rheumatoid arthritis")."""
    table = dict(zip(CLASSES, DISPLAY_NAMES))
    return [table.get(c, c) for c in class_names]


def decision_value(model: LockedModel, rule: str, value: int):
    """A decision as shown: the class name for argmax and mec, 1/0 for a threshold rule."""
    return model.classes[value] if rule in ("argmax", "mec") else int(value)
