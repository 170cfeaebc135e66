"""handjax.data.splits: folds equal sklearn's; near-duplicates (re-encoded, resized, mirrored,
cropped) and photos of one subject share a fold; the measured false-merge margin."""
import io

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import StratifiedKFold

from handjax import data
from handjax.data import splits


@pytest.mark.parametrize("seed", [0, 3])
def test_folds_equal_sklearn(seed):
    labels = np.random.default_rng(seed).integers(0, 3, 47)
    labels[:15] = np.repeat([0, 1, 2], 5)
    ours = data.folds(labels, n_splits=5, seed=seed)
    ref = StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(47), labels)
    for (tr, te), (rtr, rte) in zip(ours, ref, strict=True):
        assert np.array_equal(tr, rtr) and np.array_equal(te, rte)


def test_folds_reject_too_few_per_class():
    with pytest.raises(data.DataError, match="at least 5"):
        data.folds(np.array([0] * 10 + [1] * 4), n_splits=5)


def test_near_duplicates_share_a_test_fold(tmp_path, save_image, caplog):
    # Originals: 8 distinct synthetic hands per class. Copies: 3 per class resized and
    # JPEG re-encoded, as a web image search returns them, in the same class folder.
    synth = data.load_synthetic(n_per_class=8, image_size=data.SYNTHETIC_SIZE)
    pairs = []
    for img, label, sid in zip(synth.images, synth.labels, synth.ids):
        name = sid.replace("/", "_")
        cls = data.CLASSES[label]
        save_image(tmp_path / cls / f"{name}.png", Image.fromarray(img))
        if int(sid[-1]) % 3 == 0:
            small = Image.fromarray(img).resize((180, 180), Image.Resampling.BILINEAR)
            save_image(tmp_path / cls / "copies" / f"{name}.jpg", small, "JPEG", quality=70)
            pairs.append((f"{cls}/{name}.png", f"{cls}/copies/{name}.jpg"))
    ex = data.load_folder(tmp_path, image_size=64)
    groups = data.duplicate_groups(ex.images)
    assert groups.max() + 1 == 24  # each copy joins its original; no distinct hands merge
    for seed in range(4):
        with caplog.at_level("INFO", logger="handjax.data"):
            splits = data.folds(ex.labels, seed=seed, images=ex.images)
        assert "9 near-duplicate group(s) covering 18 images" in caplog.text
        fold_of = np.empty(len(ex.ids), int)
        for k, (tr, te) in enumerate(splits):
            fold_of[te] = k
            assert len(np.intersect1d(tr, te)) == 0
        assert sorted(np.concatenate([te for _, te in splits]).tolist()) == list(range(len(ex.ids)))
        for a, b in pairs:
            assert fold_of[ex.ids.index(a)] == fold_of[ex.ids.index(b)]
        # Precomputed groups give the same split without hashing again.
        same = data.folds(ex.labels, seed=seed, groups=groups)
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, same))
    with pytest.raises(ValueError, match="not both"):
        data.folds(ex.labels, images=ex.images, groups=groups)


def _fit(img, size=64):
    """A copy as the folder loader would store it: letterboxed to ``size``."""
    from handjax.data.decode import _fit_square
    return _fit_square(Image.fromarray(np.asarray(img)), size)


