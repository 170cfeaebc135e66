"""Where photos come from: two TFDS builders, prepared as ``array_record`` files under
``$HANDJAX_CACHE/tfds`` and read back with ``as_data_source`` (tensorflow-datasets alone,
no TensorFlow):

* ``hand_conditions``: your own ImageFolder, ``<root>/<class>/<any depth>/*.jpg|png|...``,
  class folders named ``normal``, ``heberden``, ``ra`` (or mapped with ``class_map``). Photos
  are decoded once at the requested size; the builder's config name carries a fingerprint of
  the folder (names, sizes, mtimes), so changed contents are rebuilt automatically.
* ``synthetic_hands``: the embedded default, rendered procedurally by ``synthetic.py``
  (nothing downloaded, deterministic for a seed), synthetic and medically meaningless.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import shutil
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from handjax.cache import cache_dir
from handjax.data.records import CLASSES, N_FOLDS, DataError, Examples
from handjax.data.decode import _DECODER_VERSION, _check_size, decode_image
from handjax.data.folders import IMAGE_EXTENSIONS
from handjax.data import store as stores
from handjax.data.store import Store, drop_pages, finish
from handjax.data.synthetic import SYNTHETIC_SIZE, photos

log = logging.getLogger(__name__)



class _Ids(list):
    """The ids list, remembering where the examples came from and which photos were left
    out of them, ``[{"file", "reason"}]`` (read by ``describe``)."""

    source: str = ""
    left_out: tuple = ()


def select(examples: Examples, keep, left_out=()) -> Examples:
    """The photos at ``keep`` (index array), in order; where they came from and what was
    left out (``left_out``: more ``{"file", "reason"}`` entries) carried along."""
    keep = np.asarray(keep, np.int64)
    ids = _Ids(examples.ids[i] for i in keep)
    ids.source = getattr(examples.ids, "source", "")
    ids.left_out = tuple(getattr(examples.ids, "left_out", ())) + tuple(left_out)
    return Examples(np.asarray(examples.images)[keep], np.asarray(examples.labels)[keep],
                    ids, examples.class_names)


# --------------------------------------------------------------------------- folders


def _class_mapping(class_map) -> dict:
    """Folder name -> class index; the class names themselves always map to themselves."""
    mapping = {c: i for i, c in enumerate(CLASSES)}
    for folder, cls in (class_map or {}).items():
        if cls not in CLASSES:
            raise DataError(f"class_map[{folder!r}] = {cls!r} is not one of {', '.join(CLASSES)}")
        mapping[folder] = CLASSES.index(cls)
    return mapping


def class_map_arg(text: str) -> dict:
    """``"OA:heberden,RA:ra"`` -> ``{"OA": "heberden", "RA": "ra"}`` (an argparse type: a
    malformed pair or an unknown class is one usage line)."""
    import argparse
    pairs = [p.split(":", 1) for p in str(text).split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() for p in pairs):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected folder:class,... with class one of {', '.join(CLASSES)}")
    mapping = {k.strip(): v.strip() for k, v in pairs}
    bad = sorted(v for v in mapping.values() if v not in CLASSES)
    if bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {', '.join(bad)} is not a class; classes are {', '.join(CLASSES)}")
    return mapping


def merged_class_map(run_map, extra=None) -> dict | None:
    """The run's ``data.class_map`` (pairs) with ``extra`` ({folder: class}) over it."""
    merged = {**dict(run_map or ()), **dict(extra or {})}
    return merged or None


def _scan_folder(root: Path, class_map, min_per_class: int = N_FOLDS) -> list:
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
    files, seen = [], {}
    for d in dirs:
        label = _folder_label(d.name, mapping)
        for p in sorted(d.rglob("*")):
            hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
            # not only regular files: a broken link, a loop of links or a pipe named like a
            # photo is listed by the decoder as unreadable, never dropped without a word
            if p.suffix.lower() in IMAGE_EXTENSIONS and not hidden and not p.is_dir():
                rel = p.relative_to(root).as_posix()
                _check_one_label(p, rel, label, seen)
                files.append((rel, label))
    _check_counts([label for _, label in files], root, "image files", min_per_class)
    return files


