"""Keras Applications ImageNet backbones ported to Flax linen, with Keras-file weight loading.

VGG16, VGG19, ResNet50 and MobileNetV2 (alpha 1.0), NHWC, each equal to
``keras.applications.<Model>(include_top=False, pooling=None)`` with a fixed input shape.
Every layer is named exactly as Keras names it, so the weight converter is a short map.

Public API::

    NAMES                                   # ("vgg16", "vgg19", "resnet50", "mobilenetv2")
    module, variables = load(name, weights=None | "imagenet" | path, seed=0)
    features = module.apply(variables, preprocess(name, images), train=False)
    module.stages                           # ordered block boundaries (Keras layer names)
    module.apply(variables, x, start="block4_pool")   # run only the layers after a boundary

``weights="imagenet"`` reads ``$HANDJAX_CACHE/weights/<file>`` (default ``~/.cache/handjax``),
downloading Keras's own ``include_top=False`` file there once, hash-checked.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm import tqdm

NAMES = ("vgg16", "vgg19", "resnet50", "mobilenetv2")

# The boundary after which phase-2 fine-tuning unfreezes (VGG block5, ResNet conv5,
# MobileNetV2 blocks 13-16 and the final 1x1 conv), as in the study's Keras code.
DEFAULT_TRAINABLE_FROM = {
    "vgg16": "block4_pool",
    "vgg19": "block4_pool",
    "resnet50": "conv4_block6_out",
    "mobilenetv2": "block_12_add",
}

CONV_IMPLS = ("auto", "xla", "im2col", "mmgrad", "winograd")


# ----------------------------------------------------------------------------- conv layers


# "auto" on CPU: below this many output pixels per image the im2col matmul beat mmgrad
# (VGG19 112 px, batch 16: blocks 4-5 at 14x14 / 7x7 px); above it mmgrad won by 1.1-1.7x.
_MMGRAD_MIN_PIXELS = 28 * 28
# ... and from this many up (to 28x28) Winograd's train step beat both, for float32 3x3
# stride-1 convs (14x14x512, batch 16: 1.6x); on 7x7 maps it tied with im2col.
_WINOGRAD_MIN_PIXELS = 10 * 10
# Forward only (inference, frozen layers), Winograd beat lax.conv on maps up to 28x28 (VGG19
# blocks 3 / 4 / 5 at 112 px: 1.1x / 1.7x / 1.4x) and lost on larger ones (0.5-0.8x).
_WINOGRAD_FORWARD_MAX_PIXELS = 28 * 28
# "auto" for programs that never differentiate the backbone (see inference_impl).
_AUTO_FORWARD = "auto_forward"
_AUTO_FORWARD_FOLDS = "auto_forward_folds"


def inference_impl(impl: str, dtype=jnp.float32, per_fold: bool = False) -> str:
    """The conv mode for a program that only runs the backbone forward: "auto" in float32
    becomes, on CPU, Winograd for 3x3 stride-1 convs on maps up to 28x28 and, for the other
    convs, ``lax.conv`` (which XLA runs near its matmul peak forward) with one set of
    weights (the frozen-feature passes), or "auto"'s choice when ``per_fold`` (programs
    vmapped over per-fold weights, where ``lax.conv`` would become grouped convolutions,
    slow on XLA:CPU, and where the fold mapping was chosen for "auto"'s convs). Off CPU
    ``lax.conv``. Explicit modes and bfloat16 (whose "auto" matmuls use AMX) are kept."""
    if impl != "auto" or jnp.dtype(dtype) != jnp.float32:
        return impl
    return _AUTO_FORWARD_FOLDS if per_fold else _AUTO_FORWARD


def for_inference(backbone: nn.Module, dtype, per_fold: bool = False) -> nn.Module:
    """``backbone`` with its convs in :func:`inference_impl`'s mode (same parameters)."""
    return backbone.clone(conv_impl=inference_impl(backbone.conv_impl, dtype, per_fold))


