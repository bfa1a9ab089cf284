"""Background jobs (the assessment): started and cancelled by the core, run in the session's TaskGroup.

A job is `async def job(inputs: Mapping) -> result` registered under the entry-point group
`engine.jobs`. It runs overlapped with the interview; CPU-bound work inside it goes through
`asyncio.to_thread`. Its outcome comes back to the core as `job.<name>.done` (data: result) or
`job.<name>.failed` (data: error). A failing job never takes the session down.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from .events import Event

__all__ = ["Jobs", "JobFn", "registry"]

JobFn = Callable[[Mapping[str, Any]], Awaitable[Any]]


@functools.cache
def registry() -> dict[str, JobFn]:
    """Installed jobs by name (entry points in group `engine.jobs`). Looked up once per process:
    reading every package's entry points takes ~14 ms, too long to block the loop per session."""
    return {ep.name: ep.load() for ep in entry_points(group="engine.jobs")}


class Jobs:
    def __init__(self, group: asyncio.TaskGroup, put: Callable[[Event], None], jobs: Mapping[str, JobFn]):
        self._group = group
        self._put = put
        self._jobs = jobs
        self._running: dict[str, asyncio.Task] = {}

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
            result = await self._jobs[name](inputs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure is an event for the flow, not a crash
            self._put(Event(f"job.{name}.failed", data={"error": f"{type(exc).__name__}: {exc}"}))
        else:
            self._put(Event(f"job.{name}.done", data={"result": result}))
        finally:
            if self._running.get(name) is asyncio.current_task():
                del self._running[name]
