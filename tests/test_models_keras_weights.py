"""handjax.models.keras_weights: Keras HDF5 files of every naming style, mismatch reports,
hash-checked ImageNet downloads and the cache directory. Keras writes the reference files."""

import hashlib
import os
import urllib.error
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from handjax.models import keras_weights
from handjax import cache
from keras_reference import KERAS_APPS, keras_ref


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return lambda name: keras_ref(name, tmp_path_factory)


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
    layers = keras_weights.read_keras_h5(src)
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


@pytest.mark.slow  # builds Keras references
@pytest.mark.parametrize("name", list(KERAS_APPS))
def test_old_file_styles_load_the_same_arrays(name, refs, tmp_path):
    """Only positions matter: the older naming styles give exactly the Keras 3 file's
    arrays, which are Keras's own weights (depthwise kernels transposed to (kh, kw, 1, C))."""
    ref = refs(name)
    _, variables = keras_weights.load(name, weights=ref.path)
    keras_weights_by_layer = {layer.name: [np.asarray(w.value) for w in layer.weights]
                              for layer in ref.model.layers if layer.weights}
    for layer, arrays in keras_weights_by_layer.items():
        ours = variables["params"][layer]
        if layer.endswith("_depthwise"):
            np.testing.assert_array_equal(ours["kernel"], arrays[0].transpose(0, 1, 3, 2))
        elif "kernel" in ours:
            np.testing.assert_array_equal(ours["kernel"], arrays[0])
    old = tmp_path / f"{name}_old.h5"
    _rewrite_old_style(name, ref.path, old)
    _, old_variables = keras_weights.load(name, weights=old)
    jax.tree.map(np.testing.assert_array_equal, old_variables, variables)


@pytest.mark.slow  # builds a Keras reference
def test_mismatched_file_lists_every_problem(refs, tmp_path):
    vgg16 = refs("vgg16").path
    with pytest.raises(keras_weights.WeightsError) as err:
        keras_weights.load("vgg19", weights=vgg16)
    msg = str(err.value)
    assert "file has 13 layers with weights, vgg19 has 16" in msg
    assert "missing: layer #15 block5_conv4" in msg and "shape (3, 3, 256, 512), expected (3, 3, 256, 256)" in msg

    bad = tmp_path / "bad.h5"
    _rewrite_old_style("vgg16", vgg16, bad)
    with h5py.File(bad, "r+") as f:  # wrong kernel shape in one layer, one bias dropped in another
        del f["block2_conv1"]["block2_conv1_W_1:0"]
        f["block2_conv1"].create_dataset("block2_conv1_W_1:0", data=np.zeros((3, 3, 64, 99), np.float32))
        f["block3_conv2"].attrs["weight_names"] = np.array(["block3_conv2_W_1:0"], dtype=h5py.string_dtype())
    with pytest.raises(keras_weights.WeightsError) as err:
        keras_weights.load("vgg16", weights=bad)
    msg = str(err.value)
    assert "block2_conv1" in msg and "(3, 3, 64, 99)" in msg
    assert "block3_conv2" in msg and "1 weights, expected 2" in msg


def test_missing_file_is_named():
    with pytest.raises(keras_weights.WeightsError, match="not found"):
        keras_weights.load("vgg16", weights="/nonexistent/file.h5")


# ----------------------------------------------------------------------------- cache and downloads


