"""Dynamic batching: requests queue up; a single worker runs them together through the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

# run(texts) -> (one result per text, a tag naming what produced them, e.g. the prompt in use)
RunFn = Callable[[list[str]], tuple[list[Any], Any]]


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class BatcherBusy(RuntimeError):
    """Too many texts are already waiting (the service answers 503: try again later)."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What the worker has done so far (for tests and metrics)."""

    batches: int = 0
    texts: int = 0
    sizes: list[int] = field(default_factory=list)


class DynamicBatcher:
    """Collects requests up to `max_batch` texts or `max_wait_ms`, runs them as one model call.

    One request is never split across batches, so all its texts see the same prompt (the tag of its batch).
    The model runs in `executor` (one thread), so at most one batch is in the model at a time. When a batch
    fails, each of its requests is run alone, so only the request whose texts fail gets the error.
    At most `max_queued_texts` texts wait at a time; more are refused with `BatcherBusy`.
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queued_texts: int = 4096,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run = run
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.max_queued_texts = max_queued_texts
        self.queued_texts = 0  # submitted and not yet answered
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._carry: _Job | None = None

    @property
    def waiting(self) -> int:
        """Requests queued and not yet in a batch."""
        return self._queue.qsize() + (self._carry is not None)

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(), name="spul-batcher")

    async def submit(self, texts: list[str]) -> tuple[list[Any], Any]:
        """Queue texts; returns their results and the tag of the batch that ran them."""
        if self._closed or self._task is None:
            raise BatcherClosed("the service is shutting down" if self._closed else "batcher not started")
        if self.queued_texts + len(texts) > self.max_queued_texts:
            raise BatcherBusy(f"the service is busy ({self.queued_texts} texts waiting); retry shortly")
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        self._queue.put_nowait(_Job(list(texts), future))
        try:
            return await future
        finally:
            self.queued_texts -= len(texts)

    async def close(self) -> None:
        """Stop taking work, finish everything already queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task

    async def _next(self, timeout: float | None) -> _Job | None:
        """The carried-over job, else the next queued one (None = stop sentinel); TimeoutError if none."""
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _work(self) -> None:
        """Worker loop: gather a batch, run it in the executor, resolve the futures."""
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping or self._carry is not None:
            first = await self._next(None)
            if first is None:
                break
            jobs, size = [first], len(first.texts)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    job = await self._next(remaining) if remaining > 0 else self._queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if job is None:  # stop after this batch (and a carried job)
                    stopping = True
                    break
                if size + len(job.texts) > self.max_batch:
                    self._carry = job
                    break
                jobs.append(job)
                size += len(job.texts)
            await self._run(loop, [j for j in jobs if not j.future.done()])

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """Run one batch and hand each job its slice of the results; on failure run each job alone."""
        if not jobs:
            return
        texts = [t for job in jobs for t in job.texts]
        start = loop.time()
        try:
            results, tag = await loop.run_in_executor(self.executor, self.run, texts)
        except Exception as err:
            if len(jobs) > 1:  # find the request that failed; its batch-mates are answered
                for job in jobs:
                    await self._run(loop, [job])
            elif not jobs[0].future.done():
                jobs[0].future.set_exception(err)
            return
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.sizes.append(len(texts))
        if self.on_batch is not None:
            self.on_batch(len(texts), loop.time() - start)
        offset = 0
        for job in jobs:
            part = results[offset : offset + len(job.texts)]
            offset += len(job.texts)
            if not job.future.done():
                job.future.set_result((part, tag))
