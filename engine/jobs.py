"""Background jobs (the assessment): started and cancelled by the core, run in the session's TaskGroup.

A job is `async def job(inputs: Mapping) -> result` registered under the entry-point group
`engine.jobs`. It runs overlapped with the interview; CPU-bound work inside it goes through
`asyncio.to_thread`. Its outcome comes back to the core as `job.<name>.done` (data: result) or
`job.<name>.failed` (data: error). A failing job never takes the session down.

A job may have a `warm_up()` attribute (a plain function: load dictionaries, models). `warm_up()`
here starts those in threads, once per process, and returns at once: nothing slow runs before the
interview's first words. A job started before its warm-up has finished waits for it, off the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .events import Event

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["Jobs", "JobFn", "registry", "warm_up"]

JobFn = Callable[[Mapping[str, Any]], Awaitable[Any]]


class _Installed:
    """A job from an entry point, imported on first use: by its warm-up thread, or when it runs
    (importing the assessment costs ~150 ms, too long to spend before the interview starts)."""

    def __init__(self, ep: EntryPoint):
        self._ep = ep
        self._fn: JobFn | None = None
        self._lock = threading.Lock()
        self.__name__ = ep.name

    def load(self) -> JobFn:
        with self._lock:
            if self._fn is None:
                self._fn = self._ep.load()
            return self._fn

    def warm_up(self) -> None:
        hook = getattr(self.load(), "warm_up", None)
        if hook is not None:
            hook()

    async def __call__(self, inputs: Mapping[str, Any]) -> Any:
        return await self.load()(inputs)


class _Registry(Mapping[str, JobFn]):
    """The installed jobs, read from the entry points when first asked for (by the warm-ups, at
    the first response.created): reading every package's entry points takes ~14 ms, which
    `engine run` would otherwise spend before its first response.create."""

    @functools.cached_property
    def _jobs(self) -> dict[str, JobFn]:
        from importlib.metadata import entry_points

        return {ep.name: _Installed(ep) for ep in entry_points(group="engine.jobs")}

    def __getitem__(self, name: str) -> JobFn:
        return self._jobs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)


@functools.cache
def registry() -> Mapping[str, JobFn]:
    """Installed jobs by name (entry points in group `engine.jobs`), read once per process, when
    first used: too long to block the loop per session."""
    return _Registry()


_warm: dict[Callable[[], None], concurrent.futures.Future[None]] = {}  # per warm-up hook, per process
_warm_lock = threading.Lock()


def warm_up(jobs: Mapping[str, JobFn]) -> None:
    """Start each job's `warm_up()` in a daemon thread (once per process); return at once."""
    for fn in jobs.values():
        hook = getattr(fn, "warm_up", None)
        if hook is None:
            continue
        with _warm_lock:
            if hook in _warm:
                continue
            future = _warm[hook] = concurrent.futures.Future()
        threading.Thread(target=_warm_up, args=(hook, future), name="engine warm-up", daemon=True).start()


def _warm_up(hook: Callable[[], None], future: concurrent.futures.Future[None]) -> None:
    try:
        hook()
    except BaseException as exc:  # the job itself will fail or load what it needs
        future.set_exception(exc)
    else:
        future.set_result(None)


async def _warmed(fn: JobFn) -> None:
    """Wait for `fn`'s warm-up if it is still running, in a thread: the loop goes on meanwhile."""
    future = _warm.get(getattr(fn, "warm_up", None))  # type: ignore[arg-type]
    if future is not None and not future.done():
        with contextlib.suppress(Exception):  # a failed warm-up: the job loads what it needs itself
            await asyncio.to_thread(future.result)


class Jobs:
    def __init__(self, group: asyncio.TaskGroup, put: Callable[[Event], None], jobs: Mapping[str, JobFn]):
        self._group = group
        self._put = put
        self._jobs = jobs
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, inputs: Mapping[str, Any]) -> None:
        self.cancel(name)
        self._running[name] = self._group.create_task(self._run(name, inputs), name=f"job {name}")

    def cancel(self, name: str) -> None:
        task = self._running.pop(name, None)
        if task is not None:
            task.cancel()

    async def wait(self, timeout: float) -> None:
        """Let running jobs finish (bounded), then cancel what is left."""
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for name in list(self._running):
            self.cancel(name)

    async def _run(self, name: str, inputs: Mapping[str, Any]) -> None:
        try:
            fn = self._jobs.get(name)
            if fn is None:
                raise LookupError(f"no job named {name!r} is installed")
            await _warmed(fn)
            result = await fn(inputs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure is an event for the flow, not a crash
            self._put(Event(f"job.{name}.failed", data={"error": f"{type(exc).__name__}: {exc}"}))
        else:
            self._put(Event(f"job.{name}.done", data={"result": result}))
        finally:
            if self._running.get(name) is asyncio.current_task():
                del self._running[name]
