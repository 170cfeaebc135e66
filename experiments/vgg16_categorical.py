"""Study cell: vgg16 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/vgg16_categorical.py
    python launch.py --config experiments/vgg16_categorical.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg16", "categorical", arg)
