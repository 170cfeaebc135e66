"""Every entry point, and the one handler they all share for what users can get wrong.

``python launch.py`` (-> :mod:`handjax.cli.launch`) and ``python -m handjax.<command>``
(``predict``, ``validate``, ``compare``, ``tune``, ``serve``, ``bench``) end the same way
(:func:`command`; ``serve`` says ``stopped (Ctrl-C)`` once it has stopped serving), and
``data`` (export, preview: seconds) says its own errors in one line the same way:

=====  =====================================================================
exit   meaning
=====  =====================================================================
0      done
1      bad input or setup: one line ``handjax: error: ...`` naming the file or key
2      usage: an unknown flag, a missing argument (argparse's and absl's own code)
130    interrupted (Ctrl-C): "rerun the same command to resume" where that applies
=====  =====================================================================

``HANDJAX_DEBUG=1`` lets a user error raise with its traceback, for a bug report. Anything
that is not a user error (a bug) keeps its traceback always. ``launch.py``, ``predict``,
``validate`` and ``compare`` then leave through :func:`exit_process` (no interpreter
teardown once everything is written).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
INTERRUPTED = "interrupted; rerun the same command to resume"
INTERRUPTED_TUNING = "interrupted before the plan was written; rerun the same command"
INTERRUPTED_ONLY = "interrupted"   # nothing to resume (a benchmark)


def debugging() -> bool:
    """``HANDJAX_DEBUG`` set to anything but empty or 0: user errors keep their traceback."""
    return os.environ.get("HANDJAX_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``handjax: error: <message>`` (one line) and return ``code`` for ``sys.exit``."""
    from handjax import console
    console.error(" ".join(str(message).split()))
    return code


def loaded_config(flag):
    """The ConfigDict of absl's ``--config`` ``flag`` (``config_flags.DEFINE_config_file``),
    whose file loads on first access: a file that is not there or does not parse is one line
    and exit 2 here, not a traceback later."""
    try:
        config = flag.value
        config.get("name")
    except (OSError, ValueError, SyntaxError) as e:
        from handjax import config as configs
        sys.exit(fail(configs.flag_error(e, sys.argv), EXIT_USAGE))
    return config


def command(main: Callable[..., int | None], interrupted: str = INTERRUPTED):
    """Wrap a CLI ``main(argv) -> exit code``: the project's errors become one line and
    exit 1, Ctrl-C exits 130 with ``interrupted`` (also one that something swallowed on its
    way: :func:`handjax.console.remembered_interrupts`); argparse's usage exits (2) pass
    through."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        from handjax import console, user_errors
        try:
            with console.remembered_interrupts():
                return main(*args, **kwargs) or EXIT_OK
        except user_errors() as e:
            if debugging():
                raise
            from handjax.config import one_line
            return fail(one_line(e))
        except KeyboardInterrupt:
            if debugging():
                raise
            return fail(interrupted, EXIT_INTERRUPTED)
    return wrapped


def exit_process(code: int | None) -> None:
    """End this process with ``code``, from a ``__main__`` block once its command returned.

    A finished command has flushed and closed what it wrote (results, checkpoints, the
    locked model). What the interpreter's own shutdown would still do is free every object
    one by one and run a last garbage collection over JAX's, XLA's and TFDS' modules:
    0.5-1 s of a short command's wall on 2 cores, for nothing that lands on disk. So a
    single process flushes the console and leaves at once. A process of a many-process run
    shuts down the normal way, because ``jax.distributed`` says goodbye to its peers in an
    exit handler."""
    code = EXIT_OK if code is None else code
    if not isinstance(code, int):
        sys.exit(code)
    if "jax" in sys.modules:
        import jax
        if jax.distributed.is_initialized():
            sys.exit(code)
    import logging
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
