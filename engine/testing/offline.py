"""Offline sessions: a flow against the in-process simulator, on virtual time.

`run_offline` runs the real `engine.runner.Session` (the core, the runner, the sinks, the trace)
against `Simulator.handle` over an `engine.loopback` connection, on an `engine.vloop` loop: no
socket, no sound device, no wall-clock wait. The clock jumps to the next timer whenever every task
waits, and work in threads (the outputs, the assessment) takes no session time, so the same inputs
give the same trace at any machine load, and a 5-minute interview costs a fraction of a second of
CPU. `engine test`, the test suite's end-to-end tests and the benchmarks run sessions this way.

Job faults (`job_faults`) stand in for a flow's background jobs: `fail` (the job raises),
`hang` (it never finishes: the flow's job timeout must act), or a number of seconds (the real
job's result, that long after the job started).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import vloop
from ..flow import Flow
from ..jobs import JobFn, registry
from ..realtime import CLOSE_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, Endpoint, in_process
from ..runner import Result, Session
from ..sim import Connection, Faults, Persona, SimStats, Simulator
from ..ui import PlainView

__all__ = ["run_offline", "OfflineRun", "JobFault", "faulty_job", "URL"]

URL = "ws://simulator.invalid/v1/realtime?model=gpt-realtime"  # never dialled: the connection is in memory
JobFault = Literal["fail", "hang"] | float  # float: seconds the job takes


@dataclass
class OfflineRun:
    """What an offline session left: the runner's Result, the simulator's counts, the Session."""

    result: Result
    sim: SimStats
    session: Session

    @property
    def folder(self) -> Path:
        """The session's outputs: trace.jsonl, report.json, report.md, transcript.md (and
        sessions.sqlite in its parent)."""
        return self.result.folder


def run_offline(
    flow: Flow,
    out: Path,
    *,
    persona: Persona | str | Path | None = None,
    seed: int = 0,
    faults: Faults | str = "",
    jobs: Mapping[str, JobFn] | None = None,
    job_faults: Mapping[str, JobFault] | None = None,
    session_id: str | None = None,
    endpoint: Endpoint | None = None,
    wrap: Callable[[Connection], Connection] | None = None,
    control: Callable[[Session, asyncio.Task[Result]], Coroutine[Any, Any, None]] | None = None,
    ping_interval: float | None = PING_INTERVAL,
    ping_timeout: float | None = PING_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    **options: Any,
) -> OfflineRun:
    """Run one session of `flow` against the simulator, in this thread, on virtual time.

    Args:
        out: the outputs go to `out/<session id>/` (and `out/sessions.sqlite`).
        persona, seed, faults: the simulator's (a Persona, a file, a bundled name; a Faults spec).
        jobs: the job functions (default: the installed ones); `job_faults` replaces some of them.
        endpoint: what the session believes it connects to (default: the simulator, no key).
        wrap: applied to the simulator's end of the connection (tests: a network that ends it).
        control: runs beside the session with it and its task (tests: cancel it at some point).
        ping_interval, ping_timeout, close_timeout: the client's keepalive, in session seconds.
        options: passed to `Session` (view, sinks, open_trace, trace_max_bytes, ...); the default
            view writes nowhere.

    Returns the OfflineRun once the session has finished and written its outputs. Raises
    `vloop.Deadlock` if the session can never go on (a bug: the core always has a deadline).
    """
    functions = dict(registry()) if jobs is None else dict(jobs)
    for name, fault in (job_faults or {}).items():
        functions[name] = faulty_job(fault, functions.get(name))
    options.setdefault("view", PlainView(io.StringIO()))

    async def main() -> OfflineRun:
        sim = Simulator(persona=persona, seed=seed, faults=faults)

        async def serve(connection: Connection) -> None:
            await sim.handle(wrap(connection) if wrap is not None else connection)

        connect = in_process(serve, ping_interval=ping_interval, ping_timeout=ping_timeout,
                             close_timeout=close_timeout)
        session = Session(flow, endpoint or Endpoint(URL, simulated=True), out=out, jobs=functions,
                          session_id=session_id, connect=connect, **options)
        loop = asyncio.get_running_loop()
        task = loop.create_task(session.run(), name="offline session")
        helper = None if control is None else loop.create_task(control(session, task), name="offline control")
        result = await task
        if helper is not None:
            helper.cancel()
            await asyncio.gather(helper, return_exceptions=True)
        return OfflineRun(result, sim.stats, session)

    return vloop.run(main())


def faulty_job(fault: JobFault, real: JobFn | None) -> JobFn:
    """A job that fails, hangs, or gives `real`'s result `fault` seconds after it started."""
    if fault == "fail":
        async def fails(inputs: Mapping[str, Any]) -> Any:
            raise RuntimeError("the job failed (a test's job fault)")

        return fails
    if fault == "hang":
        async def hangs(inputs: Mapping[str, Any]) -> Any:
            await asyncio.get_running_loop().create_future()  # until the flow's timeout cancels it

        return hangs
    seconds = float(fault)

    async def takes(inputs: Mapping[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if real is None:
            raise LookupError("no such job is installed")
        result = await real(inputs)
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return result

    if real is not None and hasattr(real, "warm_up"):
        takes.warm_up = real.warm_up  # type: ignore[attr-defined]  # the real job's warm-up still runs early
    return takes
