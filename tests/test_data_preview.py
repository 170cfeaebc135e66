"""handjax.data.preview: the contact-sheet CLI writes a PNG and refuses bad flag values;
``export`` writes synthetic hands as an ImageFolder."""
import numpy as np
import pytest
from PIL import Image

from handjax import data


def test_preview_writes_png(tmp_path):
    out = tmp_path / "sheet.png"
    data.main(["preview", "--out", str(out), "--n", "2"])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 2 * 160 and img.height > 3 * 160


@pytest.mark.parametrize("args,needle", [
    (["--n", "-3"], "argument --n"), (["--n", "0"], "argument --n"),
    (["--size", "2"], "argument --size"), (["--seed", "x"], "argument --seed")])
def test_bad_numbers_are_argparse_errors(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        data.main(["preview", "--out", str(tmp_path / "s.png"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err


@pytest.mark.parametrize("out,needle", [(".", "is a folder"), ("sheet", "image extension"),
                                        ("sheet.nope", "image extension")])
def test_out_must_be_an_image_file(out, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        data.main(["preview", "--out", out, "--n", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and needle in err


def test_export_writes_an_image_folder_that_loads(tmp_path):
    data.main(["export", "--out", str(tmp_path / "samples"), "--n", "5"])
    files = sorted(p.relative_to(tmp_path / "samples").as_posix()
                   for p in (tmp_path / "samples").rglob("*.png"))
    assert len(files) == 15 and files[0] == "heberden/0000.png"
    ex = data.load_folder(tmp_path / "samples", image_size=32)
    assert np.bincount(ex.labels).tolist() == [5, 5, 5]
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit):
        data.main(["export", "--out", str(tmp_path / "a_file")])


def test_preview_never_overwrites_a_photo_nor_writes_among_photos(tmp_path, image_folder,
                                                                  capsys):
    """A sheet over ``photos/normal/img0.png``, or into a class folder (where it would become
    a training photo), is refused with one line; a rerun over its own sheet is not."""
    photos = image_folder(tmp_path / "photos")
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    for out, needle in ((photos / "normal" / "img0.png", "is not a contact sheet"),
                        (photos / "ra" / "sheet.png", "its folder holds photos")):
        with pytest.raises(SystemExit) as e:
            data.main(["preview", "--out", str(out), "--n", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("\n") == 1 and needle in err
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before
    sheet = tmp_path / "sheet.png"
    data.main(["preview", "--out", str(sheet), "--n", "1"])
    data.main(["preview", "--out", str(sheet), "--n", "2"])     # its own sheet: replaced
    with Image.open(sheet) as img:
        assert img.width > 2 * 160
