"""Beyond the study: VGG19 with the CORAL ordinal head (K-1 logits over the severity order
normal < heberden < ra; handjax.ordinal), its loss, its class probabilities and its ordinal
decision (the count of P(y > k) > 0.5).

    python launch.py --config experiments/vgg19_coral.py
    python launch.py --config experiments/vgg19_coral.py:smoke
"""
from handjax.config import cell


def get_config(arg=None):
    return cell("vgg19", "coral", arg)
