"""A fixed number of worker threads behind a bounded queue, feeding asyncio consumers.

The server submits each piece of CPU work (a synthesis, a voice encoding, a picture) as a
generator function. :meth:`WorkerPool.submit` refuses with :class:`QueueFullError` (with a
``retry_after`` estimate) when ``queue_size`` jobs already wait, so memory stays bounded
under any load: at most ``workers`` jobs run and ``queue_size`` wait. A running job hands
its items to the event loop through a per-job window of ``max_pending`` items (the worker
waits while a slow client has that many unread, for at most ``stall_s`` seconds), and stops
at its next item once :meth:`Job.cancel` was called (the client went away) or the client
stalled, which frees its worker.
"""
from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from typing import Any, Callable, Iterator

log = logging.getLogger("flexicodec.serve")


class QueueFullError(RuntimeError):
    """Every worker is busy and the queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Job:
    """One submitted generator function; read its items with ``await job.get()``."""

    def __init__(self, fn: Callable[[], Iterator[Any]], loop: asyncio.AbstractEventLoop,
                 max_pending: int, stall_s: float = 60.0):
        self.fn = fn
        self.stall_s = stall_s
        self._loop = loop
        self._items: asyncio.Queue = asyncio.Queue()
        self._room = threading.Semaphore(max_pending)
        self._cancelled = threading.Event()

    # ---------------------------------------------------------------- consumer (event loop)
    async def get(self) -> Any:
        """The next item; raises the worker's exception, StopAsyncIteration at the end."""
        kind, value = await self._items.get()
        if kind == "item":
            self._room.release()
            return value
        if kind == "error":
            raise value
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Stop the job at its next item (no-op when it has ended)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # ---------------------------------------------------------------- producer (worker)
    def _send(self, kind: str, value: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, value))
            return True
        except RuntimeError:  # the event loop has closed: nobody is reading
            self._cancelled.set()
            return False

    def _put(self, item: Any) -> bool:
        """Hand one item over, waiting for room; False once the job is cancelled, or (and
        then cancelled) when the reader has taken nothing for ``stall_s`` seconds."""
        waited = 0.0
        while not self._room.acquire(timeout=0.1):
            waited += 0.1
            if self.cancelled:
                return False
            if waited >= self.stall_s:
                log.warning("a client read nothing for %.0f s: its job is stopped", waited)
                self.cancel()
                return False
        if self.cancelled:
            return False
        return self._send("item", item)


class WorkerPool:
    """``workers`` daemon threads running submitted jobs in order, ``queue_size`` waiting."""

    def __init__(self, workers: int = 1, queue_size: int = 4, max_pending: int = 64,
                 stall_s: float = 60.0):
        if workers < 1 or queue_size < 0 or max_pending < 1 or stall_s <= 0:
            raise ValueError("workers >= 1, queue_size >= 0, max_pending >= 1 and stall_s > 0 "
                             "are required")
        self.workers, self.queue_size, self.max_pending = workers, queue_size, max_pending
        self.stall_s = stall_s
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._busy = 0
        self._mean_s = 1.0           # running mean of job durations, for Retry-After
        self.counts = {"completed": 0, "failed": 0, "cancelled": 0, "rejected": 0}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"tts-worker-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Iterator[Any]],
               loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue ``fn`` (a generator function run on a worker); QueueFullError when full."""
        if self._stop.is_set():
            raise RuntimeError("the worker pool is closed")
        job = Job(fn, loop or asyncio.get_running_loop(), self.max_pending, self.stall_s)
        with self._lock:
            if self._busy + self._waiting >= self.workers + self.queue_size:
                self.counts["rejected"] += 1
                raise QueueFullError(
                    f"the server is busy ({self._busy} running, {self._waiting} queued); "
                    f"retry later", self._retry_after())
            self._waiting += 1
        self._queue.put(job)
        return job

    def _retry_after(self) -> int:
        ahead = (self._busy + self._waiting) / self.workers
        return int(min(60, max(1, math.ceil(ahead * self._mean_s))))

    def stats(self) -> dict:
        with self._lock:
            return {"workers": self.workers, "busy": self._busy, "queued": self._waiting,
                    "queue_size": self.queue_size, **self.counts}

    def close(self) -> None:
        """Stop the workers after their current job; queued jobs are cancelled."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                self._waiting -= 1
                self._busy += 1
            t0 = time.perf_counter()
            try:
                outcome = self._run(job)
            except Exception:  # the job's cleanup failed; the worker carries on
                log.exception("job cleanup failed")
                outcome = "failed"
            with self._lock:
                self._busy -= 1
                self.counts[outcome] += 1
                if outcome == "completed":
                    self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - t0)

    def _run(self, job: Job) -> str:
        if job.cancelled or self._stop.is_set():
            return "cancelled"
        gen = None
        try:
            gen = job.fn()
            for item in gen:
                if not job._put(item):
                    return "cancelled"
            job._send("end", None)
            return "completed"
        except Exception as exc:  # handed to the consumer, which maps it to a response
            if not isinstance(exc, ValueError):
                log.exception("job failed")
            job._send("error", exc)
            return "failed"
        finally:
            if hasattr(gen, "close"):
                gen.close()     # runs the generator's cleanup now, on this thread
