"""External validation: a finished run's fold models applied to a second photo set (another
clinic, another phone), scored like a training run.

    python -m handjax.validate --workdir runs/vgg19_custom --data /photos/clinic_b \\
        [--metadata clinic_b.csv] --out runs/vgg19_custom/validate_clinic_b [--drop-overlap]

``--data`` is an ImageFolder like the training one (``<class>/<any depth>/*.jpg``, class
folders named as the run's, or as its ``data.class_map`` maps them). A class may have no
photo: the tasks the set can assess are run, and one line says which it skips
(:func:`handjax.evaluation.clinical.assessable`). The photos' native sizes are recorded
beside the training photos' (``results.json["data"]["native_size"]``), with a warning when
they are far apart (:mod:`handjax.data.native`). ``--metadata`` is a CSV like the training
one (``file``, optional ``subject``, subgroup columns); without it every photo is its own
subject.

Each photo is scored by the run's locked model (``RUN/model/``, :mod:`handjax.model.locked`),
the one ``predict`` and the server use: no photo of the new set was seen by any of its fold
models, so the ``fold`` column of ``predictions.csv`` is -1 for every row. Its rules:

- ``cnn_calibrated``: the locked probabilities (the mean over the fold models of their
  probabilities scaled by the run's one locked temperature), decided by argmax;
- ``cnn_mec``: the locked model's minimum-expected-cost decision on them;
- ``cnn``: the mean of the fold models' raw probabilities, argmax (before calibration);
- ``svm``: each fold's SVM refitted exactly as the run fitted it
  (:func:`handjax.evaluation.scoring.svm_fold_probabilities`: that fold's training split, the pooled
  features of that fold's fine-tuned backbone, Platt scaling cross-validated by subject);
  the probabilities are the mean of the folds' Platt probabilities, and the decision is their
  argmax.

Each locked operating threshold (chosen in development on the run's pooled out-of-fold
predictions, then frozen) is applied to the new photos:
``results.json["locked_operating_points"][task]`` holds, per threshold, the sensitivity and
specificity it reaches here with subject-bootstrap CIs.

``--out`` gets ``predictions.csv`` (the training run's columns), ``results.json`` (filled by
the registered evaluators of :mod:`handjax.evaluation.evaluators`: the ``clinical`` block with
subject-bootstrap 95% CIs, the locked operating points, the calibration intercept and slope
per task, the decision curves, subgroups by metadata column) and ``results.md`` with the
PNGs (:func:`handjax.report.markdown.write`, the same tail a training run ends with).

Overlap guard: a photo of the new set that is the same photo as a training photo, or a
near-duplicate of one (mirrored, flipped upside down, rotated by 90, 180 or 270 degrees,
cropped, re-encoded: the perceptual hash the run's folds are grouped by, compared in all
eight orientations, :func:`handjax.data.splits.copies_of`) would score the models on what
they learned; it is refused, both files named and the turn said. ``--drop-overlap`` leaves
such photos out, lists them, and goes on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from handjax import cli, console
from handjax import evaluation as clinical
from handjax.data.cohort import (Cohort, data_fingerprint, load_cohort, mixed_subjects,
                                 say_mixed_subjects)
from handjax.data.folders import claim_output, resolve_path
from handjax.data.native import native_size_record
from handjax.data.records import CLASSES, DataError, Examples
from handjax.data.sources import (class_map_arg, describe, load_folder, load_metadata,
                                  merged_class_map, select)
from handjax.data.splits import copies_of
from handjax.data.synthetic import SYNTHETIC_SIZE
from handjax.errors import RunError
from handjax.evaluation import evaluators
from handjax.evaluation.scoring import svm_fold_probabilities
from handjax.model.ensemble import read_json
from handjax.model.locked import LockedModel, load_model
from handjax.train import workdir as workdirs

FOLD = -1   # predictions.csv's fold column: every fold model scores every new photo


# --------------------------------------------------------------------------- input checks
def check_run_classes(class_names) -> None:
    """A run trained on other classes than normal / heberden / ra cannot be scored by the
    triage tasks (any disease, RA)."""
    if tuple(class_names) != CLASSES:
        raise RunError(f"the run was trained on classes {', '.join(map(str, class_names))}; "
                       f"validate scores runs trained on {', '.join(CLASSES)}")


def check_folder_classes(root, class_map=None) -> None:
    """The class folders of ``root`` must be the run's classes (or folders its
    ``data.class_map`` maps to them); an empty or missing folder is one line too."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder")
    dirs = sorted(d.name for d in root.iterdir()
                  if d.is_dir() and not d.name.startswith((".", "_")))
    if not dirs:
        raise DataError(f"--data {root} is empty: expected class folders "
                        f"{', '.join(CLASSES)} holding photos")
    known = set(CLASSES) | set(class_map or {})
    unknown = [d for d in dirs if d not in known and d.lower() not in known]
    if unknown:
        mapped = (f" (and the folders it mapped: {', '.join(sorted(class_map))})"
                  if class_map else "")
        raise DataError(f"--data {root}: class folder(s) {', '.join(unknown)} the run did not "
                        f"have; it was trained on {', '.join(CLASSES)}{mapped}")


