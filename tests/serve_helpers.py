"""What the server tests share: one trained smoke run per test session (VGG16, 32 px, random
weights, 2+1 epochs: ``cells.tiny_config``), test photos as bytes, the bad uploads, and a
small stand-in model with the locked model's interface for the batching and API unit tests;
and :func:`read_until`, for tests that send a command's process a signal at a given point."""
from __future__ import annotations

import functools
import io
import os
import select
import threading
import time
import zlib

import numpy as np
from PIL import Image

from handjax import data


def read_until(pipe, text: bytes, timeout: float = 300.0) -> bytes:
    """Read ``pipe`` (a process's stdout or stderr) until ``text`` shows; what was read.
    Fails the test, rather than hang, if the process ends or ``timeout`` seconds pass first."""
    import pytest
    seen, deadline = b"", time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(pipe.fileno(), 4096) if ready else b""
        if not chunk:
            pytest.fail(f"{text!r} did not show ({'ended' if ready else 'timed out'}): "
                        f"{seen.decode(errors='replace')[-2000:]}")
        seen += chunk
    return seen




@functools.lru_cache(maxsize=None)
def hands(size: int = 64) -> np.ndarray:
    """Six synthetic hands (two per class), uint8 [6, size, size, 3]."""
    return data.load_synthetic(n_per_class=2, image_size=size).images


def photo_bytes(index: int = 0, size: int = 64, fmt: str = "PNG", **save) -> bytes:
    """Synthetic hand ``index`` (of six) encoded as ``fmt``."""
    return encode(hands(size)[index], fmt, **save)


def encode(image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, fmt, **save)
    return buf.getvalue()


def decompression_bomb() -> bytes:
    """A valid 1-bit PNG of 30000 x 30000 pixels (900 M, over Pillow's limit) in ~100 KB."""
    width = height = 30000
    header = b"\x89PNG\r\n\x1a\n"

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = b"\x00" + b"\x00" * ((width + 7) // 8)   # filter byte + one row of black pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return header + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_uploads() -> dict[str, tuple[bytes, set]]:
    """Name -> (body, allowed statuses) of the uploads a server must refuse with a 4xx."""
    good = photo_bytes(0, fmt="JPEG")
    return {
        "not_an_image": (b"these are the words of a text file, not a photo\n" * 20, {415}),
        "empty": (b"", {400}),
        "truncated": (good[: len(good) // 3], {422}),
        "decompression_bomb": (decompression_bomb(), {422}),
        "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", {415}),
        "50_mb": (b"\xff\xd8\xff\xe0" + bytes(50 * 2**20), {413}),
        "one_pixel": (encode(np.zeros((1, 1, 3)), "PNG"), {422}),
    }


class FakeModel:
    """The locked model's interface (classes, image_size, batch_size, card, prepare,
    probabilities, decide, grad_cam) on a rule anyone can check: the class probabilities are
    the softmax of the image's mean R, G, B / 32. ``calls`` records every batch's size;
    ``gate`` (an Event), when set up, holds each batch until it is set; ``fail`` makes
    ``probabilities`` raise."""

    classes = ("normal", "heberden", "ra")
    image_size = 16
    batch_size = 4

    def __init__(self):
        self.card = {"name": "fake", "weights": "none",
                     "cv_figures": {"data": {"source": "synthetic", "n": 30, "n_subjects": 15}},
                     "caveats": ["A stand-in model for tests."]}
        self.calls: list[int] = []
        self.gate: threading.Event | None = None
        self.fail = False

    def prepare(self, source, name=None):
        return data.decode_image(source, self.image_size, name=name)

    def probabilities(self, images):
        images = np.asarray(images)
        assert images.shape[1:] == (16, 16, 3) and len(images) <= self.batch_size
        self.calls.append(len(images))
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the fake model failed on purpose")
        return softmax(images.reshape(len(images), -1, 3).mean(1) / 32.0)

    def decide(self, probs):
        probs = np.asarray(probs)
        return {"argmax": probs.argmax(-1), "mec": np.full(len(probs), 2),
                "ra_sensitivity": (probs[:, 2] >= 0.3).astype(int)}

    def grad_cam(self, images, classes=None):
        cam = np.zeros((len(images), 4, 4))
        cam[:, :2, :2] = 1.0   # the top left quarter of the square
        return cam


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
