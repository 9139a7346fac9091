"""Units of work in parallel processes, each on one thread, with one progress count.

Training is made deterministic by running one thread (``training.make_deterministic``): a
thread pool would change the order of floating-point sums with the core count. Independent units
(the tuning's workloads) can still use every core, each in its own single-threaded process:
what a unit computes does not depend on which process runs it, or on how many run beside it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import queue as queues
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Called with the number of run-updates just done (an increment, not a running total).
Progress = Callable[[int], None]
_REPORT_EVERY_S = 0.2  # how often a worker sends its count: a few messages a second
_queue: Any = None  # in a worker: where its progress goes
# A job of fewer run-updates than this per worker is not split further: halving it saves less
# time than starting the second worker costs (a process that imports torch: 1.5 to 3 s of CPU;
# a run-update: 7 to 15 us; docs/cluster.md#speed).
MIN_SPLIT_UPDATES = 500_000


def usable_cpus() -> int:
    """The CPUs this process may run on: fewer than the machine's under ``taskset`` or a
    container's CPU set, which ``os.cpu_count`` does not see."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worth_workers(updates: float) -> int:
    """How many workers a job of ``updates`` run-updates repays: one per
    :data:`MIN_SPLIT_UPDATES`, one at least."""
    return max(1, int(updates // MIN_SPLIT_UPDATES))


def _start_worker(progress_queue: Any) -> None:
    global _queue
    _queue = progress_queue
    from pipeline.trainer.runtime import make_deterministic

    make_deterministic()


class _Batched:
    """A worker's progress, sent a few times a second rather than at every update."""

    def __init__(self) -> None:
        self.pending, self.sent_at = 0, time.monotonic()

    def __call__(self, done: int) -> None:
        self.pending += done
        if time.monotonic() - self.sent_at >= _REPORT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            _queue.put(self.pending)
        self.pending, self.sent_at = 0, time.monotonic()


def _call(function: Callable[..., Any], arguments: tuple[Any, ...]) -> Any:
    progress = _Batched()
    try:
        return function(*arguments, progress)
    finally:
        progress.flush()


class Pool:
    """``map`` calls ``function(*arguments, progress)`` for each tuple of arguments, in
    ``workers`` processes (spawned: no torch state forked), or in this process with one."""

    def __init__(self, workers: int, progress: Progress) -> None:
        self.workers, self.progress = workers, progress
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.queue: Any = None

    def __enter__(self) -> Pool:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self.queue = context.Queue()
            self.executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_start_worker,
                initargs=(self.queue,),
            )  # fmt: skip
        return self

    def __exit__(self, error_type: object, *exc_info: object) -> None:
        if self.executor is None:
            return
        if error_type is not None:
            # A unit failed (or the stage was interrupted): the others' work is lost anyway,
            # so stop them now rather than wait for them (ProcessPoolExecutor has no public way).
            for process in list(getattr(self.executor, "_processes", {}).values()):
                process.terminate()
        self.executor.shutdown(wait=error_type is None, cancel_futures=True)

    def map(
        self,
        function: Callable[..., Any],
        arguments: Sequence[tuple[Any, ...]],
        costs: Sequence[float],
    ) -> list[Any]:
        """Results in the order of ``arguments``; the costliest units start first, so that the
        last to finish is a short one."""
        if self.executor is None:
            return [function(*args, self.progress) for args in arguments]
        order = sorted(range(len(arguments)), key=lambda i: -costs[i])
        futures = {i: self.executor.submit(_call, function, arguments[i]) for i in order}
        pending = set(futures.values())
        while pending:
            _, pending = concurrent.futures.wait(
                pending, timeout=_REPORT_EVERY_S, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            self._drain()
            failed = [f for f in futures.values() if f.done() and f.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
        self._drain()
        return [futures[i].result() for i in range(len(arguments))]

    def _drain(self) -> None:
        while True:
            try:
                self.progress(self.queue.get_nowait())
            except queues.Empty:
                return
