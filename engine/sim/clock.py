"""Simulated time for one session: every timed action of the session in simulated-time order.

Only `loop.time()` and asyncio timers are read, so a session runs the same on a virtual-time loop
(engine.vloop) as on a real one, at any `speed`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

__all__ = ["Clock", "Timeline"]


class Clock:
    """The simulated time of one session, and the order of everything timed in it (rule 2).

    Each actor (a response stream, a candidate answer) owns a `Timeline` and awaits `at(t)` before
    each timed action. The action runs once real time has reached ``t / speed`` *and* no other
    timeline has an earlier action pending (ties go to the older timeline). So actions happen in
    simulated-time order even when sending lags behind real time (flow control, a busy loop), and a
    session takes the same path at any speed. A client event is placed at the present: `settle()`
    lets everything due before it happen first.
    """

    def __init__(self, speed: float):
        self.speed = speed
        self.now = 0.0  # simulated seconds of the latest action
        self.changed = asyncio.Event()  # replaced and set whenever a waiter may be able to go on
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._pending: dict[int, float] = {}  # timeline id -> time of its next action
        self._ids = itertools.count()

    def timeline(self, first: float) -> Timeline:
        """A new actor whose first action is at simulated time `first`; nothing later may pass it."""
        timeline = Timeline(self, next(self._ids))
        self._pending[timeline.id] = first
        return timeline

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def present(self) -> float:
        """Move `now` up to the wall clock (for what a client event starts) and return it."""
        self.now = max(self.now, self._wall())
        return self.now

    async def settle(self) -> None:
        """Let every action due before the present happen first (a client event arrives now)."""
        present = max(self.now, self._wall())
        while any(t < present for t in self._pending.values()):
            await self.changed.wait()

    def _wall(self) -> float:
        return (self._loop.time() - self._t0) * self.speed

    def _first(self, ident: int) -> bool:
        mine = (self._pending[ident], ident)
        return all((t, other) >= mine for other, t in self._pending.items())

    def _delay(self, t: float) -> float:
        return self._t0 + t / self.speed - self._loop.time()


class Timeline:
    """One actor's place in the session's simulated time (see `Clock`)."""

    def __init__(self, clock: Clock, ident: int):
        self.clock, self.id = clock, ident

    async def at(self, t: float, interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Wait for simulated time `t`, in order with the other timelines; False if `interrupted()`."""
        clock = self.clock
        clock._pending[self.id] = t
        clock.notify()  # moving on may let another timeline go
        reached = False
        while not interrupted():
            # The timer for `t` has run: `t` has come, though uvloop's millisecond clock may still
            # read a hair earlier (waiting for the clock to agree would spin the loop).
            reached = reached or clock._delay(t) <= 0
            if reached and clock._first(self.id):
                clock.now = max(clock.now, t)
                return True
            try:
                async with asyncio.timeout(None if reached else clock._delay(t)):
                    await clock.changed.wait()
            except TimeoutError:
                reached = True
        return False

    def close(self) -> None:
        self.clock._pending.pop(self.id, None)
        self.clock.notify()
