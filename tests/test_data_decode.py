"""handjax.data.decode: awkward photos (modes, formats, EXIF, padding) and unreadable files,
decoded one at a time and through a folder. Every folder is built inside its test."""
import io

import numpy as np
import pytest
from PIL import Image, features

from handjax import data

SIZE = 32


def _only(ex, rel):
    """The decoded image whose id is ``rel``."""
    return ex.images[ex.ids.index(rel)]


# --------------------------------------------------------------------------- decoding modes


def test_grayscale_becomes_three_equal_channels(tmp_path, image_folder, save_image):
    save_image(tmp_path / "normal" / "gray.png", Image.new("L", (20, 30), 100))
    ex = data.load_folder(image_folder(tmp_path), image_size=SIZE)
    assert (_only(ex, "normal/gray.png") == 100).all()


def test_rgba_is_composited_on_white(tmp_path, image_folder, save_image):
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 128))  # half-transparent red
    img.paste((0, 0, 0, 0), (0, 0, 20, 10))  # top half fully transparent black
    save_image(tmp_path / "ra" / "alpha.png", img)
    got = _only(data.load_folder(image_folder(tmp_path), image_size=20), "ra/alpha.png").astype(int)
    assert (got[:8] == 255).all()  # transparent -> white, not black
    # red over white at alpha 128/255: R = 255, G = B = 255 * (1 - 128/255) = 127
    np.testing.assert_allclose(got[12:], np.broadcast_to((255, 127, 127), got[12:].shape), atol=1)


def test_palette_image_uses_its_palette(tmp_path, image_folder, save_image):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    save_image(tmp_path / "heberden" / "pal.gif", img)
    got = _only(data.load_folder(image_folder(tmp_path), image_size=SIZE), "heberden/pal.gif")
    assert (got == (10, 200, 30)).all()


def test_cmyk_is_converted_to_rgb(tmp_path, image_folder, save_image):
    red_ink = Image.new("CMYK", (20, 20), (0, 255, 255, 0))
    save_image(tmp_path / "ra" / "cmyk.tif", red_ink)
    got = _only(data.load_folder(image_folder(tmp_path), image_size=SIZE), "ra/cmyk.tif")
    assert (got == (255, 0, 0)).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path, image_folder, save_image):
    a = np.full((20, 20), 40000, np.uint16)
    save_image(tmp_path / "normal" / "deep.png", Image.fromarray(a))
    assert Image.open(tmp_path / "normal" / "deep.png").mode.startswith("I")
    got = _only(data.load_folder(image_folder(tmp_path), image_size=SIZE), "normal/deep.png")
    # 40000 / 65535 * 255 = 155.6; clipping would give 255
    assert np.abs(got.astype(int) - 156).max() <= 1


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_decodes(tmp_path, image_folder, save_image):
    save_image(tmp_path / "heberden" / "photo.WEBP", Image.new("RGB", (20, 20), (12, 34, 56)),
          "WEBP", lossless=True)
    got = _only(data.load_folder(image_folder(tmp_path), image_size=SIZE), "heberden/photo.WEBP")
    assert (got == (12, 34, 56)).all()


def test_exif_orientation_is_applied(tmp_path, image_folder, save_image):
    # Stored 40 wide x 20 tall, left half red; orientation 6 = "rotate 90 degrees clockwise to
    # display", so the displayed photo is 20 wide x 40 tall with red on top.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    save_image(tmp_path / "normal" / "phone.jpg", img, "JPEG", quality=95, exif=exif.tobytes())
    ex = data.load_folder(image_folder(tmp_path), image_size=SIZE)
    got = _only(ex, "normal/phone.jpg").astype(int)
    mid = SIZE // 2
    assert got[4, mid, 0] > 200 and got[4, mid, 2] < 60  # top: red
    assert got[-5, mid, 2] > 200 and got[-5, mid, 0] < 60  # bottom: blue
    # portrait -> padded left and right (not cropped): the full height is kept
    assert got[4, 1].tolist() != got[4, mid].tolist()


def test_decode_image_pads_and_keeps_aspect(tmp_path, save_image):
    img = Image.new("RGB", (40, 10), (250, 250, 250))
    img.paste((0, 0, 0), (18, 0, 22, 10))  # black bar in the middle of a wide photo
    got = data.decode_image(save_image(tmp_path / "wide.png", img), 40)
    assert got.shape == (40, 40, 3)
    rows = np.flatnonzero(got[:, 20, 0] < 100)  # the bar spans the 10 content rows only
    assert rows.min() == 15 and rows.max() == 24


