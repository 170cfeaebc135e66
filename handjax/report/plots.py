"""Every figure of handjax, one function a PNG: confusion matrices, learning curves, ROC
curves with the frozen operating points, reliability diagrams, decision curves and the
study's accuracy-vs-under-severity scatter.

Each takes numbers already computed (from ``results.json``, ``predictions.csv`` or
``metrics.jsonl``) and draws them with matplotlib ``Figure`` objects (Agg canvas, no pyplot
state), written straight to ``path``. Nothing here computes a figure a table reports.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn import metrics as skm

from handjax.evaluation import TASKS, reliability_curve
from handjax.evaluation.clinical import ECE_BINS


def plot_confusion(cm, class_names, title: str, path) -> Path:
    """Heat map of ``cm`` with counts, under-severity cells (i > j) framed in red."""
    cm = np.asarray(cm)
    k = len(cm)
    fig = Figure(figsize=(4.2, 3.8), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            dark = cm[i, j] > 0.5 * cm.max()
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if dark else "black")
            if i > j:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2.5))
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names,
           yticklabels=class_names, xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_curves(records: list[dict], path) -> Path:
    """Loss and accuracy per fold against epochs (:func:`curves_figure`), as a PNG."""
    curves_figure(records).savefig(path)
    return Path(path)


def curves_figure(records: list[dict]) -> Figure:
    """Loss and accuracy per fold against epochs (phase 1 then phase 2): training solid,
    the test fold dashed (``test_*``, shown, never used for tuning), the inner validation
    split dotted (``val_*``), and a thin dotted line where phase 2 starts. The line styles
    are told once, above both plots, so the two titles stay short and apart."""
    fig = Figure(figsize=(9, 3.6), dpi=100)
    axes = fig.subplots(1, 2)
    folds = sorted({r["fold"] for r in records if "fold" in r})
    colors = [f"C{i}" for i in range(10)]
    for fold in folds:
        rows = [r for r in records if r.get("fold") == fold]
        x = np.arange(1, len(rows) + 1)  # epochs of both phases, in file order
        color = colors[fold % len(colors)]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(x, [r.get(key, np.nan) for r in rows], color=color, label=f"fold {fold}")
            for prefix, style in (("test_", "--"), ("val_", ":")):
                if any(f"{prefix}{key}" in r for r in rows):
                    ax.plot(x, [r.get(f"{prefix}{key}", np.nan) for r in rows], style,
                            color=color)
        starts = [i + 1 for i, r in enumerate(rows) if r.get("phase") == 2]
        if starts:
            for ax in axes:
                ax.axvline(starts[0] - 0.5, color=color, linestyle=":", linewidth=0.8)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch (phase 1, then phase 2)", ylabel=key, title=key)
    fig.suptitle("train (solid), test fold (dashed, not for tuning), inner val (dotted)",
                 fontsize="medium")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_roc(path, y, prob, operating_points=None) -> Path:
    """Pooled one-vs-rest ROC curves for any-disease and RA, with chosen operating points.

    ``operating_points`` maps a task (``"any_disease"``, ``"ra"``) to ``{label: point}``, each
    point a dict with ``"sensitivity"`` and ``"specificity"`` (as :func:`clinical.operating_point`
    returns), drawn as markers on that task's panel.
    """
    y, prob = np.asarray(y), np.asarray(prob, np.float64)
    operating_points = operating_points or {}
    fig = Figure(figsize=(8.4, 4.0), dpi=100)
    for i, (task, spec) in enumerate(TASKS.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        positive, score = spec.positive(y), spec.score(prob)
        title = spec.title
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


def plot_reliability(path, y, probs: dict, eces: dict, n_bins: int = ECE_BINS) -> Path:
    """Top-label reliability diagram of each ``{label: probabilities}`` (e.g. before and
    after calibration), its ECE (``eces[label]``, from results.json) in the legend, with a
    photo-count histogram of the confidence bins underneath."""
    fig = Figure(figsize=(4.6, 5.2), dpi=100)
    ax = fig.add_axes((0.14, 0.36, 0.8, 0.56))
    hist = fig.add_axes((0.14, 0.09, 0.8, 0.17), sharex=ax)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    width = 1.0 / n_bins
    share = 1.0 / max(len(probs), 1)
    for k, (label, prob) in enumerate(probs.items()):
        curve = reliability_curve(y, prob, n_bins)
        ok = curve["count"] > 0
        ece = eces.get(label)
        note = f" (ECE {n_bins} bins {ece:.3f})" if ece is not None else ""
        ax.plot(curve["confidence"][ok], curve["accuracy"][ok], "o-", color=f"C{k}",
                label=f"{label}{note}")
        hist.bar(curve["edges"][:-1] + width * share * k, curve["count"], width * share,
                 align="edge", color=f"C{k}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy of the top label",
           title=f"reliability ({len(np.asarray(y))} photos, {n_bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="top-label confidence", ylabel="photos")
    fig.savefig(path)
    return Path(path)


def plot_decision_curve(path, curves: dict, title: str = "") -> Path:
    """Decision curves, one panel per task: net benefit of the model, of treating everyone
    and of treating no one (0) against the threshold probability. ``curves`` is
    ``results.json["decision_curve"]``: ``{task: [{"threshold", "net_benefit",
    "treat_all"}]}``. The y axis is cut below at -0.05 (treat all falls without bound as
    the threshold nears 1) and above at the largest net benefit, the prevalence."""
    fig = Figure(figsize=(8.4, 3.8), dpi=100)
    for i, (task, rows) in enumerate(curves.items()):
        ax = fig.add_subplot(1, len(curves), i + 1)
        t = np.array([r["threshold"] for r in rows], np.float64)
        get = lambda key: np.array([np.nan if r[key] is None else r[key] for r in rows],
                                   np.float64)
        model, everyone = get("net_benefit"), get("treat_all")
        ax.plot(t, model, color="C0", label="model")
        ax.plot(t, everyone, color="C1", linestyle="--", label="treat all")
        ax.plot(t, np.zeros_like(t), color="0.4", linestyle=":", label="treat none")
        top = np.nanmax(np.concatenate([model, everyone, [0.0]]))
        ax.set(xlim=(0, 1), ylim=(-0.05, max(top, 0.0) + 0.05), xlabel="threshold probability",
               ylabel="net benefit",
               title=TASKS[task].title if task in TASKS else task)
        ax.legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_acc_vs_plus(points: list[dict], loss_labels: list[str], decision_markers: dict,
                     path) -> Path:
    """Accuracy against custom_plus (lower is safer), one labelled point per cell and
    decision. ``points``: ``{"plus", "accuracy", "label", "loss": index into loss_labels,
    "decision": key of decision_markers}``; ``decision_markers``: ``{key: (marker, name)}``."""
    fig = Figure(figsize=(7, 5), dpi=100)
    ax = fig.add_subplot()
    for p in points:
        ax.scatter(p["plus"], p["accuracy"], marker=decision_markers[p["decision"]][0],
                   color=f"C{p['loss']}", s=40)
        ax.annotate(p["label"], (p["plus"], p["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    for li, label in enumerate(loss_labels):  # legend proxies: colour = loss, marker = rule
        ax.scatter([], [], color=f"C{li}", marker="o", label=label)
    for marker, name in decision_markers.values():
        ax.scatter([], [], color="gray", marker=marker, label=name)
    ax.set(xlabel="custom_plus (summed under-severity rates, lower is safer)",
           ylabel="accuracy", title="accuracy vs under-severity, mean over folds")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# --------------------------------------------------------------------------- Grad-CAM
def photo_size(path) -> tuple[int, int]:
    """(width, height) of the photo as the loader sees it (EXIF orientation applied)."""
    from PIL import Image
    with Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
    return w, h


def gradcam_overlay(path, cam: np.ndarray, *, max_side: int = 1024, alpha: float = 0.45,
                    colormap: str = "jet"):
    """The photo at ``path`` (long side at most ``max_side``) with ``cam`` blended over it
    as a heat map (opacity ``alpha``), as a PIL image.

    ``cam`` is on the model's letterboxed square input; it is upsampled to that square at
    display size and the padding is cut away again, so heat and photo line up.
    """
    import matplotlib
    from PIL import Image

    from handjax.data.decode import decode_image
    w, h = photo_size(path)
    side = min(max(w, h), max_side)
    square = decode_image(path, side)          # same letterbox as the model's input
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    y, x = (side - nh) // 2, (side - nw) // 2
    heat = Image.fromarray(np.asarray(cam, np.float32))
    heat = np.asarray(heat.resize((side, side), Image.Resampling.BILINEAR))
    rgb = matplotlib.colormaps[colormap](np.clip(heat, 0, 1))[..., :3] * 255.0
    blend = (1 - alpha) * square.astype(np.float32) + alpha * rgb
    out = np.clip(blend + 0.5, 0, 255).astype(np.uint8)[y:y + nh, x:x + nw]
    return Image.fromarray(out)
