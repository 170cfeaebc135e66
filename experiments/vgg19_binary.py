"""Study cell: vgg19 fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/vgg19_binary.py
    python launch.py --config experiments/vgg19_binary.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg19", "binary", arg)
