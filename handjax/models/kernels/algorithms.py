"""The conv algorithms themselves, each a pure function of (x, kernel, pads) with the same
values as ``lax.conv`` (tested against it and against float64): im2col, mmgrad (im2col
forward, matmul-form kernel gradient), the matmul form with a custom VJP, Winograd
F(2x2, 3x3) (a custom VJP too) and F(4x4, 3x3), and ``lax.conv`` itself. Which one a layer
runs is :mod:`handjax.models.kernels.convs`' decision (its policy and tuner); this module only
computes.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


# ----------------------------------------------------------------------------- im2col


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


def _tn_f32(a, b):
    """``a.T @ b`` (contracting both operands' first dim) in float32.

    float32 operands: XLA:CPU takes the transposed-operand dot at full speed. bfloat16:
    XLA:CPU's fast bf16 dot (bf16 x bf16 -> f32 on AVX512-BF16 / AMX, its YNNPACK library
    fusion) takes only the canonical form, lhs (m, k) contracting its last dim and rhs (k, n)
    its first; a dot with a transposed operand goes to the generic DotThunk, which is slower
    and on some shapes (1x1 maps: VGG's top block at 16 px) rejects the types outright
    ("Unsupported element type for DotThunk: BF16 x BF16 = F32"). So: (b.T @ a).T with b.T
    materialised, and barriers that keep XLA's simplifier from folding either transpose
    back into the dot.
    """
    if a.dtype == jnp.float32:
        return _matmul_f32(a.T, b)
    bt = lax.optimization_barrier(b.T)
    return lax.optimization_barrier(_matmul_f32(bt, a)).T


def _matmul(a, b):
    """:func:`_matmul_f32` rounded back to the operands' dtype."""
    return _matmul_f32(a, b).astype(a.dtype)


def depthwise_im2col(x, kernel, stride, pads):
    """Depthwise convolution (kernel (kh, kw, 1, C)) as a weighted sum of shifted windows."""
    kh, kw, _, _ = kernel.shape
    cols = _shifted_slices(x, (kh, kw), stride, pads)
    taps = kernel.reshape(kh * kw, -1)
    return sum(col * taps[t] for t, col in enumerate(cols))


# ----------------------------------------------------------------------------- mmgrad

_KERNEL_GRAD_CHUNK_BYTES = 8 * 2**20


def _kernel_grad_one(x, g, kernel_shape, pads):
    """dL/dkernel for one batch chunk (see :func:`_kernel_grad`), in float32."""
    kh, kw, cin, cout = kernel_shape
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    rows, oh, ow = xp.shape[1], g.shape[1], g.shape[2]
    if kh * kw * cin <= kw * cin + kh * cout:  # few input channels (the RGB layer): X^T g
        xs = jnp.stack([xp[:, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)], axis=3)
        return _tn_f32(xs.reshape(-1, kh * kw * cin), g.reshape(-1, cout)).reshape(kernel_shape)
    xs = jnp.stack([xp[:, :, j : j + ow] for j in range(kw)], axis=3)  # b, rows, ow, kw, cin
    gp = jnp.pad(g, ((0, 0), (kh - 1, rows - oh), (0, 0), (0, 0)))
    gs = jnp.stack([gp[:, kh - 1 - i : kh - 1 - i + rows] for i in range(kh)], axis=3)  # g[h - i]
    dw = _tn_f32(xs.reshape(-1, kw * cin), gs.reshape(-1, kh * cout))  # (j, c), (i, o)
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


# ----------------------------------------------------------------------------- matmul (custom VJP)

# dot_general dimension numbers ((lhs contracting, rhs contracting), (batch, batch)).
_CHANNELS_BY_ROWS = (((3,), (0,)), ((), ()))  # (b, h, w, K) . (K, cout): contract K
_ROWS_BY_COLUMNS = (((1,), (0,)), ((), ()))   # (cout, n) . (n, K): contract the n pixels


def _patches(x, kernel_size, pads):
    """(b, oh, ow, kh*kw*cin): the stride-1 windows in kernel.reshape's (kh, kw, cin) order."""
    cols = _shifted_slices(x, kernel_size, 1, pads)
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _patch_dot(x, kernel, pads):
    """Stride-1 conv as one dot_general of x's patches with the (K, cout) kernel, in float32."""
    kh, kw, cin, cout = kernel.shape
    return lax.dot_general(_patches(x, (kh, kw), pads), kernel.reshape(kh * kw * cin, cout),
                           _CHANNELS_BY_ROWS, preferred_element_type=jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_matmul(x, kernel, pads):
    """Stride-1 conv whose forward pass and both gradients are single ``dot_general`` calls
    over im2col patches, each accumulating in float32 (bfloat16 operands stay bfloat16).

    Forward: patches(x) (b, oh, ow, K) . kernel (K, cout), contracting K. Input gradient:
    the "full" correlation of g with the flipped, in/out-swapped kernel, as the same
    patches dot (so a forward-type matmul, no scatter-add of patch gradients). Kernel
    gradient: patches(x) . g contracting over (b, oh, ow) of both operands at once, so the
    matmul reads the patches as stored. :func:`_kernel_grad_dot` says how.
    """
    return _patch_dot(x, kernel, pads).astype(x.dtype)


def _matmul_fwd(x, kernel, pads):
    return conv_matmul(x, kernel, pads), (x, kernel)


def _matmul_bwd(pads, res, g):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    (lo_h, hi_h), (lo_w, hi_w) = pads
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # small: the weights only
    full = ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w))
    dx = _patch_dot(g, flipped, full)
    dw = _kernel_grad_dot(_patches(x, (kh, kw), pads), g)
    return dx.astype(x.dtype), dw.reshape(kernel.shape).astype(kernel.dtype)


