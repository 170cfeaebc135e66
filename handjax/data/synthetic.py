"""The ``synthetic_hands`` renderer: procedural photo-like hands, deterministic for a seed.

**These images are synthetic and medically meaningless**: cartoon-level signs (nodules at the
DIP joints for Heberden's nodes; spindle swelling at PIP/MCP joints and ulnar drift for
rheumatoid arthritis) with a severity whose low end overlaps normal hands. They exist so that
every command runs on a fresh offline machine and to exercise the pipeline, never to judge a
real classifier.
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_SIZE = 256  # native resolution of synthetic_hands; loaders resize from it

# Geometry in "palm widths": a right hand seen from the back, wrist at (0, 0), fingers along +y,
# thumb on the -x (radial) side, little finger on the +x (ulnar) side. Mirrored for left hands.

_PALM = np.array([(-0.36, -0.05), (0.36, -0.05), (0.47, 0.78), (0.40, 0.90), (-0.30, 0.99),
                  (-0.43, 0.80), (-0.47, 0.45)], np.float32)
# index, middle, ring, little: MCP position, resting angle (deg, + = ulnar), phalanx lengths, radius
_FINGERS = (
    ((-0.31, 0.92), -7.0, (0.44, 0.26, 0.21), 0.118),
    ((-0.08, 0.96), -1.0, (0.49, 0.30, 0.22), 0.122),
    ((0.15, 0.92), 5.0, (0.46, 0.28, 0.21), 0.115),
    ((0.35, 0.83), 12.0, (0.36, 0.21, 0.19), 0.100),
)
_SKIN = np.array([(0.96, 0.80, 0.69), (0.92, 0.72, 0.58), (0.80, 0.58, 0.43),
                  (0.66, 0.45, 0.32), (0.50, 0.33, 0.22), (0.36, 0.23, 0.16)], np.float32)


def _unit(deg):
    """Unit vector at ``deg`` from +y, positive toward +x (ulnar)."""
    a = np.deg2rad(deg)
    return np.array([np.sin(a), np.cos(a)], np.float32)


class _Canvas:
    """Height, signed-distance and paint fields of one hand, built primitive by primitive in
    pixel coordinates. Heights blend with a smooth max, so fingers grow webs into the palm."""

    def __init__(self, size: int, blend: float):
        self.size, self.k = size, blend
        self.height = np.full((size, size), -1e3, np.float32)
        self.sd = np.full((size, size), 1e3, np.float32)
        self.red = np.zeros((size, size), np.float32)
        self.nail = np.zeros((size, size), np.float32)
        self.crease = np.zeros((size, size), np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.x, self.y = xx + 0.5, yy + 0.5

    def window(self, lo, hi):
        x0, y0 = np.clip(np.floor(lo).astype(int), 0, self.size)
        x1, y1 = np.clip(np.ceil(hi).astype(int) + 1, 0, self.size)
        return None if x1 <= x0 or y1 <= y0 else (slice(y0, y1), slice(x0, x1))

    def add(self, sl, height, sd):
        k = self.k
        h0, d0 = self.height[sl], self.sd[sl]
        m = np.maximum(k - np.abs(h0 - height), 0.0)
        self.height[sl] = np.maximum(h0, height) + m * m / (4 * k)
        m = np.maximum(k - np.abs(d0 - sd), 0.0)
        self.sd[sl] = np.minimum(d0, sd) - m * m / (4 * k)

    def cone(self, a, b, ra, rb, flat=1.0, z=0.0):
        """A tapered capsule from a to b; elliptic cross-section of height/width ``flat``."""
        pad = max(ra, rb) + self.k
        sl = self.window(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if sl is None:
            return
        px, py = self.x[sl] - a[0], self.y[sl] - a[1]
        ab = b - a
        t = np.clip((px * ab[0] + py * ab[1]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
        d = np.hypot(px - t * ab[0], py - t * ab[1])
        r = ra + (rb - ra) * t
        top = z + flat * np.sqrt(np.maximum(r * r - d * d, 0.0)) - np.maximum(d - r, 0)
        self.add(sl, top, d - r)

    def ellipsoid(self, c, axis, half_len, radius, flat=1.0, z=0.0):
        pad = max(half_len, radius) + self.k
        sl = self.window(c - pad, c + pad)
        if sl is None:
            return
        px, py = self.x[sl] - c[0], self.y[sl] - c[1]
        u = (px * axis[0] + py * axis[1]) / half_len
        v = (-px * axis[1] + py * axis[0]) / radius
        q = np.sqrt(u * u + v * v)
        sd = (q - 1.0) * min(half_len, radius)
        top = z + flat * radius * np.sqrt(np.maximum(1 - q * q, 0.0)) - np.maximum(sd, 0)
        self.add(sl, top, sd)

    def polygon(self, pts, edge, top):
        """A flat-topped slab over a convex polygon, its rim rounded over ``edge`` pixels."""
        sl = self.window(pts.min(0) - self.k - 2, pts.max(0) + self.k + 2)
        px, py = self.x[sl], self.y[sl]
        dist = np.full(px.shape, 1e9, np.float32)
        inside = np.ones(px.shape, bool)
        e1, e2 = pts[1] - pts[0], pts[2] - pts[0]
        orient = np.sign(e1[0] * e2[1] - e1[1] * e2[0])
        for a, b in zip(pts, np.roll(pts, -1, axis=0)):
            ab = b - a
            qx, qy = px - a[0], py - a[1]
            t = np.clip((qx * ab[0] + qy * ab[1]) / float(ab @ ab), 0, 1)
            dist = np.minimum(dist, np.hypot(qx - t * ab[0], qy - t * ab[1]))
            inside &= (ab[0] * qy - ab[1] * qx) * orient >= 0
        sd = np.where(inside, -dist, dist)
        depth = np.clip(-sd, 0, edge)
        h = top * np.sqrt(np.maximum(1 - ((edge - depth) / edge) ** 2, 0)) - np.maximum(sd, 0)
        self.add(sl, h, sd)

    def paint(self, field, c, sigma, amp):
        sl = self.window(c - 3 * sigma, c + 3 * sigma)
        if sl is not None:
            r2 = (self.x[sl] - c[0]) ** 2 + (self.y[sl] - c[1]) ** 2
            np.maximum(field[sl], amp * np.exp(-r2 / (2 * sigma * sigma)), out=field[sl])

    def nail_at(self, tip, axis, length, width):
        c = tip - axis * (0.5 * length + 0.15 * width)
        sl = self.window(c - length, c + length)
        if sl is None:
            return
        px, py = self.x[sl] - c[0], self.y[sl] - c[1]
        u = (px * axis[0] + py * axis[1]) / (0.5 * length)
        v = (-px * axis[1] + py * axis[0]) / (0.5 * width)
        q = np.sqrt(u * u + v * v)
        np.maximum(self.nail[sl], np.clip((1 - q) * width / 2.4, 0, 1), out=self.nail[sl])

    def creases(self, c, axis, radius, strength, n=3):
        """Skin wrinkles across the back of a finger joint."""
        sl = self.window(c - 1.5 * radius, c + 1.5 * radius)
        if sl is None:
            return
        px, py = self.x[sl] - c[0], self.y[sl] - c[1]
        u = (px * axis[0] + py * axis[1]) / radius
        v = (-px * axis[1] + py * axis[0]) / radius
        envelope = np.exp(-(u / 0.35) ** 2 - (v / 0.7) ** 4)
        self.crease[sl] += strength * envelope * np.cos(np.pi * n * (u + 0.08 * v * v)) ** 8


def subject_traits(seed: int, label: int, subject: int) -> dict:
    """What a synthetic person's two hands share: severity (0 for normal), skin tone (an
    index into the skin palette), palm size and finger spread; one stream per subject."""
    rng = np.random.default_rng([seed, label, subject, 7])
    return {"severity": float(rng.uniform() ** 0.8) if label else 0.0,
            "tone": float(rng.uniform(0, len(_SKIN) - 1)),
            "scale": float(rng.uniform(0.30, 0.38)), "spread": float(rng.uniform(0.6, 1.6))}


def photo(seed: int, label: int, i: int, size: int = SYNTHETIC_SIZE) -> tuple[np.ndarray, float]:
    """``synthetic_hands``' photo ``i`` of class ``label`` for ``seed``, and its severity.

    One random stream per (seed, class, index), so the first k hands do not depend on how
    many there are; photos 2j and 2j+1 are one person's left and right hand (severity,
    skin tone, palm size and finger spread shared: :func:`subject_traits`)."""
    traits = subject_traits(seed, label, i // 2)
    image = render_hand(np.random.default_rng([seed, label, i]), label, traits["severity"],
                        size, traits=traits, hand="left" if i % 2 == 0 else "right")
    return image, traits["severity"]


# Fewer photos than this are drawn in this process: starting the workers costs more.
PARALLEL_MIN_PHOTOS = 64


def photos(seed: int, jobs: list[tuple[int, int]], size: int = SYNTHETIC_SIZE):
    """:func:`photo` of each ``(label, i)`` in ``jobs``, in order, yielded as they come.

    Drawing is ~30 ms a photo of numpy and PIL under the GIL (threads gain 1.1x), so many
    photos are drawn in a pool of spawned processes, one per core: they import numpy and
    PIL, not JAX (``handjax.data`` binds nothing heavy), and a fork would copy the threads of
    a JAX process. The photos are the same either way: each has its own random stream.
    Only where a spawned process can start safely (:func:`_spawn_safe`); elsewhere here."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(jobs) < PARALLEL_MIN_PHOTOS or not _spawn_safe():
        for label, i in jobs:
            yield photo(seed, label, i, size)
        return
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        labels, indices = zip(*jobs)
        yield from pool.map(photo, itertools.repeat(seed), labels, indices,
                            itertools.repeat(size), chunksize=8)


