"""A backbone's frozen prefix applied to photos: the output of the layers up to the split
for every view and image, computed once per run (the cache phase 2 trains on), and the
pooled output of the (still frozen) top that phase 1 trains heads on.

Batches have one size, so each program compiles once (:func:`handjax.data.store.map_batches`);
a cache larger than the run's budget is written to a ``.npy`` file batch by batch and read
back as a read-only ``np.memmap``. Inference only: the convs are chosen for the "frozen"
purpose (:mod:`handjax.models.kernels.convs`), in the backbone's compute dtype.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from handjax.data.store import even_batch, map_batches
from handjax.models import backbones, classifier
from handjax.models.kernels import convs

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
        x = convs.eval_shape(lambda v, x, a=start, b=stage: backbone.apply(
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


# The prefix's batch: one size whatever the number of photos, so that its program can be
# compiled before the photos are loaded (:class:`handjax.train.features.ModelAhead`).
PREFIX_BATCH = 10


@dataclasses.dataclass(frozen=True)
class Prefix:
    """The frozen prefix as one compiled program: ``fn(images)`` on ``batch`` RGB images
    [batch, H, W, 3] of ``dtype`` -> their features ``out`` (a ``jax.ShapeDtypeStruct``)."""

    fn: Callable
    batch: int
    image_hw: tuple
    dtype: Any
    out: jax.ShapeDtypeStruct

    def fits(self, flat: np.ndarray, batch: int) -> bool:
        """Whether this program runs ``flat`` [N, H, W, 3] in batches of ``batch``."""
        return (self.batch == batch and tuple(flat.shape[1:3]) == self.image_hw
                and flat.dtype == self.dtype)


def prefix_batch(n: int, most: int = PREFIX_BATCH) -> int:
    """The prefix's batch for ``n`` images: ``most``, unless there are fewer."""
    return max(1, min(most, n))


def prefix_program(backbone, variables, name: str, image_hw: tuple[int, int], split: str, *,
                   batch: int = PREFIX_BATCH, dtype=np.uint8,
                   per_image: bool | None = None) -> Prefix:
    """The frozen prefix (up to ``split``) compiled for batches of ``batch`` images of
    ``image_hw`` and ``dtype``: traced and compiled from shapes alone, so it needs no photo.

    Inference only, so the convs are chosen for the "frozen" purpose (see
    :mod:`handjax.models.kernels.convs`); the compute dtype is the backbone's own
    (``model.dtype``, resolved once by :func:`handjax.models.classifier.compute_dtype`).
    ``per_image`` (default: on CPU) runs the large-map stages one image at a time (see
    ``PER_IMAGE_MIN_PIXELS``)."""
    backbone = convs.for_purpose(backbone, "frozen")
    if per_image is None:
        per_image = jax.default_backend() == "cpu"
    image_hw = tuple(image_hw)
    cut = per_image_boundary(backbone, variables, image_hw, split) if per_image else None
    variables = backbones.with_winograd_kernels(
        backbone, variables, jax.ShapeDtypeStruct((1, *image_hw, 3), backbone.dtype),
        stop=split)
    # The weights are an argument, not a closed-over constant: XLA would fold ~80 MB of
    # constants into the executable (slower compile, huge persistent-cache entries).
    fn = jax.jit(lambda v, x: frozen_forward(backbone, v, name, x, split, cut))
    compiled = fn.trace(variables, jax.ShapeDtypeStruct((batch, *image_hw, 3), dtype)
                        ).lower().compile()
    return Prefix(functools.partial(compiled, variables), batch, image_hw, np.dtype(dtype),
                  compiled.out_info)


def frozen_features(backbone, variables, name: str, views: np.ndarray, split: str, *,
                    batch: int = PREFIX_BATCH, store_dtype=np.float32,
                    per_image: bool | None = None, spill: Path | None = None,
                    prefix: Prefix | None = None) -> np.ndarray:
    """Output of the frozen prefix (up to ``split``) for every view and image, computed once.

    Batches have one size (``batch``, the last one padded; fewer images, one batch of them)
    so that the prefix compiles once (:func:`prefix_program`, which says what ``per_image``
    does); ``prefix``: that program, compiled already (used when it fits these views).
    ``spill``: a ``.npy`` path; the features are then written there batch by batch and
    returned as a read-only ``np.memmap`` (a cache larger than RAM).
    """
    flat = views.reshape((-1,) + views.shape[2:])
    batch = prefix_batch(len(flat), batch)
    if prefix is None or not prefix.fits(flat, batch):
        prefix = prefix_program(backbone, variables, name, flat.shape[1:3], split, batch=batch,
                                dtype=flat.dtype, per_image=per_image)
    out = None
    if spill is not None:
        out = np.lib.format.open_memmap(spill, mode="w+", dtype=store_dtype,
                                        shape=(len(flat),) + tuple(prefix.out.shape[1:]))
    feats = map_batches(prefix.fn, flat, batch, store_dtype, desc="frozen features", out=out)
    if out is not None:
        out.flush()
        del out
        feats = np.load(spill, mmap_mode="r")
    return feats.reshape(views.shape[:2] + feats.shape[1:])


def spill_path(workdir: Path | None, nbytes: int, budget_gb: float) -> Path | None:
    """Where the frozen-feature cache goes: ``None`` (RAM) when it fits ``budget_gb``, else
    ``<workdir>/frozen_features.<process>.npy``."""
    if workdir is None or nbytes <= budget_gb * 2**30:
        return None
    return Path(workdir) / f"frozen_features.{jax.process_index()}.npy"


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
