"""handjax.models.backbones against Keras Applications (the reference), on CPU-small inputs.

Feature maps must agree within max|diff| <= 1e-4 * max(1, max|keras|), in every conv mode.
Run: python -m pytest tests/test_models_backbones.py -s
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handjax.models import backbones, keras_weights
from handjax.models.kernels import convs
from keras_reference import KERAS_APPS, PARAM_COUNTS, TOL, keras_ref

MAX_REL_ERR = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    print("\nlargest relative error per model:", {k: f"{v:.2e}" for k, v in MAX_REL_ERR.items()})


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return lambda name: keras_ref(name, tmp_path_factory)


def _check_close(name, ours, keras_out, label):
    ours = np.asarray(ours, np.float64)
    assert ours.shape == keras_out.shape, (label, ours.shape, keras_out.shape)
    scale = max(1.0, float(np.abs(keras_out).max()))
    err = float(np.abs(ours - keras_out).max()) / scale
    MAX_REL_ERR[name] = max(MAX_REL_ERR.get(name, 0.0), err)
    print(f"\n{name} {label}: max|diff|/max(1,max|keras|) = {err:.2e} (max|keras| {scale:.3g})")
    assert err <= TOL, f"{name} {label}: relative error {err:.3e} > {TOL}"


# ----------------------------------------------------------------------------- Keras parity


@pytest.mark.slow  # parity vs Keras
@pytest.mark.parametrize("name", list(KERAS_APPS))
def test_matches_keras(name, refs):
    ref = refs(name)
    keras_weighted = [layer.name for layer in ref.model.layers if layer.weights]
    assert list(backbones.keras_layer_order(name)) == keras_weighted
    assert ref.model.count_params() == PARAM_COUNTS[name]

    x = backbones.preprocess(name, ref.images)
    for impl in ("xla", "im2col", "mmgrad", "winograd", "winograd4", "table"):
        module, variables = keras_weights.load(name, weights=ref.path, conv_impl=impl)
        if impl == "table":   # as the frozen prefix runs it (winograd4 from 64 channels)
            module = convs.for_purpose(module, "frozen")
        out, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables, x)
        _check_close(name, out, ref.features, f"conv_impl={impl}")
        # train=False leaves the running statistics alone.
        jax.tree.map(np.testing.assert_array_equal, state, {k: variables[k] for k in state})


@pytest.mark.slow  # parity vs Keras
@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_train_mode_matches_keras(name, refs):
    """train=True: batch statistics normalise and every running average moves as Keras's
    do (BN momentum, epsilon, biased batch variance), in one training call on each side."""
    ref = refs(name)
    module, variables = keras_weights.load(name, weights=ref.path, conv_impl="xla")
    x = backbones.preprocess(name, ref.images)
    keras_out, keras_stats = ref.predict(train=True)
    ours, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    _check_close(name, ours, keras_out, "train=True output")
    assert set(keras_stats) == set(updates["batch_stats"])
    for layer, (mean, var) in keras_stats.items():
        new, old = updates["batch_stats"][layer], variables["batch_stats"][layer]
        assert np.all(np.asarray(new["mean"]) != np.asarray(old["mean"])), layer
        for ours_stat, theirs in ((new["mean"], mean), (new["var"], var)):
            scale = max(1.0, float(np.abs(theirs).max()))
            np.testing.assert_allclose(ours_stat, theirs, rtol=0, atol=TOL * scale, err_msg=layer)


def test_preprocess_matches_keras():
    rng = np.random.default_rng(0)
    images_u8 = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    images_f = rng.uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    for name in KERAS_APPS:
        keras_pre = KERAS_APPS[name][1]
        for images in (images_u8, images_f):
            before = images.copy()
            ours = backbones.preprocess(name, images)
            assert ours.dtype == jnp.float32
            np.testing.assert_array_equal(images, before)  # input untouched
            np.testing.assert_allclose(ours, keras_pre(images.astype(np.float32)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels"):
        backbones.preprocess("vgg16", np.zeros((1, 4, 4, 1)))


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", list(KERAS_APPS))
def test_param_counts_and_tree(name):
    module, variables = keras_weights.load(name, seed=3)
    assert sum(a.size for a in jax.tree.leaves(variables)) == PARAM_COUNTS[name]
    assert set(variables["params"]) == set(backbones.keras_layer_order(name))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    # Same tree as Flax's own init would give.
    flax_shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(lambda s: s.shape, flax_shapes)
    # Seeded: same seed same values, other seed other values.
    first = backbones.keras_layer_order(name)[0]
    _, again = keras_weights.load(name, seed=3)
    _, other = keras_weights.load(name, seed=4)
    np.testing.assert_array_equal(variables["params"][first]["kernel"], again["params"][first]["kernel"])
    assert not np.allclose(variables["params"][first]["kernel"], other["params"][first]["kernel"])


@pytest.mark.parametrize("name", list(KERAS_APPS))
def test_start_stop_split(name):
    module, variables = keras_weights.load(name, seed=1, conv_impl="xla")
    boundary = backbones.DEFAULT_TRAINABLE_FROM[name]
    assert boundary in module.stages
    x = backbones.preprocess(name, np.random.default_rng(1).uniform(0, 255, (2, 32, 40, 3)))
    full = module.apply(variables, x)  # eager: cheaper than three compilations here
    mid = module.apply(variables, x, stop=boundary)
    np.testing.assert_allclose(module.apply(variables, mid, start=boundary), full, rtol=1e-6, atol=1e-6)

    # init after the boundary yields exactly the layers after it, disjoint from the prefix.
    order = backbones.keras_layer_order(name)
    top = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, start=boundary), mid)["params"]
    bottom = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, stop=boundary), x)["params"]
    assert not set(top) & set(bottom)
    assert set(top) | set(bottom) == set(order)
    expected_top_first = {"vgg16": "block5_conv1", "vgg19": "block5_conv1", "resnet50": "conv5_block1_1_conv",
                          "mobilenetv2": "block_13_expand"}[name]  # fmt: skip
    assert expected_top_first in top and order.index(expected_top_first) == len(bottom)


@pytest.mark.slow  # bf16 in five conv algorithms: ~70 s on 2 cores
@pytest.mark.parametrize("impl", ["xla", "im2col", "mmgrad", "winograd", "matmul"])
def test_bfloat16_compute_keeps_float32_params(impl):
    # ResNet50 at init: identity BN and residual adds keep activations O(1).
    module32, variables = keras_weights.load("resnet50", seed=2, conv_impl=impl)
    module16 = backbones.build("resnet50", dtype=jnp.bfloat16, conv_impl=impl)
    x = backbones.preprocess("resnet50", np.random.default_rng(2).uniform(0, 255, (2, 48, 40, 3)))
    y32 = jax.jit(module32.apply)(variables, x)
    y16, state = jax.jit(lambda v, x: module16.apply(v, x, mutable=["batch_stats"]))(variables, x)
    assert y16.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state))
    # bf16 keeps ~3 significant digits; measured ~1e-2 after 53 layers.
    err = float(jnp.abs(y16.astype(jnp.float32) - y32).max() / jnp.abs(y32).max())
    print(f"\nbf16 vs f32 ({impl}): relative error {err:.2e}, max|f32| {float(jnp.abs(y32).max()):.2f}")
    assert err < 3e-2, err


def test_max_pool_2x2_matches_flax_values_and_gradient():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 9, 3)), jnp.float32)  # no ties
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    np.testing.assert_array_equal(backbones.max_pool_2x2(x), ref(x))
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4, 3)), jnp.float32)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cot))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(backbones.max_pool_2x2), grad(ref))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.build("vgg11")
    with pytest.raises(ValueError, match="conv_impl"):
        backbones.build("vgg16", conv_impl="fft")
    with pytest.raises(ValueError, match="purpose"):
        backbones.build("vgg16", purpose="auto_forward")
    module, variables = keras_weights.load("vgg16")
    with pytest.raises(ValueError, match="unknown stage boundary"):
        module.apply(variables, jnp.zeros((1, 32, 32, 3)), stop="block9_pool")


# ----------------------------------------------------------------------------- registry, conv choice


def test_registry_is_the_one_source_of_names_and_hooks():
    assert backbones.NAMES == tuple(backbones.MODELS)
    for name, cls in backbones.MODELS.items():
        assert backbones.DEFAULT_TRAINABLE_FROM[name] == cls.trainable_from in cls.stages
        assert keras_weights.WEIGHT_FILES[name] == cls.weight_file
        assert isinstance(backbones.build(name), cls)


def test_conv_algorithms_follow_the_policy_per_layer():
    """VGG16 at 112 px, traced on shapes: each layer gets conv_algorithm's choice for its
    map, and the "frozen" clone differs from "train" exactly where the table says."""
    x = jax.ShapeDtypeStruct((2, 112, 112, 3), jnp.float32)
    train = backbones.conv_algorithms(backbones.build("vgg16"), x)
    frozen = backbones.conv_algorithms(convs.for_purpose(backbones.build("vgg16"), "frozen"), x)
    assert list(train) == list(backbones.keras_layer_order("vgg16"))  # call order, every conv
    backend = jax.default_backend()
    cin = {l["name"]: l["in_shape"][2] for l in backbones.conv_layers(backbones.build("vgg16"), x)}
    for layer in train:
        side = 112 >> (int(layer[len("block")]) - 1)
        for purpose, got in (("train", train), ("frozen", frozen)):
            assert got[layer] == convs.conv_algorithm("auto", backend, side * side, jnp.float32,
                                                      purpose, in_channels=cin[layer])
    if backend == "cpu":   # the RGB layer: few input channels; then F(4x4) where frozen
        assert train["block1_conv1"] == "mmgrad" and frozen["block1_conv1"] == "xla"
        assert train["block1_conv2"] == "mmgrad" and frozen["block1_conv2"] == "winograd4"
        assert train["block5_conv1"] == "winograd" and frozen["block5_conv1"] == "winograd4"
    # From the split on, as the fold program asks it: VGG16's top block at 7x7.
    mid = jax.ShapeDtypeStruct((2, 7, 7, 512), jnp.float32)
    top = backbones.conv_algorithms(backbones.build("vgg16"), mid, start="block4_pool")
    assert list(top) == ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert any(map(convs.runs_lax_conv, top.values())) == (backend != "cpu")
