"""Cross-validation folds that keep near-duplicate photos on one side of every split."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from handjax.data.base import N_FOLDS, DataError

log = logging.getLogger(__name__)


def _dhash(images: np.ndarray, hash_size: int = 12) -> np.ndarray:
    """Difference hash, bool [N, hash_size**2]: is each pixel of a small gray copy darker than
    its right neighbour? Survives resizing and re-encoding, which scraped photo sets are full of."""
    bits = []
    for im in np.asarray(images):
        g = Image.fromarray(np.asarray(im, np.uint8)).convert("L")
        g = np.asarray(g.resize((hash_size + 1, hash_size), Image.Resampling.BOX), np.int16)
        bits.append((g[:, 1:] > g[:, :-1]).ravel())
    return np.array(bits, bool).reshape(len(bits), hash_size * hash_size)


def duplicate_groups(images, *, max_distance: int = 20) -> np.ndarray:
    """Group id per image, int [N], numbered by first appearance: images whose 144-bit
    difference hashes differ in at most ``max_distance`` bits are linked, and linked images
    (transitively) share a group.

    The default sits between what was measured on synthetic_hands at 64-112 px: copies resized
    to 0.5-1.5x and JPEG re-encoded differ by <= 18 bits, distinct hands by >= 34.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must be [N, H, W, 3], got shape {images.shape}")
    b = _dhash(images).astype(np.float32)
    dist = b @ (1 - b).T + (1 - b) @ b.T
    _, comp = connected_components(csr_matrix(dist <= max_distance), directed=False)
    # renumber by first appearance, so ids do not depend on scipy's labelling
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def folds(labels, *, n_splits: int = N_FOLDS, seed: int = 0, images=None, groups=None) -> list:
    """[(train_idx, test_idx)] * n_splits, stratified by label.

    images=None and groups=None: exactly ``StratifiedKFold(n_splits, shuffle=True,
    random_state=seed)``. With images (or their precomputed ``duplicate_groups``):
    near-duplicates are kept in one fold by ``StratifiedGroupKFold(n_splits, shuffle=True,
    random_state=seed)``, so re-encoded or resized copies never sit on both sides of a split.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, counts = np.unique(labels, return_counts=True)
    if n_splits < 2 or counts.min() < n_splits:
        raise DataError(f"{n_splits}-fold split needs at least {n_splits} examples per class "
                        f"(and n_splits >= 2), smallest class has {counts.min()}")
    if images is not None and groups is not None:
        raise ValueError("pass images or their groups, not both")
    x = np.zeros((len(labels), 1))
    if images is None and groups is None:
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, labels))
    if images is not None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        groups = duplicate_groups(images)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise DataError(f"{len(groups)} duplicate groups but {len(labels)} labels")
    sizes = np.bincount(groups)
    log.info("folds: %d near-duplicate group(s) covering %d images, each kept in one fold",
             int((sizes > 1).sum()), int(sizes[sizes > 1].sum()))
    splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(x, labels, groups))
