"""``predictions.csv``: every photo's out-of-fold prediction under every decision rule, the
one file every clinical figure is computed from (:func:`write_predictions`,
:func:`read_predictions`)."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from handjax.data.records import CLASSES
from handjax.errors import HandjaxError

# The decision rules, defined once: each a column group of predictions.csv, in its order.
RULES = ("cnn", "cnn_calibrated", "svm", "cnn_mec")
MEC_RULE = "cnn_mec"  # minimum-expected-cost decisions on the calibrated cnn probabilities
MEC_BASIS = "cnn_calibrated"  # the probabilities cnn_mec decides on (and is scored with)
# The rules the study's per-fold metrics are reported for (results.json's "decisions", the
# study table): its CNN, SVM and MEC columns. cnn_calibrated's probabilities are the clinical
# figures' (and the locked model's); its decisions are reported there, not per fold.
STUDY_RULES = tuple(r for r in RULES if r != MEC_BASIS)
BASE_COLUMNS = ("file", "subject", "fold", "label")
PROB_TOLERANCE = 1e-3  # |sum_k p_k - 1| allowed in a predictions.csv row


class PredictionsError(HandjaxError, ValueError):
    """A predictions.csv (or a pair of them) that cannot be read or compared."""


# --------------------------------------------------------------------------------------------
# predictions.csv


@dataclasses.dataclass
class Predictions:
    """Pooled out-of-fold predictions of one run, one row per photo.

    ``probs[rule]`` is ``(N, 3)`` float64 for each rule of :data:`RULES` present but
    ``"cnn_mec"`` (which decides on ``probs["cnn_calibrated"]``); ``pred[rule]`` is ``(N,)``
    int class ids for every rule present. ``extra``
    holds any further CSV columns (e.g. subgroup metadata) as string arrays. With repeated
    cross-validation a photo has one row per repeat: ``repeat`` says which (the CSV column
    ``repeat`` is written when there is more than one), ``fold`` is the fold within it.
    """
    file: np.ndarray
    subject: np.ndarray
    fold: np.ndarray
    label: np.ndarray
    probs: dict
    pred: dict
    extra: dict = dataclasses.field(default_factory=dict)
    class_names: tuple = CLASSES
    repeat: np.ndarray | None = None

    def __post_init__(self):
        if self.repeat is None:
            self.repeat = np.zeros(len(self.file), np.int64)

    @property
    def repeats(self) -> int:
        return max(len(np.unique(self.repeat)), 1)

    def rows(self, mask: np.ndarray) -> "Predictions":
        """The rows ``mask`` selects (e.g. one repeat's)."""
        return dataclasses.replace(
            self, file=self.file[mask], subject=self.subject[mask], fold=self.fold[mask],
            label=self.label[mask], probs={r: p[mask] for r, p in self.probs.items()},
            pred={r: p[mask] for r, p in self.pred.items()},
            extra={c: np.asarray(v)[mask] for c, v in self.extra.items()},
            repeat=self.repeat[mask])

    @staticmethod
    def concat(parts: list) -> "Predictions":
        """Rows of several ``Predictions`` (e.g. one per repeat) one after another."""
        cat = np.concatenate
        first = parts[0]
        return dataclasses.replace(
            first, file=cat([p.file for p in parts]), subject=cat([p.subject for p in parts]),
            fold=cat([p.fold for p in parts]), label=cat([p.label for p in parts]),
            probs={r: cat([p.probs[r] for p in parts]) for r in first.probs},
            pred={r: cat([p.pred[r] for p in parts]) for r in first.pred},
            extra={c: cat([np.asarray(p.extra[c]) for p in parts]) for c in first.extra},
            repeat=cat([p.repeat for p in parts]))

    def probs_for(self, rule: str) -> np.ndarray:
        """The probabilities behind ``rule``'s decisions (cnn_mec decides on the cnn's)."""
        return self.probs[MEC_BASIS if rule == MEC_RULE else rule]


def prediction_columns(rules=RULES) -> list[str]:
    """The CSV header, in order, for the given rules (``cnn_mec`` has a decision column only)."""
    cols = list(BASE_COLUMNS)
    for rule in rules:
        if rule != MEC_RULE:
            cols += [f"p_{rule}_{c}" for c in CLASSES]
        cols.append(f"pred_{rule}")
    return cols


def present_rules(pred: dict) -> list[str]:
    return [r for r in RULES if r in pred]


def write_predictions(path, preds: Predictions) -> Path:
    """Write ``preds`` as ``predictions.csv``: class names for labels and decisions, floats as
    shortest round-trip reprs of the float64 probabilities renormalised to sum to 1 (so a
    recomputation from the file equals the in-memory figures)."""
    rules = present_rules(preds.pred)
    n = len(preds.file)
    columns = {"subject": preds.subject, "fold": preds.fold, "label": preds.label,
               "repeat": preds.repeat,
               **{f"p_{r}": p for r, p in preds.probs.items()},
               **{f"pred_{r}": p for r, p in preds.pred.items()}, **preds.extra}
    for name, values in columns.items():
        if len(values) != n:
            raise PredictionsError(f"{path}: column {name} has {len(values)} rows, file has {n}")
    lacking = [r for r in rules if (MEC_BASIS if r == MEC_RULE else r) not in preds.probs]
    if lacking:
        raise PredictionsError(f"{path}: decisions pred_{lacking[0]} come without the "
                               f"probabilities behind them (probs['{MEC_BASIS}'] for cnn_mec)")
    probs = {r: _normalised(np.asarray(p, np.float64), f"probs[{r!r}]", path)
             for r, p in preds.probs.items()}
    extra_cols = list(preds.extra)
    repeated = preds.repeats > 1
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow((["repeat"] if repeated else []) + prediction_columns(rules) + extra_cols)
        for i in range(n):
            row = ([int(preds.repeat[i])] if repeated else []) + [
                preds.file[i], preds.subject[i], int(preds.fold[i]),
                CLASSES[int(preds.label[i])]]
            for r in rules:
                if r != MEC_RULE:
                    row += [repr(float(v)) for v in probs[r][i]]
                row.append(CLASSES[int(preds.pred[r][i])])
            w.writerow(row + [preds.extra[c][i] for c in extra_cols])
    return Path(path)


def _normalised(p: np.ndarray, column: str, path) -> np.ndarray:
    """Rows checked to sum to 1 within :data:`PROB_TOLERANCE`, then renormalised in float64."""
    s = p.sum(-1)
    bad = ~(np.abs(s - 1) <= PROB_TOLERANCE) | ~np.isfinite(p).all(-1) | (p < 0).any(-1)
    if bad.any():
        i = int(np.argmax(bad))
        raise PredictionsError(
            f"{path}: column {column}: data row {i + 1} probabilities sum to {s[i]:.6g} (or are "
            f"negative / not finite); each row must sum to 1 within {PROB_TOLERANCE}")
    return p / s[:, None]


def _class_ids(values, column: str, path) -> np.ndarray:
    index = {c: i for i, c in enumerate(CLASSES)}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise PredictionsError(f"{path}: column {column}: unknown class name {unknown[0]!r}; "
                               f"expected one of {', '.join(CLASSES)}")
    return np.array([index[v] for v in values], np.int64)


def _float_column(rows, column: str, path) -> np.ndarray:
    try:
        return np.array([float(r[column]) for r in rows], np.float64)
    except (TypeError, ValueError) as e:  # TypeError: a short row's missing cell
        raise PredictionsError(f"{path}: column {column}: not a number ({e})") from None


def read_predictions(path) -> Predictions:
    """Read a ``predictions.csv`` written by :func:`write_predictions`.

    Required columns: ``file, subject, fold, label`` and, for each rule present (one whose
    ``pred_<rule>`` column exists), its ``p_<rule>_<class>`` columns; ``pred_cnn_mec`` needs the
    cnn's. A malformed file raises :class:`PredictionsError` (a ``ValueError``) with one line
    naming the file and the column.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in BASE_COLUMNS if c not in header]
    rules = [r for r in RULES if f"pred_{r}" in header]
    if not rules:
        missing.append("pred_cnn")
    if MEC_RULE in rules and MEC_BASIS not in rules:
        missing.append(f"pred_{MEC_BASIS}")
    missing += [c for c in prediction_columns(rules) if c not in header and c not in missing]
    if missing:
        raise PredictionsError(f"{path}: missing column {missing[0]} (header: {', '.join(header)})")
    if not rows:
        raise PredictionsError(f"{path}: no rows (a run writes one row per photo)")
    ragged = [i for i, r in enumerate(rows) if None in r or None in r.values()]
    if ragged:  # DictReader: None keys hold surplus cells, None values stand for missing ones
        raise PredictionsError(f"{path}: data row {ragged[0] + 1} has a different number of "
                               f"cells than the header's {len(header)} columns")
    fold = _int_column(rows, "fold", path)
    repeat = _int_column(rows, "repeat", path) if "repeat" in header else None
    probs = {}
    for r in rules:
        if r != MEC_RULE:
            p = np.stack([_float_column(rows, f"p_{r}_{c}", path) for c in CLASSES], -1)
            probs[r] = _normalised(p.reshape(len(rows), len(CLASSES)), f"p_{r}_*", path)
    known = set(prediction_columns(rules)) | {"repeat"}
    return Predictions(
        file=np.array([r["file"] for r in rows], dtype=object),
        subject=np.array([r["subject"] for r in rows], dtype=object),
        fold=fold,
        label=_class_ids([r["label"] for r in rows], "label", path),
        probs=probs,
        pred={r: _class_ids([x[f"pred_{r}"] for x in rows], f"pred_{r}", path) for r in rules},
        extra={c: np.array([r[c] for r in rows], dtype=object) for c in header if c not in known},
        repeat=repeat,
    )


def _int_column(rows, column: str, path) -> np.ndarray:
    try:
        return np.array([int(r[column]) for r in rows], np.int64)
    except (TypeError, ValueError) as e:
        raise PredictionsError(f"{path}: column {column}: not an integer ({e})") from None


# --------------------------------------------------------------------------------------------
