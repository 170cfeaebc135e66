"""External validation (``python -m handjax.validate``): the calibration intercept and slope
against independent fits, the input checks as one line each, the overlap guard, and (slow) a
smoke run validated end to end on a second, disjoint synthetic folder."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import optimize, special
from sklearn.linear_model import LogisticRegression

from cells import run, tiny_config

from handjax import evaluation as clinical, predict, validate
from handjax.data import CLASSES, DataError, load_synthetic
from handjax.errors import RunError, TrainingError


# ------------------------------------------------------------------ calibration intercept, slope
def test_calibration_slope_equals_sklearn_and_intercept_a_root_of_the_score():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 400)
    lp = special.logit(p)
    y = rng.random(400) < special.expit(0.4 + 0.6 * lp)   # risks too extreme: slope < 1
    fit = clinical.calibration_intercept_slope(y, p)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(lp[:, None], y)
    assert fit["slope"] == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    # calibration-in-the-large: the slope fixed at 1, sum(y - expit(a + logit p)) = 0
    a = optimize.brentq(lambda a: np.sum(y - special.expit(a + lp)), -10, 10, xtol=1e-14)
    assert fit["intercept"] == pytest.approx(a, abs=1e-9)


def test_calibrated_probabilities_have_intercept_0_and_slope_1():
    rng = np.random.default_rng(1)
    p = special.expit(rng.normal(0, 1.5, 20000))
    fit = clinical.calibration_intercept_slope(rng.random(20000) < p, p)
    # standard errors at n = 20000 are about 0.02 (intercept) and 0.02 (slope)
    assert abs(fit["intercept"]) < 0.08 and abs(fit["slope"] - 1) < 0.08


def test_calibration_line_is_nan_where_undefined():
    assert np.isnan(clinical.calibration_intercept_slope([True] * 5, [0.3] * 5)["slope"])
    separated = clinical.calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isnan(separated["slope"])
    y = np.array([0, 1, 2, 2, 0, 1])
    lines = clinical.calibration_lines(y, np.full((6, 3), 1 / 3))
    assert sorted(lines) == sorted(f"{k}_{t}" for k in ("intercept", "slope")
                                   for t in clinical.TASKS)


# ------------------------------------------------------------------ input checks, one line each
def test_bad_input_is_one_line(tmp_path, image_folder):
    with pytest.raises(RunError, match="trained on classes a, b"):
        validate.check_run_classes(["a", "b"])
    validate.check_run_classes(list(CLASSES))
    with pytest.raises(DataError, match="no such folder"):
        validate.check_folder_classes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        validate.check_folder_classes(tmp_path / "empty")
    root = image_folder(tmp_path / "photos", per_class=1)
    validate.check_folder_classes(root)
    (root / "gout").mkdir()
    with pytest.raises(DataError, match="class folder.s. gout the run did not have") as err:
        validate.check_folder_classes(root)
    assert "\n" not in str(err.value)
    validate.check_folder_classes(root, {"gout": "ra"})   # the run mapped it


def test_missing_run_is_one_line_from_the_cli(tmp_path, capsys):
    assert validate.main(["--workdir", str(tmp_path / "nope"), "--data", str(tmp_path),
                          "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json not found" in err[0]


def test_overlap_finds_mirrored_copies_and_names_the_training_photo():
    train = load_synthetic(n_per_class=4, image_size=64, seed=0)
    other = load_synthetic(n_per_class=4, image_size=64, seed=7)
    images = np.concatenate([other.images[:5], train.images[[2, 9]][:, :, ::-1]])
    new = other._replace(images=images, labels=np.zeros(7, np.int32),
                         ids=[f"n{i}" for i in range(7)])
    assert validate.overlapping(train, new) == [(5, 2), (6, 9)]


# ------------------------------------------------------------------ end to end (slow)
def _write_folder(root: Path, n_per_class: int, seed: int, mirror: bool = False) -> Path:
    """Synthetic hands rendered with ``seed``, saved as PNGs in class folders."""
    ex = load_synthetic(n_per_class=n_per_class, image_size=64, seed=seed)
    for i, (im, y) in enumerate(zip(ex.images, ex.labels)):
        d = root / CLASSES[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(im[:, ::-1] if mirror else im)).save(
            d / f"{'mirror' if mirror else 'hand'}{seed}_{i}.png")
    return root


def _curve_from_csv(path, rule="cnn_calibrated"):
    """The decision curves recomputed from predictions.csv by the formula, in float64."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    p = {c: np.array([float(r[f"p_{rule}_{c}"]) for r in rows]) for c in CLASSES}
    label = np.array([r["label"] for r in rows])
    cases = {"any_disease": (label != "normal", p["heberden"] + p["ra"]),
             "ra": (label == "ra", p["ra"])}
    out = {}
    for task, (pos, score) in cases.items():
        n, prev = len(pos), pos.mean()
        out[task] = [(t, np.sum(pos & (score >= t)) / n - np.sum(~pos & (score >= t)) / n
                      * t / (1 - t), prev - (1 - prev) * t / (1 - t))
                     for t in np.arange(1, 100) / 100]
    return out


