"""Study cell: resnet50 fine-tuned with the study's custom_loss, read as its three metrics on a soft confusion matrix (losses.soft_custom).

    python launch.py --config experiments/resnet50_custom.py
    python launch.py --config experiments/resnet50_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("resnet50", "custom", arg)
