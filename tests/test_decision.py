"""Decision curves (Vickers & Elkin 2006): the definition on a hand-computed case, the
vectorised curve against a plain float64 loop, and the plot / table that show them."""
import numpy as np
import pytest

from handjax import evaluation as clinical
from handjax.report import plots, markdown as report
from handjax.evaluation import net_benefit as decision


def test_net_benefit_hand_computed():
    positive = np.array([True, True, False, False])
    score = np.array([0.9, 0.4, 0.6, 0.1])
    t = np.array([0.2, 0.5, 0.95])
    # t=0.2: refer 0.9, 0.4, 0.6 -> TP 2, FP 1: 2/4 - 1/4 * 0.2/0.8 = 0.4375
    # t=0.5: refer 0.9, 0.6      -> TP 1, FP 1: 1/4 - 1/4 * 1       = 0
    # t=0.95: refer no one       -> 0
    np.testing.assert_allclose(decision.net_benefit(positive, score, t), [0.4375, 0.0, 0.0],
                               atol=1e-15)
    # treat all: prevalence 1/2: 0.5 - 0.5 * t/(1-t)
    np.testing.assert_allclose(decision.treat_all(positive, t), [0.375, 0.0, 0.5 - 0.5 * 19],
                               atol=1e-12)
    # a score equal to the threshold is referred (p >= t)
    assert decision.net_benefit([True], [0.5], [0.5])[0] == 1.0


def _loop_curve(positive, score, thresholds):
    out = []
    n = len(positive)
    for t in thresholds:
        tp = sum(1 for p, s in zip(positive, score) if p and s >= t)
        fp = sum(1 for p, s in zip(positive, score) if not p and s >= t)
        prev = sum(positive) / n
        out.append((tp / n - fp / n * t / (1 - t), prev - (1 - prev) * t / (1 - t)))
    return np.array(out)


def test_decision_curves_equal_a_float64_loop_per_task():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    prob = rng.dirichlet(np.ones(3), 200) * 0.5 + np.eye(3)[y] * 0.5
    curves = clinical.decision_curves(y, prob)
    assert sorted(curves) == sorted(clinical.TASKS)
    t = [r["threshold"] for r in curves["ra"]]
    np.testing.assert_allclose(t, np.arange(1, 100) / 100, atol=1e-12)
    expected = {"any_disease": _loop_curve(list(y != 0), list(prob[:, 1] + prob[:, 2]), t),
                "ra": _loop_curve(list(y == 2), list(prob[:, 2]), t)}
    for task, rows in curves.items():
        got = np.array([[r["net_benefit"], r["treat_all"]] for r in rows])
        np.testing.assert_allclose(got, expected[task], atol=1e-12)
        assert set(rows[0]) == {"threshold", "net_benefit", "treat_all"}


def test_decision_curve_plot_and_table(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    curves = clinical.decision_curves(y, rng.dirichlet(np.ones(3), 60))
    path = plots.plot_decision_curve(tmp_path / "dc.png", curves, "title")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1024
    md = report.decision_curve_markdown(curves)
    row = next(r for r in curves["ra"] if r["threshold"] == pytest.approx(0.1))
    assert f"| ra | 0.1 | {row['net_benefit']:.4f} | {row['treat_all']:.4f} |" in md
