"""Study cell: vgg16 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/vgg16_categorical.py
    python launch.py --config experiments/vgg16_categorical.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("vgg16", "categorical", arg)
