"""handjax.compare: McNemar by hand, the paired subject bootstrap, mismatched runs."""
import dataclasses
import itertools
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from handjax import evaluation as clinical, compare


def _run(seed, n=60, noise=1.0):
    """A run's predictions on the same 60 photos / 30 subjects / 5 folds; ``seed`` varies the
    model."""
    truth = np.random.default_rng(0)
    y = truth.integers(0, 3, n)
    rng = np.random.default_rng(seed)
    prob = clinical.apply_temperature(rng.normal(size=(n, 3)) * noise + 1.5 * np.eye(3)[y], 1.0)
    return clinical.Predictions(
        file=np.array([f"p{i}.jpg" for i in range(n)], dtype=object),
        subject=np.array([f"s{i // 2}" for i in range(n)], dtype=object),
        fold=np.arange(n) % 5, label=y, probs={"cnn": prob}, pred={"cnn": prob.argmax(1)})


def test_mcnemar_against_a_hand_count_and_exact_binomial():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    a = np.array([0, 1, 2, 0, 1, 2, 0, 0, 0, 1])  # right on photos 0-6
    b = np.array([0, 0, 0, 1, 1, 2, 0, 1, 0, 1])  # right on 0, 4, 5, 6, 7
    m = compare.mcnemar(y, a, b)
    # A only: 1, 2, 3 (3 photos); B only: 7 (1); both right: 0, 4, 5, 6; both wrong: 8, 9
    counts = (m["a_only_correct"], m["b_only_correct"], m["both_correct"], m["both_wrong"])
    assert counts == (3, 1, 4, 2)
    # exact two-sided: 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * (1 + 4) / 16
    assert m["p_value"] == pytest.approx(2 * (math.comb(4, 0) + math.comb(4, 1)) / 2 ** 4)
    assert compare.mcnemar(y, a, a)["p_value"] == 1.0


def test_subject_mcnemar_with_one_photo_per_subject_is_the_exact_mcnemar():
    rng = np.random.default_rng(7)
    for n in (10, 40, 200):
        y = rng.integers(0, 3, n)
        a = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
        b = np.where(rng.random(n) < 0.55, y, (y + 2) % 3)
        exact = compare.mcnemar(y, a, b)
        perm = compare.mcnemar_subjects(y, a, b, np.arange(n))
        assert perm["p_value"] == pytest.approx(exact["p_value"], rel=1e-9, abs=1e-15)
        assert perm["statistic"] == exact["a_only_correct"] - exact["b_only_correct"]


def _enumerated_p(totals):
    """Two-sided sign-flip p-value by listing all 2^S sign vectors, in float64."""
    totals = np.asarray(totals)
    signs = np.array(list(itertools.product((-1, 1), repeat=len(totals))))
    null = np.abs(signs @ totals)
    return np.mean(null >= abs(totals.sum()))


def test_subject_mcnemar_equals_enumeration_of_all_sign_flips():
    rng = np.random.default_rng(8)
    for _ in range(20):
        n_subjects = rng.integers(1, 11)
        photos = rng.integers(1, 5, n_subjects)            # 1-4 photos a subject
        subjects = np.repeat(np.arange(n_subjects), photos)
        n = len(subjects)
        y = np.zeros(n, int)
        a, b = (np.where(rng.random(n) < q, 0, 1) for q in (0.7, 0.4))
        d = (a == y).astype(int) - (b == y)
        totals = np.bincount(subjects, weights=d)
        got = compare.mcnemar_subjects(y, a, b, subjects.astype(str))
        assert got["p_value"] == pytest.approx(_enumerated_p(totals), abs=1e-12)
        assert got["n_subjects_discordant"] == np.sum(totals != 0)


def test_subject_mcnemar_does_not_count_a_persons_photos_twice():
    """Six people, both hands photographed, each time A right and B wrong on both photos:
    photo-level McNemar sees 12 concordant wins (p = 2/4096), the subject test six (p = 2/64)."""
    y = np.zeros(12, int)
    a, b = np.zeros(12, int), np.ones(12, int)
    subjects = np.repeat(np.arange(6), 2)
    assert compare.mcnemar(y, a, b)["p_value"] == pytest.approx(2 / 2 ** 12)
    assert compare.mcnemar_subjects(y, a, b, subjects)["p_value"] == pytest.approx(2 / 2 ** 6)


