"""Predicting photos with a run's locked model, and Grad-CAM.

Grad-CAM is checked on hand-built models whose answer is known; the CLI on one tiny smoke
run (VGG16, 32 px, random weights) applied to synthetic hands saved as PNG and JPEG files.
"""
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from handjax import data, losses, predict
from handjax.evaluation import scoring as evaluate
from handjax.model import locked
from handjax.model.gradcam import grad_cam
from handjax.report import plots

ROOT = Path(__file__).resolve().parents[1]

QUADRANTS = {"top_left": (0, 0), "top_right": (0, 1), "bottom_left": (1, 0),
             "bottom_right": (1, 1)}


# --------------------------------------------------------------------------- Grad-CAM
def _scene(size=16):
    """Grey image with a red blob in one quadrant and a green one in the opposite."""
    img = np.full((size, size, 3), 0.3, np.float32)
    h = size // 2
    img[2:h - 2, 2:h - 2] = (1.0, 0.0, 0.0)          # red, top left
    img[h + 2:-2, h + 2:-2] = (0.0, 1.0, 0.0)        # green, bottom right
    img[2:h - 2, h + 2:-2] = (0.0, 0.0, 1.0)         # blue, top right
    return img


def _quadrant_mask(size, quadrant):
    qy, qx = QUADRANTS[quadrant]
    m = np.zeros((size, size), np.float32)
    h = size // 2
    m[qy * h:(qy + 1) * h, qx * h:(qx + 1) * h] = 1
    return m


class _IdentityFeatures(nn.Module):
    """A 1x1 conv whose kernel is the identity: the feature map is the image itself."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(3, (1, 1), use_bias=False, name="conv",
                       kernel_init=lambda *_: jnp.eye(3)[None, None])(x)


def _score(mask):
    """Class score that only reads one quadrant: sum there of 0.5 R^2 - 2 G."""
    m = jnp.asarray(mask)
    return lambda f: jnp.sum(m * (0.5 * f[..., 0] ** 2 - 2.0 * f[..., 1]))


@pytest.mark.parametrize("quadrant", list(QUADRANTS))
def test_grad_cam_peak_lies_in_the_scored_quadrant(quadrant):
    size = 16
    scene = _scene(size)
    # Move the red blob into the scored quadrant (the others keep their colours).
    qy, qx = QUADRANTS[quadrant]
    scene = np.roll(scene, (qy * size // 2, qx * size // 2), axis=(0, 1))
    net = _IdentityFeatures()
    v = net.init(jax.random.key(0), scene[None])
    feats = net.apply(v, scene[None])[0]
    np.testing.assert_allclose(feats, scene, atol=1e-6)      # really the identity
    cam = np.asarray(grad_cam(_score(_quadrant_mask(size, quadrant)), feats))
    assert cam.shape == (size, size)
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert _quadrant_mask(size, quadrant)[peak] == 1
    assert cam.max() == pytest.approx(1.0) and cam.min() == 0.0


def test_grad_cam_weights_are_spatial_mean_gradients_then_relu():
    size = 16
    scene = _scene(size)
    mask = _quadrant_mask(size, "top_left")
    cam = np.asarray(grad_cam(_score(mask), scene))
    # By hand: d score / d R = mask * R, d score / d G = -2 mask, d / d B = 0.
    w_r = np.sum(mask * scene[..., 0]) / size**2
    w_g = -2.0 * mask.sum() / size**2
    expected = np.maximum(w_r * scene[..., 0] + w_g * scene[..., 1], 0.0)
    np.testing.assert_allclose(cam, expected / expected.max(), rtol=1e-5, atol=1e-6)
    # The ReLU cuts the green blob and the grey background (where w_r R + w_g G < 0) to 0.
    h = size // 2
    assert (cam[h + 2:-2, h + 2:-2] == 0).all() and cam[0, 0] == 0
    assert (cam[2:h - 2, 2:h - 2] == 1).all()


def test_grad_cam_without_evidence_is_zero_not_nan():
    cam = grad_cam(lambda f: -jnp.sum(f), jnp.ones((4, 4, 2)))
    np.testing.assert_array_equal(np.asarray(cam), np.zeros((4, 4)))


# --------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def run_dir(smoke_run):
    return smoke_run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six synthetic hands as PNG/JPEG files, plus one non-square and one EXIF-rotated."""
    folder = tmp_path_factory.mktemp("photos")
    ex = data.load_synthetic(n_per_class=2, image_size=64)
    paths = []
    for i, img in enumerate(ex.images):
        path = folder / f"hand{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(img).save(path)
        paths.append(path)
    wide = folder / "wide.png"
    Image.fromarray(ex.images[0][12:52]).save(wide)             # 64 wide, 40 high
    rotated = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                                             # "rotate 90 CW to view"
    Image.fromarray(ex.images[1][12:52]).save(rotated, exif=exif)
    return paths + [wide, rotated]


