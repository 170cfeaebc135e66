"""Scoring: the SVM stage equals sklearn's pipeline run directly; decision summaries."""
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cells import prepare, tiny_spec
from handjax import data
from handjax.evaluation import scoring as evaluate
from handjax.train import fold_program as folds
from handjax.data.records import Examples
from handjax.data.cohort import Cohort
from handjax.config import SvmSpec
from handjax.metrics import STUDY_METRICS


def test_svm_decisions_equal_sklearn_directly():
    spec = tiny_spec()
    cohort, inputs = prepare(spec)
    states = folds.states_for(1, inputs.fold_model, spec)
    _, pooled = folds.fold_outputs(states, inputs, "vmap")
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


_SVM = SvmSpec(kernel="rbf", C=1.0, class_weight="balanced", max_train=2000)
_TARGETS = {"sensitivity": 0.9, "specificity": 0.9}


def _outputs(prep, seed=0, scale=3.0):
    """Per-fold logits that carry some signal (so temperatures are finite fits) + features."""
    n, k = len(prep.examples.labels), len(prep.folds)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k, n, 3)) + scale * np.eye(3)[prep.examples.labels]
    return logits.astype(np.float32), rng.normal(size=(k, n, 4)).astype(np.float32)


def _record_choices(monkeypatch):
    from handjax.evaluation import operating
    seen, real = [], operating.threshold_choice

    def choice(scores, positive, **kw):
        seen.append(np.asarray(scores))
        return real(scores, positive, **kw)
    monkeypatch.setattr(operating, "threshold_choice", choice)
    return seen


def test_inner_split_calibration_and_thresholds_only_see_inner_photos(monkeypatch):
    """With train.inner_val > 0: the temperature fit and the threshold choice of each fold
    receive only that fold's inner split, never one of its test photos."""
    from handjax import evaluation as clinical
    prep = _fake_prep()
    n, k = len(prep.examples.labels), len(prep.folds)
    logits, pooled = _outputs(prep)
    seen = {"temperature": []}
    real_fit = clinical.fit_temperature
    probs = np.asarray(evaluate.probabilities("categorical", logits), np.float64)

    def fit(z, y, *a, **kw):
        seen["temperature"].append(np.exp(z))
        return real_fit(z, y, *a, **kw)
    monkeypatch.setattr(clinical, "fit_temperature", fit)
    choices = _record_choices(monkeypatch)
    preds, calib = evaluate.out_of_fold((logits, pooled), prep, loss_name="categorical",
                                        svm_spec=_SVM, seed=0, targets=_TARGETS)
    assert calib["method"] == "inner split" and len(seen["temperature"]) == k
    for f, (rows, (_, te)) in enumerate(zip(seen["temperature"], prep.folds)):
        inner = prep.inner[f]
        np.testing.assert_allclose(rows / rows.sum(-1, keepdims=True), probs[f, inner],
                                   rtol=1e-5)
        assert not set(inner) & set(te)
    assert len(choices) == 4 * k          # 2 tasks x 2 targets per fold
    for f in range(k):
        assert all(len(c) == len(prep.inner[f]) for c in choices[4 * f:4 * f + 4])
    # every photo predicted once, by the fold that held it out
    assert sorted(np.concatenate([te for _, te in prep.folds])) == list(range(n))
    for f, (_, te) in enumerate(prep.folds):
        assert (preds.fold[te] == f).all()
        np.testing.assert_allclose(preds.probs["cnn"][te], probs[f, te], rtol=1e-6)


def _nll(z, y, t):
    z = z / t
    z = z - z.max(-1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y])


def test_cross_fitted_temperature_is_the_nll_minimiser_of_the_other_folds_rows(tmp_path):
    """The definition: for every fold k, the temperature used is the minimiser of the NLL of
    the other folds' rows of predictions.csv (their uncalibrated cnn probabilities), and the
    calibrated column of fold k is softmax(log p / T_k)."""
    from handjax import evaluation as clinical
    prep = _fake_prep(n_per_class=20, k=4, inner_frac=0.0)
    preds, calib = evaluate.out_of_fold(_outputs(prep, scale=1.5), prep,
                                        loss_name="categorical", svm_spec=_SVM, seed=0,
                                        targets=_TARGETS)
    assert calib["method"] == "cross-fitted" and not any(calib["at_bound"])
    rows = clinical.read_predictions(clinical.write_predictions(tmp_path / "p.csv", preds))
    z = np.log(rows.probs["cnn"])
    for k, t in enumerate(calib["temperatures"]):
        other = rows.fold != k
        for factor in (0.99, 1.01):   # a minimum: the NLL rises both ways (float64 reference)
            assert _nll(z[other], rows.label[other], t) < _nll(z[other], rows.label[other],
                                                               t * factor)
        mine = rows.fold == k
        want = np.exp(z[mine] / t) / np.exp(z[mine] / t).sum(-1, keepdims=True)
        np.testing.assert_allclose(rows.probs["cnn_calibrated"][mine], want, atol=1e-12)
    assert not np.allclose(rows.probs["cnn_calibrated"], rows.probs["cnn"])


