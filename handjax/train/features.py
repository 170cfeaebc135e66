"""The fold program's inputs, computed once per run: the model every fold starts from and
the outputs of the layers frozen in each phase.

Why the cache is exact: layers frozen in a phase hold the same (pretrained) values in every
fold, so their outputs are the same for every fold and epoch. Augmentation happens to the
*images* before the frozen prefix (the cohort's fixed views, :mod:`handjax.data.cohort`), and
each training example draws one view per epoch.

The data half of a run (photos, labels, subjects, folds) is :class:`handjax.data.Cohort`;
this module builds the model half, :class:`FoldInputs`, which :mod:`handjax.train.fold_program` reads.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from handjax.data import store
from handjax.data.cohort import Cohort
from handjax.models import backbones, classifier
from handjax.models.kernels import convs
from handjax.models.kernels.plan import ConvPlan

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import ModelSpec, RunSpec


# --------------------------------------------------------------------------- batching
def even_batch(n: int, most: int) -> int:
    """The batch size <= ``most`` that covers ``n`` items in the fewest batches with the
    least padding (300 items, most 32: 10 batches of 30, not 10 of 32)."""
    return max(1, -(-n // -(-n // most))) if n else most


def map_batches(fn, flat: np.ndarray, batch: int, out_dtype=None, desc: str | None = None,
                out: np.ndarray | None = None):
    """``fn`` over ``flat`` in batches of one size (the last padded by repeating its final
    item, the padding dropped from the output): one shape, one compilation. With ``out``
    (e.g. a disk-backed ``np.memmap``) each batch is written into it as it comes."""
    if out is not None:
        for i, y in _batches(fn, flat, batch, desc):
            out[i:i + len(y)] = y
            store.drop_pages(out)   # written: the file holds it, not this process
        return out
    return np.concatenate([y if out_dtype is None else y.astype(out_dtype)
                           for _, y in _batches(fn, flat, batch, desc)])


def _batches(fn, flat: np.ndarray, batch: int, desc: str | None):
    """``(start, fn(rows))`` per batch; ``flat`` on disk (a memmap) is read a batch at a
    time (:func:`handjax.data.store.batches`)."""
    for i, chunk in tqdm(store.batches(flat, batch), total=-(-len(flat) // batch), desc=desc,
                         leave=False, disable=desc is None):
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        yield i, np.asarray(fn(chunk)[:n])


# --------------------------------------------------------------------------- frozen prefix
# On CPU the frozen prefix runs its stages with large maps one image at a time: up to the
# last boundary whose output still has this many pixels (VGG19 at 112 px: blocks 1-2, their
# 56x56-112x112 maps then stay in cache). Measured on VGG19's prefix, batch 10: 9-17% faster
# at 112 px, 18% at 224 px; ResNet50 ~5%, MobileNetV2 unchanged.
PER_IMAGE_MIN_PIXELS = 28 * 28


def per_image_boundary(backbone, variables, image_hw: tuple[int, int],
                       split: str) -> str | None:
    """The last stage boundary up to ``split`` whose output map has at least
    ``PER_IMAGE_MIN_PIXELS`` pixels (``None``: no such stage)."""
    x = jax.ShapeDtypeStruct((1, *image_hw, 3), backbone.dtype)
    stages = backbone.stages[:backbone.stages.index(split) + 1]
    start, found = None, None
    for stage in stages:   # one stage per trace: the whole prefix is traced once
        x = jax.eval_shape(lambda v, x, a=start, b=stage: backbone.apply(
            v, x, train=False, start=a, stop=b), variables, x)
        if x.shape[1] * x.shape[2] >= PER_IMAGE_MIN_PIXELS:
            found = stage
        start = stage
    return found


def frozen_forward(backbone, variables, name: str, images, split: str,
                   per_image: str | None = None):
    """The frozen prefix on RGB images [B, H, W, 3]: preprocessing, then the stages up to
    ``per_image`` one image at a time (``lax.map``), then the rest up to ``split`` on the
    whole batch, in the backbone's compute dtype. Same values as one pass (inference-mode
    layers work per image)."""
    x = backbones.preprocess(name, images).astype(backbone.dtype)
    if per_image is not None:
        x = jax.lax.map(lambda xi: backbone.apply(variables, xi[None], train=False,
                                                  stop=per_image)[0], x)
    return backbone.apply(variables, x, train=False, start=per_image, stop=split)


def frozen_features(backbone, variables, name: str, views: np.ndarray, split: str, *,
                    batch: int = 10, store_dtype=np.float32, per_image: bool | None = None,
                    spill: Path | None = None) -> np.ndarray:
    """Output of the frozen prefix (up to ``split``) for every view and image, computed once.

    Batches have one size (at most ``batch``, the last one padded) so that the function
    compiles once; the size is chosen so that padding wastes the least. Inference-only, so
    the convs are chosen for the "frozen" purpose (see :mod:`handjax.models.kernels.convs`); the
    compute dtype is the backbone's own (``model.dtype``, resolved once by
    :func:`handjax.models.classifier.compute_dtype`). ``per_image`` (default: on CPU) runs
    the large-map stages one image at a time (see ``PER_IMAGE_MIN_PIXELS``). ``spill``: a
    ``.npy`` path; the features are then written there batch by batch and returned as a
    read-only ``np.memmap`` (a cache larger than RAM).
    """
    flat = views.reshape((-1,) + views.shape[2:])
    batch = even_batch(len(flat), batch)
    backbone = convs.for_purpose(backbone, "frozen")
    if per_image is None:
        per_image = jax.default_backend() == "cpu"
    cut = per_image_boundary(backbone, variables, flat.shape[1:3], split) if per_image else None
    variables = backbones.with_winograd_kernels(
        backbone, variables, jax.ShapeDtypeStruct((1, *flat.shape[1:]), backbone.dtype),
        stop=split)
    # The weights are an argument, not a closed-over constant: XLA would fold ~80 MB of
    # constants into the executable (slower compile, huge persistent-cache entries).
    fn = jax.jit(lambda v, x: frozen_forward(backbone, v, name, x, split, cut))
    fn = functools.partial(fn, variables)
    out = None
    if spill is not None:
        shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((batch,) + flat.shape[1:], flat.dtype))
        out = np.lib.format.open_memmap(spill, mode="w+", dtype=store_dtype,
                                        shape=(len(flat),) + shape.shape[1:])
    feats = map_batches(fn, flat, batch, store_dtype, desc="frozen features", out=out)
    if out is not None:
        out.flush()
        del out
        feats = np.load(spill, mmap_mode="r")
    return feats.reshape(views.shape[:2] + feats.shape[1:])


def cache_nbytes(backbone, variables, name: str, views: np.ndarray, split: str, *,
                 store_dtype) -> int:
    """Bytes of :func:`frozen_features`'s output, from shapes alone (nothing runs)."""
    backbone = convs.for_purpose(backbone, "frozen")
    x = jax.ShapeDtypeStruct((1,) + views.shape[2:], views.dtype)
    out = jax.eval_shape(lambda v, x: frozen_forward(backbone, v, name, x, split),
                         variables, x)
    return int(np.prod(views.shape[:2]) * np.prod(out.shape[1:]) * np.dtype(store_dtype).itemsize)