def _kernel_grad_dot(patches, g):
    """patches^T g, (K, cout) in float32, contracting the n = b*oh*ow pixels.

    Written as (g^T . patches)^T: g (n, cout) transposed, a plain (cout, n) . (n, K) dot,
    the product transposed back. XLA folds both transposes into the dot (the optimised
    XLA:CPU program has no transpose or copy left), whereas contracting (b, oh, ow) of
    patches and g directly made XLA:CPU copy the patches (9x g's size) into a transposed
    layout first: that form measured 1.2-1.3x slower (VGG19 block5, 5 folds x 16 images).
    """
    n = g.shape[0] * g.shape[1] * g.shape[2]
    if g.dtype != jnp.float32:   # bfloat16: the canonical form (:func:`_tn_f32`)
        return _tn_f32(patches.reshape(n, -1), g.reshape(n, g.shape[3]))
    gt = g.reshape(n, g.shape[3]).T
    dw_t = lax.dot_general(gt, patches.reshape(n, -1), _ROWS_BY_COLUMNS,
                           preferred_element_type=jnp.float32)
    return dw_t.T


conv_matmul.defvjp(_matmul_fwd, _matmul_bwd)


# ----------------------------------------------------------------------------- Winograd

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


def _transformed(gg, kernel):
    """``gg`` (P, 9) applied to every (cin, cout) 3x3 kernel: (P, cin, cout) float32. A
    kernel of rank 3 is taken as already transformed (as
    :func:`handjax.models.backbones.with_winograd_kernels` stores it)."""
    if kernel.ndim == 3:
        return kernel
    cin, cout = kernel.shape[2:]
    k = kernel.astype(jnp.float32).reshape(9, cin * cout)
    return (jnp.asarray(gg) @ k).reshape(gg.shape[0], cin, cout)


def winograd_kernel(kernel):
    """F(2x2, 3x3)'s G g G^T of a (3, 3, cin, cout) kernel: (16, cin, cout)."""
    return _transformed(_WINOGRAD_GG, kernel)


