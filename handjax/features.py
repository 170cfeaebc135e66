"""What every fold shares, computed once per run: the photos and their folds, the image
views, and the outputs of the layers frozen in each phase.

Why the cache is exact: layers frozen in a phase hold the same (pretrained) values in every
fold, so their outputs are the same for every fold and epoch. Augmentation is applied to the
*images*, so it must happen before the frozen prefix: we precompute ``V`` views per image
(view 0 is the photo itself, views 1..V-1 are random ``data.augment`` draws) and each
training example draws one view per epoch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from handjax import backbones, console, data
from handjax.models import classifier


# --------------------------------------------------------------------------- photos
def load_examples(spec, seed: int, n_folds: int = data.N_FOLDS) -> data.Examples:
    """The configured photos: the user's folder if ``spec.root`` is set, else synthetic hands."""
    if spec.root:
        return data.load_folder(spec.root, image_size=spec.image_size,
                                on_error=spec.on_error,
                                class_map=dict(spec.class_map) if spec.class_map else None,
                                min_per_class=n_folds)
    return data.load_synthetic(n_per_class=spec.n_per_class, image_size=spec.image_size,
                               seed=seed)


def one_label_per_photo(examples: data.Examples, dup: np.ndarray | None,
                        on_error: str) -> tuple[data.Examples, np.ndarray | None]:
    """Refuse (``on_error="raise"``) or leave out with a line (``"skip"``) every group of
    identical or near-duplicate photos filed under more than one class, naming the files
    and their classes. Returns the examples and near-duplicate groups kept."""
    same = data.identical_groups(examples.images)
    conflicts = data.label_conflicts(data.merge_groups(same, dup), examples.labels)
    if not conflicts:
        return examples, dup
    names = examples.class_names
    listing = "; ".join(" = ".join(f"{examples.ids[i]} ({names[examples.labels[i]]})"
                                   for i in group) for group in conflicts)
    what = (f"the same photo under two classes ({len(conflicts)} case(s) of identical or "
            "near-duplicate copies)")
    if on_error != "skip":
        raise data.DataError(f"{what}: {listing}; keep each photo in one class folder, or "
                             "--config.data.on_error=skip leaves them out")
    console.say(f"left out {what}: {listing}")
    keep = np.setdiff1d(np.arange(len(examples.labels)), np.concatenate(conflicts))
    ids = type(examples.ids)(examples.ids[i] for i in keep)
    if hasattr(examples.ids, "source"):   # where the photos came from (data.describe)
        ids.source = examples.ids.source
    kept = data.Examples(examples.images[keep], examples.labels[keep], ids,
                         examples.class_names)
    return kept, None if dup is None else dup[keep]


def describe_data(examples: data.Examples, groups: np.ndarray | None) -> dict:
    """Source, size, class counts and near-duplicate groups, for the results header."""
    desc = dict(data.describe(examples))
    desc["class_names"] = list(examples.class_names)
    if groups is None:
        desc["duplicate_groups"] = None
    else:
        _, counts = np.unique(groups, return_counts=True)
        desc["duplicate_groups"] = int(np.sum(counts > 1))
    return desc


def augmented_views(images: np.ndarray, n_views: int, key) -> np.ndarray:
    """[V, N, H, W, 3] uint8: view 0 is the photo, views 1.. are ``data.augment`` draws."""
    views = [images]
    for v in range(1, n_views):
        views.append(np.asarray(data.augment(jax.random.fold_in(key, v), images)))
    return np.stack(views)


@dataclasses.dataclass(frozen=True)
class ProtocolData:
    """What every run of the protocol trains on: photos, subjects, splits, image views."""
    examples: data.Examples
    dup_groups: np.ndarray | None      # near-duplicate groups (None without dedup)
    subjects: np.ndarray
    metadata: dict                     # subgroup columns, one value per photo
    folds: list                        # [(train, test)] index arrays
    inner: list                        # per fold: inner validation photos (within train)
    views: np.ndarray                  # [V, N, H, W, 3] uint8


