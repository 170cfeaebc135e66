"""Paired comparison of two runs on the same photos and folds.

    python -m handjax.compare RUN_A RUN_B [--rule cnn] [--n-boot 2000] [--seed 0]

RUN_A and RUN_B are run workdirs (or their ``predictions.csv`` files). Both runs must cover the
same photos with the same folds, labels and subjects. Printed: a McNemar test that respects
subjects (:func:`mcnemar_subjects`: an exact sign-flip permutation test over subjects of the
paired per-photo correctness), for reference McNemar's photo-level exact test (which treats
two photos of one person as independent evidence), and a paired subject-bootstrap CI of the
macro AUROC difference A - B (both runs scored on the same resampled subjects).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from handjax import cli, console, evaluation as clinical
from handjax.errors import RunError
from handjax.train import workdir as workdirs


def _aligned(a: clinical.Predictions, b: clinical.Predictions, names=("A", "B")):
    """Row order of ``b`` that matches ``a``'s files; one-line error if the runs differ."""
    fa, fb = a.file.astype(str), b.file.astype(str)
    for f, n in ((fa, names[0]), (fb, names[1])):
        if len(set(f)) != len(f):
            raise clinical.PredictionsError(f"run {n}: file names repeat in predictions.csv")
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    if only_a or only_b:
        raise clinical.PredictionsError(
            f"the runs cover different photos: {len(only_a)} only in {names[0]} "
            f"{only_a[:1]}, {len(only_b)} only in {names[1]} {only_b[:1]}; compare runs of "
            "the same data")
    index = {f: i for i, f in enumerate(fb)}
    order = np.array([index[f] for f in fa], np.int64)
    for field, what in (("fold", "folds"), ("label", "labels"), ("subject", "subjects")):
        va, vb = getattr(a, field), getattr(b, field)[order]
        if field == "subject":
            va, vb = va.astype(str), vb.astype(str)
        bad = np.flatnonzero(va != vb)
        if len(bad):
            i = bad[0]
            raise clinical.PredictionsError(
                f"the runs differ in {field} for {len(bad)} photos (e.g. {fa[i]}: "
                f"{names[0]} {va[i]}, {names[1]} {vb[i]}); compare runs with the same {what}")
    return order


def mcnemar(y, pred_a, pred_b) -> dict:
    """McNemar's exact test at the *photo* level: photos right in A only (``a_only``) vs right
    in B only (``b_only``); two-sided binomial p-value of ``a_only`` among the discordant at
    1/2 (1.0 when there are none). It treats every photo as independent, so two photos of one
    person count as two pieces of evidence: use :func:`mcnemar_subjects` for the test."""
    ok_a, ok_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    a_only, b_only = int(np.sum(ok_a & ~ok_b)), int(np.sum(~ok_a & ok_b))
    p = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only_correct": a_only, "b_only_correct": b_only,
            "both_correct": int(np.sum(ok_a & ok_b)), "both_wrong": int(np.sum(~ok_a & ~ok_b)),
            "p_value": float(p)}


def sign_flip_null(totals) -> tuple[np.ndarray, np.ndarray]:
    """The exact distribution of ``sum_s e_s * totals[s]`` over independent fair signs
    ``e_s = ±1``, for integer ``totals``: ``(values, probabilities)``, by convolving one
    subject at a time on the integer grid (float64; exact up to rounding, any number of
    subjects, no Monte Carlo)."""
    totals = np.abs(np.asarray(totals, np.int64))
    totals = totals[totals > 0]
    span = int(totals.sum())
    prob = np.zeros(2 * span + 1)
    prob[span] = 1.0
    for t in totals:  # each subject moves the sum by +t or -t with probability 1/2
        prob = 0.5 * (np.roll(prob, t) + np.roll(prob, -t))  # no wrap: |sum| <= span
    return np.arange(-span, span + 1), prob


def mcnemar_subjects(y, pred_a, pred_b, subjects) -> dict:
    """A McNemar test that respects subjects: an exact sign-flip permutation test.

    Per photo ``d = [A right] - [B right]``; per subject ``D_s = sum of d`` over its photos;
    statistic ``T = sum_s D_s`` (= photos right only in A minus those right only in B). Under
    the null that A and B are exchangeable *for each subject* (swapping the two runs' calls
    on all of one person's photos at once is as likely as not), ``T`` is distributed as
    ``sum_s e_s D_s`` with independent fair signs ``e_s``; the two-sided p-value is
    ``P(|sum_s e_s D_s| >= |T|)``, computed exactly (:func:`sign_flip_null`). Photos of one
    person flip together, so correlated photos are not counted as independent evidence.
    With one photo per subject it *is* McNemar's exact test (tested). A subject-clustered
    alternative is Obuchowski's (1998) variance-corrected statistic; the permutation test
    needs no large-sample approximation at this study's ~60 subjects.
    """
    ok_a, ok_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    d = ok_a.astype(np.int64) - ok_b
    _, sid = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    totals = np.bincount(sid, weights=d).astype(np.int64)
    t = int(d.sum())
    values, prob = sign_flip_null(totals)
    p = float(min(1.0, prob[np.abs(values) >= abs(t)].sum()))
    return {"statistic": t, "n_subjects": len(totals),
            "n_subjects_discordant": int(np.sum(totals != 0)), "p_value": p}


