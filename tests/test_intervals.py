"""Intervals that do not overclaim: clustered Wilson intervals for proportions (against scipy
and the definition), unbounded bootstrap limits, and repeated CV's interval of the mean."""
import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from handjax import evaluation as clinical
from handjax.evaluation.intervals import (percentile_interval, proportion_interval,
                                          wilson_interval)
from handjax.report import markdown


# ------------------------------------------------------------------------------ proportions
@pytest.mark.parametrize("k,n", [(0, 20), (1, 20), (13, 20), (20, 20), (0, 3), (3, 3), (47, 150)])
def test_wilson_equals_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose(wilson_interval(k / n, n), [ref.low, ref.high], atol=1e-12)


def test_twenty_of_twenty_is_not_certain():
    """The issue's case: RA sensitivity 20/20 (one photo per subject). The percentile
    bootstrap said [1, 1]; the interval here is scipy's Wilson [0.839, 1], within 0.01 of the
    exact Clopper-Pearson lower limit 0.832."""
    y = np.array([2] * 20 + [0] * 30)
    pred = y.copy()
    prob = np.eye(3)[y] * 0.9 + 0.1 / 3
    got = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob, pred, np.arange(50),
                                n_boot=200)["sensitivity_ra"]
    exact = stats.binomtest(20, 20).proportion_ci(method="exact").low
    assert exact == pytest.approx(0.8316, abs=1e-4)
    assert got["value"] == 1.0 and got["ci95"][1] == 1.0
    assert got["ci95"][0] == pytest.approx(20 / (20 + stats.norm.ppf(0.975) ** 2), abs=1e-12)
    assert abs(got["ci95"][0] - exact) < 0.01
    assert got["n_eff"] == 20


def test_singletons_give_the_plain_wilson_interval():
    rng = np.random.default_rng(0)
    den = rng.random(60) < 0.6
    num = den & (rng.random(60) < 0.7)
    got = proportion_interval(num, den, np.arange(60))
    ref = stats.binomtest(int(num.sum()), int(den.sum())).proportion_ci(method="wilson")
    assert got["value"] == pytest.approx(num.sum() / den.sum(), abs=1e-15)
    np.testing.assert_allclose(got["ci95"], [ref.low, ref.high], atol=1e-12)
    assert got["n_eff"] == pytest.approx(den.sum()) and got["design_effect"] == pytest.approx(1)


@pytest.mark.parametrize("k", [0, 4, 11])
def test_copies_within_a_subject_count_once(k):
    """Every subject's 3 photos decided alike: the photos say no more than the 11 subjects,
    so the interval is Wilson's on the subjects (inside (0, 1) and at the bounds)."""
    right = np.arange(11) < k
    got = proportion_interval(np.repeat(right, 3), np.ones(33, bool), np.repeat(np.arange(11), 3))
    ref = stats.binomtest(k, 11).proportion_ci(method="wilson")
    np.testing.assert_allclose(got["ci95"], [ref.low, ref.high], atol=1e-12)
    assert got["n_eff"] == pytest.approx(11) and got["design_effect"] == pytest.approx(3)
    assert got["ci95"][1] - got["ci95"][0] > 0.2      # never zero width, even at 0 or 1


def test_boundary_uses_kish_effective_subjects():
    """At 1 with unequal subjects (sizes 1, 1, 2, 4): n_eff = (sum m)^2 / sum m^2 = 64 / 22."""
    sizes = [1, 1, 2, 4]
    got = proportion_interval(np.ones(8, bool), np.ones(8, bool), np.repeat(np.arange(4), sizes))
    assert got["n_eff"] == pytest.approx(64 / 22)
    np.testing.assert_allclose(got["ci95"], wilson_interval(1.0, 64 / 22), atol=1e-15)
    assert got["ci95"][0] < 0.5