def protocol_data(spec, seed: int, n_folds: int, inner_val: float = 0.0) -> ProtocolData:
    """Photos, subjects and metadata, folds grouped by subject and near-duplicate group, the
    inner validation splits and the image views (``spec``: a DataSpec)."""
    from handjax import distributed   # processes may share $HANDJAX_CACHE: one writes it
    examples = distributed.primary_first(lambda: load_examples(spec, seed, n_folds))
    dup = data.duplicate_groups(examples.images) if spec.dedup else None
    examples, dup = one_label_per_photo(examples, dup, spec.on_error)
    if spec.metadata:
        subjects, metadata = data.load_metadata(spec.metadata, examples.ids)
    elif not spec.root:     # synthetic: two photos (left and right hand) per person
        subjects, metadata = data.synthetic_metadata(examples.ids, seed)
    else:                   # a folder without a CSV: each photo its own subject
        subjects, metadata = np.asarray(examples.ids, str), {}
    known = subjects if spec.metadata or not spec.root else None
    folds = data.folds(examples.labels, n_splits=n_folds, seed=seed, groups=dup,
                       subjects=known)
    inner = data.inner_splits(folds, np.asarray(examples.labels),
                              data.merge_groups(dup, subjects), inner_val, seed)
    views = augmented_views(examples.images, spec.views,
                            jax.random.fold_in(jax.random.key(seed), 2))
    return ProtocolData(examples, dup, subjects, metadata, folds, inner, views)