def winograd4_kernel(kernel):
    """F(4x4, 3x3)'s G g G^T of a (3, 3, cin, cout) kernel: (36, cin, cout)."""
    return _transformed(_WINOGRAD4_GG, kernel)


def conv_winograd(x, kernel, pads):
    """Stride-1 3x3 convolution by Winograd's F(2x2, 3x3): 2.25x fewer multiplies.

    The input is cut into overlapping 4x4 tiles (stride 2, read as contiguous slices of
    its even/odd rows and columns), each transformed by B^T d B; the kernel by G g G^T (one
    (16, 9) matmul); the 16 transformed positions are then 16 matmuls [tiles, cin] x
    [cin, cout] done as one batched matmul, and A^T m A turns each product tile back into
    2x2 outputs. Transforms and sums run in float32; the error measured ~1e-6 of the
    output's scale, like a direct float32 conv.

    Gradients (custom VJP): the two matmuls of the same size against the saved transformed
    tiles and kernel, then the transforms' transposes written as adds of shifted slices (an
    overlap-add for the input), where autodiff of the slicing pads and sums 16 full-size
    copies (VGG19 block5 at 112 px, batch 16, interleaved best of 15: 63.6 ms against 66.7
    per conv; 14x14x512: 167 against 186). A kernel of rank 3 is one already transformed
    (:func:`winograd_kernel`, for fixed weights): forward only.
    """
    if kernel.ndim == 3:
        return _winograd_forward(x, kernel, pads)[0]
    return _winograd_vjp(x, kernel, pads)


