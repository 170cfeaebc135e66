"""handjax: transfer learning for hand-photo triage in JAX/Flax.

Stages, one module each: ``data`` (photos -> arrays, folds), ``backbones`` (Keras
ImageNet CNNs ported to Flax), ``losses`` and ``metrics`` (severity-aware objectives),
``train`` (the 5-fold program), ``probe`` (SVM on frozen features), ``report``
(tables, plots), ``predict`` (a photo + Grad-CAM), ``bench`` (speed figures).
"""

__version__ = "0.1.0"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or setup, reported to users as one line."""
    from handjax import backbones, data, train
    extra = tuple(getattr(backbones, n) for n in ("WeightsError",) if hasattr(backbones, n))
    return (data.DataError, train.TrainingError, ValueError, FileNotFoundError) + extra
