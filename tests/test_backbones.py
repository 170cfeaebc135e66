"""handjax.backbones against Keras Applications (the reference), on CPU-small inputs.

Keras models get random weights, are saved as legacy HDF5 files the way Keras writes them,
and both frameworks load those files; feature maps must agree within
max|diff| <= 1e-4 * max(1, max|keras|). Run: pytest tests/test_backbones.py -s
"""

import hashlib
import os
import urllib.error

import h5py
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import keras  # conftest sets KERAS_BACKEND=jax
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from handjax import backbones

TOL = 1e-4
# Input (height, width) per model: non-square and odd sizes exercise Keras's padding rules.
INPUT_HW = {"vgg16": (64, 64), "vgg19": (48, 80), "resnet50": (75, 97), "mobilenetv2": (72, 96)}
KERAS_APPS = {
    "vgg16": (keras.applications.VGG16, keras.applications.vgg16.preprocess_input),
    "vgg19": (keras.applications.VGG19, keras.applications.vgg19.preprocess_input),
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "mobilenetv2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input),
}
PARAM_COUNTS = {"vgg16": 14_714_688, "vgg19": 20_024_384, "resnet50": 23_587_712, "mobilenetv2": 2_257_984}
MAX_REL_ERR = {}


def _randomize(model, rng):
    """Every Keras weight random; kernels He-scaled so activations stay O(1); BN variance > 0."""
    for layer in model.layers:
        for v in layer.weights:
            shape, leaf = tuple(v.shape), v.path.split("/")[-1]
            if len(shape) == 4:
                fan_in = np.prod(shape[:2]) * (1 if "depthwise" in layer.name else shape[2])
                value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            elif leaf == "gamma" and layer.name.endswith(("_3_bn", "_project_BN")):
                # Small last gamma of residual branches keeps the residual stream O(1).
                value = rng.uniform(0.1, 0.4, shape)
            elif leaf == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif leaf == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            else:  # bias, beta, moving_mean
                value = rng.normal(0, 0.2, shape)
            v.assign(value.astype(np.float32))


class KerasRef:
    """A Keras model loaded from a random-weight legacy HDF5 file, plus test images."""

    def __init__(self, name, tmp_dir):
        factory, self.keras_preprocess = KERAS_APPS[name]
        h, w = INPUT_HW[name]
        self.model = factory(weights=None, include_top=False, input_shape=(h, w, 3))
        rng = np.random.default_rng(0)
        _randomize(self.model, rng)
        self.path = str(tmp_dir / f"{name}.h5")
        with h5py.File(self.path, "w") as f:
            save_weights_to_hdf5_group(f, self.model)
        _randomize(self.model, rng)  # different values, so load_weights must do the work
        self.model.load_weights(self.path)
        self.images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        self.features = self.predict(train=False)

    def inputs(self):
        return self.keras_preprocess(self.images.astype(np.float32))

    def predict(self, train):
        """Feature map; with train=True also Keras's updated {layer: (moving_mean, moving_var)}."""
        if not train:
            return self.model.predict(self.inputs(), verbose=0)
        # Keras's own functional training call, jitted (eager Keras is slow on CPU).
        m = self.model
        trainable = [v.value for v in m.trainable_variables]
        frozen = [v.value for v in m.non_trainable_variables]
        call = jax.jit(lambda t, f, x: m.stateless_call(t, f, x, training=True))
        out, frozen = call(trainable, frozen, self.inputs())
        new = {v.path: np.asarray(a) for v, a in zip(m.non_trainable_variables, frozen)}
        stats = {
            layer.name: (new[layer.moving_mean.path], new[layer.moving_variance.path])
            for layer in m.layers
            if hasattr(layer, "moving_mean")
        }
        return np.asarray(out), stats


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    print("\nlargest relative error per model:", {k: f"{v:.2e}" for k, v in MAX_REL_ERR.items()})


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    cache, tmp = {}, tmp_path_factory.mktemp("keras_ref")

    def get(name):
        if name not in cache:
            cache[name] = KerasRef(name, tmp)
        return cache[name]

    return get


def _check_close(name, ours, keras_out, label):
    ours = np.asarray(ours, np.float64)
    assert ours.shape == keras_out.shape, (label, ours.shape, keras_out.shape)
    scale = max(1.0, float(np.abs(keras_out).max()))
    err = float(np.abs(ours - keras_out).max()) / scale
    MAX_REL_ERR[name] = max(MAX_REL_ERR.get(name, 0.0), err)
    print(f"\n{name} {label}: max|diff|/max(1,max|keras|) = {err:.2e} (max|keras| {scale:.3g})")
    assert err <= TOL, f"{name} {label}: relative error {err:.3e} > {TOL}"


