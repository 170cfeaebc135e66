"""handjax.models.efficientnetv2 against keras.applications.EfficientNetV2B0 (include_top=False).

Random weights written in Keras's legacy HDF5 format and loaded by Keras itself are the
reference, at an odd, non-square 67x45 input (Keras's "same" stride-2 convs pad one extra
pixel at the end). Run: pytest tests/test_models_efficientnetv2.py -s
"""

import jax
import jax.numpy as jnp
import keras  # conftest sets KERAS_BACKEND=jax
import keras_reference as kp
import numpy as np
import pytest

from handjax.models import backbones, keras_weights
from handjax.models import efficientnetv2

NAME = "efficientnetv2_b0"
HW = (67, 45)
PARAMS = 5_919_312  # Keras's count_params() (with the BN moving statistics), asserted below


def _value(layer, leaf, shape, rng):
    if len(shape) == 4:  # DepthwiseConv2D kernels are (k, k, C, 1): fan-in k*k
        return kp.he_normal(shape, np.prod(shape[:2]) * (1 if "dwconv" in layer.name else shape[2]), rng)
    if leaf == "gamma" and layer.name.endswith("project_bn"):
        return rng.uniform(0.1, 0.4, shape)  # small residual branches keep the stream O(1)
    if leaf == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    if leaf == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    return rng.normal(0, 0.2, shape)  # biases, betas, moving means


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    # The model normalises its [0, 255] input itself (Keras's in-model preprocessing).
    return kp.reference(keras.applications.EfficientNetV2B0, HW, tmp_path_factory.mktemp("keras_ref") / f"{NAME}.h5", _value)


@pytest.mark.slow  # Keras builds the model and both sides compile it
def test_matches_keras(ref):
    model, path, images, expected = ref
    assert model.count_params() == PARAMS
    assert kp.keras_weighted_layers(model) == list(backbones.keras_layer_order(NAME))
    x = backbones.preprocess(NAME, images)
    for impl in ("xla", "mmgrad", "winograd"):  # winograd: the fused blocks' 3x3 stride-1 convs
        module, variables = keras_weights.load(NAME, weights=path, conv_impl=impl)
        out, state = jax.jit(lambda v, x, m=module: m.apply(v, x, mutable=["batch_stats"]))(variables, x)
        err = kp.relative_error(out, expected)
        print(f"\n{NAME} conv_impl={impl}: max|diff|/max|keras| = {err:.2e}")
        assert err <= kp.TOL
        jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], variables["batch_stats"])


@pytest.mark.slow
def test_train_mode_matches_keras(ref):
    """train=True: batch statistics and Keras's running-average updates (momentum 0.9), with
    drop connect off on both sides (Keras: every Dropout's rate set to 0)."""
    model, path, images, _ = ref
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    # Keras's per-block rates are ours: drop_connect_rate * b / 21 for residual block b.
    ours = {b.prefix + "drop": 0.2 * b.index / 21 for b in efficientnetv2.blocks() if b.residual and b.index}
    assert {d.name: d.rate for d in drops} == pytest.approx(ours)
    for d in drops:
        d.rate = 0.0
    try:
        keras_out, new = kp.keras_train_call(model, images.astype(np.float32))
    finally:
        for d in drops:
            d.rate = ours[d.name]
    module, variables = keras_weights.load(NAME, weights=path, conv_impl="xla")
    module = module.clone(drop_connect_rate=0.0)
    x = backbones.preprocess(NAME, images)
    out, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    err = kp.relative_error(out, keras_out)
    print(f"\n{NAME} train=True: max|diff|/max|keras| = {err:.2e}")
    assert err <= kp.TOL
    bns = [layer for layer in model.layers if hasattr(layer, "moving_mean")]
    assert {layer.name for layer in bns} == set(updates["batch_stats"])
    for layer in bns:
        got = updates["batch_stats"][layer.name]
        for key, var in (("mean", layer.moving_mean), ("var", layer.moving_variance)):
            want = new[var.path]
            np.testing.assert_allclose(got[key], want, rtol=0, atol=kp.TOL * max(1.0, np.abs(want).max()))


def test_drop_connect_drops_whole_images():
    """train=True: a residual block's branch is kept (scaled by 1/(1 - rate)) or dropped per
    image, at Keras's rate for that block, drawn from the "dropout" rng collection."""
    module, variables = keras_weights.load(NAME, seed=0, conv_impl="xla")
    start, stop = "block6a_project_bn", "block6b_add"
    block = efficientnetv2.blocks()[efficientnetv2.STAGES.index(stop) - 1]
    rate = 0.2 * block.index / 21
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3, 2, 192)), jnp.float32)

    def run(module, key):
        return module.apply(variables, x, train=True, start=start, stop=stop, rngs={"dropout": key},
                            mutable=["batch_stats"])[0]

    run = jax.jit(run, static_argnums=0)
    kept = run(module.clone(drop_connect_rate=0.0), jax.random.key(0))
    scaled = x + (kept - x) / (1 - rate)
    drops = 0
    for seed in range(8):
        y = run(module, jax.random.key(seed))
        is_kept = np.all(np.isclose(y, scaled, rtol=1e-5, atol=1e-5), axis=(1, 2, 3))
        is_dropped = np.all(np.asarray(y) == np.asarray(x), axis=(1, 2, 3))
        assert np.all(is_kept ^ is_dropped), seed  # each image: all of its branch, or none
        drops += int(is_dropped.sum())
    # 128 draws at rate 0.133: mean 17; outside [5, 32] has probability < 1e-4.
    assert 5 <= drops <= 32, drops
    # Inference ignores it.
    np.testing.assert_array_equal(
        module.apply(variables, x, start=start, stop=stop),
        module.clone(drop_connect_rate=0.0).apply(variables, x, start=start, stop=stop))


def test_params_tree_and_split():
    module, variables = keras_weights.load(NAME, seed=1, conv_impl="xla")
    assert sum(a.size for a in jax.tree.leaves(variables)) == PARAMS
    kp.assert_tree_like_flax_init(module, variables)

    boundary = backbones.DEFAULT_TRAINABLE_FROM[NAME]
    assert boundary == "block5e_add"
    x = backbones.preprocess(NAME, np.random.default_rng(1).uniform(0, 255, (2, 67, 45, 3)))
    mid, _ = kp.split_composes(module, variables, x, boundary)
    after = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, start=boundary), mid)
    order = backbones.keras_layer_order(NAME)
    assert set(after["params"]) == set(order[order.index("block6a_expand_conv"):])
    n_top = sum(a.size for a in jax.tree.leaves(after))
    print(f"\nphase-2 variables after {boundary}: {n_top:,} of {PARAMS:,}")


def test_weight_file_is_keras_canonical():
    from keras.src.applications import efficientnet_v2 as keras_effnet

    spec = keras_weights.WEIGHT_FILES[NAME]
    assert spec.file == "efficientnetv2-b0_notop.h5"  # Keras: name + "_notop.h5"
    assert spec.url == keras_effnet.BASE_WEIGHTS_PATH + spec.file
    assert spec.md5 == keras_effnet.WEIGHTS_HASHES["b0"][1]


@pytest.mark.slow
def test_preprocess_matches_keras(ref):
    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    rescale, norm = ref[0].layers[1:3]
    assert isinstance(rescale, keras.layers.Rescaling) and isinstance(norm, keras.layers.Normalization)
    keras_pre = np.asarray(norm(rescale(images)))
    np.testing.assert_allclose(backbones.preprocess(NAME, images), keras_pre, rtol=0, atol=1e-6)
