"""Photo-sized arrays in RAM or on disk, read in batches.

A run's decoded photos [N, S, S, 3] and their views [V, N, S, S, 3] grow with N (224 px x 4
views x 100k photos is ~60 GB). Larger than the run's budget (``train.cache_budget_gb``,
the one that bounds the frozen-feature cache) they are written, batch by batch, into ``.npy``
files in the run's folder and read back as read-only ``np.memmap`` arrays: the same values,
so a run's results do not depend on where its arrays live.

Reading a memmap maps its pages into the process; clean file pages then count in its RSS
until the kernel needs them. :func:`batches` therefore hands each batch out as a copy and
drops the mapping's pages after it, so a pass over a spilled array holds one batch at a time;
:func:`map_batches` runs a function over an array that way (one batch shape: one compile).
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from handjax.console import check_interrupt

BATCH = 256   # photos per read: 64 px x 256 = 3 MiB, 224 px x 256 = 37 MiB


class Store:
    """Where a run's photo-sized arrays go: ``folder`` (None: always RAM) once an array is
    larger than ``budget_bytes``."""

    def __init__(self, folder: Path | None = None, budget_bytes: float = float("inf")):
        self.folder = None if folder is None else Path(folder)
        self.budget_bytes = budget_bytes

    def spills(self, shape, dtype=np.uint8) -> bool:
        """Whether an array of ``shape`` goes to disk."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.folder is not None and nbytes > self.budget_bytes

    def empty(self, name: str, shape, dtype=np.uint8) -> np.ndarray:
        """A writable array of ``shape``: in RAM, or ``<folder>/<name>.npy`` (pass it to
        :func:`finish` once filled)."""
        if not self.spills(shape, dtype):
            return np.empty(shape, dtype)
        self.folder.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype,
                                         shape=tuple(shape))


def photo_store(workdir: Path | None, budget_gb: float) -> Store:
    """Where a run's decoded photos and views go: RAM, or ``<workdir>/arrays.<process>/``
    when one is larger than ``budget_gb`` (``train.cache_budget_gb``, the budget of the
    frozen-feature cache too): a run's peak memory is then set by the budget and a batch."""
    if workdir is None:
        return Store()
    import jax   # here: reading photos loads no JAX
    return Store(Path(workdir) / f"arrays.{jax.process_index()}", budget_gb * 2**30)


def finish(array: np.ndarray) -> np.ndarray:
    """A filled array from :meth:`Store.empty`: itself if in RAM, else its file reopened
    read-only (written to disk, its pages dropped from this process)."""
    if not isinstance(array, np.memmap):
        return array
    array.flush()
    path = array.filename
    drop_pages(array)
    del array
    return np.load(path, mmap_mode="r")


def on_disk(array) -> bool:
    """Whether ``array`` (or the array it is a view of) is a file mapping."""
    return getattr(array, "_mmap", None) is not None


def drop_pages(array) -> None:
    """Releases the pages of ``array``'s file mapping from this process (the data stays in
    the file and the page cache); nothing for an array in RAM."""
    m = getattr(array, "_mmap", None)
    if m is not None and not m.closed and hasattr(m, "madvise"):
        m.madvise(mmap.MADV_DONTNEED)


def batches(array, size: int | None = None):
    """``(start, rows)`` over the first axis of ``array`` in blocks of ``size`` rows
    (default :data:`BATCH`): views of an array in RAM; copies of a memmap's rows, its pages
    dropped after each block."""
    disk, size = on_disk(array), size or BATCH
    for i in range(0, len(array), size):
        rows = array[i:i + size]
        yield i, np.array(rows) if disk else rows
        if disk:
            drop_pages(array)


def even_batch(n: int, most: int) -> int:
    """The batch size <= ``most`` that covers ``n`` items in the fewest batches with the
    least padding (300 items, most 32: 10 batches of 30, not 10 of 32)."""
    return max(1, -(-n // -(-n // most))) if n else most


def map_batches(fn, flat: np.ndarray, batch: int, out_dtype=None, desc: str | None = None,
                out: np.ndarray | None = None):
    """``fn`` over ``flat`` in batches of one size (the last padded by repeating its final
    item, the padding dropped from the output): one shape, one compilation. ``flat`` on disk
    (a memmap) is read a batch at a time (:func:`batches`). With ``out`` (e.g. a disk-backed
    ``np.memmap``) each batch is written into it as it comes."""
    if out is not None:
        for i, y in _mapped(fn, flat, batch, desc):
            out[i:i + len(y)] = y
            drop_pages(out)   # written: the file holds it, not this process
        return out
    return np.concatenate([y if out_dtype is None else y.astype(out_dtype)
                           for _, y in _mapped(fn, flat, batch, desc)])


def _mapped(fn, flat: np.ndarray, batch: int, desc: str | None):
    """``(start, fn(rows))`` per batch of :func:`map_batches`."""
    for i, chunk in tqdm(batches(flat, batch), total=-(-len(flat) // batch), desc=desc,
                         leave=False, disable=desc is None):
        check_interrupt()
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        yield i, np.asarray(fn(chunk)[:n])
