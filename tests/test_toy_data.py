"""The colour-coded toy folder (tests/toy_data.py): readable, balanced, no near-duplicates."""
import numpy as np
from PIL import Image

from handjax import data
from tests.toy_data import CLASS_COLOURS, write_colour_folder


def test_colour_folder_is_a_clean_image_folder(tmp_path):
    root = write_colour_folder(tmp_path / "colours", n_per_class=6, image_size=32, seed=3)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 18
    assert sorted({p.parent.name for p in files}) == sorted(data.CLASSES)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    assert images.shape == (18, 32, 32, 3)
    # The class is readable from the colour: the dominant channel of the most saturated pixels.
    for img, p in zip(images, files):
        sat = img.max(-1).astype(int) - img.min(-1)
        top = img[sat >= np.quantile(sat, 0.9)].mean(0)
        assert np.argmax(top) == np.argmax(CLASS_COLOURS[p.parent.name])
    # Near-duplicate grouping keeps every photo on its own.
    assert len(np.unique(data.duplicate_groups(images))) == 18
