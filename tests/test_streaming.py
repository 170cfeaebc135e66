"""Photos and views on disk (handjax.data.store): the same values as in RAM, read in
batches, so what a load holds does not grow with the number of photos."""
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from handjax import config as configs
from handjax.data import store
from handjax.data.cohort import data_fingerprint, load_cohort
from handjax.models import frozen, keras_weights


def _noise_folder(root, per_class: int, size: int = 64):
    """``per_class`` random-noise PNGs per class (no two alike: no duplicate groups)."""
    rng = np.random.default_rng(per_class)
    for cls in ("normal", "heberden", "ra"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
            Image.fromarray(pixels).save(root / cls / f"p{i:04d}.png")
    return root


def _data_spec(root, size: int = 64):
    c = configs.cell("vgg16", "categorical", "smoke")
    c.data.root, c.data.image_size, c.data.views = str(root), size, 2
    return configs.parse_run(c).data


def test_store_spills_past_its_budget_and_reads_back_the_same(tmp_path):
    ram, disk = store.Store(), store.Store(tmp_path, budget_bytes=99)
    assert not ram.spills((10, 4, 4, 3)) and not disk.spills((1, 4, 4, 3))   # 48 bytes
    assert disk.spills((10, 4, 4, 3))
    a = disk.empty("x", (10, 4, 4, 3))
    values = np.arange(a.size, dtype=np.uint8).reshape(a.shape)
    a[:] = values
    a = store.finish(a)
    assert store.on_disk(a) and not a.flags.writeable
    assert (tmp_path / "x.npy").exists()
    np.testing.assert_array_equal(a, values)
    blocks = list(store.batches(a, 4))
    assert [i for i, _ in blocks] == [0, 4, 8]
    assert all(type(rows) is np.ndarray for _, rows in blocks)   # copies, not the mapping
    np.testing.assert_array_equal(np.concatenate([r for _, r in blocks]), values)


def test_streamed_cohort_equals_the_in_ram_one(tmp_path):
    spec = _data_spec(_noise_folder(tmp_path / "photos", 7))
    ram = load_cohort(spec, 0, 5)
    disk = load_cohort(spec, 0, 5, store=store.Store(tmp_path / "arrays", budget_bytes=0))
    assert not store.on_disk(ram.examples.images) and not store.on_disk(ram.views)
    assert store.on_disk(disk.examples.images) and store.on_disk(disk.views)
    assert (tmp_path / "arrays" / "views.npy").exists()
    np.testing.assert_array_equal(disk.examples.images, ram.examples.images)
    np.testing.assert_array_equal(disk.views, ram.views)
    assert list(disk.examples.ids) == list(ram.examples.ids)
    np.testing.assert_array_equal(disk.dup_groups, ram.dup_groups)
    for (tr1, te1), (tr2, te2) in zip(disk.folds, ram.folds):
        np.testing.assert_array_equal(tr1, tr2)
        np.testing.assert_array_equal(te1, te2)
    assert data_fingerprint(disk.examples) == data_fingerprint(ram.examples)


def test_streamed_frozen_features_equal_in_ram_features_exactly(tmp_path):
    module, variables = keras_weights.load("vgg16", None, seed=0)
    views = np.random.default_rng(1).integers(0, 256, (2, 7, 32, 32, 3), np.uint8)
    np.save(tmp_path / "views.npy", views)
    on_disk = np.load(tmp_path / "views.npy", mmap_mode="r")
    ram = frozen.frozen_features(module, variables, "vgg16", views, "block3_pool", batch=4)
    streamed = frozen.frozen_features(module, variables, "vgg16", on_disk, "block3_pool",
                                      batch=4, spill=tmp_path / "feats.npy")
    assert store.on_disk(streamed)
    np.testing.assert_array_equal(np.asarray(streamed), ram)


def _traced_peak(fn) -> int:
    """Peak bytes allocated through Python and numpy while ``fn`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("spill", [True, False])
def test_what_a_streamed_load_holds_does_not_grow_with_n(tmp_path, monkeypatch, spill):
    """Loading 4x the photos (60 -> 240 at 64 px, 2 views, batches of 16) into a store with
    a zero budget holds far less than the photos and views: what still grows with N is the
    index and the near-duplicate hashes (~8 kB a photo against 36 kB of photo and views). In
    RAM (the control) the photos and views themselves are held."""
    monkeypatch.setattr(store, "BATCH", 16)
    peaks, arrays = {}, {}
    for per_class in (20, 80):
        spec = _data_spec(_noise_folder(tmp_path / f"p{per_class}", per_class))
        where = store.Store(tmp_path / f"a{per_class}", 0) if spill else store.Store()
        load_cohort(spec, 0, 5, store=where)          # prepares the TFDS copy once
        peaks[per_class] = _traced_peak(
            lambda spec=spec, where=where: load_cohort(spec, 0, 5, store=where))
        arrays[per_class] = 3 * per_class * 64 * 64 * 3 * (1 + 2)   # photos + 2 views
    grown = peaks[80] - peaks[20]
    if spill:
        assert grown < 0.3 * (arrays[80] - arrays[20]), (peaks, arrays)
        assert peaks[80] < 0.5 * arrays[80], (peaks, arrays)
    else:
        assert grown > 0.9 * (arrays[80] - arrays[20]) * 2 / 3, (peaks, arrays)


def test_a_folder_past_tfds_memory_buffer_still_prepares(tmp_path, monkeypatch):
    """TFDS moves a preparation past its in-memory buffer to files through TensorFlow,
    which is not installed: with its buffer set to 1 byte, the folder still prepares (the
    loader lifts the limit while it prepares) and the buffer is restored after."""
    from tensorflow_datasets.core import shuffle

    from handjax.data.sources import load_folder
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)
    examples = load_folder(_noise_folder(tmp_path / "photos", 5, size=16), image_size=16)
    assert len(examples.labels) == 15 and shuffle.MAX_MEM_BUFFER_SIZE == 1
