"""EfficientNetV2-B0, equal to ``keras.applications.EfficientNetV2B0(include_top=False,
pooling=None)``.

Keras keeps its preprocessing inside the model: for the B variants ``Rescaling(1/255)`` then
``Normalization`` by the ImageNet mean/variance (``include_preprocessing=True``), which is
:func:`preprocess` here. BatchNorm: epsilon 1e-3, momentum 0.9; activations swish.

Training mode, as Keras's: BatchNorm uses batch statistics and updates ``batch_stats``, and
each residual block drops its branch for whole images ("drop connect": Keras's
``Dropout(rate, noise_shape=(None, 1, 1, 1))`` before the add) at the rate Keras gives block
``b`` of 21, ``drop_connect_rate * b / 21`` with ``drop_connect_rate=0.2``; this draws from
the ``"dropout"`` rng collection (``apply(..., train=True, rngs={"dropout": key})``).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from handjax.models.common import KERAS_BASE_URL, Backbone, WeightFile

_EPS, _MOMENTUM = 1e-3, 0.9  # Keras BatchNormalization default epsilon; efficientnet_v2 bn_momentum
DROP_CONNECT_RATE = 0.2  # Keras EfficientNetV2 default


class _Group(NamedTuple):  # Keras DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"], width/depth 1.0
    kernel: int
    repeats: int
    cin: int
    cout: int
    expand: int
    se_ratio: float
    stride: int
    fused: bool


GROUPS = (
    _Group(3, 1, 32, 16, 1, 0, 1, True),
    _Group(3, 2, 16, 32, 4, 0, 2, True),
    _Group(3, 2, 32, 48, 4, 0, 2, True),
    _Group(3, 3, 48, 96, 4, 0.25, 2, False),
    _Group(3, 5, 96, 112, 6, 0.25, 1, False),
    _Group(3, 8, 112, 192, 6, 0.25, 2, False),
)
TOP_FILTERS = 1280


class Block(NamedTuple):
    prefix: str  # Keras's layer-name prefix, e.g. "block4a_"
    index: int  # b in 0..20: Keras's drop-connect rate is drop_connect_rate * b / 21
    kernel: int
    cin: int
    cout: int
    expand: int
    se_ratio: float
    stride: int
    fused: bool

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    @property
    def out(self) -> str:
        """The Keras layer whose output is the block's output."""
        if self.residual:
            return f"{self.prefix}add"
        return f"{self.prefix}project_{'activation' if self.fused and self.expand == 1 else 'bn'}"


def blocks() -> tuple[Block, ...]:
    """Every block as Keras builds it: the first of a group strides and changes width."""
    out = []
    for g, group in enumerate(GROUPS, 1):
        for j in range(group.repeats):
            cin, stride = (group.cin, group.stride) if j == 0 else (group.cout, 1)
            out.append(Block(f"block{g}{chr(97 + j)}_", len(out), group.kernel, cin, group.cout,
                             group.expand, group.se_ratio, stride, group.fused))
    return tuple(out)


STAGES = ("stem_activation",) + tuple(b.out for b in blocks()) + ("top_activation",)

# Phase 2 unfreezes the last block group and the top: blocks 6a-6h (192 channels at 1/32
# scale) plus top_conv/top_bn (192 -> 1280), 4.5M of the 5.9M variables. This is the
# counterpart of MobileNetV2's blocks 13-16 + Conv_1 (its 1/32 stage and final 1x1 conv,
# the study's choice for the other inverted-residual net) and of ResNet50's conv5.
# EfficientNetV2 puts most of its parameters in that last group, but its maps there are the
# smallest, so a tuning step stays cheap while the frozen prefix (stem to 5e) is computed
# once per image.
DEFAULT_TRAINABLE_FROM = blocks()[-GROUPS[-1].repeats - 1].out  # "block5e_add"

WEIGHT_FILE = WeightFile(
    "efficientnetv2-b0_notop.h5",
    KERAS_BASE_URL + "efficientnet_v2/efficientnetv2-b0_notop.h5",
    "893217f2bb855e2983157299931e43ff",  # MD5, Keras efficientnet_v2.py WEIGHTS_HASHES["b0"][1]
)


