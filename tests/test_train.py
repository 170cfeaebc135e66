"""The run of one cell: results layout, determinism, resume, final checkpoints, guards,
cached == plain, sharding, and the golden confusion matrices.

Everything runs VGG16 at 32 px on 30 synthetic images (random weights), 2+1 epochs, so a
run takes seconds once compiled; runs share a persistent compilation cache.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cells import prepare, run, tiny_config, tiny_spec
from handjax import evaluation as clinical
from handjax.train import fold_program as folds
from handjax.metrics import STUDY_METRICS
from handjax.errors import TrainingError

pytestmark = pytest.mark.slow  # every test trains the smoke cell (end to end)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "smoke_confusions.json"


@pytest.fixture(scope="module")
def workroot(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(workroot):
    """One uninterrupted tiny run; other tests compare against it."""
    workdir = workroot / "reference"
    results = run(tiny_config(), workdir)
    return workdir, results


def _results(workdir):
    return json.loads((Path(workdir) / "results.json").read_text())


def test_results_layout(reference):
    workdir, results = reference
    assert results == _results(workdir)
    assert results["n_folds"] == 5 and results["data"]["n"] == 30
    assert results["data"]["class_counts"] == {"normal": 10, "heberden": 10, "ra": 10}
    for name in clinical.STUDY_RULES:
        d = results["decisions"][name]
        for key in STUDY_METRICS:
            per_fold = d["per_fold"][key]
            assert len(per_fold) == 5
            assert np.isclose(d["mean"][key], np.mean(per_fold))
            assert np.isclose(d["std"][key], np.std(per_fold))
        acc = np.array(d["per_fold"]["accuracy"])
        assert ((0 <= acc) & (acc <= 1)).all()
        plus = np.array(d["per_fold"]["custom_plus"])
        assert ((0 <= plus) & (plus <= 2)).all()
        cms = np.array(d["confusion"])
        assert cms.shape == (5, 3, 3)
        assert cms.sum() == 30                       # every image tested exactly once
        assert (cms.sum(axis=(0, 2)) == 10).all()    # ... and its true class kept
        assert np.allclose(acc, np.trace(cms, axis1=1, axis2=2) / cms.sum(axis=(1, 2)))
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5 * 3                       # folds x (2 + 1) epochs
    assert {(l["phase"], l["epoch"]) for l in lines} == {(1, 0), (1, 1), (2, 0)}
    assert (workdir / "results.md").exists() and (workdir / "config.json").exists()


def test_golden_confusion_matrices(reference):
    """The smoke cell's confusion matrices, pinned: a refactor must not change a result.
    The file was written by the code before the one-job-per-module redesign; regenerate it
    (``python tests/golden/make_golden.py``) only with a change that means to alter results."""
    golden = json.loads(GOLDEN.read_text())["vgg16_categorical"]
    decisions = reference[1]["decisions"]
    assert {k: decisions[k]["confusion"] for k in golden} == golden


def test_same_seed_same_results(reference, workroot):
    _, results = reference
    again = run(tiny_config(), workroot / "again")
    assert again == results


def test_resume_after_interruption_equals_uninterrupted(reference, workroot, monkeypatch):
    from handjax.train import checkpoint
    workdir = workroot / "interrupted"
    real_save = checkpoint.save
    calls = []

    def save_then_die(manager, step, state, wait=True):
        real_save(manager, step, state, wait)
        calls.append(step)
        if step == 2:                                # killed after phase 1
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(checkpoint_secs=0.0), workdir)   # a checkpoint every epoch
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert calls == [1, 2]
    assert not (workdir / "results.json").exists()
    resumed = run(tiny_config(checkpoint_secs=0.0), workdir)
    assert resumed == reference[1]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 15                          # no duplicated epochs after resume


def test_final_checkpoint_holds_no_optimiser_state_and_a_rerun_restores_it(
        reference, prepared, workroot):
    from handjax.train import checkpoint
    workdir, results = reference
    spec, (_, inputs) = prepared
    states = folds.states_for(2, inputs.fold_model, spec)
    assert jax.tree.leaves(states.opt_state)
    finished = workroot / "finished"
    shutil.copytree(workdir, finished)
    (finished / "results.json").unlink()
    manager = checkpoint.manager(finished)
    assert not checkpoint.has_opt_state(manager, checkpoint.latest(manager), states)
    checkpoint.close(manager)
    assert run(tiny_config(), finished) == results    # evaluates the restored folds
    assert len((finished / "metrics.jsonl").read_text().splitlines()) == 15


def test_the_run_uses_the_programs_compiled_ahead(reference, workroot, monkeypatch):
    """The frozen prefix compiles in the background while the photos load
    (features.ModelAhead), and both phases' epoch programs while the prefix runs
    (fit.Ahead): the run's own thread compiles none of them, and the run is byte for byte
    the run that compiles each program where it is first needed."""
    from handjax.models import frozen
    from handjax.train import fit as fitting
    behind, prefixes = [], []
    compile_epoch, prefix_program = fitting.compile_epoch, frozen.prefix_program
    monkeypatch.setattr(fitting, "compile_epoch",
                        lambda *a, **k: behind.append(a[4]) or compile_epoch(*a, **k))
    monkeypatch.setattr(frozen, "prefix_program", lambda *a, **k: prefixes.append(
        threading.current_thread().name) or prefix_program(*a, **k))
    run(tiny_config(), workroot / "ahead")
    assert behind == [] and prefixes == ["handjax-model-ahead"]
    timing = json.loads((workroot / "ahead" / "timing.json").read_text())
    assert timing["ahead_phase1_s"] > 0 and timing["ahead_phase2_s"] > 0
    monkeypatch.setattr(fitting.Ahead, "start", classmethod(lambda cls, *a: None))
    monkeypatch.setattr(frozen.Prefix, "fits", lambda self, flat, batch: False)
    run(tiny_config(), workroot / "no-ahead")
    assert behind == [1, 2]
    assert prefixes == ["handjax-model-ahead"] * 2 + ["MainThread"]
    for name in ("predictions.csv", "results.json"):
        assert ((workroot / "ahead" / name).read_bytes()
                == (workroot / "no-ahead" / name).read_bytes()
                == (reference[0] / name).read_bytes())


def test_a_model_that_fails_ahead_fails_in_the_run(workroot, monkeypatch):
    """What the background thread raises (here a weight file that does not load) is raised
    by the run itself, as it would be without the thread."""
    from handjax.train import features
    def broken(*a, **k):
        raise TrainingError("the weights in w.h5 do not load")
    monkeypatch.setattr(features, "fold_model", broken)
    with pytest.raises(TrainingError, match="w.h5"):
        run(tiny_config(), workroot / "broken")


def test_other_config_in_same_workdir_is_refused(reference):
    workdir, _ = reference
    with pytest.raises(TrainingError, match="train.lr1"):
        run(tiny_config(lr1=0.5), workdir)


def test_nan_guard_names_fold_phase_step(workroot, monkeypatch):
    def poisoned(spec):
        return lambda logits, labels: jnp.full(labels.shape, jnp.nan)
    monkeypatch.setattr(folds, "make_loss", poisoned)
    with pytest.raises(TrainingError, match=r"fold 0, phase 1, epoch 0, step 0"):
        run(tiny_config(), workroot / "nan")


@pytest.fixture(scope="module")
def prepared():
    spec = tiny_spec()
    return spec, prepare(spec)


def test_cached_path_equals_plain_path(reference, workroot):
    """The shared frozen-layer cache changes speed, not results."""
    plain = run(tiny_config(mode="plain"), workroot / "plain")
    cached = reference[1]
    for name in ("cnn", "cnn_mec"):
        for key in STUDY_METRICS:
            np.testing.assert_allclose(plain["decisions"][name]["per_fold"][key],
                                       cached["decisions"][name]["per_fold"][key],
                                       atol=1e-6)
    # The SVM sees features that agree to float32 rounding; its decisions may differ only
    # for a point on a margin, which we do not expect on 30 images.
    assert plain["decisions"]["svm"]["confusion"] == cached["decisions"]["svm"]["confusion"]


SHARD_SCRIPT = r"""
import json, sys
import jax
from handjax import config
from handjax.train import run as train
assert jax.device_count() == 4, jax.devices()
out = {}
for shard in (False, True):
    c = config.cell("vgg16", "categorical", "smoke")
    c.n_folds = 4
    c.train.shard_folds = shard
    r = train.run(config.parse_run(c), f"{sys.argv[1]}/shard_{shard}")
    out[str(shard)] = r["decisions"]