def test_clustered_variance_equals_the_subject_bootstrap_of_the_mean_over_repeats():
    """The linearised variance behind n_eff is what a subject bootstrap recomputing every
    repeat estimates: PPV (a ratio whose denominator changes with the repeat) over 3
    repeats, 40 subjects of 1-4 photos, against 20000 resamples (Monte Carlo error ~2%)."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 5, 40)
    subjects = np.repeat(np.arange(40), sizes)
    n = len(subjects)
    truth = np.repeat(rng.random(40) < 0.4, sizes)
    skill = np.repeat(rng.random(40), sizes)            # subjects differ: clustering
    called = [rng.random(n) < np.where(truth, 0.5 + 0.4 * skill, 0.4 * skill) for _ in range(3)]
    num = np.concatenate([c & truth for c in called])
    den = np.concatenate(called)
    repeat = np.repeat(np.arange(3), n)
    got = proportion_interval(num, den, np.tile(subjects, 3), repeat)
    w = next(clinical.subject_bootstrap_blocks(subjects, 20000, seed=1))
    boot = np.mean([(w @ (c & truth)) / (w @ c) for c in called], axis=0)
    p = got["value"]
    assert p == pytest.approx(np.mean([np.sum(c & truth) / np.sum(c) for c in called]))
    assert p * (1 - p) / got["n_eff"] == pytest.approx(np.var(boot), rel=0.06)
    assert got["design_effect"] > 1      # the subjects' clustering shows through


def test_undefined_proportion_is_nan():
    got = proportion_interval(np.zeros(5, bool), np.zeros(5, bool), np.arange(5))
    assert math.isnan(got["value"]) and all(math.isnan(x) for x in got["ci95"])


def test_bootstrap_ci_proportions_equal_their_metric_values():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 90)
    prob = rng.dirichlet(np.ones(3), 90)
    pred = np.where(rng.random(90) < 0.7, y, prob.argmax(1))
    subjects = np.arange(90) // 3
    out = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob, pred, subjects, n_boot=50)
    parts = clinical.clinical_metrics.proportions(y, prob, pred)
    assert {"accuracy", "sensitivity_ra", "ppv_normal", "npv_heberden",
            "under_severity_rate"} <= set(parts)
    for name, (num, den, *group) in parts.items():
        assert out[name]["interval"] == "wilson"
        if not group:
            assert out[name]["value"] == pytest.approx(num.sum() / den.sum(), abs=1e-12)
        lo, hi = out[name]["ci95"]
        assert lo < out[name]["value"] < hi
    assert out["sensitivity_ra"]["value"] == pytest.approx(skm.recall_score(y == 2, pred == 2))
    assert "n_finite" in out["auroc_macro"] and "interval" not in out["auroc_macro"]


def test_balanced_accuracy_is_a_mean_of_proportions():
    """One photo per subject: the variance behind n_eff is the sum over the K classes of
    p_c (1 - p_c) / N_c / K^2 (the recalls are independent), and a perfect classifier's
    balanced accuracy 1 gets a Wilson interval of nonzero width."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 70)
    pred = np.where(rng.random(70) < 0.7, y, (y + 1) % 3)
    prob = np.eye(3)[pred]
    out = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob, pred, np.arange(70),
                                n_boot=20)["balanced_accuracy"]
    recall = np.array([np.mean(pred[y == c] == c) for c in range(3)])
    n_c = np.bincount(y)
    var = np.sum(recall * (1 - recall) / n_c) / 9
    assert out["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert out["n_eff"] == pytest.approx(out["value"] * (1 - out["value"]) / var, rel=1e-9)
    perfect = clinical.bootstrap_ci(clinical.clinical_metrics, y, np.eye(3)[y], y,
                                    np.arange(70), n_boot=20)
    assert perfect["balanced_accuracy"]["value"] == 1
    assert perfect["balanced_accuracy"]["ci95"][0] < 0.99
    qwk = perfect["qwk"]                         # the bootstrap cannot see a width at 1
    assert qwk["ci95"] == [1.0, 1.0] and qwk["collapsed"] is True
    assert "width unknown" in markdown.format_ci(qwk)
    auroc = perfect["auroc_macro"]               # an AUROC of 1: Newcombe's score interval
    assert auroc["interval"].startswith("newcombe") and "collapsed" not in auroc
    n_c = np.bincount(y)
    widest = min(clinical.auroc_score_interval(1.0, n, 70 - n)[0] for n in n_c)
    assert auroc["ci95"] == [pytest.approx(widest, abs=1e-12), 1.0] and widest < 0.99


def test_grade_error_interval_is_twice_a_wilson_interval_and_never_collapses():
    """mae_grade = 2 mean(|pred - y| / 2), a mean of fractions in [0, 1]: its interval is
    twice their Wilson interval. A constant prediction one grade off every photo (mae 1,
    every resample 1) and a perfect one (mae 0) both keep a width."""
    y = np.array([0, 2] * 10)
    pred = np.ones(20, int)
    prob = np.full((20, 3), 1 / 3)
    out = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob, pred, np.arange(20),
                                n_boot=50)["mae_grade"]
    assert out["value"] == 1 and out["scale"] == 2
    np.testing.assert_allclose(out["ci95"], 2 * np.array(wilson_interval(0.5, 20)), atol=1e-12)
    perfect = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob, y, np.arange(20),
                                    n_boot=50)["mae_grade"]
    ref = stats.binomtest(0, 20).proportion_ci(method="wilson")
    assert perfect["value"] == 0
    np.testing.assert_allclose(perfect["ci95"], [0, 2 * ref.high], atol=1e-12)
    rng = np.random.default_rng(4)                           # inside: n_eff from the data
    y, pred = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    mid = clinical.bootstrap_ci(clinical.clinical_metrics, y, prob[:1].repeat(60, 0), pred,
                                np.arange(60), n_boot=50)["mae_grade"]
    e = np.abs(pred - y) / 2
    assert mid["n_eff"] == pytest.approx(min(e.mean() * (1 - e.mean()) / e.var() * 60, 60))