def test_identical_runs_differ_by_exactly_zero():
    a = _run(1)
    r = compare.compare_runs(a, dataclasses.replace(a), n_boot=200)
    d = r["auroc_macro_difference"]
    assert d["value"] == 0 and d["ci95"] == [0.0, 0.0] and d["n_finite"] == 200
    assert r["mcnemar_photo"]["a_only_correct"] == r["mcnemar_photo"]["b_only_correct"] == 0
    assert r["mcnemar_subject"]["statistic"] == 0 and r["mcnemar_subject"]["p_value"] == 1.0


def test_paired_bootstrap_uses_the_same_subjects_for_both_runs():
    a, b = _run(1), _run(2, noise=2.0)
    shuffled = np.random.default_rng(3).permutation(60)  # B's rows in another order
    b = dataclasses.replace(b, file=b.file[shuffled], subject=b.subject[shuffled],
                            fold=b.fold[shuffled], label=b.label[shuffled],
                            probs={"cnn": b.probs["cnn"][shuffled]},
                            pred={"cnn": b.pred["cnn"][shuffled]})
    r = compare.compare_runs(a, b, n_boot=30, seed=4)
    unshuffled = _run(2, noise=2.0)
    macro = lambda y, p: skm.roc_auc_score(y, p, multi_class="ovr")
    assert r["auroc_macro_a"] == pytest.approx(macro(a.label, a.probs["cnn"]))
    assert r["auroc_macro_b"] == pytest.approx(macro(a.label, unshuffled.probs["cnn"]))
    # the same 30 subject resamples, scored with sklearn on the repeated photos of both runs
    diffs = []
    for w in next(clinical.subject_bootstrap_blocks(a.subject, 30, seed=4)):
        idx = np.repeat(np.arange(60), w.astype(int))
        if len(np.unique(a.label[idx])) == 3:
            diffs.append(macro(a.label[idx], a.probs["cnn"][idx])
                         - macro(a.label[idx], unshuffled.probs["cnn"][idx]))
    d = r["auroc_macro_difference"]
    assert d["n_finite"] == len(diffs)
    np.testing.assert_allclose(d["ci95"], np.percentile(diffs, [2.5, 97.5]), atol=1e-12)
    assert d["value"] == pytest.approx(r["auroc_macro_a"] - r["auroc_macro_b"])


def test_runs_on_different_photos_or_folds_are_refused(tmp_path):
    a = _run(1)
    other_files = dataclasses.replace(
        a, file=np.array([f"q{i}.jpg" for i in range(60)], dtype=object))
    with pytest.raises(clinical.PredictionsError, match="different photos"):
        compare.compare_runs(a, other_files)
    other_folds = dataclasses.replace(a, fold=(a.fold + 1) % 5)
    with pytest.raises(clinical.PredictionsError, match="fold for 60 photos"):
        compare.compare_runs(a, other_folds)
    other_subjects = dataclasses.replace(
        a, subject=np.array([f"s{i // 3}" for i in range(60)], dtype=object))
    # i // 2 == i // 3 only for i = 0, 1, 3: 57 photos change subject
    with pytest.raises(clinical.PredictionsError, match="differ in subject for 57 photos") as e:
        compare.compare_runs(a, other_subjects)
    assert "\n" not in str(e.value) and "same subjects" in str(e.value)
    with pytest.raises(clinical.PredictionsError, match="rule 'svm'"):
        compare.compare_runs(a, a, rule="svm")


def test_cli_prints_the_comparison_and_one_error_line(tmp_path, capsys):
    for name, run in (("a", _run(1)), ("b", _run(2)), ("c", dataclasses.replace(
            _run(2), fold=np.arange(60) % 4))):
        (tmp_path / name).mkdir()
        clinical.write_predictions(tmp_path / name / "predictions.csv", run)
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "McNemar" in out and "A - B" in out and "95% CI" in out
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "c"), "--n-boot", "50"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fold" in err


def test_cli_bad_flag_values_are_argparse_errors(tmp_path, capsys):
    for argv in (["--n-boot", "-1"], ["--seed", "x"], ["--rule", "nope"]):
        with pytest.raises(SystemExit) as e:
            compare.main([str(tmp_path), str(tmp_path), *argv])
        assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
