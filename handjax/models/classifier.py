"""The classifier trained in every fold: a backbone (from a stage boundary), global average
pooling and the head; and :func:`model_parts`, which builds it from a :class:`ModelSpec`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from handjax import ordinal
from handjax.errors import ConfigError
from handjax.models import backbones, keras_weights
from handjax.models.kernels import convs
from handjax.models.kernels.plan import ConvPlan


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, plan: ConvPlan | None = None):
    """``model.dtype`` as a dtype: with the run's ``plan``, the plan's dtype (for "auto",
    what the tuner decided); else "auto" is bfloat16 where it pays (:func:`convs.bf16_pays`:
    GPU/TPU, or a CPU with AMX or AVX512-BF16), else float32. Parameters stay float32 in
    every case."""
    if plan is not None:
        name = plan.dtype
    elif name == "auto":
        name = "bfloat16" if convs.bf16_pays(jax.default_backend()) else "float32"
    return COMPUTE_DTYPES[name]


# Keras's Dense defaults (the study's framework): glorot_uniform kernels, zero biases.
KERAS_DENSE = dict(kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros)


class Head(nn.Module):
    """Dense(hidden) -> ReLU -> Dropout -> Dense(num_classes), initialised as Keras's Dense
    is. The study names no head; this is the usual Keras transfer-learning head (README,
    "The protocol"). With
    ``ordinal="corn"`` / ``"coral"`` the last layer gives the K-1 ordinal logits instead
    (:mod:`handjax.ordinal`)."""

    hidden: int = 256
    dropout: float = 0.5
    num_classes: int = 3
    dtype: Any = jnp.float32
    ordinal: str | None = None

    @nn.compact
    def __call__(self, pooled, train: bool = False):
        x = nn.Dense(self.hidden, dtype=self.dtype, name="head_dense", **KERAS_DENSE)(pooled)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train, name="head_dropout")(x)
        if self.ordinal:
            x = ordinal.logits_layer(self.ordinal, self.num_classes, self.dtype)(x)
        else:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="head_logits",
                         **KERAS_DENSE)(x)
        return x.astype(jnp.float32)


class Classifier(nn.Module):
    """Backbone (from ``start``) -> global average pooling -> ``Head``.

    ``start`` is the stage boundary whose output the classifier receives; ``None`` means raw
    RGB images in [0, 255], in which case the frozen prefix up to ``split`` is recomputed on
    every call under ``stop_gradient`` (the plain path). ``mode`` selects what trains:
    ``"pooled"``: ``x`` is already pooled features, only the head runs; ``"frozen"``: the
    backbone runs in inference mode without gradient; ``"tune"``: layers after ``split`` run
    in the given ``train`` mode and receive gradients. Returns ``(logits, pooled)``.
    """

    backbone: nn.Module
    backbone_name: str
    split: str
    start: str | None = None
    hidden: int = 256
    dropout: float = 0.5
    num_classes: int = 3
    dtype: Any = jnp.float32
    ordinal: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mode: str = "tune"):
        if mode == "pooled":
            pooled = x.astype(jnp.float32)
        else:
            if self.start is None:
                x = backbones.preprocess(self.backbone_name, x).astype(self.dtype)
                x = jax.lax.stop_gradient(self.backbone(x, train=False, stop=self.split))
            feats = self.backbone(x.astype(self.dtype), train=train and mode == "tune",
                                  start=self.split)
            pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
            if mode == "frozen":
                pooled = jax.lax.stop_gradient(pooled)
        head = Head(self.hidden, self.dropout, self.num_classes, self.dtype, self.ordinal,
                    name="head")
        return head(pooled, train=train), pooled


def load_backbone(model_spec, seed: int, dtype=None, plan: ConvPlan | None = None):
    """The backbone of ``model_spec`` (a ModelSpec) and its weights, in compute ``dtype``
    (default: ``model_spec.dtype``'s), its convs by the run's ``plan``; offline ImageNet
    gets a way out."""
    dtype = compute_dtype(model_spec.dtype, plan) if dtype is None else dtype
    try:
        module, variables = keras_weights.load(model_spec.name, model_spec.weights, seed=seed,
                                               dtype=dtype, conv_impl=model_spec.conv_impl)
    except keras_weights.WeightsError as e:
        raise keras_weights.WeightsError(
            f"{e} -- or train from random weights: --config.model.weights=none") from e
    return module.clone(conv_plan=plan), variables


def top_layers(backbone, split: str, boundary_shape) -> set[str]:
    """Names of the layers after ``split``: the parameter subtree an init from there makes."""
    shapes = convs.eval_shape(
        lambda: backbone.init(jax.random.key(0), jnp.zeros(boundary_shape), start=split))
    return set(shapes.get("params", {})) | set(shapes.get("batch_stats", {}))


def boundary_shape(backbone, variables, image_size: int, split: str, dtype) -> tuple:
    """Shape of the prefix's output at ``split`` for one image (preprocessing keeps shapes)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), dtype)
    return convs.eval_shape(lambda v, x: backbone.apply(v, x, train=False, stop=split),
                          variables, x).shape


def feature_dim(backbone, variables, shape: tuple, dtype, start: str | None = None) -> int:
    """Channels of the backbone's final feature map (the head's input width), from one
    example of ``shape`` entering at boundary ``start`` (None: an image): from the split
    only the top is traced."""
    x = jax.ShapeDtypeStruct((1, *shape), dtype)
    return convs.eval_shape(lambda v, x: backbone.apply(v, x, train=False, start=start),
                          variables, x).shape[-1]


def trained_algorithms(model: Classifier, input_shape: tuple) -> frozenset:
    """The conv algorithms the trained layers (from the model's ``start``) run on inputs of
    ``input_shape`` (one example): the conv policy's or tuner's choices, traced on shapes
    only."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), model.dtype)
    return frozenset(backbones.conv_algorithms(model.backbone, x, start=model.start).values())


def model_parts(model_spec, image_size: int, seed: int, num_classes: int,
                loss_name: str = "", plan: ConvPlan | None = None) -> tuple:
    """Backbone, its variables, the layer names after the split, and the ``Classifier``
    fields shared by training and inference (an ordinal loss gets its ordinal head). The
    convs run by ``plan`` (the run's, resolved before this; None: the table's)."""
    split = model_spec.split or backbones.DEFAULT_TRAINABLE_FROM[model_spec.name]
    dtype = compute_dtype(model_spec.dtype, plan)
    backbone, variables = load_backbone(model_spec, seed, dtype, plan)
    if split not in backbone.stages:
        raise ConfigError(f"config.model.split={split!r} is not a stage of {model_spec.name}; "
                          f"choose one of {', '.join(backbone.stages)}")
    shape = boundary_shape(backbone, variables, image_size, split, dtype)
    common = dict(backbone=backbone, backbone_name=model_spec.name, split=split,
                  hidden=model_spec.hidden, dropout=model_spec.dropout, num_classes=num_classes,
                  dtype=dtype, ordinal=loss_name if loss_name in ordinal.ORDINAL else None)
    return backbone, variables, top_layers(backbone, split, shape), common


def subtree(tree: dict, keys) -> dict:
    """The entries of ``tree`` whose key is in ``keys``."""
    return {k: v for k, v in tree.items() if k in keys}


def stack(tree, n: int):
    """Repeat a pytree along a new leading fold axis (a real copy: states are donated)."""
    return jax.tree.map(lambda a: jnp.array(jnp.broadcast_to(a, (n,) + np.shape(a))), tree)
