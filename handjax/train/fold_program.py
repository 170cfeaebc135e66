"""The fold program: K stacked fold states trained as one array program.

The fold axis is the leading axis of every per-fold array. Folds have unequal sizes: batches
are padded by wrapping round the fold's own examples and the padding is masked out of every
sum. ``fold_map`` picks how a step maps over the folds: ``vmap`` (dense heads, matmul-form
convs, GPU), ``lax.map``, or an unrolled loop (``lax.conv`` layers on XLA:CPU, where vmap over
fold parameters measured ~7x slower than a loop); with several devices the fold axis is
sharded across them. ``train.mode = "plain"`` runs the folds one after another and the steps
one at a time from Python (:func:`plain_epoch`), the way the study's Keras code ran; it
trains on the same views and batches, so both give the same results (a test checks it).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from handjax.data.store import drop_pages, even_batch
from handjax import losses, ordinal
from handjax.train.distributed import fold_mesh
from handjax.train.features import FoldInputs, FoldModel
from handjax.models.kernels import convs

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import LossSpec, RunSpec


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
    decide: Callable = struct.field(pytree_node=False, default=None)  # logits -> classes


def param_labels(params, trainable_layers) -> Any:
    """'train' / 'freeze' label per leaf: the head always trains, backbone layers if listed."""
    backbone = {layer: jax.tree.map(lambda _, l=layer: "train" if l in trainable_layers
                                    else "freeze", sub)
                for layer, sub in params.get("backbone", {}).items()}
    head = jax.tree.map(lambda _: "train", params["head"])
    return {"backbone": backbone, "head": head}


KERAS_ADAM_EPS = 1e-7   # Keras's Adam epsilon (optax's default is 1e-8)


def make_tx(params, lr: float, trainable_layers) -> optax.GradientTransformation:
    """Adam on the trainable leaves, ``set_to_zero`` on the frozen ones.

    One object per (parameter structure, rate, trained layers): states made twice from the
    same arguments are then the same pytree (the optimiser is part of its structure), so a
    program compiled for one runs the other (:class:`handjax.train.fit.Ahead`)."""
    return _tx(jax.tree.structure(params), float(lr), frozenset(trainable_layers))


@functools.lru_cache(maxsize=64)
def _tx(structure, lr: float, trainable_layers: frozenset) -> optax.GradientTransformation:
    params = jax.tree.unflatten(structure, [0] * structure.num_leaves)
    return optax.multi_transform({"train": optax.adam(lr, eps=KERAS_ADAM_EPS),
                                  "freeze": optax.set_to_zero()},
                                 param_labels(params, trainable_layers))


def create_state(params, batch_stats, *, model, mode, tx, loss_fn, decide=None) -> FoldState:
    """A fresh fold state (one fold; vmap it for K)."""
    return FoldState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params), model=model, mode=mode, tx=tx,
                     loss_fn=loss_fn, decide=decide)


def masked_loss(loss_fn: Callable, logits, labels, mask):
    """The batch's loss with padding (mask 0) left out: the masked mean of a per-example
    loss, or a batch-level loss (:data:`handjax.losses.BATCH_LOSSES`) given the mask."""
    if losses.is_batch_level(loss_fn):
        return loss_fn(logits, labels, mask)
    per_example = loss_fn(logits, labels)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


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
        loss = masked_loss(state.loss_fn, logits, batch["y"], mask)
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decide = state.decide or (lambda z: jnp.argmax(z, -1))
    correct = (decide(logits) == batch["y"]).astype(jnp.float32)
    sums = {"loss": loss * jnp.sum(mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask), "finite": jnp.isfinite(loss)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    # A step with no real example (a shorter fold's padding steps) leaves the fold as it
    # was, as a shorter fold has fewer steps in Keras: Adam's momentum would otherwise move
    # the weights on zero gradients, and a fold's result would depend on the longest fold
    # (with repeated CV, on the other repeats' folds).
    real = jnp.sum(mask) > 0
    return jax.tree.map(lambda new, old: jnp.where(real, new, old), new_state, state), sums


def eval_step(state: FoldState, x: jax.Array, mode: str):
    """``(logits, pooled)`` of one fold's model on a batch, in inference mode (its convs
    chosen for the "eval_folds" purpose, see :mod:`handjax.models.kernels.convs`)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    model = state.model
    model = model.clone(backbone=convs.for_purpose(model.backbone, "eval_folds"))
    return model.apply(variables, x, train=False, mode=mode)


