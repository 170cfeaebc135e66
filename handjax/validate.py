"""External validation: a finished run's fold models applied to a second photo set (another
clinic, another phone), scored like a training run.

    python -m handjax.validate --workdir runs/vgg19_custom --data /photos/clinic_b \\
        [--metadata clinic_b.csv] --out runs/vgg19_custom/validate_clinic_b [--drop-overlap]

``--data`` is an ImageFolder like the training one (``<class>/<any depth>/*.jpg``, class
folders named as the run's, or as its ``data.class_map`` maps them; every class needs at
least one photo). ``--metadata`` is a CSV like the training one (``file``, optional
``subject``, subgroup columns); without it every photo is its own subject.

Each photo is scored by the ensemble of the run's K fold models (no photo of the new set was
seen by any of them, so the ``fold`` column of ``predictions.csv`` is -1 for every row):

- ``cnn``: the mean of the folds' probabilities, decided by argmax (for ordinal heads the
  training run's ``cnn`` column counts thresholds per model instead);
- ``cnn_calibrated``: the mean of the folds' calibrated probabilities, fold k's
  ``softmax(log p_k / T_k)`` with the temperature the run fitted for it
  (``results.json["calibration"]["temperatures"]``), decided by argmax;
- ``cnn_mec``: the minimum-expected-cost decision (``losses.DEFAULT_COST``) on the mean
  calibrated probabilities;
- ``svm``: each fold's SVM refitted exactly as the run fitted it
  (:func:`handjax.evaluation.scoring.svm_fold_probabilities`: that fold's training split, the pooled
  features of that fold's fine-tuned backbone, Platt scaling cross-validated by subject);
  the probabilities are the mean of the folds' Platt probabilities, and the decision is their
  argmax (the K SVC ``predict`` votes could tie; the mean probability cannot be outvoted by
  a fold that is barely sure).

``--out`` gets ``predictions.csv`` (the training run's columns), ``results.json`` (the same
``clinical`` block with subject-bootstrap 95% CIs, the calibration intercept and slope per
task, the decision curves, subgroups by metadata column), ``results.md``, and ``roc.png``,
``reliability.png``, ``decision_curve.png``, ``confusion_<rule>.png``.

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

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from handjax import evaluation as clinical, console, losses, metrics
from handjax.report import plots, markdown as report
from handjax.train import workdir as workdirs
from handjax.data.records import CLASSES, DataError, Examples
from handjax.data.cohort import Cohort, load_cohort, mixed_subjects, say_mixed_subjects
from handjax.data.folders import claim_output, resolve_path
from handjax.data.sources import (class_map_arg, describe, load_folder, load_metadata,
                                  merged_class_map, select)
from handjax.data.splits import duplicate_groups
from handjax.errors import RunError
from handjax.evaluation.scoring import probabilities, svm_fold_probabilities
from handjax.model.ensemble import TrainedRun, load_run, read_json
from handjax.predict import chunked

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
    """The photos at ``keep`` (index array), in order (with the record of those the loader
    left out)."""
    return select(examples, keep)


# --------------------------------------------------------------------------- scoring
def fold_outputs(run: TrainedRun, *image_sets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per set of raw RGB images [N, S, S, 3]: every fold model's logits [K, N, C] and
    pooled features [K, N, D] (the head's input)."""
    model = run.model
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False, mode="tune"))
    n_folds = jax.tree.leaves(run.variables)[0].shape[0]
    outs: list[list] = [[] for _ in image_sets]
    for k in tqdm(range(n_folds), desc="fold models", leave=False):  # a loop: vmap over
        v = jax.tree.map(lambda a, k=k: a[k], run.variables)      # conv weights is slow on CPU
        for out, images in zip(outs, image_sets):
            out.append(chunked(forward, v, images))
    return [(np.stack([z for z, _ in out]), np.stack([f for _, f in out])) for out in outs]