# --------------------------------------------------------------------------- bad files


def test_corrupt_file_raises_naming_it(tmp_path, image_folder, save_image):
    save_image(tmp_path / "normal" / "x.png", Image.new("RGB", (10, 10)))
    (tmp_path / "normal" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(data.DataError, match=r"1 unreadable .*normal/x\.png"):
        data.load_folder(image_folder(tmp_path), image_size=SIZE)


def test_truncated_jpeg_raises(tmp_path, image_folder):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), np.uint8)).save(buf, "JPEG")
    (tmp_path / "ra").mkdir()
    (tmp_path / "ra" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(data.DataError, match=r"ra/cut\.jpg \(corrupt or truncated"):
        data.load_folder(image_folder(tmp_path), image_size=SIZE)


def test_text_file_named_jpg_raises(tmp_path, image_folder):
    (tmp_path / "heberden").mkdir()
    (tmp_path / "heberden" / "notes.jpg").write_text("not a photo")
    with pytest.raises(data.DataError, match=r"heberden/notes\.jpg \(not a readable image\)"):
        data.load_folder(image_folder(tmp_path), image_size=SIZE)


def test_decompression_bomb_rejected(tmp_path, image_folder, save_image,
                                     monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    save_image(tmp_path / "normal" / "huge.png", Image.new("RGB", (40, 40)))  # 1600 > 1000 pixels
    bomb = r"normal/huge\.png \(rejected as a decompression bomb"
    with pytest.raises(data.DataError, match=bomb):
        data.load_folder(image_folder(tmp_path), image_size=SIZE)
    with pytest.raises(data.DataError, match="decompression bomb"):
        data.decode_image(tmp_path / "normal" / "huge.png", SIZE)


def test_decode_image_error_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "mine.jpg").write_text("hello")
    with pytest.raises(data.DataError, match=r"mine\.jpg: not a readable image$"):
        data.decode_image(tmp_path / "mine.jpg", SIZE)
    with pytest.raises(data.DataError, match="file not found"):
        data.decode_image(tmp_path / "missing.jpg", SIZE)


def test_a_pipe_is_refused_at_once_not_read(tmp_path):
    """``mkfifo f.jpg`` would block a read forever: only regular files are photos."""
    import os
    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    with pytest.raises(data.DataError, match="not a regular file"):
        data.decode_image(fifo, 32)


# --------------------------------------------------------------------------- too small
def test_photo_below_the_minimum_size_is_refused_naming_it(tmp_path, image_folder, save_image):
    image_folder(tmp_path)
    save_image(tmp_path / "heberden" / "pixel.png", Image.new("RGB", (1, 1), (9, 9, 9)))
    with pytest.raises(data.DataError) as err:
        data.load_folder(tmp_path, image_size=SIZE)
    assert "heberden/pixel.png (too small (1x1 pixels" in str(err.value)
    with pytest.warns(UserWarning, match=r"skipped 1 .*heberden/pixel\.png \(too small"):
        ex = data.load_folder(tmp_path, image_size=SIZE, on_error="skip")
    assert "heberden/pixel.png" not in ex.ids and len(ex.ids) == 15
    with pytest.raises(data.DataError, match=r"pixel\.png: too small \(1x1 pixels"):
        data.decode_image(tmp_path / "heberden" / "pixel.png", SIZE)
    save_image(tmp_path / "thin.png", Image.new("RGB", (400, data.decode.MIN_PHOTO_SIDE)))
    assert data.decode_image(tmp_path / "thin.png", SIZE).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("kind", ["animated_gif", "multipage_tiff"])
def test_a_file_of_several_frames_is_refused_not_read_at_its_first(tmp_path, kind, save_image):
    """Which frame is the photo is not ours to guess: one line naming the file and the count."""
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / ("anim.gif" if kind == "animated_gif" else "pages.tif")
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 3
    with pytest.raises(data.DataError, match=rf"{path.name}: holds 3 frames") as err:
        data.decode_image(path, SIZE)
    assert "\n" not in str(err.value)
    single = save_image(tmp_path / "one.gif", frames[0])      # one frame: read as before
    assert data.decode_image(single, SIZE).shape == (SIZE, SIZE, 3)


def test_split_readable_keeps_the_good_photos_in_order(tmp_path, save_image):
    good = [save_image(tmp_path / f"{i}.png", Image.new("RGB", (20, 20))) for i in range(2)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    kept, errors = data.decode.split_readable([good[0], bad, good[1]])
    assert kept == good and len(errors) == 1 and "bad.jpg" in str(errors[0])
