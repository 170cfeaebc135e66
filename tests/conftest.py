"""Test-wide settings (Keras runs on JAX, caches live in a per-session temp dir) and the photo
fixtures the data tests share."""
import os
import tempfile

import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "jax")
# Never touch the user's real cache from tests.
if "HANDJAX_CACHE" not in os.environ or not os.environ.get("CI"):
    os.environ["HANDJAX_CACHE"] = tempfile.mkdtemp(prefix="handjax-test-cache-")


def _save_image(path, img, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def _image_folder(root, per_class=5, skip=()):
    colours = {"normal": (200, 150, 120), "heberden": (90, 160, 60), "ra": (40, 60, 200)}
    for cls, colour in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class if cls not in skip else 0):
            _save_image(root / cls / f"img{i}.png", Image.new("RGB", (30, 20), colour))
    return root


@pytest.fixture
def save_image():
    """``save_image(path, pil_image, fmt=None, **save_kw) -> path``, parent folders made."""
    return _save_image


@pytest.fixture
def image_folder():
    """``image_folder(root, per_class=5, skip=()) -> root``: a valid ImageFolder of
    ``per_class`` small solid-colour PNGs per class (normal, heberden, ra; 600 px each, so that
    a lowered decompression-bomb limit still lets them through), none in the ``skip`` classes."""
    return _image_folder


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One trained smoke run (VGG16, categorical, 32 px, random weights, 2+1 epochs:
    ``cells.tiny_config()``) shared by every test that only reads a finished run: predict,
    the locked model, validate and the server. Trained on first use; tests must not change
    it (write into a copy or another folder)."""
    from cells import run, tiny_config
    workdir = tmp_path_factory.getbasetemp() / "smoke-run"
    if not (workdir / "model" / "model.json").is_file():
        run(tiny_config(), workdir)
    return workdir
