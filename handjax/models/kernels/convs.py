"""Every 2-D convolution algorithm handjax runs, and the one policy that picks among them.

Algorithms (all take the same parameters, so weights load the same way in every mode):

    "xla"       ``lax.conv`` (``conv_general_dilated``); depthwise: grouped
    "im2col"    one matmul over the kh*kw shifted windows (depthwise: their weighted sum)
    "mmgrad"    ``lax.conv`` forward and input gradient, the kernel gradient as matmuls
                (stride-1 dense convs only)
    "winograd"  Winograd's F(2x2, 3x3) (3x3 stride-1 dense convs only)
    "winograd4" Winograd's F(4x4, 3x3): fewer multiplies, ~10x the rounding (3x3 stride-1
                dense convs only; the table's choice for float32 forward-only convs with
                at least 64 input channels, a tuner candidate elsewhere)
    "matmul"    im2col's forward, and both gradients as ``dot_general`` over im2col patches
                with float32 accumulation (custom VJP; stride-1 dense convs only)

A conv that the chosen algorithm cannot compute runs "im2col" (:func:`conv_algorithm`).

``conv_impl="auto"`` (the default) is the run's :class:`~handjax.models.kernels.plan.ConvPlan`,
an argument of every ``Conv`` (``plan``): per conv, the algorithm the tuner found clearly
faster than the table's on the machine that made the plan, else the table's
(:mod:`handjax.models.kernels.tuning` resolves it once per run, before tracing); with no plan,
and for convs the plan does not list, the table below. ``conv_impl="table"`` is the table alone: :func:`conv_policy`, from the
backend, the map size P (output pixels per image), the compute dtype, whether the conv is 3x3
stride-1 dense ("w": Winograd applies) and the program's *purpose* (a field of ``Conv`` and
``Backbone``; :func:`for_purpose` clones a module into another)::

    purpose       the program                      CPU, float32
    "train"       may differentiate the backbone   P >= 784: mmgrad; w and P >= 49: winograd;
                                                   else im2col
    "frozen"      forward, one set of weights      w and cin >= 64: winograd4; else xla
    "eval_folds"  forward, vmapped or mapped over  w and cin >= 64: winograd4; w and P <= 784:
                  per-fold weights                 winograd; else as "train"

    CPU, bfloat16, every purpose: w, P >= 49 and cin >= 64: winograd (float32 transforms,
    bfloat16 products accumulated in float32); else "train": matmul; "frozen" and
    "eval_folds": P >= 784: mmgrad, else im2col.
    Off CPU, every purpose, every dtype: xla.

Why (measured on this project's CPU, VGG19 at 112 px, batch 16): XLA:CPU runs forward convs
near its matmul peak, but its conv *gradients* are slow (and 50-150x slower inside
``lax.scan`` bodies). Training: below 28x28 the im2col matmul beat mmgrad, above it mmgrad
won by 1.1-1.7x; from 10x10 to 28x28 Winograd's train step beat both for float32 3x3 stride-1
convs (14x14x512: 1.6x) and on 7x7 tied with im2col in an early measurement, then (its
custom VJP since) beat it: VGG19's phase-2 epoch at 112 px, 5 folds vmapped, 2-core AMD EPYC,
best of 3 interleaved, 2026-12-06: 8.0 s against im2col's 10.0 s. Forward only, Winograd beat ``lax.conv``
on maps up to 28x28 (VGG19 blocks 3/4/5: 1.1x/1.7x/1.4x) and lost on larger ones (0.5-0.8x);
F(4x4, 3x3) beat both on every VGG19 prefix conv with 64 or more input channels (112 px,
2-core AMD EPYC, per image: 112x112x64 4.2 ms against lax.conv's 5.1; 56x56x128 3.0 against
4.6; 28x28x256 2.9 against Winograd F(2x2)'s 4.7; 14x14x512 2.0 against 2.2) and lost on the
RGB layer (1.0 against 0.5 ms). Its rounding through all of VGG19 measured 2.3e-6 of the
output's scale against ``lax.conv`` (tests/test_models_backbones.py holds it to 1e-4).
Under vmap over per-fold weights ``lax.conv`` becomes grouped convolutions, slow on XLA:CPU,
hence "eval_folds" keeps "train"'s matmul forms, and there too F(4x4, 3x3) beat F(2x2, 3x3)
with enough rows a call (VGG19's block5 convs, 512 channels, 5 folds vmapped, 2026-12-06:
7x7 maps 50 images a fold 1.14x, 150 images 1.73x; 4x4 maps 240 images 1.28x; 30 images at
7x7 a tie), hence the evaluation's calls of the most rows its memory bound allows
(:func:`handjax.train.fold_program.eval_columns`). In bfloat16 "im2col"'s float32-accumulating
matmul runs on AMX where the CPU has it; "matmul" keeps the gradients on that form too
(autodiff of im2col, and mmgrad's bf16 ``lax.conv``, have no fast path there). Winograd
F(2x2, 3x3) beat both in bfloat16 on every VGG19 map from 7x7 to 112x112 with 64 or more input
channels, forward and train step (2-core AMD EPYC with ``avx512_bf16``, no AMX, 2026-12-06;
the numbers in docs/performance.md): its products are canonical bf16 x bf16 -> float32
batched dots, the one form XLA:CPU runs on the bf16 dot instructions, and its transforms
stay float32, so it keeps F(2x2)'s 2.25x fewer multiplies without im2col's copies.
Unmeasured on an AMX CPU, where im2col's matmul may run faster; the tuner times both there.
Whether bf16 pays at all on a CPU is :func:`bf16_pays`'s call (``model.dtype="auto"``).
Off CPU ``lax.conv`` is cuDNN's.

:func:`describe` says, from a ``Conv`` and its input shape alone, what it runs; it reads no
file and keeps no state (:func:`handjax.models.backbones.conv_layers` collects it per model).
"""

