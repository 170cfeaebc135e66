"""Study cell: vgg19 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/vgg19_categorical.py
    python launch.py --config experiments/vgg19_categorical.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("vgg19", "categorical", arg)
