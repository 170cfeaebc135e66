"""Orbax checkpoints of the stacked fold states, one per finished epoch, in the workdir.

A checkpoint is a nested dict keyed by the state's pytree paths, so anyone can read it
(``params/head/head_dense/kernel``, ``opt_state/inner_states/train/inner_state/0/mu/...``)
and a restore matches leaves by name, not by position: a leaf missing from the file, or of
another shape, is one clear error naming it. Checkpoints written before this layout (flat,
keyed by leaf index ``"00000"``) still restore into an identically built state.
The checkpoint after the last epoch leaves the optimiser state out (:func:`saved_states`).
The glue the fit loop and inference share lives here too: the epoch :func:`schedule` (a
checkpoint's step counts its finished entries), :func:`restore_states` and :class:`Saver`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
import orbax.checkpoint as ocp

from handjax.errors import TrainingError

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import TrainSpec


def manager(workdir: Path, max_to_keep: int = 1) -> ocp.CheckpointManager:
    """A CheckpointManager on ``<workdir>/checkpoints`` (keeps the latest ``max_to_keep``)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    # The handler named up front: a fresh manager can then read an existing checkpoint's
    # metadata before any save or restore.
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def latest(mngr: ocp.CheckpointManager) -> int:
    """Number of finished epochs recorded (0 when there is no checkpoint)."""
    step = mngr.latest_step()
    return 0 if step is None else int(step)


# ----------------------------------------------------------------------------- path keys
def _name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_paths(tree) -> list[tuple[tuple[str, ...], object]]:
    """``[(path, leaf)]`` with each path a tuple of readable names."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(tuple(_name(e) for e in path), leaf) for path, leaf in flat]


def to_nested(tree, fn=lambda leaf: leaf) -> dict:
    """The leaves of ``tree`` (through ``fn``) in a nested dict keyed by their path names."""
    out: dict = {}
    for path, leaf in leaf_paths(tree):
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = fn(leaf)
    return out


def _lookup(nested: dict, path):
    for part in path:
        nested = nested[part]
    return nested


# ----------------------------------------------------------------------------- save/restore
def save(mngr: ocp.CheckpointManager, step: int, state, wait: bool = True) -> None:
    """Save ``state`` as checkpoint ``step``; by default wait, so a kill right after loses
    nothing. ``wait=False`` writes in the background (``state`` must then not be donated
    or deleted before ``close``)."""
    try:
        mngr.save(step, args=ocp.args.StandardSave(to_nested(state)))
        if wait:
            mngr.wait_until_finished()
    except (OSError, ValueError) as e:  # a full disk, a folder made read-only
        raise TrainingError(f"{mngr.directory}: cannot write checkpoint {step} "
                            f"({getattr(e, 'strerror', None) or e}); free space or fix "
                            "permissions, then rerun the same command") from e


def _metadata(mngr, step: int) -> dict:
    try:
        meta = mngr.item_metadata(step)
    except Exception as e:  # orbax raises many types for a damaged checkpoint
        raise _damaged(mngr, step, e) from e
    return dict(meta) if meta is not None else {}


def _damaged(mngr, step: int, e: BaseException) -> TrainingError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TrainingError(f"{Path(mngr.directory) / str(step)}: checkpoint cannot be read "
                         f"({first[:200]}); delete that folder to resume from scratch, or use "
                         "a fresh --workdir")


def is_legacy(meta: dict) -> bool:
    """A checkpoint of the old layout: a flat dict keyed by leaf index."""
    return bool(meta) and all(k.isdigit() for k in meta)


def has_opt_state(mngr, step: int, like) -> bool:
    """Whether checkpoint ``step`` holds an optimiser state (``like``: the full state)."""
    meta = _metadata(mngr, step)
    if is_legacy(meta):
        return len(meta) == len(jax.tree.leaves(like))
    return "opt_state" in meta


def restore(mngr: ocp.CheckpointManager, step: int, like):
    """Restore checkpoint ``step`` into the structure (and static fields) of ``like``."""
    meta = _metadata(mngr, step)
    if is_legacy(meta):
        return _restore_legacy(mngr, step, like, meta)
    paths = leaf_paths(like)
    missing = [p for p, _ in paths if not _has(meta, p)]
    if missing:
        raise TrainingError(f"{Path(mngr.directory) / str(step)}: checkpoint lacks "
                            f"{len(missing)} arrays this config needs (first: "
                            f"{'/'.join(missing[0])}); it was written by another model or "
                            "config: use a fresh --workdir")
    abstract = to_nested(like, lambda l: jax.ShapeDtypeStruct(np.shape(l), l.dtype))
    restored = _restore(mngr, step, abstract)
    leaves = [_lookup(restored, p) for p, _ in paths]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _has(meta: dict, path) -> bool:
    try:
        _lookup(meta, path)
        return True
    except (KeyError, TypeError):
        return False


def _restore(mngr, step: int, abstract):
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax/tensorstore raise many types for a truncated file
        raise _damaged(mngr, step, e) from e


def _restore_legacy(mngr, step: int, like, meta: dict):
    leaves, treedef = jax.tree.flatten(like)
    if len(meta) != len(leaves):
        raise TrainingError(f"{Path(mngr.directory) / str(step)}: an old-layout checkpoint "
                            f"with {len(meta)} arrays, this config's state has {len(leaves)}; "
                            "use a fresh --workdir")
    abstract = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(l), l.dtype)
                for i, l in enumerate(leaves)}
    restored = _restore(mngr, step, abstract)
    return jax.tree.unflatten(treedef, [restored[f"{i:05d}"] for i in range(len(leaves))])


def close(mngr: ocp.CheckpointManager) -> None:
    mngr.wait_until_finished()
    mngr.close()


# ----------------------------------------------------------------------------- fold states
def schedule(train_spec: TrainSpec) -> list[tuple[int, int]]:
    """(phase, epoch) in training order; a checkpoint's step counts its finished entries."""
    return ([(1, e) for e in range(train_spec.epochs1)]
            + [(2, e) for e in range(train_spec.epochs2)])


