"""Many processes through JAX's own multi-controller runtime (``jax.distributed``).

Every process runs the same program on the same data: the photos, the frozen-feature cache,
the evaluation and the SVM probe are computed by each (they are cheap next to training and
need no communication). Only the epoch programs span processes: the fold axis is sharded over
a global mesh of every process's devices (:func:`fold_mesh`, ``jax.shard_map`` in
``folds.epoch_fn``), padded with dummy folds up to a multiple of the device count
(:func:`pad_folds`: copies of real folds, cut off every result), and each epoch's states and
sums are gathered back to every process (:func:`gather`). Process 0 writes the reports; every
process calls the (multi-host aware) orbax checkpoint manager.

    python launch.py --config ... --coordinator_address=10.0.0.1:1234 --num_processes=2 \
        --process_id=0      # and =1 on the other host
    srun python launch.py --config ...     # Slurm, Open MPI, TPU pods: detected
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Environments in which a bare ``jax.distributed.initialize()`` finds its peers itself.
CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
               "MEGASCALE_COORDINATOR_ADDRESS")


def wanted(env=os.environ) -> bool:
    """Whether the environment asks for ``jax.distributed``: ``HANDJAX_DISTRIBUTED=1``, or
    a cluster JAX detects on its own (Slurm with several tasks, Open MPI, a TPU pod)."""
    if env.get("HANDJAX_DISTRIBUTED", "") not in ("", "0"):
        return True
    if "SLURM_JOB_ID" in env:
        return int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1
    if "OMPI_COMM_WORLD_SIZE" in env:
        return int(env["OMPI_COMM_WORLD_SIZE"]) > 1
    return any(k in env for k in CLUSTER_ENV[2:])


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env=os.environ) -> bool:
    """Join the other processes (before any JAX computation). With ``coordinator_address``
    the three values are explicit; without it JAX reads them from the environment when
    :func:`wanted` says one is there. Returns whether the runtime was initialised."""
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        if not wanted(env):
            return False
        jax.distributed.initialize()
        return True
    if any(v is None for v in explicit):
        raise ValueError("--coordinator_address, --num_processes and --process_id go "
                         "together: give all three, or none (the cluster's environment)")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id}: expected 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True


def is_primary() -> bool:
    """Whether this process writes the reports (process 0; always true in one process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process has got here (nothing in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def primary_first(fn):
    """``fn()`` on process 0 first, then on the others (after a barrier): a shared cache
    (the TFDS build of the photos under ``$HANDJAX_CACHE``) is then written once."""
    if jax.process_count() == 1:
        return fn()
    out = fn() if is_primary() else None
    barrier("handjax_primary_first")
    return out if is_primary() else fn()


# --------------------------------------------------------------------------- the fold mesh
def fold_mesh(n_folds: int, enabled: bool):
    """A 1-D mesh (axis "fold") over every process's devices, or ``None`` with one device
    (or ``enabled`` false in one process). Folds that do not split evenly are padded
    (:func:`padded_folds`). Several processes always shard: that is why they were started."""
    devices = jax.devices()
    if len(devices) < 2 or (not enabled and jax.process_count() == 1):
        return None
    padded = padded_folds(n_folds, len(devices))
    if padded != n_folds:
        logging.warning("%d folds over %d devices: padded with %d dummy folds (computed, "
                        "then dropped)", n_folds, len(devices), padded - n_folds)
    return jax.sharding.Mesh(np.array(devices), ("fold",))


def padded_folds(n_folds: int, n_devices: int) -> int:
    """The fold count padded up to a multiple of ``n_devices``."""
    return math.ceil(n_folds / n_devices) * n_devices


def pad_folds(tree, n: int, axis: int = 0):
    """Every leaf's fold ``axis`` extended to ``n`` by wrapping round (dummy folds are
    copies of real ones, so they train on real data and cannot produce NaNs)."""
    def pad(a):
        a = np.asarray(a)
        k = a.shape[axis]
        return a if k == n else np.take(a, np.arange(n) % k, axis=axis)
    return jax.tree.map(pad, tree)


def unpad_folds(tree, n: int, axis: int = 0):
    """The first ``n`` folds of every leaf (the dummy folds dropped)."""
    return jax.tree.map(lambda a: a[(slice(None),) * axis + (slice(0, n),)], tree)


def to_global(tree, mesh, spec: P):
    """Host values (the same on every process) as global arrays sharded by ``spec``:
    each process fills in its own devices' shards."""
    sharding = NamedSharding(mesh, spec)

    def place(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])
    return jax.tree.map(place, tree)


def gather(tree):
    """Global (possibly sharded over processes) arrays as full host numpy arrays, on every
    process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


class FoldSharded:
    """An ``epoch_fn``-shaped program ``(states, inputs, labels, batches, key)`` run over the
    fold ``mesh``: folds padded to the mesh size, states and batches sharded, inputs and
    labels replicated, the result gathered to every process with the padding dropped.

    ``fn`` is the (un-jitted) epoch function; it is compiled ahead of time, donating the
    states, on the first call's shapes (:meth:`compile`)."""

    def __init__(self, fn, mesh):
        self.fn, self.mesh, self.compiled, self.shared = fn, mesh, None, None

    def _place(self, args):
        states, inputs, labels, batches, key = args
        n = padded_folds(batches["idx"].shape[1], self.mesh.size)
        fold, step_fold = P("fold"), P(None, "fold")
        if self.shared is None or self.shared[0] is not inputs:   # placed once per phase
            self.shared = (inputs, to_global((inputs, labels), self.mesh, P()))
        return (to_global(pad_folds(states, n), self.mesh, fold), *self.shared[1],
                to_global(pad_folds(batches, n, axis=1), self.mesh, step_fold),
                to_global(jax.random.key_data(key), self.mesh, P()))

    def compile(self, *args) -> "FoldSharded":
        fn = self.fn

        def program(states, inputs, labels, batches, key_data):
            return fn(states, inputs, labels, batches, jax.random.wrap_key_data(key_data))
        self.compiled = jax.jit(program, donate_argnums=0).lower(*self._place(args)).compile()
        return self

    def __call__(self, *args):
        n = args[3]["idx"].shape[1]
        states, sums = gather(self.compiled(*self._place(args)))
        return unpad_folds(states, n), unpad_folds(sums, n, axis=1)
