"""The locked model (``RUN/model/``): its definition against independent float64 references,
and (slow) the card a smoke run writes, loaded and applied to photos."""
import json
import shutil

import numpy as np
import pytest
from scipy import optimize, special

from handjax import evaluation as clinical, losses
from handjax.data import DataError, load_synthetic
from handjax.errors import RunError
from handjax.evaluation.scoring import probabilities
from handjax.evaluation import model_card as card
from handjax.model import locked


def _members(rng, m=5, n=200, c=3, sharp=3.0):
    """Raw member probabilities [M, N, C] and labels: noisy, overconfident members."""
    truth = rng.normal(0, 1.5, (n, c))
    labels = np.array([rng.choice(c, p=special.softmax(t)) for t in truth])
    logits = sharp * (truth[None] + rng.normal(0, 1.0, (m, n, c)))
    return special.softmax(logits, -1), labels


def _oof_predictions(probs, labels):
    """Predictions whose cnn column holds ``probs`` (one member's row per photo)."""
    n = len(labels)
    return clinical.Predictions(
        file=np.array([f"p{i}" for i in range(n)]), subject=np.array([f"s{i}" for i in range(n)]),
        fold=np.arange(n) % 5, label=labels, probs={"cnn": probs},
        pred={"cnn": probs.argmax(-1)})


# ------------------------------------------------------------------ the definition
def test_locked_probabilities_are_the_mean_of_temperature_scaled_members():
    rng = np.random.default_rng(0)
    p, _ = _members(rng)
    t = 1.7
    # reference: softmax(log p / T) per member by scipy (log p clipped at 1e-12, as the
    # run's own calibration clips it), then the plain mean
    ref = special.softmax(np.log(np.clip(p, 1e-12, 1)) / t, axis=-1).mean(0)
    np.testing.assert_allclose(card.calibrate_members(p, t), ref, rtol=1e-12, atol=1e-15)


def test_locked_temperature_minimises_the_pooled_out_of_fold_nll():
    rng = np.random.default_rng(1)
    p, y = _members(rng, m=1)
    fit = card.fit_calibration(_oof_predictions(p[0], y))
    z = np.log(np.clip(p[0], 1e-12, 1))

    def nll(log_t):   # reference NLL by scipy's logsumexp, in float64
        s = z / np.exp(log_t)
        return np.mean(special.logsumexp(s, axis=-1) - s[np.arange(len(y)), y])

    ref = optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded",
                                   options={"xatol": 1e-10})
    assert fit["temperature"] == pytest.approx(np.exp(ref.x), rel=1e-5)
    assert fit["temperature"] > 1.2          # the members are overconfident: T softens them
    assert fit["n_rows"] == len(y) and not fit["at_bound"]


def test_pooled_members_are_a_conservative_stand_in_for_the_ensemble():
    """The claim of the card and docs/model.md: the ensemble's mean predicted risk is the
    members' mean (linear), and its Brier score and log loss are at most the members'
    average (convex), so out-of-fold figures of single members are conservative."""
    rng = np.random.default_rng(2)
    p, y = _members(rng)
    t = card.fit_calibration(_oof_predictions(p.reshape(-1, 3), np.tile(y, 5)))["temperature"]
    members = special.softmax(np.log(np.clip(p, 1e-12, 1)) / t, axis=-1)
    ensemble = card.calibrate_members(p, t)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(ensemble.mean(0), members.mean((0, 1)), atol=1e-12)
    brier = lambda q: np.mean(np.sum((q - onehot) ** 2, -1))
    logloss = lambda q: -np.mean(np.log(q[np.arange(len(y)), y]))
    assert brier(ensemble) <= np.mean([brier(m) for m in members])
    assert logloss(ensemble) <= np.mean([logloss(m) for m in members])