def _check_one_label(path: Path, rel: str, label: int, seen: dict) -> None:
    """One file (through symlinks: a class folder linked to another) under two labels is
    refused: the same photo would train and test under conflicting classes."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):   # a loop of links: the decoder names it
        return
    first = seen.setdefault(real, (rel, label))
    if first[1] != label:
        raise DataError(f"{rel} and {first[0]} are the same file under classes "
                        f"{CLASSES[label]} and {CLASSES[first[1]]} (a symlinked folder?); "
                        "keep each photo in one class folder")


def _folder_label(name: str, mapping: dict):
    return mapping.get(name, mapping.get(name.lower()))


def _check_counts(labels, root, what: str, least: int = N_FOLDS) -> None:
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(CLASSES))
    empty = [CLASSES[i] for i in range(len(CLASSES)) if counts[i] == 0]
    if empty and (least > 0 or len(empty) == len(CLASSES)):   # least=0: a class may be absent
        raise DataError(
            f"empty class(es) {', '.join(empty)} in {root}: no {what} "
            f"({'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
    few = [f"{CLASSES[i]} has {counts[i]}" for i in range(len(CLASSES)) if counts[i] < least]
    if few:
        raise DataError(
            f"too few {what} in {root} for {least}-fold cross-validation: {', '.join(few)} "
            f"(need at least {least} per class; --config.n_folds sets the fold count)")


def _fingerprint(root: Path, files, image_size: int, class_map) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten or touched."""
    h = hashlib.sha256()
    header = (_DECODER_VERSION, str(root), image_size, sorted((class_map or {}).items()),
              Image.MAX_IMAGE_PIXELS)
    h.update(repr(header).encode())
    for rel, label in files:
        try:
            st = (root / rel).stat()
        except OSError:          # a link to nowhere: its own entry stands for it
            st = (root / rel).lstat()
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


# Run as a script (python -m handjax.data.sources), this module would define the builders a
# second time: that copy must not clash in TFDS's registry.
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

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.2.0": "two photos per person (left and right hand: severity, skin "
                              "tone, palm size and finger spread shared)"}

    def _info(self):
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self, description=f"Hand photos from {cfg.root}",
            features=_features(cfg.image_size), metadata=tfds.core.MetadataDict())

    def _generate_examples(self):
        cfg = self.builder_config
        root, bad = Path(cfg.root), []
        files = _scan_folder(root, dict(cfg.class_map), 0)
        for (rel, label), image in zip(files, _decode_all(root, files, cfg.image_size)):
            if isinstance(image, DataError):
                bad.append([rel, str(image).split(": ", 1)[-1]])
                continue
            yield rel, {"image": image, "label": label, "id": rel}
        self.info.metadata["bad_files"] = bad


def _decode_all(root: Path, files: list, size: int):
    """Each file's decoded photo, or the DataError saying why not, in ``files``' order:
    decoded on every core (PIL's decoders and resizing let go of the GIL), at most a few
    batches ahead of the consumer, so memory stays bounded."""
    def one(rel_label):
        try:
            return decode_image(root / rel_label[0], size)
        except DataError as e:
            return e
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), stores.BATCH):
            yield from pool.map(one, files[start:start + stores.BATCH])


@dataclasses.dataclass
class SyntheticHandsConfig(tfds.core.BuilderConfig):
    n_per_class: int = 50
    seed: int = 0


