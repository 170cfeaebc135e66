"""The study's protocol as one array program: K stratified folds, two-phase fine-tuning.

Data flow (see ARCHITECTURE.md)::

    images --(frozen prefix, once for all folds and views)--> cached features [V, N, h, w, c]
    phase 1: backbone frozen  -> pooled features [V, N, C], computed once; K heads trained (vmap)
    phase 2: top block(s) + head trained per fold on the cached features (vmap, or a loop)
    eval:    per-fold logits and pooled features -> metrics (argmax, min expected cost) + SVM

Why the cache is exact: layers frozen in a phase hold the same (pretrained) values in every
fold, so their outputs are the same for every fold and epoch. Augmentation is applied to the
*images*, so it must happen before the frozen prefix: we precompute ``V`` views per image
(view 0 is the photo itself, views 1..V-1 are random ``data.augment`` draws) and each training
example draws one view per epoch. ``config.train.mode = "plain"`` turns the cache off and
recomputes the frozen base at every step, the way the study's Keras code ran (folds one
after another, one jitted step per batch from Python); it trains on the same views and
batches, so both modes give the same results (a test checks it).

The fold axis is the leading axis of every per-fold array. Folds have unequal sizes: batches
are padded by wrapping round the fold's own examples and the padding is masked out of every
sum. ``config.train.fold_map`` picks ``vmap`` (dense heads, matmul-form convs, GPU) or an
unrolled loop (``lax.conv`` layers on XLA:CPU, where vmap over fold parameters measured ~7x
slower than a loop); with several devices the fold axis is sharded across them.
"""
from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct
from tqdm.auto import tqdm

from handjax import backbones, data, losses, metrics, probe

DECISIONS = ("cnn", "cnn_mec", "svm")
METRIC_KEYS = ("accuracy", "custom_multi", "custom_plus", "custom_precision")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent checkpoint, ...)."""


# --------------------------------------------------------------------------- model
class Head(nn.Module):
    """The study's head: Dense(hidden) -> ReLU -> Dropout -> Dense(num_classes)."""

    hidden: int = 256
    dropout: float = 0.5
    num_classes: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled, train: bool = False):
        x = nn.Dense(self.hidden, dtype=self.dtype, name="head_dense")(pooled)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train, name="head_dropout")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head_logits")(x)
        return x.astype(jnp.float32)


class Classifier(nn.Module):
    """Backbone (from ``start``) -> global average pooling -> ``Head``.

    ``start`` is the stage boundary whose output the classifier receives; ``None`` means raw
    RGB images in [0, 255], in which case the frozen prefix up to ``split`` is recomputed on
    every call under ``stop_gradient`` (the plain path). ``mode`` selects what trains:
    ``"pooled"``: ``x`` is already pooled features, only the head runs; ``"frozen"``: the
    backbone runs in inference mode without gradient; ``"tune"``: layers after ``split`` run
    in the given ``train`` mode and receive gradients. Returns ``(logits, pooled)``.
    """

    backbone: nn.Module
    backbone_name: str
    split: str
    start: str | None = None
    hidden: int = 256
    dropout: float = 0.5
    num_classes: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, mode: str = "tune"):
        if mode == "pooled":
            pooled = x.astype(jnp.float32)
        else:
            if self.start is None:
                x = backbones.preprocess(self.backbone_name, x).astype(self.dtype)
                x = jax.lax.stop_gradient(self.backbone(x, train=False, stop=self.split))
            feats = self.backbone(x.astype(self.dtype), train=train and mode == "tune",
                                  start=self.split)
            pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
            if mode == "frozen":
                pooled = jax.lax.stop_gradient(pooled)
        head = Head(self.hidden, self.dropout, self.num_classes, self.dtype, name="head")
        return head(pooled, train=train), pooled


# --------------------------------------------------------------------------- state
class FoldState(struct.PyTreeNode):
    """One fold's training state; stacked along a leading fold axis for K folds.

    ``model`` and ``mode`` say how the step runs the ``Classifier`` (see its docstring);
    ``tx`` and ``loss_fn`` are the phase's optimiser and optax-shaped per-example loss.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    model: nn.Module = struct.field(pytree_node=False)
    mode: str = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss_fn: Callable = struct.field(pytree_node=False)


def param_labels(params, trainable_layers) -> Any:
    """'train' / 'freeze' label per leaf: the head always trains, backbone layers if listed."""
    backbone = {layer: jax.tree.map(lambda _, l=layer: "train" if l in trainable_layers
                                    else "freeze", sub)
                for layer, sub in params.get("backbone", {}).items()}
    head = jax.tree.map(lambda _: "train", params["head"])
    return {"backbone": backbone, "head": head}


def make_tx(params, lr: float, trainable_layers) -> optax.GradientTransformation:
    """Adam on the trainable leaves, ``set_to_zero`` on the frozen ones."""
    return optax.multi_transform({"train": optax.adam(lr), "freeze": optax.set_to_zero()},
                                 param_labels(params, trainable_layers))


def create_state(params, batch_stats, *, model, mode, tx, loss_fn) -> FoldState:
    """A fresh fold state (one fold; vmap it for K)."""
    return FoldState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params), model=model, mode=mode, tx=tx,
                     loss_fn=loss_fn)


def train_step(state: FoldState, batch: dict, key: jax.Array):
    """One optimiser step on a masked batch ``{"x", "y", "mask"}``; returns (state, sums).

    Padding examples (mask 0) count in no sum; the loss is the masked mean.
    """
    mask = batch["mask"].astype(jnp.float32)

    def objective(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        (logits, _), updates = state.model.apply(
            variables, batch["x"], train=True, mode=state.mode, rngs={"dropout": key},
            mutable=["batch_stats"])
        per_example = state.loss_fn(logits, batch["y"])
        loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)
    sums = {"loss": loss * jnp.sum(mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask), "finite": jnp.isfinite(loss)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, sums


def eval_step(state: FoldState, x: jax.Array, mode: str):
    """``(logits, pooled)`` of one fold's model on a batch, in inference mode (its convs
    chosen for the "eval_folds" purpose, see :mod:`handjax.models.convs`)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    model = state.model
    model = model.clone(backbone=backbones.for_purpose(model.backbone, "eval_folds"))
    return model.apply(variables, x, train=False, mode=mode)


