"""The data record of a run: subjects from the metadata CSV, folds that keep a subject
together, and the same photo never under two labels."""
import numpy as np
import pytest

from cells import tiny_config
from handjax import config as configs
from handjax.data import cohort
from handjax.data.cohort import load_cohort


# --------------------------------------------------------------------------- subjects
def test_metadata_csv_alignment_and_clear_errors(tmp_path):
    from handjax import data
    ids = ["normal/a.png", "normal/b.png", "ra/c.png"]
    good = tmp_path / "meta.csv"
    good.write_text("file,subject,sex\nra/c.png,s2,f\nnormal/a.png,s1,m\nnormal/b.png,s1,m\n")
    subjects, cols = data.load_metadata(good, ids)
    assert subjects.tolist() == ["s1", "s1", "s2"] and cols["sex"].tolist() == ["m", "m", "f"]
    cases = {"twice": "file\nnormal/a.png\nnormal/a.png\nnormal/b.png\nra/c.png\n",
             "not a photo": "file\nnormal/a.png\nnormal/b.png\nra/c.png\nra/zz.png\n",
             "no row for photo": "file\nnormal/a.png\nnormal/b.png\n"}
    for needle, text in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(data.DataError, match=needle) as err:
            data.load_metadata(bad, ids)
        assert "\n" not in str(err.value) and "bad.csv" in str(err.value)


