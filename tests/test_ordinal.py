"""CORN and CORAL: losses, probabilities and decisions against float64 loops written from
the papers, hand-computed K=3 cases, finite differences, and a toy ordinal problem."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handjax import losses, metrics, ordinal


# The paper's / coral-pytorch's normalisation of CORN, the reference corn_loss is tested
# against (kept here: handjax trains with the per-example form).
def corn_loss_batch(logits, labels, mask=None):
    """CORN normalised as in the paper and coral-pytorch's ``corn_loss``: a scalar.

    ``sum over tasks of the task's summed BCE / the number of (example, task) pairs``,
    counting only examples with ``mask`` 1 (``None``: all); a masked example adds nothing
    to either sum. It equals ``corn_loss``'s masked mean times ``n / n_pairs``, a factor
    in ``[1/(K-1), 1]`` that changes with each batch's label mix.
    """
    terms, member = losses._corn_terms(logits, labels)
    if mask is not None:
        keep = jnp.asarray(mask, logits.dtype)[..., None] > 0
        terms, member = jnp.where(keep, terms, 0.0), jnp.where(keep, member, 0.0)
    return terms.sum() / jnp.maximum(member.sum(), 1.0)



def _batch(seed, n=12, k=3, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((n, k - 1))).astype(np.float32)
    labels = rng.integers(0, k, size=n).astype(np.int32)
    return logits, labels


# ---- float64 references, loops over examples and tasks, from the papers -----------------
def np_sigmoid(z):
    return 1.0 / (1.0 + math.exp(-float(z)))


def np_bce(z, target):
    s = np_sigmoid(z)
    return -(target * math.log(s) + (1 - target) * math.log(1 - s))


def np_corn_per_example(logits, labels):
    out = []
    for z, y in zip(logits, labels):
        total = 0.0
        for k in range(len(z)):
            if y >= k:  # task k's conditional subset
                total += np_bce(z[k], float(y > k))
        out.append(total)
    return np.array(out)


def np_corn_batch(logits, labels, mask):
    """The paper's normalisation: per-task summed BCE over its subset / all task-examples."""
    total, count = 0.0, 0
    for k in range(logits.shape[1]):
        for i in range(len(labels)):
            if mask[i] and labels[i] >= k:
                total += np_bce(logits[i, k], float(labels[i] > k))
                count += 1
    return total / count


def np_coral_per_example(logits, labels):
    return np.array([sum(np_bce(z[k], float(y > k)) for k in range(len(z)))
                     for z, y in zip(logits, labels)])


def np_class_probs(p_greater):
    """P(y = k) = P(y > k-1) - P(y > k), negatives clipped to 0, then renormalised."""
    out = []
    for row in p_greater:
        ext = [1.0, *row, 0.0]
        p = [max(ext[k] - ext[k + 1], 0.0) for k in range(len(row) + 1)]
        out.append([v / sum(p) for v in p])
    return np.array(out)


def np_corn_greater(logits):
    out = []
    for z in logits:
        prod, row = 1.0, []
        for zk in z:
            prod *= np_sigmoid(zk)
            row.append(prod)
        out.append(row)
    return np.array(out)


def np_coral_greater(logits):
    return np.array([[np_sigmoid(zk) for zk in z] for z in logits])


def np_decision(p_greater):
    return np.array([sum(1 for p in row if p > 0.5) for row in p_greater])


