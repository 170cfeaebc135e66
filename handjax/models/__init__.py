"""Backbone models: ``convs`` (every conv algorithm and the one policy that picks among
them), ``base`` (the ``Backbone`` driver and its per-architecture hooks), ``backbones``
(the study's architectures and the ``MODELS`` registry), ``convnext`` and ``efficientnetv2``
(ConvNeXt-Tiny, EfficientNetV2-B0), ``keras_weights`` (Keras HDF5 files,
ImageNet downloads, ``load``). ``handjax.backbones`` re-exports the public API."""