def test_folds_never_split_a_subject(tmp_path):
    """A folder with two photos per subject and a metadata CSV: every subject's photos land
    in one test fold, and in one inner split."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rows = ["file,subject,tone"]
    for c, name in enumerate(("normal", "heberden", "ra")):
        (tmp_path / name).mkdir()
        for s in range(6):
            for hand in ("left", "right"):
                img = rng.integers(0, 255, (32, 32, 3), np.uint8)
                Image.fromarray(img).save(tmp_path / name / f"{s}_{hand}.png")
                rows.append(f"{name}/{s}_{hand}.png,{name}{s},t{s % 2}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    c = tiny_config()
    c.data.root, c.data.metadata = str(tmp_path), str(tmp_path / "meta.csv")
    spec = configs.parse_run(c)
    pd = load_cohort(spec.data, spec.seed, spec.n_folds, inner_val=0.25)
    assert len(np.unique(pd.subjects)) == 18 and set(pd.metadata) == {"tone"}
    fold_of = {}
    for k, (tr, te) in enumerate(pd.folds):
        for i in te:
            fold_of.setdefault(pd.subjects[i], set()).add(k)
        inner_subjects = set(pd.subjects[pd.inner[k]])
        assert not inner_subjects & set(pd.subjects[np.setdiff1d(tr, pd.inner[k])])
    assert all(len(v) == 1 for v in fold_of.values())


# --------------------------------------------------------------------------- one label per photo
def _noise_examples(n_per_class=6, size=48):
    """Distinct textured photos (near-duplicate detection needs texture), in class order."""
    from handjax import data
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3 * n_per_class, size, size, 3), np.uint8)
    labels = np.repeat(np.arange(3), n_per_class).astype(np.int32)
    ids = [f"{data.CLASSES[l]}/{i}.png" for i, l in enumerate(labels)]
    return data.Examples(images, labels, ids, data.CLASSES)


def _reencoded(image):
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).resize((40, 40)).save(buf, "JPEG", quality=70)
    return np.asarray(Image.open(buf).convert("RGB").resize(image.shape[:2]))


@pytest.mark.parametrize("copy", ["identical", "re-encoded"])
def test_same_photo_under_two_labels_is_refused_naming_files_and_classes(copy):
    from handjax import data
    ex = _noise_examples()
    images = ex.images.copy()
    images[13] = images[0] if copy == "identical" else _reencoded(images[0])   # normal -> ra
    ex = ex._replace(images=images)
    dup = data.duplicate_groups(ex.images)
    with pytest.raises(data.DataError) as err:
        cohort.one_label_per_photo(ex, dup, "raise")
    msg = str(err.value)
    assert "normal/0.png (normal) = ra/13.png (ra)" in msg and "on_error=skip" in msg
    assert "\n" not in msg


def test_identical_photos_are_refused_even_without_near_duplicate_detection():
    from handjax import data
    ex = _noise_examples()
    ex.images[7] = ex.images[2]                                   # normal/2 == heberden/7
    with pytest.raises(data.DataError, match=r"normal/2\.png \(normal\) = heberden/7\.png"):
        cohort.one_label_per_photo(ex, None, "raise")


def test_skip_leaves_the_conflicting_group_out_with_a_line(capsys):
    from handjax import data
    ex = _noise_examples()
    ex.images[13] = ex.images[0]
    ex.images[1] = ex.images[0]                       # a same-class copy joins the group
    kept, dup = cohort.one_label_per_photo(ex, data.duplicate_groups(ex.images), "skip")
    assert [i for i in ex.ids if i not in kept.ids] == ["normal/0.png", "normal/1.png",
                                                          "ra/13.png"]
    assert len(dup) == len(kept.labels) == len(kept.images) == 15
    line = capsys.readouterr().err.strip()
    assert line.startswith("handjax: left out the same photo under two classes (1 case(s)")
    assert "ra/13.png (ra)" in line


def test_same_class_copies_are_kept():
    from handjax import data
    ex = _noise_examples()
    ex.images[1] = ex.images[0]
    kept, _ = cohort.one_label_per_photo(ex, data.duplicate_groups(ex.images), "raise")
    assert kept is ex


def test_hard_link_and_byte_copy_across_classes_refused_before_training(tmp_path):
    import os

    from PIL import Image

    from handjax import data
    rng = np.random.default_rng(1)
    for name in data.CLASSES:
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
                tmp_path / name / f"{i}.png")
    os.link(tmp_path / "normal" / "0.png", tmp_path / "ra" / "linked.png")
    (tmp_path / "heberden" / "copy.png").write_bytes((tmp_path / "normal" / "1.png").read_bytes())
    c = tiny_config()
    c.data.root = str(tmp_path)
    spec = configs.parse_run(c)
    with pytest.raises(data.DataError) as err:
        load_cohort(spec.data, spec.seed, spec.n_folds)
    msg = str(err.value)
    assert msg.startswith("the same photo under two classes (2 case(s)")
    assert "normal/0.png (normal) = ra/linked.png (ra)" in msg
    assert "normal/1.png (normal) = heberden/copy.png (heberden)" in msg


# --------------------------------------------------------------------------- recorded, not silent
def test_conflicting_photos_left_out_are_recorded_with_their_reason():
    from handjax import data
    ex = _noise_examples()
    ex.images[13] = ex.images[0]
    kept, _ = cohort.one_label_per_photo(ex, data.duplicate_groups(ex.images), "skip")
    left = {e["file"]: e["reason"] for e in data.describe(kept)["left_out"]}
    assert set(left) == {"normal/0.png", "ra/13.png"}
    assert left["ra/13.png"] == "the same photo as normal/0.png (normal) under another class"


def test_a_subject_with_two_classes_is_one_line_and_counted(tmp_path, capsys):
    from PIL import Image
    from handjax.report import markdown
    rng = np.random.default_rng(1)
    rows = ["file,subject"]
    for c, name in enumerate(("normal", "heberden", "ra")):
        (tmp_path / name).mkdir()
        for s in range(5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
                tmp_path / name / f"{s}.png")
            rows.append(f"{name}/{s}.png,{'p0' if s == 0 and name != 'heberden' else name + str(s)}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    c = tiny_config()
    c.data.root, c.data.metadata = str(tmp_path), str(tmp_path / "meta.csv")
    spec = configs.parse_run(c)
    pd = load_cohort(spec.data, spec.seed, spec.n_folds)
    err = capsys.readouterr().err
    assert "1 subject(s) have photos of more than one class (p0: normal, ra)" in err
    desc = pd.description()
    assert desc["subjects_with_several_classes"] == {"p0": ["normal", "ra"]}
    md = markdown.left_out_markdown(desc)
    assert "more than one class: 1 (p0: normal, ra)" in md
    assert "## Photos left out: 0" in md
