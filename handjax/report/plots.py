"""Every figure of handjax, one function a PNG: confusion matrices, learning curves, ROC
curves with the frozen operating points, reliability diagrams, decision curves and the
study's accuracy-vs-under-severity scatter.

Each takes numbers already computed (from ``results.json``, ``predictions.csv`` or
``metrics.jsonl``) and draws them with matplotlib ``Figure`` objects (Agg canvas, no pyplot
state), written straight to ``path``. Nothing here computes a figure a table reports.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from handjax.data import overlay
from handjax.evaluation import TASKS, reliability_curve
from handjax.evaluation.clinical import ECE_BINS


def wrap_title(text: str, width_in: float, fontsize: float = 12.0) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (a
    character of DejaVu Sans averages under 0.6 em): a long run name or folder path is
    wrapped, never clipped at the figure's edge. Existing line breaks are kept; a path
    is broken at its slashes where it can be."""
    chars = max(int(width_in * 72 / (0.6 * fontsize)), 10)
    lines = []
    for line in str(text).splitlines() or [""]:
        spaced = line.replace("/", "/\0 ")   # a marked break chance after each slash
        lines += [w.replace("\0 ", "").replace("\0", "") for w in textwrap.wrap(
            spaced, chars, break_on_hyphens=False) or [""]]
    return "\n".join(lines)


def plot_confusion(cm, class_names, title: str, path) -> Path:
    """:func:`confusion_figure` as a PNG."""
    confusion_figure(cm, class_names, title).savefig(path)
    return Path(path)


