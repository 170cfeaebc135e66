"""The plain PyTorch reference of ``python -m handjax.bench protocol --torch`` (an optional
extra: skipped where torch/torchvision are not installed, as in CI)."""
import importlib.util

import pytest

from cells import assert_peer_result, tiny_peer_spec
from handjax.bench import suite, torch_peer

needs_torch = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "torchvision")),
    reason="the optional extra 'torch' is not installed")


def test_torch_flag_without_torch_refuses_in_one_line(monkeypatch):
    """Without torch, ``--torch`` exits at once with one line naming the extra to install
    (before any handjax run)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "torchvision") else real(name, *a))
    with pytest.raises(SystemExit) as e:
        suite.main(["protocol", "--torch"])
    assert str(e.value) == torch_peer.NO_TORCH and "\n" not in str(e.value)


@needs_torch
def test_split_index_is_the_named_pool():
    """"block4_pool" is torchvision VGG19's 4th max-pool (features[27]): phase 2 trains
    block 5's four convs, as handjax and the Keras peer do."""
    import torch
    import torchvision
    features = torchvision.models.vgg19(weights=None).features
    i = torch_peer.split_index(features, "block4_pool")
    assert i == 27 and isinstance(features[i], torch.nn.MaxPool2d)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in features[i + 1:]) == 4


@needs_torch
@pytest.mark.slow  # PyTorch trains the protocol
def test_torch_protocol_tiny():
    out = torch_peer.torch_protocol(tiny_peer_spec())
    assert_peer_result(out)
    assert out["dtype"] == "bfloat16 autocast"


@needs_torch
def test_torch_flag_refuses_other_models(capsys):
    with pytest.raises(SystemExit):
        suite.main(["protocol", "--torch", "--model", "resnet50"])
    assert "plain PyTorch reference covers vgg16, vgg19" in capsys.readouterr().err