def compare_runs(pred_a: clinical.Predictions, pred_b: clinical.Predictions, rule: str = "cnn",
                 n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """McNemar and the paired subject-bootstrap AUROC-macro difference of one decision rule.

    Returns ``{"n", "rule", "accuracy_a", "accuracy_b", "mcnemar_subject": {...}
    (:func:`mcnemar_subjects`, the test to read), "mcnemar_photo": {...} (:func:`mcnemar`,
    photos as independent), "auroc_macro_a", "auroc_macro_b", "auroc_macro_difference":
    {"value", "ci95", "n_finite"}}``. Raises :class:`clinical.PredictionsError` if the runs
    cover different photos, folds, labels or subjects, or lack the rule.
    """
    for p, n in ((pred_a, "A"), (pred_b, "B")):
        if rule not in p.pred:
            raise clinical.PredictionsError(f"run {n} has no decisions for rule {rule!r} "
                                            f"(it has {', '.join(p.pred)})")
    order = _aligned(pred_a, pred_b)
    y = pred_a.label
    prob_a, prob_b = pred_a.probs_for(rule), pred_b.probs_for(rule)[order]
    dec_a, dec_b = pred_a.pred[rule], pred_b.pred[rule][order]
    ma = clinical.clinical_metrics(y, prob_a, dec_a)
    mb = clinical.clinical_metrics(y, prob_b, dec_b)

    def difference(yy, both, _):  # the resampled metric: macro AUROC of A minus B's
        return {"auroc_macro_difference": _macro(yy, both[:, :3]) - _macro(yy, both[:, 3:])}

    def difference_batched(yy, both, _, w):
        return {"auroc_macro_difference":
                clinical.ovr_aurocs_batched(yy, both[:, :3], w).mean(1)
                - clinical.ovr_aurocs_batched(yy, both[:, 3:], w).mean(1)}

    difference.batched = difference_batched
    both = np.concatenate([prob_a, prob_b], 1)  # one resample draws the subject for A and B
    diff = clinical.bootstrap_ci(difference, y, both, dec_a, pred_a.subject,
                                 n_boot=n_boot, seed=seed, alpha=alpha)
    return {"n": len(y), "rule": rule, "accuracy_a": ma["accuracy"],
            "accuracy_b": mb["accuracy"],
            "mcnemar_subject": mcnemar_subjects(y, dec_a, dec_b, pred_a.subject),
            "mcnemar_photo": mcnemar(y, dec_a, dec_b),
            "auroc_macro_a": ma["auroc_macro"], "auroc_macro_b": mb["auroc_macro"], **diff}


def _macro(y, prob):
    return clinical.clinical_metrics(y, prob, prob.argmax(-1))["auroc_macro"]


def _csv_path(run: str) -> Path:
    p = Path(run)
    p = p / "predictions.csv" if p.is_dir() else p
    if not p.is_file():
        raise RunError(f"no predictions.csv at {p}: pass a run's workdir or its "
                       "predictions.csv")
    workdirs.check_finished(p.parent)   # a run that failed after writing predictions.csv
    return p


def _format(r: dict, a: str, b: str) -> str:
    m, d = r["mcnemar_photo"], r["auroc_macro_difference"]
    ms = r["mcnemar_subject"]
    ci = next(v for k, v in d.items() if k.startswith("ci"))

    def fmt(x):
        return f"{x:.4f}" if math.isfinite(x) else "nan"

    mcnemar_line = "\n".join([
        f"McNemar       photos right only in A: {m['a_only_correct']}, right only in B: "
        f"{m['b_only_correct']}",
        f"  by subject  exact sign-flip test over {ms['n_subjects']} subjects "
        f"({ms['n_subjects_discordant']} discordant): two-sided p = {ms['p_value']:.4g}",
        f"  by photo    exact binomial, photos as independent (for reference only): "
        f"p = {m['p_value']:.4g}"])
    auroc_line = (f"AUROC macro   A {fmt(r['auroc_macro_a'])}   B {fmt(r['auroc_macro_b'])}   "
                  f"A - B {fmt(d['value'])}  95% CI [{fmt(ci[0])}, {fmt(ci[1])}] "
                  f"(subject bootstrap, {d['n_finite']} finite resamples)")
    return "\n".join([
        f"A = {a}\nB = {b}\nrule {r['rule']}, {r['n']} photos (pooled out-of-fold)",
        f"accuracy      A {fmt(r['accuracy_a'])}   B {fmt(r['accuracy_b'])}",
        mcnemar_line, auroc_line])


@cli.command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m handjax.compare",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a", help="run workdir (or its predictions.csv)")
    ap.add_argument("run_b")
    ap.add_argument("--rule", default="cnn", choices=clinical.RULES)
    ap.add_argument("--n-boot", type=console.int_at_least(0), default=2000,
                    help="subject-bootstrap resamples (0: no CI)")
    ap.add_argument("--seed", type=console.int_at_least(0), default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    a, b = (clinical.read_predictions(_csv_path(r)) for r in (args.run_a, args.run_b))
    result = compare_runs(a, b, args.rule, n_boot=args.n_boot, seed=args.seed)
    print(json.dumps(result, indent=1) if args.json else _format(result, args.run_a, args.run_b))
    return 0


if __name__ == "__main__":
    cli.exit_process(main(sys.argv[1:]))
