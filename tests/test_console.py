"""The console: third-party loggers quiet by default, the closing summary's content."""
import logging

import pytest

from handjax import console


@pytest.fixture(autouse=True)
def _restore_hooks(monkeypatch):
    """console.quiet sets process-wide hooks: give the rest of the session its own back."""
    import sys
    import warnings
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)


def test_quiet_and_verbose():
    console.quiet(verbose=False)
    assert logging.getLogger("orbax").level == logging.WARNING
    assert logging.getLogger("jax._src.xla_bridge").level == logging.WARNING
    console.quiet(verbose=True)
    assert logging.getLogger("orbax").level == logging.INFO
    console.quiet(verbose=False)


def test_summary_lines_give_mean_std_per_rule_and_the_report():
    results = {"n_folds": 5, "decisions": {
        "cnn": {"mean": {"accuracy": 0.5, "custom_plus": 0.25},
                "std": {"accuracy": 0.1, "custom_plus": 0.05}}}}
    lines = console.summary_lines(results, ("accuracy", "custom_plus"), "runs/x/results.md")
    assert "accuracy" in lines[0] and "custom_plus" in lines[0]
    assert "0.5000 ± 0.1000" in lines[1] and "0.2500 ± 0.0500" in lines[1]
    assert lines[-1].endswith("runs/x/results.md")


def test_orbax_error_logs_are_dropped_unless_verbose():
    import logging
    record = logging.LogRecord("absl", logging.ERROR, "/site-packages/orbax/checkpoint/f.py",
                               1, "save failed", None, None)
    ours = logging.LogRecord("absl", logging.ERROR, "/site-packages/jax/x.py", 1, "m", None,
                             None)
    console.quiet(verbose=False)
    absl = logging.getLogger("absl")
    assert not absl.filter(record) and absl.filter(ours)
    console.quiet(verbose=True)
    assert absl.filter(record)
    console.quiet(verbose=False)


def test_error_closes_open_bars_first(capsys):
    from tqdm.auto import tqdm
    bar = tqdm(total=10, file=__import__("sys").stderr, mininterval=0, delay=0)
    bar.update(3)
    console.error("boom")
    err = capsys.readouterr().err
    assert "\nhandjax: error: boom\n" in err and bar.disable


def test_only_closed_event_loop_noise_is_dropped_from_unraisable_errors(monkeypatch):
    import sys
    from types import SimpleNamespace
    seen = []
    monkeypatch.setattr(console, "_PYTHON_UNRAISABLE", seen.append)
    console.quiet(verbose=False)
    noise = SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = SimpleNamespace(exc_value=ValueError("real"))
    sys.unraisablehook(noise)
    sys.unraisablehook(other)
    assert seen == [other]
    console.quiet(verbose=True)
    sys.unraisablehook(noise)
    assert seen == [other, noise]
    console.quiet(verbose=False)
