"""The console: third-party loggers quiet by default, the closing summary's content."""
import logging

from handjax import console


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
