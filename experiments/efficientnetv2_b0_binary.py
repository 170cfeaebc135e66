"""Beyond the study's backbones: EfficientNetV2-B0 (ImageNet weights from Keras; README,
"Beyond the study's models"), fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/efficientnetv2_b0_binary.py
    python launch.py --config experiments/efficientnetv2_b0_binary.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("efficientnetv2_b0", "binary", arg)