def resolve_conv_impl(impl: str, out_pixels: int | None = None, winograd: bool = False) -> str:
    """The algorithm ``impl`` means here: "auto" is "xla" off CPU; on CPU (where XLA's
    kernel gradients are slow) "mmgrad" for maps of at least 28x28 output pixels,
    "winograd" below that down to 10x10 where the conv allows it (``winograd``: a float32
    3x3 stride-1 conv) and "im2col" otherwise (or when ``out_pixels`` is unknown);
    "auto_forward(_folds)": see :func:`inference_impl`. In
    bfloat16, "im2col"'s float32-accumulating matmul (:func:`_matmul`) runs on AMX where the
    CPU has it, but building its patches costs more than that gains on large maps."""
    autos = ("auto", _AUTO_FORWARD, _AUTO_FORWARD_FOLDS)
    if impl not in CONV_IMPLS and impl not in autos:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl not in autos:
        return impl
    if jax.default_backend() != "cpu":
        return "xla"
    if impl != "auto":
        if winograd and out_pixels is not None and out_pixels <= _WINOGRAD_FORWARD_MAX_PIXELS:
            return "winograd"
        if impl == _AUTO_FORWARD:
            return "xla"
    if out_pixels is not None and out_pixels >= _MMGRAD_MIN_PIXELS:
        return "mmgrad"
    if winograd and out_pixels is not None and out_pixels >= _WINOGRAD_MIN_PIXELS:
        return "winograd"
    return "im2col"


def _explicit_pads(padding, spatial, kernel_size, stride):
    """(lo, hi) pads per spatial dim; "SAME" follows XLA/TF (extra pixel at the end)."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(spatial, kernel_size, (stride, stride), padding))
    return tuple(tuple(p) for p in padding)


def _shifted_slices(x, kernel_size, stride, pads):
    """The kh*kw strided windows of the padded input, each shaped like the conv output."""
    kh, kw = kernel_size
    if any(p for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    return [
        x[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]


def conv_im2col(x, kernel, stride, pads):
    """Convolution as one matmul over the concatenated shifted windows.

    Autodiff of this form is matmuls and slices, which XLA:CPU runs ~2x faster than
    the gradient of ``lax.conv`` (measured on VGG19 train steps).
    """
    kh, kw, cin, cout = kernel.shape
    cols = _shifted_slices(x, (kh, kw), stride, pads)
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    # Concatenation order (i, j, c) matches kernel.reshape's row-major (kh, kw, cin) order.
    return _matmul(patches, kernel.reshape(kh * kw * cin, cout))


def _matmul_f32(a, b):
    """``a @ b`` accumulated and returned in float32, whatever the operands' dtype: for
    bfloat16 operands the accurate form, and the one XLA:CPU runs on AMX tiles where the
    CPU has them (measured 4-5x its float32 peak on a Sapphire Rapids Xeon, against ~1x for
    a bfloat16 ``lax.conv`` or a bfloat16-accumulating matmul)."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _matmul(a, b):
    """:func:`_matmul_f32` rounded back to the operands' dtype."""
    return _matmul_f32(a, b).astype(a.dtype)


def depthwise_im2col(x, kernel, stride, pads):
    """Depthwise convolution (kernel (kh, kw, 1, C)) as a weighted sum of shifted windows."""
    kh, kw, _, _ = kernel.shape
    cols = _shifted_slices(x, (kh, kw), stride, pads)
    taps = kernel.reshape(kh * kw, -1)
    return sum(col * taps[t] for t, col in enumerate(cols))


_KERNEL_GRAD_CHUNK_BYTES = 8 * 2**20


