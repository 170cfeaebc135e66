"""Tables and plots from finished runs: per-run ``results.md`` and the study table.

Inputs are the trainer's ``results.json`` dicts (one per run) and its ``metrics.jsonl``
training curves. Everything here is a pure function of those dicts except the
``write_*`` functions, which put the Markdown, CSV and PNG files into a folder.

Every "mean ± std" is recomputed from the per-fold values with :func:`summarize`
(population std, ``ddof=0``), so all tables share one definition.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from handjax import evaluation as clinical
from handjax.evaluation.model_card import COARSE_SUBJECTS, limitations
from handjax.report import plots
from handjax.config import STUDY_LOSSES, STUDY_MODELS
from handjax.data.records import CLASSES
from handjax.metrics import STUDY_METRICS, mean_std

# Column suffixes of the study's table, in its order.
METRIC_COLUMNS = {"accuracy": "acc", "custom_multi": "cus_multi",
                  "custom_plus": "cus_plus", "custom_precision": "cus_precision"}
# results.json decision key -> column prefix of the study table.
DECISION_PREFIX = {"cnn": "CNN", "svm": "SVM", "cnn_mec": "MEC"}
DECISION_TITLES = {"cnn": "CNN (argmax)", "cnn_mec": "CNN, minimum expected cost",
                   "svm": "SVM probe on pooled features"}
MODEL_NAMES = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50",
               "mobilenetv2": "MobileNetV2", "convnexttiny": "ConvNeXt-Tiny",
               "efficientnetv2b0": "EfficientNetV2-B0"}
# The study's row-group labels; other losses (e.g. "severity" = CE + expected cost,
# which the study did not have) keep their own name as their label.
LOSS_GROUPS = {"categorical": "categorical", "binary": "binary", "custom": "custom_loss"}
STUDY_COLUMNS = tuple(f"{DECISION_PREFIX[d]}_{METRIC_COLUMNS[m]}"
                      for d in clinical.STUDY_RULES for m in STUDY_METRICS)
# Clinical columns beside the seed's, from the calibrated CNN's pooled out-of-fold figures.
CLINICAL_COLUMNS = {"CNN_auroc_macro [95% CI]": "auroc_macro", "CNN_qwk": "qwk",
                    "CNN_sens_ra": "sensitivity_ra", "CNN_ece_sweep": "ece_sweep"}


# ------------------------------------------------------------------------ numbers
summarize = mean_std   # mean and population std (ddof=0) of each per-fold list


def format_pm(mean: float, std: float, digits: int = 4) -> str:
    """``"0.7687 ± 0.0123"``."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_model(name: str) -> str:
    """``"mobilenet_v2"`` -> ``"MobileNetV2"``; unknown names pass through."""
    return MODEL_NAMES.get(name.lower().replace("_", "").replace("-", ""), name)


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _decision_order(decisions: dict) -> list[str]:
    known = [k for k in DECISION_TITLES if k in decisions]
    return known + sorted(k for k in decisions if k not in DECISION_TITLES)


def confusion_sum(decision: dict) -> np.ndarray:
    """The confusion matrix summed over folds (recorded, or summed from per-fold ones)."""
    if "confusion_sum" in decision:
        return np.asarray(decision["confusion_sum"])
    return np.asarray(decision["confusion"]).sum(0)


# ------------------------------------------------------------------------ per run
def _data_line(data: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in data.get("class_counts", {}).items())
    dup = data.get("duplicate_groups")
    dup = "not checked" if dup is None else dup
    left = (f"; {len(data['left_out'])} photo(s) left out, listed under Photos left out"
            if data.get("left_out") else "")
    return (f"{data.get('source', '?')} (n={data.get('n', '?')}; {counts}; "
            f"duplicate groups {dup}{left})")


