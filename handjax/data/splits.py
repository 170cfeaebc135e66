"""Cross-validation folds that keep near-duplicate photos, and photos of one subject, on one side
of every split."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from handjax.data.records import N_FOLDS, DataError
from handjax.data.store import batches

log = logging.getLogger(__name__)

# Centre crops hashed besides the whole photo, as fractions of its side: a copy cropped to
# 80-90% is then within a few percent of one of them (see duplicate_groups).
CROP_SCALES = (0.95, 0.9, 0.85, 0.8)


# The eight ways a photo can be turned over or round (the dihedral group of the square), as
# functions of a square array. Rotations are clockwise, as a photo viewer turns them.
ORIENTATIONS = {
    "as is": lambda a: a,
    "mirrored": lambda a: a[:, ::-1],
    "flipped vertically": lambda a: a[::-1],
    "rotated 180°": lambda a: a[::-1, ::-1],
    "rotated 90°": lambda a: np.rot90(a, -1),
    "rotated 270°": lambda a: np.rot90(a, 1),
    "mirrored and rotated 90°": lambda a: np.rot90(a[:, ::-1], -1),
    "mirrored and rotated 270°": lambda a: np.rot90(a[:, ::-1], 1),
}
# What undoes each: if B is A turned by o, then A is B turned by INVERSE[o].
INVERSE = {**{o: o for o in ORIENTATIONS}, "rotated 90°": "rotated 270°",
           "rotated 270°": "rotated 90°"}
MIRRORED = ("as is", "mirrored")   # what the training folds compare (duplicate_groups)
MAX_DISTANCE = 40                  # bits; see duplicate_groups


def _dhash(images: np.ndarray, hash_size: int = 12, scales=(1.0,),
           orientations=("as is",)) -> np.ndarray:
    """Difference hashes, bool [N, V, 2 * hash_size**2]: in a small gray copy, does each pixel
    rise toward its right neighbour, and toward the one below, by more than the median step?
    (The median, not 0: a smooth lighting gradient would otherwise set most bits alike in every
    photo. On 300 distinct low-texture images, pairs within the threshold: 315 with right
    neighbours against 0, 64 against the median, 24 with the rows below added.) One hash per
    centre crop in ``scales`` (1.0: the whole photo) and, within it, per orientation in
    ``orientations`` (names of :data:`ORIENTATIONS`, turning the small square copy, which
    turns with the photo): variant ``v`` is crop ``v // len(orientations)`` turned by
    orientation ``v % len(orientations)``. Survives resizing and re-encoding, which scraped
    photo sets are full of."""
    turns = [ORIENTATIONS[o] for o in orientations]

    def one(im):
        g = Image.fromarray(np.asarray(im, np.uint8)).convert("L")
        w, h = g.size
        bits = []
        for s in scales:
            box = ((w - w * s) / 2, (h - h * s) / 2, (w + w * s) / 2, (h + h * s) / 2)
            a = np.asarray(g.resize((hash_size + 1,) * 2, Image.Resampling.BOX, box=box),
                           np.int16)
            for turn in turns:
                v = turn(a)
                right, down = v[:-1, 1:] - v[:-1, :-1], v[1:, :-1] - v[:-1, :-1]
                bits.append(np.concatenate([(right > np.median(right)).ravel(),
                                            (down > np.median(down)).ravel()]))
        return np.stack(bits)
    out = np.empty((len(images), len(scales) * len(turns), 2 * hash_size * hash_size), bool)
    for start, rows in _per_photo(one, images):
        out[start:start + len(rows)] = rows
    return out


def _per_photo(fn, images):
    """``(start, [fn(photo)])`` per batch of ``images`` (in RAM or a memmap, read in
    batches), on every core: PIL's resizing and hashlib let go of the GIL."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start, rows in batches(images):
            yield start, list(pool.map(fn, rows))