# --------------------------------------------------------------------------- fold mapping
def fold_mapper(kind: str) -> Callable:
    """``f(fn, xs)`` mapping ``fn`` over the leading fold axis of the pytree ``xs``."""
    if kind == "vmap":
        return lambda fn, xs: jax.vmap(fn)(xs)
    if kind == "map":
        return lambda fn, xs: jax.lax.map(fn, xs)
    if kind == "loop":  # unrolled in the trace: one program per fold, side by side
        def loop(fn, xs):
            k = jax.tree.leaves(xs)[0].shape[0]
            # Traced once and inlined K times: the same program as K traces (its lowered
            # text is identical) for ~1/K of the tracing (VGG19's phase 2, im2col form:
            # 0.6 s -> 0.2 s).
            fn = jax.jit(fn, inline=True)
            outs = [fn(jax.tree.map(lambda a, i=i: a[i], xs)) for i in range(k)]
            return jax.tree.map(lambda *a: jnp.stack(a), *outs)
        return loop
    raise ValueError(f"config.train.fold_map={kind!r}: expected 'auto', 'vmap', 'map' or 'loop'")


def resolve_fold_map(kind: str, algorithms: frozenset, epochs: int | None = None) -> str:
    """'auto': vmap, except on XLA:CPU when the trained layers run an algorithm of
    :data:`handjax.models.kernels.convs.UNROLL_FOLDS` (``algorithms``: theirs): an unrolled loop
    over folds there (lax.conv: vmap over fold kernels makes grouped convs, ~7x slower;
    Winograd: the loop's epoch measured 1.1-1.2x vmap's, for 3x the compile, so only in a
    phase of ``epochs`` >= :data:`~handjax.models.kernels.convs.UNROLL_MIN_EPOCHS`; None:
    as many as that). Dense heads and im2col/matmul convs vmap into batched matmuls
    (``python -m handjax.bench folds``)."""
    if kind != "auto":
        return kind
    if jax.default_backend() == "cpu" and algorithms & convs.UNROLL_FOLDS:
        if algorithms & convs.LAX_CONV or (epochs or convs.UNROLL_MIN_EPOCHS) >= \
                convs.UNROLL_MIN_EPOCHS:
            return "loop"
    return "vmap"


def resolve_eval_fold_map(kind: str, algorithms: frozenset, epochs: int | None = None) -> str:
    """The fold mapping of programs that run trained backbone layers forward only (phase-2
    validation, the final outputs): "auto" on XLA:CPU maps the folds one after another
    (``lax.map``) unless the layers run ``lax.conv`` (then as training: a loop). Forward
    only, per-fold matmuls ran faster one fold at a time: VGG19 112 px, outputs of 5 folds
    x 150 images, best of 3 interleaved: lax.map 3.46 s, loop 3.87 s, vmap 4.59 s.
    Otherwise the training mapping."""
    if (kind == "auto" and jax.default_backend() == "cpu"
            and not algorithms & convs.LAX_CONV):
        return "map"
    return resolve_fold_map(kind, algorithms, epochs)


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
    return steps_fn(states, inputs, labels, batches, keys, fold_map=fold_map, mesh=mesh)


def steps_fn(states, inputs, labels, batches, keys, *, fold_map: str, mesh=None):
    """:func:`epoch_fn` on some steps of an epoch, with their dropout keys [steps, K]."""
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


def plain_batch_step(state, inputs, labels, b, key):
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


def eval_fn(states, inputs, idx, *, mode: str, fold_map: str):
    """Per-fold ``(logits, pooled)`` on ``inputs[idx[k]]`` (``idx`` [K, M]), inference mode."""
    return fold_mapper(fold_map)(lambda a: eval_step(a[0], inputs[a[1]], mode), (states, idx))


