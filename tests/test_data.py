"""handjax.data: decoding of awkward photos, folder errors, caching, folds, synthetic hands,
augmentation and the preview CLI. Every folder is built inside its test."""
import io

import jax
import numpy as np
import pytest
from PIL import Image, features
from sklearn.model_selection import StratifiedKFold

from handjax import data

SIZE = 32


def _save(path, img, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def _folder(root, per_class=5, skip=()):
    """A valid ImageFolder: ``per_class`` small solid-colour PNGs per class (600 px each, so
    that a lowered decompression-bomb limit still lets them through)."""
    colours = {"normal": (200, 150, 120), "heberden": (90, 160, 60), "ra": (40, 60, 200)}
    for cls, colour in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class if cls not in skip else 0):
            _save(root / cls / f"img{i}.png", Image.new("RGB", (30, 20), colour))
    return root


def _only(ex, rel):
    """The decoded image whose id is ``rel``."""
    return ex.images[ex.ids.index(rel)]


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if anything is decoded (for errors that must come before any work)."""
    def boom(*a, **k):
        raise AssertionError("decoded an image before the folder structure was checked")
    monkeypatch.setattr(data, "decode_image", boom)


# --------------------------------------------------------------------------- decoding modes


def test_valid_folder_loads_in_class_order_with_relative_ids(tmp_path):
    ex = data.load_folder(_folder(tmp_path), image_size=SIZE)
    assert ex.images.shape == (15, SIZE, SIZE, 3) and ex.images.dtype == np.uint8
    assert ex.labels.dtype == np.int32 and ex.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert ex.ids[:2] == ["normal/img0.png", "normal/img1.png"] and ex.class_names == data.CLASSES
    # 30x20 solid colour padded with its own border colour: the whole square is that colour
    assert (ex.images[ex.labels == 2] == (40, 60, 200)).all()
    assert data.describe(ex) == {"source": str(tmp_path), "n": 15,
                                 "class_counts": {"normal": 5, "heberden": 5, "ra": 5}}


def test_grayscale_becomes_three_equal_channels(tmp_path):
    _save(tmp_path / "normal" / "gray.png", Image.new("L", (20, 30), 100))
    ex = data.load_folder(_folder(tmp_path), image_size=SIZE)
    assert (_only(ex, "normal/gray.png") == 100).all()


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 128))  # half-transparent red
    img.paste((0, 0, 0, 0), (0, 0, 20, 10))  # top half fully transparent black
    _save(tmp_path / "ra" / "alpha.png", img)
    got = _only(data.load_folder(_folder(tmp_path), image_size=20), "ra/alpha.png").astype(int)
    assert (got[:8] == 255).all()  # transparent -> white, not black
    # red over white at alpha 128/255: R = 255, G = B = 255 * (1 - 128/255) = 127
    np.testing.assert_allclose(got[12:], np.broadcast_to((255, 127, 127), got[12:].shape), atol=1)


def test_palette_image_uses_its_palette(tmp_path):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    _save(tmp_path / "heberden" / "pal.gif", img)
    got = _only(data.load_folder(_folder(tmp_path), image_size=SIZE), "heberden/pal.gif")
    assert (got == (10, 200, 30)).all()


def test_cmyk_is_converted_to_rgb(tmp_path):
    _save(tmp_path / "ra" / "cmyk.tif", Image.new("CMYK", (20, 20), (0, 255, 255, 0)))  # red ink
    got = _only(data.load_folder(_folder(tmp_path), image_size=SIZE), "ra/cmyk.tif")
    assert (got == (255, 0, 0)).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.full((20, 20), 40000, np.uint16)
    _save(tmp_path / "normal" / "deep.png", Image.fromarray(a))
    assert Image.open(tmp_path / "normal" / "deep.png").mode.startswith("I")
    got = _only(data.load_folder(_folder(tmp_path), image_size=SIZE), "normal/deep.png")
    # 40000 / 65535 * 255 = 155.6; clipping would give 255
    assert np.abs(got.astype(int) - 156).max() <= 1


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_decodes(tmp_path):
    _save(tmp_path / "heberden" / "photo.WEBP", Image.new("RGB", (20, 20), (12, 34, 56)),
          "WEBP", lossless=True)
    got = _only(data.load_folder(_folder(tmp_path), image_size=SIZE), "heberden/photo.WEBP")
    assert (got == (12, 34, 56)).all()


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 tall, left half red; orientation 6 = "rotate 90 degrees clockwise to
    # display", so the displayed photo is 20 wide x 40 tall with red on top.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(tmp_path / "normal" / "phone.jpg", img, "JPEG", quality=95, exif=exif.tobytes())
    ex = data.load_folder(_folder(tmp_path), image_size=SIZE)
    got = _only(ex, "normal/phone.jpg").astype(int)
    mid = SIZE // 2
    assert got[4, mid, 0] > 200 and got[4, mid, 2] < 60  # top: red
    assert got[-5, mid, 2] > 200 and got[-5, mid, 0] < 60  # bottom: blue
    # portrait -> padded left and right (not cropped): the full height is kept
    assert got[4, 1].tolist() != got[4, mid].tolist()


def test_decode_image_pads_and_keeps_aspect(tmp_path):
    img = Image.new("RGB", (40, 10), (250, 250, 250))
    img.paste((0, 0, 0), (18, 0, 22, 10))  # black bar in the middle of a wide photo
    got = data.decode_image(_save(tmp_path / "wide.png", img), 40)
    assert got.shape == (40, 40, 3)
    rows = np.flatnonzero(got[:, 20, 0] < 100)  # the bar spans the 10 content rows only
    assert rows.min() == 15 and rows.max() == 24


# --------------------------------------------------------------------------- bad files


def test_corrupt_file_raises_naming_it(tmp_path):
    _save(tmp_path / "normal" / "x.png", Image.new("RGB", (10, 10)))
    (tmp_path / "normal" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(data.DataError, match=r"1 unreadable .*normal/x\.png"):
        data.load_folder(_folder(tmp_path), image_size=SIZE)


def test_truncated_jpeg_raises(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), np.uint8)).save(buf, "JPEG")
    (tmp_path / "ra").mkdir()
    (tmp_path / "ra" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(data.DataError, match=r"ra/cut\.jpg \(corrupt or truncated"):
        data.load_folder(_folder(tmp_path), image_size=SIZE)


def test_text_file_named_jpg_raises(tmp_path):
    (tmp_path / "heberden").mkdir()
    (tmp_path / "heberden" / "notes.jpg").write_text("not a photo")
    with pytest.raises(data.DataError, match=r"heberden/notes\.jpg \(not a readable image\)"):
        data.load_folder(_folder(tmp_path), image_size=SIZE)


def test_decompression_bomb_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _save(tmp_path / "normal" / "huge.png", Image.new("RGB", (40, 40)))  # 1600 > 1000 pixels
    bomb = r"normal/huge\.png \(rejected as a decompression bomb"
    with pytest.raises(data.DataError, match=bomb):
        data.load_folder(_folder(tmp_path), image_size=SIZE)
    with pytest.raises(data.DataError, match="decompression bomb"):
        data.decode_image(tmp_path / "normal" / "huge.png", SIZE)


def test_every_bad_file_listed_in_one_line_and_skip_warns(tmp_path):
    _folder(tmp_path)
    (tmp_path / "normal" / "a.jpg").write_text("text")
    (tmp_path / "ra" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "ra" / "deep" / "er" / "b.png").write_bytes(b"garbage")
    with pytest.raises(data.DataError) as err:
        data.load_folder(tmp_path, image_size=SIZE)
    msg = str(err.value)
    assert "2 unreadable" in msg and "normal/a.jpg" in msg and "ra/deep/er/b.png" in msg
    assert "\n" not in msg
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ex = data.load_folder(tmp_path, image_size=SIZE, on_error="skip")
    assert len(ex.ids) == 15 and "normal/a.jpg" not in ex.ids


def test_decode_image_error_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "mine.jpg").write_text("hello")
    with pytest.raises(data.DataError, match=r"mine\.jpg: not a readable image$"):
        data.decode_image(tmp_path / "mine.jpg", SIZE)
    with pytest.raises(data.DataError, match="file not found"):
        data.decode_image(tmp_path / "missing.jpg", SIZE)


# --------------------------------------------------------------------------- folder structure


def test_missing_root(tmp_path, no_decoding):
    with pytest.raises(data.DataError, match="image folder not found"):
        data.load_folder(tmp_path / "nope", image_size=SIZE)


def test_no_class_folders(tmp_path, no_decoding):
    _save(tmp_path / "loose.jpg", Image.new("RGB", (8, 8)))
    with pytest.raises(data.DataError, match="no class folders"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_empty_class(tmp_path, no_decoding):
    _folder(tmp_path, skip=("heberden",))
    (tmp_path / "heberden" / "readme.txt").write_text("no photos yet")
    with pytest.raises(data.DataError, match=r"empty class\(es\) heberden"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_unknown_folder(tmp_path, no_decoding):
    _folder(tmp_path)
    _save(tmp_path / "gout" / "g.png", Image.new("RGB", (8, 8)))
    with pytest.raises(data.DataError, match="unknown class folder.*gout.*class_map"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_class_map_renames_folders(tmp_path):
    _folder(tmp_path)
    (tmp_path / "ra").rename(tmp_path / "Rheumatoid")
    ex = data.load_folder(tmp_path, image_size=SIZE, class_map={"Rheumatoid": "ra"})
    assert ex.labels.tolist().count(2) == 5 and ex.ids[-1] == "Rheumatoid/img4.png"
    with pytest.raises(data.DataError, match="not one of"):
        data.load_folder(tmp_path, image_size=SIZE, class_map={"Rheumatoid": "gout"})


def test_too_few_images_for_five_folds(tmp_path, no_decoding):
    _folder(tmp_path)
    for i in (3, 4):
        (tmp_path / "ra" / f"img{i}.png").unlink()
    with pytest.raises(data.DataError, match="too few .*5-fold.*ra has 3"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_bad_arguments(tmp_path):
    with pytest.raises(data.DataError, match="on_error"):
        data.load_folder(_folder(tmp_path), image_size=SIZE, on_error="ignore")
    with pytest.raises(data.DataError, match="image_size"):
        data.load_folder(tmp_path, image_size=0)


def test_decoded_arrays_are_cached_and_changes_rebuild(tmp_path, monkeypatch):
    first = data.load_folder(_folder(tmp_path), image_size=SIZE)
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda *a: calls.append(a) or real(*a))
    again = data.load_folder(tmp_path, image_size=SIZE)
    assert calls == [] and np.array_equal(first.images, again.images)
    _save(tmp_path / "ra" / "new.png", Image.new("RGB", (30, 20), (1, 2, 3)))
    changed = data.load_folder(tmp_path, image_size=SIZE)
    assert len(changed.ids) == 16 and (_only(changed, "ra/new.png") == (1, 2, 3)).all()
    assert len(calls) == 16  # the changed folder was decoded again
    # The outdated copy of this folder is gone; another folder's copy is kept.
    other = data.load_folder(_folder(tmp_path / "other"), image_size=SIZE)
    assert len(other.ids) == 15
    copies = sorted(p.name for p in (data._cache_dir() / "tfds" / "hand_conditions").iterdir()
                    if p.name.startswith(f"s{SIZE}_"))
    prefixes = [c.rsplit("_", 1)[0] for c in copies]
    assert len(set(prefixes)) == len(prefixes) >= 2, copies


# --------------------------------------------------------------------------- folds


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


def test_near_duplicates_share_a_test_fold(tmp_path, caplog):
    # Originals: 8 distinct synthetic hands per class. Copies: 3 per class resized and
    # JPEG re-encoded, as a web image search returns them, in the same class folder.
    synth = data.load_synthetic(n_per_class=8, image_size=data.SYNTHETIC_SIZE)
    pairs = []
    for img, label, sid in zip(synth.images, synth.labels, synth.ids):
        name = sid.replace("/", "_")
        cls = data.CLASSES[label]
        _save(tmp_path / cls / f"{name}.png", Image.fromarray(img))
        if int(sid[-1]) % 3 == 0:
            small = Image.fromarray(img).resize((180, 180), Image.Resampling.BILINEAR)
            _save(tmp_path / cls / "copies" / f"{name}.jpg", small, "JPEG", quality=70)
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


# --------------------------------------------------------------------------- synthetic hands


def test_synthetic_is_balanced_deterministic_and_cached():
    ex = data.load_synthetic(n_per_class=10, image_size=48)
    assert ex.images.shape == (30, 48, 48, 3) and ex.images.dtype == np.uint8
    assert np.bincount(ex.labels).tolist() == [10, 10, 10]
    assert ex.ids[0] == "synthetic/normal/0000" and data.describe(ex)["source"] == "synthetic"
    again = data.load_synthetic(n_per_class=10, image_size=48)
    assert np.array_equal(ex.images, again.images) and ex.ids == again.ids
    # The cached image is exactly what the renderer draws from its (seed, class, index) stream.
    native = data.load_synthetic(n_per_class=3, image_size=data.SYNTHETIC_SIZE)
    rng = np.random.default_rng([0, 2, 1])
    severity = float(rng.uniform() ** 0.8)
    assert np.array_equal(native.images[7], data.render_hand(rng, 2, severity))
    other = data.load_synthetic(n_per_class=3, image_size=48, seed=1)
    assert not np.array_equal(other.images, ex.images[np.isin(ex.ids, native.ids)])


def test_synthetic_images_look_like_photos_not_blank():
    ex = data.load_synthetic(n_per_class=5, image_size=64)
    per_image_std = ex.images.reshape(len(ex.ids), -1).std(1)
    assert per_image_std.min() > 10  # content and clutter, not a flat fill
    assert len({im.tobytes() for im in ex.images}) == 15


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_augment_shape_dtype_and_reproducible(dtype):
    x = data.load_synthetic(n_per_class=2, image_size=SIZE).images.astype(dtype)
    key = jax.random.key(0)
    a = data.augment(key, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    b = jax.jit(data.augment)(key, x)
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1)
    assert np.array_equal(np.asarray(data.augment(key, x)), np.asarray(a))
    assert not np.array_equal(np.asarray(data.augment(jax.random.key(1), x)), np.asarray(a))


def test_augment_with_zero_ranges_only_flips():
    x = np.random.default_rng(0).integers(0, 256, (16, 12, 10, 3)).astype(np.uint8)
    out = np.asarray(data.augment(jax.random.key(5), x, max_rotate_deg=0.0, max_scale=0.0,
                                  max_translate=0.0, max_brightness=0.0, max_contrast=0.0))
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    same = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 16


# --------------------------------------------------------------------------- preview


def test_preview_writes_png(tmp_path):
    out = tmp_path / "sheet.png"
    data.main(["preview", "--out", str(out), "--n", "2"])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 2 * 160 and img.height > 3 * 160
