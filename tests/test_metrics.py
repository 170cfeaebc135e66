"""Metrics against the study's worked example and plain-Python loop references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from handjax import metrics

STUDY_CM = [[6, 0, 0], [4, 4, 1], [3, 3, 3]]
# float32 math against float64 Python loops.
RTOL, ATOL = 1e-5, 1e-6


# ---- independent references: plain Python, 0/0 := 0 ----------------------------
def _div(a, b):
    return a / b if b else 0.0


def ref_accuracy(cm):
    k = len(cm)
    return _div(sum(cm[i][i] for i in range(k)), sum(sum(r) for r in cm))


def ref_custom_plus(cm):
    k = len(cm)
    total = 0.0
    for i in range(k):
        n_i = sum(cm[i])
        for j in range(i):
            total += _div(cm[i][j], n_i)
    return total


def _ref_rates(cm):
    """{(i, j): cm[i][j] / n_i} over the under-severity cells i > j."""
    return {(i, j): _div(cm[i][j], sum(cm[i])) for i in range(len(cm)) for j in range(i)}


def ref_custom_multi(cm):
    """Sum over unordered pairs of distinct under-severity cells of their rate product."""
    cells = list(_ref_rates(cm).items())
    return sum(a * b for x, (_, a) in enumerate(cells) for _, b in cells[x + 1:])


def ref_custom_multi_per_class(cm):
    rates = _ref_rates(cm)
    total = 1.0
    for i in range(1, len(cm)):
        total *= sum(rates[i, j] for j in range(i))
    return total


def ref_custom_multi_weighted(cm):
    k = len(cm)
    total = 0.0
    for i in range(k):
        n_i = sum(cm[i])
        for j in range(i):
            m_j = sum(cm[r][j] for r in range(k))
            total += _div(cm[i][j], n_i) * _div(cm[i][j], m_j)
    return total


def ref_custom_precision(cm, w):
    k = len(cm)
    total = 0.0
    for c in range(k):
        tp = cm[c][c]
        fp = sum(w[c][i] * cm[i][c] for i in range(k) if i != c)
        total += _div(tp, tp + fp)
    return total / k


def _random_cms(seed, n=40, k=3):
    rng = np.random.default_rng(seed)
    cms = rng.integers(0, 12, size=(n, k, k))
    cms[::5, rng.integers(k)] = 0      # some empty rows (a class absent from a fold)
    cms[1::7, :, rng.integers(k)] = 0  # some empty columns (a class never predicted)
    cms[3] = 0                          # an all-empty matrix
    return cms


# ---- tests ------------------------------------------------------------------------
def test_study_worked_example():
    got = {k: float(v) for k, v in metrics.all_metrics(jnp.array(STUDY_CM)).items()}
    # The study's example matrix; the values are ours, by hand (README), under our readings:
    # r_HN = 4/9, r_RN = r_RH = 3/9.
    expected = {"accuracy": 13 / 24, "custom_plus": 10 / 9,
                "custom_multi": (4 * 3 + 4 * 3 + 3 * 3) / 81,
                "custom_precision": (6 / 13 + 4 / 7 + 3 / 4.2) / 3}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert float(metrics.custom_multi_per_class(jnp.array(STUDY_CM))) == pytest.approx(
        (4 / 9) * (6 / 9), rel=1e-6)
    assert float(metrics.custom_multi_weighted(jnp.array(STUDY_CM))) == pytest.approx(
        (4 / 9) * (4 / 13) + (3 / 9) * (3 / 13) + (3 / 9) * (3 / 7), rel=1e-6)


@pytest.mark.parametrize("cm,plus,multi", [
    ([[8, 0, 0], [2, 6, 0], [0, 0, 8]], 2 / 8, 0.0),              # only H->N misses
    ([[8, 0, 0], [0, 8, 0], [1, 2, 5]], 3 / 8, (1 / 8) * (2 / 8)),  # R->N and R->H
    ([[5, 0, 0], [1, 4, 0], [0, 2, 8]], 1 / 5 + 2 / 10, (1 / 5) * (2 / 10)),
    ([[3, 3, 3], [0, 5, 5], [0, 0, 10]], 0.0, 0.0),               # only over-severity
    ([[4, 0, 0], [4, 0, 0], [2, 2, 0]], 1 + 0.5 + 0.5, 0.5 + 0.5 + 0.25),  # all called milder
])
def test_custom_multi_hand_computed(cm, plus, multi):
    """custom_multi is 0 with a single kind of under-severity error although plus is not:
    the property the study's table needs (four rows with multi 0.0000, plus > 0)."""
    assert float(metrics.custom_plus(jnp.array(cm))) == pytest.approx(plus, rel=1e-6)
    assert float(metrics.custom_multi(jnp.array(cm))) == pytest.approx(multi, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name,ref", [
    ("accuracy", ref_accuracy),
    ("custom_plus", ref_custom_plus),
    ("custom_multi", ref_custom_multi),
    ("custom_multi_per_class", ref_custom_multi_per_class),
    ("custom_multi_weighted", ref_custom_multi_weighted),
    ("custom_precision",
     lambda cm: ref_custom_precision(cm, metrics.DEFAULT_PRECISION_WEIGHTS.tolist())),
])
def test_random_matrices_match_python_loops(name, ref):
    fn = jax.jit(getattr(metrics, name))
    for cm in _random_cms(0):
        np.testing.assert_allclose(float(fn(cm)), ref(cm.tolist()), rtol=RTOL, atol=ATOL)