def spill_path(workdir: Path | None, nbytes: int, budget_gb: float) -> Path | None:
    """Where the frozen-feature cache goes: ``None`` (RAM) when it fits ``budget_gb``, else
    ``<workdir>/frozen_features.<process>.npy``."""
    if workdir is None or nbytes <= budget_gb * 2**30:
        return None
    return Path(workdir) / f"frozen_features.{jax.process_index()}.npy"


def photo_store(workdir: Path | None, budget_gb: float) -> store.Store:
    """Where a run's decoded photos and views go: RAM, or ``<workdir>/arrays.<process>/``
    when one is larger than ``budget_gb`` (``train.cache_budget_gb``, the budget of the
    frozen-feature cache too): a run's peak memory is then set by the budget and a batch."""
    if workdir is None:
        return store.Store()
    return store.Store(Path(workdir) / f"arrays.{jax.process_index()}", budget_gb * 2**30)


def pooled_features(model: classifier.Classifier, params, stats, feats,
                    batch: int = 64) -> np.ndarray:
    """Pooled output of the (still frozen) top for every view: phase 1 trains heads on it."""
    variables = {"params": params, "batch_stats": stats}
    backbone = convs.for_purpose(model.backbone, "frozen")

    def pooled(variables, x):
        out = backbone.apply(variables, x.astype(model.dtype), train=False, start=model.split)
        return jnp.mean(out.astype(jnp.float32), axis=(1, 2))

    flat = feats.reshape((-1,) + feats.shape[2:])
    variables = backbones.with_winograd_kernels(
        backbone, variables, jax.ShapeDtypeStruct((1, *flat.shape[1:]), model.dtype),
        start=model.split)
    fn = functools.partial(jax.jit(pooled), variables)   # weights as an argument, as above
    out = map_batches(fn, flat, even_batch(len(flat), batch))
    return out.reshape(feats.shape[:2] + out.shape[1:])


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


