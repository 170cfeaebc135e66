"""Clinical plots: pooled ROC curves with the frozen operating points, reliability diagrams.

Matplotlib ``Figure`` objects (Agg canvas, no pyplot state), written straight to ``path``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from handjax import clinical

# The two triage questions: (title, positive cases, score) from (y, prob).
ROC_TASKS = {
    "any_disease": ("any disease vs normal", lambda y, p: (y != 0, p[:, 1] + p[:, 2])),
    "ra": ("RA vs rest", lambda y, p: (y == 2, p[:, 2])),
}


def plot_roc(path, y, prob, operating_points=None) -> Path:
    """Pooled one-vs-rest ROC curves for any-disease and RA, with chosen operating points.

    ``operating_points`` maps a task (``"any_disease"``, ``"ra"``) to ``{label: point}``, each
    point a dict with ``"sensitivity"`` and ``"specificity"`` (as :func:`clinical.operating_point`
    returns), drawn as markers on that task's panel.
    """
    y, prob = np.asarray(y), np.asarray(prob, np.float64)
    operating_points = operating_points or {}
    fig = Figure(figsize=(8.4, 4.0), dpi=100)
    for i, (task, (title, get)) in enumerate(ROC_TASKS.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        positive, score = get(y, prob)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        if positive.any() and not positive.all():
            fpr, tpr, _ = skm.roc_curve(positive, score)
            auc = skm.roc_auc_score(positive, score)
            ax.plot(fpr, tpr, color="C0", label=f"AUROC {auc:.3f}")
        for j, (label, point) in enumerate(operating_points.get(task, {}).items()):
            ax.plot(1 - point["specificity"], point["sensitivity"], "o", color=f"C{j + 1}",
                    label=f"{label}: sens {point['sensitivity']:.2f}, "
                          f"spec {point['specificity']:.2f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity", ylabel="sensitivity",
               title=f"{title} (n={len(y)}, {int(positive.sum())} positive)")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_reliability(path, y, prob_before, prob_after, n_bins: int = clinical.ECE_BINS) -> Path:
    """Top-label reliability diagram before and after calibration, ECE in the legend, with a
    photo-count histogram of the confidence bins underneath."""
    fig = Figure(figsize=(4.6, 5.2), dpi=100)
    ax = fig.add_axes((0.14, 0.36, 0.8, 0.56))
    hist = fig.add_axes((0.14, 0.09, 0.8, 0.17), sharex=ax)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    width = 1.0 / n_bins
    for k, (label, prob) in enumerate((("before", prob_before), ("after", prob_after))):
        curve = clinical.reliability_curve(y, prob, n_bins)
        ok = curve["count"] > 0
        ece = np.sum(curve["count"][ok] * np.abs(curve["accuracy"] - curve["confidence"])[ok])
        ece /= max(curve["count"].sum(), 1)
        ax.plot(curve["confidence"][ok], curve["accuracy"][ok], "o-", color=f"C{k}",
                label=f"{label} calibration (ECE {n_bins} bins {ece:.3f})")
        hist.bar(curve["edges"][:-1] + width * (0.25 + 0.5 * k), curve["count"], width / 2,
                 align="edge", color=f"C{k}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy of the top label",
           title=f"reliability ({len(np.asarray(y))} photos, {n_bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="top-label confidence", ylabel="photos")
    fig.savefig(path)
    return Path(path)