# --------------------------------------------------------------------------- fold mapping
def fold_mapper(kind: str) -> Callable:
    """``f(fn, xs)`` mapping ``fn`` over the leading fold axis of the pytree ``xs``."""
    if kind == "vmap":
        return lambda fn, xs: jax.vmap(fn)(xs)
    if kind == "map":
        return lambda fn, xs: jax.lax.map(fn, xs)
    if kind == "loop":  # unrolled Python loop inside the trace: a reference for the bench
        def loop(fn, xs):
            k = jax.tree.leaves(xs)[0].shape[0]
            outs = [fn(jax.tree.map(lambda a, i=i: a[i], xs)) for i in range(k)]
            return jax.tree.map(lambda *a: jnp.stack(a), *outs)
        return loop
    raise ValueError(f"config.train.fold_map={kind!r}: expected 'auto', 'vmap', 'map' or 'loop'")


def resolve_fold_map(kind: str, lax_conv: bool) -> str:
    """'auto': vmap, except on XLA:CPU when the trained layers run ``lax.conv`` (``lax_conv``):
    vmap over fold parameters turns those into grouped convolutions, ~7x slower there than
    an unrolled loop over folds. Dense heads and matmul-form convs (im2col, CPU's default
    for VGG's top block) vmap into batched matmuls: ``python -m handjax.bench folds``,
    VGG19 112 px, phase-2 epoch: vmap 8.0 s, loop 8.3 s, lax.map 8.8 s, and vmap compiles
    in 1.6 s against 5.2 s for the loop."""
    if kind != "auto":
        return kind
    if lax_conv and jax.default_backend() == "cpu":
        return "loop"
    return "vmap"


def resolve_eval_fold_map(kind: str, train_map: str) -> str:
    """The fold mapping of programs that run trained backbone layers forward only (phase-2
    validation, the final outputs): "auto" on XLA:CPU maps the folds one after another
    (``lax.map``) where training vmaps them. Forward only, per-fold matmuls ran faster one
    fold at a time than batched over folds: VGG19 112 px, outputs of 5 folds x 150 images,
    2.5-2.8 s against 3.4-3.7 s. Otherwise the training mapping."""
    if kind == "auto" and train_map == "vmap" and jax.default_backend() == "cpu":
        return "map"
    return train_map


def trains_lax_conv(states: FoldState, prep: "Prepared") -> bool:
    """Whether phase 2's trained layers (from the model's ``start``) run ``lax.conv``:
    traced on shapes only, nothing runs."""
    del states  # the layers and their convs follow from the model and the input shape
    model = prep.model
    x = jax.ShapeDtypeStruct((1,) + prep.inputs2.shape[2:], model.dtype)
    algorithms = backbones.conv_algorithms(model.backbone, x, start=model.start)
    return any(map(backbones.runs_lax_conv, algorithms.values()))


def _fold_keys(key, n_steps: int, n_folds: int):
    """Per (step, fold) dropout keys: fold_in(fold_in(key, step), fold)."""
    steps = jnp.arange(n_steps)
    folds = jnp.arange(n_folds)
    per_step = jax.vmap(lambda s: jax.random.fold_in(key, s))(steps)
    return jax.vmap(lambda k: jax.vmap(lambda f: jax.random.fold_in(k, f))(folds))(per_step)


def epoch_fn(states, inputs, labels, batches, key, *, fold_map: str, mesh=None):
    """One epoch for all folds: ``lax.scan`` over steps, ``fold_map`` over folds.

    ``inputs`` [V, N, ...] are shared by all folds; ``batches`` holds ``idx``, ``view`` and
    ``mask`` of shape [steps, K, B]. Returns the new states and per-step sums [steps, K].
    With a ``mesh`` (axis "fold"), each device runs its share of the folds.
    """
    n_steps, n_folds = batches["idx"].shape[:2]
    keys = _fold_keys(key, n_steps, n_folds)
    scan = functools.partial(_epoch_scan, fold_map=fold_map)
    if mesh is not None:
        from jax.sharding import PartitionSpec as P
        fold, step_fold = P("fold"), P(None, "fold")
        scan = jax.shard_map(scan, mesh=mesh, in_specs=(fold, P(), P(), step_fold, step_fold),
                             out_specs=(fold, step_fold), check_vma=False)
    return scan(states, inputs, labels, batches, keys)


def _epoch_scan(states, inputs, labels, batches, keys, *, fold_map: str):
    mapper = fold_mapper(fold_map)

    def per_fold(args):
        state, b, k = args
        batch = {"x": inputs[b["view"], b["idx"]], "y": labels[b["idx"]], "mask": b["mask"]}
        return train_step(state, batch, k)

    def one_step(states, xs):
        b, k = xs
        return mapper(per_fold, (states, b, k))

    return jax.lax.scan(one_step, states, (batches, keys))


def _plain_batch_step(state, inputs, labels, b, key):
    batch = {"x": inputs[b["view"], b["idx"]], "y": labels[b["idx"]], "mask": b["mask"]}
    return train_step(state, batch, key)


