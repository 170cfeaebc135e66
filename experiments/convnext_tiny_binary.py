"""Beyond the study's backbones: ConvNeXt-Tiny (ImageNet weights from Keras; README,
"Beyond the study's models"), fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/convnext_tiny_binary.py
    python launch.py --config experiments/convnext_tiny_binary.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("convnext_tiny", "binary", arg)
