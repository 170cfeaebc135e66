"""The data half of a run: the photos, who is in them, and how they are split.

A :class:`Cohort` is what evaluation and the reports read: the photos (and their fixed
augmented views), labels, subjects, metadata columns, near-duplicate groups, the
cross-validation folds and the inner validation splits. It knows nothing of models; the
fold program's inputs (:class:`handjax.features.FoldInputs`) are built from it.

Augmentation is applied to the *images*: ``V`` views per photo are drawn once (view 0 is
the photo itself, views 1..V-1 random :func:`handjax.data.augment` draws) so that layers
frozen in a phase can be computed once per view.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import numpy as np

from handjax.data.augment import augment
from handjax.data.base import N_FOLDS, Examples
from handjax.data.sources import describe, load_folder, load_metadata, load_synthetic
from handjax.data.splits import duplicate_groups, folds, inner_splits, merge_groups
from handjax.data.synthetic import synthetic_metadata

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import DataSpec


@dataclasses.dataclass(frozen=True)
class Cohort:
    """The photos of a run and their splits (index arrays into ``examples``)."""

    examples: Examples
    dup_groups: np.ndarray | None      # near-duplicate groups (None without dedup)
    subjects: np.ndarray               # one subject id per photo
    metadata: dict                     # subgroup columns, one value per photo
    folds: list                        # [(train, test)] index arrays
    inner: list                        # per fold: inner validation photos (within train)
    views: np.ndarray                  # [V, N, H, W, 3] uint8

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
        return desc


def load_examples(data_spec: DataSpec, seed: int, n_folds: int = N_FOLDS) -> Examples:
    """The configured photos: the user's folder if ``data_spec.root`` is set, else
    synthetic hands."""
    if data_spec.root:
        return load_folder(data_spec.root, image_size=data_spec.image_size,
                           on_error=data_spec.on_error,
                           class_map=dict(data_spec.class_map) if data_spec.class_map else None,
                           min_per_class=n_folds)
    return load_synthetic(n_per_class=data_spec.n_per_class, image_size=data_spec.image_size,
                          seed=seed)


def augmented_views(images: np.ndarray, n_views: int, key: jax.Array) -> np.ndarray:
    """[V, N, H, W, 3] uint8: view 0 is the photo, views 1.. are ``augment`` draws."""
    views = [images]
    for v in range(1, n_views):
        views.append(np.asarray(augment(jax.random.fold_in(key, v), images)))
    return np.stack(views)


def subjects_and_metadata(data_spec: DataSpec, examples: Examples, seed: int) -> tuple[np.ndarray, dict]:
    """Subject ids and subgroup columns: the metadata CSV's, the synthetic set's (two photos,
    left and right hand, per person), or each photo its own subject."""
    if data_spec.metadata:
        return load_metadata(data_spec.metadata, examples.ids)
    if not data_spec.root:
        return synthetic_metadata(examples.ids, seed)
    return np.asarray(examples.ids, str), {}


def load_cohort(data_spec: DataSpec, seed: int, n_folds: int, inner_val: float = 0.0) -> Cohort:
    """Photos, subjects and metadata, folds grouped by subject and near-duplicate group, the
    inner validation splits and the image views."""
    from handjax import distributed   # processes may share $HANDJAX_CACHE: one writes it
    examples = distributed.primary_first(lambda: load_examples(data_spec, seed, n_folds))
    dup = duplicate_groups(examples.images) if data_spec.dedup else None
    subjects, metadata = subjects_and_metadata(data_spec, examples, seed)
    known = subjects if data_spec.metadata or not data_spec.root else None
    splits = folds(examples.labels, n_splits=n_folds, seed=seed, groups=dup, subjects=known)
    inner = inner_splits(splits, np.asarray(examples.labels), merge_groups(dup, subjects),
                         inner_val, seed)
    views = augmented_views(examples.images, data_spec.views,
                            jax.random.fold_in(jax.random.key(seed), 2))
    return Cohort(examples, dup, subjects, metadata, splits, inner, views)