def _assert_curve_matches_csv(results, csv_path):
    want = _curve_from_csv(csv_path)
    for task, rows in results["decision_curve"].items():
        got = [(r["threshold"], r["net_benefit"], r["treat_all"]) for r in rows]
        np.testing.assert_allclose(got, want[task], atol=1e-9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return workdir, run(tiny_config(), workdir)


@pytest.mark.slow
def test_training_run_decision_curve_recomputes_from_predictions_csv(trained):
    workdir, results = trained
    _assert_curve_matches_csv(results, workdir / "predictions.csv")
    assert (workdir / "decision_curve.png").is_file()
    assert "## Decision curve" in (workdir / "results.md").read_text()


@pytest.mark.slow
def test_validate_end_to_end_on_a_disjoint_folder(trained, tmp_path):
    workdir, run_results = trained
    data = _write_folder(tmp_path / "clinic_b", 4, seed=7)
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    meta = tmp_path / "clinic_b.csv"   # two photos per person, and a subgroup column
    meta.write_text("file,subject,site\n" + "".join(
        f"{f},p{i // 2},{'AB'[i % 2]}\n" for i, f in enumerate(files)))
    out = tmp_path / "out"
    results = validate.validate(workdir, data, out, metadata=meta)
    preds = clinical.read_predictions(out / "predictions.csv")
    assert len(preds.file) == 12 and set(preds.fold) == {validate.FOLD}
    assert results["data"]["n_subjects"] == 6 and set(results["subgroups"]["site"]) == {"A", "B"}
    subject_of = {f: f"p{i // 2}" for i, f in enumerate(files)}
    assert [subject_of[f] for f in preds.file] == list(preds.subject)
    assert sorted(preds.pred) == sorted(["cnn", "cnn_calibrated", "svm", "cnn_mec"])
    assert set(results["clinical"]) == set(run_results["clinical"])
    for rule in results["clinical"]:
        assert set(results["clinical"][rule]) == set(run_results["clinical"][rule])
    np.testing.assert_array_equal(preds.pred["svm"], preds.probs["svm"].argmax(-1))
    np.testing.assert_array_equal(preds.pred["cnn_calibrated"],
                                  preds.probs["cnn_calibrated"].argmax(-1))
    assert results["overlap_dropped"] == []
    assert set(results["calibration"]["intercept_slope"]) == {
        f"{k}_{t}" for k in ("intercept", "slope") for t in clinical.TASKS}
    _assert_curve_matches_csv(results, out / "predictions.csv")
    for name in ("results.json", "results.md", "roc.png", "reliability.png",
                 "decision_curve.png"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_fold_models_rebuilt_score_the_runs_own_test_photos_as_it_did(trained):
    workdir, _ = trained
    from handjax.model.locked import load_model
    model = load_model(workdir)
    cohort = validate.training_cohort(workdir, model.run)
    logits, _ = model.member_outputs(np.asarray(cohort.examples.images))
    p = model.member_probabilities(logits)
    preds = clinical.read_predictions(workdir / "predictions.csv")
    for k, te in enumerate(cohort.test_sets):
        np.testing.assert_allclose(p[k, te], preds.probs["cnn"][te], atol=1e-5)


@pytest.fixture(scope="module")
def validated(trained, tmp_path_factory):
    """The smoke run validated on 12 new photos (4 per class), and predict's JSON for
    the same files."""
    import contextlib
    import io
    import json
    workdir, _ = trained
    root = tmp_path_factory.mktemp("second")
    data = _write_folder(root / "clinic_c", 4, seed=9)
    out = root / "out"
    results = validate.validate(workdir, data, out)
    preds = clinical.read_predictions(out / "predictions.csv")
    files = [str(data / f) for f in preds.file]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert predict.main(["--workdir", str(workdir), "--json", "--out",
                             str(root / "cams"), *files]) == 0
    return results, preds, json.loads(buf.getvalue()), out, files


@pytest.mark.slow
def test_predict_and_validate_give_equal_probabilities_and_decisions(validated):
    results, preds, predicted, _, files = validated
    rows = predicted["predictions"]
    assert [r["file"] for r in rows] == files     # the paths as given, in validate's order
    probs = np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probs, preds.probs["cnn_calibrated"], rtol=1e-9, atol=1e-12)
    assert [r["decisions"]["argmax"] for r in rows] == [CLASSES[i] for i in
                                                        preds.pred["cnn_calibrated"]]
    assert [r["decisions"]["mec"] for r in rows] == [CLASSES[i] for i in preds.pred["cnn_mec"]]
    # each locked threshold's calls, as validate scores them, are predict's
    for task, entries in results["locked_operating_points"].items():
        score = clinical.TASKS[task].score(preds.probs["cnn_calibrated"])
        for e in entries:
            assert [r["decisions"][e["rule"]] for r in rows] == list(
                (score >= e["threshold"]).astype(int))


@pytest.mark.slow
def test_locked_operating_points_recompute_from_predictions_csv(validated, trained):
    results, _, _, out, _ = validated
    workdir, _ = trained
    import json
    card = json.loads((workdir / "model" / "model.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    p = {c: np.array([float(r[f"p_cnn_calibrated_{c}"]) for r in rows]) for c in CLASSES}
    label = np.array([r["label"] for r in rows])
    cases = {"any_disease": (label != "normal", p["heberden"] + p["ra"]),
             "ra": (label == "ra", p["ra"])}
    seen = set()
    for task, entries in results["locked_operating_points"].items():
        pos, score = cases[task]
        for e in entries:
            kind = e["rule"][len(task) + 1:]
            assert e["threshold"] == card["operating_points"][task][kind]["threshold"]
            called = score >= e["threshold"]
            assert e["sensitivity"]["value"] == pytest.approx(np.mean(called[pos]), abs=1e-12)
            assert e["specificity"]["value"] == pytest.approx(np.mean(~called[~pos]), abs=1e-12)
            lo, hi = e["sensitivity"]["ci95"]
            assert lo <= e["sensitivity"]["value"] <= hi
            seen.add(e["rule"])
    chosen = {f"{t}_{k}" for t, ks in card["operating_points"].items()
              for k, c in ks.items() if c["status"] == "chosen"}
    assert seen == chosen and chosen
    md = (out / "results.md").read_text()
    assert "## Locked operating points" in md and "Calibration (?, ours)" not in md


@pytest.mark.slow
def test_mirrored_training_photos_are_refused_by_name_or_dropped(trained, tmp_path):
    workdir, _ = trained
    data = _write_folder(tmp_path / "copies", 2, seed=0, mirror=True)  # training seed 0
    with pytest.raises(DataError, match="near-duplicates of the run's training photos") as err:
        validate.validate(workdir, data, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "mirror0_0.png ~ training photo synthetic/normal/0000" in msg
    assert "--drop-overlap" in msg
    assert validate.main(["--workdir", str(workdir), "--data", str(data), "--out",
                          str(tmp_path / "out")]) == 1
    _write_folder(data, 3, seed=7)                       # the copies plus 9 new photos
    results = validate.validate(workdir, data, tmp_path / "out", drop_overlap=True)
    dropped = sorted(Path(d["file"]).name for d in results["overlap_dropped"])
    assert dropped == sorted(f"mirror0_{i}.png" for i in range(6))
    preds = clinical.read_predictions(tmp_path / "out" / "predictions.csv")
    assert len(preds.file) == 9 and not any("mirror" in f for f in preds.file)
    assert "mirror0_0.png" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_an_unfinished_run_is_one_line(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "unfinished"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(TrainingError, match="training is not finished"):
        validate.validate(copy, tmp_path, tmp_path / "out")
