"""Photo augmentation in pure JAX: flip, small rotation/scale/translation, brightness, contrast."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=(
    "max_rotate_deg", "max_scale", "max_translate", "max_brightness", "max_contrast"))
def augment(key, images, *, max_rotate_deg: float = 10.0, max_scale: float = 0.1,
            max_translate: float = 0.08, max_brightness: float = 0.2,
            max_contrast: float = 0.2):
    """Random flip, small rotation/scale/translation, brightness and contrast, per image.

    Pure jax, jit-able; same key -> same output. ``images`` [N, H, W, C] uint8 (result rounded
    and clipped to uint8) or float (result float, unclipped: brightness is a factor and contrast
    acts around the image mean, so any value range works). Pixels pulled from outside the frame
    repeat the edge.
    """
    return augment_with(augment_draws(key, jnp.shape(images)[0]), images, limits=(
        max_rotate_deg, max_scale, max_translate, max_brightness, max_contrast))


def augment_draws(key, n: int):
    """The 7 uniform draws of each of ``n`` images, [n, 7]: row i is the same whatever
    ``n`` (threefry counts per element), so :func:`augment_with` can run in batches."""
    # All per-image draws in one call: one threefry instance instead of one per split and
    # draw under vmap (those took ~0.8 s to compile, the warp itself ~0.1 s).
    return jax.random.uniform(key, (n, 7))


@functools.partial(jax.jit, static_argnames=("limits",))
def augment_with(u, images, *, limits=(10.0, 0.1, 0.08, 0.2, 0.2)):
    """:func:`augment` of ``images`` given their draws ``u`` [N, 7] (:func:`augment_draws`)
    and ``limits`` (max rotation in degrees, scale, translation, brightness, contrast)."""
    x = jnp.asarray(images)
    out = jax.vmap(lambda u, im: _augment_one(u, im, *limits))(u, x.astype(jnp.float32))
    if x.dtype == jnp.uint8:
        return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
    return out.astype(x.dtype)


def _between(u, lo, hi):
    """``u`` in [0, 1) mapped onto [lo, hi)."""
    return lo + (hi - lo) * u


def _augment_one(u, img, max_rotate_deg, max_scale, max_translate, max_brightness,
                 max_contrast):
    """One image's augmentation from its 7 uniform draws ``u``: flip, angle, log-scale,
    shift y, shift x, contrast, brightness."""
    h, w = img.shape[0], img.shape[1]
    img = jnp.where(u[0] < 0.5, img[:, ::-1], img)
    angle = jnp.deg2rad(_between(u[1], -max_rotate_deg, max_rotate_deg))
    scale = jnp.exp(_between(u[2], jnp.log1p(-max_scale), jnp.log1p(max_scale)))
    shift = _between(u[3:5], -max_translate, max_translate) * jnp.array([h, w])
    # inverse map: for each output pixel, where it comes from in the input
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = yy - cy - shift[0], xx - cx - shift[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    sy = (cos * dy - sin * dx) / scale + cy
    sx = (sin * dy + cos * dx) / scale + cx
    img = _bilinear(img, sy, sx)
    contrast = 1 + _between(u[5], -max_contrast, max_contrast)
    brightness = 1 + _between(u[6], -max_brightness, max_brightness)
    mean = img.mean()
    return ((img - mean) * contrast + mean) * brightness


def _bilinear(img, sy, sx):
    h, w = img.shape[0], img.shape[1]
    sy, sx = jnp.clip(sy, 0, h - 1), jnp.clip(sx, 0, w - 1)
    y0, x0 = jnp.floor(sy).astype(jnp.int32), jnp.floor(sx).astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bottom * wy
