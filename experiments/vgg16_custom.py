"""Study cell: vgg16 fine-tuned with the study's custom severity loss (expected misclassification cost, no cross-entropy).

    python launch.py --config experiments/vgg16_custom.py
    python launch.py --config experiments/vgg16_custom.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("vgg16", "custom", arg)
