"""Run a finished run's fold models on your own photos, with a Grad-CAM of where they looked.

    python -m handjax.predict --workdir runs/vgg19_custom photo.jpg [more.jpg ...]
    python -m handjax.predict --workdir runs/vgg19_custom --json photo.jpg

The K fold models of the run form an ensemble: their class probabilities are averaged, and
each photo gets the argmax class and the minimum-expected-cost class (``losses.DEFAULT_COST``,
the same decision the run's ``cnn_mec`` column scores). A Grad-CAM overlay PNG per photo goes
to ``--out`` (default ``<workdir>/gradcam/``): for the ensemble's argmax class, the gradient
of each fold's class score (logit) with respect to the backbone's final feature map gives one
weight per channel (its spatial mean); the ReLU of the weighted channel sum, averaged over
folds, is upsampled to the photo and blended over it.

This is a research tool trained on the data named in the run's header (synthetic hands by
default, which are medically meaningless); it is not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from handjax import console, data, losses, metrics
from handjax.data import decode
from handjax.evaluation.scoring import probabilities
from handjax.model.ensemble import TrainedRun, load_run
from handjax.models import backbones
from handjax.models.classifier import Classifier

CHUNK = 8          # photos per forward pass (padded, so every chunk reuses one compilation)
MAX_SIDE = 1024    # overlays of big phone photos are written at most this large
ALPHA = 0.45       # heat-map opacity in the overlay


class Prediction(NamedTuple):
    """One photo's ensemble result; ``cam`` [h, w] in [0, 1] on the model's square input."""

    photo: str
    probs: np.ndarray
    argmax: int
    min_cost: int
    cam: np.ndarray


# --------------------------------------------------------------------------- Grad-CAM
def grad_cam(score_fn: Callable, feats) -> jax.Array:
    """Grad-CAM of one image: ``feats`` [h, w, C] -> map [h, w] scaled to [0, 1].

    ``score_fn(feats) -> scalar`` is the class score. Channel weights are the spatial mean
    of its gradient; the map is the ReLU of the weighted channel sum, divided by its peak
    (an all-zero map stays zero: no region speaks for the class).
    """
    feats = jnp.asarray(feats, jnp.float32)
    weights = jnp.mean(jax.grad(score_fn)(feats), axis=(0, 1))
    cam = jax.nn.relu(jnp.einsum("hwc,c->hw", feats, weights))
    peak = jnp.max(cam)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def fold_forward(model: Classifier, loss_name: str) -> Callable:
    """``f(v, x) -> (probs [B, n], cams [B, n, h, w])`` for one fold's variables ``v``.

    ``x`` are raw RGB images in [0, 255]; ``cams[:, c]`` is the Grad-CAM of class ``c``.
    The class score is the head applied to the spatial mean of the final feature map, so
    the gradient is taken with respect to that map.
    """
    def forward(v, x):
        bvars = {"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]["backbone"]}
        feats = model.backbone.apply(bvars, backbones.preprocess(model.backbone_name, x),
                                     train=False).astype(jnp.float32)

        def logits_of(f):  # one image's feature map [h, w, C] -> logits [n]
            pooled = jnp.mean(f, axis=(0, 1))[None]
            return model.apply(v, pooled, train=False, mode="pooled")[0][0]

        def score(g, c):  # class c's score: its logit, or its log-probability (ordinal)
            if model.ordinal:
                return jnp.log(probabilities(loss_name, logits_of(g)[None])[0, c] + 1e-12)
            return logits_of(g)[c]

        probs = probabilities(loss_name, jax.vmap(logits_of)(feats))
        classes = jnp.arange(model.num_classes)
        cams = jax.vmap(lambda f: jax.vmap(
            lambda c: grad_cam(lambda g: score(g, c), f))(classes))(feats)
        return probs, cams

    return jax.jit(forward)


def ensemble(run: TrainedRun, images: np.ndarray, cost=losses.DEFAULT_COST):
    """``(probs [B, n], argmax [B], min_cost [B], cam [B, h, w])`` of the fold ensemble.

    ``probs`` is the mean of the folds' probabilities; ``cam`` the mean of the folds' own
    Grad-CAMs (each in [0, 1], so every fold counts equally) for the ensemble's argmax
    class, rescaled to [0, 1]. ``min_cost`` is the minimum-expected-cost decision on
    ``probs`` under ``cost``.
    """
    forward = fold_forward(run.model, run.run_spec.loss.name)
    n_folds = jax.tree.leaves(run.variables)[0].shape[0]
    probs, cams = [], []
    for k in range(n_folds):  # a loop: vmap over conv weights is slow on XLA:CPU
        v = jax.tree.map(lambda a, k=k: a[k], run.variables)
        p, c = chunked(forward, v, images)
        probs.append(p)
        cams.append(c)
    probs, cams = np.mean(probs, axis=0), np.mean(cams, axis=0)
    chosen = probs.argmax(-1)
    cam = cams[np.arange(len(images)), chosen]
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0)
    mec = np.asarray(metrics.min_expected_cost(jnp.asarray(probs), jnp.asarray(cost)))
    return probs, chosen, mec, cam


def chunked(forward, v, images):
    """``forward(v, x) -> (a, b)`` over ``images`` in padded chunks of :data:`CHUNK` (one
    compilation for every chunk), the two outputs concatenated."""
    outs = []
    for i in range(0, len(images), CHUNK):
        x = images[i:i + CHUNK]
        pad = CHUNK - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        p, c = forward(v, jnp.asarray(x))
        outs.append((np.asarray(p)[:CHUNK - pad], np.asarray(c)[:CHUNK - pad]))
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def predict(run: TrainedRun, photos) -> list[Prediction]:
    """Decodes ``photos`` (paths) like the data loader and runs the fold ensemble on them.

    Every photo is decoded first, so an unreadable one raises ``data.DataError`` before
    any model runs.
    """
    size = run.run_spec.data.image_size
    images = np.stack([data.decode_image(p, size) for p in photos])
    probs, chosen, mec, cams = ensemble(run, images)
    return [Prediction(str(p), probs[i], int(chosen[i]), int(mec[i]), cams[i])
            for i, p in enumerate(photos)]


# --------------------------------------------------------------------------- overlays
def _photo_size(path) -> tuple[int, int]:
    """(width, height) of the photo as the loader sees it (EXIF orientation applied)."""
    with Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
    return w, h


def overlay(path, cam: np.ndarray, *, max_side: int = MAX_SIDE, alpha: float = ALPHA,
            colormap: str = "jet") -> Image.Image:
    """The photo (long side at most ``max_side``) with ``cam`` blended over it as a heat map.

    ``cam`` is on the model's letterboxed square input; it is upsampled to that square at
    display size and the padding is cut away again, so heat and photo line up.
    """
    import matplotlib
    w, h = _photo_size(path)
    side = min(max(w, h), max_side)
    square = data.decode_image(path, side)          # same letterbox as the model's input
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    y, x = (side - nh) // 2, (side - nw) // 2
    heat = Image.fromarray(np.asarray(cam, np.float32))
    heat = np.asarray(heat.resize((side, side), Image.Resampling.BILINEAR))
    rgb = matplotlib.colormaps[colormap](np.clip(heat, 0, 1))[..., :3] * 255.0
    blend = (1 - alpha) * square.astype(np.float32) + alpha * rgb
    out = np.clip(blend + 0.5, 0, 255).astype(np.uint8)[y:y + nh, x:x + nw]
    return Image.fromarray(out)


def _overlay_path(out_dir: Path, photo: str, taken: set) -> Path:
    stem = Path(photo).stem or "photo"
    path, i = out_dir / f"{stem}_gradcam.png", 1
    while path in taken:  # two photos with one name in different folders
        path, i = out_dir / f"{stem}_{i}_gradcam.png", i + 1
    taken.add(path)
    return path


def write_overlays(preds: list[Prediction], out_dir) -> list[Path]:
    """One ``<stem>_gradcam.png`` per prediction in ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set = set()
    paths = []
    for p in preds:
        path = _overlay_path(out_dir, p.photo, taken)
        overlay(p.photo, p.cam).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- output