def test_changing_fold_k_labels_does_not_change_its_temperature():
    from handjax import evaluation as clinical
    prep = _fake_prep(n_per_class=20, k=4, inner_frac=0.0)
    logits, _ = _outputs(prep, scale=1.5)
    probs = np.asarray(evaluate.probabilities("categorical", logits), np.float64)
    labels, fold = prep.examples.labels, np.zeros(len(prep.examples.labels), int)
    for k, (_, te) in enumerate(prep.folds):
        fold[te] = k
    oof = probs[fold, np.arange(len(labels))]
    before = clinical.cross_fitted_temperatures(oof, labels, fold)
    shuffled = labels.copy()
    shuffled[fold == 2] = np.random.default_rng(5).integers(0, 3, (fold == 2).sum())
    after = clinical.cross_fitted_temperatures(oof, shuffled, fold)
    assert after[2] == before[2]
    assert any(a != b for j, (a, b) in enumerate(zip(after, before)) if j != 2)


def test_cross_fitted_thresholds_are_chosen_on_the_other_folds_only(monkeypatch):
    prep = _fake_prep(n_per_class=20, k=4, inner_frac=0.0)
    logits, pooled = _outputs(prep, scale=1.5)
    choices = _record_choices(monkeypatch)
    _, calib = evaluate.out_of_fold((logits, pooled), prep, loss_name="categorical",
                                    svm_spec=_SVM, seed=0, targets=_TARGETS)
    n = len(prep.examples.labels)
    for k, (_, te) in enumerate(prep.folds):
        assert all(len(c) == n - len(te) for c in choices[4 * k:4 * k + 4])
        assert calib["thresholds"][k]["ra"]["sensitivity"]["n_chosen_on"] == \
            int((prep.examples.labels[np.setdiff1d(np.arange(n), te)] == 2).sum())


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


def test_svm_folds_in_threads_equal_sklearn_fold_by_fold(monkeypatch):
    """Several folds fitted at once (threads): each fold's decisions equal a plain
    StandardScaler + SVC fitted on its training split, and its probabilities sklearn's
    CalibratedClassifierCV with that fold's Platt splits, as if run one after another; and
    past the memory bound (folds one after another) the same arrays."""
    from sklearn.calibration import CalibratedClassifierCV
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 20)
    subjects = np.array([f"s{i // 2}" for i in range(60)])
    x = rng.normal(size=(3, 60, 6)) + np.eye(3, 6)[labels]      # one feature set a fold
    folds_ = [(np.arange(60)[np.arange(60) % 6 // 2 != k], np.arange(60)[np.arange(60) % 6 // 2 == k])
              for k in range(3)]
    ours = evaluate.svm_fold_probabilities(x, labels, folds_, subjects=subjects, kernel="rbf",
                                           C=2.0, class_weight="balanced", seed=4)
    assert len(ours) == 3
    for k, (tr, te) in enumerate(folds_):
        svc = dict(kernel="rbf", C=2.0, class_weight="balanced", random_state=4)
        plain = Pipeline([("s", StandardScaler()), ("c", SVC(**svc))]).fit(x[k][tr], labels[tr])
        np.testing.assert_array_equal(ours[k][0], plain.predict(x[k][te]))
        platt = Pipeline([("s", StandardScaler()), ("c", CalibratedClassifierCV(
            SVC(**svc), method="sigmoid", cv=evaluate.platt_cv(labels[tr], subjects[tr], 4),
            ensemble=False))]).fit(x[k][tr], labels[tr])
        np.testing.assert_allclose(ours[k][1], platt.predict_proba(x[k][te]), atol=1e-12)
    monkeypatch.setattr(evaluate, "SVM_THREADS_MAX_BYTES", 0)
    one_by_one = evaluate.svm_fold_probabilities(x, labels, folds_, subjects=subjects,
                                                 kernel="rbf", C=2.0, class_weight="balanced",
                                                 seed=4)
    for (d, p), (d1, p1) in zip(ours, one_by_one):
        np.testing.assert_array_equal(d, d1)
        np.testing.assert_array_equal(p, p1)


def test_svm_rows_bound_a_large_split_stratified_by_class():
    """``svm.max_train``: a split within the bound is used whole, in order; a larger one
    gives exactly ``max_train`` of its rows, each class in its share (to one photo), the same
    rows for the same seed and others for another."""
    labels = np.repeat(np.arange(3), [500, 300, 200])
    tr = np.arange(1000, 2000)
    np.testing.assert_array_equal(evaluate.svm_rows(tr, labels, 1000), tr)
    np.testing.assert_array_equal(evaluate.svm_rows(tr, labels, 0), tr)
    rows = evaluate.svm_rows(tr, labels, 100, seed=3)
    assert len(rows) == len(set(rows)) == 100 and set(rows) <= set(tr)
    assert np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows - 1000], minlength=3)
    assert np.all(np.abs(counts - [50, 30, 20]) <= 1), counts
    np.testing.assert_array_equal(rows, evaluate.svm_rows(tr, labels, 100, seed=3))
    assert set(rows) != set(evaluate.svm_rows(tr, labels, 100, seed=4))


