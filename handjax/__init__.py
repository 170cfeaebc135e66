"""handjax: transfer learning for hand-photo triage in JAX/Flax.

One stage, one module:

- ``config``: the protocol's settings and the one place that reads them (-> frozen specs);
- ``data/``: photos -> arrays (``decode``, ``sources``), ``splits`` (near-duplicate groups,
  folds), ``augment``, ``synthetic`` hands, ``cohort`` (the data record of a run);
- ``models/``: ``convs`` (conv algorithms and the one conv policy), ``backbones`` (Keras
  ImageNet CNNs ported to Flax), ``keras_weights`` (h5 files, download + hash),
  ``classifier`` (backbone + head); ``backbones`` re-exports their public API;
- ``losses`` and ``metrics``: severity-aware objectives (optax-shaped; pure jnp);
- ``features``: the fold program's input (the fold model, the frozen-feature cache);
- ``folds``: the K-fold program (states, steps, fold mapping, epoch programs, batches);
- ``train``: the fit loop and ``run()``; ``checkpoint``: orbax checkpoints; ``workdir``;
- ``evaluate``: decision rules, the SVM probe, per-fold metrics (``predictions.csv`` rows);
- ``clinical/``: every clinical figure from ``predictions.csv`` (tasks, metrics, bootstrap,
  calibration, operating points) and ``results.json`` assembled in one place;
- ``plots``: every PNG; ``report``: tables; ``sweep``: the study's table; ``run``: the entry
  point; ``compare``: two runs, paired tests;
- ``inference`` + ``predict``: a trained run -> ensemble predictions and Grad-CAM;
- ``bench`` (+ ``bench_keras``): speed figures side by side; ``console``: what the terminal shows.
"""

__version__ = "0.2.0"


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's own error types: bad input or setup, reported to users as one line.
    Anything else is a bug and keeps its traceback."""
    from handjax.errors import USER_ERRORS
    return USER_ERRORS
