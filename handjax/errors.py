"""The project's own error types: bad input or setup, reported to users as one line.

Everything else (a ``ValueError`` from a bug, say) keeps its traceback: ``launch.py`` and
the CLIs catch only :data:`USER_ERRORS`.
"""
from __future__ import annotations


class HandjaxError(Exception):
    """Base of every error that means "your input or setup is wrong, here is what to do"."""


class ConfigError(HandjaxError, ValueError):
    """A config key holds an unknown or out-of-range value."""


class TrainingError(HandjaxError, RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent checkpoint, busy workdir, ...)."""


class RunError(HandjaxError, FileNotFoundError):
    """A workdir does not hold the finished run a command needs."""


class SetupError(HandjaxError, OSError):
    """The machine stands in the way: a cache folder that cannot be written, a full disk."""


USER_ERRORS: tuple[type[BaseException], ...] = (HandjaxError,)
