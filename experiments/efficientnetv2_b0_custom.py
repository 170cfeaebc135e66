"""Beyond the study's backbones: EfficientNetV2-B0 (ImageNet weights from Keras; README,
"Beyond the study's models"), fine-tuned with the study's
custom_loss, read as its three metrics on a soft confusion matrix (losses.soft_custom).

    python launch.py --config experiments/efficientnetv2_b0_custom.py
    python launch.py --config experiments/efficientnetv2_b0_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("efficientnetv2_b0", "custom", arg)
