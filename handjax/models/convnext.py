"""ConvNeXt-Tiny, equal to ``keras.applications.ConvNeXtTiny(include_top=False, pooling=None)``.

Keras keeps its input normalisation inside the model (``PreStem``: ImageNet mean/std of
[0, 255] pixels), which :func:`preprocess` is here. Keras's stem and downsampling layers are
nested ``Sequential`` models, one weight group each in its HDF5 files: :data:`KERAS_GROUPS`
names the Flax modules each group fills (the ``keras_groups`` hook of
:class:`handjax.models.common.Backbone`). No BatchNorm, so the variables hold no
``batch_stats``; Keras's ConvNeXtTiny has ``drop_path_rate=0.0`` (no stochastic depth), so
``train=True`` and ``train=False`` compute the same thing.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from handjax.models.common import KERAS_BASE_URL, Backbone, WeightFile

PREFIX = "convnext_tiny"
DEPTHS = (3, 3, 9, 3)  # Keras MODEL_CONFIGS["tiny"]
DIMS = (96, 192, 384, 768)
_EPS = 1e-6  # every LayerNormalization in Keras convnext.py
_LAYER_SCALE_INIT = 1e-6
# The include_top=False model ends in a LayerNormalization Keras leaves unnamed: this is the
# name a fresh Keras session gives it (weights are matched by position, so only messages
# show it).
HEAD_NORM = "layer_normalization"


def _block(i: int, j: int) -> str:
    return f"{PREFIX}_stage_{i}_block_{j}"


def _stage_groups():
    """(downsampling layer, its blocks) per stage; stage 0 is downsampled by the stem."""
    down = [f"{PREFIX}_stem"] + [f"{PREFIX}_downsampling_block_{i}" for i in range(3)]
    return [(down[i], [_block(i, j) for j in range(d)]) for i, d in enumerate(DEPTHS)]


STAGES = tuple(name for down, blocks in _stage_groups() for name in (down, *blocks)) + (HEAD_NORM,)

# Phase 2 unfreezes the last stage: downsampling block 2 (384 -> 768 channels, 1/32 scale),
# stage 3's three blocks and the final LayerNorm (15.5M of 27.8M parameters). It is the
# counterpart of what the study unfreezes in the other backbones: ResNet50's conv5 (its
# stride-2 first block and 3 blocks at 1/32 scale) and MobileNetV2's blocks 13-16 (the
# 1/32 stage). The most ImageNet-specific features live there, and its maps are the
# smallest, so the per-step cost of tuning it is low.
DEFAULT_TRAINABLE_FROM = _block(2, DEPTHS[2] - 1)

# Keras HDF5 group -> the Flax modules it fills, in the file's weight order.
KERAS_GROUPS = {
    f"{PREFIX}_stem": (f"{PREFIX}_stem_conv", f"{PREFIX}_stem_layernorm"),
    **{f"{PREFIX}_downsampling_block_{i}": (f"{PREFIX}_downsampling_layernorm_{i}",
                                            f"{PREFIX}_downsampling_conv_{i}") for i in range(3)},
}

_BLOCK_LAYERS = ("depthwise_conv", "layernorm", "pointwise_conv_1", "pointwise_conv_2", "layer_scale")

WEIGHT_FILE = WeightFile(
    f"{PREFIX}_notop.h5",
    f"{KERAS_BASE_URL}convnext/{PREFIX}_notop.h5",
    # SHA-256, as Keras publishes it (convnext.py WEIGHTS_HASHES["convnext_tiny"][1]).
    "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
)


def keras_layer_order() -> tuple[str, ...]:
    """The weighted layers of Keras's model in ``model.layers`` order (= HDF5 group order)."""
    order = []
    for down, blocks in _stage_groups():
        order += [down] + [f"{b}_{layer}" for b in blocks for layer in _BLOCK_LAYERS]
    return tuple(order + [HEAD_NORM])


# PreStem: Normalization(mean=255 * ImageNet mean, variance=(255 * ImageNet std)^2).
_MEAN = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], np.float32)
_STD = np.sqrt(np.array([(0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2], np.float32))


def preprocess(images) -> jax.Array:
    """Keras's in-model PreStem for RGB images in [0, 255]: (x - mean) / std, float32."""
    return (jnp.asarray(images).astype(jnp.float32) - _MEAN) / _STD


class LayerScale(nn.Module):
    """Keras convnext.LayerScale: a learned per-channel scale ``gamma`` (init 1e-6)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(_LAYER_SCALE_INIT), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(self.dtype)


class ConvNeXtTiny(Backbone):
    """ConvNeXt-Tiny (Keras convnext.py): 4x4/4 stem, 2x2/2 downsamplings, blocks of a 7x7
    depthwise conv, LayerNorm, a 4x MLP with exact GELU and a LayerScale on a residual."""

    stages: ClassVar[tuple[str, ...]] = STAGES
    trainable_from: ClassVar[str] = DEFAULT_TRAINABLE_FROM
    weight_file: ClassVar[WeightFile] = WEIGHT_FILE
    keras_groups: ClassVar[dict[str, tuple[str, ...]]] = KERAS_GROUPS
    preprocess_input = staticmethod(preprocess)
    keras_layer_order = staticmethod(keras_layer_order)

    def _ln(self, name):
        return nn.LayerNorm(epsilon=_EPS, use_fast_variance=False, dtype=self.dtype,
                            param_dtype=jnp.float32, name=name)

    def _dense(self, name, features):
        return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=nn.initializers.glorot_uniform(), name=name)

    def stage(self, name, x, train):
        del train  # LayerNorm has no train mode; Keras's ConvNeXtTiny has no drop path
        if name == HEAD_NORM:
            return self._ln(HEAD_NORM)(x)
        if name == f"{PREFIX}_stem":
            x = self._conv(f"{PREFIX}_stem_conv", DIMS[0], 4, 4, "VALID")(x)
            return self._ln(f"{PREFIX}_stem_layernorm")(x)
        if "_downsampling_block_" in name:
            i = int(name.rsplit("_", 1)[1])
            x = self._ln(f"{PREFIX}_downsampling_layernorm_{i}")(x)
            return self._conv(f"{PREFIX}_downsampling_conv_{i}", DIMS[i + 1], 2, 2, "VALID")(x)
        width = x.shape[-1]
        y = self._conv(f"{name}_depthwise_conv", width, 7, 1, "SAME", depthwise=True)(x)
        y = self._ln(f"{name}_layernorm")(y)
        y = nn.gelu(self._dense(f"{name}_pointwise_conv_1", 4 * width)(y), approximate=False)
        y = self._dense(f"{name}_pointwise_conv_2", width)(y)
        return x + LayerScale(self.dtype, name=f"{name}_layer_scale")(y)
