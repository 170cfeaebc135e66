"""Study cell: resnet50 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/resnet50_categorical.py
    python launch.py --config experiments/resnet50_categorical.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("resnet50", "categorical", arg)
