"""Paired comparison of two runs on the same photos and folds.

    python -m handjax.compare RUN_A RUN_B [--rule cnn] [--n-boot 2000] [--seed 0]

RUN_A and RUN_B are run workdirs (or their ``predictions.csv`` files). Both runs must cover the
same photos with the same folds and labels. Printed: McNemar's exact test on the pooled
out-of-fold decisions (a two-sided binomial test on the discordant photos) and a paired
subject-bootstrap CI of the macro AUROC difference A - B (both runs scored on the same
resampled subjects).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from handjax import clinical, console
from handjax import workdir as workdirs


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
    for field in ("fold", "label"):
        va, vb = getattr(a, field), getattr(b, field)[order]
        bad = np.flatnonzero(va != vb)
        if len(bad):
            i = bad[0]
            raise clinical.PredictionsError(
                f"the runs differ in {field} for {len(bad)} photos (e.g. {fa[i]}: "
                f"{names[0]} {va[i]}, {names[1]} {vb[i]}); compare runs with the same folds")
    return order


def mcnemar(y, pred_a, pred_b) -> dict:
    """McNemar's exact test: photos right in A only (``a_only``) vs right in B only
    (``b_only``); two-sided binomial p-value of ``a_only`` among the discordant at 1/2
    (1.0 when there are none)."""
    ok_a, ok_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    a_only, b_only = int(np.sum(ok_a & ~ok_b)), int(np.sum(~ok_a & ok_b))
    p = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only_correct": a_only, "b_only_correct": b_only,
            "both_correct": int(np.sum(ok_a & ok_b)), "both_wrong": int(np.sum(~ok_a & ~ok_b)),
            "p_value": float(p)}


def compare_runs(pred_a: clinical.Predictions, pred_b: clinical.Predictions, rule: str = "cnn",
                 n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """McNemar and the paired subject-bootstrap AUROC-macro difference of one decision rule.

    Returns ``{"n", "rule", "accuracy_a", "accuracy_b", "mcnemar": {...},
    "auroc_macro_a", "auroc_macro_b", "auroc_macro_difference": {"value", "ci95",
    "n_finite"}}``. Raises :class:`clinical.PredictionsError` if the runs cover different
    photos, folds or labels, or lack the rule.
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
            "accuracy_b": mb["accuracy"], "mcnemar": mcnemar(y, dec_a, dec_b),
            "auroc_macro_a": ma["auroc_macro"], "auroc_macro_b": mb["auroc_macro"], **diff}


def _macro(y, prob):
    return clinical.clinical_metrics(y, prob, prob.argmax(-1))["auroc_macro"]


def _csv_path(run: str) -> Path:
    p = Path(run)
    p = p / "predictions.csv" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no predictions.csv at {p}: pass a run's workdir or its "
                                "predictions.csv")
    workdirs.check_finished(p.parent)   # a run that failed after writing predictions.csv
    return p


def _format(r: dict, a: str, b: str) -> str:
    m, d = r["mcnemar"], r["auroc_macro_difference"]
    ci = next(v for k, v in d.items() if k.startswith("ci"))

    def fmt(x):
        return f"{x:.4f}" if math.isfinite(x) else "nan"

    mcnemar_line = (f"McNemar       right only in A: {m['a_only_correct']}, right only in B: "
                    f"{m['b_only_correct']}, exact two-sided p = {m['p_value']:.4g}")
    auroc_line = (f"AUROC macro   A {fmt(r['auroc_macro_a'])}   B {fmt(r['auroc_macro_b'])}   "
                  f"A - B {fmt(d['value'])}  95% CI [{fmt(ci[0])}, {fmt(ci[1])}] "
                  f"(subject bootstrap, {d['n_finite']} finite resamples)")
    return "\n".join([
        f"A = {a}\nB = {b}\nrule {r['rule']}, {r['n']} photos (pooled out-of-fold)",
        f"accuracy      A {fmt(r['accuracy_a'])}   B {fmt(r['accuracy_b'])}",
        mcnemar_line, auroc_line])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m handjax.compare",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a", help="run workdir (or its predictions.csv)")
    ap.add_argument("run_b")
    ap.add_argument("--rule", default="cnn", choices=clinical.RULES + (clinical.MEC_RULE,))
    ap.add_argument("--n-boot", type=console.int_at_least(0), default=2000,
                    help="subject-bootstrap resamples (0: no CI)")
    ap.add_argument("--seed", type=console.int_at_least(0), default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        a, b = (clinical.read_predictions(_csv_path(r)) for r in (args.run_a, args.run_b))
        result = compare_runs(a, b, args.rule, n_boot=args.n_boot, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        console.error(str(e))
        return 2
    print(json.dumps(result, indent=1) if args.json else _format(result, args.run_a, args.run_b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
