"""bfloat16 compute gives nothing away: the smoke cell in bf16 and in float32 agree.

Parameters, loss and optimiser stay float32 in both; only the convs and the head's matmuls
run on bf16 operands (float32 accumulation). The conv numerics themselves are tested against
float64 in test_models_convs.py."""
import numpy as np
import pytest

from cells import run, tiny_config
from handjax import evaluation as clinical

pytestmark = pytest.mark.slow  # every test trains the smoke cell twice

# Out-of-fold CNN probabilities (softmax of the per-fold logits): max |bf16 - float32|
# measured 0.0044 (2026-11-29, confusion matrices identical); the bound is ~4.5x that.
PROB_TOL = 0.02


def test_bfloat16_smoke_cell_agrees_with_float32(tmp_path):
    out = {}
    for dtype in ("float32", "bfloat16"):
        c = tiny_config()
        c.model.dtype = dtype
        results = run(c, tmp_path / dtype)
        probs = clinical.read_predictions(tmp_path / dtype / "predictions.csv").probs["cnn"]
        out[dtype] = np.asarray(results["decisions"]["cnn"]["confusion"]), np.asarray(probs)
    (cm32, p32), (cm16, p16) = out["float32"], out["bfloat16"]
    assert np.abs(p16 - p32).max() <= PROB_TOL, np.abs(p16 - p32).max()
    # Per fold, at most one photo changes its decision (one cell -1, another +1).
    assert cm32.shape == cm16.shape and cm32.sum() == cm16.sum()
    assert (np.abs(cm16 - cm32).sum(axis=(1, 2)) <= 2).all(), (cm32, cm16)


def test_bfloat16_top_block_trains_on_1x1_maps():
    """VGG19's trained block at 16 px (1x1 maps) in bf16, its SGD steps inside lax.scan as
    the tuner and the epoch program run them. XLA:CPU once rejected the kernel gradient's
    transposed bf16 dot there ("Unsupported element type for DotThunk: BF16 x BF16 = F32");
    the canonical form (algorithms._tn_f32) runs, and its gradient agrees with float32's
    within 2e-2 of the gradient's scale (bf16 operands, float32 accumulation)."""
    import jax
    import jax.numpy as jnp
    from handjax.models.kernels import tuning
    tuning.top_timer("vgg19", "block4_pool", 16, 4, jnp.bfloat16)()   # compiles and runs
    grads = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        module, variables, x = tuning._top_parts("vgg19", "block4_pool", 16, 4, dtype)
        loss = lambda p: jnp.sum(tuning._pooled(module, variables, p, x, "block4_pool", dtype))  # noqa: E731
        grads[dtype] = jax.jit(jax.grad(loss))(variables["params"])
    for g32, g16 in zip(jax.tree.leaves(grads[jnp.float32]), jax.tree.leaves(grads[jnp.bfloat16])):
        g32, g16 = np.asarray(g32, np.float64), np.asarray(g16, np.float64)
        assert np.abs(g16 - g32).max() <= 2e-2 * np.abs(g32).max() + 1e-12
