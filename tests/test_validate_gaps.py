"""validate's gaps closed: a second set missing a class, the photos' native sizes, the
results.md wording; and (slow) a smoke run validated on a set without heberden photos, at
another resolution, with rotated and flipped training copies refused by name."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from handjax import evaluation as clinical, validate
from handjax.data import CLASSES, DataError, load_synthetic
from handjax.data.native import native_size_record, native_sizes, size_shift, size_summary
from handjax.report import markdown


# ------------------------------------------------------------------------ missing classes
def test_a_missing_class_skips_only_what_it_must():
    cov = clinical.class_coverage([0, 0, 2, 2])
    assert cov == {"missing": ["heberden"], "tasks": ["any_disease", "ra"], "skipped": [],
                   "undefined": ["sensitivity_heberden", "auroc_macro"]}
    cov, line = clinical.assessable([0, 1, 1], "--data b")
    assert cov["tasks"] == ["any_disease"] and cov["skipped"] == ["ra"]
    assert "\n" not in line and line.startswith("--data b has no photos of ra")
    assert "skips the task(s) RA vs rest" in line and "assesses any disease vs normal" in line
    assert clinical.assessable([0, 1, 2], "x") == (clinical.class_coverage([0, 1, 2]), None)
    with pytest.raises(DataError, match="--data c holds photos of ra only"):
        clinical.assessable([2, 2], "--data c")
    with pytest.raises(DataError, match="heberden only"):
        clinical.assessable([1, 1], "--data c")
    assert clinical.assessable([1, 2], "--data c")[0]["tasks"] == ["ra"]   # RA vs heberden


def test_metrics_of_a_set_without_heberden_are_nan_only_where_undefined():
    y = np.array([0, 0, 0, 2, 2, 2])
    prob = np.eye(3)[y] * 0.8 + 0.2 / 3
    out = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob, prob.argmax(1),
                                np.arange(6), n_boot=50)
    undefined = set(clinical.class_coverage(y)["undefined"])
    nan = {name for name, entry in out.items() if np.isnan(entry["value"])}
    assert undefined <= nan
    assert all("heberden" in name for name in nan - undefined), nan   # ppv: none called


# ---------------------------------------------------------------------------- native sizes
def test_native_sizes_are_read_from_the_headers(tmp_path):
    for i, (w, h) in enumerate([(640, 480), (480, 640), (1024, 768)]):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.jpg")
    sizes = native_sizes(tmp_path, ["0.jpg", "1.jpg", "2.jpg"])
    assert sizes.tolist() == [[640, 480], [480, 640], [1024, 768]]
    s = size_summary(sizes)
    assert s["short_side"]["median"] == 480 and s["long_side"]["max"] == 1024
    assert s["median_megapixels"] == pytest.approx(0.3072)
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    with pytest.raises(DataError, match="bad.jpg: cannot read its size"):
        native_sizes(tmp_path, ["bad.jpg"])


def test_a_far_native_size_is_one_warning_line():
    near, far = size_summary([[600, 400]] * 3), size_summary([[4000, 3000]] * 3)
    train = size_summary([[640, 480]] * 5)
    assert size_shift(near, train, 224) is None
    line = size_shift(far, train, 224)
    assert "\n" not in line and "median 3000 px) is 6.2x the training photos' (median 480" in line
    assert size_shift(train, far, 224) is not None          # smaller, far the other way
    rec = native_size_record("/nowhere", [], None, ["a"] * 4, 112, synthetic_size=256)
    assert rec["training"]["synthetic"] and rec["training"]["short_side"]["median"] == 256


# ------------------------------------------------------------------------------- wording
def test_results_md_counts_every_fold_model_and_names_no_unknown_calibration():
    locked = markdown._calibration_line({"temperature": 1.5})
    assert "?" not in locked and "pooled out-of-fold" in locked
    line = markdown._calibration_line({"temperatures": [1.2] * 10, "fitted_on": "the run's"})
    assert "?" not in line and "each of the 10 fold models" in line
    run_line = markdown._calibration_line({"method": "cross-fitted", "fitted_on": "x",
                                           "temperatures": [1.0, 2.0], "at_bound": [0, 1]})
    assert run_line.startswith("Calibration (temperature scaling, cross-fitted): x;")
    assert "fold model(s) 1" in run_line


# ------------------------------------------------------------------------ end to end (slow)
def _write(root: Path, seed: int, n: int, size: int = 64, skip=(), turn=None,
           prefix="hand") -> Path:
    ex = load_synthetic(n_per_class=n, image_size=size, seed=seed)
    for i, (im, y) in enumerate(zip(ex.images, ex.labels)):
        if CLASSES[int(y)] in skip:
            continue
        d = root / CLASSES[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(turn(im) if turn else im)).save(
            d / f"{prefix}{seed}_{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(smoke_run):
    return smoke_run


@pytest.mark.slow
def test_a_set_without_heberden_at_another_size_is_validated(trained, tmp_path):
    data = _write(tmp_path / "clinic_c", seed=7, n=4, size=64, skip=("heberden",))
    out = tmp_path / "out"
    results = validate.validate(trained, data, out)
    cov = results["data"]["coverage"]
    assert cov["missing"] == ["heberden"] and cov["tasks"] == ["any_disease", "ra"]
    sizes = results["data"]["native_size"]
    assert sizes["new"]["short_side"]["median"] == 64                 # PNGs written at 64
    assert sizes["training"]["short_side"]["median"] == 256           # synthetic hands
    assert "0.25x the training photos'" in sizes["warning"]
    assert results["clinical"]["cnn_calibrated"]["sensitivity_heberden"]["value"] is None
    assert results["clinical"]["cnn_calibrated"]["auroc_ra"]["value"] is not None
    md = (out / "results.md").read_text()
    assert "**Missing class**" in md and "**Native size**" in md
    assert "**Random weights**" in md and "**Trained on synthetic data**" in md
    assert "Calibration (?" not in md and "the mean over its 5 fold models" in md
    for rule, metrics in results["clinical"].items():           # no zero-width proportion
        for name, e in metrics.items():
            if e.get("interval") == "wilson" and e["value"] in (0.0, 1.0):
                assert e["ci95"][1] - e["ci95"][0] > 0.1, (rule, name)
    again = validate.validate(trained, data, tmp_path / "again")
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("turn,how", [(lambda im: im[::-1], "flipped vertically"),
                                      (lambda im: np.rot90(im, -1), "rotated 90°"),
                                      (lambda im: np.rot90(im, 2), "rotated 180°"),
                                      (lambda im: np.rot90(im, 1), "rotated 270°")])
def test_turned_training_photos_are_refused_by_name(trained, tmp_path, turn, how):
    data = _write(tmp_path / "copies", seed=0, n=2, size=256, turn=turn, prefix="copy")
    with pytest.raises(DataError, match="near-duplicates of the run's training photos") as err:
        validate.validate(trained, data, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "6 photo(s)" in msg
    assert f"copy0_0.png ~ training photo synthetic/normal/0000 ({how})" in msg