def _block_layers(b: Block) -> list[str]:
    """A block's weighted layers in Keras's order."""
    p = b.prefix
    expand = [f"{p}expand_conv", f"{p}expand_bn"] if b.expand != 1 else []
    depthwise = [] if b.fused else [f"{p}dwconv2", f"{p}bn"]
    se = [f"{p}se_reduce", f"{p}se_expand"] if b.se_ratio else []
    return expand + depthwise + se + [f"{p}project_conv", f"{p}project_bn"]


def keras_layer_order() -> tuple[str, ...]:
    """The weighted layers of Keras's model in ``model.layers`` order (= HDF5 group order)."""
    order = ["stem_conv", "stem_bn"] + [n for b in blocks() for n in _block_layers(b)]
    return tuple(order + ["top_conv", "top_bn"])


# Rescaling(1/255) then Normalization(mean, variance) of include_preprocessing=True.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.sqrt(np.array([0.229**2, 0.224**2, 0.225**2], np.float32))


def preprocess(images) -> jax.Array:
    """Keras's in-model preprocessing for RGB images in [0, 255]: (x / 255 - mean) / std."""
    return (jnp.asarray(images).astype(jnp.float32) * np.float32(1.0 / 255) - _MEAN) / _STD


class EfficientNetV2B0(Backbone):
    """EfficientNetV2-B0 (Keras efficientnet_v2.py): fused MBConv groups 1-3, MBConv with
    squeeze-and-excite groups 4-6; every conv "same"-padded as TF pads (extra pixel at the
    end), which is XLA's "SAME"."""

    drop_connect_rate: float = DROP_CONNECT_RATE
    stages: ClassVar[tuple[str, ...]] = STAGES
    trainable_from: ClassVar[str] = DEFAULT_TRAINABLE_FROM
    weight_file: ClassVar[WeightFile] = WEIGHT_FILE
    preprocess_input = staticmethod(preprocess)
    keras_layer_order = staticmethod(keras_layer_order)

    def _conv_bn(self, conv, bn, x, features, k, train, stride=1, depthwise=False):
        x = self._conv(conv, features, k, stride, "SAME", use_bias=False, depthwise=depthwise)(x)
        return self._bn(bn, train, _EPS, _MOMENTUM)(x)

    def stage(self, name, x, train):
        if name == "stem_activation":
            return nn.swish(self._conv_bn("stem_conv", "stem_bn", x, GROUPS[0].cin, 3, train, 2))
        if name == "top_activation":
            return nn.swish(self._conv_bn("top_conv", "top_bn", x, TOP_FILTERS, 1, train))
        return self._block(blocks()[STAGES.index(name) - 1], x, train)

    def _block(self, b: Block, x, train):
        p, width = b.prefix, b.cin * b.expand
        y = x
        if b.expand != 1:  # fused: the kxk conv expands and strides; else a 1x1 expansion
            k, stride = (b.kernel, b.stride) if b.fused else (1, 1)
            y = nn.swish(self._conv_bn(f"{p}expand_conv", f"{p}expand_bn", y, width, k, train, stride))
        if not b.fused:
            y = nn.swish(self._conv_bn(f"{p}dwconv2", f"{p}bn", y, width, b.kernel, train, b.stride, True))
        if b.se_ratio:
            y = y * self._squeeze_excite(p, y, max(1, int(b.cin * b.se_ratio)))
        k, stride = (1, 1) if b.expand != 1 else (b.kernel, b.stride)
        y = self._conv_bn(f"{p}project_conv", f"{p}project_bn", y, b.cout, k, train, stride)
        if b.fused and b.expand == 1:
            y = nn.swish(y)
        if not b.residual:
            return y
        rate = self.drop_connect_rate * b.index / len(blocks())
        if rate:  # Keras: Dropout(rate, noise_shape=(None, 1, 1, 1)), whole images
            y = nn.Dropout(rate, broadcast_dims=(1, 2, 3), deterministic=not train, name=f"{p}drop")(y)
        return y + x

    def _squeeze_excite(self, p, y, filters_se):
        se = jnp.mean(y.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        se = nn.swish(self._conv(f"{p}se_reduce", filters_se, 1)(se))
        return nn.sigmoid(self._conv(f"{p}se_expand", y.shape[-1], 1)(se))