def test_decisions_match_brute_force_references():
    rng = np.random.default_rng(3)
    probs = special.softmax(rng.normal(0, 2, (300, 3)), -1)
    rules = {"ra_sensitivity": ("ra", 0.25), "any_disease_specificity": ("any_disease", 0.8)}
    out = card.decide(probs, losses.DEFAULT_COST, rules)
    assert set(out) == {"argmax", "mec", *rules}
    np.testing.assert_array_equal(out["argmax"], probs.argmax(-1))
    # minimum expected cost by enumeration in float64: sum_i p_i cost[i, j]
    expected = np.array([[sum(p[i] * losses.DEFAULT_COST[i, j] for i in range(3))
                          for j in range(3)] for p in probs])
    margin = np.sort(expected, -1)[:, 1] - expected.min(-1)
    clear = margin > 1e-6           # float32 in the rule: skip exact ties
    np.testing.assert_array_equal(out["mec"][clear], expected.argmin(-1)[clear])
    np.testing.assert_array_equal(out["ra_sensitivity"], probs[:, 2] >= 0.25)
    np.testing.assert_array_equal(out["any_disease_specificity"], probs[:, 1] + probs[:, 2] >= 0.8)


def test_thresholds_are_chosen_on_the_calibrated_pooled_rows():
    rng = np.random.default_rng(4)
    p, y = _members(rng, m=1, n=120)
    preds = _oof_predictions(p[0], y)
    t = card.fit_calibration(preds)["temperature"]
    points = card.fit_operating_points(preds, t, {"sensitivity": 0.9, "specificity": 0.8})
    cal = special.softmax(np.log(np.clip(p[0], 1e-12, 1)) / t, -1)
    rules = card.threshold_rules(points)
    assert set(rules) == {f"{task}_{kind}" for task in clinical.TASKS
                          for kind in ("sensitivity", "specificity")}
    for name, (task, thr) in rules.items():
        kind = name[len(task) + 1:]
        score, pos = clinical.TASKS[task].score(cal), clinical.TASKS[task].positive(y)
        sens, spec = np.mean(score[pos] >= thr), np.mean(score[~pos] < thr)
        reached = sens if kind == "sensitivity" else spec
        assert reached >= {"sensitivity": 0.9, "specificity": 0.8}[kind] - 1e-12
        assert points[task][kind]["reached"] == pytest.approx(reached)
        assert np.isclose(score, thr, rtol=0, atol=1e-12).any()   # an observed score


def test_unchosen_targets_give_no_rule():
    points = {"ra": {"sensitivity": {"status": "too few to choose"},
                     "specificity": {"status": "chosen", "threshold": 0.4}}}
    assert card.threshold_rules(points) == {"ra_specificity": ("ra", 0.4)}


def test_limitations_decided_once_and_worded_by_every_audience():
    """``limitations``: the kinds by their definitions (weights, source, the two subject
    counts, each bound exclusive); the card, results.md and the web page each word exactly
    the kinds it shows, and say nothing of a pretrained run on many real subjects."""
    from types import SimpleNamespace
    from handjax.report import markdown
    from handjax.serve import app
    few, coarse = card.FEW_SUBJECTS, card.COARSE_SUBJECTS
    assert card.limitations("imagenet", {"source": "/photos", "n_subjects": few}) == {}
    assert card.limitations("none", {"n_subjects": few - 1}) == {"random_weights": None,
                                                                "few_subjects": few - 1}
    assert card.limitations(None, {"source": "synthetic", "n_subjects": coarse}) == {
        "random_weights": None, "synthetic": None, "few_subjects": coarse}
    assert card.limitations("imagenet", {"n_subjects": 3}) == {"few_subjects": 3,
                                                               "coarse_subjects": 3}
    data = {"source": "synthetic", "n_subjects": 10, "n": 20}
    spec = SimpleNamespace(model=SimpleNamespace(weights=None))
    said = {"card": " ".join(card.caveats(spec, {"data": data}, {})),
            "results.md": " ".join(markdown.caveats({"weights": "none", "data": data})),
            "page": " ".join(app.caveats({"weights": "none", "cv_figures": {"data": data}}))}
    for where, text in said.items():
        assert "Random weights" in text and "Synthetic data" in text, where
    assert "Few subjects (10)" in said["card"] and "Only 10 subjects" in said["results.md"]
    clean = {"source": "/photos", "n_subjects": 500, "n": 1000}
    pretrained = SimpleNamespace(model=SimpleNamespace(weights="imagenet"))
    assert not any(line for line in markdown.caveats({"weights": "imagenet", "data": clean}))
    assert not [c for c in card.caveats(pretrained, {"data": clean}, {})
                if c.startswith(("Random", "Synthetic", "Few"))]
    assert app.caveats({"weights": "imagenet", "cv_figures": {"data": clean}})[1:] == [
        "Trained on 1000 photos of 500 people; it has not been tested on anyone else."]