def cnn_ensemble(loss_name: str, logits: np.ndarray, temperatures) -> dict[str, np.ndarray]:
    """``{"cnn": mean of the folds' probabilities, "cnn_calibrated": mean of the folds'
    temperature-scaled ones}``, float64 [N, C]."""
    p = np.asarray(probabilities(loss_name, jnp.asarray(logits)), np.float64)   # [K, N, C]
    z = np.log(np.clip(p, 1e-12, 1.0))
    cal = np.stack([clinical.apply_temperature(z[k], t) for k, t in enumerate(temperatures)])
    return {"cnn": p.mean(0), "cnn_calibrated": cal.mean(0)}


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


def ensemble_predictions(run: TrainedRun, cohort: Cohort, new: Examples, subjects,
                         metadata: dict) -> clinical.Predictions:
    """Every new photo scored by the fold ensemble, for every rule (module docstring)."""
    spec = run.run_spec
    temps = run.results.get("calibration", {}).get("temperatures") or [1.0] * spec.n_models
    (logits, pooled_new), (_, pooled_train) = fold_outputs(
        run, np.asarray(new.images), np.asarray(cohort.examples.images))
    probs = cnn_ensemble(spec.loss.name, logits, temps)
    probs["svm"] = svm_ensemble(pooled_train, pooled_new, cohort, spec)
    probs = {r: p / p.sum(-1, keepdims=True) for r, p in probs.items()}
    pred = {r: p.argmax(-1) for r, p in probs.items()}
    cost = jnp.asarray(losses.DEFAULT_COST, jnp.float32)
    pred[clinical.MEC_RULE] = np.asarray(metrics.min_expected_cost(
        jnp.asarray(probs["cnn_calibrated"], jnp.float32), cost))
    n = len(new.labels)
    return clinical.Predictions(
        file=np.asarray(new.ids, str), subject=np.asarray(subjects, str),
        fold=np.full(n, FOLD), label=np.asarray(new.labels, np.int64), probs=probs, pred=pred,
        extra=dict(metadata), class_names=tuple(new.class_names))


# --------------------------------------------------------------------------- results
def validation_results(run: TrainedRun, preds: clinical.Predictions, data_desc: dict,
                       dropped: list[dict], workdir) -> dict:
    """``results.json`` of a validation: the run's header, the new set's description, the
    photos left out, and the clinical figures with subject-bootstrap CIs (the run's
    ``eval.bootstrap`` resamples and seed)."""
    spec = run.run_spec
    n_boot, seed, rule = spec.eval.bootstrap, spec.seed, "cnn_calibrated"
    temps = run.results.get("calibration", {}).get("temperatures")
    r = run.results
    return clinical.json_safe({
        "name": f"{r.get('name', '?')} validated on {data_desc['source']}",
        "run": {"workdir": str(workdir), **{k: r.get(k) for k in (
            "name", "model", "loss", "weights", "image_size", "n_folds", "seed")}},
        "n_folds": r.get("n_folds"), "data": data_desc,
        "overlap_dropped": dropped,
        "ensemble": "mean over the run's fold models (module docstring of handjax.validate)",
        "clinical": clinical.clinical_block(preds, n_boot=n_boot, seed=seed),
        "calibration": {
            "temperatures": temps,
            "fitted_on": f"the run's: {r.get('calibration', {}).get('fitted_on', '?')}; "
                         "applied unchanged to the new photos",
            "intercept_slope": clinical.bootstrap_ci(
                clinical.calibration_lines, preds.label, preds.probs[rule], preds.pred[rule],
                preds.subject, n_boot=n_boot, seed=seed),
            "intercept_slope_method": "logistic recalibration of each task's outcome on the "
                                      "logit of its calibrated-CNN probability: intercept with "
                                      "the slope fixed at 1 (calibration-in-the-large), slope "
                                      "from the two-parameter fit"},
        "subgroups": clinical.subgroup_table(preds.label, preds.probs[rule], preds.pred[rule],
                                             preds.subject, dict(preds.extra), n_boot=n_boot,
                                             seed=seed),
        "decision_curve": clinical.decision_curves(preds.label, preds.probs[rule]),
        "bootstrap": {"resamples": n_boot, "unit": "subject", "seed": seed},
    })


