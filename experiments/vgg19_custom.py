"""Study cell: vgg19 fine-tuned with the study's custom severity loss (expected misclassification cost, no cross-entropy).

    python launch.py --config experiments/vgg19_custom.py
    python launch.py --config experiments/vgg19_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg19", "custom", arg)
