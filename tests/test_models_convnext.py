"""handjax.models.convnext against keras.applications.ConvNeXtTiny (include_top=False).

Random weights written in Keras's legacy HDF5 format and loaded by Keras itself are the
reference; the input is an odd, non-square 71x53 (Keras's 4x4/4 stem and 2x2/2
downsamplings floor it to 17x13, 8x6, 4x3, 2x1). Run: pytest tests/test_models_convnext.py -s
"""

import hashlib
import urllib.error
from pathlib import Path

import jax
import keras  # conftest sets KERAS_BACKEND=jax
import keras_reference as kp
import numpy as np
import pytest

from handjax.models import backbones, keras_weights
from handjax.models import convnext

NAME = "convnext_tiny"
HW = (71, 53)
PARAMS = 27_820_128  # Keras's count_params(), asserted below too


def _value(layer, leaf, shape, rng):
    if len(shape) == 4:  # convs; the 7x7 depthwise kernel is (7, 7, 1, C): fan-in 49
        return kp.he_normal(shape, np.prod(shape[:3]), rng)
    if len(shape) == 2:  # Dense (pointwise convs)
        return kp.he_normal(shape, shape[0], rng)
    if layer.name.endswith("_layer_scale"):  # small residual branches keep the stream O(1)
        return rng.uniform(0.1, 0.4, shape)
    if leaf == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.2, shape)  # biases, betas


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    # The model normalises its [0, 255] input itself (Keras's in-model preprocessing).
    return kp.reference(keras.applications.ConvNeXtTiny, HW, tmp_path_factory.mktemp("keras_ref") / f"{NAME}.h5", _value)


@pytest.mark.slow  # Keras builds the model and both sides compile it: ~20 s on 2 idle cores
def test_matches_keras(ref):
    model, path, images, expected = ref
    assert model.count_params() == PARAMS
    weighted = kp.keras_weighted_layers(model)
    order = backbones.keras_layer_order(NAME)
    # The last LayerNormalization is unnamed in Keras: its name depends on the session.
    assert weighted[:-1] == list(order[:-1]) and weighted[-1].startswith(convnext.HEAD_NORM)
    x = backbones.preprocess(NAME, images)
    for impl in ("xla", "im2col"):  # ConvNeXt has no stride-1 dense convs: mmgrad/winograd = im2col
        module, variables = keras_weights.load(NAME, weights=path, conv_impl=impl)
        assert set(variables) == {"params"}
        out = jax.jit(module.apply)(variables, x)
        err = kp.relative_error(out, expected)
        print(f"\n{NAME} conv_impl={impl}: max|diff|/max|keras| = {err:.2e}")
        assert err <= kp.TOL


def test_params_tree_and_split():
    module, variables = keras_weights.load(NAME, seed=1, conv_impl="xla")
    assert sum(a.size for a in jax.tree.leaves(variables)) == PARAMS
    kp.assert_tree_like_flax_init(module, variables)
    first = variables["params"][f"{NAME}_stage_0_block_0_layer_scale"]["gamma"]
    np.testing.assert_array_equal(first, np.full(96, 1e-6, np.float32))  # Keras's init

    boundary = backbones.DEFAULT_TRAINABLE_FROM[NAME]
    assert boundary == "convnext_tiny_stage_2_block_8"
    x = backbones.preprocess(NAME, np.random.default_rng(1).uniform(0, 255, (2, 64, 96, 3)))
    mid, top = kp.split_composes(module, variables, x, boundary)
    # No BatchNorm, no drop path (Keras's ConvNeXtTiny drop_path_rate is 0): train=True is
    # the same function.
    top_train = jax.jit(lambda v, x: module.apply(v, x, start=boundary, train=True))(variables, mid)
    np.testing.assert_array_equal(top_train, top)
    after = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, start=boundary), mid)
    assert set(after) == {"params"}  # no batch_stats collection anywhere
    top_layers = set(after["params"])
    order = backbones.keras_layer_order(NAME)
    groups = order[order.index(f"{NAME}_downsampling_block_2"):]  # stage 3 and what follows
    assert top_layers == {m for g in groups for m in convnext.KERAS_GROUPS.get(g, (g,))}
    n_top = sum(a.size for k, sub in variables["params"].items() if k in top_layers for a in jax.tree.leaves(sub))
    print(f"\nphase-2 parameters after {boundary}: {n_top:,} of {PARAMS:,}")


@pytest.mark.slow
def test_weight_file_is_keras_canonical(ref, monkeypatch, tmp_path):
    from keras.src.applications import convnext as keras_convnext

    spec = keras_weights.WEIGHT_FILES[NAME]
    assert spec.url == keras_convnext.BASE_WEIGHTS_PATH + spec.file == keras_convnext.BASE_WEIGHTS_PATH + NAME + "_notop.h5"
    assert spec.md5 == keras_convnext.WEIGHTS_HASHES[NAME][1]  # SHA-256, 64 hex digits

    # "imagenet" downloads once into the cache and checks Keras's SHA-256.
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path))
    good = Path(ref[1]).read_bytes()
    monkeypatch.setitem(keras_weights.WEIGHT_FILES, NAME, spec._replace(md5=hashlib.sha256(good).hexdigest()))
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF

    def download(payload):
        return lambda url, dest: Path(dest).write_bytes(payload)

    monkeypatch.setattr(keras_weights, "_download", download(bytes(bad)))
    with pytest.raises(ValueError, match="SHA-256 hash mismatch"):
        keras_weights.load(NAME, weights="imagenet")
    monkeypatch.setattr(keras_weights, "_download", download(good))
    _, variables = keras_weights.load(NAME, weights="imagenet")
    _, direct = keras_weights.load(NAME, weights=ref[1])
    jax.tree.map(np.testing.assert_array_equal, variables, direct)

    def offline(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "empty"))
    monkeypatch.setitem(keras_weights.WEIGHT_FILES, NAME, spec)
    monkeypatch.setattr(keras_weights, "_download", offline)
    with pytest.raises(keras_weights.WeightsError, match="by hand"):
        keras_weights.load(NAME, weights="imagenet")


@pytest.mark.slow
def test_preprocess_matches_keras_prestem(ref):
    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    norm = ref[0].layers[1]
    assert isinstance(norm, keras.layers.Normalization)
    np.testing.assert_allclose(backbones.preprocess(NAME, images), np.asarray(norm(images)), rtol=0, atol=1e-6)