def _decision_markdown(key: str, decision: dict, class_names) -> str:
    per_fold = decision["per_fold"]
    mean, std = summarize(per_fold)
    n_folds = len(per_fold[STUDY_METRICS[0]])
    rows = [[f] + [f"{per_fold[m][f]:.4f}" for m in STUDY_METRICS] for f in range(n_folds)]
    rows.append(["mean ± std"] + [format_pm(mean[m], std[m]) for m in STUDY_METRICS])
    cm = confusion_sum(decision)
    cm_rows = [[f"**{name}**"] + [int(c) for c in row] for name, row in zip(class_names, cm)]
    return "\n\n".join([
        f"## {DECISION_TITLES.get(key, key)}",
        _md_table(["fold", *STUDY_METRICS], rows),
        "Confusion matrix summed over folds (rows true, columns predicted; "
        "below the diagonal = under-severity):",
        _md_table(["true \\ predicted", *class_names], cm_rows),
    ])


def run_markdown(results: dict) -> str:
    """A readable ``results.md`` for one run: header, per-fold and mean ± std rows for
    each decision, and the confusion matrix summed over folds."""
    data = results.get("data", {})
    class_names = data.get("class_names", ["normal", "heberden", "ra"])
    header = [
        f"# Run {results.get('name', '?')}",
        f"model {display_model(results.get('model', '?'))} · loss {results.get('loss', '?')}"
        f" · weights {results.get('weights', '?')} · input {results.get('image_size', '?')}"
        f" · {results.get('n_folds', '?')} folds · seed {results.get('seed', '?')}",
        f"Data: {_data_line(data)}",
    ]
    if "wall_time_s" in results:
        header.append(f"Wall time: {results['wall_time_s']:.1f} s")
    header.append("mean ± std over folds; std is the population std (ddof=0).")
    decisions = results.get("decisions", {})
    parts = [headline(results), "\n\n".join(header)] if "clinical" in results else [
        "\n\n".join(header)]
    parts += [_decision_markdown(k, decisions[k], class_names) for k in _decision_order(decisions)]
    if "clinical" in results:
        parts += [clinical_markdown(results)]
    if results.get("decision_curve"):
        parts += [decision_curve_markdown(results["decision_curve"])]
    return "\n\n".join(parts) + "\n"