def _closest_variant(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, N] bits between photo i's whole-photo hash (variant 0) and photo j's closest
    variant, and which variant that is (one direction: row i, column j)."""
    b = hashes.astype(np.float32)
    whole = b[:, 0]
    dist = np.full((len(b), len(b)), np.inf, np.float32)
    arg = np.zeros((len(b), len(b)), np.int64)
    for v in range(b.shape[1]):
        d = whole @ (1 - b[:, v]).T + (1 - whole) @ b[:, v].T
        arg = np.where(d < dist, v, arg)
        dist = np.minimum(dist, d)
    return dist, arg


def _hash_distance(hashes: np.ndarray) -> np.ndarray:
    """[N, N] bits between photo i's whole-photo hash and photo j's closest variant (crop or
    orientation), whichever direction is smaller: one of two copies may be the cropped one."""
    dist, _ = _closest_variant(hashes)
    return np.minimum(dist, dist.T)


def _first_appearance(ids: np.ndarray) -> np.ndarray:
    """Renumbers ids 0, 1, ... by first appearance, so they do not depend on who labelled them."""
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()]


def duplicate_groups(images, *, max_distance: int = MAX_DISTANCE,
                     orientations=MIRRORED) -> np.ndarray:
    """Group id per image, int [N], numbered by first appearance: images whose 288-bit
    difference hashes differ in at most ``max_distance`` bits are linked, and linked images
    (transitively) share a group.

    A pair is compared in each of ``orientations`` (by default as is and mirrored: a mirrored
    copy matches; :data:`ORIENTATIONS` names all eight, flips and 90° rotations too) and
    across centre crops (``CROP_SCALES``: a copy cropped to 80-90% of its side matches the
    same crop of the other).
    The default sits between what was measured at 64 px (150 synthetic hands; 150 textured
    procedural images): copies mirrored, centre-cropped to 80-90%, resized to 0.5-1.5x or
    JPEG re-encoded (quality 70) differ by <= 37 bits (one 90% crop of 300 by 44), distinct
    photos by >= 83. Off-centre crops are mostly missed (5% caught), and distinct photos with
    little texture (smooth gradients, flat shapes) can merge: 61 of 300 such photos did.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must be [N, H, W, 3], got shape {images.shape}")
    hashes = _dhash(images, scales=(1.0,) + CROP_SCALES, orientations=orientations)
    rows, cols = _linked_pairs(hashes, max_distance)
    n = len(hashes)
    links = csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, n))
    _, comp = connected_components(links, directed=False)
    return _first_appearance(comp)


def _linked_pairs(hashes: np.ndarray, max_distance: int, block: int = 256) -> tuple:
    """``(i, j)`` index arrays of every pair whose photo i's whole-photo hash is within
    ``max_distance`` bits of photo j's closest variant: the links of
    :func:`_hash_distance` (taken undirected, the smaller direction counts), found a block
    of rows at a time, so memory grows as block x N, not N x N (20,000 photos: 1.6 GB)."""
    n, n_variants, n_bits = hashes.shape
    whole = hashes[:, 0] * np.float32(2) - 1   # +-1: one matmul per variant
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n, block):
        mine = whole[start:start + block]
        best = np.full((len(mine), n), np.inf, np.float32)
        for v in range(n_variants):
            # Hamming distance = (bits - agreements + disagreements) / 2, exact in float32
            d = (n_bits - mine @ (hashes[:, v] * np.float32(2) - 1).T) / 2
            np.minimum(best, d, out=best)
        i, j = np.nonzero(best <= max_distance)
        rows.append(i + start)
        cols.append(j)
    return np.concatenate(rows), np.concatenate(cols)