def confusion_figure(cm, class_names, title: str) -> Figure:
    """Heat map of ``cm`` with counts, under-severity cells (i > j) framed in red; a long
    title is wrapped to the figure's width."""
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
           yticklabels=class_names, xlabel="predicted", ylabel="true")
    ax.set_title(wrap_title(title, 4.0, 10), fontsize=10)
    fig.tight_layout()
    return fig


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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no epoch 1.5
    fig.suptitle("train (solid), test fold (dashed, not for tuning), inner val (dotted)",
                 fontsize="medium")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_roc(path, y, prob, operating_points=None, title: str = "") -> Path:
    """Pooled one-vs-rest ROC curves for any-disease and RA, with chosen operating points;
    ``title`` (a validation's name, say) above both panels.

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
               title=f"{spec.title} (n={len(y)}, {int(positive.sum())} positive)")
        ax.legend(loc="lower right", fontsize=7)
    if title:
        fig.suptitle(wrap_title(title, 8.2, 9), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# Each curve of a reliability diagram its own marker: a hollow circle around a filled square
# stays readable where two curves coincide (calibration changed nothing).
_RELIABILITY_MARKERS = (dict(marker="o", markersize=9, fillstyle="none", linewidth=2.2),
                        dict(marker="s", markersize=4, linewidth=1.0))


def plot_reliability(path, y, probs: dict, eces: dict, n_bins: int = ECE_BINS,
                     title: str = "") -> Path:
    """Top-label reliability diagram of each ``{label: probabilities}`` (e.g. before and
    after calibration), its ECE (``eces[label]``, from results.json) in the legend, with a
    photo-count histogram of the confidence bins underneath; ``title`` (a validation's
    name, say) says whose photos they are."""
    fig = Figure(figsize=(4.6, 5.2 + (0.5 if title else 0.0)), dpi=100)
    top = 0.92 - (0.09 if title else 0.0)
    ax = fig.add_axes((0.14, 0.36, 0.8, top - 0.36))
    hist = fig.add_axes((0.14, 0.09, 0.8, 0.17), sharex=ax)
    if title:
        fig.suptitle(wrap_title(title, 4.4, 9), fontsize=9, y=0.99, va="top")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    width = 1.0 / n_bins
    share = 1.0 / max(len(probs), 1)
    for k, (label, prob) in enumerate(probs.items()):
        curve = reliability_curve(y, prob, n_bins)
        ok = curve["count"] > 0
        ece = eces.get(label)
        note = f" (ECE {n_bins} bins {ece:.3f})" if ece is not None else ""
        style = _RELIABILITY_MARKERS[min(k, len(_RELIABILITY_MARKERS) - 1)]
        ax.plot(curve["confidence"][ok], curve["accuracy"][ok], "-", color=f"C{k}",
                label=f"{label}{note}", zorder=2 + k, **style)
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
        # the model wide and underneath, the references thin and dashed on top: where the
        # model equals treat all (or none) both stay visible
        ax.plot(t, model, color="C0", linewidth=4.0, alpha=0.55, zorder=2, label="model")
        ax.plot(t, everyone, color="C1", linestyle="--", linewidth=1.3, zorder=3,
                label="treat all")
        ax.plot(t, np.zeros_like(t), color="0.25", linestyle=":", linewidth=1.3, zorder=3,
                label="treat none")
        top = np.nanmax(np.concatenate([model, everyone, [0.0]]))
        ax.set(xlim=(0, 1), ylim=(-0.05, max(top, 0.0) + 0.05), xlabel="threshold probability",
               ylabel="net benefit",
               title=TASKS[task].title if task in TASKS else task)
        ax.legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(wrap_title(title, 8.2, 9), fontsize=9)
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


def gradcam_overlay(path, cam: np.ndarray, *, caption: str | None = None, max_side: int = 1024,
                    alpha: float = overlay.ALPHA):
    """The photo at ``path`` (long side at most ``max_side``) with ``cam`` blended over it
    as a heat map (opacity ``alpha``), as a PIL image; with ``caption`` (e.g. the file name,
    the class and its probability) a band under it carries the caption and a colour bar
    saying which colours mean little and much of the class's evidence.

    ``cam`` is on the model's letterboxed square input; it is upsampled to that square at
    display size and the padding is cut away again, so heat and photo line up.
    """
    import matplotlib

    from handjax.data.decode import decode_image
    w, h = photo_size(path)
    side = min(max(w, h), max_side)
    square = decode_image(path, side)          # same letterbox as the model's input
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    y, x = (side - nh) // 2, (side - nw) // 2
    out = overlay.heat_overlay(square[y:y + nh, x:x + nw], cam, alpha)
    return out if caption is None else _captioned(out, caption, matplotlib.colormaps["jet"])


def _captioned(image, caption: str, cmap):
    """``image`` above a white band: ``caption`` (wrapped to the width) and a colour bar
    from "low" to "high" Grad-CAM evidence, sized to be readable at the image's own size."""
    from PIL import Image, ImageDraw, ImageFont
    w, h = image.size
    size = max(12, min(28, w // 28))
    font = ImageFont.load_default(size=size)
    per_line = max(12, int(w / (0.55 * size)))
    lines = textwrap.wrap(caption, per_line) or [""]
    pad, bar_h = size // 2, max(8, size // 2)
    band = pad + len(lines) * (size + 4) + pad + bar_h + pad
    canvas = Image.new("RGB", (w, h + band), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    ty = h + pad
    for line in lines:
        draw.text((pad, ty), line, fill="black", font=font)
        ty += size + 4
    ty += pad
    labelled = w >= 160   # "low" and "high" beside the bar where they fit; else the caption says
    margin = 3 * size if labelled else 0
    left, right = pad + margin, w - pad - margin
    ramp = cmap(np.linspace(0, 1, max(2, right - left)))[:, :3] * 255
    bar = np.repeat(ramp[None].astype(np.uint8), bar_h, axis=0)
    canvas.paste(Image.fromarray(bar), (left, ty))
    if labelled:
        draw.text((pad, ty - 2), "low", fill="black", font=font)
        draw.text((right + size // 3, ty - 2), "high", fill="black", font=font)
    return canvas
