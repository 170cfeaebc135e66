"""Orbax checkpoints of the stacked fold states, one per finished epoch, in the workdir.

The state's pytree (params, batch stats, optimiser state with optax's named tuples and empty
nodes) is saved as a flat, ordered dict of its leaves and unflattened into the structure of a
freshly built state on restore: robust to optax state types orbax cannot rebuild on its own.
The checkpoint after the last epoch leaves the optimiser state out (``train.saved_states``).
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: Path, max_to_keep: int = 1) -> ocp.CheckpointManager:
    """A CheckpointManager on ``<workdir>/checkpoints`` (keeps the latest ``max_to_keep``)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    # The handler named up front: a fresh manager can then read an existing checkpoint's
    # metadata (n_arrays) before any save or restore.
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def latest(mngr: ocp.CheckpointManager) -> int:
    """Number of finished epochs recorded (0 when there is no checkpoint)."""
    step = mngr.latest_step()
    return 0 if step is None else int(step)


def _flat(tree) -> dict:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def save(mngr: ocp.CheckpointManager, step: int, state, wait: bool = True) -> None:
    """Save ``state`` as checkpoint ``step``; by default wait, so a kill right after loses
    nothing. ``wait=False`` writes in the background (``state`` must then not be donated
    or deleted before ``close``)."""
    mngr.save(step, args=ocp.args.StandardSave(_flat(state)))
    if wait:
        mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, like):
    """Restore checkpoint ``step`` into the structure (and static fields) of ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    abstract = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(l), l.dtype)
                for i, l in enumerate(leaves)}
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    return jax.tree.unflatten(treedef, [restored[f"{i:05d}"] for i in range(len(leaves))])


def n_arrays(mngr: ocp.CheckpointManager, step: int) -> int:
    """How many arrays (state leaves) checkpoint ``step`` holds."""
    return len(mngr.item_metadata(step))


def close(mngr: ocp.CheckpointManager) -> None:
    mngr.wait_until_finished()
    mngr.close()