def trained_algorithms(model: classifier.Classifier, input_shape: tuple) -> frozenset:
    """The conv algorithms the trained layers (from the model's ``start``) run on inputs of
    ``input_shape`` (one example): the conv policy's or tuner's choices, traced on shapes
    only."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), model.dtype)
    return frozenset(backbones.conv_algorithms(model.backbone, x, start=model.start).values())


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
        dim = classifier.feature_dim(backbone, variables, image_size, common["dtype"])
        return FoldModel(model, frozenset(top), params, stats, dim, "frozen",
                         trained_algorithms(model, image)), variables
    model = classifier.Classifier(start=common["split"], **common)
    shape = classifier.boundary_shape(backbone, variables, image_size, common["split"],
                                      common["dtype"])
    params, stats = classifier.subtree(params, top), classifier.subtree(stats, top)
    dim = classifier.feature_dim(backbone, variables, image_size, common["dtype"])
    return FoldModel(model, frozenset(top), params, stats, dim, "pooled",
                     trained_algorithms(model, shape[1:])), variables


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


def prepare(run_spec: RunSpec, cohort: Cohort, workdir: Path | None = None,
            plan: ConvPlan | None = None) -> FoldInputs:
    """The fold model and the shared (frozen-layer) inputs of both phases for the RunSpec
    ``run_spec`` on ``cohort``'s views, its convs by the run's ``plan`` (None: the
    table's). A frozen-feature cache larger than ``train.cache_budget_gb`` goes to a file
    in ``workdir``."""
    views = cohort.views
    plain = run_spec.train.mode == "plain"
    fm, variables = fold_model(run_spec.model, run_spec.data.image_size, run_spec.seed,
                               len(cohort.examples.class_names),
                               loss_name=run_spec.loss.name, plain=plain, plan=plan)
    if plain:
        return FoldInputs(fm, views, views, 0)
    backbone, name, split = fm.model.backbone, fm.model.backbone_name, fm.model.split
    dtype = np.float32 if run_spec.train.cache_dtype == "float32" else jnp.bfloat16
    nbytes = cache_nbytes(backbone, variables, name, views, split, store_dtype=dtype)
    feats = frozen_features(backbone, variables, name, views, split, store_dtype=dtype,
                            spill=spill_path(workdir, nbytes, run_spec.train.cache_budget_gb))
    pooled = pooled_features(fm.model, fm.backbone_params, fm.backbone_stats, feats)
    return FoldInputs(fm, pooled, feats, int(feats.nbytes))
