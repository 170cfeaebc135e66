"""Which readings of the study's lost custom_multi formula can produce its results table?

The answer is a family, not one formula: the table rules readings out (handjax's first,
``weighted``, among them) but leaves several consistent with it; handjax uses the best fit,
``pairwise`` (``docs/custom_multi.md`` shows which members fit which rows).

The study kept its table (``SEED.md``) but lost the formula images of custom_multi and
custom_plus. This module tests candidate readings of custom_multi against all 24 (plus,
multi) pairs of that table by simulation (approximate Bayesian computation):

1. Draw many 5-fold studies of the study's size: class totals 30–50 each (~120 photos,
   ~24 per test fold, stratified folds), a per-study confusion-probability matrix from a
   broad prior (per-class accuracy ~ U(0, 1); the share of H's and R's errors that are
   under-severity ~ Beta(0.5, 0.5), so "never under-calls" and "always under-calls" both
   have mass; the split of R's misses between N and H ~ U(0, 1); N's errors split ~ U(0, 1))
   and per-fold matrices scattered around it (Dirichlet with concentration ~ logU(1, 300):
   from near-identical folds to collapsed ones, as the custom-loss CNNs' folds look).
2. Evaluate every metric per fold, as a whole-fold metric and as Keras evaluates a compiled
   metric: an unweighted mean over batches of 16 (a fold of ~24 is 16 + 8), with the test
   fold either shuffled or sorted by class (StratifiedKFold on a class-ordered array keeps
   that order). Batches of 32 hold a whole fold of <= 30 photos, so batch 32 equals the
   whole-fold metric here. Per-batch ratios with an empty denominator count 0 (Keras's
   ``K.epsilon()`` guard).
3. For each table row, keep the simulated studies whose 5-fold mean accuracy is within 0.02
   of the row's and whose mean custom_plus is within ``max(0.01, 10%)`` of the row's (plus
   is unambiguous). A reading *supports* the row when the row's multi (± 0.00005, its
   rounding) lies in neither 0.5 % tail of the kept studies' multi, i.e.
   ``P(multi <= row + 5e-5) >= 0.005`` and ``P(multi >= row - 5e-5) >= 0.005``, with at
   least 20 kept studies (fewer: "n/a", not counted against the reading).

    python -m handjax.evaluation.readings            # the table of docs/custom_multi.md (~30 s)
    python -m handjax.evaluation.readings --sims 20000 --seed 1
    python -m handjax.evaluation.readings --prior plain   # a second prior (:data:`PRIORS`)
"""
from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from handjax import console, metrics

# The study's table (SEED.md): (row, accuracy, custom_multi, custom_plus), CNN then SVM.
STUDY_ROWS = (
    ("CNN categorical VGG16", 0.7687, 0.0150, 0.2100),
    ("CNN categorical VGG19", 0.7698, 0.0100, 0.2100),
    ("CNN categorical ResNet50", 0.5943, 0.0158, 0.2417),
    ("CNN categorical MobileNetV2", 0.6386, 0.0231, 0.3094),
    ("CNN binary VGG16", 0.6907, 0.0225, 0.2994),
    ("CNN binary VGG19", 0.7691, 0.0175, 0.2350),
    ("CNN binary ResNet50", 0.6912, 0.0050, 0.1544),
    ("CNN binary MobileNetV2", 0.7350, 0.0050, 0.1572),
    ("CNN custom_loss VGG16", 0.3350, 0.4967, 1.2883),
    ("CNN custom_loss VGG19", 0.3705, 0.4392, 1.2456),
    ("CNN custom_loss ResNet50", 0.5689, 0.0406, 0.4994),
    ("CNN custom_loss MobileNetV2", 0.4137, 0.1883, 1.0361),
    ("SVM categorical VGG16", 0.7691, 0.0100, 0.1900),
    ("SVM categorical VGG19", 0.7350, 0.0100, 0.2500),
    ("SVM categorical ResNet50", 0.6473, 0.0000, 0.1267),
    ("SVM categorical MobileNetV2", 0.6053, 0.0125, 0.3267),
    ("SVM binary VGG16", 0.7169, 0.0150, 0.2794),
    ("SVM binary VGG19", 0.7684, 0.0175, 0.2150),
    ("SVM binary ResNet50", 0.6911, 0.0050, 0.1989),
    ("SVM binary MobileNetV2", 0.7086, 0.0125, 0.2594),
    ("SVM custom_loss VGG16", 0.4224, 0.0000, 0.0200),
    ("SVM custom_loss VGG19", 0.4224, 0.0000, 0.0400),
    ("SVM custom_loss ResNet50", 0.5012, 0.0181, 0.2744),
    ("SVM custom_loss MobileNetV2", 0.4493, 0.0000, 0.3844),
)


