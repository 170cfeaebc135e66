"""Scoring: the SVM stage equals sklearn's pipeline run directly; decision summaries."""
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cells import tiny_spec
from handjax import evaluate, features, folds


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
    assert s["per_fold"]["accuracy"] == [4 / 6, 5 / 6]
    assert np.isclose(s["mean"]["accuracy"], 0.75)
    assert np.isclose(s["std"]["accuracy"], np.std([4 / 6, 5 / 6]))
    assert s["confusion_sum"] == cms.sum(0).tolist()
    assert set(s["per_fold"]) == set(evaluate.METRIC_KEYS)
