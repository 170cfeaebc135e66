"""One photo file -> uint8 [S, S, 3].

Resizing keeps the aspect ratio and *pads* to a square (letterbox) rather than center-cropping:
the signs sit at the finger joints and tips, which a crop of a portrait photo cuts off. The
padding is filled with the mean colour of the photo's border so it reads as background, not as a
black bar whose width (the photo's aspect ratio) a classifier could learn.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from handjax.data.records import DataError

_DECODER_VERSION = "3"  # bump when decoding changes, so cached folders are rebuilt
MIN_PHOTO_SIDE = 8      # px: a smaller photo (a 1x1 tracking pixel, an icon) holds no hand


def decode_image(path, image_size: int, *, name: str | None = None) -> np.ndarray:
    """Decodes one photo to uint8 [image_size, image_size, 3].

    EXIF orientation applied; every mode converted to RGB (alpha composited on white, 16-bit
    scaled to 8 bits); aspect ratio kept by padding (see the module docstring). Images over
    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), or under
    ``MIN_PHOTO_SIDE`` px on a side, are rejected.
    ``path`` may also be the photo's bytes (an upload): decoded the same way, named ``name``
    (default "the photo's bytes") in errors.
    Raises DataError naming the file and the reason.
    """
    _check_size(image_size)
    if isinstance(path, (bytes, bytearray)):
        source, path = io.BytesIO(bytes(path)), name or "the photo's bytes"
    else:
        source = Path(path)
        if source.exists() and not source.is_file():  # a FIFO or device would block forever
            raise DataError(f"{path}: not a regular file (a folder, pipe or device); give a photo")
    try:
        return _fit_square(_open_rgb(source, image_size, path), image_size)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: rejected as a decompression bomb ({e})") from None
    except Exception as e:  # Pillow raises many types for damaged files (OSError, SyntaxError...)
        raise DataError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from None


def _open_rgb(source, image_size: int, path) -> Image.Image:
    with warnings.catch_warnings():
        # The explicit check below gives a clearer message than Pillow's warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise DataError(
                    f"{path}: rejected as a decompression bomb ({img.width}x{img.height} pixels "
                    f"> Pillow's limit Image.MAX_IMAGE_PIXELS={limit})")
            if min(img.width, img.height) < MIN_PHOTO_SIDE:
                raise DataError(f"{path}: too small ({img.width}x{img.height} pixels; a photo "
                                f"needs at least {MIN_PHOTO_SIDE} px on each side)")
            if img.format == "JPEG":  # decode big phone photos at a reduced scale: much faster
                img.draft(None, (image_size, image_size))
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha over white; 16/32-bit and float scaled, not clipped."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32)
        if img.mode == "F":
            top = 1.0 if a.max(initial=0) <= 1.0 else max(float(a.max()), 1e-6)
        else:  # 16-bit data (also when Pillow widens it to mode "I")
            top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        gray = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _fit_square(img: Image.Image, size: int) -> np.ndarray:
    """Resizes the long side to ``size`` and pads the short side with the border's mean colour."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    a = np.asarray(img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0))
    if nw == nh == size:
        return a
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.float32)
    out = np.empty((size, size, 3), np.uint8)
    out[...] = np.round(border.mean(0)).astype(np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = a
    return out


def _check_size(image_size) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise DataError(f"image_size must be an integer >= 8, got {image_size!r}")
