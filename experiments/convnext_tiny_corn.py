"""Beyond the study's backbones: ConvNeXt-Tiny (ImageNet weights from Keras; README,
"Beyond the study's models"), fine-tuned with the CORN
ordinal head (K-1 logits over the severity order normal < heberden < ra; handjax.ordinal),
its loss, its class probabilities and its ordinal decision.

    python launch.py --config experiments/convnext_tiny_corn.py
    python launch.py --config experiments/convnext_tiny_corn.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("convnext_tiny", "corn", arg)
