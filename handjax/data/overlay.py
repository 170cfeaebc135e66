"""Grad-CAM heat over a photo, as a person sees it: the one blend that predict's PNGs
(:func:`handjax.report.plots.gradcam_overlay`) and the web page
(:mod:`handjax.serve.uploads`) both show, in matplotlib's "jet" colours without importing
matplotlib (the server never does)."""
from __future__ import annotations

import numpy as np
from PIL import Image

ALPHA = 0.45   # the heat's opacity

# matplotlib's "jet" segment data (x, value) per channel.
_JET = (((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)))


def jet(x: np.ndarray) -> np.ndarray:
    """``x`` in [0, 1] -> RGB in [0, 1] (shape + (3,)), matplotlib's jet colormap."""
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return np.stack([np.interp(x, *zip(*seg)) for seg in _JET], axis=-1)


def heat_overlay(display: np.ndarray, cam: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """``display`` (the photo, upright, uint8 [h, w, 3]) with ``cam`` blended over it as a
    heat map of opacity ``alpha``.

    ``cam`` lies on the model's letterboxed square input: it is upsampled to the square the
    photo's long side spans and the padding is cut away, so heat and photo line up.
    """
    h, w = display.shape[:2]
    side = max(h, w)
    heat = Image.fromarray(np.asarray(cam, np.float32)).resize((side, side),
                                                               Image.Resampling.BILINEAR)
    y, x = (side - h) // 2, (side - w) // 2
    rgb = jet(np.asarray(heat)[y:y + h, x:x + w]) * 255.0
    blend = (1 - alpha) * display.astype(np.float32) + alpha * rgb
    return Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
