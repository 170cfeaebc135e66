"""Study cell: vgg19 fine-tuned with binary cross-entropy on one-hot targets.

    python launch.py --config experiments/vgg19_binary.py
    python launch.py --config experiments/vgg19_binary.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("vgg19", "binary", arg)
