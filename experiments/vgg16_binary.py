"""Study cell: vgg16 fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/vgg16_binary.py
    python launch.py --config experiments/vgg16_binary.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg16", "binary", arg)
