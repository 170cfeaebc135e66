"""handjax.cli: one handler for every command's user errors and exit codes."""
import subprocess
import sys

import numpy as np
import pytest

from handjax import cli
from handjax.errors import ConfigError, RunError


def _main_raising(error):
    def main(argv=None):
        raise error
    return main


@pytest.mark.parametrize("error, code", [
    (RunError("no finished run in w: run python launch.py first"), cli.EXIT_BAD_INPUT),
    (ConfigError("bad 'x'"), cli.EXIT_BAD_INPUT),
    (KeyboardInterrupt(), cli.EXIT_INTERRUPTED),
])
def test_user_errors_are_one_line_and_an_exit_code(error, code, capsys, monkeypatch):
    monkeypatch.delenv("HANDJAX_DEBUG", raising=False)
    assert cli.command(_main_raising(error))([]) == code
    err = capsys.readouterr().err
    assert err.startswith("handjax: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        cli.command(lambda argv: 1 / 0)([])


def test_handjax_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.setenv("HANDJAX_DEBUG", "1")
    with pytest.raises(RunError):
        cli.command(_main_raising(RunError("x")))([])
    monkeypatch.setenv("HANDJAX_DEBUG", "0")   # "0" means off, as an unset variable
    assert cli.command(_main_raising(RunError("x")))([]) == cli.EXIT_BAD_INPUT


def test_a_clean_main_returns_zero_and_passes_its_code():
    assert cli.command(lambda argv: None)([]) == 0
    assert cli.command(lambda argv: 3)([]) == 3


@pytest.mark.parametrize("argv, code", [
    (["-m", "handjax.compare", "--no-such-flag", "a", "b"], cli.EXIT_USAGE),
    (["-m", "handjax.compare", "missing_a", "missing_b"], cli.EXIT_BAD_INPUT),
])
def test_exit_codes_of_a_real_command(argv, code, tmp_path):
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and "error: " in r.stderr.strip().splitlines()[-1]


def test_a_finished_command_leaves_at_once_with_its_output_flushed(tmp_path):
    """exit_process skips the interpreter's teardown (exit handlers too), but what the
    command printed and wrote is all there, and the exit code is the command's."""
    script = ("import atexit, sys, jax\n"
              "from handjax import cli\n"
              "atexit.register(lambda: print('teardown ran'))\n"
              "open('out.txt', 'w').write('whole')\n"
              "print('the summary', end='')\n"
              "sys.stderr.write('a warning')\n"
              "cli.exit_process(3)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (3, "the summary", "a warning")
    assert (tmp_path / "out.txt").read_text() == "whole"
    # A code that is not a number (a message) goes the usual way: printed, exit 1.
    r = subprocess.run([sys.executable, "-c", "from handjax import cli\n"
                        "cli.exit_process('stopped')"], capture_output=True, text=True)
    assert (r.returncode, r.stderr.strip()) == (1, "stopped")


class _DropsAnInterrupt:
    """Ctrl-C arriving while this object's ``__del__`` runs on the main thread: the handler's
    KeyboardInterrupt is raised inside ``__del__``, and Python prints and drops it."""

    def __del__(self):
        import signal
        signal.raise_signal(signal.SIGINT)


@pytest.fixture
def python_sigint():
    """SIGINT handled as Python's default (a test runner started in the background, e.g.
    ``nohup pytest &``, inherits it ignored); restored after."""
    import signal
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_that_something_swallowed_still_ends_the_command(capsys, python_sigint):
    """A Ctrl-C whose KeyboardInterrupt is swallowed on its way (here in a ``__del__``) is
    raised again at the next loop step: the command exits 130 with its one line, and the
    loop stops there instead of running to the end."""
    import signal
    from handjax import console
    from handjax.data.store import map_batches
    steps = []

    def main():
        for i in range(5):
            console.check_interrupt()
            steps.append(i)
            if i == 1:
                _DropsAnInterrupt()   # collected at once
                steps.append("went on")   # the KeyboardInterrupt was dropped
        return 0

    assert cli.command(main)() == cli.EXIT_INTERRUPTED
    assert steps == [0, 1, "went on"]   # stopped at the next step, not at the end
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"handjax: error: {cli.INTERRUPTED}"
    # The prefix's batch loop checks too.
    seen = []

    def fn(rows):
        seen.append(len(seen))
        if len(seen) == 1:
            _DropsAnInterrupt()
            seen.append("went on")
        return rows

    rows = np.zeros((6, 2), np.float32)
    assert cli.command(lambda: map_batches(fn, rows, 2) is None)() == cli.EXIT_INTERRUPTED
    assert seen == [0, "went on"]
    # After the command: Python's own handler again, nothing remembered.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    console.check_interrupt()
    assert map_batches(lambda r: r + 1, rows, 2).tolist() == (rows + 1).tolist()


def test_ctrl_c_ignored_at_the_start_stays_ignored():
    """A command started with SIGINT ignored (``nohup cmd &``) keeps it ignored: Ctrl-C does
    not stop it, as whoever started it asked."""
    import signal
    from handjax import console
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seen = []

        def main():
            seen.append(signal.getsignal(signal.SIGINT))
            signal.raise_signal(signal.SIGINT)
            console.check_interrupt()
            return 0

        assert cli.command(main)() == cli.EXIT_OK
        assert seen == [signal.SIG_IGN]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def _interrupted(cmd: list[str], cwd, env: dict, when: bytes, stream: str) -> tuple[int, str]:
    """Start ``cmd`` with a terminal's SIGINT, wait until ``when`` shows on its ``stream``
    ("stdout" or "stderr"), send it Ctrl-C; (its exit code, its stderr after that)."""
    import signal
    from serve_helpers import read_until
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = read_until(getattr(proc, stream), when)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    text = (seen if stream == "stderr" else b"").decode() + err.decode()
    return proc.returncode, text


@pytest.mark.parametrize("cmd, when, stream, line", [
    (["-m", "handjax.tune", "--config", "experiments/vgg19_custom.py",
      "--config.data.image_size=112", "--budget", "120"], b"tuning convs", "stderr",
     cli.INTERRUPTED_TUNING),
    (["-m", "handjax.bench", "processes", "--quick"], b"processes:", "stdout",
     cli.INTERRUPTED_ONLY),
], ids=["tune", "bench"])
def test_ctrl_c_in_tune_and_bench_is_one_line_and_exit_130(cmd, when, stream, line, tmp_path):
    """``python -m handjax.tune`` while it measures, and ``python -m handjax.bench`` while a
    run of its sequence goes on: one line, exit 130, no traceback (they had Python's)."""
    import os
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "HANDJAX_DEBUG"}
    env["HANDJAX_CACHE"] = str(tmp_path / "cache")   # nothing decided yet: tune measures
    code, err = _interrupted([sys.executable, *cmd], root, env, when, stream)
    assert code == cli.EXIT_INTERRUPTED, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == f"handjax: error: {line}"