def _kernel_grad_one(x, g, kernel_shape, pads):
    """dL/dkernel for one batch chunk (see :func:`_kernel_grad`), in float32."""
    kh, kw, cin, cout = kernel_shape
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    rows, oh, ow = xp.shape[1], g.shape[1], g.shape[2]
    if kh * kw * cin <= kw * cin + kh * cout:  # few input channels (the RGB layer): X^T g
        xs = jnp.stack([xp[:, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)], axis=3)
        return _matmul_f32(xs.reshape(-1, kh * kw * cin).T, g.reshape(-1, cout)).reshape(kernel_shape)
    xs = jnp.stack([xp[:, :, j : j + ow] for j in range(kw)], axis=3)  # b, rows, ow, kw, cin
    gp = jnp.pad(g, ((0, 0), (kh - 1, rows - oh), (0, 0), (0, 0)))
    gs = jnp.stack([gp[:, kh - 1 - i : kh - 1 - i + rows] for i in range(kh)], axis=3)  # g[h - i]
    dw = _matmul_f32(xs.reshape(-1, kw * cin).T, gs.reshape(-1, kh * cout))  # (j, c), (i, o)
    return dw.reshape(kw, cin, kh, cout).transpose(2, 0, 1, 3)


def _kernel_grad(x, g, kernel_shape, pads):
    """dL/dkernel of a stride-1 conv as matmuls: (kw*cin, K) @ (K, kh*cout).

    dW[i, j] = sum_{b,h,w} xpad[b, h+i, w+j] g[b, h, w]. Put the kw column shifts of xpad
    on channels (X) and the kh row shifts of g on channels (G), both on the grid of xpad's
    rows x the output's columns; then X^T G holds every (i, j) tap block. Only kw + kh
    shifted copies are built instead of kh*kw, and the matmul is wide enough to run near
    peak. The batch is scanned in chunks whose copies (~8 MiB) stay in cache, which
    measured 1.3-1.5x faster than one big matmul on VGG's 112-28 px maps.
    """
    b = x.shape[0]
    kh, kw, cin, _ = kernel_shape
    xp_rows = x.shape[1] + sum(pads[0])
    per_image = xp_rows * g.shape[2] * kw * cin * x.dtype.itemsize
    want = max(2, min(b, round(_KERNEL_GRAD_CHUNK_BYTES / per_image)))
    chunk = max(d for d in range(1, want + 1) if b % d == 0)
    if chunk == b:
        return _kernel_grad_one(x, g, kernel_shape, pads)
    split = lambda a: a.reshape(b // chunk, chunk, *a.shape[1:])  # noqa: E731

    def body(acc, xg):  # float32 partial sums (_kernel_grad_one never rounds them)
        return acc + _kernel_grad_one(*xg, kernel_shape, pads), None

    acc = jnp.zeros(kernel_shape, jnp.float32)
    return lax.scan(body, acc, (split(x), split(g)))[0]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_mmgrad(x, kernel, pads):
    """Stride-1 ``lax.conv`` whose kernel gradient is :func:`_kernel_grad`'s matmul.

    The forward pass and the input gradient are forward-type ``lax.conv`` calls (XLA:CPU runs
    those near its matmul peak, also inside ``lax.scan``); only the kernel gradient, slow on
    XLA:CPU and pathologically slow inside loops, is replaced.
    """
    return _lax_conv(x, kernel, 1, pads)


def _mmgrad_fwd(x, kernel, pads):
    return _lax_conv(x, kernel, 1, pads), (x, kernel)


def _mmgrad_bwd(pads, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    # dL/dx: the "full" correlation of g with the flipped, in/out-swapped kernel, written as
    # a plain forward conv. (XLA's own transpose rule runs ~4-7x slower inside lax.scan
    # bodies on XLA:CPU, and its kernel gradient 100x slower there.)
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    (lo_h, hi_h), (lo_w, hi_w) = pads
    dx = _lax_conv(g, flipped, 1, ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w)))
    return dx.astype(x.dtype), _kernel_grad(x, g, kernel.shape, pads).astype(kernel.dtype)


conv_mmgrad.defvjp(_mmgrad_fwd, _mmgrad_bwd)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A per 4x4 input
# tile d and 2x2 output tile Y; 16 multiplies per output tile instead of 36.
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_WINOGRAD_GG = np.kron(_WINOGRAD_G, _WINOGRAD_G)  # (16, 9): G g G^T on a flattened 3x3 g


