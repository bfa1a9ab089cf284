"""engine.vloop: real asyncio on a virtual clock; work in threads takes no virtual time."""

import asyncio
import threading

import pytest

from engine import vloop
from engine.vloop import Deadlock, VirtualLoop


def test_the_virtual_loop_runs_real_asyncio_on_simulated_time():
    async def main():
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        loop.call_later(2.5, ev.set)
        await asyncio.sleep(3)
        await ev.wait()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 5)
        return loop.time()

    loop = VirtualLoop()
    try:
        assert loop.run_until_complete(main()) == pytest.approx(8.0)
        with pytest.raises(Deadlock):
            loop.run_until_complete(asyncio.Event().wait())
    finally:
        loop.close()


def test_work_in_a_thread_takes_no_virtual_time():
    """A timer due at 0.5 s does not fire while a thread works: the loop waits for it for real."""
    order = []

    def work(loop):
        order.append(("thread starts", loop.time()))
        total = sum(range(300_000))  # real CPU time, a few ms
        order.append(("thread ends", loop.time()))
        return total

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, lambda: order.append(("timer", loop.time())))
        result = await asyncio.to_thread(work, loop)
        order.append(("result", loop.time()))
        await asyncio.sleep(1)
        return result, loop.time()

    assert vloop.run(main()) == (sum(range(300_000)), 1.0)
    assert order == [("thread starts", 0.0), ("thread ends", 0.0), ("result", 0.0), ("timer", 0.5)]


def test_a_thread_that_waits_for_the_loop_is_served_and_a_real_deadlock_still_raises():
    """Threads blocked on an event set from the loop: the loop keeps running its ready callbacks."""
    go = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(None, go.wait)
        loop.call_soon(go.set)
        assert await waiting is True
        await asyncio.Event().wait()  # nothing will ever set it

    with pytest.raises(Deadlock):
        vloop.run(main())


def test_run_cancels_what_is_left_and_closes_the_loop():
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(1)
        return "done"

    assert vloop.run(main()) == "done" and cancelled == [True]
