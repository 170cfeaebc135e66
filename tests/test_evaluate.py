"""Scoring: the SVM stage equals sklearn's pipeline run directly; decision summaries."""
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cells import prepare, tiny_spec
from handjax import data, evaluate, folds
from handjax.data.base import Examples
from handjax.data.cohort import Cohort
from handjax.metrics import STUDY_METRICS


def test_svm_decisions_equal_sklearn_directly():
    spec = tiny_spec()
    cohort, inputs = prepare(spec)
    states = folds.states_for(1, inputs.fold_model, spec)
    _, pooled = folds.fold_outputs(states, inputs, cohort.test_sets, "vmap")
    ours = evaluate.svm_fold_probabilities(pooled, cohort.labels, cohort.folds,
                                           kernel="rbf", C=1.0, class_weight="balanced")
    for k, (tr, te) in enumerate(cohort.folds):
        ref = Pipeline([("s", StandardScaler()),
                        ("c", SVC(kernel="rbf", C=1.0, class_weight="balanced"))])
        ref.fit(pooled[k][tr].astype(np.float64), cohort.labels[tr])
        np.testing.assert_array_equal(ours[k][0], ref.predict(pooled[k][te].astype(np.float64)))


def test_decision_summary_mean_std_and_sums():
    cms = np.array([[[2, 0, 0], [1, 1, 0], [0, 1, 1]],
                    [[1, 1, 0], [0, 2, 0], [0, 0, 2]]])
    s = evaluate.decision_summary(cms)
    np.testing.assert_allclose(s["per_fold"]["accuracy"], [4 / 6, 5 / 6], rtol=1e-6)
    assert np.isclose(s["mean"]["accuracy"], 0.75)
    assert np.isclose(s["std"]["accuracy"], np.std([4 / 6, 5 / 6]))
    assert s["confusion_sum"] == cms.sum(0).tolist()
    assert set(s["per_fold"]) == set(STUDY_METRICS)


# --------------------------------------------------------------------------- out of fold
def _fake_prep(n_per_class=12, k=3, inner_frac=0.25, seed=0):
    """A cohort without photos: labels, folds, inner splits (no model needed)."""
    from sklearn.model_selection import StratifiedKFold
    labels = np.repeat(np.arange(3), n_per_class)
    n = len(labels)
    folds_ = [(tr, te) for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed)
              .split(np.zeros(n), labels)]
    inner = data.inner_splits(folds_, labels, np.arange(n), inner_frac, seed)
    examples = Examples(np.zeros((n, 1, 1, 3), np.uint8), labels,
                        [f"p{i}" for i in range(n)], ("normal", "heberden", "ra"))
    return Cohort(examples, None, np.array([f"s{i}" for i in range(n)]), {}, folds_, inner,
                  examples.images[None])


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
    from handjax.clinical import operating
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
    monkeypatch.setattr(operating, "choose_threshold", choose)
    preds, calib = evaluate.out_of_fold(
        (logits, pooled), prep, loss_name="categorical",
        svm_spec=type("S", (), dict(kernel="rbf", C=1.0, class_weight="balanced")), seed=0,
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


def test_no_inner_split_leaves_calibrated_equal_to_cnn():
    prep = _fake_prep(inner_frac=0.0)
    n, k = len(prep.examples.labels), len(prep.folds)
    rng = np.random.default_rng(1)
    outputs = (rng.normal(size=(k, n, 3)).astype(np.float32),
               rng.normal(size=(k, n, 4)).astype(np.float32))
    preds, calib = evaluate.out_of_fold(
        outputs, prep, loss_name="categorical",
        svm_spec=type("S", (), dict(kernel="rbf", C=1.0, class_weight="balanced")), seed=0,
        targets={"sensitivity": 0.9, "specificity": 0.9})
    np.testing.assert_array_equal(preds.probs["cnn_calibrated"], preds.probs["cnn"])
    assert calib["temperatures"] == [1.0] * k


def test_platt_cv_keeps_each_subject_on_one_side_and_equals_sklearn_with_those_splits():
    """Two photos a subject: the SVM's Platt CV never calibrates on one hand of a person while
    training on the other, every training part has every class, and the probabilities equal
    sklearn's CalibratedClassifierCV given the same splits."""
    from sklearn.calibration import CalibratedClassifierCV
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 16)                       # 8 subjects a class
    subjects = np.array([f"s{i // 2}" for i in range(48)])
    x = rng.normal(size=(48, 5)) + np.eye(3, 5)[labels]
    folds_ = [(np.arange(48)[np.arange(48) % 8 >= 2], np.arange(48)[np.arange(48) % 8 < 2])]
    tr, te = folds_[0]
    splits = evaluate.platt_cv(labels[tr], subjects[tr])
    assert len(splits) == 5
    for fit_part, cal_part in splits:
        assert not set(subjects[tr][fit_part]) & set(subjects[tr][cal_part])
        assert set(labels[tr][fit_part]) == {0, 1, 2}
    assert evaluate.platt_cv(labels[tr]) == 5                  # no subjects: StratifiedKFold
    one_ra_subject = np.where(labels[tr] == 2, "ra_person", subjects[tr])
    assert evaluate.platt_cv(labels[tr], one_ra_subject) == 5  # cannot group: photo folds
    (dec, prob), = evaluate.svm_fold_probabilities(x[None], labels, folds_, subjects=subjects,
                                                   kernel="rbf", C=1.0, class_weight=None)
    ref = Pipeline([("scale", StandardScaler()), ("svc", CalibratedClassifierCV(
        SVC(kernel="rbf", C=1.0, random_state=0), method="sigmoid", cv=splits,
        ensemble=False))]).fit(x[tr], labels[tr])
    np.testing.assert_allclose(prob, ref.predict_proba(x[te]), atol=1e-12)
    np.testing.assert_allclose(prob.sum(1), 1, atol=1e-12)
