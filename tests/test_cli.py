"""handjax.cli: one handler for every command's user errors and exit codes."""
import subprocess
import sys

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
