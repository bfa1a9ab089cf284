"""A virtual-time asyncio event loop: real asyncio, simulated clock.

`VirtualLoop` is a stock `asyncio.SelectorEventLoop` with two changes:
1. `time()` reads a virtual clock that starts at 0.0;
2. its selector never blocks: asked to wait `timeout` seconds for I/O, it moves the clock forward
   by `timeout` and reports no I/O. The loop's own scheduling then runs the timers that are due.

So `asyncio.sleep`, `asyncio.wait_for`, `asyncio.timeout`, `loop.call_at` and `asyncio.Event`
behave exactly as in production, only no wall time passes: the clock jumps to the next timer
whenever every task is waiting. Sockets are not supported (nothing ever becomes readable); a
loop with nothing ready and no timer is a deadlock and raises `Deadlock`.

    loop = VirtualLoop()
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.close()
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from types import MappingProxyType
from typing import Any, Callable

__all__ = ["VirtualLoop", "Deadlock", "Timeline"]


class Deadlock(RuntimeError):
    """Every task waits and no timer is scheduled: nothing can ever happen again."""


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0


class _VirtualSelector(selectors.BaseSelector):
    """Keeps registrations (the loop registers its self-pipe) but never reports I/O."""

    def __init__(self, clock: _Clock):
        self._clock = clock
        self._keys: dict[int, selectors.SelectorKey] = {}

    @staticmethod
    def _fd(fileobj: Any) -> int:
        return fileobj if isinstance(fileobj, int) else fileobj.fileno()

    def register(self, fileobj, events, data=None):
        key = selectors.SelectorKey(fileobj, self._fd(fileobj), events, data)
        self._keys[key.fd] = key
        return key

    def unregister(self, fileobj):
        return self._keys.pop(self._fd(fileobj))

    def modify(self, fileobj, events, data=None):
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout=None):
        if timeout is None:
            raise Deadlock("every task is waiting and no timer is scheduled")
        if timeout > 0:
            self._clock.now += timeout
        return []

    def get_map(self):
        return MappingProxyType(self._keys)

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._vclock = _Clock()
        super().__init__(_VirtualSelector(self._vclock))

    def time(self) -> float:
        return self._vclock.now


class Timeline:
    """Callbacks at given times on a loop, run in (time, order of scheduling) order.

    asyncio's timer heap does not promise FIFO order for equal times; a simulated network and
    server need it (a WebSocket delivers in order). One loop timer serves the whole heap.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._heap: list[tuple[float, int, Callable[..., None], tuple]] = []
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
