"""Hand photos -> uint8 arrays, labels and ids; cross-validation folds; augmentation.

Two sources, both TFDS builders prepared as ``array_record`` files under
``$HANDJAX_CACHE/tfds`` and read back with ``as_data_source`` (tensorflow-datasets alone,
no TensorFlow):

* ``hand_conditions``: your own ImageFolder, ``<root>/<class>/<any depth>/*.jpg|png|...``,
  class folders named ``normal``, ``heberden``, ``ra`` (or mapped with ``class_map``). Photos
  are decoded once at the requested size; the builder's config name carries a fingerprint of
  the folder (names, sizes, mtimes), so changed contents are rebuilt automatically.
* ``synthetic_hands``: the embedded default, rendered procedurally (nothing downloaded,
  deterministic for a seed) so every command runs on a fresh offline machine. **These images
  are synthetic and medically meaningless**: cartoon-level signs (nodules at the DIP joints for
  Heberden's nodes; spindle swelling at PIP/MCP joints and ulnar drift for rheumatoid
  arthritis) with a severity whose low end overlaps normal hands. They exist to exercise the
  pipeline, never to judge a real classifier.

Resizing keeps the aspect ratio and *pads* to a square (letterbox) rather than center-cropping:
the signs sit at the finger joints and tips, which a crop of a portrait photo cuts off. The
padding is filled with the mean colour of the photo's border so it reads as background, not as a
black bar whose width (the photo's aspect ratio) a classifier could learn.

    python -m handjax.data preview --out sheet.png   # contact sheet of synthetic hands
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

log = logging.getLogger(__name__)

CLASSES = ("normal", "heberden", "ra")
DISPLAY_NAMES = ("Normal", "Heberden's nodes", "Rheumatoid arthritis")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
N_FOLDS = 5  # the study's 5-fold protocol: every class needs at least this many photos
SYNTHETIC_SIZE = 256  # native resolution of synthetic_hands; loaders resize from it
_DECODER_VERSION = "2"  # bump when decoding changes, so cached folders are rebuilt


class DataError(ValueError):
    """Bad input data: a missing or malformed folder, an unreadable photo, too few images."""


class Examples(NamedTuple):
    """A whole data set in memory, ordered by (label, id).

    images: uint8 [N, S, S, 3]; labels: int32 [N] indexing ``class_names``; ids: stable
    strings (the path relative to the root for folders, ``synthetic/<class>/<i>`` otherwise).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: list
    class_names: tuple


class _Ids(list):
    """The ids list, remembering where the examples came from (read by ``describe``)."""

    source: str = ""


# --------------------------------------------------------------------------- decoding


def decode_image(path, image_size: int) -> np.ndarray:
    """Decodes one photo to uint8 [image_size, image_size, 3].

    EXIF orientation applied; every mode converted to RGB (alpha composited on white, 16-bit
    scaled to 8 bits); aspect ratio kept by padding (see the module docstring). Images over
    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) are rejected.
    Raises DataError naming the file and the reason.
    """
    _check_size(image_size)
    try:
        return _fit_square(_open_rgb(Path(path), image_size), image_size)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: rejected as a decompression bomb ({e})") from None
    except Exception as e:  # Pillow raises many types for damaged files (OSError, SyntaxError...)
        raise DataError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from None


def _open_rgb(path: Path, image_size: int) -> Image.Image:
    with warnings.catch_warnings():
        # The explicit check below gives a clearer message than Pillow's warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise DataError(
                    f"{path}: rejected as a decompression bomb ({img.width}x{img.height} pixels "
                    f"> Pillow's limit Image.MAX_IMAGE_PIXELS={limit})")
            if img.format == "JPEG":  # decode big phone photos at a reduced scale: much faster
                img.draft(None, (image_size, image_size))
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha over white; 16/32-bit and float scaled, not clipped."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32)
        if img.mode == "F":
            top = 1.0 if a.max(initial=0) <= 1.0 else max(float(a.max()), 1e-6)
        else:  # 16-bit data (also when Pillow widens it to mode "I")
            top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        gray = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _fit_square(img: Image.Image, size: int) -> np.ndarray:
    """Resizes the long side to ``size`` and pads the short side with the border's mean colour."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    a = np.asarray(img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0))
    if nw == nh == size:
        return a
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.float32)
    out = np.empty((size, size, 3), np.uint8)
    out[...] = np.round(border.mean(0)).astype(np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = a
    return out


def _check_size(image_size) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise DataError(f"image_size must be an integer >= 8, got {image_size!r}")


# --------------------------------------------------------------------------- folders


def _class_mapping(class_map) -> dict:
    """Folder name -> class index; the class names themselves always map to themselves."""
    mapping = {c: i for i, c in enumerate(CLASSES)}
    for folder, cls in (class_map or {}).items():
        if cls not in CLASSES:
            raise DataError(f"class_map[{folder!r}] = {cls!r} is not one of {', '.join(CLASSES)}")
        mapping[folder] = CLASSES.index(cls)
    return mapping


def _scan_folder(root: Path, class_map) -> list:
    """Sorted (relative path, label) of every image file; structure errors raised up front."""
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    mapping = _class_mapping(class_map)
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if not dirs:
        raise DataError(f"no class folders in {root}: expected subfolders {', '.join(CLASSES)}")
    unknown = [d.name for d in dirs if _folder_label(d.name, mapping) is None]
    if unknown:
        raise DataError(
            f"unknown class folder(s) {', '.join(unknown)} in {root}: expected "
            f"{', '.join(CLASSES)}, or map them with class_map={{folder: class}}")
    files = []
    for d in dirs:
        label = _folder_label(d.name, mapping)
        for p in sorted(d.rglob("*")):
            hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
            if p.suffix.lower() in IMAGE_EXTENSIONS and not hidden and p.is_file():
                files.append((p.relative_to(root).as_posix(), label))
    _check_counts([label for _, label in files], root, "image files")
    return files


def _folder_label(name: str, mapping: dict):
    return mapping.get(name, mapping.get(name.lower()))


def _check_counts(labels, root, what: str) -> None:
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(CLASSES))
    empty = [CLASSES[i] for i in range(len(CLASSES)) if counts[i] == 0]
    if empty:
        raise DataError(
            f"empty class(es) {', '.join(empty)} in {root}: no {what} "
            f"({'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
    few = [f"{CLASSES[i]} has {counts[i]}" for i in range(len(CLASSES)) if counts[i] < N_FOLDS]
    if few:
        raise DataError(
            f"too few {what} in {root} for {N_FOLDS}-fold cross-validation: {', '.join(few)} "
            f"(need at least {N_FOLDS} per class)")


def _fingerprint(root: Path, files, image_size: int, class_map) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten or touched."""
    h = hashlib.sha256()
    header = (_DECODER_VERSION, str(root), image_size, sorted((class_map or {}).items()),
              Image.MAX_IMAGE_PIXELS)
    h.update(repr(header).encode())
    for rel, label in files:
        st = (root / rel).stat()
        h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- TFDS builders


