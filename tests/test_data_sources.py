"""handjax.data.sources: folder structure errors, the bad-file policy, class maps, the TFDS
cache (reuse, rebuild, pruning), the synthetic set's loader and the cache location."""

import numpy as np
import pytest
from PIL import Image

from handjax import data
from handjax.cache import cache_dir
from handjax.data import sources

SIZE = 32


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if anything is decoded (for errors that must come before any work)."""
    def boom(*a, **k):
        raise AssertionError("decoded an image before the folder structure was checked")
    monkeypatch.setattr(sources, "decode_image", boom)


def test_valid_folder_loads_in_class_order_with_relative_ids(tmp_path, image_folder):
    ex = data.load_folder(image_folder(tmp_path), image_size=SIZE)
    assert ex.images.shape == (15, SIZE, SIZE, 3) and ex.images.dtype == np.uint8
    assert ex.labels.dtype == np.int32 and ex.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert ex.ids[:2] == ["normal/img0.png", "normal/img1.png"] and ex.class_names == data.CLASSES
    # 30x20 solid colour padded with its own border colour: the whole square is that colour
    assert (ex.images[ex.labels == 2] == (40, 60, 200)).all()
    assert data.describe(ex) == {"source": str(tmp_path), "n": 15,
                                 "class_counts": {"normal": 5, "heberden": 5, "ra": 5},
                                 "left_out": []}


def test_every_bad_file_listed_in_one_line_and_skip_warns(tmp_path, image_folder):
    image_folder(tmp_path)
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
    # the record of what was left out, and why, travels with the photos into results.json
    left = {e["file"]: e["reason"] for e in data.describe(ex)["left_out"]}
    assert set(left) == {"normal/a.jpg", "ra/deep/er/b.png"}
    assert left["normal/a.jpg"] == "not a readable image"


def test_links_that_lead_nowhere_are_listed_not_dropped(tmp_path, image_folder):
    """A loop of links (l1 -> l2 -> l1), a broken link and a pipe named like photos: each is
    named as unreadable (raise), or left out and recorded (skip); none vanishes."""
    import os
    image_folder(tmp_path)
    (tmp_path / "normal" / "l1.jpg").symlink_to("l2.jpg")
    (tmp_path / "normal" / "l2.jpg").symlink_to("l1.jpg")
    (tmp_path / "ra" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "heberden" / "pipe.png")
    with pytest.raises(data.DataError) as err:
        data.load_folder(tmp_path, image_size=SIZE)
    msg = str(err.value)
    assert "4 unreadable" in msg and "\n" not in msg
    for name in ("normal/l1.jpg", "normal/l2.jpg", "ra/gone.png", "heberden/pipe.png"):
        assert name in msg
    assert "loop of links" in msg and "not a regular file" in msg
    with pytest.warns(UserWarning, match="skipped 4 unreadable"):
        ex = data.load_folder(tmp_path, image_size=SIZE, on_error="skip")
    assert len(ex.ids) == 15 and len(data.describe(ex)["left_out"]) == 4


# --------------------------------------------------------------------------- folder structure


def test_missing_root(tmp_path, no_decoding):
    with pytest.raises(data.DataError, match="image folder not found"):
        data.load_folder(tmp_path / "nope", image_size=SIZE)


def test_no_class_folders(tmp_path, save_image, no_decoding):
    save_image(tmp_path / "loose.jpg", Image.new("RGB", (8, 8)))
    with pytest.raises(data.DataError, match="no class folders"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_empty_class(tmp_path, image_folder, no_decoding):
    image_folder(tmp_path, skip=("heberden",))
    (tmp_path / "heberden" / "readme.txt").write_text("no photos yet")
    with pytest.raises(data.DataError, match=r"empty class\(es\) heberden"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_unknown_folder(tmp_path, image_folder, save_image, no_decoding):
    image_folder(tmp_path)
    save_image(tmp_path / "gout" / "g.png", Image.new("RGB", (8, 8)))
    with pytest.raises(data.DataError, match="unknown class folder.*gout.*class_map"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_class_map_renames_folders(tmp_path, image_folder):
    image_folder(tmp_path)
    (tmp_path / "ra").rename(tmp_path / "Rheumatoid")
    ex = data.load_folder(tmp_path, image_size=SIZE, class_map={"Rheumatoid": "ra"})
    assert ex.labels.tolist().count(2) == 5 and ex.ids[-1] == "Rheumatoid/img4.png"
    with pytest.raises(data.DataError, match="not one of"):
        data.load_folder(tmp_path, image_size=SIZE, class_map={"Rheumatoid": "gout"})


def test_too_few_images_for_five_folds(tmp_path, image_folder, no_decoding):
    image_folder(tmp_path)
    for i in (3, 4):
        (tmp_path / "ra" / f"img{i}.png").unlink()
    with pytest.raises(data.DataError, match="too few .*5-fold.*ra has 3"):
        data.load_folder(tmp_path, image_size=SIZE)


def test_bad_arguments(tmp_path, image_folder):
    with pytest.raises(data.DataError, match="on_error"):
        data.load_folder(image_folder(tmp_path), image_size=SIZE, on_error="ignore")
    with pytest.raises(data.DataError, match="image_size"):
        data.load_folder(tmp_path, image_size=0)


def test_decoded_arrays_are_cached_and_changes_rebuild(tmp_path, image_folder, save_image,
                                                        monkeypatch):
    first = data.load_folder(image_folder(tmp_path), image_size=SIZE)
    calls = []
    real = sources.decode_image
    monkeypatch.setattr(sources, "decode_image", lambda *a: calls.append(a) or real(*a))
    again = data.load_folder(tmp_path, image_size=SIZE)
    assert calls == [] and np.array_equal(first.images, again.images)
    save_image(tmp_path / "ra" / "new.png", Image.new("RGB", (30, 20), (1, 2, 3)))
    changed = data.load_folder(tmp_path, image_size=SIZE)
    new = changed.images[changed.ids.index("ra/new.png")]
    assert len(changed.ids) == 16 and (new == (1, 2, 3)).all()
    assert len(calls) == 16  # the changed folder was decoded again
    # The outdated copy of this folder is gone; another folder's copy is kept.
    other = data.load_folder(image_folder(tmp_path / "other"), image_size=SIZE)
    assert len(other.ids) == 15
    copies = sorted(p.name for p in (cache_dir() / "tfds" / "hand_conditions").iterdir()
                    if p.name.startswith(f"s{SIZE}_"))
    prefixes = [c.rsplit("_", 1)[0] for c in copies]
    assert len(set(prefixes)) == len(prefixes) >= 2, copies


def test_synthetic_is_balanced_deterministic_and_cached():
    ex = data.load_synthetic(n_per_class=10, image_size=48)
    assert ex.images.shape == (30, 48, 48, 3) and ex.images.dtype == np.uint8
    assert np.bincount(ex.labels).tolist() == [10, 10, 10]
    assert ex.ids[0] == "synthetic/normal/0000" and data.describe(ex)["source"] == "synthetic"
    again = data.load_synthetic(n_per_class=10, image_size=48)
    assert np.array_equal(ex.images, again.images) and ex.ids == again.ids
    # The cached image is exactly what the renderer draws from its (seed, class, index)
    # stream, with its person's traits (photos 0 and 1: one person's left and right hand).
    from handjax.data.synthetic import subject_traits
    native = data.load_synthetic(n_per_class=3, image_size=data.SYNTHETIC_SIZE)
    rng = np.random.default_rng([0, 2, 1])
    traits = subject_traits(0, 2, 0)
    assert np.array_equal(native.images[7], data.render_hand(
        rng, 2, traits["severity"], traits=traits, hand="right"))
    other = data.load_synthetic(n_per_class=3, image_size=48, seed=1)
    assert not np.array_equal(other.images, ex.images[np.isin(ex.ids, native.ids)])


@pytest.mark.parametrize("value", [None, ""])
def test_unset_or_empty_handjax_cache_means_the_default(tmp_path, monkeypatch, value):
    # HANDJAX_CACHE="" once sent backbones to ./weights while data used ~/.cache/handjax
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("HANDJAX_CACHE")
    else:
        monkeypatch.setenv("HANDJAX_CACHE", value)
    assert cache_dir() == tmp_path / ".cache" / "handjax"
    monkeypatch.setenv("HANDJAX_CACHE", "~/elsewhere")
    assert cache_dir() == tmp_path / "elsewhere"


def test_data_caches_under_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HANDJAX_CACHE", "")
    data.load_synthetic(n_per_class=1, image_size=8)
    prepared = tmp_path / ".cache" / "handjax" / "tfds" / "synthetic_hands" / "n1_seed0"
    assert (prepared / str(sources.SyntheticHands.VERSION) / "dataset_info.json").is_file()


def test_fewer_folds_need_fewer_photos(tmp_path, image_folder):
    image_folder(tmp_path)
    for i in (3, 4):
        (tmp_path / "ra" / f"img{i}.png").unlink()
    ex = data.load_folder(tmp_path, image_size=SIZE, min_per_class=3)
    assert list(np.bincount(ex.labels)) == [5, 5, 3]


def test_class_folder_symlinked_to_another_is_refused(tmp_path, image_folder, no_decoding):
    image_folder(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "ra")
    (tmp_path / "ra").symlink_to(tmp_path / "normal", target_is_directory=True)
    with pytest.raises(data.DataError, match="same file under classes") as err:
        data.load_folder(tmp_path, image_size=SIZE)
    assert "\n" not in str(err.value)


def test_preparing_leaves_no_temp_litter(tmp_path, image_folder, monkeypatch):
    import tempfile
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))   # this test's own temp dir
    data.load_folder(image_folder(tmp_path / "photos"), image_size=SIZE)
    assert not list(system_tmp.iterdir())


# --------------------------------------------------------------------------- metadata CSV rows
IDS = ["normal/a.png", "normal/b.png", "ra/c.png"]


@pytest.mark.parametrize("rows,line,fields", [
    ("normal/a.png,s1,m\nnormal/b.png,s1,m,extra\nra/c.png,s2,f\n", 3, 4),   # a field too many
    ("normal/a.png,s1,m\nnormal/b.png,s1,m\nra/c.png,s2\n", 4, 2),           # one too few
])
def test_metadata_row_of_the_wrong_shape_names_file_and_line(tmp_path, rows, line, fields):
    csv = tmp_path / "meta.csv"
    csv.write_text("file,subject,sex\n" + rows)
    with pytest.raises(data.DataError) as err:
        data.load_metadata(csv, IDS)
    msg = str(err.value)
    assert msg.startswith(f"{csv}:{line}: {fields} fields, but the header has 3")
    assert "\n" not in msg


@pytest.mark.parametrize("subject", ["", " ", "\t"])
def test_metadata_blank_subject_is_one_clear_line(tmp_path, subject):
    csv = tmp_path / "meta.csv"
    csv.write_text(f"file,subject\nnormal/a.png,s1\nnormal/b.png,{subject}\nra/c.png,s2\n")
    with pytest.raises(data.DataError, match=f"{csv}:3: no subject for 'normal/b.png'"):
        data.load_metadata(csv, IDS)


def test_metadata_crlf_bom_blank_lines_and_quoted_commas_still_load(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_bytes("\ufefffile,subject,site\r\nnormal/a.png, s1 ,\"Kyoto, JP\"\r\n\r\n"
                    "normal/b.png,s1,x\r\nra/c.png,s2,y\r\n".encode())
    subjects, cols = data.load_metadata(csv, IDS)
    assert subjects.tolist() == ["s1", "s1", "s2"]
    assert cols["site"].tolist() == ["Kyoto, JP", "x", "y"]