def overlapping(train: Examples, new: Examples) -> list[tuple[int, int, str]]:
    """``[(new index, training index, how)]``: each new photo that copies a training photo,
    turned any way (:func:`handjax.data.splits.copies_of`: mirrored, flipped, rotated by
    90/180/270°, cropped, re-encoded), ``how`` naming the turn."""
    return copies_of(train.images, new.images)


def overlap_message(pairs: list[tuple], data, limit: int = 10) -> str:
    """One line naming each new photo and the training photo it copies (and how, where
    ``pairs`` has a third item)."""
    shown = "; ".join(f"{p[0]} ~ training photo {p[1]}"
                      + (f" ({p[2]})" if len(p) > 2 else "") for p in pairs[:limit])
    more = f"; and {len(pairs) - limit} more" if len(pairs) > limit else ""
    return (f"{len(pairs)} photo(s) of --data {data} are the same as or near-duplicates of "
            f"the run's training photos: {shown}{more}; remove them or pass --drop-overlap")


def subset(examples: Examples, keep: np.ndarray) -> Examples:
    """The photos at ``keep`` (index array), in order (with the record of those the loader
    left out)."""
    return select(examples, keep)


# --------------------------------------------------------------------------- scoring
def svm_ensemble(pooled_train: np.ndarray, pooled_new: np.ndarray, cohort: Cohort, run_spec,
                 ) -> np.ndarray:
    """Mean over folds of the Platt probabilities [N_new, C] of each fold's SVM, refitted as
    the run fitted it: on that fold's training split's pooled features from that fold's
    model (the new photos play the test fold)."""
    n_train = pooled_train.shape[1]
    new = np.arange(n_train, n_train + pooled_new.shape[1])
    pooled = np.concatenate([pooled_train, pooled_new], axis=1)
    labels = np.concatenate([cohort.labels, np.zeros(len(new), cohort.labels.dtype)])
    subjects = np.concatenate([np.asarray(cohort.subjects, str), np.full(len(new), "")])
    folds = [(tr, new) for tr, _ in cohort.folds]   # the new photos' labels are never read
    svm = run_spec.svm
    out = svm_fold_probabilities(pooled, labels, folds, subjects=subjects, kernel=svm.kernel,
                                 C=svm.C, class_weight=svm.class_weight, seed=run_spec.seed,
                                 max_train=svm.max_train)
    return np.mean([p for _, p in out], axis=0)


def locked_predictions(model: LockedModel, cohort: Cohort, new: Examples, subjects,
                       metadata: dict) -> clinical.Predictions:
    """Every new photo scored by the locked model, for every rule (module docstring)."""
    logits, pooled_new = model.member_outputs(np.asarray(new.images))
    _, pooled_train = model.member_outputs(np.asarray(cohort.examples.images))
    raw = model.member_probabilities(logits).mean(0)
    probs = {"cnn": raw / raw.sum(-1, keepdims=True), "cnn_calibrated": model.calibrated(logits),
             "svm": svm_ensemble(pooled_train, pooled_new, cohort, model.run.run_spec)}
    probs["svm"] = probs["svm"] / probs["svm"].sum(-1, keepdims=True)
    decided = model.decide(probs["cnn_calibrated"])
    pred = {"cnn": probs["cnn"].argmax(-1), "cnn_calibrated": decided["argmax"],
            clinical.MEC_RULE: decided["mec"], "svm": probs["svm"].argmax(-1)}
    n = len(new.labels)
    return clinical.Predictions(
        file=np.asarray(new.ids, str), subject=np.asarray(subjects, str),
        fold=np.full(n, FOLD), label=np.asarray(new.labels, np.int64), probs=probs, pred=pred,
        extra=dict(metadata), class_names=tuple(new.class_names))


