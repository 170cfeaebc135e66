"""A colour-coded toy ImageFolder: a sanity check that a training path can learn at all.

Each photo is grey noise with one coloured square at a random place and size; the class is
the square's colour (``normal`` red, ``heberden`` green, ``ra`` blue). A model that trains at
all separates these quickly, even from random backbone weights, so fold-mean accuracy near
chance (1/3) points at the training path, not at the data. The noise and the random square
keep the photos' difference hashes apart, so near-duplicate grouping leaves the folds intact.

    from tests.toy_data import write_colour_folder
    write_colour_folder("/tmp/colours", n_per_class=20, image_size=64)
    # python launch.py --config experiments/vgg19_categorical.py \
    #     --config.data.root=/tmp/colours --config.model.weights=none ...
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASS_COLOURS = {"normal": (220, 40, 40), "heberden": (40, 200, 40), "ra": (40, 60, 220)}


def colour_photo(rng: np.random.Generator, colour, image_size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 photo: grey noise plus a ``colour`` square."""
    img = rng.normal(128, 40, (image_size, image_size, 3))
    side = int(rng.integers(image_size // 4, image_size // 2 + 1))
    y, x = rng.integers(0, image_size - side + 1, 2)
    square = np.asarray(colour, float) + rng.normal(0, 15, (side, side, 3))
    img[y:y + side, x:x + side] = square
    return np.clip(img, 0, 255).astype(np.uint8)


def write_colour_folder(root, *, n_per_class: int = 20, image_size: int = 64,
                        seed: int = 0) -> Path:
    """Write ``n_per_class`` PNGs per class into ``root/<class>/`` and return ``root``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for cls, colour in CLASS_COLOURS.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(colour_photo(rng, colour, image_size)).save(root / cls / f"{i:03d}.png")
    return root
