"""Study cell: vgg19 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/vgg19_categorical.py
    python launch.py --config experiments/vgg19_categorical.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg19", "categorical", arg)
