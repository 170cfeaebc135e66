"""Scoring: the SVM stage equals sklearn's pipeline run directly; decision summaries."""
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cells import tiny_spec
from handjax import data, evaluate, features, folds


def test_svm_stage_equals_sklearn_directly():
    spec = tiny_spec()
    prep = features.prepare(spec)
    states = folds.states_for(1, prep, spec)
    _, pooled = evaluate.fold_outputs(states, prep, "vmap")
    ours = evaluate.svm_fold_predictions(pooled, prep.examples.labels, prep.folds,
                                         kernel="rbf", C=1.0, class_weight="balanced")
    for k, (tr, te) in enumerate(prep.folds):
        ref = Pipeline([("s", StandardScaler()),
                        ("c", SVC(kernel="rbf", C=1.0, class_weight="balanced"))])
        ref.fit(pooled[k][tr].astype(np.float64), prep.examples.labels[tr])
        np.testing.assert_array_equal(ours[k], ref.predict(pooled[k][te].astype(np.float64)))


def test_decision_summary_mean_std_and_sums():
    cms = np.array([[[2, 0, 0], [1, 1, 0], [0, 1, 1]],
                    [[1, 1, 0], [0, 2, 0], [0, 0, 2]]])
    s = evaluate.decision_summary(cms)
    np.testing.assert_allclose(s["per_fold"]["accuracy"], [4 / 6, 5 / 6], rtol=1e-6)
    assert np.isclose(s["mean"]["accuracy"], 0.75)
    assert np.isclose(s["std"]["accuracy"], np.std([4 / 6, 5 / 6]))
    assert s["confusion_sum"] == cms.sum(0).tolist()
    assert set(s["per_fold"]) == set(evaluate.METRIC_KEYS)


# --------------------------------------------------------------------------- out of fold
def _fake_prep(n_per_class=12, k=3, inner_frac=0.25, seed=0):
    """A Prepared-like stand-in: labels, folds, inner splits (no model needed)."""
    from types import SimpleNamespace
    from sklearn.model_selection import StratifiedKFold
    labels = np.repeat(np.arange(3), n_per_class)
    n = len(labels)
    folds_ = [(tr, te) for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed)
              .split(np.zeros(n), labels)]
    inner = data.inner_splits(folds_, labels, np.arange(n), inner_frac, seed)
    examples = SimpleNamespace(labels=labels, ids=[f"p{i}" for i in range(n)],
                               class_names=("normal", "heberden", "ra"))
    return SimpleNamespace(examples=examples, folds=folds_, inner=inner,
                           subjects=np.array([f"s{i}" for i in range(n)]), metadata={})


def test_inner_splits_lie_inside_training_and_never_touch_test():
    prep = _fake_prep()
    for (tr, te), inner in zip(prep.folds, prep.inner):
        assert len(inner) > 0
        assert set(inner) <= set(tr) and not set(inner) & set(te)
        assert set(np.bincount(prep.examples.labels[inner], minlength=3)) != {0}


def test_calibration_and_thresholds_only_see_inner_photos(monkeypatch):
    """Record which photos the temperature fit and the threshold choice receive: only the
    inner split of each fold, never one of its test photos."""
    from handjax import clinical
    prep = _fake_prep()
    n, k = len(prep.examples.labels), len(prep.folds)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(k, n, 3)).astype(np.float32)
    pooled = rng.normal(size=(k, n, 4)).astype(np.float32)
    seen = {"temperature": [], "threshold": []}
    real_fit, real_choose = clinical.fit_temperature, clinical.choose_threshold
    probs = np.asarray(evaluate.probabilities("categorical", logits), np.float64)

    def fit(z, y, *a, **kw):
        seen["temperature"].append(np.exp(z))
        return real_fit(z, y, *a, **kw)

    def choose(scores, positive, **kw):
        seen["threshold"].append(np.asarray(scores))
        return real_choose(scores, positive, **kw)
    monkeypatch.setattr(clinical, "fit_temperature", fit)
    monkeypatch.setattr(clinical, "choose_threshold", choose)
    preds, calib = evaluate.out_of_fold(
        (logits, pooled), prep, loss_name="categorical",
        svm=type("S", (), dict(kernel="rbf", C=1.0, class_weight="balanced")), seed=0,
        targets={"sensitivity": 0.9, "specificity": 0.9})
    assert len(seen["temperature"]) == k
    for f, (rows, (_, te)) in enumerate(zip(seen["temperature"], prep.folds)):
        inner = prep.inner[f]
        np.testing.assert_allclose(rows, probs[f, inner], rtol=1e-5)
        assert not set(inner) & set(te)
    assert len(seen["threshold"]) == 4 * k          # 2 tasks x 2 targets per fold
    for f in range(k):
        for scores in seen["threshold"][4 * f:4 * f + 4]:
            assert len(scores) == len(prep.inner[f])
    # every photo predicted once, by the fold that held it out
    assert sorted(np.concatenate([te for _, te in prep.folds])) == list(range(n))
    for f, (_, te) in enumerate(prep.folds):
        assert (preds.fold[te] == f).all()
        np.testing.assert_allclose(preds.probs["cnn"][te], probs[f, te], rtol=1e-6)
    assert all(t > 0 for t in calib["temperatures"])


def _random_out_of_fold(prep, seed: int):
    """:func:`evaluate.out_of_fold` of random per-fold logits and pooled features."""
    n, k = len(prep.examples.labels), len(prep.folds)
    rng = np.random.default_rng(seed)
    outputs = (rng.normal(size=(k, n, 3)).astype(np.float32),
               rng.normal(size=(k, n, 4)).astype(np.float32))
    return evaluate.out_of_fold(
        outputs, prep, loss_name="categorical",
        svm=type("S", (), dict(kernel="rbf", C=1.0, class_weight="balanced")), seed=0,
        targets={"sensitivity": 0.9, "specificity": 0.9})


def test_no_inner_split_leaves_calibrated_equal_to_cnn():
    prep = _fake_prep(inner_frac=0.0)
    k = len(prep.folds)
    preds, calib = _random_out_of_fold(prep, seed=1)
    np.testing.assert_array_equal(preds.probs["cnn_calibrated"], preds.probs["cnn"])
    assert calib["temperatures"] == [1.0] * k


def test_bootstrap_zero_gives_point_values_and_no_intervals(tmp_path):
    """``eval.bootstrap=0`` (documented: no CIs): every figure, subgroup and operating point
    is computed, each interval is empty, and the report says so (it was an IndexError
    after all training)."""
    from handjax import clinical, report, train
    from handjax.config import EvalSpec
    prep = _fake_prep()
    prep.metadata = {"band": np.array(["a", "b"] * (len(prep.examples.labels) // 2))}
    preds, calib = _random_out_of_fold(prep, seed=2)
    csv_path = clinical.write_predictions(tmp_path / "predictions.csv", preds)
    out = train.json_safe(evaluate.clinical_results(csv_path, preds, calib,
                                                    EvalSpec(bootstrap=0), seed=0))
    auroc = out["clinical"]["cnn"]["auroc_macro"]
    assert auroc["value"] is not None and auroc["ci95"] == [None, None]
    assert auroc["n_finite"] == 0
    assert all(e["accuracy"]["ci95"] == [None, None] for e in out["subgroups"]["band"].values())
    text = report.headline({**out, "data": {}}) + report.clinical_markdown(out)
    assert "no CIs (`eval.bootstrap=0`" in text and "[n/a]" in text
