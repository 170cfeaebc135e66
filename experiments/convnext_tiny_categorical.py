"""Beyond the study's backbones: ConvNeXt-Tiny (ImageNet weights from Keras; README,
"Beyond the study's models"), fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/convnext_tiny_categorical.py
    python launch.py --config experiments/convnext_tiny_categorical.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("convnext_tiny", "categorical", arg)
