"""The one way the engine runs an event loop: `run(main())`, on uvloop where it is installed, with
the garbage collector set for a process that keeps many sessions alive.

`engine run`, `chat`, `serve` and the benchmarks of them go through here, so the loop measured is
the loop shipped. uvloop (libuv, in C) wakes a task with far less work than asyncio's pure-Python
selector loop (400 sessions in one process: p99 lag 74 -> 40-50 ms with the collector set,
benchmarks/RESULTS.md §5b). Where uvloop cannot be installed (Windows) the standard loop runs the
same code. `engine sim` does not come here: a stand-in for a remote service keeps asyncio's
microsecond timers (engine/cli.py says why).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


# The collector's thresholds while sessions run: full collections 10x rarer. A full collection
# walks every live object; with 400 sessions alive it stopped the loop for ~0.3 s about every 37 s
# (every session's audio late, and a second of catching up after it). Young collections keep
# Python's 700: at 10,000 each took up to 42 ms, which the loop's lag showed as often.
GC_THRESHOLDS = (700, 10, 100)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the engine's loop, for a command's whole run (engine run, chat, serve;
    the benchmarks): what the process has loaded by then (modules, flows, schemas) is
    frozen out of the collector's sight, which then collects less often (GC_THRESHOLDS)."""
    gc.freeze()  # no collection first: it would cost the start-up ~50 ms to free a few KB
    gc.set_threshold(*GC_THRESHOLDS)
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)


def _factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
