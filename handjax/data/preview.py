"""The preview CLI: a contact sheet of example hands per class, synthetic or your own folder.

    python -m handjax.data preview --out sheet.png   # contact sheet of synthetic hands

It sits apart from ``synthetic.py`` because it reads through the loaders in ``sources.py``,
which themselves render through ``synthetic.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from handjax.data.base import DISPLAY_NAMES, DataError
from handjax.data.sources import _synthetic_records, load_folder

# what `python -m handjax.data --help` has always said
_DESCRIPTION = "Hand photos -> uint8 arrays, labels and ids; cross-validation folds; augmentation."


def contact_sheet(images, labels, captions, class_names=DISPLAY_NAMES, per_class: int = 6,
                  tile: int = 160) -> Image.Image:
    """A grid, one row per class, of the first ``per_class`` images of each, with captions."""
    pad, left, text_h = 6, 170, 16
    rows = len(class_names)
    width = left + per_class * (tile + pad) + pad
    sheet = Image.new("RGB", (width, rows * (tile + text_h + pad) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for row, name in enumerate(class_names):
        y = pad + row * (tile + text_h + pad)
        draw.text((pad, y + tile // 2 - 8), name, fill=(20, 20, 20), font=font)
        for col, idx in enumerate(np.flatnonzero(np.asarray(labels) == row)[:per_class]):
            x = left + col * (tile + pad)
            sheet.paste(Image.fromarray(np.asarray(images[idx])).resize((tile, tile)), (x, y))
            draw.text((x, y + tile + 1), captions[idx], fill=(60, 60, 60), font=font)
    return sheet


def _preview(args) -> Path:
    if args.folder:
        ex = load_folder(args.folder, image_size=args.size, on_error="skip")
        images, labels, captions = ex.images, ex.labels, [Path(i).name[:22] for i in ex.ids]
    else:
        records = _synthetic_records(max(args.n, 1), args.seed)
        images = np.stack([r["image"] for r in records])
        labels = np.array([r["label"] for r in records])
        captions = [f"severity {float(r['severity']):.2f}" for r in records]
    out = Path(args.out)
    try:
        contact_sheet(images, labels, captions, per_class=args.n).save(out)
    except OSError as e:
        raise DataError(f"cannot write {out} ({e.strerror}); choose a writable --out") from e
    return out


def main(argv=None) -> None:
    """``python -m handjax.data preview [--out sheet.png] [--n 6] [--seed 0] [--folder DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m handjax.data",
                                     description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="write a contact sheet of example hands per class")
    p.add_argument("--out", default="hands_preview.png", help="PNG to write")
    p.add_argument("--n", type=int, default=6, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="synthetic_hands seed")
    p.add_argument("--folder", default=None, help="preview your own ImageFolder instead")
    p.add_argument("--size", type=int, default=160, help="tile size for --folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(f"wrote {_preview(args)} (synthetic images are medically meaningless)"
              if not args.folder else f"wrote {_preview(args)}")
    except DataError as e:
        parser.exit(2, f"error: {e}\n")