def _features(size: int, **extra) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        # raw bytes: the default stores one int64 per pixel value, which took 3.6 s of the 8 s
        # spent preparing the default synthetic set
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(names=CLASSES),
        "id": tfds.features.Text(),
        **extra,
    })


@dataclasses.dataclass
class HandConditionsConfig(tfds.core.BuilderConfig):
    """One folder at one image size; ``name`` is the folder's fingerprint."""

    root: str = ""
    image_size: int = 224
    class_map: tuple = ()


# A second definition under __main__ (python -m handjax.data) must not clash in TFDS's registry.
_SKIP = __name__ == "__main__"


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What both builders share: one "train" split, nothing to download."""

    # No checksums file to look up: TFDS's lookup imports the `importlib_resources` backport,
    # which tensorflow-datasets only declares for Python < 3.9.
    code_path = None

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}


class HandConditions(_Builder, skip_registration=_SKIP):
    """A user's ImageFolder of hand photos, decoded once; unreadable files are recorded in
    ``info.metadata["bad_files"]`` as [relative path, reason] and left out."""

    VERSION = tfds.core.Version("1.1.0")

    def _info(self):
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self, description=f"Hand photos from {cfg.root}",
            features=_features(cfg.image_size), metadata=tfds.core.MetadataDict())

    def _generate_examples(self):
        cfg = self.builder_config
        root, bad = Path(cfg.root), []
        for rel, label in _scan_folder(root, dict(cfg.class_map)):
            try:
                image = decode_image(root / rel, cfg.image_size)
            except DataError as e:
                bad.append([rel, str(e).split(": ", 1)[-1]])
                continue
            yield rel, {"image": image, "label": label, "id": rel}
        self.info.metadata["bad_files"] = bad


@dataclasses.dataclass
class SyntheticHandsConfig(tfds.core.BuilderConfig):
    n_per_class: int = 50
    seed: int = 0


class SyntheticHands(_Builder, skip_registration=_SKIP):
    """Procedural photo-like hands, SYNTHETIC_SIZE px, balanced, deterministic for a seed.
    Synthetic and medically meaningless; see the module docstring."""

    VERSION = tfds.core.Version("1.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description="Synthetic hands (medically meaningless).",
            features=_features(SYNTHETIC_SIZE, severity=tfds.features.Scalar(np.float32)))

    def _generate_examples(self):
        cfg = self.builder_config
        for label, name in enumerate(CLASSES):
            for i in range(cfg.n_per_class):
                # One stream per (seed, class, index): the first k hands do not depend on n.
                rng = np.random.default_rng([cfg.seed, label, i])
                severity = float(rng.uniform() ** 0.8) if label else 0.0
                key = f"synthetic/{name}/{i:04d}"
                yield key, {"image": render_hand(rng, label, severity, SYNTHETIC_SIZE),
                            "label": label, "id": key, "severity": np.float32(severity)}


def _cache_dir() -> Path:
    return Path(os.environ.get("HANDJAX_CACHE") or "~/.cache/handjax").expanduser()


@contextlib.contextmanager
def _quiet():
    """TFDS prints banners and progress bars and warns about custom configs (ours are all
    custom, by design); the data sets are small, so keep the console for handjax's own log."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        absl.setLevel(level)


def _read(builder_cls, config) -> tuple:
    """Prepares the data set if needed; returns (builder, records sorted by (label, id))."""
    with _quiet():
        builder = builder_cls(data_dir=str(_cache_dir() / "tfds"), config=config)
        prepared = builder.is_prepared()
    if not prepared:
        log.info("preparing %s/%s in %s", builder.name, config.name, builder.data_dir)
        with _quiet():
            builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split="train")
    records = list(source.__getitems__(range(len(source))))
    for r in records:
        r["id"] = r["id"].decode() if isinstance(r["id"], bytes) else str(r["id"])
    return builder, sorted(records, key=lambda r: (int(r["label"]), r["id"]))


