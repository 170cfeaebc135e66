"""Study cell: vgg16 fine-tuned with the study's custom severity loss (expected misclassification cost, no cross-entropy).

    python launch.py --config experiments/vgg16_custom.py
    python launch.py --config experiments/vgg16_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg16", "custom", arg)