EVAL_CHUNK = 64   # at most this many examples per fold go through the model at once


def column_width(m: int) -> int:
    """The columns of each call of :func:`eval_columns` over ``m`` columns."""
    return even_batch(m, EVAL_CHUNK)


def eval_columns(states, inputs, idx, *, mode: str, fold_map: str):
    """:func:`eval_fn` over ``idx`` [K, M] in column chunks of one width (the last one
    filled up by wrapping round, the filler dropped): the width that takes the M columns in
    the fewest calls of at most ``EVAL_CHUNK`` examples per fold, so that one compiled shape
    serves each kind of call (a test split; every image) and memory stays bounded for large
    sets, while each call is as wide as the bound allows (Winograd's matmuls gain from
    rows: :mod:`handjax.models.kernels.convs`)."""
    fn = eval_program(mode, fold_map)
    if not isinstance(inputs, np.memmap):
        # Once for the pass: a NumPy view handed to each call is copied by each call, and
        # the queued copies (20 MB each for phase 1's inputs at 10,000 photos, 32 calls over
        # a test split) stayed in the process: +0.35 GB of RSS, growing with N.
        inputs = jnp.asarray(inputs)
    m = idx.shape[1]
    width = column_width(m)
    n_chunks = max(1, math.ceil(m / width))
    idx = np.take(np.asarray(idx), np.arange(n_chunks * width) % m, axis=1)
    host, pending = None, []   # the outputs on the host; calls not yet copied there
    for c in range(n_chunks):
        cols = idx[:, c * width:(c + 1) * width]
        if isinstance(inputs, np.memmap):   # spilled cache: only this chunk's rows, read here
            rows, local = used_rows(cols)
            pending.append(fn(states, inputs[rows], jnp.asarray(local)))
            drop_pages(inputs)   # read: this chunk's rows are copies, the file keeps the rest
        else:
            pending.append(fn(states, inputs, jnp.asarray(cols)))
        if len(pending) > IN_FLIGHT:
            host = _to_host(host, pending.pop(0), c - IN_FLIGHT, width, n_chunks)
    for c in range(n_chunks - len(pending), n_chunks):
        host = _to_host(host, pending.pop(0), c, width, n_chunks)
    return tuple(h[:, :m] for h in host)


def _to_host(host, out, c: int, width: int, n_chunks: int) -> list:
    """Chunk ``c``'s outputs (``width`` columns each) copied into ``host``, the pass's host
    arrays [K, n_chunks * width, ...] (allocated on the first chunk): one host copy of the
    outputs, each chunk's device arrays released as it lands (the final outputs of 20,000
    photos are 0.2 GB of pooled features; a device concatenation held them twice more)."""
    if host is None:
        host = [np.empty((a.shape[0], n_chunks * width) + a.shape[2:], a.dtype) for a in out]
    for h, a in zip(host, out):
        h[:, c * width:(c + 1) * width] = np.asarray(a)
    return host