# ---- values against the references ------------------------------------------------------
@pytest.mark.parametrize("k", [3, 5])
def test_losses_match_float64_loops(k):
    logits, labels = _batch(0, n=20, k=k)
    mask = np.random.default_rng(1).random(20) > 0.3
    np.testing.assert_allclose(losses.corn_loss(logits, labels),
                               np_corn_per_example(logits, labels), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.coral_loss(logits, labels),
                               np_coral_per_example(logits, labels), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(corn_loss_batch(logits, labels, mask),
                               np_corn_batch(logits, labels, mask), rtol=1e-5)
    np.testing.assert_allclose(corn_loss_batch(logits, labels),
                               np_corn_batch(logits, labels, np.ones(20, bool)), rtol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_probabilities_and_decisions_match_float64_loops(k):
    logits, _ = _batch(2, n=30, k=k)
    corn_g, coral_g = np_corn_greater(logits), np_coral_greater(logits)
    np.testing.assert_allclose(ordinal.corn_greater(logits), corn_g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ordinal.corn_probabilities(logits), np_class_probs(corn_g),
                               atol=1e-6)
    np.testing.assert_allclose(ordinal.coral_probabilities(logits), np_class_probs(coral_g),
                               atol=1e-6)
    np.testing.assert_array_equal(ordinal.corn_decision(logits), np_decision(corn_g))
    np.testing.assert_array_equal(ordinal.coral_decision(logits), np_decision(coral_g))


def test_hand_computed_k3():
    # z = (ln 3, -ln 3): sigmoid(z) = (3/4, 1/4).
    z = np.log([3.0, 1 / 3.0]).astype(np.float32)
    logits, labels = np.stack([z, z, z]), np.array([0, 1, 2])
    # CORN: P(y>0) = 3/4, P(y>1) = 3/4 * 1/4 = 3/16 -> P = (1/4, 9/16, 3/16), decision 1.
    # y=0: task 0 only, target 0: -log(1/4) = log 4.
    # y=1: task 0 target 1: -log(3/4); task 1 target 0: -log(3/4). Sum 2 log(4/3).
    # y=2: task 0 target 1: -log(3/4); task 1 target 1: -log(1/4). Sum log(16/3).
    corn = [math.log(4), 2 * math.log(4 / 3), math.log(16 / 3)]
    np.testing.assert_allclose(losses.corn_loss(logits, labels), corn, rtol=1e-6)
    # Batch form: 5 (example, task) pairs (task 0: 3 examples, task 1: 2).
    np.testing.assert_allclose(corn_loss_batch(logits, labels), sum(corn) / 5,
                               rtol=1e-6)
    np.testing.assert_allclose(ordinal.corn_probabilities(z), [1 / 4, 9 / 16, 3 / 16],
                               rtol=1e-6)
    assert int(ordinal.corn_decision(z)) == 1
    # CORAL: P(y>0) = 3/4, P(y>1) = 1/4 -> P = (1/4, 1/2, 1/4), decision 1.
    # y=0: -log(1/4) - log(3/4) = log(16/3); y=1: 2 log(4/3); y=2: log(16/3).
    coral = [math.log(16 / 3), 2 * math.log(4 / 3), math.log(16 / 3)]
    np.testing.assert_allclose(losses.coral_loss(logits, labels), coral, rtol=1e-6)
    np.testing.assert_allclose(ordinal.coral_probabilities(z), [1 / 4, 1 / 2, 1 / 4],
                               rtol=1e-6)
    assert int(ordinal.coral_decision(z)) == 1
    # Crossed CORAL thresholds, z = (-ln 3, ln 3): P(y>0) = 1/4 < P(y>1) = 3/4.
    # Differences (3/4, -1/2, 3/4) -> clipped (3/4, 0, 3/4) -> renormalised (1/2, 0, 1/2).
    np.testing.assert_allclose(ordinal.coral_probabilities(-z), [1 / 2, 0, 1 / 2], atol=1e-7)
    assert int(ordinal.coral_decision(-z)) == 1  # only P(y>1) > 0.5


# ---- gradients: central differences in float64 ----------------------------------------
_MASK = np.array([1, 0, 1, 1, 0])
_LOSS_FNS = {
    "corn": lambda z, y: losses.corn_loss(z, y).sum(),
    "coral": lambda z, y: losses.coral_loss(z, y).sum(),
    "corn_batch": lambda z, y: corn_loss_batch(z, y, _MASK),
}


@pytest.mark.parametrize("name", sorted(_LOSS_FNS))
def test_gradient_matches_central_differences_float64(name):
    fn = _LOSS_FNS[name]
    logits, labels = _batch(4, n=5)
    labels[:3] = [0, 1, 2]  # every label and both tasks take part
    with jax.enable_x64(True):  # scoped: x64 must not leak into other tests
        x = jnp.asarray(logits, jnp.float64)
        y = jnp.asarray(labels)
        fn = jax.jit(fn)  # one compile, not one per eager op and shift
        grad = np.asarray(jax.grad(fn)(x, y))
        assert grad.dtype == np.float64
        eps = 1e-6
        fd = np.zeros_like(grad)
        for idx in np.ndindex(*x.shape):
            step = jnp.zeros_like(x).at[idx].set(eps)
            fd[idx] = (float(fn(x + step, y)) - float(fn(x - step, y))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert jnp.ones(1).dtype == jnp.float32


# ---- properties -------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1e4])
def test_probabilities_valid_and_corn_rank_consistent(scale):
    logits, _ = _batch(5, n=200, k=5, scale=scale)
    greater = np.asarray(ordinal.corn_greater(logits))
    assert np.all(np.diff(greater, axis=-1) <= 0), "CORN P(y>k) must not increase in k"
    for probs_fn in (ordinal.corn_probabilities, ordinal.coral_probabilities):
        probs = np.asarray(probs_fn(logits))
        assert probs.shape == (200, 5) and np.all(np.isfinite(probs))
        assert np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_corn_class_probabilities_need_no_clipping():
    # The differences of CORN's P(y > k) telescope to exactly 1 before any renormalising.
    logits, _ = _batch(6, n=100, k=5)
    g = np_corn_greater(logits)
    ext = np.concatenate([np.ones((100, 1)), g, np.zeros((100, 1))], axis=1)
    raw = ext[:, :-1] - ext[:, 1:]
    assert np.all(raw >= 0)
    np.testing.assert_allclose(ordinal.corn_probabilities(logits), raw, atol=1e-6)


@pytest.mark.parametrize("name", ["corn", "coral"])
def test_finite_losses_and_gradients_at_huge_logits(name):
    fn = ordinal.ORDINAL[name].loss
    logits = jnp.array([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4], [0.0, 1e4]])
    labels = jnp.array([1, 0, 2, 2, 0])
    value, grad = jax.value_and_grad(lambda z: fn(z, labels).sum())(logits)
    per_example = fn(logits, labels)
    assert np.all(np.isfinite(per_example)) and np.isfinite(value)
    assert np.all(np.isfinite(grad))
    assert float(per_example[2]) < 1e-3 and float(per_example[3]) > 1e3  # right vs wrong


def test_masked_examples_contribute_nothing():
    logits, labels = _batch(7, n=10)
    mask = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1])
    keep = mask.astype(bool)
    batch_loss = jax.jit(corn_loss_batch)
    ref = batch_loss(logits[keep], labels[keep], np.ones(keep.sum()))
    np.testing.assert_allclose(batch_loss(logits, labels, mask), ref, rtol=1e-6)
    garbage = logits.copy()
    garbage[~keep] = 1e4 * np.sign(garbage[~keep])
    flipped = np.where(keep, labels, 2 - labels)
    value, grad = jax.jit(jax.value_and_grad(batch_loss))(garbage, flipped, mask)
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    assert np.all(np.asarray(grad)[~keep] == 0) and np.any(np.asarray(grad)[keep] != 0)
    # An all-padding batch is 0, not 0/0.
    assert float(batch_loss(logits, labels, np.zeros(10))) == 0.0


