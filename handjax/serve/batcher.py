"""Concurrent requests -> one compiled forward pass per batch, behind a bounded queue.

Each request puts one decoded image on a bounded queue and waits on a future. One worker
thread takes what is waiting (up to ``batch_size``, waiting at most ``max_wait_s`` for the
batch to fill once the first image has arrived), runs the model once on the stack, and hands
each request its row. The model itself pads every call to its fixed batch shape, so the
compiled program never changes however many requests share a batch.

A full queue refuses at once (:class:`QueueFull`, which the API answers with 503 and
``Retry-After``) instead of letting latency grow without bound; ``stop()`` finishes what is
queued before the worker ends, so a SIGTERM still answers every request already accepted.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already: try again shortly."""


class Stopped(Exception):
    """The batcher is shutting down and takes no new requests."""


class MicroBatcher:
    """Runs ``run_batch(items) -> results`` (one result per item, same order) on batches of
    at most ``batch_size`` items gathered from concurrent :meth:`submit` calls.

    ``max_queue`` bounds the requests waiting (not counting the batch being computed);
    ``max_wait_s`` is how long the first waiting request holds the batch open for others.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], batch_size: int,
                 max_queue: int, max_wait_s: float = 0.005):
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be at least 1")
        self._run_batch = run_batch
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._accepting = False
        self._lock = threading.Lock()  # submit vs stop: nothing slips in after the drain
        self._thread: threading.Thread | None = None
        self.batches = 0            # forward passes run (for /healthz and the tests)
        self.items = 0              # requests answered

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Starts the worker thread; :meth:`submit` accepts from now on."""
        with self._lock:
            if self._thread is not None:
                return
            self._accepting = True
            self._thread = threading.Thread(target=self._work, name="handjax-batcher",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuses new requests, finishes every queued one, then ends the worker."""
        with self._lock:
            self._accepting = False
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)   # wakes the worker; it drains what is ahead of this
            thread.join(timeout)

    @property
    def depth(self) -> int:
        """Requests waiting now (an estimate, as for any queue shared between threads)."""
        return self._queue.qsize()

    # ---------------------------------------------------------------- requests
    def submit(self, item: Any) -> Future:
        """Queues ``item``; the future gets its result (or the batch's exception).

        Raises :class:`QueueFull` when ``max_queue`` requests wait already and
        :class:`Stopped` after :meth:`stop`. A future cancelled before its batch starts is
        skipped (the API cancels requests that ran past their timeout).
        """
        future: Future = Future()
        with self._lock:
            if not self._accepting:
                raise Stopped("the server is shutting down")
            try:
                self._queue.put_nowait((item, future))
            except queue.Full:
                raise QueueFull(f"{self.max_queue} requests are waiting already") from None
        return future

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, last = self._gather(first)
            self._run(batch)
            if last:
                return

    def _gather(self, first) -> tuple[list, bool]:
        """``first`` plus whatever arrives within ``max_wait_s``, up to ``batch_size``;
        ``last`` is True when the stop marker was seen (everything before it is in)."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.batch_size:
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _run(self, batch: list) -> None:
        live = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._run_batch([item for item, _ in live])
        except Exception as e:  # every waiting request learns of it; the worker goes on
            for _, f in live:
                f.set_exception(e)
        else:
            for (_, f), r in zip(live, results):
                f.set_result(r)
        self.batches += 1
        self.items += len(live)
