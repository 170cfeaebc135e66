"""What every architecture shares: the ``Backbone`` driver and the per-architecture hooks.

An architecture is a ``Backbone`` subclass that defines ``stage`` and the class-level
facts below; ``handjax.models.backbones.MODELS`` lists it (one line). This module imports
no architecture, so architecture modules import it without a cycle.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from handjax.models.kernels.convs import Conv
from handjax.models.kernels.plan import ConvPlan


class WeightFile(NamedTuple):
    """Keras's ``include_top=False`` ImageNet file of an architecture."""

    file: str
    url: str
    md5: str | None  # as published in Keras's applications/*.py (MD5, or SHA-256 when 64
    # hex digits long, as Keras's get_file decides); None: none published


KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def caffe_preprocess(x):
    """Keras's "caffe" mode on float32 RGB in [0, 255]: RGB -> BGR, minus the ImageNet means."""
    return x[..., ::-1] - jnp.asarray(_CAFFE_MEAN_BGR, jnp.float32)


def tf_preprocess(x):
    """Keras's "tf" mode on float32 RGB in [0, 255]: x / 127.5 - 1."""
    return x / 127.5 - 1.0


def _stage_slice(stages, start, stop):
    """The stages strictly after ``start`` and up to and including ``stop``."""
    for boundary in (start, stop):
        if boundary is not None and boundary not in stages:
            raise ValueError(f"unknown stage boundary {boundary!r}; expected one of {stages}")
    first = 0 if start is None else stages.index(start) + 1
    last = len(stages) - 1 if stop is None else stages.index(stop)
    if last < first - 1:
        raise ValueError(f"stop={stop!r} comes before start={start!r}")
    return stages[first : last + 1]


class Backbone(nn.Module):
    """Shared driver: runs the named stages between two boundaries.

    ``apply(variables, x, train=False, start=None, stop=None)``: ``x`` is the output of
    boundary ``start`` (None: the preprocessed image); returns the output of boundary
    ``stop`` (None: the final feature map). Only the layers in between are created and
    run, so ``init(key, x, start=b)`` yields exactly the parameters after ``b``.
    ``conv_impl``, ``purpose`` and ``conv_plan`` (the run's
    :class:`~handjax.models.kernels.plan.ConvPlan`, "auto"'s choices): see
    :mod:`handjax.models.kernels.convs`.

    Per-architecture hooks (class level): ``stages``; ``trainable_from`` (the boundary
    after which phase 2 unfreezes by default); ``weight_file`` (a :class:`WeightFile`);
    ``preprocess_input`` (a function on float32 RGB in [0, 255]); ``keras_layer_order()``;
    ``keras_targets`` (None: the generic map of :func:`handjax.models.keras_weights._targets`);
    ``keras_groups`` (``{HDF5 group: Flax modules it fills, in weight order}`` for Keras
    layers that are nested models, e.g. ConvNeXt's stem; other groups fill the module of
    their own name).
    """

    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    purpose: str = "train"
    conv_plan: ConvPlan | None = None

    stages: ClassVar[tuple[str, ...]] = ()
    trainable_from: ClassVar[str] = ""
    weight_file: ClassVar[WeightFile | None] = None
    keras_targets: ClassVar[Callable | None] = None
    keras_groups: ClassVar[dict[str, tuple[str, ...]]] = {}

    @staticmethod
    def preprocess_input(x):
        raise NotImplementedError

    @classmethod
    def keras_layer_order(cls) -> tuple[str, ...]:
        """Keras's order of the layers that hold weights (``model.layers`` order), i.e. the
        order of weight groups in Keras's HDF5 files."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, x, train: bool = False, start: str | None = None, stop: str | None = None):
        if x.ndim != 4:
            raise ValueError(f"expected NHWC input of rank 4, got shape {x.shape}")
        x = x.astype(self.dtype)
        for stage in _stage_slice(self.stages, start, stop):
            x = self.stage(stage, x, train)
        return x

    def stage(self, name: str, x, train: bool):
        """Applies the layers of the stage ending at boundary ``name`` (per architecture)."""
        raise NotImplementedError

    # Layer factories: every layer named by its Keras name.
    def _conv(self, name, features, k, stride=1, padding="SAME", use_bias=True, depthwise=False):
        return Conv(features, (k, k), stride, padding, use_bias, depthwise, self.conv_impl,
                    self.dtype, self.purpose, self.conv_plan, name=name)

    def _bn(self, name, train, epsilon, momentum):
        # Flax and Keras use the same convention: new = momentum * old + (1 - momentum) * batch.
        # Keras's batch variance is two-pass (jnp.var); Flax's fast E[x^2]-E[x]^2 is not.
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=epsilon,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )
