"""Run a finished run's locked model on your own photos, with a Grad-CAM of where it looked.

    python -m handjax.predict --workdir runs/vgg19_custom photo.jpg [more.jpg ...]
    python -m handjax.predict --workdir runs/vgg19_custom --json photo.jpg

The run's locked model (``RUN/model/``, :mod:`handjax.model.locked`) gives each photo its
calibrated probabilities (the mean over the run's fold models of their probabilities scaled by
the one temperature fitted on the run's pooled out-of-fold predictions) and every decision
rule of the model: ``argmax``, ``mec`` (minimum expected cost under the card's cost matrix)
and one yes/no (1/0) per locked operating threshold (e.g. ``ra_sensitivity``: RA called where
p(RA) reaches the threshold chosen for sensitivity >= 0.9). ``validate`` and the server load
the same model, so a photo gets the same numbers from each. A Grad-CAM overlay PNG per photo
goes to ``--out`` (default ``<workdir>/gradcam/``): for the argmax class, the mean over the
fold models of their Grad-CAMs (:mod:`handjax.model.gradcam`), blended over the photo.

This is a research tool trained on the data named in the model card (synthetic hands by
default, which are medically meaningless); it is not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from handjax import cli, console, data
from handjax.data import decode
from handjax.model.locked import LockedModel, decision_value, display_names, load_model


class Prediction(NamedTuple):
    """One photo's result: ``file`` as given, locked ``probs`` [C], ``decisions`` {rule: int}
    and ``cam`` [h, w] in [0, 1] on the model's square input."""

    file: str
    probs: np.ndarray
    decisions: dict
    cam: np.ndarray


def predict(model: LockedModel, photos) -> list[Prediction]:
    """Decodes ``photos`` (paths) as training decoded them and runs the locked model.

    Every photo is decoded first, so an unreadable one raises ``data.DataError`` before
    any model runs.
    """
    images = np.stack([model.prepare(p) for p in photos])
    probs = model.probabilities(images)
    decisions = model.decide(probs)
    cams = model.grad_cam(images, decisions["argmax"])
    return [Prediction(str(p), probs[i], {r: int(d[i]) for r, d in decisions.items()}, cams[i])
            for i, p in enumerate(photos)]


# --------------------------------------------------------------------------- overlays
def _overlay_path(out_dir: Path, photo: str, taken: set) -> Path:
    stem = Path(photo).stem or "photo"
    path, i = out_dir / f"{stem}_gradcam.png", 1
    while path in taken:  # two photos with one name in different folders
        path, i = out_dir / f"{stem}_{i}_gradcam.png", i + 1
    taken.add(path)
    return path


def write_overlays(preds: list[Prediction], out_dir, class_names) -> list[Path]:
    """One ``<stem>_gradcam.png`` per prediction in ``out_dir``, captioned with the photo's
    name, its argmax class and that class's calibrated probability; returns the paths."""
    from handjax.report import plots
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = display_names(class_names)
    taken: set = set()
    paths = []
    for p in preds:
        path = _overlay_path(out_dir, p.file, taken)
        top = int(p.decisions["argmax"])
        caption = (f"{p.file}: {names[top]}, calibrated probability {p.probs[top]:.0%} "
                   "(colours: Grad-CAM evidence for that class, low to high; a research tool, "
                   "not a diagnosis)")
        plots.gradcam_overlay(p.file, p.cam, caption=caption).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- output
def disclaimer(card: dict) -> str:
    """The sentence every output carries: what the model was trained on, and what it is not."""
    d = card.get("cv_figures", {}).get("data") or {}
    counts = ", ".join(f"{k} {v}" for k, v in d.get("class_counts", {}).items())
    source = d.get("source", "?")
    note = " (synthetic hands, medically meaningless)" if source == "synthetic" else ""
    return (f"Research tool, not a diagnosis: this model was trained on {source}{note} "
            f"with class counts {counts}. See a doctor about any concern for your hands.")


def as_json(model: LockedModel, preds, overlays) -> dict:
    """The machine-readable form of the output (``--json``): per photo its ``file`` (as
    given), ``probabilities`` (class -> locked probability) and ``decisions``."""
    card = model.card
    return {
        "disclaimer": disclaimer(card),
        "model": {"name": card.get("name"), "kind": card.get("kind"),
                  "members": card.get("members", {}).get("n"), "model": card.get("model"),
                  "loss": card.get("loss"), "weights": card.get("weights"),
                  "image_size": model.image_size, "classes": list(model.classes),
                  "temperature": model.temperature,
                  "thresholds": {r: t for r, (_, t) in model.rules.items()},
                  "decision_rules": card.get("decision_rules"),
                  "data": card.get("cv_figures", {}).get("data")},
        "cost": model.cost.tolist(),
        "predictions": [{
            "file": p.file,
            "probabilities": {n: float(v) for n, v in zip(model.classes, p.probs)},
            "decisions": {r: decision_value(model, r, v) for r, v in p.decisions.items()},
            "gradcam": str(o),
        } for p, o in zip(preds, overlays)],
    }


def as_table(model: LockedModel, preds, overlays) -> str:
    """The human-readable form: header, one row per photo, disclaimer."""
    card = model.card
    names = display_names(model.classes)
    rules = list(preds[0].decisions) if preds else []
    header = ["photo", *names, *rules]
    show = lambda r, v: names[v] if r in ("argmax", "mec") else ("yes" if v else "no")
    rows = [[p.file, *(f"{v:.3f}" for v in p.probs),        # the path as given
             *(show(r, p.decisions[r]) for r in rules)] for p in preds]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
    thresholds = ", ".join(f"{r} = p >= {t:.3f}" for r, (_, t) in model.rules.items())
    lines = [f"locked model of run {card.get('name', '?')}: {card.get('kind', '?')} of "
             f"{card.get('members', {}).get('n', '?')} ({card.get('model', '?')}, "
             f"{card.get('loss', '?')} loss, input {model.image_size} px), calibrated "
             f"(T = {model.temperature:.3g})",
             "mec: minimum expected cost" + (f"; thresholds: {thresholds}" if thresholds else ""),
             "", fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    lines += ["", "Grad-CAM overlays (argmax class): "
              + ", ".join(str(o) for o in overlays), "", disclaimer(card)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def parse_args(argv):
    from handjax.cli.launch import dash_hint
    parser = argparse.ArgumentParser(
        prog="python -m handjax.predict",
        description="Classify hand photos with a finished run's locked model and write "
                    "Grad-CAM overlays. A research tool, not a diagnosis.")
    parser.add_argument("--workdir", required=True, help="a finished run (python launch.py)")
    parser.add_argument("--out", default=None,
                        help="folder for the overlay PNGs (default <workdir>/gradcam)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("photos", nargs="+", help="photo files (jpg, png, ...); put -- "
                        "before a name that begins with -")
    return parser.parse_args(dash_hint(parser, argv))


@cli.command
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from handjax.data.folders import claim_output, resolve_path
    from handjax.train import workdir as workdirs
    photos, unreadable = decode.split_readable(args.photos)   # a bad photo named first
    if not photos:
        raise unreadable[0]
    inputs = {"workdir": str(resolve_path(args.workdir))}
    # a killed run is "unfinished", not "results.json not found"; --out is checked too
    out = workdirs.check_output_target(args.out or Path(args.workdir) / "gradcam",
                                       args.workdir, "predict", inputs)
    model = load_model(args.workdir)
    preds = predict(model, photos)
    try:
        claim_output(out, "predict", inputs)   # checked again, then marked
        overlays = write_overlays(preds, out, model.classes)
    except OSError as e:
        raise data.DataError(f"cannot write the overlays into {out} ({e.strerror}); "
                             "choose a folder you can write to with --out") from e
    if args.json:
        print(json.dumps(as_json(model, preds, overlays), indent=2))
    else:
        print(as_table(model, preds, overlays))
    for e in unreadable:   # the good photos answered above; each bad one named, exit 1
        console.error(f"{e} (left out; the other photos were scored)")
    return 1 if unreadable else 0


if __name__ == "__main__":
    cli.exit_process(main())