def read_metrics_jsonl(path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl`` (blank lines skipped)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write(out, predictions, results: dict) -> list[Path]:
    """The report tail every command ends with: ``results.md`` and the PNGs of a training run
    or a validation, from its ``Predictions`` (``None``: no ROC or reliability diagram) and
    its ``results.json`` record. Returns the paths written. (Many processes: the caller
    calls it on process 0 only.)

    A run (``results["decisions"]``) gets ``confusion_<decision>.png`` summed over folds and
    ``curves.png`` from ``out/metrics.jsonl``; a validation ``confusion_<rule>.png`` per
    rule of ``predictions``. Both get ``roc.png``, ``reliability.png`` and
    ``decision_curve.png``."""
    out = Path(out)
    md = out / "results.md"
    md.write_text(markdown(results), encoding="utf-8")
    written = [md]
    class_names = results.get("data", {}).get("class_names", list(CLASSES))
    if "decisions" in results:
        for key, decision in results["decisions"].items():
            title = (f"{results.get('name', '')}\n{DECISION_PREFIX.get(key, key)}, "
                     "summed over folds")
            written.append(plots.plot_confusion(confusion_sum(decision), class_names, title,
                                                out / f"confusion_{key}.png"))
    elif predictions is not None:
        for rule, decided in predictions.pred.items():
            cm = np.zeros((len(class_names), len(class_names)), np.int64)
            np.add.at(cm, (predictions.label, decided), 1)
            written.append(plots.plot_confusion(cm, class_names,
                                                f"{results.get('name', '')}\n{rule}",
                                                out / f"confusion_{rule}.png"))
    jsonl = out / "metrics.jsonl"
    if jsonl.exists():
        records = read_metrics_jsonl(jsonl)
        if records:
            written.append(plots.plot_curves(records, out / "curves.png"))
    if predictions is not None and "cnn_calibrated" in predictions.probs:
        written += _clinical_plots(out, predictions, results)
    if results.get("decision_curve"):
        written.append(plots.plot_decision_curve(out / "decision_curve.png",
                                                 results["decision_curve"],
                                                 "" if "decisions" in results
                                                 else results.get("name", "")))
    return written


def markdown(results: dict) -> str:
    """``results.md`` of a run (:func:`run_markdown`) or of a validation
    (:func:`validation_markdown`)."""
    return run_markdown(results) if "decisions" in results else validation_markdown(results)


def _clinical_plots(out: Path, preds, results: dict) -> list[Path]:
    """ROC with the operating points (a run's fold thresholds, or a validation's locked
    ones) and reliability before/after calibration."""
    points = {task: {f"{kind} >= target": {
        "sensitivity": e["sensitivity"]["value"], "specificity": e["specificity"]["value"]}
        for kind, e in kinds.items() if e.get("sensitivity")}
        for task, kinds in results.get("operating_points", {}).items()}
    for task, entries in results.get("locked_operating_points", {}).items():
        points.setdefault(task, {}).update({f"locked {e['rule']}": {
            "sensitivity": e["sensitivity"]["value"], "specificity": e["specificity"]["value"]}
            for e in entries})
    ece = {rule: results.get("clinical", {}).get(rule, {}).get("ece_10bin", {}).get("value")
           for rule in ("cnn", "cnn_calibrated")}
    title = (f"run {results.get('name', '?')}: out-of-fold predictions"   # whose figures
             if "decisions" in results else f"{results.get('name', '?')}: the new photos")
    return [plots.plot_roc(out / "roc.png", preds.label, preds.probs["cnn_calibrated"],
                           points, title=title),
            plots.plot_reliability(out / "reliability.png", preds.label,
                                   {"before calibration": preds.probs["cnn"],
                                    "after calibration": preds.probs["cnn_calibrated"]},
                                   {"before calibration": ece["cnn"],
                                    "after calibration": ece["cnn_calibrated"]},
                                   title=title)]


def validation_markdown(results: dict) -> str:
    """``results.md`` of a validation: what was scored, the clinical tables, the locked
    operating points, calibration intercept and slope, and the decision curve at a few
    thresholds."""
    data, run = results["data"], results["run"]
    dropped = results.get("overlap_dropped") or []
    lines = [f"# {results['name']}", "", *validation_notes(results),
             f"- **{data['n']} photos of {data['n_subjects']} subjects** from {data['source']} "
             f"({', '.join(f'{k} {v}' for k, v in data['class_counts'].items())})",
             f"- scored by the locked model of run {run['name']} ({run['model']}, "
             f"{run['loss']} loss, {run['image_size']} px, {run['workdir']}): "
             f"{results.get('model', '')}",
             f"- left out as copies of training photos: {len(dropped)}"
             + "".join(f"\n  - {d['file']} ~ {d['training_file']}"
                       + (f" ({d['how']})" if d.get("how") else "") for d in dropped)]
    parts = ["\n".join(lines), clinical_markdown(results, "locked model on the new photos")]
    if results.get("locked_operating_points"):
        parts.append(locked_operating_markdown(results["locked_operating_points"]))
    parts += [calibration_line_markdown(results["calibration"]["intercept_slope"]),
              decision_curve_markdown(results["decision_curve"])]
    return "\n\n".join(parts) + "\n"


def locked_operating_markdown(points: dict) -> str:
    """The locked thresholds on the new photos: sensitivity and specificity with CIs, beside
    the rate each reached where it was chosen."""
    rows = []
    for task, entries in points.items():
        for e in entries:
            kind = e["rule"][len(task) + 1:]
            dev = e.get("development", {})
            rows.append([task, e.get("target") or kind, f"{e['threshold']:.3f}",
                         _num(dev.get(kind), 3), format_ci(e.get("sensitivity")),
                         format_ci(e.get("specificity"))])
    return "\n\n".join([
        "## Locked operating points (thresholds chosen in development, frozen, applied here)",
        _md_table(["task", "chosen for", "threshold", "reached in development",
                   "sensitivity here", "specificity here"], rows)])


# ------------------------------------------------------------------------ clinical
CLINICAL_RULE = "cnn_calibrated"   # the headline's and the study table's clinical figures
CLINICAL_ROWS = ("accuracy", "balanced_accuracy", "auroc_macro", "auroc_any_disease",
                 "auroc_ra", "sensitivity_ra", "specificity_ra", "sensitivity_heberden",
                 "specificity_heberden", "qwk", "mae_grade", "under_severity_rate", "brier",
                 "ece_sweep", "ece_10bin", "log_loss")


def format_ci(entry, digits: int = 3) -> str:
    """``"0.852 [0.802, 0.896]"``; ``"n/a"`` where undefined. An infinite limit (or value)
    reads ``unbounded`` (results.json writes it as null with ``entry["unbounded"]`` naming
    it); a bootstrap interval from fewer finite resamples than drawn says how many
    (``n_finite 1893/2000``); with repeated CV the between-repeat SD follows."""
    if not entry:
        return "n/a"
    unbounded = entry.get("unbounded") or []
    if entry.get("value") is None:
        return "unbounded" if "value" in unbounded else "n/a"
    lo, hi = entry.get("ci95") or (None, None)
    ends = [("unbounded" if side in unbounded else "n/a") if x is None else f"{x:.{digits}f}"
            for side, x in (("lower", lo), ("upper", hi))]
    ci = " [n/a]" if ends == ["n/a", "n/a"] else f" [{ends[0]}, {ends[1]}]"
    notes = []
    k, n = entry.get("n_finite"), entry.get("n_resamples")
    if k is not None and n and k < n:
        notes.append(f"n_finite {k}/{n}")
    if entry.get("collapsed"):
        notes.append("every resample agreed: width unknown")
    if entry.get("between_repeat_sd") is not None:
        notes.append(f"between-repeat SD {entry['between_repeat_sd']:.{digits}f}")
    return f"{entry['value']:.{digits}f}{ci}" + (f" ({'; '.join(notes)})" if notes else "")


def headline(results: dict) -> str:
    """The opening block: photos and subjects, AUROC, RA sensitivity/specificity and
    calibration error, each with its subject-bootstrap 95% CI."""
    c = results["clinical"].get(CLINICAL_RULE, {})
    data = results.get("data", {})
    boot = results.get("bootstrap", {})
    return "\n".join([
        f"# {results.get('name', 'run')}: headline",
        "",
        *caveats(results),
        f"- **{data.get('n', '?')} photos of {data.get('n_subjects', '?')} subjects**, "
        f"{results.get('n_folds', '?')}-fold out-of-fold predictions (calibrated CNN)"
        + (f", {results['repeats']} repeats pooled" if results.get("repeats", 1) > 1 else ""),
        f"- AUROC (macro, one-vs-rest): **{format_ci(c.get('auroc_macro'))}**",
        f"- RA sensitivity {format_ci(c.get('sensitivity_ra'))}, specificity "
        f"{format_ci(c.get('specificity_ra'))} (argmax decision)",
        f"- calibration error (top-label ECE, equal-mass sweep): {format_ci(c.get('ece_sweep'))}"
        f"; with 10 equal-width bins {format_ci(c.get('ece_10bin'))} (biased upward)",
        _bootstrap_line(boot),
    ])


def _bootstrap_line(boot: dict) -> str:
    if boot.get("resamples") == 0:
        return ("- no CIs (`eval.bootstrap=0`: point values only); every figure is "
                "recomputable from predictions.csv")
    return ("- 95% CIs: accuracy, sensitivity, specificity, PPV, NPV, balanced accuracy and "
            "grade error (shares of photos, or means of them) Wilson at the effective number "
            f"of photos their {boot.get('unit', 'subject')}s' clustering leaves; an AUROC of "
            "1 Newcombe's score interval; every other figure a percentile bootstrap over "
            f"{boot.get('unit', 'subject')}s ({boot.get('resamples', '?')} resamples, seed "
            f"{boot.get('seed', '?')}): `n_finite k/N` marks one that only k resamples gave a "
            "finite value for, `unbounded` a limit at infinity; every figure is recomputable "
            "from predictions.csv")


def caveats(results: dict) -> list[str]:
    """Warnings that must open a results.md: what the figures cannot mean
    (:func:`~handjax.evaluation.model_card.limitations`). Random weights and synthetic photos
    make every figure a pipeline check; CIs from fewer than ``COARSE_SUBJECTS`` subjects are
    too coarse to read (a 1.000 [1.000, 1.000] from 10 photos means nothing)."""
    limits = limitations(results.get("weights"), results.get("data", {}))
    words = {
        "random_weights": "> **Random weights**: no pretrained backbone; these figures only "
                          "show that the pipeline runs.",
        "synthetic": "> **Synthetic data**: procedurally drawn hands whose disease signs are "
                     "medically meaningless; nothing here is about real patients.",
        "coarse_subjects": f"> **Only {limits.get('coarse_subjects')} subjects**: with fewer "
                           f"than {COARSE_SUBJECTS}, the subject-bootstrap 95% CIs below are "
                           "too coarse to read."}
    return [part for kind in limits if kind in words for part in (words[kind], "")]


def validation_notes(results: dict) -> list[str]:
    """The lines that open a validation's results.md under its title: the caveats of the
    run it validates (random weights, synthetic training photos) and of the new set (few
    subjects, :func:`caveats`), which tasks a set missing a class skips, and how far its
    photos' native size is from the training photos'."""
    run, data = results.get("run", {}), results.get("data", {})
    lines = caveats({"weights": run.get("weights"), "data": data})
    if run.get("data_source") == "synthetic":
        lines += ["> **Trained on synthetic data**: the models learned procedurally drawn hands "
                  "whose disease signs are medically meaningless.", ""]
    for key, note in (("coverage", "line"), ("native_size", "warning")):
        if (data.get(key) or {}).get(note):
            lines += [f"> **{'Missing class' if key == 'coverage' else 'Native size'}**: "
                      f"{data[key][note]}.", ""]
    return lines


def left_out_markdown(data: dict) -> str:
    """What the figures are *not* about: every photo of the folder left out, with its
    reason, and the subjects whose photos carry more than one class ("" when the data
    record has neither key: synthetic hands, older results)."""
    parts = []
    if "left_out" in data:
        left = data["left_out"]
        parts.append(f"## Photos left out: {len(left)}")
        if left:
            parts.append(_md_table(["file", "reason"],
                                   [[e.get("file", "?"), e.get("reason", "?")] for e in left]))
    mixed = data.get("subjects_with_several_classes")
    if mixed:
        parts.append(f"Subjects whose photos carry more than one class: {len(mixed)} ("
                     + "; ".join(f"{s}: {', '.join(c)}" for s, c in mixed.items())
                     + "); kept, as one unaffected hand is plausible.")
    return "\n\n".join(parts)


def clinical_markdown(results: dict, pooled: str = "pooled out of fold") -> str:
    """The photos left out (:func:`left_out_markdown`), clinical metrics per rule (``pooled``
    says over what), the operating points (where results has them) and the subgroup tables."""
    clinical = results["clinical"]
    rules = [r for r in ("cnn", "cnn_calibrated", "cnn_mec", "svm") if r in clinical]
    rows = [[m] + [format_ci(clinical[r].get(m)) for r in rules] for m in CLINICAL_ROWS]
    left_out = left_out_markdown(results.get("data", {}))
    parts = ([left_out] if left_out else []) + [
             f"## Clinical metrics ({pooled}, 95% CI)",
             _md_table(["metric", *rules], rows),
             _calibration_line(results.get("calibration", {}))]
    if "operating_points" in results:
        parts += [_operating_markdown(results["operating_points"])]
    for column, values in results.get("subgroups", {}).items():
        rows = [[v, e["n"], e["n_subjects"], format_ci(e.get("accuracy")),
                 format_ci(e.get("sensitivity_any_disease")),
                 format_ci(e.get("auroc_any_disease"))] for v, e in values.items()]
        parts += [f"### Subgroups by {column}",
                  _md_table([column, "n", "subjects", "accuracy", "sensitivity (any disease)",
                             "AUROC (any disease)"], rows)]
    return "\n\n".join(parts)


def _calibration_line(calib: dict) -> str:
    """One line on the temperature scaling behind the calibrated figures: how it was fitted
    (``method``, ``fitted_on``, where the record has them) and the temperature per fold
    model (a run of R repeats of K folds has R x K)."""
    if "temperature" in calib:   # a validation: the locked model's one temperature
        fitted = calib.get("fitted_on") or "the run's pooled out-of-fold predictions"
        return (f"Calibration (locked model): one temperature T = {calib['temperature']:.3g}, "
                f"fitted on {fitted}.")
    temps = [t for t in calib.get("temperatures") or [] if t is not None]
    if not temps and not calib.get("method"):
        return "Calibration: none recorded."
    bound = [k for k, b in enumerate(calib.get("at_bound", [])) if b]
    note = (f" **At a search bound in fold model(s) {', '.join(map(str, bound))}**: the NLL "
            "kept falling there (a limit, not a fit)." if bound else "")
    method = f"temperature scaling, {calib['method']}" if calib.get("method") else \
        "temperature scaling"
    fitted = f": {calib['fitted_on']}" if calib.get("fitted_on") else ""
    listing = ", ".join(f"{t:.3g}" for t in temps)
    return (f"Calibration ({method}){fitted}; temperature of each of the {len(temps)} fold "
            f"models {listing}.{note}")


def _operating_markdown(points: dict) -> str:
    rows = []
    for task, kinds in points.items():
        for kind, e in kinds.items():
            per_fold = "; ".join(clinical.describe_choice(c) for c in e.get("per_fold", []))
            reached = e["status"] == "chosen"
            rows.append([task, e.get("target", kind), e["status"], per_fold,
                         format_ci(e.get("sensitivity")) if reached else "-",
                         format_ci(e.get("specificity")) if reached else "-"])
    return "\n\n".join([
        "## Operating points (each fold's threshold chosen without its test photos, frozen)",
        _md_table(["task", "chosen for", "status", "threshold per fold",
                   "sensitivity on test folds", "specificity on test folds"], rows)
        if rows else "None."])


DECISION_ROWS = (0.05, 0.1, 0.2, 0.3, 0.5)   # thresholds shown in results.md


def decision_curve_markdown(curves: dict, thresholds=DECISION_ROWS) -> str:
    """Net benefit of the model against treat all (treat none is 0) at a few thresholds,
    per task; the whole curve is in results.json and decision_curve.png."""
    rows = []
    for task, points in curves.items():
        at = {round(p["threshold"], 6): p for p in points}
        for t in thresholds:
            p = at.get(round(t, 6))
            if p is not None:
                rows.append([task, f"{t:g}", _num(p["net_benefit"]), _num(p["treat_all"])])
    return "\n\n".join([
        "## Decision curve (net benefit, calibrated CNN; treat none = 0)",
        _md_table(["task", "threshold", "model", "treat all"], rows),
        "Net benefit = TP/n - FP/n * t/(1-t): the model helps at a threshold t where it beats "
        "both treat all and treat none; read only the thresholds a clinician would act on."])


def calibration_line_markdown(intercept_slope: dict) -> str:
    """Calibration intercept and slope per task with their CIs (an external validation's
    ``results.json["calibration"]["intercept_slope"]``)."""
    rows = [[task, format_ci(intercept_slope.get(f"intercept_{task}")),
             format_ci(intercept_slope.get(f"slope_{task}"))] for task in clinical.TASKS]
    return "\n\n".join([
        "## Calibration intercept and slope (calibrated CNN, 95% CI)",
        _md_table(["task", "intercept (ideal 0; < 0: risks too high)",
                   "slope (ideal 1; < 1: too extreme)"], rows)])


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


# ------------------------------------------------------------------------ study
def _agreed(cells: list[dict], label: str, get) -> str:
    """One value if every cell agrees, else a visible disagreement listing."""
    values = {}
    for c in cells:
        values.setdefault(str(get(c)), []).append(c.get("name", "?"))
    if len(values) == 1:
        return f"{label}: {next(iter(values))}"
    listing = "; ".join(f"{v} ({', '.join(names)})" for v, names in values.items())
    return f"{label}: **cells disagree** — {listing}"


def _study_header(present: list[dict]) -> str:
    if not present:
        return "# Study\n\nNo finished cells."
    lines = [
        _agreed(present, "Data", lambda c: _data_line(c.get("data", {}))),
        _agreed(present, "Weights", lambda c: c.get("weights")),
        _agreed(present, "Input size", lambda c: c.get("image_size")),
        _agreed(present, "Folds", lambda c: c.get("n_folds")),
        _agreed(present, "Seed", lambda c: c.get("seed")),
    ]
    return "# Study\n\n" + "  \n".join(lines) + (
        "\n\nEach cell: mean ± std over folds (population std, ddof=0). CNN = argmax of "
        "the fine-tuned network; SVM = SVM probe on its pooled features; MEC = the CNN's "
        "probabilities with the minimum-expected-cost decision. Mean rows: mean of the "
        "model means present; their ± is the spread (population std) of those model "
        "means, not a fold std.")


def _cell_stats(cell: dict) -> dict:
    """Column name -> (mean, std), for the decisions this cell recorded."""
    out = {}
    for key, prefix in DECISION_PREFIX.items():
        decision = cell.get("decisions", {}).get(key)
        if decision is None:
            continue
        mean, std = summarize(decision["per_fold"])
        for m in STUDY_METRICS:
            out[f"{prefix}_{METRIC_COLUMNS[m]}"] = (mean[m], std[m])
    return out


def _clinical_cells(cell: dict) -> list[str]:
    """The clinical columns of one cell ("n/a" for cells run before they existed)."""
    c = cell.get("clinical", {}).get("cnn_calibrated", {})
    out = []
    for column, metric in CLINICAL_COLUMNS.items():
        entry = c.get(metric)
        if "[95% CI]" in column:
            out.append(format_ci(entry))
        else:
            out.append("n/a" if not entry or entry.get("value") is None
                       else f"{entry['value']:.3f}")
    return out


def _clinical_means(cells: list) -> list[str]:
    out = []
    for metric in CLINICAL_COLUMNS.values():
        v = [c["clinical"]["cnn_calibrated"][metric]["value"] for c in cells
             if c.get("clinical", {}).get("cnn_calibrated", {}).get(metric, {}).get("value")
             is not None]
        out.append(f"{np.mean(v):.3f}" if v else "n/a")
    return out


def _study_rows(cells: dict, models, losses):
    """Rows (lists of strings) in the study's layout, and the missing (loss, model)."""
    rows, missing = [], []
    for loss in losses:
        group = LOSS_GROUPS.get(loss, loss)
        model_means = {c: [] for c in STUDY_COLUMNS}
        for model in models:
            cell = cells.get((loss, model))
            if cell is None:
                missing.append((loss, model))
                rows.append([group, display_model(model)]
                            + ["missing"] * (len(STUDY_COLUMNS) + len(CLINICAL_COLUMNS)))
                continue
            stats = _cell_stats(cell)
            for col, (mean, _) in stats.items():
                model_means[col].append(mean)
            rows.append([group, display_model(model)]
                        + [format_pm(*stats[c]) if c in stats else "n/a" for c in STUDY_COLUMNS]
                        + _clinical_cells(cell))
        n_present = len(models) - sum(1 for lm in missing if lm[0] == loss)
        label = (f"mean ({n_present} models)" if n_present == len(models)
                 else f"mean ({n_present} of {len(models)} models)")
        present = [cells[(loss, m)] for m in models if cells.get((loss, m))]
        rows.append([group, label] + [
            format_pm(*(x[c] for x in summarize({c: model_means[c]}))) if model_means[c]
            else "n/a" for c in STUDY_COLUMNS] + _clinical_means(present))
    return rows, missing


def _blocks(models, losses) -> dict:
    """The study's own cells first, then the cells beyond it (other backbones or losses)."""
    s_models = [m for m in models if m in STUDY_MODELS]
    s_losses = [lo for lo in losses if lo in STUDY_LOSSES]
    blocks = {}
    if s_models and s_losses:
        blocks["## The study's cells"] = (s_models, s_losses)
    new_models = [m for m in models if m not in STUDY_MODELS]
    new_losses = [lo for lo in losses if lo not in STUDY_LOSSES]
    if new_losses:
        blocks["## Beyond the study: other losses"] = (list(models), new_losses)
    if new_models and s_losses:
        blocks["## Beyond the study: other backbones"] = (new_models, s_losses)
    return blocks


def study_table(cells: dict, models, losses) -> tuple[str, str, list]:
    """The study's table from per-cell ``results.json`` dicts.

    Args:
      cells: ``{(loss, model): results dict, or None if the cell did not finish}``;
        a (loss, model) pair absent from ``cells`` counts as missing too.
      models: model keys in row order (e.g. ``["vgg16", "vgg19", "resnet50",
        "mobilenetv2"]``).
      losses: loss keys in group order (``"categorical"``, ``"binary"``, ``"custom"``).

    Returns:
      ``(markdown, csv_text, missing)``: rows grouped by loss (``custom`` labelled
      ``custom_loss``), one per model plus a mean row per group; columns
      :data:`STUDY_COLUMNS`, each ``"mean ± std"``. Missing cells show ``"missing"`` in
      their row, are listed under the table and returned as ``[(loss, model), ...]``.
    """
    present = [cells[(lo, m)] for lo in losses for m in models if cells.get((lo, m))]
    header = ["loss", "model", *STUDY_COLUMNS, *CLINICAL_COLUMNS]
    blocks, rows, missing = [], [], []
    for title, (b_models, b_losses) in _blocks(models, losses).items():
        b_rows, b_missing = _study_rows(cells, b_models, b_losses)
        rows += b_rows
        missing += b_missing
        blocks += [title, _md_table(header, b_rows)]
    missing_line = ("Missing cells (not run or not finished): "
                    + ", ".join(f"{LOSS_GROUPS.get(lo, lo)}/{display_model(m)}"
                                for lo, m in missing)) if missing else "Missing cells: none."
    markdown = "\n\n".join([_study_header(present), *blocks, missing_line]) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return markdown, buf.getvalue(), missing


def acc_vs_plus_points(cells: dict, models, losses) -> list[dict]:
    """One point per cell and decision: fold-mean custom_plus and accuracy (see
    :func:`handjax.report.plots.plot_acc_vs_plus`)."""
    points = []
    for li, loss in enumerate(losses):
        for model in models:
            for key, decision in (cells.get((loss, model)) or {}).get("decisions", {}).items():
                if key not in DECISION_PREFIX:
                    continue
                mean, _ = summarize(decision["per_fold"])
                points.append({"plus": mean["custom_plus"], "accuracy": mean["accuracy"],
                               "label": f"{display_model(model)} {DECISION_PREFIX[key]}",
                               "loss": li, "decision": key})
    return points


def write_study(study_dir, cells: dict, models, losses) -> list:
    """Write ``study.md``, ``study.csv`` and ``study_acc_vs_plus.png`` into
    ``study_dir``; returns the missing ``(loss, model)`` cells."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    markdown, csv_text, missing = study_table(cells, models, losses)
    (study_dir / "study.md").write_text(markdown, encoding="utf-8")
    (study_dir / "study.csv").write_text(csv_text, encoding="utf-8")
    markers = {"cnn": ("o", "CNN"), "svm": ("s", "SVM"), "cnn_mec": ("^", "MEC")}
    plots.plot_acc_vs_plus(acc_vs_plus_points(cells, models, losses),
                           [LOSS_GROUPS.get(lo, lo) for lo in losses], markers,
                           study_dir / "study_acc_vs_plus.png")
    return missing
