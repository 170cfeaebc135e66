"""The data half of a run: the photos, who is in them, and how they are split.

A :class:`Cohort` is what evaluation and the reports read: the photos (and their fixed
augmented views), labels, subjects, metadata columns, near-duplicate groups, the
cross-validation folds and the inner validation splits. It knows nothing of models; the
fold program's inputs (:class:`handjax.train.features.FoldInputs`) are built from it.

Augmentation is applied to the *images*: ``V`` views per photo are drawn once (view 0 is
the photo itself, views 1..V-1 random :func:`handjax.data.augment` draws) so that layers
frozen in a phase can be computed once per view.

Photos and views larger than a run's budget live in ``.npy`` files (:mod:`handjax.data.store`)
and every pass over them (hashing, augmenting, the frozen prefix) reads them in batches.
"""
from __future__ import annotations

import dataclasses
import hashlib

import jax
import numpy as np

from handjax import console
from handjax.data import store as stores
from handjax.data.augment import augment_draws, augment_with
from handjax.data.records import N_FOLDS, DataError, Examples
from handjax.data.sources import (
    describe,
    load_folder,
    load_metadata,
    load_synthetic,
    select,
)
from handjax.data.splits import (
    duplicate_groups,
    folds,
    identical_groups,
    inner_splits,
    label_conflicts,
    merge_groups,
)
from handjax.data.store import Store, batches, drop_pages, finish
from handjax.data.synthetic import synthetic_metadata

# ``data_spec`` below is a :class:`handjax.config.DataSpec`; the data stage does not import
# the config (config stands above it: it names the models the data feed), so the name is
# the annotation's string only.
DataSpec = "handjax.config.DataSpec"


@dataclasses.dataclass(frozen=True)
class Cohort:
    """The photos of a run and their splits (index arrays into ``examples``)."""

    examples: Examples
    dup_groups: np.ndarray | None      # near-duplicate groups (None without dedup)
    subjects: np.ndarray               # one subject id per photo
    metadata: dict                     # subgroup columns, one value per photo
    folds: list                        # [(train, test)] index arrays, repeat-major: R x K
    inner: list                        # per fold: inner validation photos (within train)
    views: np.ndarray                  # [V, N, H, W, 3] uint8 (a read-only memmap on disk)
    repeats: int = 1                   # fold assignments (repeated cross-validation)

    @property
    def n_folds(self) -> int:
        """K, the folds of one repeat."""
        return len(self.folds) // self.repeats

    def repeat_folds(self, r: int) -> list:
        """The K (train, test) splits of repeat ``r``: each photo in one test set."""
        return self.folds[r * self.n_folds:(r + 1) * self.n_folds]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.examples.labels)

    @property
    def test_sets(self) -> list:
        """Per fold, its test photos."""
        return [te for _, te in self.folds]

    @property
    def train_sets(self) -> list:
        """Per fold, the photos its CNN trains on: the training split less the inner one."""
        return [np.asarray(tr)[~np.isin(tr, inner)]
                for (tr, _), inner in zip(self.folds, self.inner)]

    def description(self) -> dict:
        """Source, size, class counts, near-duplicate groups and subjects (results header)."""
        desc = dict(describe(self.examples))
        desc["class_names"] = list(self.examples.class_names)
        if self.dup_groups is None:
            desc["duplicate_groups"] = None
        else:
            _, counts = np.unique(self.dup_groups, return_counts=True)
            desc["duplicate_groups"] = int(np.sum(counts > 1))
        desc["n_subjects"] = len(np.unique(self.subjects))
        desc["subjects_with_several_classes"] = mixed_subjects(
            self.subjects, self.labels, self.examples.class_names)
        return desc


def data_fingerprint(examples: Examples) -> str:
    """SHA-256 of what a run trains on: the photos' ids, labels and decoded pixels (what a
    run's ``ledger.json`` pins)."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, examples.ids)).encode())
    h.update(np.ascontiguousarray(examples.labels, np.int64).tobytes())
    for _, rows in batches(examples.images):   # a photo store on disk is read in batches
        h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def load_examples(data_spec: DataSpec, seed: int, n_folds: int = N_FOLDS,
                  store: Store | None = None) -> Examples:
    """The configured photos: the user's folder if ``data_spec.root`` is set, else
    synthetic hands; in RAM, or in ``store``'s folder when larger than its budget."""
    if data_spec.root:
        return load_folder(data_spec.root, image_size=data_spec.image_size,
                           on_error=data_spec.on_error,
                           class_map=dict(data_spec.class_map) if data_spec.class_map else None,
                           min_per_class=n_folds, store=store)
    return load_synthetic(n_per_class=data_spec.n_per_class, image_size=data_spec.image_size,
                          seed=seed, store=store)