def _prune_stale_copies(builder_root: Path, prefix: str, keep: str) -> None:
    """Deletes the cached copies ``<builder_root>/<prefix>*`` other than ``keep``."""
    for stale in builder_root.glob(prefix + "*"):
        if stale.name != keep and stale.is_dir():
            log.info("deleting the outdated cached copy %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _examples(records, source: str, resize_to: int | None = None) -> Examples:
    images = np.stack([r["image"] for r in records])
    if resize_to is not None and images.shape[1] != resize_to:
        images = np.stack([
            np.asarray(Image.fromarray(im).resize((resize_to, resize_to), Image.Resampling.LANCZOS,
                                                  reducing_gap=2.0)) for im in images])
    ids = _Ids(r["id"] for r in records)
    ids.source = source
    labels = np.array([r["label"] for r in records], np.int32)
    return Examples(images, labels, ids, CLASSES)


# --------------------------------------------------------------------------- loaders


def load_folder(root, *, image_size: int, on_error: str = "raise", class_map=None) -> Examples:
    """Loads a user's ImageFolder of hand photos (see the module docstring for the layout).

    on_error: "raise" (default) raises one DataError listing every unreadable file and why;
    "skip" leaves them out with a warning giving their number. class_map: optional
    {folder name: class name} for folders not named like ``CLASSES``. Folder-structure errors
    (missing root, no/unknown/empty class folders, fewer than N_FOLDS images in a class) are
    raised before anything is decoded. Decoded arrays are cached under $HANDJAX_CACHE.
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    _check_size(image_size)
    path = Path(root).expanduser()
    files = _scan_folder(path, class_map)
    resolved = path.resolve()
    # s<size>_<folder>_<state>: a changed folder gets a new copy; older copies of the same
    # folder at the same size are deleted once the new one is prepared.
    prefix = f"s{image_size}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}_"
    config = HandConditionsConfig(
        name=prefix + _fingerprint(resolved, files, int(image_size), class_map),
        root=str(resolved), image_size=int(image_size),
        class_map=tuple(sorted((class_map or {}).items())))
    builder, records = _read(HandConditions, config)
    _prune_stale_copies(Path(builder.data_dir).parents[1], prefix, keep=config.name)
    bad = list(builder.info.metadata.get("bad_files", []))
    if bad:
        listing = "; ".join(f"{rel} ({why})" for rel, why in bad)
        if on_error == "raise":
            raise DataError(
                f"{len(bad)} unreadable image file(s) in {root} (fix or remove them, or pass "
                f"on_error='skip'): {listing}")
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {root}: {listing}",
                      stacklevel=2)
        _check_counts([r["label"] for r in records], root, "readable images")
    return _examples(records, source=str(root))


def load_synthetic(*, n_per_class: int = 50, image_size: int, seed: int = 0) -> Examples:
    """The embedded synthetic_hands set (synthetic, medically meaningless), resized to
    ``image_size``. Generated once per (n_per_class, seed) and cached under $HANDJAX_CACHE."""
    _check_size(image_size)
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise DataError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    return _examples(_synthetic_records(int(n_per_class), int(seed)), "synthetic", image_size)


def _synthetic_records(n_per_class: int, seed: int) -> list:
    """The first ``n_per_class`` hands of each class. Hand i of a class does not depend on how
    many are generated, so a larger set already in the cache is sliced instead of rendering."""
    n = min((m for m in _prepared_synthetic_sizes(seed) if m >= n_per_class), default=n_per_class)
    config = SyntheticHandsConfig(name=f"n{n}_seed{seed}", n_per_class=n, seed=seed)
    records = _read(SyntheticHands, config)[1]
    return [r for r in records if int(r["id"].rsplit("/", 1)[1]) < n_per_class]


def _prepared_synthetic_sizes(seed: int) -> list:
    version = str(SyntheticHands.VERSION)
    root = _cache_dir() / "tfds" / "synthetic_hands"
    found = root.glob(f"n*_seed{seed}/{version}/dataset_info.json")
    return [int(p.parts[-3][1:].split("_")[0]) for p in found]


def describe(examples: Examples, *, source: str | None = None) -> dict:
    """{"source", "n", "class_counts"} for a results header. ``source`` defaults to the one
    the loader recorded ("synthetic" or the folder path as given)."""
    counts = np.bincount(np.asarray(examples.labels), minlength=len(examples.class_names))
    return {
        "source": source or getattr(examples.ids, "source", "") or "unknown",
        "n": int(len(examples.labels)),
        "class_counts": {c: int(n) for c, n in zip(examples.class_names, counts)},
    }


# --------------------------------------------------------------------------- folds


def _dhash(images: np.ndarray, hash_size: int = 12) -> np.ndarray:
    """Difference hash, bool [N, hash_size**2]: is each pixel of a small gray copy darker than
    its right neighbour? Survives resizing and re-encoding, which scraped photo sets are full of."""
    bits = []
    for im in np.asarray(images):
        g = Image.fromarray(np.asarray(im, np.uint8)).convert("L")
        g = np.asarray(g.resize((hash_size + 1, hash_size), Image.Resampling.BOX), np.int16)
        bits.append((g[:, 1:] > g[:, :-1]).ravel())
    return np.array(bits, bool).reshape(len(bits), hash_size * hash_size)


def duplicate_groups(images, *, max_distance: int = 20) -> np.ndarray:
    """Group id per image, int [N], numbered by first appearance: images whose 144-bit
    difference hashes differ in at most ``max_distance`` bits are linked, and linked images
    (transitively) share a group.

    The default sits between what was measured on synthetic_hands at 64-112 px: copies resized
    to 0.5-1.5x and JPEG re-encoded differ by <= 18 bits, distinct hands by >= 34.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must be [N, H, W, 3], got shape {images.shape}")
    b = _dhash(images).astype(np.float32)
    dist = b @ (1 - b).T + (1 - b) @ b.T
    _, comp = connected_components(csr_matrix(dist <= max_distance), directed=False)
    # renumber by first appearance, so ids do not depend on scipy's labelling
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def folds(labels, *, n_splits: int = N_FOLDS, seed: int = 0, images=None, groups=None) -> list:
    """[(train_idx, test_idx)] * n_splits, stratified by label.

    images=None and groups=None: exactly ``StratifiedKFold(n_splits, shuffle=True,
    random_state=seed)``. With images (or their precomputed ``duplicate_groups``):
    near-duplicates are kept in one fold by ``StratifiedGroupKFold(n_splits, shuffle=True,
    random_state=seed)``, so re-encoded or resized copies never sit on both sides of a split.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, counts = np.unique(labels, return_counts=True)
    if n_splits < 2 or counts.min() < n_splits:
        raise DataError(f"{n_splits}-fold split needs at least {n_splits} examples per class "
                        f"(and n_splits >= 2), smallest class has {counts.min()}")
    if images is not None and groups is not None:
        raise ValueError("pass images or their groups, not both")
    x = np.zeros((len(labels), 1))
    if images is None and groups is None:
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, labels))
    if images is not None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        groups = duplicate_groups(images)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise DataError(f"{len(groups)} duplicate groups but {len(labels)} labels")
    sizes = np.bincount(groups)
    log.info("folds: %d near-duplicate group(s) covering %d images, each kept in one fold",
             int((sizes > 1).sum()), int(sizes[sizes > 1].sum()))
    splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(x, labels, groups))


# --------------------------------------------------------------------------- augmentation


@functools.partial(jax.jit, static_argnames=(
    "max_rotate_deg", "max_scale", "max_translate", "max_brightness", "max_contrast"))
def augment(key, images, *, max_rotate_deg: float = 10.0, max_scale: float = 0.1,
            max_translate: float = 0.08, max_brightness: float = 0.2,
            max_contrast: float = 0.2):
    """Random flip, small rotation/scale/translation, brightness and contrast, per image.

    Pure jax, jit-able; same key -> same output. ``images`` [N, H, W, C] uint8 (result rounded
    and clipped to uint8) or float (result float, unclipped: brightness is a factor and contrast
    acts around the image mean, so any value range works). Pixels pulled from outside the frame
    repeat the edge.
    """
    x = jnp.asarray(images)
    # All per-image draws in one call: one threefry instance instead of one per split and
    # draw under vmap (those took ~0.8 s to compile, the warp itself ~0.1 s).
    u = jax.random.uniform(key, (x.shape[0], 7))
    limits = (max_rotate_deg, max_scale, max_translate, max_brightness, max_contrast)
    out = jax.vmap(lambda u, im: _augment_one(u, im, *limits))(u, x.astype(jnp.float32))
    if x.dtype == jnp.uint8:
        return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
    return out.astype(x.dtype)


def _between(u, lo, hi):
    """``u`` in [0, 1) mapped onto [lo, hi)."""
    return lo + (hi - lo) * u


def _augment_one(u, img, max_rotate_deg, max_scale, max_translate, max_brightness,
                 max_contrast):
    """One image's augmentation from its 7 uniform draws ``u``: flip, angle, log-scale,
    shift y, shift x, contrast, brightness."""
    h, w = img.shape[0], img.shape[1]
    img = jnp.where(u[0] < 0.5, img[:, ::-1], img)
    angle = jnp.deg2rad(_between(u[1], -max_rotate_deg, max_rotate_deg))
    scale = jnp.exp(_between(u[2], jnp.log1p(-max_scale), jnp.log1p(max_scale)))
    shift = _between(u[3:5], -max_translate, max_translate) * jnp.array([h, w])
    # inverse map: for each output pixel, where it comes from in the input
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = yy - cy - shift[0], xx - cx - shift[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    sy = (cos * dy - sin * dx) / scale + cy
    sx = (sin * dy + cos * dx) / scale + cx
    img = _bilinear(img, sy, sx)
    contrast = 1 + _between(u[5], -max_contrast, max_contrast)
    brightness = 1 + _between(u[6], -max_brightness, max_brightness)
    mean = img.mean()
    return ((img - mean) * contrast + mean) * brightness


def _bilinear(img, sy, sx):
    h, w = img.shape[0], img.shape[1]
    sy, sx = jnp.clip(sy, 0, h - 1), jnp.clip(sx, 0, w - 1)
    y0, x0 = jnp.floor(sy).astype(jnp.int32), jnp.floor(sx).astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


# --------------------------------------------------------------------------- synthetic hands
# Geometry in "palm widths": a right hand seen from the back, wrist at (0, 0), fingers along +y,
# thumb on the -x (radial) side, little finger on the +x (ulnar) side. Mirrored for left hands.

_PALM = np.array([(-0.36, -0.05), (0.36, -0.05), (0.47, 0.78), (0.40, 0.90), (-0.30, 0.99),
                  (-0.43, 0.80), (-0.47, 0.45)], np.float32)
# index, middle, ring, little: MCP position, resting angle (deg, + = ulnar), phalanx lengths, radius
_FINGERS = (
    ((-0.31, 0.92), -7.0, (0.44, 0.26, 0.21), 0.118),
    ((-0.08, 0.96), -1.0, (0.49, 0.30, 0.22), 0.122),
    ((0.15, 0.92), 5.0, (0.46, 0.28, 0.21), 0.115),
    ((0.35, 0.83), 12.0, (0.36, 0.21, 0.19), 0.100),
)
_SKIN = np.array([(0.96, 0.80, 0.69), (0.92, 0.72, 0.58), (0.80, 0.58, 0.43),
                  (0.66, 0.45, 0.32), (0.50, 0.33, 0.22), (0.36, 0.23, 0.16)], np.float32)


def _unit(deg):
    """Unit vector at ``deg`` from +y, positive toward +x (ulnar)."""
    a = np.deg2rad(deg)
    return np.array([np.sin(a), np.cos(a)], np.float32)


class _Canvas:
    """Height, signed-distance and paint fields of one hand, built primitive by primitive in
    pixel coordinates. Heights blend with a smooth max, so fingers grow webs into the palm."""

    def __init__(self, size: int, blend: float):
        self.size, self.k = size, blend
        self.height = np.full((size, size), -1e3, np.float32)
        self.sd = np.full((size, size), 1e3, np.float32)
        self.red = np.zeros((size, size), np.float32)
        self.nail = np.zeros((size, size), np.float32)
        self.crease = np.zeros((size, size), np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.x, self.y = xx + 0.5, yy + 0.5

    def window(self, lo, hi):
        x0, y0 = np.clip(np.floor(lo).astype(int), 0, self.size)
        x1, y1 = np.clip(np.ceil(hi).astype(int) + 1, 0, self.size)
        return None if x1 <= x0 or y1 <= y0 else (slice(y0, y1), slice(x0, x1))

    def add(self, sl, height, sd):
        k = self.k
        h0, d0 = self.height[sl], self.sd[sl]
        m = np.maximum(k - np.abs(h0 - height), 0.0)
        self.height[sl] = np.maximum(h0, height) + m * m / (4 * k)
        m = np.maximum(k - np.abs(d0 - sd), 0.0)
        self.sd[sl] = np.minimum(d0, sd) - m * m / (4 * k)

    def cone(self, a, b, ra, rb, flat=1.0, z=0.0):
        """A tapered capsule from a to b; elliptic cross-section of height/width ``flat``."""
        pad = max(ra, rb) + self.k
        sl = self.window(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if sl is None:
            return
        px, py = self.x[sl] - a[0], self.y[sl] - a[1]
        ab = b - a
        t = np.clip((px * ab[0] + py * ab[1]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
        d = np.hypot(px - t * ab[0], py - t * ab[1])
        r = ra + (rb - ra) * t
        top = z + flat * np.sqrt(np.maximum(r * r - d * d, 0.0)) - np.maximum(d - r, 0)
        self.add(sl, top, d - r)

    def ellipsoid(self, c, axis, half_len, radius, flat=1.0, z=0.0):
        pad = max(half_len, radius) + self.k
        sl = self.window(c - pad, c + pad)
        if sl is None:
            return
        px, py = self.x[sl] - c[0], self.y[sl] - c[1]
        u = (px * axis[0] + py * axis[1]) / half_len
        v = (-px * axis[1] + py * axis[0]) / radius
        q = np.sqrt(u * u + v * v)
        sd = (q - 1.0) * min(half_len, radius)
        top = z + flat * radius * np.sqrt(np.maximum(1 - q * q, 0.0)) - np.maximum(sd, 0)
        self.add(sl, top, sd)

    def polygon(self, pts, edge, top):
        """A flat-topped slab over a convex polygon, its rim rounded over ``edge`` pixels."""
        sl = self.window(pts.min(0) - self.k - 2, pts.max(0) + self.k + 2)
        px, py = self.x[sl], self.y[sl]
        dist = np.full(px.shape, 1e9, np.float32)
        inside = np.ones(px.shape, bool)
        e1, e2 = pts[1] - pts[0], pts[2] - pts[0]
        orient = np.sign(e1[0] * e2[1] - e1[1] * e2[0])
        for a, b in zip(pts, np.roll(pts, -1, axis=0)):
            ab = b - a
            qx, qy = px - a[0], py - a[1]
            t = np.clip((qx * ab[0] + qy * ab[1]) / float(ab @ ab), 0, 1)
            dist = np.minimum(dist, np.hypot(qx - t * ab[0], qy - t * ab[1]))
            inside &= (ab[0] * qy - ab[1] * qx) * orient >= 0
        sd = np.where(inside, -dist, dist)
        depth = np.clip(-sd, 0, edge)
        h = top * np.sqrt(np.maximum(1 - ((edge - depth) / edge) ** 2, 0)) - np.maximum(sd, 0)
        self.add(sl, h, sd)

    def paint(self, field, c, sigma, amp):
        sl = self.window(c - 3 * sigma, c + 3 * sigma)
        if sl is not None:
            r2 = (self.x[sl] - c[0]) ** 2 + (self.y[sl] - c[1]) ** 2
            np.maximum(field[sl], amp * np.exp(-r2 / (2 * sigma * sigma)), out=field[sl])

    def nail_at(self, tip, axis, length, width):
        c = tip - axis * (0.5 * length + 0.15 * width)
        sl = self.window(c - length, c + length)
        if sl is None:
            return
        px, py = self.x[sl] - c[0], self.y[sl] - c[1]
        u = (px * axis[0] + py * axis[1]) / (0.5 * length)
        v = (-px * axis[1] + py * axis[0]) / (0.5 * width)
        q = np.sqrt(u * u + v * v)
        np.maximum(self.nail[sl], np.clip((1 - q) * width / 2.4, 0, 1), out=self.nail[sl])

    def creases(self, c, axis, radius, strength, n=3):
        """Skin wrinkles across the back of a finger joint."""
        sl = self.window(c - 1.5 * radius, c + 1.5 * radius)
        if sl is None:
            return
        px, py = self.x[sl] - c[0], self.y[sl] - c[1]
        u = (px * axis[0] + py * axis[1]) / radius
        v = (-px * axis[1] + py * axis[0]) / radius
        envelope = np.exp(-(u / 0.35) ** 2 - (v / 0.7) ** 4)
        self.crease[sl] += strength * envelope * np.cos(np.pi * n * (u + 0.08 * v * v)) ** 8


def render_hand(rng: np.random.Generator, label: int, severity: float,
                size: int = SYNTHETIC_SIZE) -> np.ndarray:
    """One synthetic photo (uint8 [size, size, 3]) of a hand of class ``label``.

    normal: straight slim fingers (with the small crooks and knobbly joints of real hands);
    heberden: paired nodules on the back of the DIP joint of 1-4 fingers, fingertip bent
    sideways; ra: spindle swelling and redness at PIP and MCP joints, ulnar drift at the MCPs.
    Sign sizes scale with ``severity`` in [0, 1]; near 0 they are within normal variation.
    """
    s = severity
    scale = size * rng.uniform(0.30, 0.38)  # pixels per palm width
    mirror = -1.0 if rng.random() < 0.5 else 1.0  # left or right hand
    a = np.deg2rad(rng.uniform(-25, 25))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    center = (np.array([0.5, 0.52]) + rng.uniform(-0.06, 0.06, 2)) * size
    flip = np.array([mirror, -1.0], np.float32)  # image y points down

    def px(p):
        return (rot @ ((np.asarray(p, np.float32) - (0.0, 1.05)) * flip)) * scale + center

    def vec(v):
        return rot @ (np.asarray(v, np.float32) * flip)

    canvas = _Canvas(size, blend=0.05 * scale)
    canvas.cone(px((0.0, 0.1)), px((rng.uniform(-0.15, 0.15), -2.2)), 0.37 * scale, 0.42 * scale,
                flat=0.45)  # forearm
    canvas.polygon(np.stack([px(p) for p in _PALM]), 0.14 * scale, 0.16 * scale)
    _thumb(rng, canvas, px, vec, scale)
    affected = _affected_fingers(rng, label, s)
    drift = (8 + 20 * s) * rng.uniform(0.7, 1.1) if label == 2 else rng.uniform(-2, 3)
    spread = rng.uniform(0.6, 1.6)
    for i, finger in enumerate(_FINGERS):
        _finger(rng, canvas, px, vec, scale, finger, i, label, s, i in affected, spread, drift)
    return _photograph(rng, canvas, size)


def _affected_fingers(rng, label, s) -> set:
    if label == 0:
        return set()
    lo = 1 if label == 1 else 2
    n = int(np.clip(round(lo + (4 - lo) * s * rng.uniform(0.6, 1.2)), lo, 4))
    return set(rng.choice(4, n, replace=False).tolist())


def _thumb(rng, canvas, px, vec, scale):
    ang = rng.uniform(-62, -38)
    cmc = np.array((-0.30, 0.22), np.float32)
    mcp = cmc + _unit(ang - 3) * 0.48
    d1 = _unit(ang + rng.uniform(8, 22))
    ip = mcp + d1 * 0.34
    d2 = _unit(ang + rng.uniform(15, 40))
    tip = ip + d2 * 0.30
    canvas.cone(px(cmc), px(mcp), 0.16 * scale, 0.118 * scale, flat=0.8, z=0.02 * scale)
    canvas.cone(px(mcp), px(ip), 0.118 * scale, 0.108 * scale, flat=0.9)
    canvas.cone(px(ip), px(tip), 0.108 * scale, 0.095 * scale, flat=0.9)
    canvas.nail_at(px(tip + d2 * 0.095), vec(d2), 0.17 * scale, 0.14 * scale)
    canvas.creases(px(ip), vec(d2), 0.11 * scale, 0.25)


def _finger(rng, canvas, px, vec, scale, finger, i, label, s, sick, spread, drift):
    mcp_xy, rest_angle, lengths, radius = finger
    fs = rng.uniform(0.93, 1.07)
    r = radius * rng.uniform(0.92, 1.06)
    ang = rest_angle * spread + rng.uniform(-3, 3) + (drift * (0.8 + 0.15 * i) if label == 2 else 0)
    m = np.array(mcp_xy, np.float32)
    d1 = _unit(ang)
    pip = m + d1 * lengths[0] * fs
    ang2 = ang + rng.uniform(-3, 3)
    d2 = _unit(ang2)
    dip = pip + d2 * lengths[1] * fs
    bend = rng.uniform(-3, 3)
    if label == 1 and sick:  # Heberden's: the fingertip deviates sideways at the DIP
        bend += rng.choice([-1, 1]) * (3 + 14 * s) * rng.uniform(0.6, 1.0)
    if label == 0 and rng.random() < 0.25:  # healthy older hands have crooked fingertips too
        bend += rng.choice([-1, 1]) * rng.uniform(2, 7)
    d3 = _unit(ang2 + bend)
    tip = dip + d3 * lengths[2] * fs
    knob = 1 + (rng.uniform(0.0, 0.08) if label == 0 else 0.0)  # healthy joints are knobbly
    r_pip, r_dip, r_tip = r * 0.93 * knob, r * 0.84 * knob, r * 0.76
    if label == 1 and sick:
        r_dip *= 1 + 0.22 * s
    canvas.cone(px(m), px(pip), r * scale, r_pip * scale)
    canvas.cone(px(pip), px(dip), r_pip * scale, r_dip * scale)
    canvas.cone(px(dip), px(tip), r_dip * scale, r_tip * scale)
    knuckle = 0.075 + (0.06 * s if label == 2 else 0.0)
    canvas.ellipsoid(px(m - d1 * 0.02), vec(d1), knuckle * 1.3 * scale, knuckle * scale,
                     flat=0.6, z=0.05 * scale)
    canvas.nail_at(px(tip + d3 * r_tip), vec(d3), 0.55 * lengths[2] * fs * scale,
                   1.1 * r_tip * scale)
    canvas.creases(px(pip), vec(d2), r_pip * scale, 0.10)
    canvas.creases(px(dip), vec(d3), r_dip * scale, 0.07, n=2)
    if label == 1 and sick:  # Heberden's nodes: paired firm nodules on the back of the DIP
        node = r * (0.30 + 0.40 * s)
        side = vec(np.array((d3[1], -d3[0])))
        for sign in (-1, 1):
            c = px(dip - d2 * 0.02) + sign * side * r_dip * 0.55 * scale
            canvas.ellipsoid(c, vec(d2), node * 1.1 * scale, node * scale, z=r * 0.35 * scale)
            canvas.paint(canvas.red, c, node * scale, 0.25 * s)
    if label == 2 and (sick or s > 0.5):  # RA: fusiform PIP swelling, red swollen joints
        canvas.ellipsoid(px(pip), vec(d1), lengths[0] * 0.42 * fs * scale,
                         r_pip * (1 + 0.55 * s) * scale, z=0.01 * scale)
        canvas.paint(canvas.red, px(pip), r * 1.3 * scale, 0.45 * s)
        canvas.paint(canvas.red, px(m), r * 1.4 * scale, 0.35 * s)


def _photograph(rng, canvas: _Canvas, size: int) -> np.ndarray:
    """Shades the hand, lays it on a cluttered table with its shadow, adds camera effects."""
    f32 = np.float32
    background = _background(rng, size)
    tone = rng.uniform(0, len(_SKIN) - 1)
    lo = int(tone)
    skin = (_SKIN[lo] + (tone - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo]))
    skin = (skin * rng.uniform(0.95, 1.05, 3)).astype(f32)
    la = rng.uniform(0, 2 * np.pi)
    texture = _noise(rng, size, 10)
    cover = np.clip(0.5 - canvas.sd, 0, 1)
    # the hand's shadow on the table, cast away from the light
    shadow = Image.fromarray((cover * 255).astype(np.uint8)).transform(
        (size, size), Image.Transform.AFFINE, (1, 0, np.cos(la) * 6, 0, 1, np.sin(la) * 6))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(6)), f32)[..., None] / 255
    img = background * (1 - 0.45 * shadow)
    rows, cols = np.flatnonzero(cover.any(1)), np.flatnonzero(cover.any(0))
    if len(rows):  # shade only the hand's bounding box: most of the frame is background
        box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
        c = cover[box][..., None]
        hand = _shade_skin(canvas, box, skin, texture[box], la)
        img[box] = c * hand + (1 - c) * img[box]
    # uneven lighting over the frame, white balance, sensor noise, lens blur, JPEG
    ramp = np.linspace(-1, 1, size, dtype=f32)
    ga = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0.1, 0.3) * (np.cos(ga) * ramp[None, :] + np.sin(ga) * ramp[:, None])
    white_balance = (rng.uniform(0.93, 1.07, 3) * rng.uniform(0.85, 1.1)).astype(f32)
    img = img * gradient[..., None] * white_balance
    img += rng.standard_normal(img.shape, dtype=f32) * f32(rng.uniform(0.005, 0.02))
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
    return np.asarray(Image.open(buf).convert("RGB"))


def _shade_skin(canvas: _Canvas, box, skin, texture, light_angle) -> np.ndarray:
    """Lambert + a little specular on the height field; redness, nails and creases as paint."""
    f32 = np.float32
    gy, gx = np.gradient(np.maximum(canvas.height[box], 0))
    normal = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([np.cos(light_angle) * 0.6, np.sin(light_angle) * 0.6, 0.8], f32)  # unit
    half = light + np.array([0, 0, 1], f32)
    half /= np.linalg.norm(half)
    diffuse = np.clip(normal @ light, 0, 1)[..., None]
    spec = (np.clip(normal @ half, 0, 1) ** 25)[..., None]
    albedo = skin * (1 + 0.05 * texture)[..., None]
    red = np.clip(canvas.red[box], 0, 1)[..., None]
    albedo = albedo * (1 - 0.5 * red) + red * (0.5 * np.array([0.85, 0.35, 0.33], f32))
    nail = np.clip(canvas.nail[box], 0, 1)[..., None]
    albedo = albedo * (1 - nail) + nail * (0.7 * skin + 0.3 * np.array([0.95, 0.80, 0.78], f32))
    albedo *= (1 - np.clip(canvas.crease[box], 0, 0.5))[..., None]
    return albedo * (0.45 + 0.55 * diffuse) + (0.06 + 0.12 * nail) * spec


def _noise(rng, size: int, cells: int, octaves: int = 2) -> np.ndarray:
    """Smooth value noise, roughly unit amplitude."""
    out = np.zeros((size, size), np.float32)
    for o in range(octaves):
        c = cells * 2 ** o
        small = Image.fromarray(rng.standard_normal((c, c), dtype=np.float32), mode="F")
        out += np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)) / 2 ** o
    return out


def _background(rng, size: int) -> np.ndarray:
    """A table, cloth or patterned surface with everyday clutter near the edges, float [S,S,3]."""
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    kind = rng.integers(3)
    if kind == 0:  # wood
        base = rng.uniform([0.45, 0.28, 0.14], [0.75, 0.55, 0.35]).astype(np.float32)
        across = (np.cos(ang) * ramp[:, None] - np.sin(ang) * ramp[None, :]) * rng.uniform(10, 25)
        grain = 0.5 + 0.5 * np.sin(across + 2.5 * _noise(rng, size, 3))
        img = base * (0.8 + 0.25 * grain[..., None])
    elif kind == 1:  # plain cloth, paper or wall
        base = rng.uniform(0.35, 0.95, 3).astype(np.float32)
        img = (0.5 * base + 0.5 * base.mean()) * (1 + 0.05 * _noise(rng, size, 6, 3)[..., None])
    else:  # checked fabric
        base, other = rng.uniform(0.2, 0.85, (2, 3)).astype(np.float32)
        wave = np.sin(np.arange(size, dtype=np.float32) / rng.uniform(10, 30) * np.pi)
        check = (wave[None, :] * wave[:, None] > 0)[..., None]
        img = np.where(check, base, 0.7 * base + 0.3 * other)
        img = img * (1 + 0.04 * _noise(rng, size, 8)[..., None])
    img = img * (1 + 0.15 * (np.cos(ang) * ramp[None, :] + np.sin(ang) * ramp[:, None]))[..., None]
    pil = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    _clutter(rng, pil)
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    return np.asarray(pil, np.float32) / 255


def _clutter(rng, pil: Image.Image) -> None:
    """Draws books, phones, cups, pens and paper near the frame's edges, with soft shadows."""
    size = pil.size[0]
    items = []
    for _ in range(rng.integers(2, 8)):
        kind, edge = rng.integers(4), rng.integers(4)
        color = tuple(int(c) for c in rng.integers(20, 240, 3))
        cx, cy = rng.uniform(0, size, 2)
        near = rng.uniform(-0.1, 0.2) * size
        cx, cy = [(near, cy), (size - near, cy), (cx, near), (cx, size - near)][edge]
        w, h = rng.uniform(0.08, 0.35, 2) * size
        if kind == 0:  # book or phone
            a = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            corners = np.array([(-w, -h), (w, -h), (w, h), (-w, h)]) / 2 @ rot.T + (cx, cy)
            items.append(("polygon", [tuple(p) for p in corners], color))
        elif kind == 1:  # cup or bottle seen from above
            items.append(("ellipse", [cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], color))
        elif kind == 2:  # pen
            a = rng.uniform(0, np.pi)
            dx, dy = np.cos(a) * w, np.sin(a) * w
            items.append(("line", [cx - dx, cy - dy, cx + dx, cy + dy], color))
        else:  # sheet of paper
            paper = tuple(int(c) for c in rng.integers(200, 250, 3))
            items.append(("polygon", [(cx - w, cy - h), (cx + w, cy - 0.9 * h),
                                      (cx + 1.1 * w, cy + h), (cx - w, cy + h)], paper))
    shadow = Image.new("L", pil.size, 0)
    sdraw, draw = ImageDraw.Draw(shadow), ImageDraw.Draw(pil)
    for kind, xy, _ in items:
        if kind == "polygon":
            sdraw.polygon([(x + 4, y + 4) for x, y in xy], fill=110)
        elif kind == "ellipse":
            sdraw.ellipse([v + 4 for v in xy], fill=110)
    pil.paste((0, 0, 0), mask=shadow.filter(ImageFilter.GaussianBlur(5)))
    for kind, xy, color in items:
        if kind == "polygon":
            draw.polygon(xy, fill=color)
        elif kind == "ellipse":
            draw.ellipse(xy, fill=color)
            inset = (xy[2] - xy[0]) * 0.15
            draw.ellipse([xy[0] + inset, xy[1] + inset, xy[2] - inset, xy[3] - inset],
                         fill=tuple(int(c * 0.7) for c in color))
        else:
            draw.line(xy, fill=color, width=int(rng.integers(3, 8)))


# --------------------------------------------------------------------------- preview CLI


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
    contact_sheet(images, labels, captions, per_class=args.n).save(out)
    return out


def main(argv=None) -> None:
    """``python -m handjax.data preview [--out sheet.png] [--n 6] [--seed 0] [--folder DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m handjax.data",
                                     description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    main()