# --------------------------------------------------------------------------- a spilled cache
def used_rows(flat_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, local)``: the distinct row indices ``flat_idx`` uses, wrapped round to one
    row per entry (a fixed shape: one compilation), and ``flat_idx`` re-indexed into them
    (``rows[local] == flat_idx``)."""
    rows, local = np.unique(flat_idx, return_inverse=True)
    rows = np.resize(rows, flat_idx.size)
    return rows, local.reshape(flat_idx.shape).astype(np.int32)


# Calls of a chunked pass (a spilled epoch, an evaluation) dispatched ahead of the oldest
# unfinished one. JAX dispatches asynchronously, and a host loop that only reads rows and
# dispatches runs ahead of the compute: every queued call holds its copy of the rows (2.6 MB
# a step of VGG19 at 64 px, 500 steps an epoch at 10,000 photos) and its outputs.
IN_FLIGHT = 2


def wait_behind(outs: list, most: int = IN_FLIGHT) -> None:
    """Blocks until the call ``most`` places behind the newest of ``outs`` (the outputs of
    the calls dispatched so far, in order) has finished: at most ``most`` calls, and their
    rows, wait at once, while the host still reads the next chunk as the last one runs."""
    if len(outs) > most:
        jax.block_until_ready(outs[-most - 1])


# Rows of a spilled cache read per chunk of steps (at most): a fixed size, not a share of the
# cache, because the chunk's program holds working memory in proportion to its steps. VGG19
# at 64 px, 2,400 photos (a step's rows 2.6 MB): the cache's eighth (19 MB, 6 steps a chunk)
# peaked at 1.95 GiB of RSS in phase 2, against 1.62 GiB at 600 photos; 4 MB (one step):
# 1.68-1.71 GiB, the run's wall 146-165 s against 157 s (within this box's noise). 20,000
# photos, an eighth: 50 steps a chunk.
STREAM_CHUNK_BYTES = 2**22


def chunk_steps(n_steps: int, bytes_per_step: int, budget_bytes: float) -> int:
    """Steps per streamed chunk: the largest divisor of ``n_steps`` whose rows fit in
    ``budget_bytes`` (at least 1). A divisor, because a padded step would still move Adam."""
    most = max(1, int(budget_bytes // max(bytes_per_step, 1)))
    return max(d for d in range(1, n_steps + 1) if n_steps % d == 0 and d <= most)


class StreamedEpoch:
    """An ``epoch_fn``-shaped program for a cache spilled to disk (``inputs`` a [V, N, ...]
    ``np.memmap``): the epoch runs in chunks of steps, each fed only the rows its batches
    use, read from disk on the host. Same batches, same dropout keys, same results as the
    in-memory epoch; host memory holds one chunk's rows (at most :data:`STREAM_CHUNK_BYTES`,
    or one step's)."""

    def __init__(self, fold_map: str):
        self.fold_map, self.budget, self.compiled = fold_map, STREAM_CHUNK_BYTES, None

    def chunk(self, inputs, labels, batches, c0: int, c1: int):
        """(inputs [1, R, ...], labels [R], batches) of steps ``c0:c1``, re-indexed."""
        b = {k: v[c0:c1] for k, v in batches.items()}
        n = inputs.shape[1]
        rows, local = used_rows(b["view"].astype(np.int64) * n + b["idx"])
        x = inputs[rows // n, rows % n][None]
        y = np.asarray(labels)[rows % n]
        return x, y, {"idx": local, "view": np.zeros_like(local), "mask": b["mask"]}

    def __call__(self, states, inputs, labels, batches, key):
        n_steps, n_folds, batch = batches["idx"].shape
        keys = _fold_keys(key, n_steps, n_folds)
        row_bytes = inputs.itemsize * math.prod(inputs.shape[2:])
        c = chunk_steps(n_steps, n_folds * batch * row_bytes, self.budget)
        sums = []
        for c0 in range(0, n_steps, c):
            args = (states, *self.chunk(inputs, labels, batches, c0, c0 + c), keys[c0:c0 + c])
            drop_pages(inputs)   # the chunk is a copy: a pass holds one chunk, not the file
            if self.compiled is None or self.compiled[0] != c:
                fn = functools.partial(steps_fn, fold_map=self.fold_map)
                self.compiled = (c, jax.jit(fn, donate_argnums=0).lower(*args).compile())
            states, s = self.compiled[1](*args)
            sums.append(s)
            wait_behind(sums)
        return states, jax.tree.map(lambda *a: jnp.concatenate(a), *sums)


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




# --------------------------------------------------------------------------- states per phase
@functools.lru_cache(maxsize=None)
def make_loss(loss_spec: LossSpec) -> Callable:
    """The optax-shaped per-example loss of ``loss_spec`` (a LossSpec); one object per spec,
    as :func:`make_tx`'s optimiser, since a state holds it as part of its structure."""
    kwargs = {"ce_weight": loss_spec.ce_weight} if loss_spec.name == "severity" else {}
    return losses.get(loss_spec.name, **kwargs)


def fold_keys(seed: int, n_folds: int, repeats: int = 1) -> jax.Array:
    """The head-initialisation keys of R x K fold models, repeat-major. Repeat 0's are the
    keys of a run without repeats, so its fold models start exactly as they would."""
    base = jax.random.fold_in(jax.random.key(seed), 1)
    return jnp.concatenate([jax.random.split(jax.random.fold_in(base, r) if r else base,
                                             n_folds) for r in range(repeats)])


def initial_states(fold_model: FoldModel, *, n_folds: int, seed: int, lr: float,
                   loss_fn: Callable, decide: Callable | None = None,
                   repeats: int = 1) -> FoldState:
    """R x K phase-1 states: shared backbone values, a differently seeded head per fold."""
    keys = fold_keys(seed, n_folds, repeats)
    model = fold_model.model

    def head(key):
        return model.init(key, jnp.zeros((1, fold_model.head_dim)), mode="pooled")["params"]["head"]

    one = {"backbone": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                    fold_model.backbone_params),
           "head": jax.eval_shape(head, keys[0])}
    tx = make_tx(one, lr, trainable_layers=())

    def fold_state(key, backbone_params, backbone_stats):
        return create_state({"backbone": backbone_params, "head": head(key)},
                            {"backbone": backbone_stats}, model=model, mode=fold_model.mode1,
                            tx=tx, loss_fn=loss_fn, decide=decide)
    # One compiled program (heads, the backbone values broadcast to K real copies, the
    # optimiser states) instead of one compilation per eager op.
    return jax.jit(jax.vmap(fold_state, in_axes=(0, None, None)))(
        keys, fold_model.backbone_params, fold_model.backbone_stats)