def plain_epoch(compiled_step):
    """An ``epoch_fn``-shaped callable that runs the folds one after another and the steps
    one at a time from Python, each a call of one jitted ``train_step``: how the study's
    Keras ``fit`` loop ran. Same batches and dropout keys as ``epoch_fn``, so same results."""
    def run(states, inputs, labels, batches, key):
        n_steps, n_folds = batches["idx"].shape[:2]
        keys = _fold_keys(key, n_steps, n_folds)
        folds, sums = [], []
        for f in range(n_folds):
            state, fold_sums = jax.tree.map(lambda a, f=f: a[f], states), []
            for s in range(n_steps):
                b = jax.tree.map(lambda a, s=s, f=f: a[s, f], batches)
                state, out = compiled_step(state, inputs, labels, b, keys[s, f])
                fold_sums.append(out)
            folds.append(state)
            sums.append(jax.tree.map(lambda *a: jnp.stack(a), *fold_sums))
        stack = lambda axis: lambda *a: jnp.stack(a, axis)  # noqa: E731
        return jax.tree.map(stack(0), *folds), jax.tree.map(stack(1), *sums)
    return run


def fold_mesh(n_folds: int, enabled: bool):
    """A 1-D device mesh over the fold axis when several devices can split the folds evenly."""
    devices = jax.devices()
    if not enabled or len(devices) < 2:
        return None
    if n_folds % len(devices):
        logging.warning("%d folds do not split evenly over %d devices: not sharding",
                        n_folds, len(devices))
        return None
    return jax.sharding.Mesh(np.array(devices), ("fold",))


def eval_fn(states, inputs, idx, *, mode: str, fold_map: str):
    """Per-fold ``(logits, pooled)`` on ``inputs[idx[k]]`` (``idx`` [K, M]), inference mode."""
    return fold_mapper(fold_map)(lambda a: eval_step(a[0], inputs[a[1]], mode), (states, idx))


EVAL_CHUNK = 64   # at most this many examples per fold go through the model at once


def eval_width(test_sets) -> int:
    """Examples per fold per evaluation call: the test sets in the fewest calls of at most
    ``EVAL_CHUNK``. Validation (test sets) and the final outputs (every image) then run one
    compiled shape, and memory stays bounded for large sets."""
    return even_batch(max(len(s) for s in test_sets), EVAL_CHUNK)


def eval_columns(states, inputs, idx, *, mode: str, fold_map: str, width: int):
    """:func:`eval_fn` over ``idx`` [K, M] in column chunks of ``width`` (the last one
    filled up by wrapping round, the filler dropped): one compilation per ``width``."""
    fn = _eval_jit(mode, fold_map)
    m = idx.shape[1]
    n_chunks = max(1, math.ceil(m / width))
    idx = np.take(np.asarray(idx), np.arange(n_chunks * width) % m, axis=1)
    outs = [fn(states, inputs, jnp.asarray(idx[:, c * width:(c + 1) * width]))
            for c in range(n_chunks)]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1)[:, :m], *outs)


# --------------------------------------------------------------------------- batches
def pad_indices(index_sets, length: int):
    """Stack unequal index sets to [K, length] by wrapping round; mask marks the real ones."""
    idx = np.stack([np.resize(np.asarray(s), length) for s in index_sets]).astype(np.int32)
    mask = np.stack([np.arange(length) < len(s) for s in index_sets])
    return idx, mask


def epoch_batches(train_sets, *, batch_size: int, n_views: int, seed: int, phase: int,
                  epoch: int):
    """Shuffled, padded batches for one epoch: ``idx``, ``view``, ``mask`` [steps, K, B].

    Deterministic in (seed, phase, epoch, fold), so a resumed run sees the same batches.
    """
    longest = max(len(s) for s in train_sets)
    n_steps = max(1, math.ceil(longest / batch_size))
    length = n_steps * batch_size
    idx, mask, views = [], [], []
    for k, s in enumerate(train_sets):
        rng = np.random.default_rng([seed, phase, epoch, k])
        perm = rng.permutation(np.asarray(s))
        idx.append(np.resize(perm, length))
        mask.append(np.arange(length) < len(s))
        views.append(rng.integers(0, n_views, size=length))
    shape = (len(train_sets), n_steps, batch_size)

    def arrange(a, dtype):
        return np.asarray(a, dtype).reshape(shape).transpose(1, 0, 2)

    return {"idx": arrange(idx, np.int32), "view": arrange(views, np.int32),
            "mask": arrange(mask, np.float32)}


# --------------------------------------------------------------------------- setup
def load_examples(config) -> data.Examples:
    """The configured data: the user's folder if ``data.root`` is set, else synthetic hands."""
    d = config.data
    if d.root:
        class_map = parse_class_map(d.class_map) if d.class_map else None
        return data.load_folder(d.root, image_size=d.image_size, on_error=d.on_error,
                                class_map=class_map)
    return data.load_synthetic(n_per_class=d.n_per_class, image_size=d.image_size,
                               seed=config.seed)