from __future__ import annotations

import contextvars
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from handjax.models.kernels.plan import CONV_IMPLS, ConvPlan, layer_key
from handjax.models.kernels.algorithms import (_explicit_pads, _lax_conv, conv_im2col, conv_matmul, conv_mmgrad, conv_winograd, conv_winograd4, depthwise_im2col, winograd4_kernel, winograd_kernel)

# The algorithms themselves (what "auto" measures, and "table" chooses among).
PURPOSES = ("train", "frozen", "eval_folds")

# Thresholds of conv_policy (output pixels per image); see the module docstring.
_MMGRAD_MIN_PIXELS = 28 * 28
_WINOGRAD_MIN_PIXELS = 7 * 7
_WINOGRAD_FORWARD_MAX_PIXELS = 28 * 28
_MIN_CHANNELS = 64   # input channels of a forward float32 conv run by winograd4, and of a
                     # bfloat16 conv run by winograd (fewer: the RGB layer keeps its choice)


# ----------------------------------------------------------------------------- the policy


def check_conv_impl(impl: str) -> None:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"conv purpose must be one of {PURPOSES}, got {purpose!r}")


def conv_policy(backend: str, out_pixels: int, dtype, purpose: str, *, winograd_ok: bool,
                in_channels: int | None = None) -> str:
    """What ``conv_impl="table"`` means for one conv (the table in the module docstring; also
    ``"auto"``'s choice for a conv the tuner has not measured).

    ``backend``: ``jax.default_backend()``; ``out_pixels``: output pixels per image;
    ``dtype``: the compute dtype; ``purpose``: one of :data:`PURPOSES`; ``winograd_ok``:
    the conv is 3x3, stride 1, not depthwise; ``in_channels``: its input channels (None:
    many). Returns "xla", "im2col", "mmgrad", "winograd", "winograd4" or "matmul"
    (:func:`conv_algorithm` then falls back to "im2col" where
    "mmgrad" or "matmul" does not apply).
    """
    check_purpose(purpose)
    if backend != "cpu":
        return "xla"
    float32 = jnp.dtype(dtype) == jnp.float32
    if (not float32 and winograd_ok and out_pixels >= _WINOGRAD_MIN_PIXELS
            and (in_channels or _MIN_CHANNELS) >= _MIN_CHANNELS):
        return "winograd"   # float32 transforms, bfloat16 products: every purpose
    if purpose == "train" and not float32:
        return "matmul"
    winograd = winograd_ok and float32
    if purpose != "train" and float32:  # forward only
        if winograd and (in_channels or _MIN_CHANNELS) >= _MIN_CHANNELS:
            return "winograd4"
        if winograd and out_pixels <= _WINOGRAD_FORWARD_MAX_PIXELS:
            return "winograd"
        if purpose == "frozen":
            return "xla"
    if out_pixels >= _MMGRAD_MIN_PIXELS:
        return "mmgrad"
    if winograd and out_pixels >= _WINOGRAD_MIN_PIXELS:
        return "winograd"
    return "im2col"


