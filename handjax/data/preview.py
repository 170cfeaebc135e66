"""The data CLI: a contact sheet of example hands per class, synthetic or your own folder,
and synthetic photos written out as an ImageFolder (to try ``predict`` or ``data.root``).

    python -m handjax.data preview --out sheet.png   # contact sheet of synthetic hands
    python -m handjax.data export --out samples/     # samples/normal/0000.png, ...

It sits apart from ``synthetic.py`` because it reads through the loaders in ``sources.py``,
which themselves render through ``synthetic.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from handjax.console import int_at_least
from handjax.data import folders
from handjax.data.records import CLASSES, DISPLAY_NAMES, DataError
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
    out = _out_path(args.out)
    check_sheet_target(out)   # before any photo is read: a refusal costs nothing
    if args.folder:
        ex = load_folder(args.folder, image_size=args.size, on_error="skip")
        images, labels, captions = ex.images, ex.labels, [Path(i).name[:22] for i in ex.ids]
    else:
        records = _synthetic_records(args.n, args.seed)
        images = np.stack([r["image"] for r in records])
        labels = np.array([r["label"] for r in records])
        captions = [f"severity {float(r['severity']):.2f}" for r in records]
    try:
        info = PngImagePlugin.PngInfo()
        info.add_text(SHEET_TAG, "contact sheet")   # a rerun may replace it; nothing else
        contact_sheet(images, labels, captions, per_class=args.n).save(out, pnginfo=info)
    except OSError as e:
        raise DataError(f"cannot write {out} ({e.strerror}); choose a writable --out") from e
    return out


SHEET_TAG = "handjax-preview"   # the PNG text key that marks a contact sheet of ours


def is_sheet(path: Path) -> bool:
    """Whether ``path`` is a contact sheet this command wrote (its PNG text key)."""
    try:
        with Image.open(path) as img:
            return SHEET_TAG in getattr(img, "text", {})
    except (OSError, ValueError):
        return False


def check_sheet_target(out: Path) -> None:
    """``preview --out``: never over a file that is not a sheet of ours, never into a folder
    of photos (the sheet would join them: ``photos/normal/sheet.png`` is a training photo)."""
    if out.exists() and not is_sheet(out):
        raise DataError(f"--out {out} exists and is not a contact sheet of handjax's; "
                        "nothing was written. Give a new file name")
    folder = out.parent
    if not folder.is_dir():
        return
    photos = [p for p in sorted(folder.iterdir()) if p.is_file() and p != out
              and p.suffix.lower() in folders.IMAGE_EXTENSIONS and not is_sheet(p)]
    if photos:
        raise DataError(f"--out {out}: its folder holds photos ({photos[0].name}); nothing "
                        "was written. Write the sheet into another folder")


def export_samples(out, n_per_class: int, seed: int = 0) -> list[Path]:
    """Write ``n_per_class`` synthetic hands per class as PNGs in ImageFolder layout
    (``out/<class>/<index>.png``); returns the paths. Synthetic, medically meaningless.
    A folder that holds photos (your own, or another export's) or another command's results
    is refused before anything is written; the same export rerun may write there again."""
    paths = []
    try:
        out = folders.claim_output(out, "data export", {"n": int(n_per_class),
                                                        "seed": int(seed)})
        for r in _synthetic_records(n_per_class, seed):
            _, cls, index = r["id"].split("/")
            path = out / cls / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(r["image"])).save(path)
            paths.append(path)
    except OSError as e:
        raise DataError(f"cannot write into {out} ({e.strerror}); choose a writable --out") from e
    return paths


def _out_path(text: str) -> Path:
    """``--out`` as an image file to write: not a folder, with an extension Pillow writes."""
    out = Path(text)
    if out.is_dir() or text.endswith(("/", "\\")):
        raise DataError(f"--out {text} is a folder; give a file name such as {out / 'sheet.png'}")
    if out.suffix.lower() not in Image.registered_extensions():
        raise DataError(f"--out {text}: give the file an image extension (.png or .jpg) so "
                        "the format is known")
    return out


def main(argv=None) -> None:
    """``python -m handjax.data preview [--out sheet.png] [--n 6] [--seed 0] [--folder DIR]``
    or ``python -m handjax.data export [--out samples] [--n 5] [--seed 0]``."""
    parser = argparse.ArgumentParser(prog="python -m handjax.data",
                                     description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="write a contact sheet of example hands per class")
    p.add_argument("--out", default="hands_preview.png", help="PNG to write")
    p.add_argument("--n", type=int_at_least(1, 100), default=6, help="images per class")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="synthetic_hands seed")
    p.add_argument("--folder", default=None, help="preview your own ImageFolder instead")
    p.add_argument("--size", type=int_at_least(8, 1024), default=160,
                   help="tile size for --folder")
    e = sub.add_parser("export", help="write synthetic hands as an ImageFolder of PNGs")
    e.add_argument("--out", default="samples", help="folder to write <class>/<i>.png into")
    e.add_argument("--n", type=int_at_least(1, 1000), default=5, help="photos per class")
    e.add_argument("--seed", type=int_at_least(0), default=0, help="synthetic_hands seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "export":
            paths = export_samples(args.out, args.n, args.seed)
            print(f"wrote {len(paths)} photos into {args.out} ({', '.join(CLASSES)}; synthetic, "
                  "medically meaningless)")
        else:
            print(f"wrote {_preview(args)} (synthetic images are medically meaningless)"
                  if not args.folder else f"wrote {_preview(args)}")
    except DataError as e:   # bad input: one line, exit 1 (2 is argparse's, for usage)
        parser.exit(1, f"handjax: error: {e}\n")