# ------------------------------------------------------------------ a smoke run (slow)
@pytest.fixture(scope="module")
def run_dir(smoke_run):
    return smoke_run


@pytest.fixture(scope="module")
def model(run_dir):
    return locked.load_model(run_dir)


@pytest.mark.slow
def test_every_run_writes_a_model_card(run_dir):
    card = json.loads((run_dir / "model" / "model.json").read_text())
    for key in ("calibration", "operating_points", "cv_figures", "intended_use", "caveats",
                "classes", "preprocessing", "image_size", "cost_matrix", "fingerprints",
                "describes", "decision_rules"):
        assert key in card, key
    assert card["classes"] == ["normal", "heberden", "ra"] and card["image_size"] == 32
    assert card["cost_matrix"] == losses.DEFAULT_COST.tolist()
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert card["fingerprints"]["data"] == ledger["data"]
    assert card["fingerprints"]["weights"] == ledger["weights"]
    assert any("Random weights" in c for c in card["caveats"])
    assert any("Synthetic data" in c for c in card["caveats"])
    results = json.loads((run_dir / "results.json").read_text())
    assert card["cv_figures"]["clinical"]["cnn_calibrated"] == results["clinical"]["cnn_calibrated"]
    # the definition, recomputed from predictions.csv alone
    preds = clinical.read_predictions(run_dir / "predictions.csv")
    z = np.log(np.clip(preds.probs["cnn"], 1e-12, 1))

    def nll(log_t):
        s = z / np.exp(log_t)
        return np.mean(special.logsumexp(s, -1) - s[np.arange(len(preds.label)), preds.label])

    ref = optimize.minimize_scalar(nll, bounds=(-4, 4), method="bounded",
                                   options={"xatol": 1e-10})
    assert card["calibration"]["temperature"] == pytest.approx(np.exp(ref.x), rel=1e-4)


@pytest.mark.slow
def test_locked_probabilities_recompute_from_each_member(model):
    x = load_synthetic(n_per_class=4, image_size=32, seed=11).images   # 12 photos
    got = model.probabilities(x)
    members = []
    for k in range(model.n_members):   # each member's full Classifier, independently
        logits, _ = model.run.model.apply(model.member(k), x, train=False, mode="tune")
        members.append(np.asarray(probabilities("categorical", logits), np.float64))
    ref = special.softmax(np.log(np.stack(members)) / model.temperature, -1).mean(0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    for n in (1, 3, 8, 11):                       # padded batches: one compilation for all
        model.probabilities(x[:n])
    assert model._forward._cache_size() == 1
    decided = model.decide(got)
    assert set(decided) >= {"argmax", "mec"}
    cams = model.grad_cam(x[:3])
    assert cams.shape[0] == 3 and cams.min() >= 0 and cams.max() <= 1


@pytest.mark.slow
def test_prepare_decodes_paths_and_bytes_alike(model, tmp_path, save_image):
    from PIL import Image
    im = Image.fromarray(load_synthetic(n_per_class=1, image_size=64, seed=2).images[0])
    path = save_image(tmp_path / "hand.jpg", im)
    a, b = model.prepare(path), model.prepare(path.read_bytes())
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="upload.jpg: not a readable image"):
        model.prepare(b"not a photo", name="upload.jpg")


