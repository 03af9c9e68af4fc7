"""One executor interface for data generation and QT-Opt collection.

`make_executor(workers, use_ray)` returns an object with ``map_unordered(fn, items)``
yielding ``(item, result)`` as tasks finish.  The default is a local process pool
(spawn context: pybullet and torch are not fork-safe once initialised); with
``use_ray`` (or ``RAY_ADDRESS`` set) the same function runs as Ray tasks.  No cluster
machinery of our own: Ray does the distribution.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator


class WorkerError(RuntimeError):
    """A worker process died or raised; the message names the task."""


class LocalExecutor:
    """A local process pool.  With workers == 1 tasks run in-process (easy to debug)."""

    name = "local"

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        items = list(items)
        if self.workers == 1:
            for item in items:
                yield item, fn(item)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        pending: dict[Any, Any] = {}
        queue = iter(items)
        # Keep at most 2 tasks per worker in flight so a kill loses little and memory stays flat.
        for item in queue:
            pending[self._pool.submit(fn, item)] = item
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # BrokenProcessPool included
                    raise WorkerError(f"task {item!r} failed in a worker: {exc!r}") from exc
                yield item, result
                nxt = next(queue, None)
                if nxt is not None:
                    pending[self._pool.submit(fn, nxt)] = nxt

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayExecutor:
    """The same interface on Ray: a local Ray instance, or the cluster at RAY_ADDRESS."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise WorkerError("--ray needs the 'ray' extra: pip install 'rcan_bringup[ray]'") from exc
        self._ray = ray
        self.workers = workers
        # Shut Ray down on close only if this executor started it (a caller's session stays up).
        self._owns = not ray.is_initialized()
        if self._owns:
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, ignore_reinit_error=True,
                         log_to_driver=False)

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self._ray
        remote_fn = ray.remote(num_cpus=1)(fn)
        queue = iter(items)
        pending: dict[Any, Any] = {}
        for item in queue:
            pending[remote_fn.remote(item)] = item
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            item = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:
                raise WorkerError(f"task {item!r} failed in a Ray worker: {exc!r}") from exc
            yield item, result
            nxt = next(queue, None)
            if nxt is not None:
                pending[remote_fn.remote(nxt)] = nxt

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(workers: int, use_ray: bool = False) -> LocalExecutor | RayExecutor:
    if use_ray or os.environ.get("RAY_ADDRESS"):
        return RayExecutor(workers)
    return LocalExecutor(workers)