def _combine(coefs, items):
    """sum(c * item) over the coefficients c in {-1, 0, 1} of B^T and A^T: adds only."""
    out = None
    for c, item in zip(coefs, items):
        if c:
            term = item if c > 0 else -item
            out = term if out is None else out + term
    return out


def conv_winograd(x, kernel, pads):
    """Stride-1 3x3 convolution by Winograd's F(2x2, 3x3): 2.25x fewer multiplies.

    The input is cut into overlapping 4x4 tiles (stride 2, read as contiguous slices of
    its even/odd rows and columns), each transformed by B^T d B; the kernel by G g G^T (one
    (16, 9) matmul); the 16 transformed positions are then 16 matmuls [tiles, cin] x
    [cin, cout] done as one batched matmul, and A^T m A turns each product tile back into
    2x2 outputs. Its autodiff is the same kind of program (transposed adds, and matmuls of
    the same size), so gradients get the same saving. Transforms and sums run in float32;
    the error measured ~1e-6 of the output's scale, like a direct float32 conv.
    """
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    dtype = x.dtype
    (lo_h, hi_h), (lo_w, hi_w) = pads
    oh, ow = h + lo_h + hi_h - 2, w + lo_w + hi_w - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    # Zero rows/columns past the requested padding only feed outputs that are cropped.
    xp = jnp.pad(x.astype(jnp.float32),
                 ((0, 0), (lo_h, 2 * th + 2 - h - lo_h), (lo_w, 2 * tw + 2 - w - lo_w), (0, 0)))
    rows = xp.reshape(n, th + 1, 2, 2 * tw + 2, cin)  # tile row a, row i: rows[:, a + i//2, i%2]
    d = [rows[:, i // 2: i // 2 + th, i % 2] for i in range(4)]
    bt_rows = jnp.stack([_combine(c, d) for c in _WINOGRAD_BT]).reshape(4, n, th, tw + 1, 2, cin)
    e = [bt_rows[:, :, :, j // 2: j // 2 + tw, j % 2] for j in range(4)]
    v = jnp.stack([_combine(c, e) for c in _WINOGRAD_BT], axis=1)  # (4, 4, n, th, tw, cin)
    v = v.reshape(16, n * th * tw, cin).astype(dtype)
    u = (jnp.asarray(_WINOGRAD_GG) @ kernel.astype(jnp.float32).reshape(9, cin * cout)).reshape(16, cin, cout)
    m = _matmul_f32(v, u.astype(dtype)).reshape(4, 4, n, th, tw, cout)
    s = [_combine(c, [m[r] for r in range(4)]) for c in _WINOGRAD_AT]  # p: (4, n, th, tw, cout)
    y = [jnp.stack([_combine(c, [sp[q] for q in range(4)]) for c in _WINOGRAD_AT], axis=3)
         for sp in s]  # p: (n, th, tw, 2, cout)
    y = jnp.stack(y, axis=2).reshape(n, 2 * th, 2 * tw, cout)[:, :oh, :ow]
    return y.astype(dtype)


def _lax_conv(x, kernel, stride, pads, groups=1):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


class Conv(nn.Module):
    """2-D convolution with ``nn.Conv``'s parameters ("kernel" (kh, kw, cin, cout), "bias").

    ``impl`` picks the algorithm ("xla": ``lax.conv``; "im2col": one matmul; "mmgrad":
    ``lax.conv`` with a matmul kernel gradient for stride 1, im2col otherwise; "winograd":
    :func:`conv_winograd` for 3x3 stride 1, im2col otherwise; "auto": see
    :func:`resolve_conv_impl`); the parameters are identical, so weights load the same way
    in every mode.
    ``depthwise=True`` gives Keras's DepthwiseConv2D (multiplier 1), kernel (kh, kw, 1, C).
    Padding: "SAME", "VALID" or explicit ((lo, hi), (lo, hi)).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    padding: Any = "SAME"
    use_bias: bool = True
    depthwise: bool = False
    impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        if self.depthwise and self.features != cin:
            raise ValueError(f"depthwise conv needs features == input channels, got {self.features} vs {cin}")
        shape = (*self.kernel_size, 1 if self.depthwise else cin, self.features)
        # Keras's default initialisers (glorot_uniform kernel, zero bias), so seeded random
        # inits are statistically like Keras's weights=None.
        kernel = self.param("kernel", nn.initializers.glorot_uniform(), shape, jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        pads = _explicit_pads(self.padding, x.shape[1:3], self.kernel_size, self.strides)
        out_pixels = -(-x.shape[1] // self.strides) * -(-x.shape[2] // self.strides)
        plain3x3 = self.strides == 1 and not self.depthwise and tuple(self.kernel_size) == (3, 3)
        impl = resolve_conv_impl(self.impl, out_pixels,
                                 winograd=plain3x3 and jnp.dtype(self.dtype) == jnp.float32)
        if impl == "mmgrad" and self.strides == 1 and not self.depthwise:
            y = conv_mmgrad(x, kernel, pads)
        elif impl == "winograd" and plain3x3:
            y = conv_winograd(x, kernel, pads)
        elif impl in ("im2col", "mmgrad", "winograd"):  # other convs of these modes: im2col
            fn = depthwise_im2col if self.depthwise else conv_im2col
            y = fn(x, kernel, self.strides, pads)
        else:
            y = _lax_conv(x, kernel, self.strides, pads, cin if self.depthwise else 1)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


# ----------------------------------------------------------------------------- architectures


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
    """

    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    stages: ClassVar[tuple[str, ...]] = ()

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
        return Conv(features, (k, k), stride, padding, use_bias, depthwise, self.conv_impl, self.dtype, name=name)

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


class _VGG(Backbone):
    """VGG: 3x3 SAME convs + ReLU, then a 2x2 stride-2 max-pool per block (Keras vgg16.py)."""

    convs_per_block: ClassVar[tuple[int, ...]] = ()
    stages: ClassVar[tuple[str, ...]] = tuple(f"block{b}_pool" for b in range(1, 6))

    def stage(self, name, x, train):
        block = self.stages.index(name) + 1
        features = (64, 128, 256, 512, 512)[block - 1]
        for i in range(1, self.convs_per_block[block - 1] + 1):
            x = nn.relu(self._conv(f"block{block}_conv{i}", features, 3)(x))
        return max_pool_2x2(x)


def max_pool_2x2(x):
    """2x2 stride-2 VALID max-pool as crop + reshape + max (same values as ``nn.max_pool``).

    Its gradient is elementwise (XLA:CPU's select-and-scatter for ``reduce_window`` ran
    4-7x slower on VGG's maps). At ties the gradient is split instead of sent to the first
    maximum; after a ReLU the only likely ties are zeros, whose gradient the ReLU drops.
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16(_VGG):
    convs_per_block: ClassVar[tuple[int, ...]] = (2, 2, 3, 3, 3)


class VGG19(_VGG):
    convs_per_block: ClassVar[tuple[int, ...]] = (2, 2, 4, 4, 4)


# (stack, bottleneck filters, blocks, stride of the first block), Keras resnet.py ResNet50.
_RESNET50_STACKS = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
_RESNET_EPS = 1.001e-5  # Keras resnet.py; Keras BN momentum default 0.99


class ResNet50(Backbone):
    """ResNet50 v1 (Keras resnet.py): stride on the first 1x1 conv, conv shortcut in block 1."""

    stages: ClassVar[tuple[str, ...]] = ("pool1_pool",) + tuple(
        f"conv{s}_block{b}_out" for s, _, n, _ in _RESNET50_STACKS for b in range(1, n + 1)
    )

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


class MobileNetV2(Backbone):
    """MobileNetV2, alpha 1.0 (Keras mobilenet_v2.py), ReLU6, BN eps 1e-3 / momentum 0.999.

    Keras pads stride-2 depthwise convs with ``correct_pad`` + VALID; for a fixed input
    shape that is exactly XLA's "SAME", which is used here.
    """

    stages: ClassVar[tuple[str, ...]] = tuple(
        _mobilenet_prefix(b) + ("add" if residual else "project_BN")
        for b, (_, residual) in enumerate(_mobilenet_block_io())
    ) + ("out_relu",)

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


_MODELS = {"vgg16": VGG16, "vgg19": VGG19, "resnet50": ResNet50, "mobilenetv2": MobileNetV2}


def _check_name(name):
    if name not in _MODELS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {NAMES}")


def build(name: str, *, dtype=jnp.float32, conv_impl: str = "auto") -> Backbone:
    """The Flax module for ``name`` (no parameters). ``dtype`` is the compute dtype."""
    _check_name(name)
    resolve_conv_impl(conv_impl)  # validate early
    return _MODELS[name](dtype=dtype, conv_impl=conv_impl)


def keras_layer_order(name: str) -> tuple[str, ...]:
    """Keras's order of the layers that hold weights (``model.layers`` order), i.e. the
    order of weight groups in Keras's HDF5 files."""
    _check_name(name)
    if name in ("vgg16", "vgg19"):
        convs = _MODELS[name].convs_per_block
        return tuple(f"block{b}_conv{i}" for b, n in enumerate(convs, 1) for i in range(1, n + 1))
    if name == "resnet50":
        order = ["conv1_conv", "conv1_bn"]
        for s, _, n, _ in _RESNET50_STACKS:
            for b in range(1, n + 1):
                p = f"conv{s}_block{b}"
                main = [f"{p}_1_conv", f"{p}_1_bn", f"{p}_2_conv", f"{p}_2_bn"]
                # Keras's topological order interleaves the shortcut of block 1.
                tail = [f"{p}_0_conv", f"{p}_3_conv", f"{p}_0_bn", f"{p}_3_bn"] if b == 1 else [f"{p}_3_conv", f"{p}_3_bn"]
                order += main + tail
        return tuple(order)
    order = ["Conv1", "bn_Conv1"]
    for b in range(len(_MOBILENET_BLOCKS)):
        p = _mobilenet_prefix(b)
        expand = [f"{p}expand", f"{p}expand_BN"] if b else []
        order += expand + [f"{p}depthwise", f"{p}depthwise_BN", f"{p}project", f"{p}project_BN"]
    return tuple(order + ["Conv_1", "Conv_1_bn"])


# ----------------------------------------------------------------------------- preprocessing

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess(name: str, images) -> jax.Array:
    """Keras's ``preprocess_input`` for RGB images in [0, 255] (uint8 or float), as float32.

    VGG16/VGG19/ResNet50 ("caffe"): RGB -> BGR, then subtract the ImageNet BGR means.
    MobileNetV2 ("tf"): x / 127.5 - 1. Pure: the input is never modified.
    """
    _check_name(name)
    x = jnp.asarray(images).astype(jnp.float32)
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last, got shape {x.shape}")
    if name == "mobilenetv2":
        return x / 127.5 - 1.0
    return x[..., ::-1] - jnp.asarray(_CAFFE_MEAN_BGR, jnp.float32)


# ----------------------------------------------------------------------------- Keras HDF5 files


def _attr_strings(group, key):
    """A string-list attribute, bytes or str, possibly chunked as key0, key1, ... (Keras)."""
    if key in group.attrs:
        values = list(group.attrs[key])
    else:
        values, i = [], 0
        while f"{key}{i}" in group.attrs:
            values += list(group.attrs[f"{key}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path) -> list[tuple[str, list[np.ndarray]]]:
    """The weighted layers of a Keras legacy HDF5 weight file, in file order.

    Like Keras's ``load_weights``: follow the root ``layer_names`` attribute, skip layers
    whose ``weight_names`` is empty, read each layer's weights in ``weight_names`` order.
    Names are returned only for messages; matching is by position.
    """
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        out = []
        for layer in _attr_strings(root, "layer_names"):
            group = root[layer]
            arrays = [np.asarray(group[w]) for w in _attr_strings(group, "weight_names")]
            if arrays:
                out.append((layer, arrays))
    return out


def _targets(layer, template):
    """[(collection, key, keras shape, to_flax)] for one layer, in Keras weight order."""
    params = template["params"][layer]
    if layer in template.get("batch_stats", {}):  # BatchNorm: gamma, beta, moving mean, var
        stats = template["batch_stats"][layer]
        return [
            ("params", "scale", params["scale"].shape, None),
            ("params", "bias", params["bias"].shape, None),
            ("batch_stats", "mean", stats["mean"].shape, None),
            ("batch_stats", "var", stats["var"].shape, None),
        ]
    kernel = params["kernel"].shape
    if layer.endswith("_depthwise"):
        # Keras DepthwiseConv2D: (kh, kw, C, multiplier=1); grouped conv wants (kh, kw, 1, C).
        out = [("params", "kernel", (*kernel[:2], kernel[3], kernel[2]), lambda a: a.transpose(0, 1, 3, 2))]
    else:
        out = [("params", "kernel", kernel, None)]
    if "bias" in params:
        out.append(("params", "bias", params["bias"].shape, None))
    return out


def variables_from_keras(name: str, layers, template) -> dict:
    """Assigns Keras weights ``[(file layer name, [arrays])]`` to the model's variables by
    position; any count or shape mismatch raises one ValueError listing every problem."""
    order = keras_layer_order(name)
    problems = []
    if len(layers) != len(order):
        problems.append(f"file has {len(layers)} layers with weights, {name} has {len(order)}")
    out = {col: {} for col in template}
    for k, (ours, (theirs, arrays)) in enumerate(zip(order, layers)):
        targets = _targets(ours, template)
        if len(arrays) != len(targets):
            problems.append(f"layer #{k} {ours} (file: {theirs}): {len(arrays)} weights, expected {len(targets)}")
            continue
        for (col, key, shape, to_flax), a in zip(targets, arrays):
            if tuple(a.shape) != tuple(shape):
                problems.append(f"layer #{k} {ours} (file: {theirs}) {key}: shape {a.shape}, expected {shape}")
                continue
            a = np.asarray(a, np.float32)
            out[col].setdefault(ours, {})[key] = jnp.asarray(to_flax(a) if to_flax else a)
    problems += [f"missing: layer #{k} {ours}" for k, ours in enumerate(order) if k >= len(layers)]
    problems += [f"extra: file layer #{k} {theirs}" for k, (theirs, _) in enumerate(layers) if k >= len(order)]
    if problems:
        raise ValueError(f"weights do not fit {name}: " + "; ".join(problems))
    return out


# ----------------------------------------------------------------------------- ImageNet files


class WeightFile(NamedTuple):
    file: str
    url: str
    md5: str | None  # as published in Keras's applications/*.py; None: none published


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
WEIGHT_FILES = {
    "vgg16": WeightFile(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "vgg19": WeightFile(
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
    ),
    "resnet50": WeightFile(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    # Keras's default for include_top=False without a 96..224 square input_shape: the 224 file.
    "mobilenetv2": WeightFile(
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        _KERAS_BASE + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        None,
    ),
}


def weights_dir() -> Path:
    """``$HANDJAX_CACHE/weights`` (default ``~/.cache/handjax/weights``), read at call time."""
    return Path(os.environ.get("HANDJAX_CACHE", "~/.cache/handjax")).expanduser() / "weights"


def _file_hash(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Streams ``url`` to ``dest`` with a progress bar (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".part")[0]) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))


def _verify(path: Path, spec: WeightFile, record: Path) -> None:
    """MD5 against Keras's published hash, else SHA-256 against the first-use record."""
    if spec.md5 is not None:
        expected, got, algo = spec.md5, _file_hash(path, "md5"), "MD5"
    elif record.exists():
        expected, got, algo = record.read_text().split()[0], _file_hash(path, "sha256"), "SHA-256"
    else:
        return
    if got != expected:
        raise ValueError(f"{algo} hash mismatch for {spec.file}: got {got}, expected {expected}")


class WeightsError(RuntimeError):
    """ImageNet weights could not be obtained (no network, no cached copy)."""


def fetch_weights(name: str) -> Path:
    """Path of the cached ImageNet no-top file for ``name``, downloading it once if absent.

    The download goes to a temporary name in the cache directory, is hash-checked, then
    moved into place atomically; a bad download is deleted. A cached file is re-checked.
    """
    _check_name(name)
    spec = WEIGHT_FILES[name]
    dest = weights_dir() / spec.file
    record = dest.with_name(dest.name + ".sha256")
    if dest.exists():
        try:
            _verify(dest, spec, record)
        except ValueError as e:
            raise ValueError(f"{e}; the cached copy {dest} is corrupt: delete it to download again") from None
        if spec.md5 is None and not record.exists():
            record.write_text(f"{_file_hash(dest, 'sha256')}  {spec.file}\n")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{spec.file}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            _download(spec.url, tmp)
        except OSError as e:  # urllib's URLError and socket errors are OSErrors
            raise WeightsError(
                f"could not download ImageNet weights {spec.file} from {spec.url} ({e}); "
                f"download it by hand and place it at {dest}"
            ) from e
        try:
            _verify(tmp, spec, record)
        except ValueError as e:
            raise ValueError(f"{e}; the download from {spec.url} was deleted") from None
        if spec.md5 is None:  # nothing published: pin this first download
            record.write_text(f"{_file_hash(tmp, 'sha256')}  {spec.file}\n")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ----------------------------------------------------------------------------- entry point


def _template(module):
    """Shapes of every variable, without computing anything."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)  # parameters do not depend on input size
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _random_variables(name, template, seed):
    """Keras's initialisers (glorot_uniform kernels, zero biases, BN identity) drawn with
    NumPy, one stream per layer: eager ``module.init`` compiles every layer shape and
    takes tens of seconds on CPU for MobileNetV2/ResNet50."""
    out = {col: {} for col in template}
    for k, layer in enumerate(keras_layer_order(name)):
        rng = np.random.default_rng([seed, k])
        for col, key, _, _ in _targets(layer, template):
            shape = template[col][layer][key].shape
            if key == "kernel":
                fan_in, fan_out = (np.prod(shape[:-2]) * shape[-2], np.prod(shape[:-2]) * shape[-1])
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                value = rng.uniform(-limit, limit, shape)
            else:
                value = np.ones(shape) if key in ("scale", "var") else np.zeros(shape)
            out[col].setdefault(layer, {})[key] = jnp.asarray(value, jnp.float32)
    return out


def load(name: str, weights=None, *, seed: int = 0, dtype=jnp.float32, conv_impl: str = "auto"):
    """``(module, variables)`` for backbone ``name``.

    ``weights``: None (seeded random init, Keras's initialisers), "imagenet" (Keras's
    ``include_top=False`` ImageNet file, cached under ``$HANDJAX_CACHE/weights``), or the
    path of a Keras legacy HDF5 weight file. ``variables`` is ``{"params": ...}`` plus
    ``"batch_stats"`` for models with BatchNorm; parameters are float32 whatever ``dtype``.
    """
    module = build(name, dtype=dtype, conv_impl=conv_impl)
    template = _template(module)
    if weights is None:
        return module, _random_variables(name, template, seed)
    path = fetch_weights(name) if isinstance(weights, str) and weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return module, variables_from_keras(name, read_keras_h5(path), template)