def parse_class_map(text: str) -> dict[str, str]:
    """``"folderA:normal,folderB:ra"`` -> ``{"folderA": "normal", "folderB": "ra"}``."""
    pairs = [p.split(":", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise data.DataError(f"config.data.class_map={text!r}: expected 'folder:class,...' "
                             f"with class one of {', '.join(data.CLASSES)}")
    return {k.strip(): v.strip() for k, v in pairs}


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


def make_loss(config) -> Callable:
    """The configured optax-shaped per-example loss."""
    kwargs = {}
    if config.loss.name == "severity":
        kwargs["ce_weight"] = float(config.loss.ce_weight)
    return losses.get(config.loss.name, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def probabilities(loss_name: str, logits):
    """Class probabilities from logits: softmax, or normalised sigmoids for binary CE."""
    if loss_name == "binary":
        p = jax.nn.sigmoid(logits)
        return p / jnp.sum(p, axis=-1, keepdims=True)
    return jax.nn.softmax(logits, axis=-1)


def augmented_views(images: np.ndarray, n_views: int, key) -> np.ndarray:
    """[V, N, H, W, 3] uint8: view 0 is the photo, views 1.. are ``data.augment`` draws."""
    views = [images]
    for v in range(1, n_views):
        views.append(np.asarray(data.augment(jax.random.fold_in(key, v), images)))
    return np.stack(views)


def even_batch(n: int, most: int) -> int:
    """The batch size <= ``most`` that covers ``n`` items in the fewest batches with the
    least padding (300 items, most 32: 10 batches of 30, not 10 of 32)."""
    return max(1, -(-n // -(-n // most))) if n else most


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
                    per_image: bool | None = None) -> np.ndarray:
    """Output of the frozen prefix (up to ``split``) for every view and image, computed once.

    Batches have one size (at most ``batch``, the last one padded) so that the function
    compiles once; the size is chosen so that padding wastes the least. Inference-only, so
    the convs are chosen for the "frozen" purpose (``conv_impl="auto"`` in float32: Winograd
    on maps up to 28x28 on CPU, ``lax.conv`` elsewhere; see :mod:`handjax.models.convs`). ``per_image`` (default: on CPU) runs the
    large-map stages one image at a time (see ``PER_IMAGE_MIN_PIXELS``).
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
    feats = _map_batches(functools.partial(fn, variables), flat, batch, store_dtype,
                         desc="frozen features")
    return feats.reshape(views.shape[:2] + feats.shape[1:])


def _map_batches(fn, flat: np.ndarray, batch: int, out_dtype=None, desc: str | None = None):
    """``fn`` over ``flat`` in batches of one size (the last padded by repeating its final
    item, the padding dropped from the output): one shape, one compilation."""
    out = []
    for i in tqdm(range(0, len(flat), batch), desc=desc, leave=False, disable=desc is None):
        chunk = flat[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        y = np.asarray(fn(chunk)[:n])
        out.append(y if out_dtype is None else y.astype(out_dtype))
    return np.concatenate(out)


def top_layers(backbone, split: str, boundary_shape) -> set[str]:
    """Names of the layers after ``split``: the parameter subtree an init from there makes."""
    shapes = jax.eval_shape(
        lambda: backbone.init(jax.random.key(0), jnp.zeros(boundary_shape), start=split))
    return set(shapes.get("params", {})) | set(shapes.get("batch_stats", {}))


def _subtree(tree: dict, keys) -> dict:
    return {k: v for k, v in tree.items() if k in keys}


def _stack(tree, n: int):
    """Repeat a pytree along a new leading fold axis (a real copy: states are donated)."""
    return jax.tree.map(lambda a: jnp.array(jnp.broadcast_to(a, (n,) + a.shape)), tree)


# --------------------------------------------------------------------------- preparation
@struct.dataclass
class Prepared:
    """Everything the fold program shares across folds, built once per run."""

    examples: data.Examples = struct.field(pytree_node=False)
    folds: list = struct.field(pytree_node=False)
    data_desc: dict = struct.field(pytree_node=False)
    model: Classifier = struct.field(pytree_node=False)
    trainable: frozenset = struct.field(pytree_node=False)   # backbone layers of phase 2
    backbone_params: Any = struct.field(pytree_node=False)
    backbone_stats: Any = struct.field(pytree_node=False)
    inputs1: Any = struct.field(pytree_node=False)           # [V, N, ...] phase-1 inputs
    mode1: str = struct.field(pytree_node=False)
    inputs2: Any = struct.field(pytree_node=False)           # [V, N, ...] phase-2 inputs
    cache_bytes: int = struct.field(pytree_node=False)


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def protocol_data(config):
    """The configured examples, their near-duplicate groups (``None`` without dedup), the
    folds and the image views [V, N, H, W, 3]: what every run of the protocol trains on."""
    examples = load_examples(config)
    groups = data.duplicate_groups(examples.images) if config.data.dedup else None
    folds = data.folds(examples.labels, n_splits=config.n_folds, seed=config.seed, groups=groups)
    views = augmented_views(examples.images, config.data.views,
                            jax.random.fold_in(jax.random.key(config.seed), 2))
    return examples, groups, folds, views


def prepare(config) -> Prepared:
    """Data, folds, backbone split and the shared (frozen-layer) inputs of both phases."""
    examples, groups, folds, views = protocol_data(config)
    backbone, variables, top, common = model_parts(config, len(examples.class_names))
    name, dtype, split = config.model.name, common["dtype"], common["split"]
    params, stats = variables["params"], variables.get("batch_stats", {})
    desc = describe_data(examples, groups)
    if config.train.mode == "plain":
        model = Classifier(start=None, **common)
        return Prepared(examples, folds, desc, model, frozenset(top), params, stats,
                        views, "frozen", views, 0)
    if config.train.mode != "cached":
        raise ValueError(f"config.train.mode={config.train.mode!r}: expected 'cached' or 'plain'")
    store = np.float32 if config.train.cache_dtype == "float32" else jnp.bfloat16
    feats = frozen_features(backbone, variables, name, views, split, dtype=dtype,
                            store_dtype=store)
    model = Classifier(start=split, **common)
    params, stats = _subtree(params, top), _subtree(stats, top)
    pooled = _pooled_features(model, params, stats, feats)
    return Prepared(examples, folds, desc, model, frozenset(top), params, stats,
                    pooled, "pooled", feats, int(feats.nbytes))


def model_parts(config, num_classes: int):
    """Backbone, its variables, the layer names after the split, and the ``Classifier``
    fields shared by training (``prepare``) and inference (``load_run``)."""
    name, dtype = config.model.name, _dtype(config.model.dtype)
    backbone, variables = load_backbone(config)
    split = config.model.split or backbones.DEFAULT_TRAINABLE_FROM[name]
    if split not in backbone.stages:
        raise ValueError(f"config.model.split={split!r} is not a stage of {name}; "
                         f"choose one of {', '.join(backbone.stages)}")
    size = int(config.data.image_size)
    shape = _boundary_shape(backbone, variables, name, np.zeros((1, size, size, 3)), split,
                            dtype)
    common = dict(backbone=backbone, backbone_name=name, split=split,
                  hidden=config.head.hidden, dropout=config.head.dropout,
                  num_classes=num_classes, dtype=dtype)
    return backbone, variables, top_layers(backbone, split, shape), common


def load_backbone(config):
    """The configured backbone and its weights; offline ImageNet gets a way out."""
    try:
        return backbones.load(config.model.name, _weights(config), seed=config.seed,
                              dtype=_dtype(config.model.dtype),
                              conv_impl=config.model.conv_impl)
    except backbones.WeightsError as e:
        raise backbones.WeightsError(
            f"{e} -- or train from random weights: --config.model.weights=none") from e


def _weights(config):
    w = config.model.weights
    return None if w in ("none", "", None) else w


def _boundary_shape(backbone, variables, name, image, split, dtype):
    return jax.eval_shape(
        lambda: frozen_forward(backbone, variables, name, image, split, dtype)).shape


def _pooled_features(model, params, stats, feats, batch: int = 64):
    """Pooled output of the (still frozen) top for every view: phase 1 trains heads on it."""
    variables = {"params": params, "batch_stats": stats}
    backbone = backbones.for_purpose(model.backbone, "frozen")

    def pooled(variables, x):
        out = backbone.apply(variables, x.astype(model.dtype), train=False, start=model.split)
        return jnp.mean(out.astype(jnp.float32), axis=(1, 2))

    fn = functools.partial(jax.jit(pooled), variables)   # weights as an argument, as above
    flat = feats.reshape((-1,) + feats.shape[2:])
    out = _map_batches(fn, flat, even_batch(len(flat), batch))
    return out.reshape(feats.shape[:2] + out.shape[1:])


# --------------------------------------------------------------------------- fitting
def initial_states(prep: Prepared, config) -> FoldState:
    """K phase-1 states: shared backbone values, a differently seeded head per fold."""
    k = config.n_folds
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1), k)
    dim = (prep.inputs1.shape[-1] if prep.mode1 == "pooled" or prep.inputs2 is None
           else _pooled_dim(prep))

    def head(key):
        return prep.model.init(key, jnp.zeros((1, dim)), mode="pooled")["params"]["head"]

    one = {"backbone": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                    prep.backbone_params),
           "head": jax.eval_shape(head, keys[0])}
    tx = make_tx(one, config.train.lr1, trainable_layers=())
    loss_fn = make_loss(config)

    def fold_state(key, backbone_params, backbone_stats):
        return create_state({"backbone": backbone_params, "head": head(key)},
                            {"backbone": backbone_stats}, model=prep.model, mode=prep.mode1,
                            tx=tx, loss_fn=loss_fn)
    # One compiled program (heads, the backbone values broadcast to K real copies, the
    # optimiser states) instead of one compilation per eager op.
    return jax.jit(jax.vmap(fold_state, in_axes=(0, None, None)))(
        keys, prep.backbone_params, prep.backbone_stats)


def _pooled_dim(prep: Prepared) -> int:
    """Channels of the backbone's final feature map (the head's input width)."""
    variables = {"params": prep.backbone_params, "batch_stats": prep.backbone_stats}
    return _feature_dim(prep.model.backbone, variables, prep.inputs2.shape[2],
                        prep.model.dtype)


def _feature_dim(backbone, variables, image_size: int, dtype) -> int:
    x = jnp.zeros((1, image_size, image_size, 3), dtype)
    return jax.eval_shape(lambda: backbone.apply(variables, x, train=False)).shape[-1]


def to_phase2(states: FoldState, prep: Prepared, config) -> FoldState:
    """Unfreeze the top block(s): a fresh Adam at the lower rate, as Keras's recompile does."""
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), states.params)
    tx = make_tx(one, config.train.lr2, trainable_layers=prep.trainable)
    return jax.jit(jax.vmap(lambda st: create_state(st.params, st.batch_stats, model=prep.model,
                                                    mode="tune", tx=tx, loss_fn=st.loss_fn)))(states)


def schedule(config) -> list[tuple[int, int]]:
    """(phase, epoch) in training order; the checkpoint step counts finished entries."""
    return ([(1, e) for e in range(config.train.epochs1)]
            + [(2, e) for e in range(config.train.epochs2)])


def _check_finite(sums, phase: int, epoch: int, steps_per_epoch: int):
    finite = np.asarray(sums["finite"])           # [steps, K]
    if finite.all():
        return
    step, fold = map(int, np.argwhere(~finite)[0])
    raise TrainingError(
        f"non-finite loss in fold {fold}, phase {phase}, epoch {epoch}, step "
        f"{epoch * steps_per_epoch + step}: lower the learning rate (config.train.lr{phase}) "
        "or check the input data")


def fit(prep: Prepared, config, workdir: Path, timing: dict, manager):
    """Train all folds through both phases, checkpointing (and resuming) at epoch ends: the
    last one, and any that ends ``config.train.checkpoint_secs`` after the previous save.
    The caller owns ``manager`` (``checkpoint.manager(workdir)``) and closes it, which waits
    for the last checkpoint: that one is written in the background.

    Returns ``(states, outputs)``: ``outputs`` is :func:`fold_outputs` of the final states
    when the last epoch ran here in phase 2 (its validation reads the test splits off them
    instead of running the same examples twice), else ``None``."""
    from handjax import checkpoint  # local: orbax import is slow and only needed here
    labels = jnp.asarray(prep.examples.labels)
    train_sets = [tr for tr, _ in prep.folds]
    test_idx, test_mask = pad_indices([te for _, te in prep.folds],
                                      max(len(te) for _, te in prep.folds))
    sched = schedule(config)
    states = initial_states(prep, config)
    done = checkpoint.latest(manager)
    if done > len(sched):
        raise TrainingError(f"{workdir}: checkpoint is past this config's schedule; "
                            "use a fresh --workdir")
    if done:
        if sched[done - 1][0] == 2:
            states = to_phase2(states, prep, config)
        states = restore_states(manager, done, states, final=done == len(sched))
        logging.info("resumed after %d of %d epochs", done, len(sched))
    log = MetricsLog(workdir / "metrics.jsonl", keep=sched[:done])
    mesh = fold_mesh(config.n_folds, config.train.shard_folds)
    compiled, bar, key = {}, None, jax.random.fold_in(jax.random.key(config.seed), 3)
    outputs = None
    every, last_save = float(config.train.checkpoint_secs), time.perf_counter()
    lax_conv = trains_lax_conv(states, prep)
    for g, (phase, epoch) in enumerate(sched):
        if g < done:
            continue
        if phase == 2 and states.mode != "tune":
            states = to_phase2(states, prep, config)
        inputs = prep.inputs1 if phase == 1 else prep.inputs2
        batches = epoch_batches(train_sets, batch_size=config.train.batch_size,
                                n_views=inputs.shape[0], seed=config.seed, phase=phase,
                                epoch=epoch)
        fmap = resolve_fold_map(config.train.fold_map,
                                (phase == 2 or prep.mode1 != "pooled") and lax_conv)
        # Evaluation (forward only) of the phase-2 models may map folds differently.
        emap = fmap if phase == 1 else resolve_eval_fold_map(config.train.fold_map, fmap)
        epoch_key = jax.random.fold_in(jax.random.fold_in(key, phase), epoch)
        if phase not in compiled:
            if bar is not None:
                bar.close()
            bar = tqdm(total=_phase_steps(config, phase) * config.n_folds
                       * batches["idx"].shape[0], desc=f"phase {phase}", unit="step")
            if config.train.mode == "plain":  # Keras-style: one jitted step per call
                one = jax.tree.map(lambda a: a[0], states)
                b0 = jax.tree.map(lambda a: a[0, 0], batches)
                compiled[phase] = plain_epoch(_compile(
                    _plain_batch_step, timing, f"phase{phase}", one, inputs, labels, b0,
                    epoch_key))
            else:
                compiled[phase] = _compile(
                    functools.partial(epoch_fn, fold_map=fmap, mesh=mesh), timing,
                    f"phase{phase}", states, inputs, labels, batches, epoch_key)
        t = time.perf_counter()
        states, sums = compiled[phase](states, inputs, labels, batches, epoch_key)
        _check_finite(sums, phase, epoch, batches["idx"].shape[0])
        last = g + 1 == len(sched)
        if last and phase == 2:
            outputs = fold_outputs(states, prep, config, emap)
            test_logits = np.take_along_axis(outputs[0], test_idx[..., None], axis=1)
            val = split_scores(states.loss_fn, jnp.asarray(test_logits), prep, test_idx,
                              test_mask)
        else:
            val = validate(states, prep, inputs, test_idx, test_mask, phase, emap)
        timing["run_s"] = timing.get("run_s", 0.0) + time.perf_counter() - t
        log.write_epoch(phase, epoch, states.step, sums, val)
        bar.update(config.n_folds * batches["idx"].shape[0])
        bar.set_postfix(loss=f"{float(np.sum(sums['loss']) / np.sum(sums['count'])):.4f}")
        # The last epoch always; others once checkpoint_secs have passed since the last save
        # (saving 5 folds' Adam states every short epoch cost more than the epoch itself).
        if last or time.perf_counter() - last_save >= every:
            # The last save finishes in the background (nothing is donated after it) and
            # leaves out the optimiser state (see saved_states).
            checkpoint.save(manager, g + 1, saved_states(states, final=last), wait=not last)
            last_save = time.perf_counter()
    if bar is not None:
        bar.close()
    return states, outputs


def saved_states(states: FoldState, final: bool) -> FoldState:
    """What a checkpoint holds: the whole state, or after the last epoch (nothing left to
    train) all but the optimiser state: Adam's two moments would make it 3x larger (VGG19's
    top block, 5 folds: 565 MB instead of 189 MB) and cost ~1 s more to write."""
    return states.replace(opt_state=None) if final else states


def restore_states(manager, step: int, like: FoldState, final: bool) -> FoldState:
    """Checkpoint ``step`` restored into the structure of ``like``; a final one without an
    optimiser state keeps ``like``'s (fresh) one. Final checkpoints written whole (by older
    versions) restore whole."""
    from handjax import checkpoint
    light = saved_states(like, final=True)
    if final and checkpoint.n_arrays(manager, step) == len(jax.tree.leaves(light)):
        return checkpoint.restore(manager, step, light).replace(opt_state=like.opt_state)
    return checkpoint.restore(manager, step, like)


def _phase_steps(config, phase: int) -> int:
    return config.train.epochs1 if phase == 1 else config.train.epochs2


def _compile(fn, timing: dict, label: str, *args):
    """Ahead-of-time compile (donating the states), timing compile apart from running."""
    t = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=0).lower(*args).compile()
    timing[f"compile_{label}_s"] = time.perf_counter() - t
    return compiled