def test_auroc_score_interval_solves_its_equation_and_covers():
    """Newcombe's method 5: each limit t solves (theta - t)^2 = z^2 V(t); on binormal data
    (true AUROC 0.9, 15 + 15 photos) it covers near the nominal 95% over 400 data sets."""
    from handjax.evaluation.intervals import _hanley_mcneil_var
    z2 = stats.norm.ppf(0.975) ** 2
    for theta, m, n in [(0.8, 20, 30), (1.0, 10, 10), (0.55, 7, 40)]:
        for t in clinical.auroc_score_interval(theta, m, n):
            if t not in (0.0, 1.0):
                assert (theta - t) ** 2 == pytest.approx(z2 * _hanley_mcneil_var(t, m, n),
                                                         abs=1e-10)
    rng = np.random.default_rng(0)
    shift = np.sqrt(2) * stats.norm.ppf(0.9)          # AUROC of N(shift, 1) vs N(0, 1)
    covered = 0
    for _ in range(400):
        pos, neg = rng.normal(shift, 1, 15), rng.normal(0, 1, 15)
        auc = skm.roc_auc_score(np.r_[np.ones(15), np.zeros(15)], np.r_[pos, neg])
        lo, hi = clinical.auroc_score_interval(auc, 15, 15)
        covered += lo <= 0.9 <= hi
    assert 0.9 <= covered / 400 <= 0.99, covered / 400


# ------------------------------------------------------------------------ bootstrap limits
def test_percentile_interval_equals_numpy_on_finite_samples_and_counts_the_rest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=997)
    got = percentile_interval(0.1, np.concatenate([x, [np.nan] * 3]))
    np.testing.assert_allclose(got["ci95"], np.percentile(x, [2.5, 97.5]), atol=1e-12)
    assert got["n_finite"] == 997 and got["unbounded"] == []


def test_infinite_resamples_make_an_unbounded_limit_not_a_finite_one():
    x = np.concatenate([np.linspace(0, 1, 90), [np.inf] * 10])   # 10% separated resamples
    got = percentile_interval(0.5, x)
    assert got["ci95"][1] == math.inf and got["unbounded"] == ["upper"]
    assert got["ci95"][0] == pytest.approx(np.percentile(x[:90], 2.5 * 99 / 89), abs=1e-9)
    assert got["n_finite"] == 90
    x[:3] = -np.inf       # 3% below: the 2.5% point interpolates toward -inf
    assert percentile_interval(0.5, x)["unbounded"] == ["lower", "upper"]
    few = percentile_interval(0.5, np.concatenate([np.linspace(0, 1, 99), [np.inf]]))
    assert few["unbounded"] == [] and math.isfinite(few["ci95"][1])   # 1% beyond 97.5%: finite
    safe = clinical.json_safe(got)
    assert safe["ci95"][1] is None and json.loads(json.dumps(safe))["unbounded"] == ["upper"]


def test_calibration_slope_of_separated_data_is_infinite():
    fit = clinical.calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert fit["slope"] == math.inf and math.isfinite(fit["intercept"])
    assert clinical.calibration_intercept_slope([0, 1, 1], [0.9, 0.2, 0.1])["slope"] == -math.inf
    assert clinical.calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])["slope"] \
        == math.inf                                         # ties at the border: quasi-separated
    assert math.isnan(clinical.calibration_intercept_slope([0, 1], [0.4, 0.4])["slope"])
    overlap = clinical.calibration_intercept_slope([0, 1, 0, 1], [0.1, 0.3, 0.6, 0.9])
    assert math.isfinite(overlap["slope"])


def test_a_slope_bootstrap_with_separated_resamples_is_unbounded_above():
    """A small set separated but for one pair: some resamples leave that pair out and are
    separated, so the slope's upper limit is unbounded and n_finite says how many were not."""
    rng = np.random.default_rng(2)
    p = np.sort(rng.uniform(0.05, 0.95, 16))
    y = (np.arange(16) >= 8).astype(int)
    y[[7, 8]] = y[[8, 7]]                       # one overlapping pair
    prob = np.stack([1 - p, np.zeros(16), p], 1)
    y3 = np.where(y == 1, 2, 0)
    out = clinical.bootstrap_ci(clinical.calibration_lines, y3, prob, y3, np.arange(16),
                                n_boot=300, seed=0)["slope_ra"]
    assert math.isfinite(out["value"])
    assert out["unbounded"] == ["upper"] and out["ci95"][1] == math.inf
    assert 0 < out["n_finite"] < 300 - 0.025 * 300
    assert out["n_resamples"] == 300
    text = markdown.format_ci(clinical.json_safe(out))
    assert "unbounded" in text and f"n_finite {out['n_finite']}/300" in text


