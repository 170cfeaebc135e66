"""handjax.data.augment: shapes, dtypes, determinism, and what zero ranges leave."""
import jax
import numpy as np
import pytest

from handjax import data
from handjax.data.augment import augment

SIZE = 32


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_augment_shape_dtype_and_reproducible(dtype):
    x = data.load_synthetic(n_per_class=2, image_size=SIZE).images.astype(dtype)
    key = jax.random.key(0)
    a = augment(key, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    b = jax.jit(augment)(key, x)
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1)
    assert np.array_equal(np.asarray(augment(key, x)), np.asarray(a))
    assert not np.array_equal(np.asarray(augment(jax.random.key(1), x)), np.asarray(a))


def test_augment_with_zero_ranges_only_flips():
    x = np.random.default_rng(0).integers(0, 256, (16, 12, 10, 3)).astype(np.uint8)
    out = np.asarray(augment(jax.random.key(5), x, max_rotate_deg=0.0, max_scale=0.0,
                                  max_translate=0.0, max_brightness=0.0, max_contrast=0.0))
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    same = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 16