def _winograd_geometry(shape, pads):
    """(output rows, output columns, tile rows, tile columns) of a conv of ``shape``."""
    (lo_h, hi_h), (lo_w, hi_w) = pads
    oh, ow = shape[1] + lo_h + hi_h - 2, shape[2] + lo_w + hi_w - 2
    return oh, ow, -(-oh // 2), -(-ow // 2)


def _winograd_tiles(x, pads):
    """B^T d B of every 4x4 input tile: (16, n * th * tw, cin), float32."""
    n, h, w, cin = x.shape
    (lo_h, _), (lo_w, _) = pads
    _, _, th, tw = _winograd_geometry(x.shape, pads)
    # Zero rows/columns past the requested padding only feed outputs that are cropped.
    xp = jnp.pad(x.astype(jnp.float32),
                 ((0, 0), (lo_h, 2 * th + 2 - h - lo_h), (lo_w, 2 * tw + 2 - w - lo_w), (0, 0)))
    rows = xp.reshape(n, th + 1, 2, 2 * tw + 2, cin)  # tile row a, row i: rows[:, a + i//2, i%2]
    d = [rows[:, i // 2: i // 2 + th, i % 2] for i in range(4)]
    bt_rows = jnp.stack([_combine(c, d) for c in _WINOGRAD_BT]).reshape(4, n, th, tw + 1, 2, cin)
    e = [bt_rows[:, :, :, j // 2: j // 2 + tw, j % 2] for j in range(4)]
    v = jnp.stack([_combine(c, e) for c in _WINOGRAD_BT], axis=1)  # (4, 4, n, th, tw, cin)
    return v.reshape(16, n * th * tw, cin)


def _shift_add(first, second, axis):
    """``first`` and ``second`` (one tile row or column later) summed on the grid of the
    tiles plus one: tile a's rows i and tile a-1's rows i+2 land on the same input row."""
    lo = [(0, 0)] * first.ndim
    hi = list(lo)
    lo[axis], hi[axis] = (0, 1), (1, 0)
    return jnp.pad(first, lo) + jnp.pad(second, hi)


def _winograd_tiles_t(dv, shape, pads):
    """The transpose of :func:`_winograd_tiles`: the input's gradient [n, h, w, cin] from
    the tiles' (16, n * th * tw, cin), float32, by overlap-adding B dv B^T."""
    n, h, w, cin = shape
    (lo_h, _), (lo_w, _) = pads
    _, _, th, tw = _winograd_geometry(shape, pads)
    dv = dv.reshape(4, 4, n, th, tw, cin)
    bt = np.asarray(_WINOGRAD_BT).T   # B: d[i] = sum_r B^T[r][i] v[r]
    cols = [[_combine(bt[j], [dv[r, s] for s in range(4)]) for j in range(4)] for r in range(4)]
    dd = [[_combine(bt[i], [cols[r][j] for r in range(4)]) for j in range(4)] for i in range(4)]

    def columns(row):  # the 4 column tiles of one tile row -> (n, th, 2 * tw + 2, cin)
        q = [_shift_add(row[p], row[p + 2], axis=2) for p in range(2)]
        return jnp.stack(q, axis=3).reshape(n, th, 2 * tw + 2, cin)

    rows = [columns(dd[i]) for i in range(4)]
    r = [_shift_add(rows[p], rows[p + 2], axis=1) for p in range(2)]
    xp = jnp.stack(r, axis=2).reshape(n, 2 * th + 2, 2 * tw + 2, cin)
    return xp[:, lo_h:lo_h + h, lo_w:lo_w + w]


def _winograd_out(m, shape, pads):
    """A^T m A of every product tile, cropped: the output [n, oh, ow, cout], float32."""
    n, cout = shape[0], m.shape[-1]
    oh, ow, th, tw = _winograd_geometry(shape, pads)
    m = m.reshape(4, 4, n, th, tw, cout)
    s = [_combine(c, [m[r] for r in range(4)]) for c in _WINOGRAD_AT]  # p: (4, n, th, tw, cout)
    y = [jnp.stack([_combine(c, [sp[q] for q in range(4)]) for c in _WINOGRAD_AT], axis=3)
         for sp in s]  # p: (n, th, tw, 2, cout)
    return jnp.stack(y, axis=2).reshape(n, 2 * th, 2 * tw, cout)[:, :oh, :ow]


def _winograd_out_t(gy, shape, pads):
    """The transpose of :func:`_winograd_out`: (16, n * th * tw, cout) from the output's
    gradient [n, oh, ow, cout], float32."""
    n, cout = shape[0], gy.shape[-1]
    oh, ow, th, tw = _winograd_geometry(shape, pads)
    g = jnp.pad(gy.astype(jnp.float32), ((0, 0), (0, 2 * th - oh), (0, 2 * tw - ow), (0, 0)))
    g = g.reshape(n, th, 2, tw, 2, cout)
    at = np.asarray(_WINOGRAD_AT).T   # dm[r] = sum_p A^T[p][r] g[p]
    gpq = [[g[:, :, p, :, q] for q in range(2)] for p in range(2)]
    cols = [[_combine(at[s], gpq[p]) for s in range(4)] for p in range(2)]
    dm = [_combine(at[r], [cols[p][s] for p in range(2)]) for r in range(4) for s in range(4)]
    return jnp.stack(dm).reshape(16, n * th * tw, cout)


def _winograd_forward(x, kernel, pads):
    dtype = x.dtype
    v = _winograd_tiles(x, pads).astype(dtype)
    u = winograd_kernel(kernel).astype(dtype)
    y = _winograd_out(_matmul_f32(v, u), x.shape, pads).astype(dtype)
    # Residuals: the tiles, the transformed kernel, and (empty) the input's and kernel's
    # shapes and dtypes.
    return y, (v, u, jnp.zeros((0, *x.shape[1:]), x.dtype), jnp.zeros((0,), kernel.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _winograd_vjp(x, kernel, pads):
    return _winograd_forward(x, kernel, pads)[0]


def _winograd_bwd(pads, res, gy):
    v, u, x0, k0 = res
    shape = (gy.shape[0], *x0.shape[1:])
    dm = _winograd_out_t(gy, shape, pads).astype(v.dtype)
    dv = lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    du = jax.vmap(_tn_f32)(v, dm)   # v[p].T @ dm[p] per Winograd position p
    dk = (jnp.asarray(_WINOGRAD_GG).T @ du.reshape(16, -1)).reshape(3, 3, *u.shape[1:])
    return _winograd_tiles_t(dv, shape, pads).astype(x0.dtype), dk.astype(k0.dtype)


_winograd_vjp.defvjp(_winograd_forward, _winograd_bwd)


# Winograd F(4x4, 3x3) (Lavin & Gray 2016): 6x6 input tiles, 4x4 output tiles, 36 multiplies
# per output tile instead of 144 (4x fewer than a direct conv, against F(2x2, 3x3)'s 2.25x),
# at the price of larger transform coefficients, hence more float32 rounding.
_WINOGRAD4_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                 (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WINOGRAD4_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
                 (0, 1, -1, 8, -8, 1))
_WINOGRAD4_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_WINOGRAD4_GG = np.kron(_WINOGRAD4_G, _WINOGRAD4_G).astype(np.float32)  # (36, 9)


def _combine_scaled(coefs, items):
    """sum(c * item) over integer coefficients c (adds where |c| = 1)."""
    out = None
    for c, item in zip(coefs, items):
        if c:
            term = item if c == 1 else -item if c == -1 else c * item
            out = term if out is None else out + term
    return out


def conv_winograd4(x, kernel, pads):
    """Stride-1 3x3 convolution by Winograd's F(4x4, 3x3): 4x fewer multiplies.

    As :func:`conv_winograd`, with 6x6 input tiles at stride 4 (read as contiguous slices of
    the rows and columns by their index mod 4) and 36 transformed positions. Its larger
    transform coefficients (up to 8 and 1/24) cost accuracy: in float32 the error measured
    against a float64 conv is ~1e-5 of the output's scale (VGG-sized channels;
    ``tests/test_models_convs.py``), about 10x F(2x2, 3x3)'s.
    """
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    dtype = x.dtype
    (lo_h, hi_h), (lo_w, hi_w) = pads
    oh, ow = h + lo_h + hi_h - 2, w + lo_w + hi_w - 2
    th, tw = -(-oh // 4), -(-ow // 4)
    xp = jnp.pad(x.astype(jnp.float32),
                 ((0, 0), (lo_h, 4 * th + 4 - h - lo_h), (lo_w, 4 * tw + 4 - w - lo_w), (0, 0)))
    rows = xp.reshape(n, th + 1, 4, 4 * tw + 4, cin)  # tile row a, row i: rows[:, a + i//4, i%4]
    d = [rows[:, i // 4: i // 4 + th, i % 4] for i in range(6)]
    bt_rows = jnp.stack([_combine_scaled(c, d) for c in _WINOGRAD4_BT])
    bt_rows = bt_rows.reshape(6, n, th, tw + 1, 4, cin)
    e = [bt_rows[:, :, :, j // 4: j // 4 + tw, j % 4] for j in range(6)]
    v = jnp.stack([_combine_scaled(c, e) for c in _WINOGRAD4_BT], axis=1)  # (6, 6, n, th, tw, cin)
    v = v.reshape(36, n * th * tw, cin).astype(dtype)
    u = winograd4_kernel(kernel)
    m = _matmul_f32(v, u.astype(dtype)).reshape(6, 6, n, th, tw, cout)
    s = [_combine_scaled(c, [m[r] for r in range(6)]) for c in _WINOGRAD4_AT]
    y = [jnp.stack([_combine_scaled(c, [sp[q] for q in range(6)]) for c in _WINOGRAD4_AT],
                   axis=3) for sp in s]  # p: (n, th, tw, 4, cout)
    y = jnp.stack(y, axis=2).reshape(n, 4 * th, 4 * tw, cout)[:, :oh, :ow]
    return y.astype(dtype)


# ----------------------------------------------------------------------------- lax.conv


def _lax_conv(x, kernel, stride, pads, groups=1):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
