"""Study cell: mobilenetv2 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/mobilenetv2_categorical.py
    python launch.py --config experiments/mobilenetv2_categorical.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("mobilenetv2", "categorical", arg)
