"""Study cell: mobilenetv2 fine-tuned with the study's custom severity loss (expected misclassification cost, no cross-entropy).

    python launch.py --config experiments/mobilenetv2_custom.py
    python launch.py --config experiments/mobilenetv2_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("mobilenetv2", "custom", arg)
