"""handjax.data.preview: the contact-sheet CLI writes a PNG."""
from PIL import Image

from handjax import data


def test_preview_writes_png(tmp_path):
    out = tmp_path / "sheet.png"
    data.main(["preview", "--out", str(out), "--n", "2"])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 2 * 160 and img.height > 3 * 160
