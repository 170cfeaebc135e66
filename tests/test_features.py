"""What the folds share: the per-image prefix, the bf16 cache, and the offline message."""
import jax.numpy as jnp
import numpy as np
import pytest

from cells import prepare, tiny_config, tiny_spec
from handjax.data import store
from handjax.models import frozen, keras_weights
from handjax.train import features
from handjax import config as configs


def test_per_image_prefix_equals_one_batched_pass():
    module, variables = keras_weights.load("vgg16", None, seed=0)
    views = (np.random.default_rng(0).random((1, 3, 56, 56, 3)) * 255).astype(np.uint8)
    # 56 px: block1_pool's output is 28x28, the last map that large
    assert frozen.per_image_boundary(module, variables, (56, 56),
                                     "block4_pool") == "block1_pool"
    batched = frozen.frozen_features(module, variables, "vgg16", views, "block4_pool",
                                     per_image=False)
    per_image = frozen.frozen_features(module, variables, "vgg16", views, "block4_pool",
                                       per_image=True)
    assert batched.shape == (1, 3, 3, 3, 512)
    np.testing.assert_allclose(per_image, batched, rtol=1e-5,
                               atol=1e-5 * np.abs(batched).max())


def test_the_prefix_compiles_before_any_photo():
    """The prefix's program is made from the image size alone (its batch does not depend on
    how many photos there are), and running the photos through it is running them through
    a program compiled for them: the same values, bit for bit."""
    module, variables = keras_weights.load("vgg16", None, seed=0)
    assert frozen.prefix_batch(300) == frozen.prefix_batch(23) == frozen.PREFIX_BATCH
    assert frozen.prefix_batch(4) == 4
    prefix = frozen.prefix_program(module, variables, "vgg16", (32, 32), "block3_pool")
    assert (prefix.out.shape, prefix.batch) == ((frozen.PREFIX_BATCH, 4, 4, 256), 10)
    views = (np.random.default_rng(1).random((2, 13, 32, 32, 3)) * 255).astype(np.uint8)
    ahead = frozen.frozen_features(module, variables, "vgg16", views, "block3_pool",
                                   prefix=prefix)
    own = frozen.frozen_features(module, variables, "vgg16", views, "block3_pool")
    assert ahead.shape == (2, 13, 4, 4, 256)
    np.testing.assert_array_equal(ahead, own)
    flat = views.reshape(-1, 32, 32, 3)
    assert prefix.fits(flat, 10)
    assert not prefix.fits(flat[:, :16, :16], 10) and not prefix.fits(flat, 8)
    assert not prefix.fits(flat.astype(np.float32), 10)


@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16"])
def test_input_specs_are_the_shapes_prepare_returns(cache_dtype, tmp_path):
    """What the epoch programs are compiled for ahead (features.input_specs) is what
    prepare then computes; nothing for a cache that spills to disk, or in plain mode."""
    spec = tiny_spec(cache_dtype=cache_dtype)
    cohort, inputs = prepare(spec)
    specs = features.input_specs(spec, cohort, inputs.fold_model)
    for want, got in zip(specs, (inputs.inputs1, inputs.inputs2)):
        assert (want.shape, jnp.dtype(want.dtype)) == (got.shape, jnp.dtype(got.dtype))
    spilled = tiny_spec(cache_dtype=cache_dtype, cache_budget_gb=0.0)
    assert features.input_specs(spilled, cohort, inputs.fold_model, tmp_path) is None
    assert features.input_specs(tiny_spec(mode="plain"), cohort, inputs.fold_model) is None


def test_even_batch_wastes_the_least_padding():
    assert store.even_batch(300, 32) == 30
    assert store.even_batch(10, 64) == 10
    assert store.even_batch(0, 8) == 8


@pytest.mark.slow  # bf16
def test_bfloat16_cache_is_close_to_float32():
    """The optional bf16 feature cache halves memory at ~3 significant digits."""
    _, full = prepare(tiny_spec())
    _, half = prepare(tiny_spec(cache_dtype="bfloat16"))
    assert half.inputs2.dtype == jnp.bfloat16
    assert half.cache_bytes * 2 == full.cache_bytes
    ref = np.asarray(full.inputs2, np.float32)
    err = np.abs(np.asarray(half.inputs2, np.float32) - ref).max() / np.abs(ref).max()
    assert err < 8e-3                                 # bf16 keeps 8 bits of mantissa


def test_offline_imagenet_suggests_random_weights(monkeypatch, tmp_path):
    def offline(url, dest):
        raise OSError("network is unreachable")
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "empty-cache"))
    from handjax.models import keras_weights
    monkeypatch.setattr(keras_weights, "_download", offline)
    c = tiny_config()
    c.model.weights = "imagenet"
    with pytest.raises(keras_weights.WeightsError) as err:
        prepare(configs.parse_run(c))
    msg = str(err.value)
    assert "\n" not in msg
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "--config.model.weights=none" in msg


@pytest.mark.slow  # trains the smoke cell
def test_spilled_cache_gives_identical_results(tmp_path, monkeypatch):
    """A budget of ~0 bytes puts the frozen-feature cache in a .npy memmap in the workdir,
    streamed to phase 2 one step at a time (a chunk bound of one byte), and the decoded photos and their views too
    (``arrays.0/``, read in batches): the confusion matrices equal the in-memory run's
    (pinned in the golden file, which test_train checks)."""
    import json
    from pathlib import Path

    from handjax import config
    from handjax.train import fold_program, run as train
    monkeypatch.setattr(fold_program, "STREAM_CHUNK_BYTES", 1)
    c = config.cell("vgg16", "categorical", "smoke")
    c.train.cache_budget_gb = 1e-9
    results = train.run(config.parse_run(c), tmp_path)
    assert (tmp_path / "frozen_features.0.npy").stat().st_size > results["cache_bytes"]
    assert {p.name for p in (tmp_path / "arrays.0").iterdir()} == {"photos.npy", "views.npy"}
    golden = json.loads((Path(__file__).parent / "golden" / "smoke_confusions.json")
                        .read_text())["vgg16_categorical"]
    assert {k: results["decisions"][k]["confusion"] for k in golden} == golden