def test_custom_multi_4_classes_matches_pair_loop():
    rng = np.random.default_rng(9)
    for _ in range(10):
        cm = rng.integers(0, 9, size=(4, 4))
        np.testing.assert_allclose(float(metrics.custom_multi(cm)), ref_custom_multi(cm.tolist()),
                                   rtol=RTOL, atol=ATOL)


def test_custom_precision_custom_weights_and_4_classes():
    rng = np.random.default_rng(1)
    for _ in range(10):
        cm = rng.integers(0, 9, size=(4, 4))
        w = rng.uniform(0.5, 3.0, size=(4, 4))
        np.testing.assert_allclose(float(metrics.custom_precision(cm, w)),
                                   ref_custom_precision(cm.tolist(), w.tolist()),
                                   rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError):
        metrics.custom_precision(np.ones((4, 4)))  # default weights are 3x3


def test_int_and_float_matrices_agree():
    cms = _random_cms(2)
    a = metrics.all_metrics(cms.astype(np.int32))
    b = metrics.all_metrics(cms.astype(np.float32))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def test_vmap_over_folds_equals_per_fold_loop():
    cms = jnp.asarray(_random_cms(3, n=5))  # a (folds, K, K) stack
    batched = jax.jit(jax.vmap(metrics.all_metrics))(cms)
    broadcast = metrics.all_metrics(cms)  # leading axes broadcast without vmap too
    for key in ("accuracy", "custom_multi", "custom_plus", "custom_precision"):
        loop = np.array([float(metrics.all_metrics(cm)[key]) for cm in cms])
        assert batched[key].shape == (5,)
        np.testing.assert_allclose(batched[key], loop, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(broadcast[key], loop, rtol=1e-6, atol=1e-7)


def test_confusion_matrix_matches_counting_loop_and_sklearn():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=57)
    preds = rng.integers(0, 3, size=57)
    loop = np.zeros((3, 3), int)
    for t, p in zip(labels, preds):
        loop[t, p] += 1
    got = np.asarray(jax.jit(metrics.confusion_matrix)(labels, preds))
    np.testing.assert_array_equal(got, loop)
    np.testing.assert_array_equal(got, sk_confusion_matrix(labels, preds, labels=[0, 1, 2]))


def test_confusion_matrix_mask_and_folds():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=(5, 20))
    preds = rng.integers(0, 3, size=(5, 20))
    mask = rng.random((5, 20)) < 0.7
    got = jax.vmap(lambda t, p, m: metrics.confusion_matrix(t, p, 3, m))(labels, preds, mask)
    for f in range(5):
        keep = mask[f]
        np.testing.assert_array_equal(
            got[f], sk_confusion_matrix(labels[f][keep], preds[f][keep], labels=[0, 1, 2]))
    # Padding ids outside [0, K) are not counted.
    np.testing.assert_array_equal(
        metrics.confusion_matrix(np.array([0, -1, 2]), np.array([0, 1, 1])),
        [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_min_expected_cost_with_zero_one_cost_is_argmax():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(3), size=500).astype(np.float32)
    got = metrics.min_expected_cost(probs, 1.0 - np.eye(3))
    np.testing.assert_array_equal(got, probs.argmax(-1))


def test_min_expected_cost_matches_loop_for_random_cost():
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=200)
    cost = rng.uniform(0, 3, size=(3, 3))
    loop = [min(range(3), key=lambda j: sum(p[i] * cost[i, j] for i in range(3)))
            for p in probs]
    np.testing.assert_array_equal(metrics.min_expected_cost(probs, cost), loop)


def test_heavy_under_severity_cost_moves_borderline_cases_up():
    heavy = np.array([[0.0, 1.0, 2.0],
                      [10.0, 0.0, 1.0],
                      [20.0, 10.0, 0.0]])
    probs = np.array([
        [0.55, 0.40, 0.05],  # borderline N/H -> H
        [0.05, 0.55, 0.40],  # borderline H/R -> R
        [0.50, 0.10, 0.40],  # borderline N/R -> R
        [0.98, 0.01, 0.01],  # confidently N stays N
        [0.01, 0.98, 0.01],  # confidently H stays H
    ])
    np.testing.assert_array_equal(probs.argmax(-1), [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(metrics.min_expected_cost(probs, heavy), [1, 2, 2, 0, 1])
    # Never milder than argmax: an under-severity-averse cost only moves decisions up.
    rng = np.random.default_rng(8)
    many = rng.dirichlet(np.ones(3), size=1000)
    assert np.all(np.asarray(metrics.min_expected_cost(many, heavy)) >= many.argmax(-1))