def display_names(class_names) -> list[str]:
    """Readable names for the run's classes ("ra" -> "Rheumatoid arthritis")."""
    table = dict(zip(data.CLASSES, data.DISPLAY_NAMES))
    return [table.get(c, c) for c in class_names]


def disclaimer(results: dict) -> str:
    """The sentence every output carries: what the models were trained on, and what they are not."""
    d = results.get("data", {})
    counts = ", ".join(f"{k} {v}" for k, v in d.get("class_counts", {}).items())
    source = d.get("source", "?")
    note = " (synthetic hands, medically meaningless)" if source == "synthetic" else ""
    return (f"Research tool, not a diagnosis: these models were trained on {source}{note} "
            f"with class counts {counts}. See a doctor about any concern for your hands.")


def as_json(run: TrainedRun, preds, overlays) -> dict:
    """The machine-readable form of the output (``--json``)."""
    names = list(run.results["data"]["class_names"])
    r = run.results
    return {
        "disclaimer": disclaimer(r),
        "run": {k: r.get(k) for k in ("name", "model", "loss", "weights", "image_size",
                                      "n_folds", "data")},
        "cost": np.asarray(losses.DEFAULT_COST).tolist(),
        "predictions": [{
            "photo": p.photo,
            "probabilities": {n: float(v) for n, v in zip(names, p.probs)},
            "argmax": names[p.argmax],
            "min_expected_cost": names[p.min_cost],
            "gradcam": str(o),
        } for p, o in zip(preds, overlays)],
    }


