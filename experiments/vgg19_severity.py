"""VGG19 with the severity loss mixed with cross-entropy (ce_weight 1): handjax's default
severity objective, which trains where the study's pure custom loss did not.

    python launch.py --config experiments/vgg19_severity.py
    python launch.py --config experiments/vgg19_severity.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg19", "severity", arg)
