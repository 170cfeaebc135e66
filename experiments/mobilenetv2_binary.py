"""Study cell: mobilenetv2 fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/mobilenetv2_binary.py
    python launch.py --config experiments/mobilenetv2_binary.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("mobilenetv2", "binary", arg)