def validation_markdown(results: dict) -> str:
    """``results.md`` of a validation: what was scored, the clinical tables, calibration
    intercept and slope, and the decision curve at a few thresholds."""
    data, run = results["data"], results["run"]
    dropped = results.get("overlap_dropped") or []
    lines = [f"# {results['name']}", "",
             f"- **{data['n']} photos of {data['n_subjects']} subjects** from {data['source']} "
             f"({', '.join(f'{k} {v}' for k, v in data['class_counts'].items())})",
             f"- scored by the {run['n_folds']} fold models of run {run['name']} "
             f"({run['model']}, {run['loss']} loss, {run['image_size']} px, {run['workdir']})",
             f"- left out as copies of training photos: {len(dropped)}"
             + "".join(f"\n  - {d['file']} ~ {d['training_file']}" for d in dropped)]
    parts = ["\n".join(lines), report.clinical_markdown(results, "fold ensemble on the new photos"),
             report.calibration_line_markdown(results["calibration"]["intercept_slope"]),
             report.decision_curve_markdown(results["decision_curve"])]
    return "\n\n".join(parts) + "\n"


def write_outputs(out: Path, preds: clinical.Predictions, results: dict) -> list[Path]:
    """predictions.csv, results.json, results.md and the PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [clinical.write_predictions(out / "predictions.csv", preds)]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(validation_markdown(results), encoding="utf-8")
    written += [out / "results.json", out / "results.md"]
    ece = {rule: results["clinical"].get(rule, {}).get("ece_10bin", {}).get("value")
           for rule in ("cnn", "cnn_calibrated")}
    written += [
        plots.plot_roc(out / "roc.png", preds.label, preds.probs["cnn_calibrated"],
                       title=results["name"]),
        plots.plot_reliability(out / "reliability.png", preds.label,
                               {"before calibration": preds.probs["cnn"],
                                "after calibration": preds.probs["cnn_calibrated"]},
                               {"before calibration": ece["cnn"],
                                "after calibration": ece["cnn_calibrated"]},
                               title=results["name"]),
        plots.plot_decision_curve(out / "decision_curve.png", results["decision_curve"],
                                  results["name"])]
    for rule, decided in preds.pred.items():
        cm = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
        np.add.at(cm, (preds.label, decided), 1)
        written.append(plots.plot_confusion(cm, list(CLASSES), f"{results['name']}\n{rule}",
                                            out / f"confusion_{rule}.png"))
    return written


# --------------------------------------------------------------------------- the command
def training_cohort(workdir: Path, run: TrainedRun) -> Cohort:
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


def load_new_set(data, run: TrainedRun, metadata=None, extra_map=None,
                 ) -> tuple[Examples, np.ndarray, dict]:
    """The second photo set at the run's input size, its subjects and subgroup columns
    (its folders named as the run's classes, mapped by the run's ``data.class_map`` or by
    ``extra_map``, validate's ``--class-map``)."""
    spec = run.run_spec.data
    class_map = merged_class_map(spec.class_map, extra_map)
    check_folder_classes(data, class_map)
    new = load_folder(data, image_size=spec.image_size, on_error=spec.on_error,
                      class_map=class_map, min_per_class=1)
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
    run = load_run(workdir)
    check_run_classes(run.results.get("data", {}).get("class_names", CLASSES))
    new, subjects, columns = load_new_set(data, run, metadata, class_map)
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
    preds = ensemble_predictions(run, cohort, new, subjects, columns)
    mixed = mixed_subjects(subjects, new.labels, CLASSES)
    say_mixed_subjects(mixed)
    desc = {**describe(new, source=source), "class_names": list(CLASSES),
            "n_subjects": len(np.unique(subjects)), "subjects_with_several_classes": mixed}
    dropped = [{"file": f, "training_file": o} for f, o in named]
    results = validation_results(run, preds, desc, dropped, workdir)
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
        description="Apply a finished run's fold models to a second photo set and score "
                    "them like the run (clinical metrics with subject-bootstrap CIs, "
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


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from handjax import user_errors
    console.quiet()
    try:
        validate(args.workdir, args.data, args.out, args.metadata, args.drop_overlap,
                 args.class_map)
    except user_errors() as e:  # one clear line, no traceback (HANDJAX_DEBUG=1 shows it)
        if os.environ.get("HANDJAX_DEBUG"):
            raise
        print(f"handjax: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