def augmented_views(images: np.ndarray, n_views: int, key: jax.Array,
                    store: Store | None = None, batch: int | None = None) -> np.ndarray:
    """[V, N, H, W, 3] uint8: view 0 is the photo, views 1.. are ``augment`` draws; in RAM,
    or in ``store``'s folder when larger than its budget. Made ``batch`` photos at a time
    (default :data:`handjax.data.store.BATCH`; each photo's draws do not depend on the
    batch: the same values as one call)."""
    store, n, batch = store or Store(), len(images), batch or stores.BATCH
    views = store.empty("views", (n_views,) + tuple(images.shape), np.uint8)
    draws = [augment_draws(jax.random.fold_in(key, v), n) for v in range(n_views)]
    size = -(-n // -(-n // batch)) if n else 1   # even batches: the least padding
    for start, rows in batches(images, size):
        stop = start + len(rows)
        views[0, start:stop] = rows
        for v in range(1, n_views):
            out = augment_with(_padded(draws[v][start:stop], size), _padded(rows, size))
            views[v, start:stop] = np.asarray(out)[:len(rows)]
        drop_pages(views)
    return finish(views)


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` with its last row repeated up to ``size`` rows: one shape, one compilation."""
    if len(rows) == size:
        return rows
    return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


def one_label_per_photo(examples: Examples, dup: np.ndarray | None,
                        on_error: str) -> tuple[Examples, np.ndarray | None]:
    """Refuse (``on_error="raise"``) or leave out with a line (``"skip"``) every group of
    identical or near-duplicate photos filed under more than one class, naming the files
    and their classes. Returns the examples and near-duplicate groups kept."""
    same = identical_groups(examples.images)
    conflicts = label_conflicts(merge_groups(same, dup), examples.labels)
    if not conflicts:
        return examples, dup
    names = examples.class_names
    listing = "; ".join(" = ".join(f"{examples.ids[i]} ({names[examples.labels[i]]})"
                                   for i in group) for group in conflicts)
    what = (f"the same photo under two classes ({len(conflicts)} case(s) of identical or "
            "near-duplicate copies)")
    if on_error != "skip":
        raise DataError(f"{what}: {listing}; keep each photo in one class folder, or "
                             "--config.data.on_error=skip leaves them out")
    console.say(f"left out {what}: {listing}")
    keep = np.setdiff1d(np.arange(len(examples.labels)), np.concatenate(conflicts))
    left_out = [{"file": examples.ids[i], "reason": "the same photo as "
                 + ", ".join(f"{examples.ids[j]} ({names[examples.labels[j]]})"
                             for j in group if j != i) + " under another class"}
                for group in conflicts for i in group]
    kept = select(examples, keep, left_out)   # the record of what was left out goes along
    return kept, None if dup is None else dup[keep]


def mixed_subjects(subjects, labels, class_names) -> dict:
    """``{subject: [its classes]}`` for every subject whose photos carry more than one class
    (one person, normal and RA: one unaffected hand is plausible, a mislabelled file too)."""
    out = {}
    for s in np.unique(subjects):
        classes = np.unique(np.asarray(labels)[np.asarray(subjects) == s])
        if len(classes) > 1:
            out[str(s)] = [class_names[int(c)] for c in classes]
    return out


def say_mixed_subjects(mixed: dict) -> None:
    """One console line when some subjects' photos carry two classes (kept, and counted in
    results.md)."""
    if not mixed:
        return
    shown = "; ".join(f"{s}: {', '.join(c)}" for s, c in list(mixed.items())[:5])
    more = f"; and {len(mixed) - 5} more" if len(mixed) > 5 else ""
    console.say(f"{len(mixed)} subject(s) have photos of more than one class ({shown}{more}); "
                "kept (one unaffected hand is plausible): check the metadata's subject column "
                "if not")


def subjects_and_metadata(data_spec: DataSpec, examples: Examples, seed: int) -> tuple[np.ndarray, dict]:
    """Subject ids and subgroup columns: the metadata CSV's, the synthetic set's (two photos,
    left and right hand, per person), or each photo its own subject."""
    if data_spec.metadata:
        return load_metadata(data_spec.metadata, examples.ids)
    if not data_spec.root:
        return synthetic_metadata(examples.ids, seed)
    return np.asarray(examples.ids, str), {}


def load_cohort(data_spec: DataSpec, seed: int, n_folds: int, inner_val: float = 0.0,
                repeats: int = 1, store: Store | None = None, first=None) -> Cohort:
    """Photos, subjects and metadata, folds grouped by subject and near-duplicate group, the
    inner validation splits and the image views. ``repeats`` R > 1: R fold assignments
    (seeds ``seed .. seed + R - 1``, each subject- and duplicate-aware), repeat-major; the
    first is the R = 1 assignment. ``store``: where photos and views larger than its budget
    go (files, read in batches; default: RAM), the same values either way. ``first(fn)``
    runs the photo loading, which may write the decoded set into ``$HANDJAX_CACHE``: many
    processes share that folder, so the training run passes ``distributed.primary_first``
    (one writes, then the others read)."""
    load = lambda: load_examples(data_spec, seed, n_folds, store)   # noqa: E731
    examples = first(load) if first is not None else load()
    dup = duplicate_groups(examples.images) if data_spec.dedup else None
    examples, dup = one_label_per_photo(examples, dup, data_spec.on_error)
    subjects, metadata = subjects_and_metadata(data_spec, examples, seed)
    say_mixed_subjects(mixed_subjects(subjects, examples.labels, examples.class_names))
    known = subjects if data_spec.metadata or not data_spec.root else None
    labels, groups = np.asarray(examples.labels), merge_groups(dup, subjects)
    splits, inner = [], []
    for r in range(repeats):
        these = folds(examples.labels, n_splits=n_folds, seed=seed + r, groups=dup,
                      subjects=known)
        splits += these
        inner += inner_splits(these, labels, groups, inner_val, seed + r)
    views = augmented_views(examples.images, data_spec.views,
                            jax.random.fold_in(jax.random.key(seed), 2), store)
    return Cohort(examples, dup, subjects, metadata, splits, inner, views, repeats)
