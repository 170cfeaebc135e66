"""Losses against numpy references, optax, and float64 finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handjax import losses, metrics

K = 3


def _batch(seed, n=16, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((n, K))).astype(np.float32)
    labels = rng.integers(0, K, size=n).astype(np.int32)
    return logits, labels


# ---- numpy float64 references -----------------------------------------------------
def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_categorical(logits, labels):
    return -np.log(np_softmax(logits)[np.arange(len(labels)), labels])


def np_binary(logits, labels):
    x = np.asarray(logits, np.float64)
    t = np.eye(K)[labels]
    sig = 1.0 / (1.0 + np.exp(-x))
    return -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).mean(-1)


def np_severity(logits, labels, cost, ce_weight, class_weights):
    p = np_softmax(logits)
    expected = (p * np.asarray(cost)[labels]).sum(-1)
    loss = ce_weight * np_categorical(logits, labels) + expected
    return loss if class_weights is None else loss * np.asarray(class_weights)[labels]


# ---- values -------------------------------------------------------------------------
def test_categorical_equals_optax_and_numpy():
    logits, labels = _batch(0)
    got = losses.categorical(logits, labels)
    assert got.shape == (16,)
    np.testing.assert_allclose(
        got, optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, K)), rtol=1e-6)
    np.testing.assert_allclose(got, np_categorical(logits, labels), rtol=1e-5, atol=1e-6)


def test_binary_matches_numpy_and_optax():
    logits, labels = _batch(1)
    got = losses.binary(logits, labels)
    assert got.shape == (16,)
    np.testing.assert_allclose(got, np_binary(logits, labels), rtol=1e-5, atol=1e-6)
    ref = optax.sigmoid_binary_cross_entropy(logits, jax.nn.one_hot(labels, K)).mean(-1)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("cost,ce_weight,class_weights", [
    (None, 1.0, None),
    (None, 0.0, None),
    (np.tril(np.ones((K, K)), -1), 0.5, [1 / 50, 1 / 30, 1 / 40]),
])
def test_severity_matches_numpy(cost, ce_weight, class_weights):
    logits, labels = _batch(2)
    got = losses.severity(logits, labels, cost=cost, ce_weight=ce_weight,
                          class_weights=class_weights)
    ref_cost = losses.DEFAULT_COST if cost is None else cost
    ref = np_severity(logits, labels, ref_cost, ce_weight, class_weights)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_severity_zero_one_cost_pure_is_one_minus_p_true():
    logits, labels = _batch(3)
    got = losses.severity(logits, labels, cost=1.0 - np.eye(K), ce_weight=0.0)
    p_true = np_softmax(logits)[np.arange(16), labels]
    np.testing.assert_allclose(got, 1.0 - p_true, atol=1e-6)


def test_default_cost_shape_and_order():
    c = losses.DEFAULT_COST
    assert c.shape == (K, K) and np.all(np.diag(c) == 0)
    under, over = c[np.tril_indices(K, -1)], c[np.triu_indices(K, 1)]
    # Every under-severity error costs more than every over-severity error.
    assert under.min() > over.max()
    np.testing.assert_array_equal([c[1, 0], c[2, 1], c[2, 0]], [1, 1, 2])


# ---- gradients: central differences in float64 ---------------------------------------
def _central_differences(total, x, eps=1e-6):
    """d total / d x by central differences, one coordinate at a time (float64)."""
    fd = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        step = jnp.zeros_like(x).at[idx].set(eps)
        fd[idx] = (float(total(x + step)) - float(total(x - step))) / (2 * eps)
    return fd


_LOSS_FNS = {
    "categorical": losses.categorical,
    "binary": losses.binary,
    "severity": lambda x, y: losses.severity(x, y, class_weights=[0.5, 1.0, 2.0]),
    "severity_pure": lambda x, y: losses.severity(x, y, ce_weight=0.0),
}


@pytest.mark.parametrize("name", sorted(_LOSS_FNS))
def test_gradient_matches_central_differences_float64(name):
    fn = _LOSS_FNS[name]
    logits, labels = _batch(4, n=5)
    # Scoped: x64 must not leak into other tests.
    with jax.enable_x64(True):
        x = jnp.asarray(logits, jnp.float64)
        y = jnp.asarray(labels)
        total = lambda z: fn(z, y).sum()
        grad = np.asarray(jax.grad(total)(x))
        assert grad.dtype == np.float64
        fd = _central_differences(total, x)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert jnp.ones(1).dtype == jnp.float32


# ---- stability ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(_LOSS_FNS))
def test_finite_values_and_gradients_at_huge_logits(name):
    fn = _LOSS_FNS[name]
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4],
                        [1e4, 1e4, -1e4], [0.0, 0.0, 1e4], [-1e4, 0.0, 1e4]], jnp.float32)
    labels = jnp.array([0, 0, 2, 1, 2, 0])
    value, grad = jax.value_and_grad(lambda z: fn(z, labels).sum())(logits)
    per_example = fn(logits, labels)
    assert np.all(np.isfinite(per_example)) and np.isfinite(value)
    assert np.all(np.isfinite(grad))
    # A confidently wrong example costs a lot, a confidently right one almost nothing.
    # (row 0 is confidently right, row 5 confidently wrong; 0.4 < the smallest wrong cost)
    assert float(per_example[5]) > float(per_example[0]) + 0.4


# ---- get ---------------------------------------------------------------------------
def test_get_binds_arguments_and_rejects_unknowns():
    logits, labels = _batch(5)
    np.testing.assert_array_equal(losses.get("categorical")(logits, labels),
                                  losses.categorical(logits, labels))
    np.testing.assert_array_equal(losses.get("binary")(logits, labels),
                                  losses.binary(logits, labels))
    cost = 1.0 - np.eye(K)
    np.testing.assert_array_equal(
        losses.get("severity", cost=cost, ce_weight=0.0, class_weights=[1, 2, 3])(logits, labels),
        losses.severity(logits, labels, cost=cost, ce_weight=0.0, class_weights=[1, 2, 3]))
    with pytest.raises(ValueError):
        losses.get("focal")
    with pytest.raises(TypeError):
        losses.get("categorical", cost=cost)
    with pytest.raises(TypeError):
        losses.get("severity", temperature=2.0)


# ---- batch-level losses on a soft confusion matrix ----------------------------------
def _masked_batch(seed, n=12):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((n, K))
    labels = rng.integers(0, K, size=n)
    mask = rng.random(n) < 0.75
    mask[:3] = True
    return logits, labels, mask


_HARD = {"soft_plus": metrics.custom_plus, "soft_multi": metrics.custom_multi}


def test_soft_metrics_at_one_hot_equal_hard_metrics():
    logits, labels, mask = _masked_batch(10, n=40)
    preds = np.random.default_rng(11).integers(0, K, size=40)
    with jax.enable_x64(True):
        hard_logits = jnp.asarray(100.0 * np.eye(K)[preds])   # softmax one-hot to 1e-43
        soft_cm = losses.soft_confusion(hard_logits, labels, mask, K)
        hard_cm = metrics.confusion_matrix(labels, preds, K, mask)
        np.testing.assert_allclose(soft_cm, hard_cm, atol=1e-12)
        for name, metric in _HARD.items():
            got = float(getattr(losses, name)(hard_logits, labels, mask))
            assert got == pytest.approx(float(metric(hard_cm.astype(jnp.float64))), abs=1e-12)
        custom = float(losses.soft_custom(hard_logits, labels, mask))
        want = (metrics.custom_plus(hard_cm) + metrics.custom_multi(hard_cm)
                + 1 - metrics.custom_precision(hard_cm))
        assert custom == pytest.approx(float(want), abs=1e-6)


@pytest.mark.parametrize("name", sorted(losses.BATCH_LOSSES))
def test_batch_loss_padding_contributes_nothing(name):
    fn = losses.BATCH_LOSSES[name]
    logits, labels, mask = _masked_batch(12)
    garbage = logits.copy()
    garbage[~mask] = np.array([np.nan, np.inf, -1e30])        # padding rows: anything
    labels_g = np.where(mask, labels, -7)                         # and any label
    value_and_grad = jax.jit(jax.value_and_grad(fn))
    value, grad = value_and_grad(jnp.asarray(garbage, jnp.float32), labels_g, mask)
    ref, ref_grad = value_and_grad(jnp.asarray(logits[mask], jnp.float32),
                                   labels[mask], np.ones(mask.sum(), bool))
    assert float(value) == pytest.approx(float(ref), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)
    np.testing.assert_allclose(np.asarray(grad)[mask], ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(losses.BATCH_LOSSES))
def test_batch_loss_gradient_matches_central_differences_float64(name):
    fn = losses.BATCH_LOSSES[name]
    logits, labels, mask = _masked_batch(13, n=6)
    with jax.enable_x64(True):
        x = jnp.asarray(logits, jnp.float64)
        total = jax.jit(lambda z: fn(z, labels, mask))
        grad = np.asarray(jax.grad(total)(x))
        assert grad.dtype == np.float64
        fd = _central_differences(total, x)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.any(grad != 0)


def test_batch_losses_vmap_over_masked_unequal_folds():
    rng = np.random.default_rng(14)
    logits = rng.standard_normal((4, 10, K)).astype(np.float32)
    labels = rng.integers(0, K, size=(4, 10))
    mask = np.arange(10)[None, :] < np.array([10, 7, 9, 5])[:, None]
    for fn in losses.BATCH_LOSSES.values():
        batched = jax.jit(jax.vmap(fn))(logits, labels, mask)
        loop = [float(fn(logits[f, :m], labels[f, :m], np.ones(m, bool)))
                for f, m in enumerate(mask.sum(1))]
        np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-7)


def test_under_severity_only_loss_has_degenerate_always_ra_minimum():
    """Calling every photo RA makes soft_plus (and soft_multi) 0, their minimum, as low as a
    perfect model; only the precision term of soft_custom tells the two apart."""
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    mask = np.ones(9, bool)
    with jax.enable_x64(True):
        always_ra = jnp.tile(jnp.array([0.0, 0.0, 50.0]), (9, 1))
        perfect = jnp.asarray(50.0 * np.eye(K)[labels])
        for fn in (losses.soft_plus, losses.soft_multi):
            assert float(fn(always_ra, labels, mask)) < 1e-20
            assert float(fn(perfect, labels, mask)) < 1e-20
        # Any other model scores worse on soft_plus: the minimum is degenerate.
        rng = np.random.default_rng(15)
        assert min(float(losses.soft_plus(jnp.asarray(rng.standard_normal((9, K))), labels,
                                          mask)) for _ in range(20)) > 0.05
        # soft_custom: ~0 when perfect, 0.71 for always-RA. N and H keep equal tiny masses
        # e^-50 per photo, so their soft precisions are ratios of them, not 0/0:
        # N 3/(3 + 3 + 3), H 3/(3 + 1.5*3 + 3), R 3/(3 + 2*3 + 1.2*3).
        assert float(losses.soft_custom(perfect, labels, mask)) < 1e-12
        precision = (3 / 9 + 3 / 10.5 + 3 / 12.6) / 3
        assert float(losses.soft_custom(always_ra, labels, mask)) == pytest.approx(
            1 - precision, abs=1e-12)


def test_get_returns_batch_losses():
    logits, labels, mask = _masked_batch(16)
    for name, fn in losses.BATCH_LOSSES.items():
        assert float(losses.get(name)(logits, labels, mask)) == float(fn(logits, labels, mask))
    with pytest.raises(TypeError):
        losses.get("soft_custom", cost=np.eye(K))
    assert "categorical" not in losses.BATCH_LOSSES


def _adam_fit(loss, starts, steps=2000, lr=0.05):
    """``steps`` of Adam on ``loss(params)`` from each of the stacked ``starts`` (leading
    axis), vmapped and scanned: one compilation. Returns (params, last losses)."""
    opt = optax.adam(lr)

    def step(carry, _):
        p, state = carry
        value, grad = jax.value_and_grad(loss)(p)
        update, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, update), state), value

    def fit(p):
        (p, _), values = jax.lax.scan(step, (p, opt.init(p)), None, steps)
        return p, values[-1]
    params, last = jax.jit(jax.vmap(fit))(starts)
    return params, np.asarray(last)


def _always_ra_soft_custom(n):
    """soft_custom of any constant prediction p = (a, b, c) is 2a + b + a^2 + 2ab + 1 - P with
    P = (n_N/n + n_H/(n_H + 1.5 n_N + n_R) + n_R/(n_R + 2 n_N + 1.2 n_H)) / 3 independent of p
    (the soft precisions of a constant prediction are ratios of class counts), so among
    constant predictions "always RA" (a = b = 0) is the unique minimum, 1 - P."""
    n_n, n_h, n_r = n
    precision = (n_n / sum(n) + n_h / (n_h + 1.5 * n_n + n_r)
                 + n_r / (n_r + 2 * n_n + 1.2 * n_h)) / 3
    return 1 - precision


def test_soft_custom_constant_predictions_are_drawn_to_always_ra():
    """A model whose outputs cannot tell photos apart (random frozen weights, uninformative
    features: only the bias learns) goes, from any start, to calling every photo RA, where
    soft_custom is 0.7148 for 40/30/30 photos (5/7 for equal classes)."""
    labels = np.repeat([0, 1, 2], [40, 30, 30])
    mask = np.ones(100, bool)
    floor = _always_ra_soft_custom((40, 30, 30))
    assert floor == pytest.approx(0.71484, abs=1e-5)
    assert _always_ra_soft_custom((10, 10, 10)) == pytest.approx(5 / 7, abs=1e-12)
    with jax.enable_x64(True):
        loss = lambda b: losses.soft_custom(jnp.broadcast_to(b, (100, K)), labels, mask)
        hard_ra = jnp.array([0.0, 0.0, 60.0])
        assert float(loss(hard_ra)) == pytest.approx(floor, abs=1e-12)
        starts = jnp.asarray(np.random.default_rng(0).normal(size=(8, K)) * 2)
        b, value = _adam_fit(loss, starts)
        assert np.all(np.asarray(jax.nn.softmax(b))[:, 2] > 0.99)
        np.testing.assert_allclose(value, floor, atol=2e-3)
    # a symmetric classifier (accuracy q, errors split evenly) scores worse than always-RA
    # below q ~ 0.75 (equal classes)
    def symmetric(q):
        e = (1 - q) / 2
        cm = 10 * np.array([[q, e, e], [e, q, e], [e, e, q]])
        return float(metrics.custom_plus(cm) + metrics.custom_multi(cm) + 1
                     - metrics.custom_precision(cm))
    assert symmetric(0.74) > 5 / 7 > symmetric(0.76)


def test_soft_custom_calls_nearly_everything_ra_where_cross_entropy_learns():
    """A linear model on weakly informative features (4 dims, class means 0.6 apart): softmax
    CE reaches ~0.6 accuracy; soft_custom, from every start, calls >= 85% of the photos RA.
    Its precision terms are ratios, satisfied by vanishing but well-placed N and H
    probabilities, so they do not keep it away from "always RA"."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [40, 30, 30])
    mask = np.ones(100, bool)
    x = rng.normal(size=(100, 4))
    x[:, :3] += 0.6 * np.eye(3)[labels]
    with jax.enable_x64(True):
        r = np.random.default_rng(1)
        starts = (jnp.asarray(r.normal(size=(4, 4, K))), jnp.asarray(r.normal(size=(4, K))))
        custom, _ = _adam_fit(lambda p: losses.soft_custom(x @ p[0] + p[1], labels, mask),
                              starts)
        ce, _ = _adam_fit(lambda p: losses.categorical(x @ p[0] + p[1], labels).mean(), starts)
        for s in range(4):
            called = np.asarray(x @ custom[0][s] + custom[1][s]).argmax(1)
            assert np.mean(called == 2) >= 0.85, s
            assert np.mean(np.asarray(x @ ce[0][s] + ce[1][s]).argmax(1) == labels) >= 0.55, s