class SyntheticHands(_Builder, skip_registration=_SKIP):
    """Procedural photo-like hands, SYNTHETIC_SIZE px, balanced, deterministic for a seed.
    Synthetic and medically meaningless; see the module docstring."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.2.0": "two photos per person (left and right hand: severity, skin "
                              "tone, palm size and finger spread shared)"}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description="Synthetic hands (medically meaningless).",
            features=_features(SYNTHETIC_SIZE, severity=tfds.features.Scalar(np.float32)))

    def _generate_examples(self):
        cfg = self.builder_config
        jobs = [(label, i) for label in range(len(CLASSES)) for i in range(cfg.n_per_class)]
        for (label, i), (image, severity) in zip(jobs, photos(cfg.seed, jobs)):
            key = f"synthetic/{CLASSES[label]}/{i:04d}"
            yield key, {"image": image, "label": label, "id": key,
                        "severity": np.float32(severity)}



# --------------------------------------------------------------------------- reading


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


def _prepared(builder_cls, config):
    """Prepares the data set if needed; returns (builder, its random-access data source)."""
    with _quiet(), _private_tempdir():
        builder = builder_cls(data_dir=str(cache_dir() / "tfds"), config=config)
        prepared = builder.is_prepared()
    if not prepared:
        log.info("preparing %s/%s in %s", builder.name, config.name, builder.data_dir)
        with _quiet(), _private_tempdir(), _shuffle_buffer(PREPARE_BUFFER_BYTES):
            builder.download_and_prepare(file_format="array_record")
    return builder, builder.as_data_source(split="train")


# TFDS's writer holds a preparation's records in memory up to 1 GB, then moves them to
# temporary bucket files through TensorFlow's file API, which handjax does not install (with
# the limit at 64 MB, 10,000 photos at 64 px failed there: "No module named 'tensorflow'").
# No limit: preparing a folder holds its decoded records once (N x photo bytes, the first
# run over a folder only); every later read is in batches.
PREPARE_BUFFER_BYTES = float("inf")


@contextlib.contextmanager
def _shuffle_buffer(nbytes: int):
    """TFDS's in-memory shuffle buffer set to ``nbytes`` meanwhile (its module constant)."""
    from tensorflow_datasets.core import shuffle
    old = getattr(shuffle, "MAX_MEM_BUFFER_SIZE", None)
    shuffle.MAX_MEM_BUFFER_SIZE = nbytes
    try:
        yield
    finally:
        if old is not None:
            shuffle.MAX_MEM_BUFFER_SIZE = old


def _read(builder_cls, config) -> tuple:
    """Prepares the data set if needed; returns (builder, records sorted by (label, id)),
    every photo in RAM (:func:`_index` and :func:`_stream_examples` read in batches)."""
    builder, source = _prepared(builder_cls, config)
    records = list(source.__getitems__(range(len(source))))
    for r in records:
        r["id"] = _text(r["id"])
    return builder, sorted(records, key=lambda r: (int(r["label"]), r["id"]))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _index(source) -> list:
    """``[(label, id, position)]`` of every record, sorted by (label, id); read in batches,
    only the labels and ids kept."""
    index = []
    for start in range(0, len(source), stores.BATCH):
        positions = range(start, min(start + stores.BATCH, len(source)))
        for pos, r in zip(positions, source.__getitems__(positions)):
            index.append((int(r["label"]), _text(r["id"]), pos))
    return sorted(index)


@contextlib.contextmanager
def _private_tempdir():
    """TFDS leaves an empty ``tmp*tfds`` folder in the system temp dir per preparation (its
    GCS metadata probe): point ``tempfile`` at a folder of ours meanwhile, then delete it."""
    import tempfile
    old = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="handjax-tfds-") as tmp:
        tempfile.tempdir = tmp
        try:
            yield
        finally:
            tempfile.tempdir = old


def _prune_stale_copies(builder_root: Path, prefix: str, keep: str) -> None:
    """Deletes the cached copies ``<builder_root>/<prefix>*`` other than ``keep``."""
    for stale in builder_root.glob(prefix + "*"):
        if stale.name != keep and stale.is_dir():
            log.info("deleting the outdated cached copy %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _resized(images, size: int) -> list:
    """Each photo resized to ``size`` (Lanczos), on every core (PIL lets go of the GIL)."""
    def one(im):
        return np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS,
                                                     reducing_gap=2.0))
    if len(images) < 2:
        return [one(im) for im in images]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, images))


