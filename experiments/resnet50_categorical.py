"""Study cell: resnet50 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/resnet50_categorical.py
    python launch.py --config experiments/resnet50_categorical.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("resnet50", "categorical", arg)
