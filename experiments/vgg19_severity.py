"""VGG19 with the severity loss mixed with cross-entropy (ce_weight 1): handjax's default
severity objective, which trains where the study's pure custom loss did not.

    python launch.py --config experiments/vgg19_severity.py
    python launch.py --config experiments/vgg19_severity.py:smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    return base.cell("vgg19", "severity", arg)