def saved_states(states, final: bool):
    """What a checkpoint holds: the whole state, or after the last epoch (nothing left to
    train) all but the optimiser state: Adam's two moments would make it 3x larger (VGG19's
    top block, 5 folds: 565 MB instead of 189 MB) and cost ~1 s more to write."""
    return states.replace(opt_state=None) if final else states


def restore_states(mngr: ocp.CheckpointManager, step: int, like, final: bool):
    """Checkpoint ``step`` restored into the structure of ``like``; a final one without an
    optimiser state keeps ``like``'s (fresh) one."""
    if final and not has_opt_state(mngr, step, like):
        light = saved_states(like, final=True)
        return restore(mngr, step, light).replace(opt_state=like.opt_state)
    return restore(mngr, step, like)


class Saver:
    """Checkpoints at epoch ends: the last one, and any that ends ``every`` seconds after the
    previous save (saving 5 folds' Adam states every short epoch cost more than the epoch)."""

    def __init__(self, mngr: ocp.CheckpointManager, every: float):
        self.manager, self.every, self.last = mngr, float(every), time.perf_counter()

    def after_epoch(self, step: int, states, last: bool) -> None:
        if last or time.perf_counter() - self.last >= self.every:
            # Every save is written in the background while training goes on. The next
            # epoch donates ``states``' buffers, so a save before the last one writes a copy
            # (VGG19's top block, 5 folds, with Adam: 565 MB, copied in 0.22-0.26 s on a
            # 2-core EPYC; waiting for the write had cost an estimated ~2.3 s of a 10+10
            # run: its fit time beyond epochs, outputs and compiles). The last one leaves out
            # the optimiser state (see saved_states). Orbax commits a checkpoint only once it
            # is whole, and a new save (and ``close``) first waits for the one in flight.
            kept = saved_states(states, final=last)
            if not last:
                kept = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, kept)
            save(self.manager, step, kept, wait=False)
            self.last = time.perf_counter()
