"""Merge requests from many coroutines into engine batches.

Strategies await their requests one call at a time; a runner keeps many queries
(and each query many branches) in flight. The batcher holds back the engine
until every coroutine that is ready has added its requests, then sends them as
one batch from a worker thread, so the event loop keeps filling the next batch
while the engine runs this one. A coroutine ``run_batch`` (a remote engine) is
awaited on the loop instead.

Cohorts. With two engines (a policy and its PRM), lockstep queries make them take
turns: every query generates, then every query is judged. ``run_queries(cohorts=2)``
tags each query's requests with its cohort (``COHORT``, a context variable the
query's task carries), and a batch takes the requests of one cohort only, the
longest-waiting first: while one cohort generates, the other is judged, so both
engines work at once where each has its own cores or device. ``max_batch`` caps a
batch's size; the rest wait for the next one.

A batch runs on a daemon thread of its own (``in_daemon_thread``), never in an
executor that exit joins: an engine call may never return. Where the engine runs in
processes of its own, ``check_engine`` (the backend's) is polled while a batch is in
flight, so that an engine whose process died fails the batch with ``EngineDied`` within
``ENGINE_CHECK_S`` instead of leaving its callers waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Generic, TypeVar, cast

from ttc.backends.base import BackendError, EngineUnavailable

J = TypeVar("J")
R = TypeVar("R")
T = TypeVar("T")

COHORT: ContextVar[int] = ContextVar("ttc_cohort", default=0)

# How often a batch in flight asks its backend whether the engine is still there.
ENGINE_CHECK_S = 1.0

# Engine calls in flight, each on its thread (``in_daemon_thread``).
_CALLS: set[threading.Thread] = set()


class EngineDied(EngineUnavailable):
    """The engine's process is gone (killed, out of memory): no request will be answered in this
    process again, so a run stops rather than record every query left as failed."""


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread(fn, *args)``, on a daemon thread of its own.

    An engine call can block for good: vLLM's offline client waits forever for the outputs of
    an engine core that died mid-batch. ``asyncio.run`` (3.11: no timeout) and the interpreter's
    exit join every executor thread, so Ctrl-C would then wait forever; a daemon thread is
    not joined, and ``wait_for_engine_calls`` bounds the wait for one.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if done.done():  # its caller was cancelled meanwhile
            return
        if exc is None:
            done.set_result(cast(T, result))
        else:
            done.set_exception(exc)

    def call() -> None:
        result: T | None = None
        exc: BaseException | None = None
        try:
            result = context.run(fn, *args)
        except BaseException as raised:  # the caller's to see, as to_thread would
            exc = raised
        finally:
            _CALLS.discard(threading.current_thread())
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it any more
            loop.call_soon_threadsafe(settle, result, exc)

    thread = threading.Thread(target=call, name="ttc-engine-call", daemon=True)
    _CALLS.add(thread)
    thread.start()
    return await done


def wait_for_engine_calls(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds in all for the engine calls in flight to return; True when
    none is left."""
    deadline = time.monotonic() + timeout
    for thread in list(_CALLS):
        thread.join(max(0.0, deadline - time.monotonic()))
    return not _CALLS


class MicroBatcher(Generic[J, R]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[J], int], list[R]] | Callable[[Sequence[J], int], Awaitable[list[R]]],
        max_batch: int | None = None,
        *,
        check_engine: Callable[[], None] | None = None,
    ) -> None:
        """``run_batch(jobs, batch_id)`` runs jobs on the engine, one result each; at most
        ``max_batch`` jobs at a time (None: all that are ready). ``check_engine()`` raises
        ``EngineDied`` once the engine cannot answer any more; it is called every
        ``ENGINE_CHECK_S`` while a batch runs on its thread."""
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be a positive number of requests or null (got {max_batch})")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._check_engine = check_engine
        self._pending: list[tuple[J, asyncio.Future[R], int]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    async def submit(self, jobs: Sequence[J]) -> list[R]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in jobs]
        cohort = COHORT.get()
        self._pending.extend((job, fut, cohort) for job, fut in zip(jobs, futures, strict=True))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _settle(self) -> None:
        """Yield to the loop until no coroutine adds more requests."""
        quiet = 0
        while quiet < 3:
            n = len(self._pending)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._pending) == n else 0

    async def _run(self, jobs: Sequence[J]) -> list[R]:
        if inspect.iscoroutinefunction(self._run_batch):
            results = await self._run_batch(jobs, next(self._ids))
        else:
            run_batch = cast(Callable[[Sequence[J], int], list[R]], self._run_batch)
            results = await self._watched(asyncio.ensure_future(in_daemon_thread(run_batch, jobs, next(self._ids))))
        if len(results) != len(jobs):  # a bug in run_batch: pairing results with jobs would misattribute them
            name = getattr(self._run_batch, "__qualname__", repr(self._run_batch))
            raise BackendError(f"{name} returned {len(results)} results for {len(jobs)} jobs (one each expected)")
        return list(results)

    async def _watched(self, call: asyncio.Future[T]) -> T:
        """``call``'s result, or ``check_engine``'s ``EngineDied`` as soon as the engine is gone (the
        call is then left on its daemon thread: it may never return)."""
        try:
            if self._check_engine is None:
                return await call
            while True:
                done, _ = await asyncio.wait({call}, timeout=ENGINE_CHECK_S)
                if done:
                    return call.result()
                self._check_engine()
        finally:
            call.cancel()  # a no-op once it is done; else nobody waits for it any more

    async def _drain(self) -> None:
        batch: list[tuple[J, asyncio.Future[R], int]] = []
        try:
            while self._pending:
                await self._settle()
                batch = self._take()
                await self._serve(batch)
                batch = []
        except BaseException as exc:
            # Whatever ended the drainer (a cancelled task, a bug here), no caller may wait
            # forever on a request it held or that was waiting for it.
            stranded, self._pending = [*batch, *self._pending], []
            cancelled = isinstance(exc, asyncio.CancelledError)
            for _, fut, _ in stranded:
                if fut.done():
                    continue
                if cancelled:
                    fut.cancel()
                else:
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):  # an Exception is now its callers' to see; the rest go on up
                raise

    def _take(self) -> list[tuple[J, asyncio.Future[R], int]]:
        """The next batch: the longest-waiting request's cohort, up to ``max_batch``."""
        cut = len(self._pending) if self.max_batch is None else self.max_batch
        cohort = self._pending[0][2]
        batch: list[tuple[J, asyncio.Future[R], int]] = []
        rest: list[tuple[J, asyncio.Future[R], int]] = []
        for item in self._pending:
            (batch if item[2] == cohort and len(batch) < cut else rest).append(item)
        self._pending = rest
        return batch

    async def _serve(self, batch: list[tuple[J, asyncio.Future[R], int]]) -> None:
        """Run one batch and settle each request's future."""
        try:
            results = await self._run([j for j, _, _ in batch])
        except EngineUnavailable as exc:  # no engine to run any of them: rerunning one by one won't help
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except Exception:
            pass
        else:
            for (_, fut, _), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
            return
        # One bad request must not fail its batch-mates: rerun them one by one.
        for job, fut, _ in batch:
            try:
                (res,) = await self._run([job])
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(res)


class OnItsOwn(Generic[J, R]):
    """``MicroBatcher``'s interface without the merging: each call's jobs are a batch of their own."""

    def __init__(self, run_batch: Callable[[Sequence[J], int], Awaitable[list[R]]]) -> None:
        self._run_batch = run_batch
        self._ids = itertools.count(1)

    async def submit(self, jobs: Sequence[J]) -> list[R]:
        return await self._run_batch(jobs, next(self._ids))