# --------------------------------------------------------------------------- batching
def even_batch(n: int, most: int) -> int:
    """The batch size <= ``most`` that covers ``n`` items in the fewest batches with the
    least padding (300 items, most 32: 10 batches of 30, not 10 of 32)."""
    return max(1, -(-n // -(-n // most))) if n else most


def map_batches(fn, flat: np.ndarray, batch: int, out_dtype=None, desc: str | None = None,
                out: np.ndarray | None = None):
    """``fn`` over ``flat`` in batches of one size (the last padded by repeating its final
    item, the padding dropped from the output): one shape, one compilation. With ``out``
    (e.g. a disk-backed ``np.memmap``) each batch is written into it as it comes."""
    if out is not None:
        for i, y in _batches(fn, flat, batch, desc):
            out[i:i + len(y)] = y
        return out
    return np.concatenate([y if out_dtype is None else y.astype(out_dtype)
                           for _, y in _batches(fn, flat, batch, desc)])


def _batches(fn, flat: np.ndarray, batch: int, desc: str | None):
    for i in tqdm(range(0, len(flat), batch), desc=desc, leave=False, disable=desc is None):
        chunk = flat[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        yield i, np.asarray(fn(chunk)[:n])


# --------------------------------------------------------------------------- frozen prefix
# On CPU the frozen prefix runs its stages with large maps one image at a time: up to the
# last boundary whose output still has this many pixels (VGG19 at 112 px: blocks 1-2, their
# 56x56-112x112 maps then stay in cache). Measured on VGG19's prefix, batch 10: 9-17% faster
# at 112 px, 18% at 224 px; ResNet50 ~5%, MobileNetV2 unchanged.
PER_IMAGE_MIN_PIXELS = 28 * 28


def per_image_boundary(backbone, variables, image_hw: tuple[int, int], split: str,
                       dtype) -> str | None:
    """The last stage boundary up to ``split`` whose output map has at least
    ``PER_IMAGE_MIN_PIXELS`` pixels (``None``: no such stage)."""
    x = jax.ShapeDtypeStruct((1, *image_hw, 3), dtype)
    stages = backbone.stages[:backbone.stages.index(split) + 1]
    start, found = None, None
    for stage in stages:   # one stage per trace: the whole prefix is traced once
        x = jax.eval_shape(lambda v, x, a=start, b=stage: backbone.apply(
            v, x, train=False, start=a, stop=b), variables, x)
        if x.shape[1] * x.shape[2] >= PER_IMAGE_MIN_PIXELS:
            found = stage
        start = stage
    return found


def frozen_forward(backbone, variables, name: str, images, split: str, dtype,
                   per_image: str | None = None):
    """The frozen prefix on RGB images [B, H, W, 3]: preprocessing, then the stages up to
    ``per_image`` one image at a time (``lax.map``), then the rest up to ``split`` on the
    whole batch. Same values as one pass (inference-mode layers work per image)."""
    x = backbones.preprocess(name, images).astype(dtype)
    if per_image is not None:
        x = jax.lax.map(lambda xi: backbone.apply(variables, xi[None], train=False,
                                                  stop=per_image)[0], x)
    return backbone.apply(variables, x, train=False, start=per_image, stop=split)


def frozen_features(backbone, variables, name: str, views: np.ndarray, split: str, *,
                    dtype, batch: int = 10, store_dtype=np.float32,
                    per_image: bool | None = None, spill=None) -> np.ndarray:
    """Output of the frozen prefix (up to ``split``) for every view and image, computed once.

    Batches have one size (at most ``batch``, the last one padded) so that the function
    compiles once; the size is chosen so that padding wastes the least. Inference-only, so
    the convs are chosen for the "frozen" purpose (``conv_impl="auto"`` in float32: Winograd
    on maps up to 28x28 on CPU, ``lax.conv`` elsewhere; see :mod:`handjax.models.convs`).
    ``per_image`` (default: on CPU) runs the large-map stages one image at a time (see
    ``PER_IMAGE_MIN_PIXELS``). ``spill``: a ``.npy`` path; the features are then written
    there batch by batch and returned as a read-only ``np.memmap`` (a cache larger than RAM).
    """
    flat = views.reshape((-1,) + views.shape[2:])
    batch = even_batch(len(flat), batch)
    backbone = backbones.for_purpose(backbone, "frozen")
    if per_image is None:
        per_image = jax.default_backend() == "cpu"
    cut = (per_image_boundary(backbone, variables, flat.shape[1:3], split, dtype)
           if per_image else None)
    # The weights are an argument, not a closed-over constant: XLA would fold ~80 MB of
    # constants into the executable (slower compile, huge persistent-cache entries).
    fn = jax.jit(lambda v, x: frozen_forward(backbone, v, name, x, split, dtype, cut))
    fn = functools.partial(fn, variables)
    out = None
    if spill is not None:
        shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((batch,) + flat.shape[1:], flat.dtype))
        out = np.lib.format.open_memmap(spill, mode="w+", dtype=store_dtype,
                                        shape=(len(flat),) + shape.shape[1:])
    feats = map_batches(fn, flat, batch, store_dtype, desc="frozen features", out=out)
    if out is not None:
        out.flush()
        del out
        feats = np.load(spill, mmap_mode="r")
    return feats.reshape(views.shape[:2] + feats.shape[1:])


def cache_nbytes(backbone, variables, name: str, views: np.ndarray, split: str, *, dtype,
                 store_dtype) -> int:
    """Bytes of :func:`frozen_features`'s output, from shapes alone (nothing runs)."""
    backbone = backbones.for_purpose(backbone, "frozen")
    x = jax.ShapeDtypeStruct((1,) + views.shape[2:], views.dtype)
    out = jax.eval_shape(lambda v, x: frozen_forward(backbone, v, name, x, split, dtype),
                         variables, x)
    return int(np.prod(views.shape[:2]) * np.prod(out.shape[1:]) * np.dtype(store_dtype).itemsize)


def spill_path(workdir, nbytes: int, budget_gb: float):
    """Where the frozen-feature cache goes: ``None`` (RAM) when it fits ``budget_gb``, else
    ``<workdir>/frozen_features.<process>.npy``."""
    if workdir is None or nbytes <= budget_gb * 2**30:
        return None
    from pathlib import Path
    return Path(workdir) / f"frozen_features.{jax.process_index()}.npy"


def pooled_features(model, params, stats, feats, batch: int = 64):
    """Pooled output of the (still frozen) top for every view: phase 1 trains heads on it."""
    variables = {"params": params, "batch_stats": stats}
    backbone = backbones.for_purpose(model.backbone, "frozen")

    def pooled(variables, x):
        out = backbone.apply(variables, x.astype(model.dtype), train=False, start=model.split)
        return jnp.mean(out.astype(jnp.float32), axis=(1, 2))

    fn = functools.partial(jax.jit(pooled), variables)   # weights as an argument, as above
    flat = feats.reshape((-1,) + feats.shape[2:])
    out = map_batches(fn, flat, even_batch(len(flat), batch))
    return out.reshape(feats.shape[:2] + out.shape[1:])


# --------------------------------------------------------------------------- preparation
@struct.dataclass
class Prepared:
    """Everything the fold program shares across folds, built once per run.

    ``inputs1``/``inputs2`` are the phase inputs [V, N, ...] shared by all folds: pooled
    features and the cached boundary features (cached mode), or the image views (plain).
    """

    examples: data.Examples = struct.field(pytree_node=False)
    folds: list = struct.field(pytree_node=False)
    data_desc: dict = struct.field(pytree_node=False)
    model: classifier.Classifier = struct.field(pytree_node=False)
    trainable: frozenset = struct.field(pytree_node=False)   # backbone layers of phase 2
    backbone_params: Any = struct.field(pytree_node=False)
    backbone_stats: Any = struct.field(pytree_node=False)
    inputs1: Any = struct.field(pytree_node=False)
    mode1: str = struct.field(pytree_node=False)
    inputs2: Any = struct.field(pytree_node=False)
    cache_bytes: int = struct.field(pytree_node=False)
    head_dim: int = struct.field(pytree_node=False)          # the head's input width
    subjects: Any = struct.field(pytree_node=False, default=None)
    metadata: dict = struct.field(pytree_node=False, default_factory=dict)
    inner: list = struct.field(pytree_node=False, default=None)  # per fold, inner val idx


def prepare(spec, workdir=None) -> Prepared:
    """Data, folds, backbone split and the shared (frozen-layer) inputs of both phases
    (``spec``: a RunSpec). A frozen-feature cache larger than ``train.cache_budget_gb``
    goes to a file in ``workdir`` (``inputs2`` is then an ``np.memmap``)."""
    pd = protocol_data(spec.data, spec.seed, spec.n_folds, spec.train.inner_val)
    examples, folds, views = pd.examples, pd.folds, pd.views
    backbone, variables, top, common = classifier.model_parts(
        spec.model, spec.data.image_size, spec.seed, len(examples.class_names),
        loss_name=spec.loss.name)
    name, dtype, split = spec.model.name, common["dtype"], common["split"]
    params, stats = variables["params"], variables.get("batch_stats", {})
    desc = describe_data(examples, pd.dup_groups)
    desc["n_subjects"] = len(np.unique(pd.subjects))
    shared = dict(subjects=pd.subjects, metadata=pd.metadata, inner=pd.inner)
    if spec.train.mode == "plain":
        model = classifier.Classifier(start=None, **common)
        dim = classifier.feature_dim(backbone, variables, spec.data.image_size, dtype)
        return Prepared(examples, folds, desc, model, frozenset(top), params, stats,
                        views, "frozen", views, 0, dim, **shared)
    store = np.float32 if spec.train.cache_dtype == "float32" else jnp.bfloat16
    nbytes = cache_nbytes(backbone, variables, name, views, split, dtype=dtype,
                          store_dtype=store)
    feats = frozen_features(backbone, variables, name, views, split, dtype=dtype,
                            store_dtype=store,
                            spill=spill_path(workdir, nbytes, spec.train.cache_budget_gb))
    model = classifier.Classifier(start=split, **common)
    params, stats = classifier.subtree(params, top), classifier.subtree(stats, top)
    pooled = pooled_features(model, params, stats, feats)
    return Prepared(examples, folds, desc, model, frozenset(top), params, stats,
                    pooled, "pooled", feats, int(feats.nbytes), pooled.shape[-1], **shared)
