"""One uploaded file -> a checked photo: the reasons to refuse it (each a 4xx and one plain
sentence), the image-quality warnings to show beside the answer, and the Grad-CAM overlay's
PNG (its blend: :func:`handjax.data.overlay.heat_overlay`).

Nothing here touches the disk: an upload is bytes in memory, and no name the client sent is
ever used as a path.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from handjax.data import decode

DISPLAY_SIDE = 384     # px: the photo is shown (and its quality judged) at most this large
SMALL_SIDE = 224       # px: below this on the short side, finger joints are a few pixels
DARK, BRIGHT = 50, 205  # mean brightness (0-255) outside which exposure hides detail
BLUR_SIDE = 256        # px: sharpness is measured on the photo shrunk to at most this size
BLUR_VARIANCE = 30.0   # Laplacian variance below which a photo reads as blurred (at BLUR_SIDE,
                       # contrast stretched: synthetic hands give 75-390 sharp, 4-43 blurred)
MAX_ASPECT = 2.0       # long side / short side beyond which the hand fills little of the square


class UploadError(Exception):
    """An upload the server refuses: ``status`` (4xx) and one plain sentence for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Photo:
    """A readable upload: ``display`` uint8 [h, w, 3] (long side at most DISPLAY_SIDE,
    EXIF orientation applied), the original ``width`` x ``height`` and Pillow's ``format``."""

    display: np.ndarray
    width: int
    height: int
    format: str


# --------------------------------------------------------------------------- refusals
def check_bytes(raw: bytes, max_bytes: int) -> None:
    """Refuses an empty upload, one over ``max_bytes`` and a PDF before any decoding."""
    if not raw:
        raise UploadError(400, "The upload is empty; choose a photo file (JPEG or PNG).")
    if len(raw) > max_bytes:
        raise UploadError(413, f"The upload is {len(raw) / 2**20:.1f} MB, over the "
                               f"{max_bytes / 2**20:.0f} MB limit; send a smaller photo.")
    if raw[:5] == b"%PDF-":  # the commonest wrong file; Pillow would only say "unreadable"
        raise UploadError(415, "The upload is a PDF document, not a photo; upload a JPEG or "
                               "PNG photo of the hand.")


def open_photo(raw: bytes) -> Photo:
    """Decodes ``raw`` for display and quality checks, refusing what the model's own decoder
    refuses (not an image, a decompression bomb, under ``decode.MIN_PHOTO_SIDE`` px, truncated)
    with a 415 or 422 :class:`UploadError`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
        try:
            img = Image.open(io.BytesIO(raw))
        except Image.UnidentifiedImageError:
            raise UploadError(415, "The upload is not an image this server can read; upload "
                                   "a JPEG or PNG photo.") from None
        except Image.DecompressionBombError:
            raise UploadError(422, _bomb_message()) from None
        except Exception as e:  # a header cut short: Pillow raises OSError, SyntaxError...
            raise _corrupt(e) from None
        with img:
            _check_geometry(img)
            fmt = img.format or "unknown"
            width, height = img.size                 # before draft scaling shrinks it
            try:
                if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF: rotated 90 degrees
                    width, height = height, width
                if fmt == "JPEG":  # decode big phone photos at a reduced scale: much faster
                    img.draft("RGB", (DISPLAY_SIDE, DISPLAY_SIDE))
                img.load()
                upright = ImageOps.exif_transpose(img)
            except Exception as e:  # Pillow raises many types for damaged files
                raise _corrupt(e) from None
    rgb = decode._to_rgb(upright)  # alpha over white, 16-bit scaled: as the model sees it
    rgb.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return Photo(np.asarray(rgb), width, height, fmt)


def _corrupt(e: Exception) -> UploadError:
    return UploadError(422, f"The image is truncated or corrupt ({type(e).__name__}); upload "
                            "the photo again or choose another file.")


def _check_geometry(img: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise UploadError(422, _bomb_message(img.width, img.height))
    if min(img.width, img.height) < decode.MIN_PHOTO_SIDE:
        raise UploadError(422, f"The image is only {img.width}x{img.height} pixels; a photo "
                               f"needs at least {decode.MIN_PHOTO_SIDE} px on each side.")


def _bomb_message(width: int | None = None, height: int | None = None) -> str:
    size = f"{width}x{height} pixels, " if width else ""
    return (f"The image declares {size}more than the {Image.MAX_IMAGE_PIXELS:,} pixels "
            "this server decodes (a decompression bomb); upload an ordinary photo.")


# --------------------------------------------------------------------------- quality
def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior of a 2-D image: low when
    nothing in the photo has a sharp edge."""
    g = np.asarray(gray, np.float64)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def quality_warnings(photo: Photo) -> list[dict]:
    """What about the photo may make the answer less trustworthy, each ``{"code", "message"}``
    in plain words: too small, too dark or bright, blurred, extreme aspect ratio."""
    out = []
    w, h = photo.width, photo.height
    if min(w, h) < SMALL_SIDE:
        out.append(_warn("small", f"The photo is small ({w}x{h} px); use at least {SMALL_SIDE} "
                                  "px on the short side so the finger joints show."))
    gray = np.asarray(Image.fromarray(photo.display).convert("L"))
    mean = float(gray.mean())
    if mean < DARK:
        out.append(_warn("dark", f"The photo is dark (mean brightness {mean:.0f} of 255); "
                                 "take it again in better light."))
    elif mean > BRIGHT:
        out.append(_warn("bright", f"The photo is very bright (mean brightness {mean:.0f} of "
                                   "255); avoid direct sun or a flash."))
    if laplacian_variance(_stretched(_shrunk(gray, BLUR_SIDE))) < BLUR_VARIANCE:
        out.append(_warn("blurred", "The photo looks blurred; hold the camera still and let "
                                    "it focus on the hand."))
    aspect = max(w, h) / min(w, h)
    if aspect > MAX_ASPECT:
        out.append(_warn("aspect", f"The photo is very elongated ({w}x{h}, {aspect:.1f}:1); "
                                   "frame the hand so it fills most of a square."))
    return out


def _warn(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def _stretched(gray: np.ndarray) -> np.ndarray:
    """Grey levels stretched so the 1st..99th percentiles span 0..255: sharpness then does
    not depend on exposure (a dark photo is not also called blurred)."""
    g = np.asarray(gray, np.float64)
    lo, hi = np.percentile(g, [1, 99])
    return (g - lo) * (255.0 / max(hi - lo, 1.0))


def _shrunk(gray: np.ndarray, side: int) -> np.ndarray:
    img = Image.fromarray(gray)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(img)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)  # fast: the overlay is fetched once, on loopback
    return buf.getvalue()