def _spawn_safe() -> bool:
    """Whether spawned workers can start without running the user's own code. A spawned
    process first imports the program's main module: a script of the user's without an
    ``if __name__ == "__main__":`` guard would run again in each worker and fail there. So
    the pool is used only when that module is handjax's own (``launch.py``, ``python -m
    handjax...``), pytest's, or absent (``python -c``, an interactive session)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name.split(".")[0] in ("handjax", "pytest")
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    ours = Path(__file__).resolve().parents[2] / "launch.py"
    return Path(path).resolve() == ours


def render_hand(rng: np.random.Generator, label: int, severity: float,
                size: int = SYNTHETIC_SIZE, traits: dict | None = None,
                hand: str | None = None) -> np.ndarray:
    """One synthetic photo (uint8 [size, size, 3]) of a hand of class ``label``.

    normal: straight slim fingers (with the small crooks and knobbly joints of real hands);
    heberden: paired nodules on the back of the DIP joint of 1-4 fingers, fingertip bent
    sideways; ra: spindle swelling and redness at PIP and MCP joints, ulnar drift at the MCPs.
    Sign sizes scale with ``severity`` in [0, 1]; near 0 they are within normal variation.
    ``traits`` (:func:`subject_traits`) fix the person's skin tone, palm size and finger
    spread, ``hand`` ("left"/"right") the side; otherwise ``rng`` draws them.
    """
    s = severity
    scale = size * rng.uniform(0.30, 0.38)  # pixels per palm width
    mirror = -1.0 if rng.random() < 0.5 else 1.0  # left or right hand
    if traits is not None:
        scale = size * traits["scale"]
    if hand is not None:
        mirror = -1.0 if hand == "left" else 1.0
    a = np.deg2rad(rng.uniform(-25, 25))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    center = (np.array([0.5, 0.52]) + rng.uniform(-0.06, 0.06, 2)) * size
    flip = np.array([mirror, -1.0], np.float32)  # image y points down

    def px(p):
        return (rot @ ((np.asarray(p, np.float32) - (0.0, 1.05)) * flip)) * scale + center

    def vec(v):
        return rot @ (np.asarray(v, np.float32) * flip)

    canvas = _Canvas(size, blend=0.05 * scale)
    canvas.cone(px((0.0, 0.1)), px((rng.uniform(-0.15, 0.15), -2.2)), 0.37 * scale, 0.42 * scale,
                flat=0.45)  # forearm
    canvas.polygon(np.stack([px(p) for p in _PALM]), 0.14 * scale, 0.16 * scale)
    _thumb(rng, canvas, px, vec, scale)
    affected = _affected_fingers(rng, label, s)
    drift = (8 + 20 * s) * rng.uniform(0.7, 1.1) if label == 2 else rng.uniform(-2, 3)
    spread = rng.uniform(0.6, 1.6) if traits is None else traits["spread"]
    for i, finger in enumerate(_FINGERS):
        _finger(rng, canvas, px, vec, scale, finger, i, label, s, i in affected, spread, drift)
    return _photograph(rng, canvas, size, None if traits is None else traits["tone"])


def _affected_fingers(rng, label, s) -> set:
    if label == 0:
        return set()
    lo = 1 if label == 1 else 2
    n = int(np.clip(round(lo + (4 - lo) * s * rng.uniform(0.6, 1.2)), lo, 4))
    return set(rng.choice(4, n, replace=False).tolist())


def _thumb(rng, canvas, px, vec, scale):
    ang = rng.uniform(-62, -38)
    cmc = np.array((-0.30, 0.22), np.float32)
    mcp = cmc + _unit(ang - 3) * 0.48
    d1 = _unit(ang + rng.uniform(8, 22))
    ip = mcp + d1 * 0.34
    d2 = _unit(ang + rng.uniform(15, 40))
    tip = ip + d2 * 0.30
    canvas.cone(px(cmc), px(mcp), 0.16 * scale, 0.118 * scale, flat=0.8, z=0.02 * scale)
    canvas.cone(px(mcp), px(ip), 0.118 * scale, 0.108 * scale, flat=0.9)
    canvas.cone(px(ip), px(tip), 0.108 * scale, 0.095 * scale, flat=0.9)
    canvas.nail_at(px(tip + d2 * 0.095), vec(d2), 0.17 * scale, 0.14 * scale)
    canvas.creases(px(ip), vec(d2), 0.11 * scale, 0.25)


def _finger(rng, canvas, px, vec, scale, finger, i, label, s, sick, spread, drift):
    mcp_xy, rest_angle, lengths, radius = finger
    fs = rng.uniform(0.93, 1.07)
    r = radius * rng.uniform(0.92, 1.06)
    ang = rest_angle * spread + rng.uniform(-3, 3) + (drift * (0.8 + 0.15 * i) if label == 2 else 0)
    m = np.array(mcp_xy, np.float32)
    d1 = _unit(ang)
    pip = m + d1 * lengths[0] * fs
    ang2 = ang + rng.uniform(-3, 3)
    d2 = _unit(ang2)
    dip = pip + d2 * lengths[1] * fs
    bend = rng.uniform(-3, 3)
    if label == 1 and sick:  # Heberden's: the fingertip deviates sideways at the DIP
        bend += rng.choice([-1, 1]) * (3 + 14 * s) * rng.uniform(0.6, 1.0)
    if label == 0 and rng.random() < 0.25:  # healthy older hands have crooked fingertips too
        bend += rng.choice([-1, 1]) * rng.uniform(2, 7)
    d3 = _unit(ang2 + bend)
    tip = dip + d3 * lengths[2] * fs
    knob = 1 + (rng.uniform(0.0, 0.08) if label == 0 else 0.0)  # healthy joints are knobbly
    r_pip, r_dip, r_tip = r * 0.93 * knob, r * 0.84 * knob, r * 0.76
    if label == 1 and sick:
        r_dip *= 1 + 0.22 * s
    canvas.cone(px(m), px(pip), r * scale, r_pip * scale)
    canvas.cone(px(pip), px(dip), r_pip * scale, r_dip * scale)
    canvas.cone(px(dip), px(tip), r_dip * scale, r_tip * scale)
    knuckle = 0.075 + (0.06 * s if label == 2 else 0.0)
    canvas.ellipsoid(px(m - d1 * 0.02), vec(d1), knuckle * 1.3 * scale, knuckle * scale,
                     flat=0.6, z=0.05 * scale)
    canvas.nail_at(px(tip + d3 * r_tip), vec(d3), 0.55 * lengths[2] * fs * scale,
                   1.1 * r_tip * scale)
    canvas.creases(px(pip), vec(d2), r_pip * scale, 0.10)
    canvas.creases(px(dip), vec(d3), r_dip * scale, 0.07, n=2)
    if label == 1 and sick:  # Heberden's nodes: paired firm nodules on the back of the DIP
        node = r * (0.30 + 0.40 * s)
        side = vec(np.array((d3[1], -d3[0])))
        for sign in (-1, 1):
            c = px(dip - d2 * 0.02) + sign * side * r_dip * 0.55 * scale
            canvas.ellipsoid(c, vec(d2), node * 1.1 * scale, node * scale, z=r * 0.35 * scale)
            canvas.paint(canvas.red, c, node * scale, 0.25 * s)
    if label == 2 and (sick or s > 0.5):  # RA: fusiform PIP swelling, red swollen joints
        canvas.ellipsoid(px(pip), vec(d1), lengths[0] * 0.42 * fs * scale,
                         r_pip * (1 + 0.55 * s) * scale, z=0.01 * scale)
        canvas.paint(canvas.red, px(pip), r * 1.3 * scale, 0.45 * s)
        canvas.paint(canvas.red, px(m), r * 1.4 * scale, 0.35 * s)


def _photograph(rng, canvas: _Canvas, size: int, tone: float | None = None) -> np.ndarray:
    """Shades the hand, lays it on a cluttered table with its shadow, adds camera effects."""
    f32 = np.float32
    background = _background(rng, size)
    drawn = rng.uniform(0, len(_SKIN) - 1)
    tone = drawn if tone is None else tone
    lo = int(tone)
    skin = (_SKIN[lo] + (tone - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo]))
    skin = (skin * rng.uniform(0.95, 1.05, 3)).astype(f32)
    la = rng.uniform(0, 2 * np.pi)
    texture = _noise(rng, size, 10)
    cover = np.clip(0.5 - canvas.sd, 0, 1)
    # the hand's shadow on the table, cast away from the light
    shadow = Image.fromarray((cover * 255).astype(np.uint8)).transform(
        (size, size), Image.Transform.AFFINE, (1, 0, np.cos(la) * 6, 0, 1, np.sin(la) * 6))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(6)), f32)[..., None] / 255
    img = background * (1 - 0.45 * shadow)
    rows, cols = np.flatnonzero(cover.any(1)), np.flatnonzero(cover.any(0))
    if len(rows):  # shade only the hand's bounding box: most of the frame is background
        box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
        c = cover[box][..., None]
        hand = _shade_skin(canvas, box, skin, texture[box], la)
        img[box] = c * hand + (1 - c) * img[box]
    # uneven lighting over the frame, white balance, sensor noise, lens blur, JPEG
    ramp = np.linspace(-1, 1, size, dtype=f32)
    ga = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0.1, 0.3) * (np.cos(ga) * ramp[None, :] + np.sin(ga) * ramp[:, None])
    white_balance = (rng.uniform(0.93, 1.07, 3) * rng.uniform(0.85, 1.1)).astype(f32)
    img = img * gradient[..., None] * white_balance
    img += rng.standard_normal(img.shape, dtype=f32) * f32(rng.uniform(0.005, 0.02))
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
    return np.asarray(Image.open(buf).convert("RGB"))


def _shade_skin(canvas: _Canvas, box, skin, texture, light_angle) -> np.ndarray:
    """Lambert + a little specular on the height field; redness, nails and creases as paint."""
    f32 = np.float32
    gy, gx = np.gradient(np.maximum(canvas.height[box], 0))
    normal = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([np.cos(light_angle) * 0.6, np.sin(light_angle) * 0.6, 0.8], f32)  # unit
    half = light + np.array([0, 0, 1], f32)
    half /= np.linalg.norm(half)
    diffuse = np.clip(normal @ light, 0, 1)[..., None]
    spec = (np.clip(normal @ half, 0, 1) ** 25)[..., None]
    albedo = skin * (1 + 0.05 * texture)[..., None]
    red = np.clip(canvas.red[box], 0, 1)[..., None]
    albedo = albedo * (1 - 0.5 * red) + red * (0.5 * np.array([0.85, 0.35, 0.33], f32))
    nail = np.clip(canvas.nail[box], 0, 1)[..., None]
    albedo = albedo * (1 - nail) + nail * (0.7 * skin + 0.3 * np.array([0.95, 0.80, 0.78], f32))
    albedo *= (1 - np.clip(canvas.crease[box], 0, 0.5))[..., None]
    return albedo * (0.45 + 0.55 * diffuse) + (0.06 + 0.12 * nail) * spec


def _noise(rng, size: int, cells: int, octaves: int = 2) -> np.ndarray:
    """Smooth value noise, roughly unit amplitude."""
    out = np.zeros((size, size), np.float32)
    for o in range(octaves):
        c = cells * 2 ** o
        small = Image.fromarray(rng.standard_normal((c, c), dtype=np.float32), mode="F")
        out += np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)) / 2 ** o
    return out


def _background(rng, size: int) -> np.ndarray:
    """A table, cloth or patterned surface with everyday clutter near the edges, float [S,S,3]."""
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    kind = rng.integers(3)
    if kind == 0:  # wood
        base = rng.uniform([0.45, 0.28, 0.14], [0.75, 0.55, 0.35]).astype(np.float32)
        across = (np.cos(ang) * ramp[:, None] - np.sin(ang) * ramp[None, :]) * rng.uniform(10, 25)
        grain = 0.5 + 0.5 * np.sin(across + 2.5 * _noise(rng, size, 3))
        img = base * (0.8 + 0.25 * grain[..., None])
    elif kind == 1:  # plain cloth, paper or wall
        base = rng.uniform(0.35, 0.95, 3).astype(np.float32)
        img = (0.5 * base + 0.5 * base.mean()) * (1 + 0.05 * _noise(rng, size, 6, 3)[..., None])
    else:  # checked fabric
        base, other = rng.uniform(0.2, 0.85, (2, 3)).astype(np.float32)
        wave = np.sin(np.arange(size, dtype=np.float32) / rng.uniform(10, 30) * np.pi)
        check = (wave[None, :] * wave[:, None] > 0)[..., None]
        img = np.where(check, base, 0.7 * base + 0.3 * other)
        img = img * (1 + 0.04 * _noise(rng, size, 8)[..., None])
    img = img * (1 + 0.15 * (np.cos(ang) * ramp[None, :] + np.sin(ang) * ramp[:, None]))[..., None]
    pil = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    _clutter(rng, pil)
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    return np.asarray(pil, np.float32) / 255


def _clutter(rng, pil: Image.Image) -> None:
    """Draws books, phones, cups, pens and paper near the frame's edges, with soft shadows."""
    size = pil.size[0]
    items = []
    for _ in range(rng.integers(2, 8)):
        kind, edge = rng.integers(4), rng.integers(4)
        color = tuple(int(c) for c in rng.integers(20, 240, 3))
        cx, cy = rng.uniform(0, size, 2)
        near = rng.uniform(-0.1, 0.2) * size
        cx, cy = [(near, cy), (size - near, cy), (cx, near), (cx, size - near)][edge]
        w, h = rng.uniform(0.08, 0.35, 2) * size
        if kind == 0:  # book or phone
            a = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            corners = np.array([(-w, -h), (w, -h), (w, h), (-w, h)]) / 2 @ rot.T + (cx, cy)
            items.append(("polygon", [tuple(p) for p in corners], color))
        elif kind == 1:  # cup or bottle seen from above
            items.append(("ellipse", [cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], color))
        elif kind == 2:  # pen
            a = rng.uniform(0, np.pi)
            dx, dy = np.cos(a) * w, np.sin(a) * w
            items.append(("line", [cx - dx, cy - dy, cx + dx, cy + dy], color))
        else:  # sheet of paper
            paper = tuple(int(c) for c in rng.integers(200, 250, 3))
            items.append(("polygon", [(cx - w, cy - h), (cx + w, cy - 0.9 * h),
                                      (cx + 1.1 * w, cy + h), (cx - w, cy + h)], paper))
    shadow = Image.new("L", pil.size, 0)
    sdraw, draw = ImageDraw.Draw(shadow), ImageDraw.Draw(pil)
    for kind, xy, _ in items:
        if kind == "polygon":
            sdraw.polygon([(x + 4, y + 4) for x, y in xy], fill=110)
        elif kind == "ellipse":
            sdraw.ellipse([v + 4 for v in xy], fill=110)
    pil.paste((0, 0, 0), mask=shadow.filter(ImageFilter.GaussianBlur(5)))
    for kind, xy, color in items:
        if kind == "polygon":
            draw.polygon(xy, fill=color)
        elif kind == "ellipse":
            draw.ellipse(xy, fill=color)
            inset = (xy[2] - xy[0]) * 0.15
            draw.ellipse([xy[0] + inset, xy[1] + inset, xy[2] - inset, xy[3] - inset],
                         fill=tuple(int(c * 0.7) for c in color))
        else:
            draw.line(xy, fill=color, width=int(rng.integers(3, 8)))


