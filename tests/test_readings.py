"""The custom_multi study (handjax.evaluation.readings): its criterion and its key conclusion."""
import numpy as np
import pytest

from handjax import metrics
from handjax.evaluation import readings


def _sim(multi, plus, acc=0.7):
    """A hand-made 'simulation' dict with one reading and one mode."""
    n = len(multi)
    return {"accuracy": np.full(n, acc), "plus": {"fold": np.asarray(plus, float)},
            "multi": {"r": {"fold": np.asarray(multi, float)}}}


def test_support_criterion_by_hand():
    row = ("row", 0.7, 0.0100, 0.2000)
    plus = np.full(400, 0.2)
    # multi spread over [0.005, 0.05]: 0.0100 is inside, and hit exactly by one study.
    multi = np.linspace(0.005, 0.05, 400)
    multi[7] = 0.0100
    assert readings.support(_sim(multi, plus), row, "r", "fold")[:2] == (True, 400)
    # Never that small (all > 0.0101 + 5e-5): refuted.
    assert readings.support(_sim(multi + 0.0102, plus), row, "r", "fold")[0] is False
    # Attainable values only on a lattice of 0.02: 0.0100 is never hit, refuted.
    lattice = np.round(np.linspace(0.0, 0.04, 400) / 0.02) * 0.02
    assert readings.support(_sim(lattice, plus), row, "r", "fold")[0] is False
    # Studies with another plus or accuracy are not kept: too few -> None.
    assert readings.support(_sim(multi, plus + 0.1), row, "r", "fold")[0] is None
    assert readings.support(_sim(multi, plus, acc=0.5), row, "r", "fold")[0] is None


def test_simulated_folds_have_the_study_size():
    rng = np.random.default_rng(0)
    labels = readings._folds(rng, 50)
    per_study = (labels >= 0).sum((1, 2))
    assert per_study.min() >= 90 and per_study.max() <= 150
    fold_sizes = (labels >= 0).sum(-1)
    assert np.all(fold_sizes.max(1) - fold_sizes.min(1) <= 3)   # stratified, near-equal
    # Slots are sorted by class within each fold, padding last.
    order = np.where(labels >= 0, labels, 3)
    assert np.all(np.diff(order, axis=-1) >= 0)


def test_key_conclusion_on_a_small_seeded_run():
    """Today's old reading (weighted) is never 0 when plus > 0, so it cannot give the study's
    four rows with multi 0.0000; the adopted reading gives 0 often enough; and the old reading
    is rarely below a tenth of plus (plus 0.1-0.5), while all 17 of the study's non-zero
    rows with plus < 0.5 sit at 0.025-0.081 of plus (e.g. 0.0150 / 0.2100)."""
    sim = readings.simulate(3000, seed=0)
    for mode in readings.MODES:
        some_plus = sim["plus"][mode] > 0.1
        weighted = sim["multi"]["weighted"][mode][some_plus]
        adopted = sim["multi"]["pairwise"][mode][some_plus]
        assert weighted.min() > 5e-5
        assert np.mean(adopted < 5e-5) > 0.01
    ratio = sim["multi"]["weighted"]["fold"] / np.maximum(sim["plus"]["fold"], 1e-9)
    assert np.quantile(ratio[(sim["plus"]["fold"] > 0.1) & (sim["plus"]["fold"] < 0.5)],
                       0.005) > 0.1
    study_ratios = [m / p for _, _, m, p in readings.STUDY_ROWS if 0 < m and p < 0.5]
    assert max(study_ratios) < 0.09
    assert readings.CANDIDATES["pairwise"] is metrics.custom_multi


def test_markdown_lists_every_row_and_candidate():
    sim = readings.simulate(400, seed=1)
    text = readings.markdown(sim)
    for name, *_ in readings.STUDY_ROWS:
        assert f"| {name} |" in text
    for name in readings.CANDIDATES:
        assert f"| {name} | fold |" in text


def test_family_members_by_hand_on_the_study_example():
    """The study's example matrix: r_HN = 4/9, r_RN = 3/9, r_RH = 3/9; pairwise 33/81."""
    cm = np.array([[6, 0, 0], [4, 4, 1], [3, 3, 3]], np.float32)
    want = {"pairwise": 33 / 81, "hn_rn": 12 / 81, "per_class": (4 / 9) * (6 / 9),
            "pairwise/3": 11 / 81, "pairwise/2": 16.5 / 81, "2*pairwise": 66 / 81,
            "triple": 36 / 729}
    for name, value in want.items():
        assert float(readings.CANDIDATES[name](cm)) == pytest.approx(value, rel=1e-6), name


def test_priors_differ_as_documented():
    rng = np.random.default_rng(0)
    _, conc = readings._prior(rng, 2000, "plain")
    assert conc.min() >= 30 - 1e-9 and conc.max() <= 300 + 1e-9
    _, broad = readings._prior(rng, 2000, "broad")
    assert broad.min() < 30


def test_bad_flag_values_are_argparse_errors(capsys):
    import pytest
    for argv in (["--sims", "0"], ["--seed", "-1"], ["--sims", "many"]):
        with pytest.raises(SystemExit) as e:
            readings.main(argv)
        assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