# ----------------------------------------------------------------------------- old file styles


def _old_weight_names(name, layer, n_weights):
    """The weight naming of the older Keras files the real downloads use."""
    if name in ("vgg16", "vgg19"):
        return [f"{layer}_W_1:0", f"{layer}_b_1:0"][:n_weights]
    keys = ["gamma", "beta", "moving_mean", "moving_variance"] if n_weights == 4 else ["kernel", "bias"]
    if layer.endswith("depthwise") and n_weights == 1:
        keys = ["depthwise_kernel"]
    return [f"{layer}/{k}:0" for k in keys[:n_weights]]


def _old_layer_name(name, layer):
    """MobileNetV2's old files name layers differently (mobl1_conv_1_expand, ...)."""
    if name != "mobilenetv2" or not layer.startswith(("block_", "expanded_conv_")):
        return layer
    block = 0 if layer.startswith("expanded_conv_") else int(layer.split("_")[1])
    bn = layer.endswith("_BN")
    kind = layer.removesuffix("_BN").rsplit("_", 1)[-1]
    return f"bn{block}_conv_{block}_bn_{kind}" if bn else f"mobl{block}_conv_{block}_{kind}"


def _rewrite_old_style(name, src, dst):
    """Copies a Keras 3 legacy file into an older naming style: renamed layers/weights,
    str (not bytes) attributes, weightless layers listed, groups in another order."""
    layers = backbones.read_keras_h5(src)
    names = [_old_layer_name(name, layer) for layer, _ in layers]
    with h5py.File(dst, "w") as f:
        f.attrs["layer_names"] = np.array(["input_1"] + names[:1] + ["some_relu"] + names[1:], dtype=h5py.string_dtype())
        f.attrs["keras_version"] = "2.1.5"
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype=h5py.string_dtype())
        f.create_group("some_relu").attrs["weight_names"] = np.array([], dtype=h5py.string_dtype())
        for new, (_, arrays) in reversed(list(zip(names, layers))):
            group = f.create_group(new)
            wnames = _old_weight_names(name, new, len(arrays))
            group.attrs["weight_names"] = np.array(wnames, dtype=h5py.string_dtype())
            for w, a in zip(wnames, arrays):
                group.create_dataset(w, data=a)


# ----------------------------------------------------------------------------- Keras parity


@pytest.mark.parametrize("name", backbones.NAMES)
def test_matches_keras(name, refs, tmp_path):
    ref = refs(name)
    keras_weighted = [layer.name for layer in ref.model.layers if layer.weights]
    assert list(backbones.keras_layer_order(name)) == keras_weighted
    assert ref.model.count_params() == PARAM_COUNTS[name]

    x = backbones.preprocess(name, ref.images)
    for impl in ("xla", "im2col", "mmgrad", "winograd"):
        module, variables = backbones.load(name, weights=ref.path, conv_impl=impl)
        out, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables, x)
        _check_close(name, out, ref.features, f"conv_impl={impl}")
        # train=False leaves the running statistics alone.
        jax.tree.map(np.testing.assert_array_equal, state, {k: variables[k] for k in state})

    # The older naming styles load into exactly the same arrays (only positions matter).
    old = tmp_path / f"{name}_old.h5"
    _rewrite_old_style(name, ref.path, old)
    _, old_variables = backbones.load(name, weights=old)
    jax.tree.map(np.testing.assert_array_equal, old_variables, variables)


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_train_mode_matches_keras(name, refs):
    """train=True: batch statistics normalise and every running average moves as Keras's
    do (BN momentum, epsilon, biased batch variance), in one training call on each side."""
    ref = refs(name)
    module, variables = backbones.load(name, weights=ref.path, conv_impl="xla")
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


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", backbones.NAMES)
def test_param_counts_and_tree(name):
    module, variables = backbones.load(name, seed=3)
    assert sum(a.size for a in jax.tree.leaves(variables)) == PARAM_COUNTS[name]
    assert set(variables["params"]) == set(backbones.keras_layer_order(name))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    # Same tree as Flax's own init would give.
    flax_shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(lambda s: s.shape, flax_shapes)
    # Seeded: same seed same values, other seed other values.
    first = backbones.keras_layer_order(name)[0]
    _, again = backbones.load(name, seed=3)
    _, other = backbones.load(name, seed=4)
    np.testing.assert_array_equal(variables["params"][first]["kernel"], again["params"][first]["kernel"])
    assert not np.allclose(variables["params"][first]["kernel"], other["params"][first]["kernel"])


