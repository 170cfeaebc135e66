"""Nothing lost, nothing silent (issue 36): no command writes into a folder that holds another
command's results or the user's photos, every photo left out is recorded with its reason,
every path is resolved once where it comes in.

Each refused command is checked to leave the folder it was refused byte-identical. The fast
tests use a workdir that looks like a finished run (the guards run before any model loads);
the slow ones one tiny trained smoke run (VGG16, 32 px, random weights).
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handjax import predict, validate
from handjax.data import folders, preview
from handjax.data.records import DataError

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(workdir: Path) -> Path:
    """A folder holding what a finished run leaves (contents stand-ins)."""
    workdir.mkdir(parents=True)
    for name in ("config.json", "ledger.json", "results.json"):
        (workdir / name).write_text('{"name": "the run"}\n')
    (workdir / "results.md").write_text("# the run\n")
    (workdir / "predictions.csv").write_text("file,label\nnormal/a.png,0\n")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(workdir / "roc.png")
    return workdir


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("handjax: error:"), stderr
    return lines[0]


# ------------------------------------------------------------- 1: validate --out <the run>
def test_validate_into_the_runs_own_workdir_is_refused_and_changes_nothing(
        tmp_path, image_folder, capsys):
    run = fake_run(tmp_path / "run")
    photos = image_folder(tmp_path / "clinic_b")
    before, photos_before = snapshot(run), snapshot(photos)
    rc = validate.main(["--workdir", str(run), "--data", str(photos), "--out", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1
    assert f"--out {run.resolve()} is a training run's workdir" in line
    assert "nothing was written" in line
    assert snapshot(run) == before and snapshot(photos) == photos_before


@pytest.mark.parametrize("where", ["photos", "class_folder", "inside_data"])
def test_validate_into_the_photos_is_refused(tmp_path, image_folder, capsys, where):
    run = fake_run(tmp_path / "run")
    photos = image_folder(tmp_path / "clinic_b")
    out = {"photos": photos, "class_folder": photos / "ra",
           "inside_data": photos / "results"}[where]
    before = snapshot(photos)
    assert validate.main(["--workdir", str(run), "--data", str(photos), "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(out.resolve()) in line and ("holds photos" in line or "lies inside" in line)
    assert snapshot(photos) == before and not (photos / "results").exists()


def test_validate_into_another_validations_folder_is_refused(tmp_path, image_folder):
    out = tmp_path / "val"
    out.mkdir()
    (out / folders.MARKER).write_text(json.dumps(
        {"command": "validate", "inputs": {"workdir": "/a", "data": "/b"}}))
    (out / "results.json").write_text("{}")
    with pytest.raises(DataError, match="holds the outputs of another validate"):
        folders.check_output(out, "validate", {"workdir": "/a", "data": "/c"})
    # the same validation rerun may write there again
    assert folders.check_output(out, "validate", {"workdir": "/a", "data": "/b"}) == out


def test_a_folder_holding_only_a_marker_counts_as_empty(tmp_path):
    out = folders.claim_output(tmp_path / "o", "predict", {"workdir": "/a"})
    assert folders.check_output(out, "validate", {"x": 1}) == out


def test_output_folder_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "f"
    f.write_text("keep me")
    with pytest.raises(DataError, match="is a file"):
        folders.claim_output(f, "predict", {})
    assert f.read_text() == "keep me"


def test_export_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("keep me")
    with pytest.raises(SystemExit):
        preview.main(["export", "--out", str(tmp_path / "f" / "samples")])
    assert "cannot write into" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------- 2: export into real photos
def test_export_into_a_folder_of_real_photos_is_refused_and_changes_nothing(
        tmp_path, image_folder, capsys):
    photos = image_folder(tmp_path / "photos")
    Image.new("RGB", (30, 20), (9, 9, 9)).save(photos / "normal" / "0000.png")  # a real one
    before = snapshot(photos)
    with pytest.raises(SystemExit) as stop:
        preview.main(["export", "--out", str(photos), "--n", "2"])
    assert stop.value.code == 1   # bad input (2 is for usage)
    line = one_error_line(capsys.readouterr().err)
    assert "holds photos" in line and "nothing was written" in line
    assert snapshot(photos) == before


def test_export_reruns_into_its_own_folder_but_not_with_other_settings(tmp_path):
    out = tmp_path / "samples"
    first = preview.export_samples(out, 2, seed=0)
    again = preview.export_samples(out, 2, seed=0)      # the same export: allowed
    assert first == again
    before = snapshot(out)
    with pytest.raises(DataError, match="another data export"):
        preview.export_samples(out, 3, seed=1)
    assert snapshot(out) == before


# ------------------------------------------------------------- 10: predict's messages
def test_a_photo_name_beginning_with_a_dash_says_to_put_double_dash_first(tmp_path):
    photo = tmp_path / "-hand.png"
    Image.new("RGB", (20, 20)).save(photo)
    out = subprocess.run([sys.executable, "-m", "handjax.predict", "--workdir", "w",
                          "-hand.png"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env={**__import__("os").environ,
                                           "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    line = one_error_line(out.stderr)
    assert "-hand.png" in line and "put -- before" in line


def test_predict_on_a_killed_run_says_unfinished(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    (run / "results.json").unlink()          # killed in training: no results yet
    (run / "INCOMPLETE").write_text("")
    photo = tmp_path / "hand.png"
    Image.new("RGB", (20, 20)).save(photo)
    before = snapshot(run)
    assert predict.main(["--workdir", str(run), str(photo)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "unfinished run" in line
    assert snapshot(run) == before


def test_predict_out_into_the_photos_folder_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    photo = tmp_path / "mine" / "hand.png"
    photo.parent.mkdir()
    Image.new("RGB", (20, 20)).save(photo)
    before = snapshot(photo.parent)
    assert predict.main(["--workdir", str(run), "--out", str(photo.parent), str(photo)]) == 1
    assert "holds photos" in one_error_line(capsys.readouterr().err)
    assert snapshot(photo.parent) == before


def test_skipped_files_are_in_results_md_with_their_reason(tmp_path, image_folder):
    from handjax import data
    from handjax.report import markdown
    folder = image_folder(tmp_path / "photos")
    (folder / "ra" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(UserWarning):
        ex = data.load_folder(folder, image_size=32, on_error="skip")
    md = markdown.clinical_markdown({"clinical": {}, "data": data.describe(ex)})
    assert "## Photos left out: 1" in md and "| ra/broken.jpg | not a readable image |" in md


# ------------------------------------------------------------- a real run, end to end
@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory):
    """A tiny run on an exported folder given by a *relative* ``data.root`` with one broken
    photo and ``on_error=skip``; returns (workdir, photos folder, base folder)."""
    import os
    from cells import run, tiny_config
    base = tmp_path_factory.mktemp("nothing_lost")
    preview.export_samples(base / "photos", 6, seed=0)
    (base / "photos" / "ra" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    c = tiny_config()
    c.data.root, c.data.on_error = "photos/", "skip"      # relative, with a trailing slash
    cwd = os.getcwd()
    os.chdir(base)
    try:
        with pytest.warns(UserWarning, match="skipped 1 unreadable"):
            run(c, base / "run")
    finally:
        os.chdir(cwd)
    return base / "run", base / "photos", base


@pytest.mark.slow
def test_a_skipped_photo_is_recorded_and_the_root_resolved(skipped_run):
    workdir, photos, _ = skipped_run
    results = json.loads((workdir / "results.json").read_text())
    assert results["data"]["left_out"] == [{"file": "ra/broken.jpg",
                                            "reason": "not a readable image"}]
    md = (workdir / "results.md").read_text()
    assert "| ra/broken.jpg | not a readable image |" in md
    assert "1 photo(s) left out, listed under Photos left out" in md     # in the Data line
    assert json.loads((workdir / "config.json").read_text())["data"]["root"] == str(photos)


@pytest.mark.slow
def test_validate_into_the_run_leaves_it_byte_identical_then_validates_elsewhere(
        skipped_run, tmp_path, monkeypatch, capsys):
    """From another folder: the run's relative root was recorded resolved; the second set's
    folders are named otherwise and mapped with --class-map; its broken photo is recorded."""
    workdir, _, _ = skipped_run
    clinic = tmp_path / "clinic_b"
    preview.export_samples(clinic, 2, seed=11)
    for old, new in (("normal", "healthy"), ("heberden", "OA"), ("ra", "RA")):
        (clinic / old).rename(clinic / new)
    (clinic / "RA" / "bad.png").write_bytes(b"garbage")
    monkeypatch.chdir(tmp_path)
    before = snapshot(workdir)
    assert validate.main(["--workdir", str(workdir), "--data", "clinic_b", "--out",
                          str(workdir), "--class-map", "healthy:normal,OA:heberden,RA:ra"]) == 1
    assert "is a training run's workdir" in one_error_line(capsys.readouterr().err)
    assert snapshot(workdir) == before
    rc = validate.main(["--workdir", str(workdir), "--data", "clinic_b/", "--out", "val",
                        "--class-map", "healthy:normal,OA:heberden,RA:ra", "--drop-overlap"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"skipped 1 unreadable image file(s) in {clinic}: RA/bad.png" in err
    results = json.loads((tmp_path / "val" / "results.json").read_text())
    assert results["data"]["source"] == str(clinic)
    assert results["data"]["left_out"] == [{"file": "RA/bad.png",
                                            "reason": "not a readable image"}]
    assert "| RA/bad.png | not a readable image |" in (tmp_path / "val" / "results.md").read_text()
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_predict_scores_the_good_photos_names_the_bad_one_and_shows_paths(
        skipped_run, tmp_path, capsys, monkeypatch):
    workdir, photos, base = skipped_run
    monkeypatch.chdir(base)
    rc = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "cams"),
                       "photos/normal/0000.png", "photos/ra/broken.jpg",
                       "photos/ra/0000.png"])
    captured = capsys.readouterr()
    assert rc == 1
    line = one_error_line(captured.err)
    assert "photos/ra/broken.jpg" in line and "the other photos were scored" in line
    rows = [l.split()[0] for l in captured.out.splitlines() if l.startswith("photos/")]
    assert rows == ["photos/normal/0000.png", "photos/ra/0000.png"]


# ------------------------------------------------------------- 14: outputs a reader can read
def test_a_target_met_only_at_zero_sensitivity_says_so():
    """The top score is one negative's of 16: the threshold there has specificity 15/16 =
    0.938 >= 0.9 but finds no positive, so no threshold is chosen; the text must not read
    "unreachable: best 0.938" for a 0.9 target."""
    from handjax import evaluation as clinical
    positive = np.r_[np.ones(12, bool), np.zeros(16, bool)]
    scores = np.r_[np.linspace(0.3, 0.6, 12), np.linspace(0.2, 0.8, 15), 2.0]
    c = clinical.threshold_choice(scores, positive, target=0.9, kind="specificity")
    assert c["status"] == "unreachable" and c["best_reached"] == 15 / 16
    text = clinical.describe_choice(c)
    assert text == "reachable only at sensitivity 0 (specificity 0.938 there; on 16 negatives)"


def _blue_pixels(path) -> int:
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(np.sum((a[..., 2] > a[..., 0] + 40) & (a[..., 2] > a[..., 1] + 15)))


def test_the_decision_curves_model_line_shows_where_it_equals_treat_all(tmp_path):
    """A model that treats everyone has exactly the treat-all curve: at least half of its
    line's pixels must still show (measured 0.68; the old drawing showed 0.29, in the gaps
    of the dashes only), against the same line drawn alone."""
    from handjax.report import plots
    t = np.arange(1, 100) / 100
    everyone = 0.4 - 0.6 * t / (1 - t)

    def draw(name, treat_all):
        rows = [{"threshold": float(x), "net_benefit": float(m), "treat_all": a}
                for x, m, a in zip(t, everyone, treat_all)]
        return _blue_pixels(plots.plot_decision_curve(tmp_path / f"{name}.png",
                                                      {"any_disease": rows}))
    assert draw("same", everyone.tolist()) >= 0.5 * draw("alone", [None] * len(t))


def test_a_long_confusion_title_is_wrapped_inside_the_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from handjax.report import plots
    title = ("vgg19_custom validated on /home/someone/photos/clinics/clinic_b_2026_winter_"
             "phones\ncnn_calibrated")
    fig = plots.confusion_figure(np.eye(3, dtype=int), ["normal", "heberden", "ra"], title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.axes[0].title.get_window_extent(canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_wrap_title_keeps_every_character_and_breaks_paths_at_slashes():
    from handjax.report import plots
    text = "run x validated on /a/bbbbbbbbbb/cccccccccc/dddddddddd/eeeeeeeeee/ffffffffff"
    wrapped = plots.wrap_title(text, 2.0, 10)          # 24 characters a line
    assert len(wrapped.splitlines()) > 1
    assert all(len(line) <= 24 for line in wrapped.splitlines())
    assert wrapped.replace("\n", "").replace(" ", "") == text.replace(" ", "")
    assert all(line.endswith("/") for line in wrapped.splitlines()[1:-1])


@pytest.mark.slow
def test_refused_reruns_leave_a_finished_run_byte_identical_and_finished(
        skipped_run, tmp_path, monkeypatch):
    """A rerun with another config (refused by config.json) and one on other data (refused
    by the ledger, after the photos are read) change no byte of the run: not its lock file,
    and no INCOMPLETE marker that would make a finished run read as unfinished."""
    import shutil
    from cells import run, tiny_config
    from handjax.errors import TrainingError
    workdir, _, base = skipped_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    ledger = json.loads((copy / "ledger.json").read_text())
    ledger["data"] = "0" * 64                 # as if the run had trained on other photos
    (copy / "ledger.json").write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    monkeypatch.chdir(base)
    c = tiny_config()
    c.data.root, c.data.on_error = "photos/", "skip"
    before = snapshot(copy)
    with pytest.warns(UserWarning):
        with pytest.raises(TrainingError, match="other data"):
            run(c, copy)
    assert snapshot(copy) == before and not (copy / "INCOMPLETE").exists()
    c.train.lr1 = 0.5
    with pytest.raises(TrainingError, match="another config"):
        run(c, copy)
    assert snapshot(copy) == before


def test_roc_and_reliability_say_whose_predictions_they_are(tmp_path, monkeypatch):
    """The title a caller gives (a validation's name) is the one drawn above the panels."""
    from matplotlib.figure import Figure
    from handjax.report import plots
    drawn = []
    real = Figure.suptitle

    def spy(self, text, **kw):
        drawn.append(text)
        return real(self, text, **kw)
    monkeypatch.setattr(Figure, "suptitle", spy)
    y = np.array([0, 1, 2, 0, 1, 2])
    prob = np.full((6, 3), 1 / 3)
    name = "vgg19_custom validated on /data/clinic_b"
    plots.plot_roc(tmp_path / "roc.png", y, prob, title=name)
    plots.plot_reliability(tmp_path / "rel.png", y, {"after calibration": prob}, {},
                           title=name)
    assert drawn == [name, name]