def _rate(cm, i, j):
    return metrics.under_severity_rates(cm)[..., i, j]


# Candidate readings of custom_multi, each a function of a (..., 3, 3) confusion matrix.
CANDIDATES = {
    # today's reading: each under-severity rate times its share of the milder prediction
    "weighted": metrics.custom_multi_weighted,
    # the product of the three under-severity rates r_HN * r_RN * r_RH
    "triple": lambda cm: _rate(cm, 1, 0) * _rate(cm, 2, 0) * _rate(cm, 2, 1),
    # the sum of their pairwise products
    "pairwise": metrics.custom_multi,
    # per true class, the rate of being called milder, multiplied over H and R
    "per_class": metrics.custom_multi_per_class,
    # only the two rates of being called N: r_HN * r_RN
    "hn_rn": lambda cm: _rate(cm, 1, 0) * _rate(cm, 2, 0),
    # pairwise, scaled: the mean of the three products, half (or twice) their sum
    "pairwise/3": lambda cm: metrics.custom_multi(cm) / 3,
    "pairwise/2": lambda cm: metrics.custom_multi(cm) / 2,
    "2*pairwise": lambda cm: 2 * metrics.custom_multi(cm),
    # "multi-grade" misses only: R called N (two grades too mild)
    "two_grade": lambda cm: _rate(cm, 2, 0),
    # the rates weighted by the number of grades missed (as custom_precision weights)
    "grade_weighted": lambda cm: (metrics.under_severity_rates(cm)
                                  * (np.arange(3)[:, None] - np.arange(3)[None, :])).sum((-2, -1)),
}
MODES = ("fold", "b16_sorted", "b16_shuffled")
BATCH = 16
MAX_PER_CLASS = 50


# The priors over a study's error structure: the share of collapse-prone studies, the
# Beta(a, a) of the under-severity share of H's and R's errors, and the range of the
# folds' Dirichlet concentration. "broad" is the default of docs/custom_multi.md; "plain"
# (no collapse, uniform shares, folds alike) checks how much the conclusion owes to it.
PRIORS = {"broad": {"collapse": 1 / 3, "share_beta": 0.5, "concentration": (1.0, 300.0)},
          "plain": {"collapse": 0.0, "share_beta": 1.0, "concentration": (30.0, 300.0)}}


def _prior(rng, s, prior: str = "broad"):
    """Per-study base confusion probabilities ``(s, 3, 3)`` and fold concentrations."""
    cfg = PRIORS[prior]
    # Under "broad", a third of the studies have collapse-prone models (per-class accuracy
    # near 0 or 1, e.g. "call nearly everything R"), as the custom-loss rows look.
    collapse = rng.uniform(size=(s, 1)) < cfg["collapse"]
    a = np.where(collapse, rng.beta(0.3, 0.3, size=(s, 3)), rng.uniform(size=(s, 3)))
    v, split = rng.uniform(size=(2, s))
    u_h, u_r = rng.beta(cfg["share_beta"], cfg["share_beta"], size=(2, s))
    e = 1 - a
    p = np.stack([
        np.stack([a[:, 0], e[:, 0] * v, e[:, 0] * (1 - v)], -1),
        np.stack([e[:, 1] * u_h, a[:, 1], e[:, 1] * (1 - u_h)], -1),
        np.stack([e[:, 2] * u_r * split, e[:, 2] * u_r * (1 - split), a[:, 2]], -1)], 1)
    conc = np.exp(rng.uniform(*np.log(cfg["concentration"]), size=s))
    return p, conc


