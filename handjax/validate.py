"""External validation: a finished run's fold models applied to a second photo set (another
clinic, another phone), scored like a training run.

    python -m handjax.validate --workdir runs/vgg19_custom --data /photos/clinic_b \\
        [--metadata clinic_b.csv] --out runs/vgg19_custom/validate_clinic_b [--drop-overlap]

``--data`` is an ImageFolder like the training one (``<class>/<any depth>/*.jpg``, class
folders named as the run's, or as its ``data.class_map`` maps them; every class needs at
least one photo). ``--metadata`` is a CSV like the training one (``file``, optional
``subject``, subgroup columns); without it every photo is its own subject.

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
near-duplicate of one (mirrored, cropped, re-encoded: the perceptual hash the run's folds
are grouped by, :func:`handjax.data.duplicate_groups`, here on the new photos together with
the run's training photos) would score the models on what they learned; it is refused, both
files named. ``--drop-overlap`` leaves such photos out, lists them, and goes on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from handjax import console
from handjax import evaluation as clinical
from handjax.data.cohort import Cohort, load_cohort
from handjax.data.records import CLASSES, DataError, Examples
from handjax.data.sources import describe, load_folder, load_metadata
from handjax.data.splits import duplicate_groups
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


def overlapping(train: Examples, new: Examples) -> list[tuple[int, int]]:
    """``[(new index, training index)]``: each new photo in a near-duplicate group
    (:func:`duplicate_groups` over both sets) that holds a training photo, paired with the
    first such training photo."""
    n_train = len(train.labels)
    groups = duplicate_groups(np.concatenate([np.asarray(train.images),
                                              np.asarray(new.images)]))
    first_train: dict[int, int] = {}
    for i, g in enumerate(groups[:n_train]):
        first_train.setdefault(int(g), i)
    return [(j, first_train[int(g)]) for j, g in enumerate(groups[n_train:])
            if int(g) in first_train]


def overlap_message(pairs: list[tuple[str, str]], data, limit: int = 10) -> str:
    """One line naming each new photo and the training photo it copies."""
    shown = "; ".join(f"{new} ~ training photo {old}" for new, old in pairs[:limit])
    more = f"; and {len(pairs) - limit} more" if len(pairs) > limit else ""
    return (f"{len(pairs)} photo(s) of --data {data} are the same as or near-duplicates of "
            f"the run's training photos: {shown}{more}; remove them or pass --drop-overlap")


def subset(examples: Examples, keep: np.ndarray) -> Examples:
    """The photos at ``keep`` (index array), in order."""
    return Examples(np.asarray(examples.images)[keep], np.asarray(examples.labels)[keep],
                    [examples.ids[i] for i in keep], examples.class_names)


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
                                 C=svm.C, class_weight=svm.class_weight, seed=run_spec.seed)
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
                                         "n_folds", "repeats", "seed")}},
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
    if workdirs.data_fingerprint(cohort.examples) != want:
        raise RunError(f"the run's training photos ({spec.data.root or 'synthetic'}) differ "
                       "from the ones it trained on (ledger.json); restore them or retrain")
    return cohort


def load_new_set(data, run, metadata=None) -> tuple[Examples, np.ndarray, dict]:
    """The second photo set at the run's input size, its subjects and subgroup columns."""
    spec = run.run_spec.data
    class_map = dict(spec.class_map) if spec.class_map else None
    check_folder_classes(data, class_map)
    new = load_folder(data, image_size=spec.image_size, on_error=spec.on_error,
                      class_map=class_map, min_per_class=1)
    if metadata:
        subjects, columns = load_metadata(metadata, new.ids)
    else:
        subjects, columns = np.asarray(new.ids, str), {}
    return new, np.asarray(subjects, str), columns


def validate(workdir, data, out, metadata=None, drop_overlap: bool = False) -> dict:
    """Score the run in ``workdir`` on the photos in ``data``; write everything to ``out``.
    Returns the results.json record."""
    workdir, out = Path(workdir), Path(out)
    model = load_model(workdir)
    run = model.run
    check_run_classes(model.classes)
    new, subjects, columns = load_new_set(data, run, metadata)
    source = str(data)
    console.say(f"validating run {run.results.get('name', workdir)} on {len(new.labels)} "
                f"photos of {source}")
    cohort = training_cohort(workdir, run)
    pairs = overlapping(cohort.examples, new)
    train_root = run.run_spec.data.root
    named = [(str(Path(data) / new.ids[j]),
              str(Path(train_root) / cohort.examples.ids[i]) if train_root
              else cohort.examples.ids[i]) for j, i in pairs]
    if named and not drop_overlap:
        raise DataError(overlap_message(named, data))
    for file, old in named:
        console.say(f"left out {file}: a copy of training photo {old}")
    keep = np.setdiff1d(np.arange(len(new.labels)), [j for j, _ in pairs])
    if len(keep) == 0:
        raise DataError(f"every photo of --data {data} copies a training photo; nothing is "
                        "left to validate on")
    new, subjects = subset(new, keep), subjects[keep]
    columns = {c: np.asarray(v)[keep] for c, v in columns.items()}
    preds = locked_predictions(model, cohort, new, subjects, columns)
    desc = {**describe(new, source=source), "class_names": list(CLASSES),
            "n_subjects": len(np.unique(subjects))}
    dropped = [{"file": f, "training_file": o} for f, o in named]
    results = validation_results(model, preds, desc, dropped, workdir)
    try:
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
    parser.add_argument("--drop-overlap", action="store_true",
                        help="leave out photos that copy training photos (listed) instead "
                             "of refusing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from handjax import user_errors
    console.quiet()
    try:
        validate(args.workdir, args.data, args.out, args.metadata, args.drop_overlap)
    except user_errors() as e:  # one clear line, no traceback (HANDJAX_DEBUG=1 shows it)
        if os.environ.get("HANDJAX_DEBUG"):
            raise
        print(f"handjax: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