print(json.dumps(out))
"""


def test_fold_axis_sharded_over_four_devices_matches_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for name in clinical.STUDY_RULES:
        for key in STUDY_METRICS:
            np.testing.assert_allclose(res["True"][name]["per_fold"][key],
                                       res["False"][name]["per_fold"][key], atol=1e-6)


def test_clinical_figures_equal_sklearn_on_predictions_csv(reference):
    """Every clinical figure in results.json is recomputable from predictions.csv."""
    import csv
    from sklearn.metrics import cohen_kappa_score, log_loss, roc_auc_score
    workdir, results = reference
    rows = list(csv.DictReader((workdir / "predictions.csv").open()))
    assert len(rows) == 30 and {r["fold"] for r in rows} == {"0", "1", "2", "3", "4"}
    names = ["normal", "heberden", "ra"]
    y = np.array([names.index(r["label"]) for r in rows])
    for rule in ("cnn", "cnn_calibrated", "svm"):
        p = np.array([[float(r[f"p_{rule}_{c}"]) for c in names] for r in rows])
        pred = np.array([names.index(r[f"pred_{rule}"]) for r in rows])
        got = results["clinical"][rule]
        assert got["auroc_macro"]["value"] == pytest.approx(
            roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-9)
        assert got["auroc_ra"]["value"] == pytest.approx(roc_auc_score(y == 2, p[:, 2]),
                                                         abs=1e-9)
        assert got["qwk"]["value"] == pytest.approx(
            cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-9)
        assert got["log_loss"]["value"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]),
                                                         abs=1e-9)
        assert got["accuracy"]["value"] == pytest.approx(np.mean(y == pred), abs=1e-12)
        lo, hi = got["accuracy"]["ci95"]
        assert lo <= got["accuracy"]["value"] <= hi
    for f in ("roc.png", "reliability.png", "predictions.csv"):
        assert (workdir / f).stat().st_size > 500
    md = (workdir / "results.md").read_text()
    assert "headline" in md and "AUROC" in md and "Operating points" in md


@pytest.mark.slow
def test_repeats_predict_every_photo_twice_and_the_first_repeat_is_the_single_run(
        reference, workroot):
    """``repeats=2``: R x K fold models trained as one program; every photo predicted once
    per repeat; repeat 0 (seed's fold assignment, the same head keys and batches) gives the
    R = 1 run's predictions."""
    from handjax import evaluation as clinical
    c = tiny_config()
    c.repeats = 2
    results = run(c, workroot / "repeats2")
    two = clinical.read_predictions(workroot / "repeats2" / "predictions.csv")
    one = clinical.read_predictions(reference[0] / "predictions.csv")
    assert two.repeats == 2 and len(two.file) == 2 * len(one.file)
    for r in range(2):
        assert sorted(two.rows(two.repeat == r).file) == sorted(one.file)
    first = two.rows(two.repeat == 0)
    np.testing.assert_array_equal(first.file, one.file)
    np.testing.assert_array_equal(first.fold, one.fold)
    for rule in ("cnn", "cnn_calibrated", "svm"):
        np.testing.assert_allclose(first.probs[rule], one.probs[rule], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(first.pred["cnn"], one.pred["cnn"])
    assert len(results["clinical_per_repeat"]) == 2 and results["repeats"] == 2
    assert len(results["calibration"]["temperatures"]) == 2 * c.n_folds
    assert not np.array_equal(two.rows(two.repeat == 1).fold, first.fold)
    # the pooled figure is the mean over repeats, with the between-repeat SD beside it
    pooled = results["clinical"]["cnn_calibrated"]["brier"]
    each = [rep["cnn_calibrated"]["brier"]["value"] for rep in results["clinical_per_repeat"]]
    assert pooled["value"] == pytest.approx(np.mean(each), abs=1e-12)
    assert pooled["between_repeat_sd"] == pytest.approx(np.std(each, ddof=1), abs=1e-12)
    assert "between-repeat SD" in (workroot / "repeats2" / "results.md").read_text()
