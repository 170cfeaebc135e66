"""The Keras reference of ``python -m handjax.bench protocol --keras`` runs the protocol."""
import pytest

pytest.importorskip("keras")  # conftest sets KERAS_BACKEND=jax

from cells import assert_peer_result, tiny_peer_spec  # noqa: E402
from handjax.bench import keras_peer  # noqa: E402

pytestmark = pytest.mark.slow  # Keras trains the protocol


def test_keras_protocol_tiny():
    assert_peer_result(keras_peer.keras_protocol(tiny_peer_spec()))
