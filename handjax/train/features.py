"""The fold program's inputs, computed once per run: the model every fold starts from and
the outputs of the layers frozen in each phase.

Why the cache is exact: layers frozen in a phase hold the same (pretrained) values in every
fold, so their outputs are the same for every fold and epoch. Augmentation happens to the
*images* before the frozen prefix (the cohort's fixed views, :mod:`handjax.data.cohort`), and
each training example draws one view per epoch.

The data half of a run (photos, labels, subjects, folds) is :class:`handjax.data.Cohort`;
this module builds the model half, :class:`FoldInputs`, which :mod:`handjax.train.fold_program` reads;
the frozen prefix itself runs in :mod:`handjax.models.frozen`.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from handjax.data.cohort import Cohort
from handjax.data.records import CLASSES
from handjax.models import classifier, frozen
from handjax.models.kernels.plan import ConvPlan

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import ModelSpec, RunSpec


# --------------------------------------------------------------------------- the fold model
@dataclasses.dataclass(frozen=True)
class FoldModel:
    """What every fold starts from: the ``Classifier`` the steps run, the backbone values
    shared by all folds (the trained subtree only, in cached mode), the layers phase 2
    trains, the head's input width, phase 1's mode, and the conv algorithms phase 2's
    trained layers run (the conv policy's or the tuner's choice: they decide how steps map
    over folds, :func:`handjax.train.fold_program.resolve_fold_map`)."""

    model: classifier.Classifier
    trainable: frozenset             # backbone layers trained in phase 2
    backbone_params: Any
    backbone_stats: Any
    head_dim: int
    mode1: str                       # "pooled" (cached) or "frozen" (plain)
    trained_algorithms: frozenset   # e.g. {'winograd'}
    boundary: tuple = ()             # one example's shape where the trained part starts


def fold_model(model_spec: ModelSpec, image_size: int, seed: int, num_classes: int, *, loss_name: str,
               plain: bool, plan: ConvPlan | None = None) -> tuple[FoldModel, dict]:
    """The fold model of ``model_spec`` (a ModelSpec) and the backbone's full variables.
    ``plain``: the classifier takes raw images (``train.mode="plain"``, and inference);
    else it starts at the split, on the frozen-feature cache. ``plan``: the run's conv plan
    (None: the table's choices)."""
    backbone, variables, top, common = classifier.model_parts(
        model_spec, image_size, seed, num_classes, loss_name=loss_name, plan=plan)
    params, stats = variables["params"], variables.get("batch_stats", {})
    image = (image_size, image_size, 3)
    if plain:
        model = classifier.Classifier(start=None, **common)
        dim = classifier.feature_dim(backbone, variables, image, common["dtype"])
        return FoldModel(model, frozenset(top), params, stats, dim, "frozen",
                         classifier.trained_algorithms(model, image), image), variables
    model = classifier.Classifier(start=common["split"], **common)
    shape = classifier.boundary_shape(backbone, variables, image_size, common["split"],
                                      common["dtype"])
    params, stats = classifier.subtree(params, top), classifier.subtree(stats, top)
    dim = classifier.feature_dim(backbone, variables, shape[1:], common["dtype"],
                                 start=common["split"])
    return FoldModel(model, frozenset(top), params, stats, dim, "pooled",
                     classifier.trained_algorithms(model, shape[1:]), tuple(shape[1:])), variables


# --------------------------------------------------------------------------- preparation
@dataclasses.dataclass(frozen=True)
class FoldInputs:
    """The input of the fold program: the fold model and each phase's inputs [V, N, ...]
    shared by all folds: pooled features (phase 1) and the frozen-feature cache (phase 2)
    in cached mode, the image views in plain mode. ``inputs2`` is an ``np.memmap`` when the
    cache spilled to disk."""

    fold_model: FoldModel
    inputs1: Any
    inputs2: Any
    cache_bytes: int


def model_of(run_spec: RunSpec, plan: ConvPlan | None = None) -> tuple[FoldModel, dict]:
    """:func:`fold_model` for the RunSpec ``run_spec`` (the classes are
    :data:`~handjax.data.CLASSES`, whatever the photos): the fold model and the backbone's
    full variables."""
    return fold_model(run_spec.model, run_spec.data.image_size, run_spec.seed, len(CLASSES),
                      loss_name=run_spec.loss.name, plain=run_spec.train.mode == "plain",
                      plan=plan)


class ModelAhead:
    """:func:`model_of` and, in cached mode, the frozen prefix's compiled program
    (:func:`handjax.models.frozen.prefix_program`), made in a background thread while the
    photos load and their views are drawn: neither needs a photo. On a first run that is
    where the prefix's compile (seconds) goes, beside the rendering or decoding; a warm run
    reads it from JAX's cache there. :meth:`model` waits for the model only (the epoch
    programs can then start compiling beside the prefix's), :meth:`prefix` for the
    program; both raise what the thread raised (a weight file that does not load, say) in
    the caller's thread."""

    def __init__(self, run_spec: RunSpec, plan: ConvPlan | None):
        self._model: tuple | None = None
        self._prefix: frozen.Prefix | None = None
        self._error: BaseException | None = None
        self._model_made = threading.Event()
        self._thread = threading.Thread(target=self._make, args=(run_spec, plan),
                                         name="handjax-model-ahead", daemon=True)
        self._thread.start()

    def _make(self, run_spec: RunSpec, plan: ConvPlan | None) -> None:
        try:
            self._model = model_of(run_spec, plan)
            self._model_made.set()
            if run_spec.train.mode != "plain":
                (fm, variables), size = self._model, run_spec.data.image_size
                self._prefix = frozen.prefix_program(fm.model.backbone, variables,
                                                     fm.model.backbone_name, (size, size),
                                                     fm.model.split)
        except BaseException as e:   # re-raised in the run's thread
            self._error = e
        finally:
            self._model_made.set()

    def model(self) -> tuple[FoldModel, dict]:
        """:func:`model_of`'s fold model and backbone variables, once made."""
        self._model_made.wait()
        if self._model is None:
            raise self._error
        return self._model

    def prefix(self) -> frozen.Prefix | None:
        """The frozen prefix's compiled program (``None`` in plain mode), once made. Handed
        over, not kept: it holds the prefix's transformed kernels, which the training
        that follows has no use for."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        prefix, self._prefix = self._prefix, None
        return prefix


def _cache_layout(run_spec: RunSpec, cohort: Cohort, fm: FoldModel, workdir: Path | None):
    """The frozen-feature cache's shape [V, N, ...], dtype and spill path (None: in RAM),
    from the boundary's shape alone (no trace of the prefix)."""
    dtype = np.float32 if run_spec.train.cache_dtype == "float32" else jnp.bfloat16
    shape = tuple(cohort.views.shape[:2]) + tuple(fm.boundary)
    nbytes = int(np.prod(shape) * np.dtype(dtype).itemsize)
    return shape, dtype, frozen.spill_path(workdir, nbytes, run_spec.train.cache_budget_gb)


def input_specs(run_spec: RunSpec, cohort: Cohort, fm: FoldModel, workdir: Path | None = None):
    """The shapes and dtypes (``jax.ShapeDtypeStruct``) that :func:`prepare` will return as
    ``(inputs1, inputs2)`` in cached mode with the cache in RAM, before it computes them;
    ``None`` in plain mode or when the cache spills to disk (streamed in chunks)."""
    if run_spec.train.mode == "plain":
        return None
    shape, dtype, spill = _cache_layout(run_spec, cohort, fm, workdir)
    if spill is not None:
        return None
    return (jax.ShapeDtypeStruct(shape[:2] + (fm.head_dim,), jnp.float32),
            jax.ShapeDtypeStruct(shape, dtype))


def prepare(run_spec: RunSpec, cohort: Cohort, workdir: Path | None = None,
            plan: ConvPlan | None = None, model: tuple[FoldModel, dict] | None = None,
            prefix: frozen.Prefix | None = None) -> FoldInputs:
    """The fold model and the shared (frozen-layer) inputs of both phases for the RunSpec
    ``run_spec`` on ``cohort``'s views, its convs by the run's ``plan`` (None: the
    table's); ``model``: :func:`model_of`'s, and ``prefix``: the frozen prefix's compiled
    program, when the caller made them already (:class:`ModelAhead`). A
    frozen-feature cache larger than ``train.cache_budget_gb`` goes to a file in
    ``workdir``."""
    views = cohort.views
    fm, variables = model if model is not None else model_of(run_spec, plan)
    if run_spec.train.mode == "plain":
        return FoldInputs(fm, views, views, 0)
    backbone, name, split = fm.model.backbone, fm.model.backbone_name, fm.model.split
    _, dtype, spill = _cache_layout(run_spec, cohort, fm, workdir)
    feats = frozen.frozen_features(backbone, variables, name, views, split, store_dtype=dtype,
                                   spill=spill, prefix=prefix)
    pooled = frozen.pooled_features(fm.model, fm.backbone_params, fm.backbone_stats, feats)
    return FoldInputs(fm, pooled, feats, int(feats.nbytes))
