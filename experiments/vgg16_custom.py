"""Study cell: vgg16 fine-tuned with the study's custom_loss, read as its three metrics on a soft confusion matrix (losses.soft_custom).

    python launch.py --config experiments/vgg16_custom.py
    python launch.py --config experiments/vgg16_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg16", "custom", arg)
