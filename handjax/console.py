"""What a person sees in the terminal: our own lines and progress bars, a closing summary,
and third-party chatter (orbax, absl, TFDS, JAX's backend probing) kept below WARNING
unless asked for with ``-v`` / ``--verbosity``.
"""
from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

_THIRD_PARTY = ("absl", "jax", "jax._src.xla_bridge", "orbax", "tensorflow",
                "tensorflow_datasets", "etils", "h5py", "matplotlib")


def say(message: str) -> None:
    """One line of ours, printed above any progress bar."""
    tqdm.write(f"handjax: {message}", file=sys.stderr)


def quiet(verbose: bool = False) -> None:
    """Third-party loggers at WARNING (INFO and below with ``verbose``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = logging.INFO if verbose else logging.WARNING
    for name in _THIRD_PARTY:
        logging.getLogger(name).setLevel(level)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:  # absl is a dependency; keep the console usable without it
        pass


def summary_lines(results: dict, metric_keys, where: str) -> list[str]:
    """Per decision rule, each metric as mean ± std over folds, then where results.md is."""
    header = f"{'decision':<10}" + "".join(f"{k:>22}" for k in metric_keys)
    lines = [header]
    for rule, d in results.get("decisions", {}).items():
        cells = "".join(f"{d['mean'][k]:>13.4f} ± {d['std'][k]:.4f}" for k in metric_keys)
        lines.append(f"{rule:<10}{cells}")
    folds, repeats = results.get("n_folds", "?"), results.get("repeats", 1)
    over = f"{folds} folds x {repeats} repeats" if repeats != 1 else f"{folds} folds"
    lines.append(f"mean ± std over {over}; report: {where}")
    return lines


def summary(results: dict, metric_keys, where: str) -> None:
    """Print :func:`summary_lines`."""
    say(f"{results.get('name', 'run')} done")
    for line in summary_lines(results, metric_keys, where):
        tqdm.write("  " + line, file=sys.stderr)
