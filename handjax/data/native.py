"""The photos' native sizes, before the loader fits them to the model's input: recorded for a
second photo set beside the training set's, so a set shot at another resolution is said,
not resized in silence."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from handjax.data.records import DataError

FAR = 2.0   # a median short side this many times larger (or smaller) than training's is far


def native_sizes(root, ids) -> np.ndarray:
    """``[N, 2]`` (width, height) in pixels of the photo files ``root / id``, read from their
    headers (nothing is decoded). An unreadable file is one DataError naming it."""
    out = np.zeros((len(ids), 2), np.int64)
    for k, rel in enumerate(ids):
        path = Path(root) / rel
        try:
            with Image.open(path) as im:
                out[k] = im.size
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read its size ({e})") from e
    return out


def size_summary(sizes) -> dict:
    """``{"n", "short_side": {"min", "p25", "median", "p75", "max"}, "long_side": {...},
    "median_megapixels"}`` of ``[N, 2]`` sizes (pixels)."""
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    if len(sizes) == 0:
        return {"n": 0}

    def spread(x):
        q = np.percentile(x, [0, 25, 50, 75, 100])
        return dict(zip(("min", "p25", "median", "p75", "max"), map(float, q)))

    return {"n": len(sizes), "short_side": spread(sizes.min(1)),
            "long_side": spread(sizes.max(1)),
            "median_megapixels": float(np.median(sizes.prod(1)) / 1e6)}


def size_shift(new: dict, training: dict, image_size: int, far: float = FAR) -> str | None:
    """One warning line when the new photos' median short side is ``far`` times the training
    photos' or more (either way), else None: both are resized to ``image_size`` px, but a
    photo shot at another resolution keeps other detail, blur and compression."""
    a, b = new.get("short_side", {}).get("median"), training.get("short_side", {}).get("median")
    if not a or not b or max(a / b, b / a) < far:
        return None
    return (f"the new photos' native short side (median {a:.0f} px) is {a / b:.2g}x the "
            f"training photos' (median {b:.0f} px); both are resized to {image_size} px, but "
            "detail, blur and compression differ: read the figures with that in mind")


def native_size_record(new_root, new_ids, train_root, train_ids, image_size: int,
                       synthetic_size: int | None = None) -> dict:
    """``{"new", "training", "resized_to", "warning"}``: the :func:`size_summary` of a second
    set's photos and of the training photos (``train_root`` None: synthetic hands, drawn at
    ``synthetic_size`` px), the input size both are resized to, and :func:`size_shift`'s
    line (None when close)."""
    new = size_summary(native_sizes(new_root, new_ids))
    if train_root:
        training = size_summary(native_sizes(train_root, train_ids))
    else:
        training = size_summary(np.full((len(train_ids), 2), synthetic_size or image_size))
        training["synthetic"] = True
    return {"new": new, "training": training, "resized_to": int(image_size),
            "warning": size_shift(new, training, image_size)}