def _stream_examples(data, index: list, source: str, resize_to: int | None,
                     store: Store) -> Examples:
    """The photos of ``index`` (from :func:`_index`), in its order, read from the data
    source ``data`` in batches into an array of ``store``'s (RAM, or a file when larger
    than its budget): the same values as :func:`_examples`, never all records at once."""
    positions = [pos for _, _, pos in index]
    size = resize_to or data[positions[0]]["image"].shape[0]
    images = store.empty("photos", (len(index), size, size, 3))
    for start in range(0, len(index), stores.BATCH):
        records = data.__getitems__(positions[start:start + stores.BATCH])
        batch = np.stack([r["image"] for r in records])
        if batch.shape[1] != size:
            batch = np.stack(_resized(batch, size))
        images[start:start + len(batch)] = batch
        drop_pages(images)
    ids = _Ids(i for _, i, _ in index)
    ids.source = source
    labels = np.array([label for label, _, _ in index], np.int32)
    return Examples(finish(images), labels, ids, CLASSES)


# --------------------------------------------------------------------------- loaders


def load_folder(root, *, image_size: int, on_error: str = "raise", class_map=None,
                min_per_class: int = N_FOLDS, store: Store | None = None) -> Examples:
    """Loads a user's ImageFolder of hand photos (see the module docstring for the layout).

    on_error: "raise" (default) raises one DataError listing every unreadable file and why;
    "skip" leaves them out with a warning giving their number. class_map: optional
    {folder name: class name} for folders not named like ``CLASSES``. Folder-structure errors
    (missing root, no/unknown/empty class folders, fewer than N_FOLDS images in a class) are
    raised before anything is decoded; ``min_per_class=0`` lets a class have no photo (a
    second set for validation). Decoded arrays are cached under $HANDJAX_CACHE and read in
    batches into RAM or, larger than ``store``'s budget, a file (:mod:`handjax.data.store`).
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    _check_size(image_size)
    path = Path(root).expanduser()
    files = _scan_folder(path, class_map, min_per_class)
    resolved = path.resolve()
    # s<size>_<folder>_<state>: a changed folder gets a new copy; older copies of the same
    # folder at the same size are deleted once the new one is prepared.
    prefix = f"s{image_size}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}_"
    config = HandConditionsConfig(
        name=prefix + _fingerprint(resolved, files, int(image_size), class_map),
        root=str(resolved), image_size=int(image_size),
        class_map=tuple(sorted((class_map or {}).items())))
    builder, data = _prepared(HandConditions, config)
    index = _index(data)
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
        _check_counts([label for label, _, _ in index], root, "readable images", min_per_class)
    examples = _stream_examples(data, index, str(root), None, store or Store())
    examples.ids.left_out = tuple({"file": rel, "reason": why} for rel, why in bad)
    return examples


def load_synthetic(*, n_per_class: int = 50, image_size: int, seed: int = 0,
                   store: Store | None = None) -> Examples:
    """The embedded synthetic_hands set (synthetic, medically meaningless), resized to
    ``image_size``. Generated once per (n_per_class, seed) and cached under $HANDJAX_CACHE.
    ``store``: where the decoded photos go (default: RAM), see :mod:`handjax.data.store`."""
    _check_size(image_size)
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise DataError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    data, index = _synthetic_index(int(n_per_class), int(seed))
    return _stream_examples(data, index, "synthetic", image_size, store or Store())


def _synthetic_config(n_per_class: int, seed: int) -> SyntheticHandsConfig:
    """The cached set to read the first ``n_per_class`` hands of each class from. Hand i of
    a class does not depend on how many are generated, so a larger set already in the cache
    is sliced instead of rendering."""
    n = min((m for m in _prepared_synthetic_sizes(seed) if m >= n_per_class), default=n_per_class)
    return SyntheticHandsConfig(name=f"n{n}_seed{seed}", n_per_class=n, seed=seed)


def _synthetic_index(n_per_class: int, seed: int) -> tuple:
    """(data source, :func:`_index` of its first ``n_per_class`` hands per class)."""
    data = _prepared(SyntheticHands, _synthetic_config(n_per_class, seed))[1]
    return data, [e for e in _index(data) if int(e[1].rsplit("/", 1)[1]) < n_per_class]


def _synthetic_records(n_per_class: int, seed: int) -> list:
    """The first ``n_per_class`` hands of each class, every record in RAM (previews)."""
    records = _read(SyntheticHands, _synthetic_config(n_per_class, seed))[1]
    return [r for r in records if int(r["id"].rsplit("/", 1)[1]) < n_per_class]


def _prepared_synthetic_sizes(seed: int) -> list:
    version = str(SyntheticHands.VERSION)
    root = cache_dir() / "tfds" / "synthetic_hands"
    found = root.glob(f"n*_seed{seed}/{version}/dataset_info.json")
    return [int(p.parts[-3][1:].split("_")[0]) for p in found]


def describe(examples: Examples, *, source: str | None = None) -> dict:
    """{"source", "n", "class_counts", "left_out"} for a results header (``left_out``: every
    photo of the folder left out, ``{"file", "reason"}``). ``source`` defaults to the one
    the loader recorded ("synthetic" or the folder path as given)."""
    counts = np.bincount(np.asarray(examples.labels), minlength=len(examples.class_names))
    return {
        "source": source or getattr(examples.ids, "source", "") or "unknown",
        "n": int(len(examples.labels)),
        "class_counts": {c: int(n) for c, n in zip(examples.class_names, counts)},
        "left_out": [dict(e) for e in getattr(examples.ids, "left_out", ())],
    }


def load_metadata(path, ids) -> tuple[np.ndarray, dict]:
    """Subjects and subgroup columns from a metadata CSV (``file`` relative to the data root,
    optional ``subject``, any other categorical columns), aligned to the photos ``ids``.
    A row with more or fewer fields than the header, an empty subject, a photo named twice,
    a name that is not a photo, or a photo left out is one DataError naming the file (and
    the line)."""
    path = Path(path)
    header, rows = _read_csv(path)
    if "file" not in header:
        raise DataError(f"{path}: expected a header with a 'file' column (and optionally "
                        "'subject' and other columns) and one row per photo")
    by_file: dict = {}
    for line, row in rows:
        name = row["file"].strip()
        if name in by_file:
            raise DataError(f"{path}:{line}: {name!r} is named twice; one row per photo")
        if "subject" in row and not row["subject"].strip():
            raise DataError(f"{path}:{line}: no subject for {name!r}; give every photo a "
                            "subject id, or leave the subject column out (each photo is then "
                            "its own subject)")
        by_file[name] = row
    unknown = sorted(set(by_file) - set(ids))
    if unknown:
        raise DataError(f"{path}: {unknown[0]!r} is not a photo of the data folder "
                        f"({len(unknown)} such rows); names are relative to data.root")
    missing = [i for i in ids if i not in by_file]
    if missing:
        raise DataError(f"{path}: no row for photo {missing[0]!r} ({len(missing)} photos "
                        "left out); every photo needs a row")
    columns = [c for c in header if c not in ("file", "subject")]
    subjects = np.array([by_file[i].get("subject", i).strip() for i in ids], str)
    return subjects, {c: np.array([by_file[i][c] for i in ids], str) for c in columns}


def _read_csv(path: Path) -> tuple[list, list]:
    """The header and ``(line number, {column: value})`` of every non-empty row; a row
    whose field count differs from the header's is one DataError naming its line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for fields in reader:
                if not any(x.strip() for x in fields):
                    continue        # blank lines (a trailing newline, say)
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}:{reader.line_num}: {len(fields)} fields, but the header "
                        f"has {len(header)} ({', '.join(header)}); quote values that "
                        "hold commas")
                rows.append((reader.line_num, dict(zip(header, fields))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"config.data.metadata={path}: cannot read it ({e})") from e
    if len(set(header)) != len(header):
        raise DataError(f"{path}: a column is named twice in the header ({', '.join(header)})")
    return header, rows