def _folds(rng, s):
    """Labels ``(s, 5, F)`` of each fold's slots sorted by class (-1 = padding)."""
    n = rng.integers(30, MAX_PER_CLASS + 1, size=(s, 3))
    f_max = 3 * (MAX_PER_CLASS // 5 + 1)
    # StratifiedKFold: each class spread as evenly as possible, the extras on random folds.
    extra = rng.permuted(np.tile(np.arange(5), (s, 3, 1)), axis=-1) < (n % 5)[..., None]
    per_fold = n[..., None] // 5 + extra                            # (s, 3, 5)
    slot = np.arange(f_max)
    ends = np.cumsum(per_fold, 1).transpose(0, 2, 1)                # (s, 5, 3)
    labels = (slot[None, None, :, None] >= ends[..., None, :]).sum(-1)
    return np.where(labels < 3, labels, -1)


def _predictions(rng, p, conc, labels):
    """Sample one prediction per slot from its fold's Dirichlet-scattered matrix."""
    alpha = np.repeat(conc[:, None, None, None] * p[:, None] + 1e-9, 5, 1)
    pf = rng.gamma(alpha) + 1e-30        # (s, 5, 3, 3); + tiny: rows of underflowed draws
    pf /= pf.sum(-1, keepdims=True)
    rows = np.take_along_axis(pf, np.clip(labels, 0, 2)[..., None], 2)   # (s, 5, F, 3)
    cum = rows.cumsum(-1)                                          # (s, 5, F, 3)
    u = rng.uniform(size=labels.shape)[..., None]
    return np.minimum((u > cum).sum(-1), 2)


def _batch_cms(labels, preds, batch_of, n_batches):
    """Confusion matrices ``(s, 5, n_batches, 3, 3)`` from per-slot batch ids."""
    s = labels.shape[0]
    valid = labels >= 0
    cell = (((np.arange(s)[:, None, None] * 5 + np.arange(5)[None, :, None]) * n_batches
             + batch_of) * 3 + labels) * 3 + preds
    counts = np.bincount(cell[valid], minlength=s * 5 * n_batches * 9)
    return counts.reshape(s, 5, n_batches, 3, 3).astype(np.float32)


def _batch_ids(rng, labels, mode):
    if mode == "fold":
        return np.zeros_like(labels), 1
    f = labels.shape[-1]
    if mode == "b16_sorted":
        pos = np.broadcast_to(np.arange(f), labels.shape)
    else:   # shuffled: a random rank among the fold's real photos
        keys = np.where(labels >= 0, rng.uniform(size=labels.shape), 2.0)
        pos = np.argsort(np.argsort(keys, -1), -1)
    return pos // BATCH, -(-f // BATCH)


def _batch_mean(values, cms):
    """Keras's compiled-metric mean over the batches that hold photos, then over folds."""
    present = cms.sum((-2, -1)) > 0
    per_fold = (np.where(present, values, 0).sum(-1) / present.sum(-1))
    return per_fold.mean(-1)


def simulate(n_sims: int, seed: int = 0, chunk: int = 20000, prior: str = "broad") -> dict:
    """Simulated 5-fold means: ``{"accuracy": (n,), "plus": {mode: (n,)},
    "multi": {reading: {mode: (n,)}}}``; ``prior`` names one of :data:`PRIORS`."""
    rng = np.random.default_rng(seed)
    out = {"accuracy": [], "plus": {m: [] for m in MODES},
           "multi": {r: {m: [] for m in MODES} for r in CANDIDATES}}
    for start in range(0, n_sims, chunk):
        s = min(chunk, n_sims - start)
        p, conc = _prior(rng, s, prior)
        labels = _folds(rng, s)
        preds = _predictions(rng, p, conc, labels)
        for mode in MODES:
            cms = _batch_cms(labels, preds, *_batch_ids(rng, labels, mode))
            if mode == "fold":
                out["accuracy"].append(np.asarray(metrics.accuracy(cms))[..., 0].mean(-1))
            out["plus"][mode].append(_batch_mean(np.asarray(metrics.custom_plus(cms)), cms))
            for name, fn in CANDIDATES.items():
                out["multi"][name][mode].append(_batch_mean(np.asarray(fn(jnp.asarray(cms))), cms))
    cat = np.concatenate
    return {"accuracy": cat(out["accuracy"]),
            "plus": {m: cat(v) for m, v in out["plus"].items()},
            "multi": {r: {m: cat(v) for m, v in d.items()} for r, d in out["multi"].items()}}


def support(sim: dict, row, reading: str, mode: str, *, tail: float = 0.005,
            min_kept: int = 20):
    """``(supported, kept, near)`` for one table row.

    ``supported`` is True/False, or None when fewer than ``min_kept`` simulated studies
    match the row's accuracy and plus. A row's multi below 0.05 must also be attainable:
    some simulated study with the row's plus (any accuracy) rounds to it.
    ``near`` is the share of the kept studies whose multi lies within
    ``max(0.0025, 10%)`` of the row's, a likelihood-like score.
    """
    _, acc, multi, plus = row
    near_plus = np.abs(sim["plus"][mode] - plus) <= max(0.01, 0.1 * plus)
    kept = near_plus & (np.abs(sim["accuracy"] - acc) <= 0.02)
    all_m = sim["multi"][reading][mode]
    m = all_m[kept]
    near = float(np.mean(np.abs(m - multi) <= max(0.0025, 0.1 * multi))) if len(m) else 0.0
    if len(m) < min_kept:
        return None, len(m), near
    # Exact 4-decimal values only matter where the attainable values are sparse; above
    # 0.05 a 1e-4 window is too narrow for the pool to hit by chance.
    attainable = multi >= 0.05 or bool(np.any(np.abs(all_m[near_plus] - multi) <= 5e-5))
    ok = (attainable and np.mean(m <= multi + 5e-5) >= tail
          and np.mean(m >= multi - 5e-5) >= tail)
    return bool(ok), len(m), near


def table(sim: dict, rows=STUDY_ROWS) -> dict:
    """``{(reading, mode): [support(...) per row]}``."""
    return {(r, m): [support(sim, row, r, m) for row in rows]
            for r in CANDIDATES for m in MODES}


def markdown(sim: dict, rows=STUDY_ROWS) -> str:
    """Two tables: rows x readings (one column per reading x mode), then a summary."""
    res = table(sim, rows)
    cols = list(res)
    mark = {True: "yes", False: "**no**", None: "n/a"}
    head = "| row | multi | plus | " + " | ".join(f"{r} {m}" for r, m in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for i, (name, _, multi, plus) in enumerate(rows):
        cells = " | ".join(mark[res[c][i][0]] for c in cols)
        lines.append(f"| {name} | {multi:.4f} | {plus:.4f} | {cells} |")
    lines += ["", "| reading | mode | rows not refuted | refuted rows | mean near-share "
              "| sum log near-share |", "|---|---|---|---|---|---|"]
    for (r, m), v in res.items():
        bad = [rows[i][0] for i, x in enumerate(v) if x[0] is False]
        near = np.array([x[2] for x in v])
        # log-likelihood-like: a row with no near study counts as one in (kept + 1)
        floor = np.array([1.0 / (x[1] + 1) for x in v])
        loglik = np.log(np.maximum(near, floor)).sum()
        lines.append(f"| {r} | {m} | {len(rows) - len(bad)}/{len(rows)} | "
                     f"{', '.join(bad) if len(bad) <= 4 else f'{len(bad)} rows'} | "
                     f"{near.mean():.3f} | {loglik:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handjax.evaluation.readings",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=console.int_at_least(1), default=100000)
    parser.add_argument("--seed", type=console.int_at_least(0), default=0)
    parser.add_argument("--prior", choices=sorted(PRIORS), default="broad")
    args = parser.parse_args(argv)
    print(markdown(simulate(args.sims, args.seed, prior=args.prior)))


if __name__ == "__main__":
    main()
