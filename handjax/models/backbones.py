"""Keras Applications ImageNet backbones in Flax linen: the architectures and their registry.

VGG16, VGG19, ResNet50 and MobileNetV2 (alpha 1.0) here, ConvNeXt-Tiny
(:mod:`handjax.models.convnext`) and EfficientNetV2-B0 (:mod:`handjax.models.efficientnetv2`)
in their own modules; NHWC, each equal to
``keras.applications.<Model>(include_top=False, pooling=None)`` with a fixed input shape.
Every layer is named exactly as Keras names it, so the weight converter
(:mod:`handjax.models.keras_weights`) is a short map.

    module = build(name)                    # no parameters; load() also gives weights
    features = module.apply(variables, preprocess(name, images), train=False)
    module.stages                           # ordered block boundaries (Keras layer names)
    module.apply(variables, x, start="block4_pool")   # run only the layers after a boundary

``MODELS`` maps each name to its ``Backbone`` subclass (hooks: see
:class:`handjax.models.common.Backbone`); a new architecture is one more entry.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from handjax.models.kernels import convs
from handjax.models.kernels.plan import ConvPlan
from handjax.models.convnext import ConvNeXtTiny
from handjax.models.efficientnetv2 import EfficientNetV2B0
from handjax.models.common import (KERAS_BASE_URL, Backbone, WeightFile, caffe_preprocess, tf_preprocess)

# ----------------------------------------------------------------------------- VGG


def max_pool_2x2(x):
    """2x2 stride-2 VALID max-pool as crop + reshape + max (same values as ``nn.max_pool``).

    Its gradient is elementwise (XLA:CPU's select-and-scatter for ``reduce_window`` ran
    4-7x slower on VGG's maps). At ties the gradient is split instead of sent to the first
    maximum; after a ReLU the only likely ties are zeros, whose gradient the ReLU drops.
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _vgg_file(name):
    file = f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return file, f"{KERAS_BASE_URL}{name}/{file}"


class _VGG(Backbone):
    """VGG: 3x3 SAME convs + ReLU, then a 2x2 stride-2 max-pool per block (Keras vgg16.py)."""

    convs_per_block: ClassVar[tuple[int, ...]] = ()
    stages: ClassVar[tuple[str, ...]] = tuple(f"block{b}_pool" for b in range(1, 6))
    trainable_from: ClassVar[str] = "block4_pool"
    preprocess_input = staticmethod(caffe_preprocess)

    @classmethod
    def keras_layer_order(cls):
        blocks = enumerate(cls.convs_per_block, 1)
        return tuple(f"block{b}_conv{i}" for b, n in blocks for i in range(1, n + 1))

    def stage(self, name, x, train):
        block = self.stages.index(name) + 1
        features = (64, 128, 256, 512, 512)[block - 1]
        for i in range(1, self.convs_per_block[block - 1] + 1):
            x = nn.relu(self._conv(f"block{block}_conv{i}", features, 3)(x))
        return max_pool_2x2(x)


class VGG16(_VGG):
    convs_per_block: ClassVar[tuple[int, ...]] = (2, 2, 3, 3, 3)
    weight_file: ClassVar[WeightFile] = WeightFile(*_vgg_file("vgg16"), "6d6bbae143d832006294945121d1f1fc")


class VGG19(_VGG):
    convs_per_block: ClassVar[tuple[int, ...]] = (2, 2, 4, 4, 4)
    weight_file: ClassVar[WeightFile] = WeightFile(*_vgg_file("vgg19"), "253f8cb515780f3b799900260a226db6")


# ----------------------------------------------------------------------------- ResNet50

# (stack, bottleneck filters, blocks, stride of the first block), Keras resnet.py ResNet50.
_RESNET50_STACKS = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
_RESNET_EPS = 1.001e-5  # Keras resnet.py; Keras BN momentum default 0.99


class ResNet50(Backbone):
    """ResNet50 v1 (Keras resnet.py): stride on the first 1x1 conv, conv shortcut in block 1."""

    stages: ClassVar[tuple[str, ...]] = ("pool1_pool",) + tuple(
        f"conv{s}_block{b}_out" for s, _, n, _ in _RESNET50_STACKS for b in range(1, n + 1)
    )
    trainable_from: ClassVar[str] = "conv4_block6_out"
    weight_file: ClassVar[WeightFile] = WeightFile(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        KERAS_BASE_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    )
    preprocess_input = staticmethod(caffe_preprocess)

    @classmethod
    def keras_layer_order(cls):
        order = ["conv1_conv", "conv1_bn"]
        for s, _, n, _ in _RESNET50_STACKS:
            for b in range(1, n + 1):
                p = f"conv{s}_block{b}"
                main = [f"{p}_1_conv", f"{p}_1_bn", f"{p}_2_conv", f"{p}_2_bn"]
                # Keras's topological order interleaves the shortcut of block 1.
                tail = [f"{p}_0_conv", f"{p}_3_conv", f"{p}_0_bn", f"{p}_3_bn"] if b == 1 else [f"{p}_3_conv", f"{p}_3_bn"]
                order += main + tail
        return tuple(order)

    def _conv_bn(self, name, x, features, k, stride, padding, train):
        x = self._conv(f"{name}_conv", features, k, stride, padding)(x)
        return self._bn(f"{name}_bn", train, _RESNET_EPS, 0.99)(x)

    def stage(self, name, x, train):
        if name == "pool1_pool":
            # conv1_pad: 3 zeros on every side, then a VALID 7x7/2 conv; pool1_pad pads
            # zeros (not -inf: inputs are post-ReLU, so the same) then a VALID 3x3/2 pool.
            x = nn.relu(self._conv_bn("conv1", x, 64, 7, 2, ((3, 3), (3, 3)), train))
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        stack, block = (int(v) for v in name[len("conv") : -len("_out")].split("_block"))
        _, filters, _, stride1 = _RESNET50_STACKS[stack - 2]
        stride = stride1 if block == 1 else 1
        prefix = name[: -len("_out")]
        y = nn.relu(self._conv_bn(f"{prefix}_1", x, filters, 1, stride, "VALID", train))
        y = nn.relu(self._conv_bn(f"{prefix}_2", y, filters, 3, 1, "SAME", train))
        y = self._conv_bn(f"{prefix}_3", y, 4 * filters, 1, 1, "VALID", train)
        if block == 1:
            x = self._conv_bn(f"{prefix}_0", x, 4 * filters, 1, stride, "VALID", train)
        return nn.relu(x + y)


# ----------------------------------------------------------------------------- MobileNetV2

# (output filters, stride, expansion) of blocks 0..16, Keras mobilenet_v2.py with alpha 1.0.
_MOBILENET_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)  # fmt: skip
_MOBILENET_EPS, _MOBILENET_MOMENTUM = 1e-3, 0.999  # Keras mobilenet_v2.py sets both