@pytest.mark.parametrize("name", backbones.NAMES)
def test_start_stop_split(name):
    module, variables = backbones.load(name, seed=1, conv_impl="xla")
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


@pytest.mark.parametrize("impl", ["xla", "im2col", "mmgrad", "winograd"])
def test_bfloat16_compute_keeps_float32_params(impl):
    # ResNet50 at init: identity BN and residual adds keep activations O(1).
    module32, variables = backbones.load("resnet50", seed=2, conv_impl=impl)
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


def test_bfloat16_im2col_accumulates_in_float32():
    """bf16 operands, f32 accumulation, one rounding at the end: every output within bf16's
    unit roundoff (2**-8 relative: half the spacing of its 8-bit significand) of the exact
    float64 sum of the same bf16 values. Positive inputs avoid cancellation; a sum of 2304
    terms accumulated in bf16 misses that bound by far."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (2, 6, 6, 256)), jnp.bfloat16)
    k = jnp.asarray(rng.uniform(0, 1, (3, 3, 256, 8)), jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    y = backbones.conv_im2col(x, k, 1, pads)
    assert y.dtype == jnp.bfloat16
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    kd = np.asarray(k, np.float64)
    exact = sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + 6, j:j + 6], kd[i, j])
                for i in range(3) for j in range(3))
    rel = np.abs(np.asarray(y, np.float64) - exact) / exact
    assert rel.max() <= 2.0**-8, rel.max()


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.build("vgg11")
    with pytest.raises(ValueError, match="conv_impl"):
        backbones.build("vgg16", conv_impl="fft")
    module, variables = backbones.load("vgg16")
    with pytest.raises(ValueError, match="unknown stage boundary"):
        module.apply(variables, jnp.zeros((1, 32, 32, 3)), stop="block9_pool")
    with pytest.raises(FileNotFoundError, match="not found"):
        backbones.load("vgg16", weights="/nonexistent/file.h5")


# ----------------------------------------------------------------------------- conv impls vs lax.conv

CONV_CASES = [
    # (kernel, stride, padding, depthwise)
    (3, 1, "SAME", False), (3, 2, "SAME", False), (3, 1, "VALID", False), (3, 2, "VALID", False),
    (1, 1, "SAME", False), (1, 2, "VALID", False), (7, 2, ((3, 3), (3, 3)), False),
    (3, 1, ((0, 2), (2, 1)), False),
    (3, 1, "SAME", True), (3, 2, "SAME", True), (3, 2, "VALID", True),
]  # fmt: skip


@pytest.mark.parametrize("k,stride,padding,depthwise", CONV_CASES)
def test_conv_impls_match_lax_conv(k, stride, padding, depthwise):
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 6)), jnp.float32)  # odd x even, non-square
    features = 6 if depthwise else 5
    make = lambda impl: backbones.Conv(features, (k, k), stride, padding, True, depthwise, impl)  # noqa: E731
    params = make("xla").init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    out_shape = make("xla").apply(params, x).shape
    cot = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

    @jax.jit
    def value_and_grads(params, x, cot):
        out = {}
        for impl in ("xla", "im2col", "mmgrad", "winograd"):
            loss = lambda p, x: jnp.sum(make(impl).apply(p, x) * cot)  # noqa: E731
            out[impl] = make(impl).apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)
        return out

    out = value_and_grads(params, x, cot)
    y_xla, g_xla = out["xla"]
    for impl in ("im2col", "mmgrad", "winograd"):
        y, g = out[impl]
        np.testing.assert_allclose(y, y_xla, rtol=1e-5, atol=1e-5, err_msg=impl)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=impl), g, g_xla)


@pytest.mark.parametrize("cin", [2, 7])  # 2: the all-taps-on-X branch (RGB layer); 7: X/G shifts
@pytest.mark.parametrize("k,padding", [(3, "SAME"), (3, "VALID"), (5, ((1, 3), (2, 0)))])
def test_mmgrad_kernel_gradient_in_batch_chunks(k, padding, cin, monkeypatch):
    """The matmul kernel gradient equals lax.conv's when the batch is scanned in chunks."""
    monkeypatch.setattr(backbones, "_KERNEL_GRAD_CHUNK_BYTES", 1)  # forces chunks of 2 images
    rng = np.random.default_rng(k + cin)
    x = jnp.asarray(rng.normal(size=(6, 11, 9, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, 4)), jnp.float32)
    pads = backbones._explicit_pads(padding, x.shape[1:3], (k, k), 1)
    cot = jnp.asarray(rng.normal(size=backbones._lax_conv(x, kernel, 1, pads).shape), jnp.float32)
    grads = {
        name: jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w, 1, pads) * cot), argnums=(0, 1)))(x, kernel)
        for name, fn in (("xla", backbones._lax_conv), ("mmgrad", lambda x, w, _, p: backbones.conv_mmgrad(x, w, p)))
    }
    for ours, ref in zip(grads["mmgrad"], grads["xla"]):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    # The scan really ran in chunks: 3 steps of 2 images.
    jaxpr = jax.make_jaxpr(lambda x, g: backbones._kernel_grad(x, g, kernel.shape, pads))(x, cot)
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 3


