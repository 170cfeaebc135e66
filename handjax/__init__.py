"""handjax: transfer learning for hand-photo triage in JAX/Flax.

The floor plan is the pipeline; data flows one way, down this list (docs/developing.md has
the whole map and a glossary):

- ``cli/``: every entry point's shared handler (exit codes, one-line errors); ``launch``;
- ``config``: the protocol's settings and the one place that reads them (-> frozen specs);
- ``data/``: photos -> arrays (decode, sources, splits, augment, synthetic hands, cohort);
- ``models/``: the Keras ImageNet CNNs in Flax, their weights, the classifier head;
  ``models/kernels/``: the conv algorithms and the conv plan;
- ``losses``, ``metrics``, ``ordinal``: the base layer (severity-aware objectives, the
  study's metrics as pure jnp), used by every stage below;
- ``train/``: the frozen features, the K-fold program, the fit loop, checkpoints, workdir;
- ``evaluation/``: decision rules, the SVM probe, every clinical figure from predictions;
- ``model/``: a finished run's model, as predict, validate and serve use it;
- ``report/``: results.md and every PNG;
- ``predict``, ``validate``, ``compare``: commands (``python -m handjax.<command>``);
- ``bench/``: speed figures side by side.
"""

__version__ = "0.3.0"


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's own error types: bad input or setup, reported to users as one line.
    Anything else is a bug and keeps its traceback."""
    from handjax.errors import USER_ERRORS
    return USER_ERRORS