# CPU flags of the bfloat16 dot instructions XLA:CPU uses: Intel's AMX tiles, and
# avx512_bf16's dot products (Cooper Lake, AMD Zen 4). On a 2-core AMD EPYC with avx512_bf16
# (no AMX), once its 3x3 convs ran Winograd with bf16 products, VGG19's frozen prefix at
# 112 px ran 1.27x faster in bfloat16 and the protocol cell 1.09x (docs/performance.md);
# unmeasured on Intel's avx512_bf16 CPUs. Without either flag XLA:CPU runs a bf16 dot as a
# float32 one plus conversions (measured ~0.8x).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (Linux; elsewhere an empty set)."""
    try:
        text = open(cpuinfo).read()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_pays(backend: str, flags: set[str] | None = None) -> bool:
    """Whether bfloat16 compute beats float32 here: on GPU/TPU always; on CPU only with
    bf16 dot instructions (:data:`BF16_CPU_FLAGS` among ``flags``, default :func:`cpu_flags`)."""
    if backend != "cpu":
        return True
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS)


def conv_algorithm(impl: str, backend: str, out_pixels: int, dtype, purpose: str, *,
                   kernel_size=(3, 3), strides: int = 1, depthwise: bool = False,
                   key: str | None = None, plan: ConvPlan | None = None,
                   in_channels: int | None = None) -> str:
    """The algorithm a conv runs: ``impl`` where it applies, else "im2col" ("mmgrad" and
    "matmul" need a stride-1 dense conv, "winograd" a 3x3 one).

    ``impl="table"``: :func:`conv_policy`'s choice. ``impl="auto"``: ``plan``'s algorithm for
    the conv's :func:`~handjax.models.kernels.plan.layer_key` ``key``, where the plan lists
    it; else the table's. Pure: reads nothing but its arguments.
    """
    check_conv_impl(impl)
    check_purpose(purpose)
    stride1_dense = strides == 1 and not depthwise
    plain3x3 = stride1_dense and tuple(kernel_size) == (3, 3)
    planned = plan.algorithm(key) if impl == "auto" and plan is not None and key else None
    if impl in ("auto", "table"):
        impl = planned or conv_policy(backend, out_pixels, dtype, purpose, winograd_ok=plain3x3,
                                      in_channels=in_channels)
    if ((impl in ("mmgrad", "matmul") and not stride1_dense)
            or (impl in ("winograd", "winograd4") and not plain3x3)):
        return "im2col"
    return impl


# The algorithms that call lax.conv in their forward pass ("xla", and "mmgrad"'s forward):
# the convs that vmap over per-fold kernels turns into grouped convs.
LAX_CONV = frozenset({"xla", "mmgrad"})
# Trained-layer algorithms whose epoch program runs faster on XLA:CPU with the folds unrolled
# (a Python loop inside the trace) than vmapped over per-fold kernels. LAX_CONV: vmap makes
# grouped convs of them (~7x slower). Winograd: VGG19 at 112 px, the phase-2 epoch of 5
# folds (2-core AMD EPYC, interleaved, best of 4): loop 9.78 s, lax.map 11.2 s, vmap 11.9 s
# ("winograd4" is the same kind of program). im2col and matmul vmap into batched matmuls
# about as fast as the loop (vmap 8.0 s, loop 8.3 s) and compile faster.
# The unrolled loop compiles K programs' worth: for Winograd that buys less than it costs in
# a short phase (same epoch, 2026-12-06: loop 7.3 s after a 7.0 s compile, vmap 8.0 s after
# 2.2 s), so Winograd's folds unroll only in a phase of at least UNROLL_MIN_EPOCHS epochs.
UNROLL_FOLDS = LAX_CONV | {"winograd", "winograd4"}
UNROLL_MIN_EPOCHS = 5


def runs_lax_conv(algorithm: str) -> bool:
    """Whether ``algorithm`` calls ``lax.conv`` in its forward pass (:data:`LAX_CONV`)."""
    return algorithm in LAX_CONV


def for_purpose(module: nn.Module, purpose: str) -> nn.Module:
    """``module`` (a ``Backbone`` or ``Conv``) cloned with its convs resolved for
    ``purpose`` (same parameters)."""
    check_purpose(purpose)
    return module.clone(purpose=purpose)


# ----------------------------------------------------------------------------- the layer


# A program that applies fixed weights to many batches (the frozen prefix) may transform the
# Winograd convs' kernels once (:func:`handjax.models.backbones.with_winograd_kernels`) into
# this variable collection; ``Conv`` then reads G g G^T from there instead of recomputing it
# at every call (VGG19's frozen prefix at 112 px, batch 10: 0.305 -> 0.283 s; same values).
TRANSFORMED = "winograd_kernels"
WINOGRAD_KERNELS = {"winograd": (16, winograd_kernel), "winograd4": (36, winograd4_kernel)}


