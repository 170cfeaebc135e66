"""Keras Applications ImageNet backbones in Flax linen: the public API, kept at this path.

The code lives in :mod:`handjax.models` (``convs``, ``base``, ``backbones``,
``keras_weights``). ::

    NAMES                                   # ("vgg16", ..., "convnext_tiny", "efficientnetv2_b0")
    module, variables = load(name, weights=None | "imagenet" | path, seed=0)
    features = module.apply(variables, preprocess(name, images), train=False)
    module.stages                           # ordered block boundaries (Keras layer names)
    module.apply(variables, x, start="block4_pool")   # run only the layers after a boundary
    for_purpose(module, "frozen")           # the same module, convs chosen for forward use

``weights="imagenet"`` reads ``$HANDJAX_CACHE/weights/<file>`` (default ``~/.cache/handjax``),
downloading Keras's own ``include_top=False`` file there once, hash-checked.
"""

from handjax.models.backbones import (DEFAULT_TRAINABLE_FROM, MODELS, NAMES, VGG16, VGG19,
                                      MobileNetV2, ResNet50, build, conv_algorithms,
                                      keras_layer_order, max_pool_2x2, preprocess)
from handjax.models.base import Backbone
from handjax.models.convnext import ConvNeXtTiny
from handjax.models.efficientnetv2 import EfficientNetV2B0
from handjax.models.convs import (CONV_IMPLS, PURPOSES, Conv, conv_algorithm, conv_im2col,
                                  conv_mmgrad, conv_policy, conv_winograd, depthwise_im2col,
                                  for_purpose, record_impls, runs_lax_conv)
from handjax.models.keras_weights import (WEIGHT_FILES, WeightFile, WeightsError,
                                          fetch_weights, load, read_keras_h5,
                                          variables_from_keras, weights_dir)

__all__ = [
    "CONV_IMPLS", "DEFAULT_TRAINABLE_FROM", "MODELS", "NAMES", "PURPOSES", "WEIGHT_FILES",
    "Backbone", "Conv", "ConvNeXtTiny", "EfficientNetV2B0", "MobileNetV2", "ResNet50", "VGG16", "VGG19", "WeightFile",
    "WeightsError", "build", "conv_algorithm", "conv_algorithms", "conv_im2col", "conv_mmgrad",
    "conv_policy", "conv_winograd", "depthwise_im2col", "fetch_weights", "for_purpose", "load",
    "keras_layer_order", "max_pool_2x2", "preprocess", "read_keras_h5", "record_impls",
    "runs_lax_conv", "variables_from_keras", "weights_dir",
]