@pytest.mark.slow
def test_missing_card_unfinished_run_or_changed_checkpoint_is_one_line(run_dir, tmp_path):
    copy = tmp_path / "copy"   # the run without its 100+ MB checkpoint, linked instead
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "checkpoints").symlink_to(run_dir / "checkpoints", target_is_directory=True)
    card_path = copy / "model" / "model.json"
    card = json.loads(card_path.read_text())
    card_path.unlink()
    with pytest.raises(RunError, match="model.json not found.*rerun its launch command"):
        locked.load_model(copy)
    (copy / "INCOMPLETE").write_text("x")
    with pytest.raises(RunError, match="unfinished run"):
        locked.load_model(copy)
    (copy / "INCOMPLETE").unlink()
    card["fingerprints"]["checkpoint"] = "0" * 64   # the card of another checkpoint
    card_path.write_text(json.dumps(card))
    with pytest.raises(RunError, match="differs from the checkpoint") as err:
        locked.load_model(copy)
    assert "\n" not in str(err.value)
    card["format"] = 0
    card_path.write_text(json.dumps(card))
    with pytest.raises(RunError, match="has format 0"):
        locked.load_model(copy)
    with pytest.raises(RunError, match="config.json not found"):
        locked.load_model(tmp_path / "nothing")

def test_locked_operating_points_at_a_fixed_threshold():
    from handjax.evaluation import evaluators
    rng = np.random.default_rng(5)
    n = 60
    probs = special.softmax(rng.normal(0, 1.5, (n, 3)), -1)
    y = rng.integers(0, 3, n)
    preds = clinical.Predictions(
        file=np.array([f"p{i}" for i in range(n)]), subject=np.array([f"s{i // 2}" for i in range(n)]),
        fold=np.full(n, -1), label=y, probs={"cnn_calibrated": probs},
        pred={"cnn_calibrated": probs.argmax(-1)})
    rules = {"ra_sensitivity": ("ra", 0.3)}
    choices = {"ra": {"sensitivity": {"target": "sensitivity >= 0.9", "reached": 0.92,
                                      "n_chosen_on": 40}}}
    out = evaluators.locked_operating_points(preds, rules, choices, n_boot=200, seed=0)
    (entry,) = out["ra"]
    called, pos = probs[:, 2] >= 0.3, y == 2
    assert entry["threshold"] == 0.3 and entry["target"] == "sensitivity >= 0.9"
    assert entry["development"] == {"sensitivity": 0.92, "n_chosen_on": 40}
    assert entry["sensitivity"]["value"] == pytest.approx(called[pos].mean())
    assert entry["specificity"]["value"] == pytest.approx((~called[~pos]).mean())
    fn = evaluators._at_threshold("ra", 0.3)
    num, den = fn.proportions(y, probs, None)["sensitivity"]
    assert num.sum() / den.sum() == pytest.approx(entry["sensitivity"]["value"])
    with pytest.raises(KeyError, match="no evaluator registered"):
        evaluators.evaluate(preds, evaluators.Context(n_boot=0, seed=0), ["nope"])


def test_checkpoint_fingerprint_sees_every_byte_and_name(tmp_path):
    (tmp_path / "checkpoints" / "3" / "state").mkdir(parents=True)
    f = tmp_path / "checkpoints" / "3" / "state" / "array"
    f.write_bytes(b"\x00" * 5000)
    (tmp_path / "checkpoints" / "meta.json").write_text("{}")
    first = card.checkpoint_fingerprint(tmp_path)
    assert first == card.checkpoint_fingerprint(tmp_path)
    f.write_bytes(b"\x00" * 4999 + b"\x01")
    changed = card.checkpoint_fingerprint(tmp_path)
    f.rename(f.with_name("other"))
    assert len({first, changed, card.checkpoint_fingerprint(tmp_path)}) == 3