TONE_BANDS = ("light", "medium", "dark")
SEVERITY_BANDS = ((0.0, "none"), (0.34, "mild"), (0.67, "moderate"), (1.01, "marked"))


def synthetic_metadata(ids, seed: int) -> tuple[np.ndarray, dict]:
    """Subjects and subgroup columns of synthetic photos ``synthetic/<class>/<i>``: photos
    2j and 2j+1 of a class are one person's left and right hand (:func:`subject_traits`);
    columns ``skin_tone`` (light / medium / dark palette thirds), ``severity_band`` and
    ``hand``."""
    from handjax.data.records import CLASSES
    subjects, tones, bands, hands = [], [], [], []
    for key in ids:
        _, name, i = str(key).rsplit("/", 2)
        label, j = CLASSES.index(name), int(i) // 2
        t = subject_traits(seed, label, j)
        subjects.append(f"synthetic/{name}/subject{j:04d}")
        tones.append(TONE_BANDS[min(int(3 * t["tone"] / (len(_SKIN) - 1)), 2)])
        bands.append("none" if label == 0 else next(
            b for hi, b in SEVERITY_BANDS[1:] if t["severity"] < hi))
        hands.append("left" if int(i) % 2 == 0 else "right")
    return np.array(subjects), {"skin_tone": np.array(tones), "severity_band": np.array(bands),
                                "hand": np.array(hands)}