# --------------------------------------------------------------------------- results
def validation_results(model: LockedModel, preds: clinical.Predictions, data_desc: dict,
                       dropped: list[dict], workdir) -> dict:
    """``results.json`` of a validation: the run's header, the new set's description, the
    photos left out, and the registered evaluators' blocks (subject-bootstrap CIs with the
    run's ``eval.bootstrap`` resamples and seed)."""
    spec, card = model.run.run_spec, model.card
    r = model.run.results
    context = evaluators.Context(n_boot=spec.eval.bootstrap, seed=spec.seed, rules=model.rules,
                                 operating_points=card["operating_points"])
    blocks = evaluators.evaluate(preds, context, evaluators.VALIDATION)
    lines = blocks.pop("calibration_lines")
    return clinical.json_safe({
        "name": f"{r.get('name', '?')} validated on {data_desc['source']}",
        "run": {"workdir": str(workdir), "members": model.n_members,
                **{k: r.get(k) for k in ("name", "model", "loss", "weights", "image_size",
                                         "n_folds", "repeats", "seed")},
                "data_source": r.get("data", {}).get("source")},
        "n_folds": r.get("n_folds"), "data": data_desc,
        "overlap_dropped": dropped,
        "model": "the run's locked model (model/model.json): the mean over its "
                 f"{model.n_members} fold models of their probabilities scaled by one "
                 f"temperature T = {model.temperature:.6g}",
        **blocks,
        "calibration": {"temperature": model.temperature,
                        "fitted_on": f"the run's: {card['calibration']['fitted_on']}; "
                                     "applied unchanged to the new photos",
                        **lines},
    })


def write_outputs(out: Path, preds: clinical.Predictions, results: dict) -> list[Path]:
    """predictions.csv and results.json, then the shared report tail (results.md, PNGs)."""
    from handjax.report import markdown as report
    out.mkdir(parents=True, exist_ok=True)
    written = [clinical.write_predictions(out / "predictions.csv", preds)]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return written + [out / "results.json"] + report.write(out, preds, results)


# --------------------------------------------------------------------------- the command
def training_cohort(workdir: Path, run) -> Cohort:
    """The run's training photos and folds, rebuilt; refused when they are not the photos
    the run trained on (``ledger.json``): the SVM refit and the overlap guard need them."""
    spec = run.run_spec
    cohort = load_cohort(spec.data, spec.seed, spec.n_folds, spec.train.inner_val,
                         spec.repeats)
    want = read_json(workdir / workdirs.LEDGER).get("data")
    if data_fingerprint(cohort.examples) != want:
        raise RunError(f"the run's training photos ({spec.data.root or 'synthetic'}) differ "
                       "from the ones it trained on (ledger.json); restore them or retrain")
    return cohort


def load_new_set(data, run, metadata=None, extra_map=None,
                 ) -> tuple[Examples, np.ndarray, dict]:
    """The second photo set at the run's input size, its subjects and subgroup columns
    (its folders named as the run's classes, mapped by the run's ``data.class_map`` or by
    ``extra_map``, validate's ``--class-map``)."""
    spec = run.run_spec.data
    class_map = merged_class_map(spec.class_map, extra_map)
    check_folder_classes(data, class_map)
    new = load_folder(data, image_size=spec.image_size, on_error=spec.on_error,
                      class_map=class_map, min_per_class=0)
    if metadata:
        subjects, columns = load_metadata(metadata, new.ids)
    else:
        subjects, columns = np.asarray(new.ids, str), {}
    return new, np.asarray(subjects, str), columns


