"""Study cell: resnet50 fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/resnet50_binary.py
    python launch.py --config experiments/resnet50_binary.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("resnet50", "binary", arg)