def _mobilenet_block_io():
    """(input channels, has residual add) per block: Keras adds when shapes match."""
    cin, out = 32, []
    for filters, stride, _ in _MOBILENET_BLOCKS:
        out.append((cin, cin == filters and stride == 1))
        cin = filters
    return tuple(out)


def _mobilenet_prefix(block):
    return "expanded_conv_" if block == 0 else f"block_{block}_"


_MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


class MobileNetV2(Backbone):
    """MobileNetV2, alpha 1.0 (Keras mobilenet_v2.py), ReLU6, BN eps 1e-3 / momentum 0.999.

    Keras pads stride-2 depthwise convs with ``correct_pad`` + VALID; for a fixed input
    shape that is exactly XLA's "SAME", which is used here.
    """

    stages: ClassVar[tuple[str, ...]] = tuple(
        _mobilenet_prefix(b) + ("add" if residual else "project_BN")
        for b, (_, residual) in enumerate(_mobilenet_block_io())
    ) + ("out_relu",)
    trainable_from: ClassVar[str] = "block_12_add"
    # Keras's default for include_top=False without a 96..224 square input_shape: the 224 file.
    weight_file: ClassVar[WeightFile] = WeightFile(
        _MOBILENET_FILE, KERAS_BASE_URL + "mobilenet_v2/" + _MOBILENET_FILE, None)
    preprocess_input = staticmethod(tf_preprocess)

    @classmethod
    def keras_layer_order(cls):
        order = ["Conv1", "bn_Conv1"]
        for b in range(len(_MOBILENET_BLOCKS)):
            p = _mobilenet_prefix(b)
            expand = [f"{p}expand", f"{p}expand_BN"] if b else []
            order += expand + [f"{p}depthwise", f"{p}depthwise_BN", f"{p}project", f"{p}project_BN"]
        return tuple(order + ["Conv_1", "Conv_1_bn"])

    def _conv_bn(self, conv, bn, x, features, k, train, stride=1, depthwise=False):
        x = self._conv(conv, features, k, stride, "SAME", use_bias=False, depthwise=depthwise)(x)
        return self._bn(bn, train, _MOBILENET_EPS, _MOBILENET_MOMENTUM)(x)

    def stage(self, name, x, train):
        relu6 = lambda v: jnp.clip(v, 0, 6)  # noqa: E731
        if name == "out_relu":
            return relu6(self._conv_bn("Conv_1", "Conv_1_bn", x, 1280, 1, train))
        block = self.stages.index(name)
        if block == 0:
            x = relu6(self._conv_bn("Conv1", "bn_Conv1", x, 32, 3, train, stride=2))
        filters, stride, expansion = _MOBILENET_BLOCKS[block]
        cin, residual = _mobilenet_block_io()[block]
        p = _mobilenet_prefix(block)
        y = x
        if block:
            y = relu6(self._conv_bn(f"{p}expand", f"{p}expand_BN", y, expansion * cin, 1, train))
        width = y.shape[-1]
        y = relu6(self._conv_bn(f"{p}depthwise", f"{p}depthwise_BN", y, width, 3, train, stride, True))
        y = self._conv_bn(f"{p}project", f"{p}project_BN", y, filters, 1, train)
        return x + y if residual else y


# ----------------------------------------------------------------------------- registry