def copies_of(originals, images, *, max_distance: int = MAX_DISTANCE,
              orientations=tuple(ORIENTATIONS)) -> list[tuple[int, int, str]]:
    """``[(index in images, index in originals, how)]``: each of ``images`` that is one of
    ``originals`` or a near-duplicate of one (an external validation set against the
    training photos), turned any of the eight ways by default, cropped to 80-90%, resized
    or re-encoded.

    The photos of both sets are grouped as :func:`duplicate_groups` groups them (with
    ``orientations``), so a copy of a copy is caught too; each caught photo is paired with
    the original of its group nearest to it, and ``how`` names the turn that takes that
    original to it (``"mirrored"``, ``"rotated 90°"`` (clockwise), ...; ``"as is"`` for a
    plain, resized or re-encoded copy), with ``", cropped"`` / ``", a wider view"`` when the
    copy is a centre crop of the original or the original of the copy; ``"through another
    photo"`` when the two are linked only through a third."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    originals, images = np.asarray(originals), np.asarray(images)
    n = len(originals)
    both = np.concatenate([originals, images])
    if both.ndim != 4 or both.shape[-1] != 3:
        raise DataError(f"images must be [N, H, W, 3], got shape {both.shape}")
    dist, arg = _closest_variant(_dhash(both, scales=(1.0,) + CROP_SCALES,
                                        orientations=orientations))
    sym = np.minimum(dist, dist.T)
    _, comp = connected_components(csr_matrix(sym <= max_distance), directed=False)
    out = []
    for j in range(len(images)):
        linked = np.flatnonzero(comp[:n] == comp[n + j])
        if len(linked):
            i = int(linked[np.argmin(sym[n + j, linked])])
            out.append((j, i, _how(dist, arg, n + j, i, orientations, max_distance)))
    return out


def _how(dist, arg, copy: int, original: int, orientations, max_distance) -> str:
    """How photo ``copy`` is derived from photo ``original`` (see :func:`copies_of`)."""
    forward, backward = dist[copy, original], dist[original, copy]
    if min(forward, backward) > max_distance:
        return "through another photo"
    k = len(orientations)
    if forward <= backward:   # the copy's whole photo ~ the original turned (and cropped)
        v = int(arg[copy, original])
        return orientations[v % k] + (", cropped" if v >= k else "")
    v = int(arg[original, copy])   # the original ~ the copy turned: undo the turn
    return INVERSE[orientations[v % k]] + (", a wider view" if v >= k else "")


def identical_groups(images) -> np.ndarray:
    """Group id per image, int [N], numbered by first appearance: images with the very same
    decoded pixels (a byte copy, a hard link) share a group, whether or not near-duplicate
    detection (``data.dedup``) is on."""
    import hashlib

    def digest(im):
        return hashlib.sha256(np.ascontiguousarray(im).tobytes()).digest()
    return _first_appearance(np.array([d for _, ds in _per_photo(digest, images) for d in ds],
                                      "S32"))


def label_conflicts(groups, labels) -> list[np.ndarray]:
    """The groups (index arrays) whose photos carry more than one label: one photo, or copies
    of it, under two classes would train and test against itself with conflicting answers."""
    _, groups = np.unique(np.asarray(groups), return_inverse=True)
    pairs = np.unique(np.stack([groups.ravel(), np.asarray(labels).ravel()], 1), axis=0)
    mixed = np.flatnonzero(np.bincount(pairs[:, 0]) > 1)     # groups with two or more labels
    return [np.flatnonzero(groups == g) for g in mixed]


def merge_groups(*group_arrays) -> np.ndarray:
    """One group id per photo, int [N], numbered by first appearance, joining every relation
    given: photos that share an id in any of the arrays (near-duplicate groups, subject ids, of
    any hashable dtype) share a group, transitively (union-find). ``None`` arrays are skipped."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    arrays = [np.asarray(g).ravel() for g in group_arrays if g is not None]
    if not arrays:
        raise ValueError("merge_groups needs at least one array of group ids")
    n = len(arrays[0])
    if any(len(g) != n for g in arrays):
        raise DataError(f"group arrays differ in length: {[len(g) for g in arrays]}")
    # a bipartite graph: photo i -- node (array k, id), ids of array k offset past array k-1's
    rows, cols, offset = [], [], n
    for g in arrays:
        _, codes = np.unique(g, return_inverse=True)
        rows.append(np.arange(n))
        cols.append(offset + codes.ravel())
        offset += int(codes.max(initial=-1)) + 1
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(offset, offset))
    _, comp = connected_components(graph, directed=False)
    return _first_appearance(comp[:n])