def validate(states, prep: Prepared, inputs, test_idx, test_mask, phase: int, fmap: str):
    """Per-fold loss and accuracy on each fold's test split (view 0, inference mode)."""
    mode = prep.mode1 if phase == 1 else "tune"
    logits, _ = eval_columns(states, inputs[0], test_idx, mode=mode, fold_map=fmap,
                             width=eval_width([te for _, te in prep.folds]))
    return split_scores(states.loss_fn, logits, prep, test_idx, test_mask)


def split_scores(loss_fn, logits, prep: Prepared, test_idx, test_mask) -> dict:
    """Masked per-fold loss and accuracy of test-split logits [K, M, C]."""
    y = jnp.asarray(prep.examples.labels[test_idx])
    loss, acc = _masked_loss_and_accuracy(loss_fn, logits, y,
                                          jnp.asarray(test_mask, jnp.float32))
    return {"val_loss": np.asarray(loss), "val_accuracy": np.asarray(acc)}


@functools.partial(jax.jit, static_argnums=0)
def _masked_loss_and_accuracy(loss_fn, logits, y, mask):
    """Per-fold masked mean loss and accuracy of logits [K, M, C] against labels [K, M]."""
    n = jnp.maximum(mask.sum(1), 1.0)
    per_ex = jax.vmap(loss_fn)(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return (per_ex * mask).sum(1) / n, (correct * mask).sum(1) / n


@functools.lru_cache(maxsize=None)
def _eval_jit(mode: str, fmap: str):
    return jax.jit(functools.partial(eval_fn, mode=mode, fold_map=fmap))


class MetricsLog:
    """``metrics.jsonl``: one line per fold, phase and epoch; on resume, keeps what is done."""

    def __init__(self, path: Path, keep):
        self.path = path
        keep = set(keep)
        lines = []
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if (rec["phase"], rec["epoch"]) in keep:
                    lines.append(line)
        path.write_text("".join(l + "\n" for l in lines))

    def write_epoch(self, phase, epoch, steps, sums, val):
        count = np.maximum(np.asarray(sums["count"]).sum(0), 1.0)
        loss = np.asarray(sums["loss"]).sum(0) / count
        acc = np.asarray(sums["correct"]).sum(0) / count
        with self.path.open("a") as f:
            for k in range(len(loss)):
                rec = {"fold": k, "phase": phase, "epoch": epoch, "step": int(steps[k]),
                       "loss": float(loss[k]), "accuracy": float(acc[k]),
                       "val_loss": float(val["val_loss"][k]),
                       "val_accuracy": float(val["val_accuracy"][k])}
                f.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------------------- evaluation
def fold_outputs(states: FoldState, prep: Prepared, config, fmap: str | None = None):
    """Per-fold logits [K, N, C] and pooled features [K, N, D] on every image (view 0).

    ``fmap``: the resolved (evaluation) fold mapping, when the caller already knows it."""
    n = len(prep.examples.labels)
    idx = np.broadcast_to(np.arange(n, dtype=np.int32), (config.n_folds, n))
    if fmap is None:
        fmap = resolve_eval_fold_map(config.train.fold_map, resolve_fold_map(
            config.train.fold_map, trains_lax_conv(states, prep)))
    logits, pooled = eval_columns(states, prep.inputs2[0], idx, mode="tune", fold_map=fmap,
                                  width=eval_width([te for _, te in prep.folds]))
    return np.asarray(logits), np.asarray(pooled)


_fold_metrics = jax.jit(jax.vmap(metrics.all_metrics))  # one compilation, not one per op


def decision_summary(cms: np.ndarray) -> dict:
    """Per-fold metrics of stacked confusion matrices [K, C, C], their mean and std (ddof 0)."""
    per_fold = _fold_metrics(jnp.asarray(cms))
    per_fold = {k: [float(v) for v in np.asarray(per_fold[k])] for k in METRIC_KEYS}
    return {"per_fold": per_fold,
            "mean": {k: float(np.mean(v)) for k, v in per_fold.items()},
            "std": {k: float(np.std(v)) for k, v in per_fold.items()},
            "confusion": np.asarray(cms).astype(int).tolist(),
            "confusion_sum": np.asarray(cms).sum(0).astype(int).tolist()}


def evaluate(states: FoldState, prep: Prepared, config, outputs=None) -> dict:
    """CNN argmax, CNN minimum-expected-cost and SVM decisions, scored per fold
    (``outputs``: :func:`fold_outputs` of ``states`` if already computed)."""
    logits, pooled = fold_outputs(states, prep, config) if outputs is None else outputs
    labels = prep.examples.labels
    probs = np.asarray(probabilities(config.loss.name, jnp.asarray(logits)))
    cost = jnp.asarray(losses.DEFAULT_COST, jnp.float32)
    mec = np.asarray(jax.vmap(lambda p: metrics.min_expected_cost(p, cost))(jnp.asarray(probs)))
    svm = probe.fold_predictions(pooled, labels, prep.folds, kernel=config.svm.kernel,
                                 C=config.svm.C, class_weight=config.svm.class_weight or None,
                                 seed=config.seed)
    c = len(prep.examples.class_names)

    def cm(y, p):
        return np.asarray(metrics.confusion_matrix(jnp.asarray(y), jnp.asarray(p), c))

    cms = {"cnn": [], "cnn_mec": [], "svm": []}
    for k, (_, te) in enumerate(prep.folds):
        cms["cnn"].append(cm(labels[te], logits[k, te].argmax(-1)))
        cms["cnn_mec"].append(cm(labels[te], mec[k, te]))
        cms["svm"].append(cm(labels[te], svm[k]))
    return {name: decision_summary(np.stack(v)) for name, v in cms.items()}


# --------------------------------------------------------------------------- the run
def _enable_compilation_cache(workdir: Path) -> None:
    """JAX's persistent compilation cache next to the workdir: a rerun need not compile."""
    cache = Path(workdir).absolute().parent / ".jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    # Low enough to keep the phase epochs, feature passes and evaluation (0.3-2 s each).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)


def _config_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def _claim_workdir(workdir: Path, config) -> None:
    """Write ``config.json``; refuse to resume a workdir trained with another config."""
    path = workdir / "config.json"
    text = _config_json(config)
    if path.exists() and (workdir / "checkpoints").exists():
        old = json.loads(path.read_text())
        new = json.loads(text)
        if old != new:
            old, new = _flatten(old), _flatten(new)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise TrainingError(
                f"{workdir} holds a run with another config (differs in "
                f"{', '.join(changed)}); use another --workdir or delete that folder")
    path.write_text(text + "\n")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(config, workdir) -> dict:
    """Run one cell of the study: train K folds, evaluate, write results in ``workdir``."""
    from handjax import report
    t0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _enable_compilation_cache(workdir)
    _claim_workdir(workdir, config)
    timing: dict = {}
    prep = prepare(config)
    timing["prepare_s"] = time.perf_counter() - t0
    from handjax import checkpoint
    manager = checkpoint.manager(workdir)
    try:
        states, outputs = fit(prep, config, workdir, timing, manager)
        t = time.perf_counter()
        decisions = evaluate(states, prep, config, outputs)  # while the last checkpoint is written
    finally:
        checkpoint.close(manager)
    timing["evaluate_s"] = time.perf_counter() - t
    results = {
        "name": config.name, "model": config.model.name, "loss": config.loss.label,
        "weights": str(config.model.weights), "image_size": int(config.data.image_size),
        "n_folds": int(config.n_folds), "seed": int(config.seed), "data": prep.data_desc,
        "decisions": decisions, "cache_bytes": prep.cache_bytes,
    }
    # Timing goes to its own file so that results.json is a pure function of config + data.
    timing["wall_time_s"] = time.perf_counter() - t0
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (workdir / "timing.json").write_text(
        json.dumps({k: round(v, 3) for k, v in timing.items()}, indent=2) + "\n")
    report.write_run(workdir, results)
    logging.info("wrote %s", workdir / "results.json")
    return results


# --------------------------------------------------------------------------- trained runs
class TrainedRun(struct.PyTreeNode):
    """The K fold models of a finished run, ready to apply to raw images.

    ``model`` is a ``Classifier`` that takes RGB images in [0, 255]; ``variables`` are its
    variables stacked along a leading fold axis (frozen prefix + that fold's trained top
    and head). ``results`` is the run's ``results.json`` (data header, class names).
    """

    variables: Any
    config: Any = struct.field(pytree_node=False)
    model: Classifier = struct.field(pytree_node=False)
    results: dict = struct.field(pytree_node=False)


def load_run(workdir) -> TrainedRun:
    """Rebuild the fold models of the run in ``workdir`` from its config and last checkpoint."""
    import ml_collections
    from handjax import checkpoint
    workdir = Path(workdir)
    for need in ("config.json", "results.json"):
        if not (workdir / need).exists():
            raise FileNotFoundError(f"{workdir / need} not found: point --workdir at a "
                                    "finished run (python launch.py --config ...)")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    results = json.loads((workdir / "results.json").read_text())
    backbone, variables, top, common = model_parts(config,
                                                   len(results["data"]["class_names"]))
    params, stats = variables["params"], variables.get("batch_stats", {})
    plain = config.train.mode == "plain"
    model = Classifier(start=None, **common)
    if not plain:
        params, stats = _subtree(params, top), _subtree(stats, top)
    dim = _feature_dim(backbone, variables, int(config.data.image_size), common["dtype"])
    stub = Prepared(None, None, None, model, frozenset(top), params, stats,
                    np.zeros((1, 1, dim), np.float32), "pooled" if not plain else "frozen",
                    None, 0)
    like = initial_states(stub, config)
    sched = schedule(config)
    if sched and sched[-1][0] == 2:
        like = to_phase2(like, stub, config)
    manager = checkpoint.manager(workdir)
    done = checkpoint.latest(manager)
    if done != len(sched):
        raise TrainingError(f"{workdir}: training is not finished ({done} of {len(sched)} "
                            "epochs); rerun its launch command to resume")
    states = restore_states(manager, done, like, final=True)
    checkpoint.close(manager)
    k = config.n_folds
    full_params = {"backbone": {**_stack(variables["params"], k),
                                **states.params["backbone"]},
                   "head": states.params["head"]}
    full_stats = {"backbone": {**_stack(variables.get("batch_stats", {}), k),
                               **states.batch_stats["backbone"]}}
    return TrainedRun(variables={"params": full_params, "batch_stats": full_stats},
                      config=config, model=model, results=results)
