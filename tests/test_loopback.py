"""engine.loopback ends connections exactly as websockets does: each way a connection can end is
played once over a real socket on 127.0.0.1 and once over loopback, and the client must see the
same exception with the same Close frames."""

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from engine import loopback, vloop

KEEPALIVE = {"ping_interval": 0.05, "ping_timeout": 0.05, "close_timeout": 0.05}


async def server_closes_1000(ws):
    await ws.send("hello")
    await ws.close()


async def server_closes_1011(ws):
    await ws.send("hello")
    await ws.close(1011, "simulated failure")


async def server_aborts(ws):
    await ws.send("hello")
    ws.transport.abort()


async def server_sends_bad_utf8(ws):
    await ws.send("hello")
    await ws.send(b"\xff\xfe not utf-8", text=True)
    await ws.wait_closed()


async def server_freezes(ws):
    await ws.send("hello")
    ws.transport.pause_reading()  # answers no ping and no Close any more
    await asyncio.Event().wait()


SCENARIOS = [server_closes_1000, server_closes_1011, server_aborts, server_sends_bad_utf8, server_freezes]


def outcome(messages, exc):
    def frame(close):
        return None if close is None else (close.code, close.reason)
    return messages, type(exc).__name__, frame(exc.rcvd), frame(exc.sent)


async def client_side(ws):
    """Read until the connection ends; what was read and how it ended."""
    messages = []
    try:
        while True:
            messages.append(await ws.recv())
    except ConnectionClosed as exc:
        return outcome(messages, exc), ws.close_code


async def over_a_socket(handler):
    handlers = []

    async def serve_one(ws):
        handlers.append(asyncio.current_task())
        await handler(ws)

    async with serve(serve_one, "127.0.0.1", 0, ping_interval=None, close_timeout=0.05) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", **KEEPALIVE) as ws:
            result = await asyncio.wait_for(client_side(ws), 10)
        for task in handlers:  # a frozen server never learns that the client left
            task.cancel()
    return result


async def over_loopback(handler):
    client, server = loopback.pair("/", **KEEPALIVE)
    task = asyncio.create_task(handler(server))
    try:
        return await asyncio.wait_for(client_side(client), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("handler", SCENARIOS, ids=lambda h: h.__name__)
def test_loopback_ends_a_connection_like_a_real_socket(handler):
    real = asyncio.run(over_a_socket(handler))
    assert vloop.run(over_loopback(handler)) == real
    assert asyncio.run(over_loopback(handler)) == real


def test_the_expected_close_frames():
    """What the engine's transport relies on, spelled out."""
    results = {h.__name__: vloop.run(over_loopback(h)) for h in SCENARIOS}
    assert results["server_closes_1000"] == ((["hello"], "ConnectionClosedOK", (1000, ""), (1000, "")), 1000)
    assert results["server_closes_1011"][0][1:] == ("ConnectionClosedError", (1011, "simulated failure"),
                                                     (1011, "simulated failure"))
    assert results["server_aborts"] == ((["hello"], "ConnectionClosedError", None, None), 1006)
    assert results["server_sends_bad_utf8"][0][1:] == ("ConnectionClosedError", None,
                                                        (1007, "invalid start byte at position 0"))
    assert results["server_freezes"] == ((["hello"], "ConnectionClosedError", None,
                                          (1011, "keepalive ping timeout")), 1006)


def test_async_for_ends_quietly_on_a_normal_close_and_the_server_sees_the_client_close():
    async def main():
        client, server = loopback.pair("/v1/realtime?model=m", {"Authorization": "Bearer x"})
        assert server.request.path == "/v1/realtime?model=m"
        assert server.request.headers.get("authorization") == "Bearer x"
        await client.send("one")
        await client.send(b"two")
        await client.close()
        got = [m async for m in server]
        with pytest.raises(ConnectionClosed) as info:
            await server.send("too late")
        return got, server.close_code, type(info.value).__name__

    assert vloop.run(main()) == (["one", b"two"], 1000, "ConnectionClosedOK")


def test_a_frozen_peer_is_detected_after_ping_interval_plus_timeout_plus_close_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        client, server = loopback.pair(ping_interval=20, ping_timeout=20, close_timeout=10)
        server.transport.pause_reading()
        t0 = loop.time()
        with pytest.raises(ConnectionClosed):
            await client.recv()
        return loop.time() - t0

    assert vloop.run(main()) == pytest.approx(50.0)


def test_pings_are_answered_while_the_peer_reads():
    async def main():
        client, server = loopback.pair(ping_interval=1, ping_timeout=1)
        await asyncio.sleep(100)  # a hundred pings, all answered
        assert client.close_code is None
        await client.close()
        return client.close_code

    assert vloop.run(main()) == 1000