def folds(labels, *, n_splits: int = N_FOLDS, seed: int = 0, images=None, groups=None,
          subjects=None) -> list:
    """[(train_idx, test_idx)] * n_splits, stratified by label.

    Photos that must stay together: near-duplicates (``images``, or their precomputed
    ``duplicate_groups`` as ``groups``) and photos of one subject (``subjects``, one id per
    photo). Both relations are merged (``merge_groups``) and split by
    ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)``, so a copy or another
    photo of the same hand never sits on both sides of a split. With nothing to keep together
    (no relation given, or every group a single photo) the split is exactly
    ``StratifiedKFold(n_splits, shuffle=True, random_state=seed)``.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = _check_labels(labels, n_splits)
    if images is not None and groups is not None:
        raise ValueError("pass images or their groups, not both")
    if images is not None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        groups = duplicate_groups(images)
    for name, g in (("duplicate groups", groups), ("subject ids", subjects)):
        if g is not None and np.shape(g) != labels.shape:
            raise DataError(f"{len(g)} {name} but {len(labels)} labels")
    x = np.zeros((len(labels), 1))
    merged = None if groups is None and subjects is None else merge_groups(groups, subjects)
    if merged is None or merged.max() + 1 == len(labels):
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, labels))
    _log_groups(groups, subjects, merged)
    if merged.max() + 1 < n_splits:
        raise DataError(
            f"{n_splits}-fold split needs at least {n_splits} independent groups of photos, but "
            f"near-duplicates and subjects leave {merged.max() + 1}: use fewer folds")
    splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(x, labels, merged))


def _check_labels(labels, n_splits: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, counts = np.unique(labels, return_counts=True)
    if n_splits < 2 or counts.min() < n_splits:
        raise DataError(f"{n_splits}-fold split needs at least {n_splits} examples per class "
                        f"(and n_splits >= 2), smallest class has {counts.min()}")
    return labels


def _log_groups(groups, subjects, merged) -> None:
    if groups is not None:
        sizes = np.bincount(_first_appearance(np.asarray(groups)))
        log.info("folds: %d near-duplicate group(s) covering %d images, each kept in one fold",
                 int((sizes > 1).sum()), int(sizes[sizes > 1].sum()))
    if subjects is not None:
        log.info("folds: %d subject(s); with near-duplicates, %d groups kept in one fold each",
                 len(np.unique(np.asarray(subjects))), int(merged.max() + 1))


def inner_splits(folds, labels, groups, fraction: float, seed: int) -> list[np.ndarray]:
    """Per fold, an inner validation split of its training photos: about ``fraction`` of
    them (one of ``round(1 / fraction)`` stratified group folds, fewer when a class has
    fewer training photos), stratified by class and never splitting a group (subject or
    duplicate). Empty when ``fraction`` is 0 (the study's protocol)."""
    from sklearn.model_selection import StratifiedGroupKFold
    if fraction <= 0:
        return [np.zeros(0, np.int64) for _ in folds]
    labels, groups = np.asarray(labels), np.asarray(groups)
    out = []
    for k, (train, _) in enumerate(folds):
        train = np.asarray(train)
        smallest = np.bincount(labels[train]).min() if len(train) else 0
        n_splits = min(max(2, round(1 / fraction)), smallest, len(np.unique(groups[train])))
        if n_splits < 2:
            raise DataError(f"fold {k}: too few training photos per class ({smallest}) for "
                            "an inner validation split; set --config.train.inner_val=0")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True,
                                        random_state=seed + 1000 + k)
        _, val = next(splitter.split(train, labels[train], groups[train]))
        out.append(np.sort(train[val]))
    return out