def test_svm_bounded_fit_equals_sklearn_on_the_drawn_rows():
    """Past ``max_train``, each fold's SVM (decisions and Platt probabilities) is sklearn's,
    fitted on exactly the rows :func:`svm_rows` draws; the test photos all scored."""
    from sklearn.calibration import CalibratedClassifierCV
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(3), 40)
    subjects = np.array([f"s{i // 2}" for i in range(120)])
    x = rng.normal(size=(1, 120, 5)) + np.eye(3, 5)[labels]
    tr, te = np.arange(120)[np.arange(120) % 4 != 0], np.arange(120)[np.arange(120) % 4 == 0]
    (dec, prob), = evaluate.svm_fold_probabilities(x, labels, [(tr, te)], subjects=subjects,
                                                   kernel="rbf", C=1.0, class_weight="balanced",
                                                   seed=2, max_train=45)
    rows = evaluate.svm_rows(tr, labels[tr], 45, seed=2)
    assert len(rows) == 45 and len(dec) == len(prob) == len(te)
    svc = dict(kernel="rbf", C=1.0, class_weight="balanced", random_state=2)
    plain = Pipeline([("s", StandardScaler()), ("c", SVC(**svc))]).fit(x[0][rows], labels[rows])
    np.testing.assert_array_equal(dec, plain.predict(x[0][te]))
    platt = Pipeline([("s", StandardScaler()), ("c", CalibratedClassifierCV(
        SVC(**svc), method="sigmoid", cv=evaluate.platt_cv(labels[rows], subjects[rows], 2),
        ensemble=False))]).fit(x[0][rows], labels[rows])
    np.testing.assert_allclose(prob, platt.predict_proba(x[0][te]), atol=1e-12)
    full, = evaluate.svm_fold_probabilities(x, labels, [(tr, te)], subjects=subjects,
                                            kernel="rbf", C=1.0, class_weight="balanced", seed=2)
    assert not np.array_equal(full[1], prob)   # the bound changed the fit: not a no-op


def test_bootstrap_zero_gives_point_values_and_no_intervals(tmp_path):
    """``eval.bootstrap=0`` (documented: no CIs): every figure, subgroup and operating point
    is computed, each interval is empty, and the report says so (it was an IndexError
    after all training)."""
    import dataclasses
    from handjax import evaluation as clinical
    from handjax.report import markdown as report
    from handjax.config import EvalSpec
    prep = _fake_prep()
    prep = dataclasses.replace(
        prep, metadata={"band": np.array(["a", "b"] * (len(prep.examples.labels) // 2))})
    preds, calib = evaluate.out_of_fold(_outputs(prep, seed=2), prep, loss_name="categorical",
                                        svm_spec=_SVM, seed=0, targets=_TARGETS)
    csv_path = clinical.write_predictions(tmp_path / "predictions.csv", preds)
    out = clinical.json_safe(clinical.clinical_results(csv_path, calib, EvalSpec(bootstrap=0),
                                                       seed=0))
    auroc = out["clinical"]["cnn"]["auroc_macro"]
    assert auroc["value"] is not None and auroc["ci95"] == [None, None]
    assert auroc["n_finite"] == 0
    assert all(e["accuracy"]["ci95"] == [None, None] for e in out["subgroups"]["band"].values())
    text = report.headline({**out, "data": {}}) + report.clinical_markdown(out)
    assert "no CIs (`eval.bootstrap=0`" in text and "[n/a]" in text