def to_phase2(states: FoldState, fold_model: FoldModel, lr: float) -> FoldState:
    """Unfreeze the top block(s): a fresh Adam at the lower rate, as Keras's recompile does."""
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), states.params)
    tx = make_tx(one, lr, trainable_layers=fold_model.trainable)
    return jax.jit(jax.vmap(lambda st: create_state(
        st.params, st.batch_stats, model=fold_model.model, mode="tune", tx=tx,
        loss_fn=st.loss_fn, decide=st.decide)))(states)


@functools.lru_cache(maxsize=None)
def _decider(loss: str) -> Callable:
    """An ordinal loss's logits -> classes (one object per loss, as :func:`make_loss`)."""
    return functools.partial(ordinal.decide, loss)


def states_for(phase: int, fold_model: FoldModel, run_spec: RunSpec) -> FoldState:
    """Fresh K-fold states as they stand at the start of ``phase`` (1 or 2) for the RunSpec
    ``run_spec``: the structure a checkpoint of that phase restores into."""
    loss = run_spec.loss.name
    decide = _decider(loss) if loss in ordinal.ORDINAL else None
    states = initial_states(fold_model, n_folds=run_spec.n_folds, seed=run_spec.seed,
                            lr=run_spec.train.lr1, loss_fn=make_loss(run_spec.loss),
                            decide=decide, repeats=run_spec.repeats)
    return to_phase2(states, fold_model, run_spec.train.lr2) if phase == 2 else states


@functools.lru_cache(maxsize=None)
def eval_program(mode: str, fmap: str):
    """The jitted :func:`eval_fn` of ``mode`` and fold mapping ``fmap``: one per pair, so
    that a program compiled ahead (:class:`handjax.train.fit.Ahead`) is the one called."""
    return jax.jit(functools.partial(eval_fn, mode=mode, fold_map=fmap))


def eval_fold_map(fold_model: FoldModel, kind: str) -> str:
    """The fold mapping of the forward-only programs for ``train.fold_map=kind``."""
    return resolve_eval_fold_map(kind, fold_model.trained_algorithms)


