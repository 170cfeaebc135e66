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
