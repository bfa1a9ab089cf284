"""The one way the engine runs an event loop: `run(main())`, on uvloop where it is installed.

Every command that carries sessions (run, chat, sim, serve) and every benchmark of them goes
through here, so the loop measured is the loop shipped. uvloop (libuv, in C) wakes a task with far
less work than asyncio's pure-Python selector loop: at 400 concurrent sessions in one process the
loop's p99 lag is less than half (benchmarks/RESULTS.md). Where uvloop cannot be installed
(Windows) the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the engine's loop."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)


def _factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