# ------------------------------------------------------------------------------- repeats
def _repeated(n_subjects: int, repeats: int, seed: int = 0):
    """A fixed set of 2-photo subjects scored by R repeats whose scores differ by noise (how
    the fold assignments fell)."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), 2)
    y = np.repeat(rng.integers(0, 3, n_subjects), 2)
    base = np.eye(3)[y] * 1.2 + rng.normal(0, 0.7, (len(y), 3))
    noise = np.random.default_rng(seed + 100).normal(0, 1.2, (repeats, len(y), 3))
    logits = base[None] + noise
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return y, subjects, prob


def _pooled(y, subjects, prob, n_boot=400):
    r = len(prob)
    flat = prob.reshape(-1, 3)
    return clinical.bootstrap_ci(clinical.clinical_metrics, np.tile(y, r), flat, flat.argmax(1),
                                 np.tile(subjects, r), n_boot=n_boot, seed=7,
                                 repeat=np.repeat(np.arange(r), len(y)))


def test_repeated_cv_interval_is_that_of_the_mean_by_definition():
    """Against a float64 reference: per resample of subjects, sklearn's AUROC of each repeat
    on the drawn photos, averaged; the interval is the percentiles of those means."""
    y, subjects, prob = _repeated(30, 3)
    out = _pooled(y, subjects, prob, n_boot=120)["auroc_ra"]
    w = next(clinical.subject_bootstrap_blocks(np.tile(subjects, 3), 120, seed=7))[:, :len(y)]
    ref = []
    for row in w:
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        ref.append(np.mean([skm.roc_auc_score(y[idx] == 2, p[idx, 2]) for p in prob]))
    each = [skm.roc_auc_score(y == 2, p[:, 2]) for p in prob]
    assert out["value"] == pytest.approx(np.mean(each), abs=1e-12)
    assert out["between_repeat_sd"] == pytest.approx(np.std(each, ddof=1), abs=1e-12)
    np.testing.assert_allclose(out["ci95"], np.percentile(ref, [2.5, 97.5]), atol=1e-12)


def test_repeated_cv_interval_narrows_as_repeats_grow():
    """On a fixed set of 40 subjects, the interval of the mean over R repeats narrows as R
    goes 1 -> 4 -> 16 (AUROC: bootstrap; accuracy: clustered Wilson), and with 4 repeats it
    is narrower than any single repeat's."""
    y, subjects, prob = _repeated(40, 16, seed=1)
    widths = {}
    for r in (1, 4, 16):
        out = _pooled(y, subjects, prob[:r])
        widths[r] = {m: np.diff(out[m]["ci95"])[0] for m in ("auroc_macro", "accuracy")}
    print(widths)
    for m in ("auroc_macro", "accuracy"):
        assert widths[1][m] > widths[4][m] > widths[16][m], m
    singles = [_pooled(y, subjects, prob[i:i + 1]) for i in range(4)]
    for m in ("auroc_macro", "accuracy"):
        assert widths[4][m] < min(np.diff(s[m]["ci95"])[0] for s in singles), m


# ------------------------------------------------------------------------------ markdown
def test_markdown_shows_n_finite_unbounded_and_between_repeat_sd():
    entry = {"value": 1.93, "ci95": [0.8, None], "n_finite": 1893, "n_resamples": 2000,
             "unbounded": ["upper"], "between_repeat_sd": 0.21}
    assert markdown.format_ci(entry) == ("1.930 [0.800, unbounded] (n_finite 1893/2000; "
                                         "between-repeat SD 0.210)")
    full = {"value": 0.5, "ci95": [0.4, 0.6], "n_finite": 2000, "n_resamples": 2000,
            "unbounded": []}
    assert markdown.format_ci(full) == "0.500 [0.400, 0.600]"
    wilson = {"value": 1.0, "ci95": [0.839, 1.0], "interval": "wilson", "n_eff": 20.0}
    assert markdown.format_ci(wilson) == "1.000 [0.839, 1.000]"
    assert markdown.format_ci({"value": None, "ci95": [None, None], "n_finite": 0,
                               "n_resamples": 5, "unbounded": ["value"]}) == "unbounded"
    assert markdown.format_ci({"value": None, "ci95": [None, None]}) == "n/a"
