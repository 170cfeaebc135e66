"""Beyond the study's backbones: ConvNeXt-Tiny (ImageNet weights from Keras; README,
"Beyond the study's models"), fine-tuned with the study's
custom_loss, read as its three metrics on a soft confusion matrix (losses.soft_custom).

    python launch.py --config experiments/convnext_tiny_custom.py
    python launch.py --config experiments/convnext_tiny_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("convnext_tiny", "custom", arg)