def _centre_crop(img, frac):
    h, w = img.shape[:2]
    ch, cw = round(h * frac), round(w * frac)
    return img[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_mirrored_and_cropped_copies_share_a_group():
    # Measured on 150 synthetic hands: mirrored copies 0 bits away, 82% centre crops <= 24,
    # a mirrored 85% crop re-encoded at quality 70 <= 31; distinct hands >= 83 (threshold 40).
    synth = data.load_synthetic(n_per_class=8, image_size=data.SYNTHETIC_SIZE).images
    copies = {
        "mirror": [im[:, ::-1] for im in synth],
        "crop82": [_centre_crop(im, 0.82) for im in synth],
        "crop88": [_centre_crop(im, 0.88) for im in synth],
        "mirror+crop85+jpeg70": [_jpeg(_centre_crop(im[:, ::-1], 0.85), 70) for im in synth],
    }
    n = len(synth)
    originals = np.stack([_fit(im) for im in synth])
    for kind, imgs in copies.items():
        both = np.concatenate([originals, np.stack([_fit(im) for im in imgs])])
        groups = data.duplicate_groups(both)
        assert np.array_equal(groups[:n], groups[n:]), kind
        assert groups.max() + 1 == n, kind  # and no two distinct hands merged
    # the plain difference hash (one orientation, whole photo) misses both kinds of copy
    plain = splits._hash_distance(splits._dhash(np.concatenate(
        [originals, np.stack([_fit(im) for im in copies["mirror"] + copies["crop82"]])])))
    assert (np.diag(plain[:n, n:2 * n]) > 40).all() and (np.diag(plain[:n, 2 * n:]) > 40).all()


def test_distinct_synthetic_hands_are_not_merged():
    # Measured: no pair of 150 distinct synthetic hands at 64 px within 83 bits; 0 merged.
    images = data.load_synthetic(n_per_class=10, image_size=64).images
    assert data.duplicate_groups(images).tolist() == list(range(len(images)))
    dist = splits._hash_distance(
        splits._dhash(images, scales=(1.0,) + splits.CROP_SCALES, orientations=splits.MIRRORED))
    assert dist[np.triu_indices(len(images), 1)].min() >= 60  # margin over the threshold 40


def test_mirror_hash_is_the_hash_of_the_mirrored_photo():
    x = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3)).astype(np.uint8)
    both = splits._dhash(x, scales=(1.0, 0.5), orientations=splits.MIRRORED)
    assert both.shape == (3, 4, 288)
    assert np.array_equal(both[:, 1], splits._dhash(x[:, :, ::-1])[:, 0])
    assert np.array_equal(both[:, 2], splits._dhash(x[:, 10:30, 15:45])[:, 0])  # centre half
    assert np.array_equal(both[:, 3], splits._dhash(x[:, 10:30, 15:45][:, :, ::-1])[:, 0])
    dist = splits._hash_distance(both)
    ref = np.array([[min(np.sum(both[i, 0] != both[j, v]) for v in range(4)) for j in range(3)]
                    for i in range(3)])
    np.testing.assert_array_equal(dist, np.minimum(ref, ref.T))


def _fold_of(splits_, n):
    fold = np.full(n, -1)
    for k, (tr, te) in enumerate(splits_):
        assert len(np.intersect1d(tr, te)) == 0 and (fold[te] == -1).all()
        fold[te] = k
    assert (fold >= 0).all()
    return fold


@pytest.mark.parametrize("seed", [0, 2])
def test_no_duplicate_groups_gives_exactly_stratified_kfold(seed):
    labels = np.repeat([0, 1, 2], [9, 7, 8])
    ref = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(24), labels))
    for kw in (dict(groups=np.arange(24)[::-1]), dict(subjects=[f"s{i}" for i in range(24)]),
               dict(groups=np.arange(24), subjects=np.arange(24) + 100)):
        ours = data.folds(labels, n_splits=5, seed=seed, **kw)
        for (tr, te), (rtr, rte) in zip(ours, ref, strict=True):
            assert np.array_equal(tr, rtr) and np.array_equal(te, rte), kw


def _reference_merge(*arrays):
    """Label propagation to a fixed point: each photo takes the smallest label of any photo
    sharing an id with it in any array."""
    lab = np.arange(len(arrays[0]))
    while True:
        old = lab.copy()
        for g in arrays:
            for v in set(g):
                idx = [i for i, x in enumerate(g) if x == v]
                lab[idx] = lab[idx].min()
        if np.array_equal(lab, old):
            return lab