def describe(conv: "Conv", in_shape) -> dict:
    """What ``conv`` runs on inputs of ``in_shape`` (N, H, W, C), from its fields alone:
    ``{"name", "purpose", "dtype", "in_shape" (h, w, cin), "features", "kernel_size",
    "strides", "depthwise", "pads", "key", "algorithm"}`` (``key``:
    :func:`~handjax.models.kernels.plan.layer_key`; ``algorithm``: :func:`conv_algorithm`'s
    under ``conv.plan``). Pure, so a plan can be built and checked without running anything."""
    h, w, cin = (int(d) for d in in_shape[1:])
    dtype = jnp.dtype(conv.dtype).name
    kernel_size = tuple(conv.kernel_size)
    key = layer_key(conv.purpose, dtype, (h, w, cin), conv.features, kernel_size,
                    conv.strides, conv.depthwise)
    out_pixels = -(-h // conv.strides) * -(-w // conv.strides)
    algorithm = conv_algorithm(conv.impl, jax.default_backend(), out_pixels, conv.dtype,
                               conv.purpose, kernel_size=kernel_size, strides=conv.strides,
                               depthwise=conv.depthwise, key=key, plan=conv.plan,
                               in_channels=cin)
    return dict(name=conv.name, purpose=conv.purpose, dtype=dtype, in_shape=(h, w, cin),
                features=conv.features, kernel_size=kernel_size, strides=conv.strides,
                depthwise=conv.depthwise,
                pads=_explicit_pads(conv.padding, (h, w), kernel_size, conv.strides),
                key=key, algorithm=algorithm)


_SHAPES_ONLY = contextvars.ContextVar("handjax_conv_shapes_only", default=False)


def eval_shape(fn, *args):
    """``jax.eval_shape(fn, *args)`` with every :class:`Conv` traced as one ``lax.conv``:
    the same shapes, far fewer operations to trace (Winograd F(4x4, 3x3) is ~30 ms of
    Python a conv; a run traces the prefix's shapes several times). Only for functions
    that apply or init modules directly: a ``jax.jit`` function inside ``fn`` would keep the
    trace made here and reuse it when called for real."""
    token = _SHAPES_ONLY.set(True)
    try:
        return jax.eval_shape(lambda *a: fn(*a), *args)
    finally:
        _SHAPES_ONLY.reset(token)


class Conv(nn.Module):
    """2-D convolution with ``nn.Conv``'s parameters ("kernel" (kh, kw, cin, cout), "bias").

    ``impl`` is one of :data:`CONV_IMPLS` and ``purpose`` one of :data:`PURPOSES`; ``plan``
    the run's :class:`~handjax.models.kernels.plan.ConvPlan` ("auto"'s choices; None: the
    table's). The algorithm that runs is :func:`describe`'s. The parameters are identical
    in every mode, so weights load the same way.
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
    purpose: str = "train"
    plan: ConvPlan | None = None

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
        weights = kernel
        layer = describe(self, x.shape)
        algorithm, pads = layer["algorithm"], layer["pads"]
        if algorithm in WINOGRAD_KERNELS and self.has_variable(TRANSFORMED, "kernel"):
            kernel = self.get_variable(TRANSFORMED, "kernel")   # G g G^T, done once
            if kernel.shape[0] != WINOGRAD_KERNELS[algorithm][0]:
                raise ValueError(f"{self.name}: a pre-transformed kernel of {kernel.shape[0]} "
                                 f"positions cannot run {algorithm}")
        if _SHAPES_ONLY.get():   # convs.eval_shape: any algorithm gives this shape
            y = _lax_conv(x, weights, self.strides, pads, cin if self.depthwise else 1)
        elif algorithm == "mmgrad":
            y = conv_mmgrad(x, kernel, pads)
        elif algorithm == "matmul":
            y = conv_matmul(x, kernel, pads)
        elif algorithm == "winograd":
            y = conv_winograd(x, kernel, pads)
        elif algorithm == "winograd4":
            y = conv_winograd4(x, kernel, pads)
        elif algorithm == "im2col":
            fn = depthwise_im2col if self.depthwise else conv_im2col
            y = fn(x, kernel, self.strides, pads)
        else:
            y = _lax_conv(x, kernel, self.strides, pads, cin if self.depthwise else 1)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