@pytest.fixture(scope="module")
def json_output(run_dir, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("cams")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = predict.main(["--workdir", str(run_dir), "--out", str(out), "--json",
                           *map(str, photos)])
    assert rc == 0
    return json.loads(buf.getvalue()), out


@pytest.mark.slow  # needs a trained smoke run
def test_json_gives_the_locked_models_probabilities_and_decisions(json_output, run_dir, photos):
    result, _ = json_output
    preds = result["predictions"]
    assert [p["file"] for p in preds] == [str(p) for p in photos]
    probs = np.array([list(p["probabilities"].values()) for p in preds])
    assert list(preds[0]["probabilities"]) == ["normal", "heberden", "ra"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-9)
    # Independently: each fold's full Classifier on the decoded photos, each scaled by the
    # card's temperature, averaged.
    model = locked.load_model(run_dir)
    card = json.loads((run_dir / "model" / "model.json").read_text())
    t = card["calibration"]["temperature"]
    x = np.stack([data.decode_image(p, 32) for p in photos])
    per_fold = []
    for k in range(5):
        v = jax.tree.map(lambda a, k=k: a[k], model.run.variables)
        logits, _ = model.run.model.apply(v, x, train=False, mode="tune")
        p = np.asarray(evaluate.probabilities("categorical", logits), np.float64)
        z = np.log(np.clip(p, 1e-12, 1)) / t
        per_fold.append(np.exp(z) / np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(probs, np.mean(per_fold, 0), rtol=1e-4, atol=1e-6)
    names = ["normal", "heberden", "ra"]
    thresholds = {f"{task}_{kind}": c["threshold"]
                  for task, kinds in card["operating_points"].items()
                  for kind, c in kinds.items() if c["status"] == "chosen"}
    for p, row in zip(preds, probs):
        d = p["decisions"]
        assert set(d) == {"argmax", "mec", *thresholds}
        assert d["argmax"] == names[row.argmax()]
        assert d["mec"] == names[int(np.argmin(row @ np.asarray(losses.DEFAULT_COST)))]
        for rule, thr in thresholds.items():
            score = row[2] if rule.startswith("ra_") else row[1] + row[2]
            assert d[rule] == int(score >= thr)
    assert result["model"]["thresholds"] == pytest.approx(thresholds)
    assert "not a diagnosis" in result["disclaimer"] and "synthetic" in result["disclaimer"]
    assert result["model"]["data"]["class_counts"] == {"normal": 10, "heberden": 10, "ra": 10}


@pytest.mark.slow  # needs a trained smoke run
def test_overlays_are_photo_sized_pngs(json_output, photos):
    result, out = json_output
    written = [Path(p["gradcam"]) for p in result["predictions"]]
    assert len(set(written)) == len(photos)
    for path, photo in zip(written, photos):
        assert path.parent == out and path.exists()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img, Image.open(photo) as src:
            expected = src.size[::-1] if photo.name == "rotated.jpg" else src.size
            # the photo's own size (not letterboxed), then the caption band under it
            assert img.size[0] == expected[0] and img.size[1] > expected[1]
            assert img.mode == "RGB"
    assert Image.open(written[-2]).size[0] == 64


def test_overlay_blends_the_heat_map_over_the_photo(photos):
    photo = photos[1]
    hot = plots.gradcam_overlay(photo, np.ones((2, 2)))
    cold = plots.gradcam_overlay(photo, np.zeros((2, 2)))
    src = np.asarray(Image.open(photo).convert("RGB"), np.float32)
    hot, cold = np.asarray(hot, np.float32), np.asarray(cold, np.float32)
    # jet(1) is dark red, jet(0) dark blue: the overlays differ, in the expected channels.
    assert (hot[..., 0] - cold[..., 0]).mean() > 40 and (cold[..., 2] - hot[..., 2]).mean() > 40
    # And the photo still shows through: overlay correlates with the photo.
    assert np.corrcoef(cold.mean(-1).ravel(), src.mean(-1).ravel())[0, 1] > 0.9


def test_a_captioned_overlay_carries_its_caption_and_a_colour_bar(photos):
    photo = photos[1]
    plain = np.asarray(plots.gradcam_overlay(photo, np.ones((2, 2))))
    captioned = np.asarray(plots.gradcam_overlay(photo, np.ones((2, 2)),
                                                 caption="x.png: Rheumatoid arthritis, 91%"))
    h, w = plain.shape[:2]
    assert captioned.shape[1] == w and captioned.shape[0] > h
    np.testing.assert_array_equal(captioned[:h], plain)          # the photo unchanged above
    band = captioned[h:].astype(int)
    assert (band.sum(-1) < 200).any()                              # dark text on white
    # the colour bar runs from jet's blue (low) to its red (high), left to right
    rows = [r for r in band if (np.abs(r[:, 0] - r[:, 2]) > 150).sum() > w // 3]
    assert rows, "no colour bar in the caption band"
    bar = rows[len(rows) // 2]
    coloured = np.flatnonzero(np.abs(bar[:, 0] - bar[:, 2]) > 100)
    left, right = bar[coloured[0]], bar[coloured[-1]]
    assert left[2] > left[0] and right[0] > right[2]


@pytest.mark.slow  # needs a trained smoke run
def test_table_names_classes_photos_and_says_not_a_diagnosis(run_dir, photos, tmp_path,
                                                               capsys):
    rc = predict.main(["--workdir", str(run_dir), "--out", str(tmp_path),
                       str(photos[0]), str(photos[1])])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Heberden's nodes" in text and "Rheumatoid arthritis" in text
    assert photos[0].name in text and photos[1].name in text
    assert "not a diagnosis" in text and "normal 10, heberden 10, ra 10" in text
    assert len(list(tmp_path.glob("*_gradcam.png"))) == 2


@pytest.mark.slow  # needs a trained smoke run
def test_default_out_is_gradcam_in_the_workdir(run_dir, photos, capsys):
    assert predict.main(["--workdir", str(run_dir), "--json", str(photos[2])]) == 0
    path = Path(json.loads(capsys.readouterr().out)["predictions"][0]["gradcam"])
    assert path.parent == run_dir / "gradcam" and path.exists()


@pytest.mark.slow  # needs a trained smoke run
def test_unreadable_photo_is_one_clear_line(run_dir, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = subprocess.run(
        [sys.executable, "-m", "handjax.predict", "--workdir", str(run_dir), str(photos[0]),
         str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("handjax: error:")
    with pytest.raises(data.DataError) as loader:                # the loader's own words
        data.decode_image(bad, 32)
    # the good photo is answered; the bad one named, in the loader's words, exit 1
    assert lines[0] == (f"handjax: error: {loader.value} (left out; the other photos were "
                        "scored)") and "broken.jpg" in lines[0]
    assert str(photos[0]) in out.stdout and "broken.jpg" not in out.stdout


@pytest.mark.parametrize("what", ["missing_photo", "missing_run"])
def test_missing_inputs_are_one_clear_line(what, photos, tmp_path, capsys):
    if what == "missing_photo":
        args = ["--workdir", str(tmp_path), str(tmp_path / "nope.jpg")]
    else:
        args = ["--workdir", str(tmp_path / "norun"), str(photos[0])]
    assert predict.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handjax: error:")
    assert ("nope.jpg" if what == "missing_photo" else "norun") in err[0]


@pytest.mark.slow  # needs a trained smoke run
def test_out_into_a_missing_or_read_only_folder_is_one_clear_line(run_dir, photos, tmp_path,
                                                                  capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")                         # --out under a file: cannot be created
    assert predict.main(["--workdir", str(run_dir), "--out", str(blocker / "cams"),
                         str(photos[0])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the overlays" in err[0] and "--out" in err[0]


def test_photo_below_the_minimum_size_is_one_line_naming_it(tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    assert predict.main(["--workdir", str(tmp_path / "norun"), str(tiny)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"handjax: error: {tiny}: too small (1x1 pixels; a photo needs at least "
                    f"{data.decode.MIN_PHOTO_SIDE} px on each side)")


def test_matplotlib_is_imported_only_by_the_report_plots_and_the_console():
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "handjax").rglob("*.py")
                       if any(line.lstrip().startswith(("import matplotlib",
                                                        "from matplotlib"))
                              for line in p.read_text().splitlines()))
    assert "handjax/report/plots.py" in importers
    assert set(importers) <= {"handjax/console.py", "handjax/report/plots.py"}