def test_merge_groups_is_the_union_of_relations():
    rng = np.random.default_rng(0)
    for _ in range(20):
        dup = rng.integers(0, 30, 40)
        subj = np.array([f"p{v}" for v in rng.integers(0, 25, 40)])
        got = splits.merge_groups(dup, None, subj)
        ref = _reference_merge(dup.tolist(), subj.tolist())
        # the same partition: equal ids exactly where the reference labels are equal
        assert np.array_equal(got[:, None] == got[None, :], ref[:, None] == ref[None, :])
        assert got[0] == 0 and set(got) == set(range(got.max() + 1))
    assert splits.merge_groups([5, 5, 7], [1, 2, 2]).tolist() == [0, 0, 0]
    with pytest.raises(data.DataError, match="differ in length"):
        splits.merge_groups([0, 1], [0, 1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_never_split_a_subject_or_a_duplicate_group(seed):
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(24), rng.integers(1, 4, 24))   # 1-3 photos per subject
    labels = subjects % 3
    n = len(labels)
    groups = np.arange(n)
    for a, b in rng.integers(0, n, (4, 2)):   # a few near-duplicates across subjects
        if labels[a] == labels[b]:
            groups[groups == groups[b]] = groups[a]
    fold = _fold_of(data.folds(labels, n_splits=4, seed=seed, groups=groups,
                               subjects=subjects), n)
    for rel in (subjects, groups):
        for g in np.unique(rel):
            assert len(set(fold[rel == g])) == 1
    # stratified: every fold holds every class
    for k in range(4):
        assert set(labels[fold == k]) == {0, 1, 2}


def test_too_few_groups_for_the_folds_is_one_clear_error():
    labels = np.repeat([0, 1, 2], 6)
    subjects = np.arange(18) % 4   # 4 subjects, each with photos of every class
    with pytest.raises(data.DataError, match=r"leave 4: use fewer folds") as err:
        data.folds(labels, n_splits=5, subjects=subjects)
    assert "\n" not in str(err.value)
    assert len(data.folds(labels, n_splits=4, subjects=subjects)) == 4


def test_label_conflicts_are_the_groups_with_two_labels():
    groups = np.array([5, 5, 7, 7, 9, 2, 2, 2])
    labels = np.array([0, 1, 2, 2, 0, 1, 1, 0])
    got = data.label_conflicts(groups, labels)
    assert [g.tolist() for g in got] == [[5, 6, 7], [0, 1]]
    assert data.label_conflicts(np.arange(4), np.array([0, 1, 2, 0])) == []
    images = np.zeros((3, 4, 4, 3), np.uint8)
    images[1, 0, 0, 0] = 1                       # one value differs: not identical
    assert data.identical_groups(images).tolist() == [0, 1, 0]


# ------------------------------------------------------------- copies of training photos
def test_every_turn_of_a_training_photo_is_caught_and_named():
    """A second set holding each training hand turned each of the eight ways (plus a
    re-encoded 85% crop of a rotation, and a 90°-rotated copy of a rotated copy) has each
    caught and paired with its original, the turn named; distinct hands drawn with another
    seed are not caught in any orientation."""
    train = data.load_synthetic(n_per_class=3, image_size=64, seed=0).images
    other = data.load_synthetic(n_per_class=6, image_size=64, seed=7).images
    turned, want = [], []
    for name, turn in splits.ORIENTATIONS.items():
        for i in range(len(train)):
            turned.append(np.ascontiguousarray(turn(train[i])))
            want.append((len(turned) - 1, i, name))
    crop = _fit(_jpeg(_centre_crop(np.rot90(train[4], -1), 0.85), 70))
    got = splits.copies_of(train, np.concatenate([other, np.stack(turned + [crop])]))
    shift = len(other)
    assert [(j - shift, i, how) for j, i, how in got[:-1]] == want
    assert got[-1] == (shift + len(turned), 4, "rotated 90°, cropped")
    # the original as a crop of a wider copy, and the turn undone in the other direction
    wide = _fit(np.rot90(np.pad(train[1], ((6, 6), (6, 6), (0, 0)), mode="edge"), 1))
    assert splits.copies_of(train[[1]], wide[None]) == [(0, 0, "rotated 270°, a wider view")]
    assert splits.copies_of(train, other) == []


def test_plain_turns_are_missed_by_the_folds_hash_and_caught_by_copies_of():
    """The folds' grouping compares mirrors only (unchanged); the validation guard all eight
    turns, with no distinct hand within the threshold in any of them (150 hands at 64 px)."""
    images = data.load_synthetic(n_per_class=10, image_size=64).images
    flipped = np.ascontiguousarray(images[:5, ::-1])
    both = np.concatenate([images[:5], flipped])
    assert len(np.unique(data.duplicate_groups(both))) == 10
    all_turns = splits._hash_distance(splits._dhash(
        images, scales=(1.0,) + splits.CROP_SCALES, orientations=tuple(splits.ORIENTATIONS)))
    nearest = all_turns[np.triu_indices(len(images), 1)].min()
    print("nearest distinct pair, any turn:", nearest)
    assert nearest > splits.MAX_DISTANCE + 10


def test_blocked_links_are_the_pairs_within_the_threshold():
    """duplicate_groups' links, found a block of rows at a time, are exactly the pairs whose
    full N x N distance (either direction, _hash_distance) is within the threshold."""
    rng = np.random.default_rng(3)
    base = rng.random((40, 1, 288)) < 0.5
    flips = rng.random((40, 4, 288)) < rng.uniform(0, 0.3, (40, 1, 1))   # near and far copies
    hashes = np.concatenate([base, base ^ flips], axis=1)[rng.permutation(40)]
    for t in (0, 20, 40, 90):
        rows, cols = splits._linked_pairs(hashes, t, block=7)
        got = np.zeros((40, 40), bool)
        got[rows, cols] = True
        want = splits._hash_distance(hashes) <= t
        np.testing.assert_array_equal(got | got.T, want)