def test_cache_dir_ignores_an_empty_variable(monkeypatch, tmp_path):
    """HANDJAX_CACHE set: used; unset or empty: ~/.cache/handjax (never the working dir)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    assert keras_weights.weights_dir() == tmp_path / "mine" / "weights"
    default = tmp_path / "home" / ".cache" / "handjax"
    monkeypatch.setenv("HANDJAX_CACHE", "")
    assert cache.cache_dir() == default and keras_weights.weights_dir() == default / "weights"
    monkeypatch.delenv("HANDJAX_CACHE")
    assert cache.cache_dir() == default
    monkeypatch.setenv("HANDJAX_CACHE", "~/elsewhere")
    assert cache.cache_dir() == tmp_path / "home" / "elsewhere"
    assert isinstance(cache.cache_dir(), Path)


@pytest.fixture
def cache_weights(monkeypatch, tmp_path):
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


@pytest.mark.slow  # builds a Keras reference
def test_imagenet_download_hash_checked(refs, cache_weights, monkeypatch):
    good = open(refs("vgg16").path, "rb").read()
    spec = keras_weights.WeightFile("vgg16_test_notop.h5", "https://example.invalid/vgg16_test_notop.h5",
                                hashlib.md5(good).hexdigest())  # fmt: skip
    monkeypatch.setitem(keras_weights.WEIGHT_FILES, "vgg16", spec)

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    calls = []
    monkeypatch.setattr(keras_weights, "_download", _fake_download(bytes(flipped), calls))
    with pytest.raises(ValueError, match="MD5 hash mismatch for vgg16_test_notop.h5"):
        keras_weights.load("vgg16", weights="imagenet")
    assert calls == [spec.url] and os.listdir(cache_weights) == []  # temp file removed too

    monkeypatch.setattr(keras_weights, "_download", _fake_download(good, calls))
    _, from_cache = keras_weights.load("vgg16", weights="imagenet")
    assert sorted(os.listdir(cache_weights)) == [spec.file]
    _, direct = keras_weights.load("vgg16", weights=refs("vgg16").path)
    jax.tree.map(np.testing.assert_array_equal, from_cache, direct)

    monkeypatch.setattr(keras_weights, "_download", _no_download)  # second use: cache only
    keras_weights.load("vgg16", weights="imagenet")


def test_mobilenet_sha256_recorded_on_first_download(cache_weights, monkeypatch):
    spec = keras_weights.WEIGHT_FILES["mobilenetv2"]
    assert spec.md5 is None
    payload = b"not really weights" * 100
    monkeypatch.setattr(keras_weights, "_download", _fake_download(payload, []))
    path = keras_weights.fetch_weights("mobilenetv2")
    record = (cache_weights / (spec.file + ".sha256")).read_text().split()[0]
    assert record == hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(keras_weights, "_download", _no_download)
    assert keras_weights.fetch_weights("mobilenetv2") == path
    path.write_bytes(payload[:-1] + b"X")
    with pytest.raises(ValueError, match="SHA-256 hash mismatch.*delete it"):
        keras_weights.fetch_weights("mobilenetv2")


def test_offline_imagenet_gives_clear_error(cache_weights, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(keras_weights, "_download", offline)
    spec = keras_weights.WEIGHT_FILES["resnet50"]
    with pytest.raises(keras_weights.WeightsError) as err:
        keras_weights.load("resnet50", weights="imagenet")
    msg = str(err.value)
    assert spec.url in msg and str(cache_weights / spec.file) in msg and "by hand" in msg
    assert os.listdir(cache_weights) == []


def test_a_text_file_or_broken_h5_is_one_clear_line(tmp_path):
    import h5py
    text = tmp_path / "weights.h5"
    text.write_text("not hdf5 at all")
    with pytest.raises(keras_weights.WeightsError, match="not a readable Keras weight file") as e:
        keras_weights.load("vgg16", str(text))
    assert "\n" not in str(e.value) and "weights.h5" in str(e.value)
    broken = tmp_path / "broken.h5"
    with h5py.File(broken, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]          # names a group that is missing
    with pytest.raises(keras_weights.WeightsError, match="broken.h5"):
        keras_weights.load("vgg16", str(broken))


def test_published_hash_kind_follows_its_length(tmp_path):
    """Like Keras's get_file: a 64-hex-digit published hash is SHA-256 (ConvNeXt's), else MD5."""
    path = tmp_path / "w.h5"
    path.write_bytes(b"weights")
    spec = keras_weights.WEIGHT_FILES["convnext_tiny"]
    record = tmp_path / "none.sha256"
    for good in (hashlib.sha256(b"weights").hexdigest(), hashlib.md5(b"weights").hexdigest()):
        keras_weights._verify(path, spec._replace(md5=good), record)
    with pytest.raises(ValueError, match="SHA-256 hash mismatch"):
        keras_weights._verify(path, spec._replace(md5=hashlib.sha256(b"other").hexdigest()), record)
    with pytest.raises(ValueError, match="MD5 hash mismatch"):
        keras_weights._verify(path, spec._replace(md5=hashlib.md5(b"other").hexdigest()), record)