@pytest.mark.parametrize("hw,padding", [((8, 8), "SAME"), ((7, 10), "SAME"), ((9, 6), "VALID")])
def test_winograd_matches_float64_conv(hw, padding):
    """F(2x2, 3x3) Winograd against an exact float64 correlation, with VGG-sized channels
    (where float32 rounding of its transforms would show): outputs within 2e-6 of the
    output's scale, like a direct float32 conv; gradients equal lax.conv's within 1e-5."""
    rng = np.random.default_rng(sum(hw))
    x = rng.normal(size=(2, *hw, 256))
    k = rng.normal(size=(3, 3, 256, 8)) / 48.0
    pads = backbones._explicit_pads(padding, hw, (3, 3), 1)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    oh, ow = xp.shape[1] - 2, xp.shape[2] - 2
    exact = sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + oh, j:j + ow], k[i, j])
                for i in range(3) for j in range(3))
    x32, k32 = jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
    y = jax.jit(backbones.conv_winograd, static_argnums=2)(x32, k32, pads)
    assert y.shape == exact.shape and y.dtype == jnp.float32
    err = np.abs(np.asarray(y, np.float64) - exact).max() / np.abs(exact).max()
    assert err < 2e-6, err
    cot = jnp.asarray(rng.normal(size=exact.shape), jnp.float32)
    grads = [jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1)))(x32, k32)
             for f in (lambda x, w: backbones.conv_winograd(x, w, pads),
                       lambda x, w: backbones._lax_conv(x, w, 1, pads))]
    for ours, ref in zip(*grads):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def test_max_pool_2x2_matches_flax_values_and_gradient():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 9, 3)), jnp.float32)  # no ties
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    np.testing.assert_array_equal(backbones.max_pool_2x2(x), ref(x))
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4, 3)), jnp.float32)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cot))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(backbones.max_pool_2x2), grad(ref))


def test_auto_conv_impl_by_backend_and_map_size():
    assert backbones.resolve_conv_impl("xla", 10**6) == "xla"
    if jax.default_backend() == "cpu":
        assert backbones.resolve_conv_impl("auto", 56 * 56) == "mmgrad"
        assert backbones.resolve_conv_impl("auto", 14 * 14) == "im2col"
        assert backbones.resolve_conv_impl("auto", 14 * 14, winograd=True) == "winograd"
        assert backbones.resolve_conv_impl("auto", 7 * 7, winograd=True) == "im2col"
        assert backbones.resolve_conv_impl("auto", 28 * 28, winograd=True) == "mmgrad"
        forward = backbones.inference_impl("auto")  # frozen-feature passes
        assert backbones.resolve_conv_impl(forward, 28 * 28, winograd=True) == "winograd"
        assert backbones.resolve_conv_impl(forward, 7 * 7, winograd=True) == "winograd"
        assert backbones.resolve_conv_impl(forward, 56 * 56, winograd=True) == "xla"
        assert backbones.resolve_conv_impl(forward, 14 * 14, winograd=False) == "xla"
        folds = backbones.inference_impl("auto", per_fold=True)  # evaluation of fold models
        assert backbones.resolve_conv_impl(folds, 7 * 7, winograd=True) == "winograd"
        assert backbones.resolve_conv_impl(folds, 7 * 7, winograd=False) == "im2col"
        assert backbones.resolve_conv_impl(folds, 56 * 56, winograd=True) == "mmgrad"
    else:
        assert backbones.resolve_conv_impl("auto", 56 * 56) == "xla"
        assert backbones.resolve_conv_impl(backbones.inference_impl("auto"), 7 * 7, True) == "xla"
    assert backbones.inference_impl("auto", jnp.bfloat16) == "auto"
    assert backbones.inference_impl("im2col") == "im2col"


# ----------------------------------------------------------------------------- files and errors


