"""Study cell: resnet50 fine-tuned with the study's custom severity loss (expected misclassification cost, no cross-entropy).

    python launch.py --config experiments/resnet50_custom.py
    python launch.py --config experiments/resnet50_custom.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("resnet50", "custom", arg)
