"""The fold program: vmap / lax.map / loop agree, frozen layers stay frozen, one trace per
phase, and the "auto" fold mapping follows the trained convs."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cells import prepare, tiny_config, tiny_spec
from handjax import config as configs
from handjax.train import fold_program as folds
from handjax.models.kernels import convs


@pytest.fixture(scope="module")
def prepared():
    spec = tiny_spec()
    return spec, prepare(spec)


def _one_epoch(states, prep, phase, fold_map):
    cohort, fold_inputs = prep
    inputs = fold_inputs.inputs1 if phase == 1 else fold_inputs.inputs2
    batches = folds.epoch_batches(cohort.train_sets, batch_size=8,
                                  n_views=inputs.shape[0], seed=0, phase=phase, epoch=0)
    fn = jax.jit(lambda s, x, y, b, k: folds.epoch_fn(s, x, y, b, k, fold_map=fold_map))
    return fn(states, inputs, jnp.asarray(cohort.labels), batches, jax.random.key(1))


@pytest.mark.slow  # compiles three fold maps: ~45 s on 2 cores
@pytest.mark.parametrize("phase", [1, 2])
def test_vmap_map_and_loop_agree(prepared, phase):
    spec, prep = prepared
    outs = {}
    for kind in ("vmap", "map", "loop"):
        outs[kind], _ = _one_epoch(folds.states_for(phase, prep[1].fold_model, spec), prep, phase, kind)
    for kind in ("map", "loop"):
        # Same math, different batching of the kernels: float32 rounding only.
        chex.assert_trees_all_close(outs[kind].params, outs["vmap"].params,
                                    rtol=1e-4, atol=1e-5)


def test_frozen_parameters_stay_bit_identical(prepared):
    spec, prep = prepared
    states = folds.states_for(1, prep[1].fold_model, spec)
    before = jax.tree.map(np.asarray, states.params)
    states, _ = _one_epoch(states, prep, 1, "vmap")
    # Phase 1: the backbone top is frozen, heads train.
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, states.params["backbone"]),
                                before["backbone"])
    assert not np.array_equal(np.asarray(states.params["head"]["head_logits"]["kernel"]),
                              before["head"]["head_logits"]["kernel"])
    # Phase 2, plain path: the prefix (in the state there) stays bit-identical, top trains.
    plain_spec = tiny_spec(mode="plain")
    plain = prepare(plain_spec)
    st = folds.states_for(2, plain[1].fold_model, plain_spec)
    before = jax.tree.map(np.asarray, st.params["backbone"])
    st, _ = _one_epoch(st, plain, 2, "map")
    after = jax.tree.map(np.asarray, st.params["backbone"])
    for layer in before:
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after[layer]),
                                                         jax.tree.leaves(before[layer])))
        assert same == (layer not in plain[1].fold_model.trainable), layer


def test_step_compiles_once_per_phase(prepared, monkeypatch):
    spec, prep = prepared
    counted = chex.assert_max_traces(folds.train_step, n=1)
    monkeypatch.setattr(folds, "train_step", counted)
    states = folds.states_for(1, prep[1].fold_model, spec)
    fn = jax.jit(lambda s, x, y, b, k: folds.epoch_fn(s, x, y, b, k, fold_map="vmap"))
    cohort, fold_inputs = prep
    inputs = fold_inputs.inputs1
    for epoch in range(3):   # three epochs, new batches each time: one trace
        batches = folds.epoch_batches(cohort.train_sets, batch_size=8,
                                      n_views=inputs.shape[0], seed=0, phase=1, epoch=epoch)
        states, _ = fn(states, inputs, jnp.asarray(cohort.labels), batches,
                       jax.random.key(epoch))


def test_loop_traces_the_fold_body_once_and_keeps_each_fold_apart():
    """The unrolled loop traces its body once for K folds (inlined K times) and gives each
    fold exactly what the body gives that fold alone."""
    traced = []

    def body(args):
        w, x = args
        traced.append(1)
        return jnp.tanh(x @ w).sum(0), w * 2.0

    w = jax.random.normal(jax.random.key(0), (5, 4, 3))
    x = jax.random.normal(jax.random.key(1), (5, 6, 4))
    out = jax.jit(lambda w, x: folds.fold_mapper("loop")(body, (w, x)))(w, x)
    assert len(traced) == 1
    for k in range(5):
        ref = jax.jit(body)((w[k], x[k]))
        chex.assert_trees_all_close(jax.tree.map(lambda a, k=k: a[k], out), ref,
                                    rtol=1e-6, atol=1e-6)


def test_epoch_batches_cover_each_training_set_once_and_mask_padding():
    sets = [np.arange(0, 7), np.arange(10, 22)]
    b = folds.epoch_batches(sets, batch_size=5, n_views=3, seed=0, phase=1, epoch=0)
    assert b["idx"].shape == (3, 2, 5)                 # ceil(12 / 5) steps, 2 folds
    for k, s in enumerate(sets):
        real = b["idx"][:, k][b["mask"][:, k] > 0]
        assert sorted(real.tolist()) == sorted(s.tolist())
    again = folds.epoch_batches(sets, batch_size=5, n_views=3, seed=0, phase=1, epoch=0)
    assert all(np.array_equal(b[k], again[k]) for k in b)


@pytest.mark.slow  # compiles the auto fold map: ~25 s on 2 cores
def test_auto_fold_map_follows_the_trained_convs():
    """vmap unless XLA:CPU runs the trained convs faster with the folds unrolled (lax.conv,
    which vmap batches into grouped convolutions, and Winograd); forward-only programs
    lax.map the folds on CPU unless they run lax.conv."""
    c = tiny_config()
    with c.unlocked():
        c.model.name = "vgg19"
        c.data.image_size = 112            # block5 sees 7x7 maps: winograd on CPU (the table)
    spec = configs.parse_run(c)
    _, inputs = prepare(spec)
    on_cpu = jax.default_backend() == "cpu"
    assert inputs.fold_model.trained_algorithms == ({"winograd"} if on_cpu else {"xla"})
    im2col, wino, lax_conv = frozenset({"im2col"}), frozenset({"winograd"}), frozenset({"xla"})
    assert folds.resolve_fold_map("auto", im2col) == "vmap"
    assert folds.resolve_fold_map("auto", wino) == ("loop" if on_cpu else "vmap")
    assert folds.resolve_fold_map("auto", lax_conv) == ("loop" if on_cpu else "vmap")
    # Winograd's folds unroll only in a phase long enough to win back the loop's compile;
    # lax.conv's always (vmap would make grouped convs of them).
    short = convs.UNROLL_MIN_EPOCHS - 1
    assert folds.resolve_fold_map("auto", wino, short) == "vmap"
    assert folds.resolve_fold_map("auto", wino, short + 1) == ("loop" if on_cpu else "vmap")
    assert folds.resolve_fold_map("auto", lax_conv | wino, 1) == ("loop" if on_cpu else "vmap")
    assert folds.resolve_eval_fold_map("auto", wino, 1) == ("map" if on_cpu else "vmap")
    assert folds.resolve_fold_map("map", lax_conv) == "map"           # an explicit choice holds
    assert folds.resolve_eval_fold_map("auto", im2col) == ("map" if on_cpu else "vmap")
    assert folds.resolve_eval_fold_map("auto", wino) == ("map" if on_cpu else "vmap")
    assert folds.resolve_eval_fold_map("auto", lax_conv) == ("loop" if on_cpu else "vmap")
    assert folds.resolve_eval_fold_map("vmap", im2col) == "vmap"
    c.model.conv_impl = "xla"
    spec = configs.parse_run(c)
    _, inputs = prepare(spec)
    assert inputs.fold_model.trained_algorithms == {"xla"}


def test_batch_level_loss_trains_with_masked_unequal_folds(prepared):
    """soft_custom (a loss on the batch's soft confusion matrix) in the fold program: padding
    is masked out, so vmap over folds equals mapping them one by one, and the loss is finite."""
    from handjax import losses
    spec, prep = prepared
    soft = losses.get("soft_custom")
    outs = {}
    for kind in ("vmap", "map"):
        states = folds.states_for(1, prep[1].fold_model, spec).replace(loss_fn=soft)
        outs[kind], sums = _one_epoch(states, prep, 1, kind)
        assert np.isfinite(np.asarray(sums["loss"])).all()
    chex.assert_trees_all_close(outs["map"].params, outs["vmap"].params, rtol=1e-4, atol=1e-5)


def test_used_rows_reindex_and_chunk_steps():
    flat = np.array([[7, 3, 7], [9, 3, 3]])
    rows, local = folds.used_rows(flat)
    assert rows.shape == (6,) and set(rows) == {3, 7, 9}
    np.testing.assert_array_equal(rows[local], flat)
    assert folds.chunk_steps(12, 100, 450) == 4          # divisors of 12 up to 4.5 steps
    assert folds.chunk_steps(7, 100, 450) == 1           # a prime: one step at a time
    assert folds.chunk_steps(6, 100, 1e9) == 6 and folds.chunk_steps(6, 100, 0) == 1


def test_wait_behind_keeps_at_most_in_flight_calls_queued(monkeypatch):
    """A host loop over a spilled cache waits, after each dispatch, for the call
    ``IN_FLIGHT`` places behind the newest: never the newest itself (the host reads the next
    chunk while it runs), and nothing while fewer are queued."""
    waited = []
    monkeypatch.setattr(folds.jax, "block_until_ready", waited.append)
    outs = []
    for i in range(5):
        outs.append(f"call{i}")
        folds.wait_behind(outs, most=2)
    assert waited == ["call0", "call1", "call2"]
    assert folds.IN_FLIGHT >= 1
