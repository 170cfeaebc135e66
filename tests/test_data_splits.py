"""handjax.data.splits: folds equal sklearn's, and near-duplicate photos share a fold."""
import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import StratifiedKFold

from handjax import data


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