def validate(workdir, data, out, metadata=None, drop_overlap: bool = False,
             class_map=None) -> dict:
    """Score the run in ``workdir`` on the photos in ``data``; write everything to ``out``
    (refused when ``out`` holds a run, another command's results or photos: nothing is
    overwritten). ``class_map``: ``{folder: class}`` for the new set's folders. Returns the
    results.json record."""
    workdir, data = resolve_path(workdir), resolve_path(data)   # recorded resolved
    metadata = resolve_path(metadata) if metadata else None
    inputs = {"workdir": str(workdir), "data": str(data)}
    out = workdirs.check_output_target(out, workdir, "validate", inputs, outside=[data])
    model = load_model(workdir)
    run = model.run
    check_run_classes(model.classes)
    new, subjects, columns = load_new_set(data, run, metadata, class_map)
    source = str(data)
    console.say(f"validating run {run.results.get('name', workdir)} on {len(new.labels)} "
                f"photos of {source}")
    cohort = training_cohort(workdir, run)
    pairs = overlapping(cohort.examples, new)
    train_root = run.run_spec.data.root
    named = [(str(Path(data) / new.ids[j]),
              str(Path(train_root) / cohort.examples.ids[i]) if train_root
              else cohort.examples.ids[i], how) for j, i, how in pairs]
    if named and not drop_overlap:
        raise DataError(overlap_message(named, data))
    for file, old, how in named:
        console.say(f"left out {file}: a copy of training photo {old} ({how})")
    keep = np.setdiff1d(np.arange(len(new.labels)), [j for j, _, _ in pairs])
    if len(keep) == 0:
        raise DataError(f"every photo of --data {data} copies a training photo; nothing is "
                        "left to validate on")
    new, subjects = subset(new, keep), subjects[keep]
    columns = {c: np.asarray(v)[keep] for c, v in columns.items()}
    coverage, skipped = clinical.assessable(new.labels, f"--data {data}")
    sizes = native_size_record(data, new.ids, train_root, cohort.examples.ids,
                               run.run_spec.data.image_size, SYNTHETIC_SIZE)
    for line in (skipped, sizes["warning"]):
        if line:
            console.say(line)
    preds = locked_predictions(model, cohort, new, subjects, columns)
    mixed = mixed_subjects(subjects, new.labels, CLASSES)
    say_mixed_subjects(mixed)
    desc = {**describe(new, source=source), "class_names": list(CLASSES),
            "n_subjects": len(np.unique(subjects)), "coverage": {**coverage, "line": skipped},
            "native_size": sizes, "subjects_with_several_classes": mixed}
    dropped = [{"file": f, "training_file": o, "how": how} for f, o, how in named]
    results = validation_results(model, preds, desc, dropped, workdir)
    try:
        claim_output(out, "validate", inputs, outside=[data])   # checked again, then marked
        write_outputs(out, preds, results)
    except OSError as e:
        raise DataError(f"cannot write the validation into {out} ({e.strerror}); choose a "
                        "folder you can write to with --out") from e
    console.say(f"validation written to {out} (results.md)")
    return results


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m handjax.validate",
        description="Apply a finished run's locked model to a second photo set and score "
                    "it like the run (clinical metrics with subject-bootstrap CIs, "
                    "calibration intercept and slope, decision curves).")
    parser.add_argument("--workdir", required=True, help="a finished run (python launch.py)")
    parser.add_argument("--data", required=True, help="ImageFolder of the second photo set")
    parser.add_argument("--metadata", default=None,
                        help="CSV with file, subject and subgroup columns for --data")
    parser.add_argument("--out", required=True, help="folder for the validation's outputs")
    parser.add_argument("--class-map", default=None, type=class_map_arg,
                        help="folder:class,... for --data's class folders not named "
                             "normal, heberden, ra (e.g. OA:heberden,RA:ra)")
    parser.add_argument("--drop-overlap", action="store_true",
                        help="leave out photos that copy training photos (listed) instead "
                             "of refusing")
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    validate(args.workdir, args.data, args.out, args.metadata, args.drop_overlap,
             args.class_map)
    return 0


if __name__ == "__main__":
    cli.exit_process(main())