def test_mismatched_file_lists_every_problem(refs, tmp_path):
    vgg16 = refs("vgg16").path
    with pytest.raises(ValueError) as err:
        backbones.load("vgg19", weights=vgg16)
    msg = str(err.value)
    assert "file has 13 layers with weights, vgg19 has 16" in msg
    assert "missing: layer #15 block5_conv4" in msg and "shape (3, 3, 256, 512), expected (3, 3, 256, 256)" in msg

    bad = tmp_path / "bad.h5"
    _rewrite_old_style("vgg16", vgg16, bad)
    with h5py.File(bad, "r+") as f:  # wrong kernel shape in one layer, one bias dropped in another
        del f["block2_conv1"]["block2_conv1_W_1:0"]
        f["block2_conv1"].create_dataset("block2_conv1_W_1:0", data=np.zeros((3, 3, 64, 99), np.float32))
        f["block3_conv2"].attrs["weight_names"] = np.array(["block3_conv2_W_1:0"], dtype=h5py.string_dtype())
    with pytest.raises(ValueError) as err:
        backbones.load("vgg16", weights=bad)
    msg = str(err.value)
    assert "block2_conv1" in msg and "(3, 3, 64, 99)" in msg
    assert "block3_conv2" in msg and "1 weights, expected 2" in msg


def test_preprocess_matches_keras():
    rng = np.random.default_rng(0)
    images_u8 = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    images_f = rng.uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    for name in backbones.NAMES:
        keras_pre = KERAS_APPS[name][1]
        for images in (images_u8, images_f):
            before = images.copy()
            ours = backbones.preprocess(name, images)
            assert ours.dtype == jnp.float32
            np.testing.assert_array_equal(images, before)  # input untouched
            np.testing.assert_allclose(ours, keras_pre(images.astype(np.float32)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels"):
        backbones.preprocess("vgg16", np.zeros((1, 4, 4, 1)))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def _fake_download(payload, calls):
    def download(url, dest):
        calls.append(url)
        with open(dest, "wb") as f:
            f.write(payload)

    return download


def _no_download(url, dest):
    raise AssertionError("must not download again")


def test_imagenet_download_hash_checked(refs, cache, monkeypatch):
    good = open(refs("vgg16").path, "rb").read()
    spec = backbones.WeightFile("vgg16_test_notop.h5", "https://example.invalid/vgg16_test_notop.h5",
                                hashlib.md5(good).hexdigest())  # fmt: skip
    monkeypatch.setitem(backbones.WEIGHT_FILES, "vgg16", spec)

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    calls = []
    monkeypatch.setattr(backbones, "_download", _fake_download(bytes(flipped), calls))
    with pytest.raises(ValueError, match="MD5 hash mismatch for vgg16_test_notop.h5"):
        backbones.load("vgg16", weights="imagenet")
    assert calls == [spec.url] and os.listdir(cache) == []  # temp file removed too

    monkeypatch.setattr(backbones, "_download", _fake_download(good, calls))
    _, from_cache = backbones.load("vgg16", weights="imagenet")
    assert sorted(os.listdir(cache)) == [spec.file]
    _, direct = backbones.load("vgg16", weights=refs("vgg16").path)
    jax.tree.map(np.testing.assert_array_equal, from_cache, direct)

    monkeypatch.setattr(backbones, "_download", _no_download)  # second use: cache only
    backbones.load("vgg16", weights="imagenet")


def test_mobilenet_sha256_recorded_on_first_download(cache, monkeypatch):
    spec = backbones.WEIGHT_FILES["mobilenetv2"]
    assert spec.md5 is None
    payload = b"not really weights" * 100
    monkeypatch.setattr(backbones, "_download", _fake_download(payload, []))
    path = backbones.fetch_weights("mobilenetv2")
    record = (cache / (spec.file + ".sha256")).read_text().split()[0]
    assert record == hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(backbones, "_download", _no_download)
    assert backbones.fetch_weights("mobilenetv2") == path
    path.write_bytes(payload[:-1] + b"X")
    with pytest.raises(ValueError, match="SHA-256 hash mismatch.*delete it"):
        backbones.fetch_weights("mobilenetv2")


def test_offline_imagenet_gives_clear_error(cache, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(backbones, "_download", offline)
    spec = backbones.WEIGHT_FILES["resnet50"]
    with pytest.raises(RuntimeError) as err:
        backbones.load("resnet50", weights="imagenet")
    msg = str(err.value)
    assert spec.url in msg and str(cache / spec.file) in msg and "by hand" in msg
    assert os.listdir(cache) == []


