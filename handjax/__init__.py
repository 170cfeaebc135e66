"""handjax: transfer learning for hand-photo triage in JAX/Flax.

Stages, one module each: ``data`` (photos -> arrays, folds), ``backbones`` (Keras
ImageNet CNNs ported to Flax), ``losses`` and ``metrics`` (severity-aware objectives),
``train`` (the 5-fold program), ``probe`` (SVM on frozen features), ``report``
(tables, plots), ``predict`` (a photo + Grad-CAM), ``bench`` (speed figures).
"""

__version__ = "0.1.0"
