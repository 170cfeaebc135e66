"""What a person sees in the terminal: our own lines and progress bars, a closing summary,
and third-party chatter (orbax, absl, TFDS, JAX's backend probing) kept below WARNING
unless asked for with ``-v`` / ``--verbosity``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings

from tqdm.auto import tqdm

_THIRD_PARTY = ("absl", "jax", "jax._src.xla_bridge", "orbax", "tensorflow",
                "tensorflow_datasets", "etils", "h5py", "matplotlib")


def say(message: str) -> None:
    """One line of ours, printed above any progress bar."""
    tqdm.write(f"handjax: {message}", file=sys.stderr)


def error(message: str) -> None:
    """``handjax: error: <message>`` on a line of its own: progress bars still open (an
    exception left them) are closed first, so the line is never glued onto one."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    print(f"handjax: error: {message}", file=sys.stderr, flush=True)


_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def remembered_interrupts():
    """Within the block, Ctrl-C raises ``KeyboardInterrupt`` as Python's own handler does, and
    is also remembered until the block ends. So one swallowed on its way is raised again at
    the next loop step (:func:`check_interrupt`). Python drops, after printing, what a
    ``__del__`` or a weakref callback raises when the signal lands in one on the main thread,
    and a library may catch it. Off the main thread (where no handler can be set): nothing
    changes; nor where SIGINT is not Python's own (ignored, as under ``nohup cmd &``, which
    asks that Ctrl-C not stop it; or another handler)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupted(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _INTERRUPTED.clear()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed within :func:`remembered_interrupts`
    and never reached the command: called by the long loops at each step."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (``data.on_error=skip``: what was left out) as a line of ours;
    everyone else's in Python's usual form."""
    if str(filename).startswith(_PACKAGE) and issubclass(category, UserWarning):
        say(str(message))
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_PYTHON_SHOW_WARNING = warnings.showwarning


def quiet(verbose: bool = False) -> None:
    """Third-party loggers at WARNING (INFO and below with ``verbose``); our warnings as
    lines of ours."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.showwarning = _show_warning
    level = logging.INFO if verbose else logging.WARNING
    for name in _THIRD_PARTY:
        logging.getLogger(name).setLevel(level)
    absl_logger = logging.getLogger("absl")
    absl_logger.removeFilter(_quiet_orbax)
    if not verbose:
        absl_logger.addFilter(_quiet_orbax)
    sys.unraisablehook = _PYTHON_UNRAISABLE if verbose else _unraisable
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:  # absl is a dependency; keep the console usable without it
        pass


def _quiet_orbax(record: logging.LogRecord) -> bool:
    """Drop orbax's own error logs (each with a traceback, one per background thread: a
    full disk gave ~400 lines): the failure also reaches the main thread as an exception,
    which the entry point turns into one line. ``-v`` keeps them."""
    return "/orbax/" not in record.pathname.replace("\\", "/")


def _unraisable(info) -> None:
    """After a failed orbax save, tensorstore calls back into asyncio loops already closed;
    Python prints each "Event loop is closed" as an unraisable traceback. Drop just those."""
    if isinstance(info.exc_value, RuntimeError) and "Event loop is closed" in str(
            info.exc_value):
        return
    _PYTHON_UNRAISABLE(info)


_PYTHON_UNRAISABLE = sys.unraisablehook


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


# ----------------------------------------------------------------------------- flag values
def int_at_least(lo: int, hi: int | None = None):
    """An argparse ``type``: an integer in ``lo..hi``, else argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def int_list(lo: int):
    """An argparse ``type``: a comma list of integers, each at least ``lo``."""
    one = int_at_least(lo)

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}")
        return [one(t) for t in items]
    parse.__name__ = "list"
    return parse


def epochs(text: str) -> str:
    """An argparse ``type``: phase-1 + phase-2 epochs as ``"E1+E2"`` (``"2+1"``), both
    integers >= 0 and not both 0; returned as given, normalised."""
    parts = text.split("+")
    try:
        e1, e2 = (int(p) for p in parts)
    except ValueError:
        e1 = e2 = -1
    if len(parts) != 2 or min(e1, e2) < 0 or e1 + e2 == 0:
        raise argparse.ArgumentTypeError(
            f"expected phase-1+phase-2 epochs like 2+1 (integers >= 0, not both 0), "
            f"got {text!r}")
    return f"{e1}+{e2}"