def test_batch_form_is_the_per_example_mean_rescaled():
    # corn_loss_batch = mean(corn_loss) * n / n_pairs, n_pairs = sum_i min(y_i + 1, K - 1).
    logits, labels = _batch(8, n=16)
    n_pairs = np.minimum(labels + 1, 2).sum()
    np.testing.assert_allclose(corn_loss_batch(logits, labels),
                               np.mean(losses.corn_loss(logits, labels)) * 16 / n_pairs,
                               rtol=1e-6)


# ---- layers -----------------------------------------------------------------------------
def test_coral_layer_shares_one_weight_vector_and_starts_ordered():
    layer = ordinal.CoralLayer(4)
    x = jax.random.normal(jax.random.key(0), (6, 8))
    params = jax.jit(layer.init)(jax.random.key(1), x)["params"]
    assert params["kernel"].shape == (8, 1) and params["bias"].shape == (3,)
    np.testing.assert_allclose(params["bias"], [1.0, 2 / 3, 1 / 3], rtol=1e-6)
    z = np.asarray(jax.jit(layer.apply)({"params": params}, x))
    # One weight vector: z_k - z_j = b_k - b_j for every input.
    np.testing.assert_allclose(z - z[:, :1], np.broadcast_to(
        params["bias"] - params["bias"][0], z.shape), atol=1e-6)
    np.testing.assert_allclose(z[:, 0], x @ params["kernel"][:, 0] + 1.0, rtol=1e-5)
    assert np.all(np.diff(np.asarray(ordinal.coral_greater(z)), axis=-1) < 0)


def test_logits_layer_and_num_outputs_reject_bad_input():
    assert ordinal.num_outputs(3) == 2
    with pytest.raises(ValueError, match="num_classes"):
        ordinal.num_outputs(1)
    with pytest.raises(ValueError, match="corn"):
        ordinal.logits_layer("cumulative", 3)


class _TinyHead(nn.Module):
    """The study's head shape with an ordinal last layer (names as in train.Head)."""

    kind: str

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="head_dense")(x))
        return ordinal.logits_layer(self.kind, 3)(x)


def _toy(seed, n):
    x = np.random.default_rng(seed).uniform(-3, 3, (n, 1)).astype(np.float32)
    return x, ((x[:, 0] > -1).astype(np.int32) + (x[:, 0] > 1))


@pytest.mark.parametrize("kind", ["corn", "coral"])
def test_tiny_mlp_learns_an_ordinal_toy_problem(kind):
    spec = ordinal.ORDINAL[kind]
    model = _TinyHead(kind)
    x, y = _toy(0, 256)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    assert params["head_logits"]["bias"].shape == (spec.num_outputs(3),)
    tx = optax.adam(0.03)

    @jax.jit
    def train(params):
        def step(carry, _):
            p, opt = carry
            loss_of = lambda q: spec.loss(model.apply({"params": q}, x), y).mean()
            grads = jax.grad(loss_of)(p)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None
        return jax.lax.scan(step, (params, tx.init(params)), None, length=300)[0][0]

    @jax.jit
    def evaluate(params, x):
        logits = model.apply({"params": params}, x)
        probs = spec.probabilities(logits)
        # The class probabilities feed the minimum-expected-cost decision unchanged.
        return spec.decision(logits), probs, metrics.min_expected_cost(probs, 1 - jnp.eye(3))

    xt, yt = _toy(1, 512)
    decision, probs, mec = map(np.asarray, evaluate(train(params), xt))
    assert np.mean(decision == yt) > 0.9
    assert np.mean(probs.argmax(-1) == yt) > 0.9
    np.testing.assert_array_equal(mec, probs.argmax(-1))
