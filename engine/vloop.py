"""A virtual-time asyncio event loop: real asyncio, simulated clock.

`VirtualLoop` is a stock `asyncio.SelectorEventLoop` with two changes:
1. `time()` reads a virtual clock that starts at 0.0;
2. its selector never waits on the network: asked to wait `timeout` seconds, it moves the clock
   forward by `timeout` and reports no I/O. The loop's own scheduling then runs the timers that
   are due.

So `asyncio.sleep`, `asyncio.wait_for`, `asyncio.timeout`, `loop.call_at` and `asyncio.Event`
behave exactly as in production, only no wall time passes: the clock jumps to the next timer
whenever every task is waiting.

Threads: work handed to `run_in_executor` (so `asyncio.to_thread` too) takes no virtual time.
While any is running the loop does not move the clock; it waits for real until a thread hands
something back (`call_soon_threadsafe` wakes it). So a session whose sinks or jobs run in threads
takes the same virtual path however slow the machine is. Other threads that call
`call_soon_threadsafe` on their own are not waited for.

Sockets are not supported (nothing ever becomes readable); use `engine.loopback` for connections.
A loop with nothing ready, no timer and no thread at work is a deadlock and raises `Deadlock`.

    result = vloop.run(main())
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import math
import selectors
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, TypeVarTuple

__all__ = ["VirtualLoop", "Deadlock", "Timeline", "run"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
THREAD_WAIT = 120.0  # real seconds a thread may take before the loop calls it a deadlock


class Deadlock(RuntimeError):
    """Every task waits and no timer is scheduled: nothing can ever happen again."""


class _VirtualSelector(selectors.BaseSelector):
    """Keeps the loop's registrations (its self-pipe) in a real selector, which it consults only
    while threads are at work; otherwise it reports no I/O and moves the clock."""

    def __init__(self, loop: VirtualLoop):
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._loop._threads:
            # A thread's result is on its way: take it at the present instant, not later.
            ready = self._real.select(THREAD_WAIT if timeout is None or timeout > 0 else 0)
            if not ready and timeout != 0:
                raise Deadlock(f"a thread has not handed back its work in {THREAD_WAIT:g} s")
            return ready
        if timeout is None:
            raise Deadlock("every task is waiting and no timer is scheduled")
        if timeout > 0:
            # Whole nanoseconds, rounded up: the clock always reaches the timer it waits for, so
            # code that re-checks `loop.time()` against its target cannot spin a hair short of it.
            self._loop._ns += max(1, math.ceil(timeout * 1e9))
        return self._real.select(0)  # a wake-up written to the self-pipe, if any

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return MappingProxyType(dict(self._real.get_map()))

    def close(self) -> None:
        self._real.close()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._ns = 0  # the virtual clock, in nanoseconds
        self._threads = 0  # executor jobs not yet handed back
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._ns / 1e9

    def run_in_executor(self, executor: concurrent.futures.Executor | None, func: Callable[[*Ts], T],
                        *args: *Ts) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self._threads += 1
        future.add_done_callback(self._handed_back)  # runs on the loop, after the result is set
        return future

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        self._threads += 1  # it joins the executor in a thread of its own
        try:
            await super().shutdown_default_executor()
        finally:
            self._threads -= 1

    def _handed_back(self, _: asyncio.Future[Any]) -> None:
        self._threads -= 1


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a fresh VirtualLoop: run `main`, cancel what is left, close the loop."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


class Timeline:
    """Callbacks at given times on a loop, run in (time, order of scheduling) order.

    asyncio's timer heap does not promise FIFO order for equal times; a simulated network and
    server need it (a WebSocket delivers in order). One loop timer serves the whole heap.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._armed = float("inf")
        self._handle: asyncio.TimerHandle | None = None
        self._firing = False
        self.closed = False

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        if self.closed:
            return
        heapq.heappush(self._heap, (when, next(self._seq), fn, args))
        if not self._firing and when < self._armed:
            self._arm(when)

    def close(self) -> None:
        self.closed = True
        self._heap.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # asyncio runs a timer once `when < time() + clock resolution`: what we armed for is due.
        now = max(self._loop.time(), self._armed)
        self._handle = None
        self._armed = float("inf")
        self._firing = True  # callbacks may schedule more: arm once, after the batch
        heap = self._heap
        try:
            while heap and heap[0][0] <= now and not self.closed:
                _, _, fn, args = heapq.heappop(heap)
                fn(*args)
        finally:
            self._firing = False
            if heap and not self.closed:
                self._arm(heap[0][0])