def as_table(run: TrainedRun, preds, overlays) -> str:
    """The human-readable form: header, one row per photo, disclaimer."""
    r = run.results
    names = display_names(r["data"]["class_names"])
    header = ["photo", *names, "argmax", "min expected cost"]
    rows = [[p.photo, *(f"{v:.3f}" for v in p.probs), names[p.argmax],
             names[p.min_cost]] for p in preds]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
    lines = [f"{r.get('n_folds', '?')}-fold ensemble of run {r.get('name', '?')} "
             f"({r.get('model', '?')}, {r.get('loss', '?')} loss, input "
             f"{r.get('image_size', '?')} px)", "", fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    lines += ["", "Grad-CAM overlays (argmax class): "
              + ", ".join(str(o) for o in overlays), "", disclaimer(r)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def parse_args(argv):
    from handjax.cli.launch import dash_hint
    parser = argparse.ArgumentParser(
        prog="python -m handjax.predict",
        description="Classify hand photos with a finished run's fold ensemble and write "
                    "Grad-CAM overlays. A research tool, not a diagnosis.")
    parser.add_argument("--workdir", required=True, help="a finished run (python launch.py)")
    parser.add_argument("--out", default=None,
                        help="folder for the overlay PNGs (default <workdir>/gradcam)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("photos", nargs="+", help="photo files (jpg, png, ...); put -- "
                        "before a name that begins with -")
    return parser.parse_args(dash_hint(parser, argv))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from handjax import user_errors
    from handjax.data.folders import claim_output, resolve_path
    from handjax.train import workdir as workdirs
    try:   # the photos first: a bad one is named before the models load
        photos, unreadable = decode.split_readable(args.photos)
        if not photos:
            raise unreadable[0]
        inputs = {"workdir": str(resolve_path(args.workdir))}
        # a killed run is "unfinished", not "results.json not found"; --out is checked too
        out = workdirs.check_output_target(args.out or Path(args.workdir) / "gradcam",
                                           args.workdir, "predict", inputs)
        run = load_run(args.workdir)
        preds = predict(run, photos)
        try:
            claim_output(out, "predict", inputs)   # checked again, then marked
            overlays = write_overlays(preds, out)
        except OSError as e:
            raise data.DataError(f"cannot write the overlays into {out} ({e.strerror}); "
                                 "choose a folder you can write to with --out") from e
    except user_errors() as e:  # one clear line, no traceback (HANDJAX_DEBUG=1 shows it)
        if os.environ.get("HANDJAX_DEBUG"):
            raise
        console.error(str(e))
        return 1
    if args.json:
        print(json.dumps(as_json(run, preds, overlays), indent=2))
    else:
        print(as_table(run, preds, overlays))
    for e in unreadable:   # the good photos answered above; each bad one named, exit 1
        console.error(f"{e} (left out; the other photos were scored)")
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