MODELS: dict[str, type[Backbone]] = {
    "vgg16": VGG16,
    "vgg19": VGG19,
    "resnet50": ResNet50,
    "mobilenetv2": MobileNetV2,
    "convnext_tiny": ConvNeXtTiny,
    "efficientnetv2_b0": EfficientNetV2B0,
}
NAMES = tuple(MODELS)

# The boundary after which phase-2 fine-tuning unfreezes (VGG block5, ResNet conv5,
# MobileNetV2 blocks 13-16 and the final 1x1 conv; ConvNeXt-Tiny and EfficientNetV2-B0: their
# 1/32-scale stage, reasons in their modules). Our choice: the top block, the usual Keras
# fine-tuning recipe (an assumption; the study does not say).
DEFAULT_TRAINABLE_FROM = {name: cls.trainable_from for name, cls in MODELS.items()}


def check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {NAMES}")


def build(name: str, *, dtype=jnp.float32, conv_impl: str = "auto",
          purpose: str = "train", conv_plan: ConvPlan | None = None) -> Backbone:
    """The Flax module for ``name`` (no parameters). ``dtype`` is the compute dtype;
    ``conv_impl``, ``purpose`` and ``conv_plan``: see :mod:`handjax.models.kernels.convs`."""
    check_name(name)
    convs.check_conv_impl(conv_impl)  # validate early
    convs.check_purpose(purpose)
    return MODELS[name](dtype=dtype, conv_impl=conv_impl, purpose=purpose, conv_plan=conv_plan)


def keras_layer_order(name: str) -> tuple[str, ...]:
    """Keras's order of the layers that hold weights (``model.layers`` order), i.e. the
    order of weight groups in Keras's HDF5 files."""
    check_name(name)
    return MODELS[name].keras_layer_order()


def preprocess(name: str, images) -> jax.Array:
    """Keras's ``preprocess_input`` for RGB images in [0, 255] (uint8 or float), as float32.

    VGG16/VGG19/ResNet50 ("caffe"): RGB -> BGR, then subtract the ImageNet BGR means.
    MobileNetV2 ("tf"): x / 127.5 - 1. ConvNeXt-Tiny, EfficientNetV2-B0: the normalisation
    Keras runs inside those models. Pure: the input is never modified.
    """
    check_name(name)
    x = jnp.asarray(images).astype(jnp.float32)
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last, got shape {x.shape}")
    return MODELS[name].preprocess_input(x)


def conv_layers(backbone: Backbone, x, *, start: str | None = None,
                stop: str | None = None) -> list[dict]:
    """:func:`convs.describe` of every conv between boundaries ``start`` and ``stop``, in
    call order, for ``x`` (an array or ``jax.ShapeDtypeStruct``: the output of ``start``).
    Traced on shapes only; nothing runs. The convs are seen through Flax's method
    interceptor for this call alone: no state outlives it."""
    seen: list[dict] = []

    def intercept(next_fun, args, kwargs, context):
        if isinstance(context.module, convs.Conv) and context.method_name == "__call__":
            seen.append(convs.describe(context.module, args[0].shape))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
        convs.eval_shape(lambda x: backbone.init(jax.random.key(0), x, train=False, start=start,
                                               stop=stop), x)
    return seen


def conv_algorithms(backbone: Backbone, x, *, start: str | None = None,
                    stop: str | None = None) -> dict[str, str]:
    """``{layer: algorithm}`` of every conv between boundaries ``start`` and ``stop``, in
    call order (:func:`conv_layers`). E.g. whether trained layers run ``lax.conv``:
    ``any(map(convs.runs_lax_conv, conv_algorithms(b, x, start=split).values()))``."""
    return {l["name"]: l["algorithm"] for l in conv_layers(backbone, x, start=start, stop=stop)}


def with_winograd_kernels(backbone: Backbone, variables: dict, x, *, start: str | None = None,
                          stop: str | None = None) -> dict:
    """``variables`` plus, for each conv between ``start`` and ``stop`` that runs Winograd
    on ``x`` (as for :func:`conv_algorithms`), its kernel transformed once, in the compute
    dtype, into the ``convs.TRANSFORMED`` collection: for programs that apply the same
    weights to many batches. The outputs are the same values. A layer name that runs two
    different Winograd forms (possible only in nested backbones) is left untransformed."""
    forms: dict[str, set] = {}
    for layer in conv_layers(backbone, x, start=start, stop=stop):
        forms.setdefault(layer["name"], set()).add(layer["algorithm"])
    chosen = {name: a.pop() for name, a in forms.items()
              if len(a) == 1 and a <= convs.WINOGRAD_KERNELS.keys()}

    def walk(tree):
        out = {}
        for name, sub in tree.items():
            if not isinstance(sub, dict):
                continue
            if "kernel" in sub and name in chosen:
                kernel = sub["kernel"].astype(backbone.dtype)
                out[name] = {"kernel": convs.WINOGRAD_KERNELS[chosen[name]][1](kernel)}
            elif "kernel" not in sub and (inner := walk(sub)):
                out[name] = inner
        return out

    if not chosen:
        return variables
    return {**variables, convs.TRANSFORMED: jax.jit(walk)(variables["params"])}