def fold_outputs(states: FoldState, inputs: FoldInputs,
                 fmap: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold logits [K, N, C] and pooled features [K, N, D] on every image (view 0 of
    the phase-2 inputs); ``fmap`` is the evaluation fold mapping (:func:`eval_fold_map`)."""
    n = inputs.inputs2.shape[1]
    idx = np.broadcast_to(np.arange(n, dtype=np.int32), (len(states.step), n))
    logits, pooled = eval_columns(states, inputs.inputs2[0], idx, mode="tune", fold_map=fmap)
    return np.asarray(logits), np.asarray(pooled)


# --------------------------------------------------------------------------- one run's epochs
@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What every epoch of a run shares: labels, splits, the device mesh, fold mappings."""

    labels: jax.Array
    train_sets: list             # per fold: the training photos less its inner split
    test_sets: list              # per fold: its test photos
    score_sets: dict             # "test" (and "val": the inner split) -> (idx, mask) [K, M]
    mesh: object
    key: jax.Array
    fold_model: FoldModel

    @classmethod
    def build(cls, cohort, fold_model: FoldModel, run_spec: RunSpec) -> "EpochPlan":
        sets = {"test": cohort.test_sets}
        if any(len(v) for v in cohort.inner):
            sets["val"] = list(cohort.inner)
        score_sets = {k: pad_indices(v, max(len(s) for s in v)) for k, v in sets.items()}
        return cls(jnp.asarray(cohort.labels), cohort.train_sets, cohort.test_sets, score_sets,
                   fold_mesh(run_spec.n_models, run_spec.train.shard_folds),
                   jax.random.fold_in(jax.random.key(run_spec.seed), 3), fold_model)

    def fold_maps(self, phase: int, kind: str, epochs: int | None = None) -> tuple[str, str]:
        """(training, evaluation) fold mappings of ``phase``, which runs ``epochs`` epochs
        (the config's, so that a resumed run maps its folds as the uninterrupted one)."""
        fm = self.fold_model
        trained = (fm.trained_algorithms if phase == 2 or fm.mode1 != "pooled"
                   else frozenset())   # phase 1 on pooled features trains the heads only
        fmap = resolve_fold_map(kind, trained, epochs)
        # Evaluation (forward only) of the phase-2 models may map folds differently.
        return fmap, fmap if phase == 1 else resolve_eval_fold_map(kind, trained, epochs)


# --------------------------------------------------------------------------- per-epoch scores
def epoch_scores(states: FoldState, plan: EpochPlan, inputs, phase: int, emap: str,
                 outputs=None) -> dict:
    """Per-fold loss and accuracy on each fold's test split (``test_*``: for the curves
    only, never for tuning) and, with an inner split, on it (``val_*``)."""
    out = {}
    for name, (idx, mask) in plan.score_sets.items():
        loss, acc = _split_scores(states, plan, inputs, idx, mask, phase, emap, outputs)
        out[f"{name}_loss"], out[f"{name}_accuracy"] = loss, acc
    return out


def _split_scores(states, plan: EpochPlan, inputs, idx, mask, phase: int, emap: str, outputs):
    """Masked per-fold loss and accuracy of the fold models on ``idx`` [K, M] (view 0,
    inference mode); read off ``outputs`` (:func:`fold_outputs`) when given."""
    if outputs is not None:
        logits = np.take_along_axis(outputs[0], idx[..., None], axis=1)
    else:
        mode = plan.fold_model.mode1 if phase == 1 else "tune"
        logits, _ = eval_columns(states, inputs[0], idx, mode=mode, fold_map=emap)
    y = plan.labels[jnp.asarray(idx)]
    loss, acc = _masked_loss_and_accuracy(states.loss_fn, states.decide, jnp.asarray(logits),
                                          y, jnp.asarray(mask, jnp.float32))
    return np.asarray(loss), np.asarray(acc)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _masked_loss_and_accuracy(loss_fn, decide, logits, y, mask):
    """Per-fold masked mean loss and accuracy of logits [K, M, C] against labels [K, M]."""
    n = jnp.maximum(mask.sum(1), 1.0)
    loss = jax.vmap(functools.partial(masked_loss, loss_fn))(logits, y, mask)
    pred = decide(logits) if decide is not None else jnp.argmax(logits, -1)
    correct = (pred == y).astype(jnp.float32)
    return loss, (correct * mask).sum(1) / n
