"""Study cell: mobilenetv2 fine-tuned with categorical cross-entropy.

    python launch.py --config experiments/mobilenetv2_categorical.py
    python launch.py --config experiments/mobilenetv2_categorical.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("mobilenetv2", "categorical", arg)
