"""The Keras reference of ``python -m handjax.bench protocol --keras`` runs the protocol."""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("keras")  # conftest sets KERAS_BACKEND=jax

from handjax.bench import keras_peer as bench_keras, protocol as bench_protocol# noqa: E402

pytestmark = pytest.mark.slow  # Keras trains the protocol


def test_keras_protocol_tiny():
    specs = bench_protocol.protocol_configs("vgg16", 32, n_per_class=4, epochs1=1, epochs2=1,
                                   n_folds=2, weights="none", batch=8)
    fast = specs["handjax"]
    fast = dataclasses.replace(fast, model=dataclasses.replace(fast.model, hidden=16))
    out = bench_keras.keras_protocol(fast)
    assert len(out["cnn_acc_per_fold"]) == len(out["svm_acc_per_fold"]) == 2
    for acc in (*out["cnn_acc_per_fold"], *out["svm_acc_per_fold"], out["cnn_acc"],
                out["svm_acc"]):
        assert np.isfinite(acc) and 0.0 <= acc <= 1.0
    assert out["wall_s"] > 0 and set(out["timing"]) == {"prepare_s", "run_s", "evaluate_s"}
