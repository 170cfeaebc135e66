"""Study cell: vgg19 fine-tuned with the study's custom_loss, read as its three metrics on a soft confusion matrix (losses.soft_custom).

    python launch.py --config experiments/vgg19_custom.py
    python launch.py --config experiments/vgg19_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg19", "custom", arg)
