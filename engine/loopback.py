"""An in-memory WebSocket pair that behaves like websockets' asyncio connections, without sockets.

`pair()` returns two connected ends, `(client, server)`. Each end offers the subset of
`websockets.asyncio.connection.Connection` that the engine's transport and the simulator use:
`send`, `recv`, `async for`, `close`, `ping`, `close_code`, `close_reason`, `request.path`,
`request.headers`, `transport.abort()` / `pause_reading()` / `resume_reading()`. They end the
way a real connection ends, with the same exceptions carrying the same Close frames
(`websockets.exceptions.ConnectionClosedOK` / `ConnectionClosedError`, `.rcvd`, `.sent`):

- `close(code, reason)`: closing handshake; the peer echoes the Close frame as soon as it reads.
- `transport.abort()`: the connection drops, no Close frame either way (close code 1006).
- a text frame that is not UTF-8 (`send(b"\\xff", text=True)`): the receiver fails the
  connection with 1007, as websockets does.
- `transport.pause_reading()`: the end stops reading, so it answers neither pings nor a Close;
  the other end's keepalive (`ping_interval`, `ping_timeout`) fails the connection with 1011
  "keepalive ping timeout", then gives up waiting for the peer after `close_timeout`.

Frames travel at once and in order; a paused end keeps them unread. Everything is timed by the
event loop's clock, so it runs unchanged on `engine.vloop.VirtualLoop`. Call `pair()` inside a
running loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close, CloseCode

__all__ = ["pair", "Connection", "Request"]

OK_CODES = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY)


@dataclass(frozen=True)
class Request:
    """The opening handshake as the server saw it (websockets' `Request`, the parts in use)."""

    path: str
    headers: Headers = field(default_factory=Headers)


class _State(Enum):
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True)
class _Frame:
    kind: str  # "text" | "binary" | "close" | "ping" | "pong"
    data: bytes = b""
    close: Close | None = None


class _Transport:
    """What the connection runs over: can be dropped or stop reading, like an asyncio transport."""

    def __init__(self, end: Connection):
        self._end = end

    def abort(self) -> None:
        """Drop the connection at once: no Close frame either way."""
        self._end._drop()

    def pause_reading(self) -> None:
        self._end._paused = True

    def resume_reading(self) -> None:
        self._end._paused = False
        self._end._read_wire()

    def is_reading(self) -> bool:
        return not self._end._paused


class Connection:
    """One end of a `pair()`. The API mirrors websockets' asyncio `Connection`."""

    def __init__(self, side: str, request: Request, *, ping_interval: float | None,
                 ping_timeout: float | None, close_timeout: float):
        self.side = side  # "client" | "server"
        self.request = request
        self.transport = _Transport(self)
        self.ping_interval, self.ping_timeout, self.close_timeout = ping_interval, ping_timeout, close_timeout
        self._peer: Connection = self  # set by pair()
        self._loop = asyncio.get_running_loop()
        self._state = _State.OPEN
        self._wire: deque[_Frame] = deque()  # arrived, not read yet (a paused end keeps them here)
        self._messages: deque[str | bytes] = deque()  # read, waiting for recv()
        self._paused = False
        self._failed = False  # after failing, an end ignores what still arrives (RFC 6455 7.1.7)
        self._changed = asyncio.Event()  # a message arrived or the state moved on
        self._pongs: deque[asyncio.Future[float]] = deque()
        self._give_up: asyncio.TimerHandle | None = None
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        self._keepalive = (self._loop.create_task(self._keep_alive(), name=f"loopback {side} keepalive")
                           if ping_interval is not None else None)

    # Public: websockets' API.

    @property
    def close_code(self) -> int | None:
        if self._state is not _State.CLOSED:
            return None
        return CloseCode.ABNORMAL_CLOSURE if self.close_rcvd is None else self.close_rcvd.code

    @property
    def close_reason(self) -> str | None:
        if self._state is not _State.CLOSED:
            return None
        return "" if self.close_rcvd is None else self.close_rcvd.reason

    async def send(self, message: str | bytes | Iterable[str | bytes], text: bool | None = None) -> None:
        # A fragmented message (an iterable) arrives as its parts: only whole messages matter here.
        parts: Iterable[str | bytes] = (message,) if isinstance(message, (str, bytes)) else message
        for part in parts:
            if self._state is not _State.OPEN:
                await self._wait_closed()
                raise self._close_exc()
            is_text = isinstance(part, str) if text is None else text
            data = part.encode() if isinstance(part, str) else bytes(part)
            self._transmit(_Frame("text" if is_text else "binary", data))

    async def recv(self, decode: bool | None = None) -> str | bytes:
        while not self._messages:
            if self._state is _State.CLOSED:
                raise self._close_exc()
            self._changed.clear()
            await self._changed.wait()
        message = self._messages.popleft()
        if decode is True and isinstance(message, bytes):
            return message.decode()
        if decode is False and isinstance(message, str):
            return message.encode()
        return message

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        if self._state is _State.OPEN:
            self._send_close(Close(code, reason))
        await self._wait_closed()

    async def wait_closed(self) -> None:
        await self._wait_closed()

    async def ping(self, data: bytes | None = None) -> asyncio.Future[float]:
        """Send a Ping; the returned future resolves (latency 0.0) when the Pong comes back."""
        if self._state is not _State.OPEN:
            await self._wait_closed()
            raise self._close_exc()
        pong: asyncio.Future[float] = self._loop.create_future()
        self._pongs.append(pong)
        self._transmit(_Frame("ping", data or b""))
        return pong

    async def pong(self, data: bytes = b"") -> None:
        if self._state is _State.OPEN:
            self._transmit(_Frame("pong", data))

    # Private: the wire.

    def _transmit(self, frame: _Frame) -> None:
        peer = self._peer
        if peer._state is _State.CLOSED:
            return  # the peer's socket is gone: what we write is lost
        peer._wire.append(frame)
        peer._read_wire()

    def _read_wire(self) -> None:
        while self._wire and not self._paused and self._state is not _State.CLOSED:
            self._read(self._wire.popleft())

    def _read(self, frame: _Frame) -> None:
        if self._failed:
            return
        if frame.kind == "text":
            try:
                self._messages.append(frame.data.decode())
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        elif frame.kind == "binary":
            self._messages.append(frame.data)
        elif frame.kind == "ping":
            self._transmit(_Frame("pong", frame.data))
        elif frame.kind == "pong":
            if self._pongs:
                pong = self._pongs.popleft()
                if not pong.done():
                    pong.set_result(0.0)
        elif frame.kind == "close":
            self._on_close(frame.close or Close(CloseCode.NO_STATUS_RCVD, ""))
        self._changed.set()

    def _on_close(self, close: Close) -> None:
        self.close_rcvd = close
        if self._state is _State.OPEN:  # the peer began the closing handshake: answer it
            self.close_sent = close
            self.close_rcvd_then_sent = True
            self._state = _State.CLOSING
            self._transmit(_Frame("close", close=close))
        # The handshake is complete here. The server then closes the TCP connection, which ends
        # both sides; a client waits for that (the server does it at once).
        if self.side == "server":
            self._drop()

    def _send_close(self, close: Close) -> None:
        self.close_sent = close
        self.close_rcvd_then_sent = False
        self._state = _State.CLOSING
        self._changed.set()
        self._transmit(_Frame("close", close=close))
        if self._state is _State.CLOSING:  # no answer yet (the peer is not reading): wait, then drop
            self._give_up = self._loop.call_later(self.close_timeout, self._drop)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (websockets' Protocol.fail): send a Close, read nothing more."""
        if self._state is _State.OPEN:
            self._failed = True
            self._send_close(Close(code, reason))
            if self.side == "server":  # a server closes TCP without waiting for the answer
                self._drop()

    def _drop(self) -> None:
        """The TCP connection is gone: both ends are closed (a paused end is told too)."""
        self._closed()
        self._peer._closed()

    def _closed(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._give_up is not None:
            self._give_up.cancel()
        if self._keepalive is not None and self._keepalive is not asyncio.current_task():
            self._keepalive.cancel()
        for pong in self._pongs:
            if not pong.done():
                pong.set_exception(self._close_exc())
                pong.exception()  # mark it retrieved: nobody may be waiting for it
        self._pongs.clear()
        self._changed.set()

    async def _wait_closed(self) -> None:
        while self._state is not _State.CLOSED:
            self._changed.clear()
            await self._changed.wait()

    def _close_exc(self) -> ConnectionClosed:
        rcvd, sent = self.close_rcvd, self.close_sent
        if rcvd is not None and sent is not None and rcvd.code in OK_CODES and sent.code in OK_CODES:
            return ConnectionClosedOK(rcvd, sent, self.close_rcvd_then_sent)
        return ConnectionClosedError(rcvd, sent, self.close_rcvd_then_sent if rcvd and sent else None)

    async def _keep_alive(self) -> None:
        assert self.ping_interval is not None
        try:
            while self._state is _State.OPEN:
                await asyncio.sleep(self.ping_interval)
                pong = await self.ping()
                if self.ping_timeout is None:
                    continue
                try:
                    async with asyncio.timeout(self.ping_timeout):
                        await pong
                except TimeoutError:
                    self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            return


def pair(path: str = "/", headers: Mapping[str, str] | None = None, *, ping_interval: float | None = None,
         ping_timeout: float | None = None, close_timeout: float = 10.0,
         server_ping_interval: float | None = None, server_ping_timeout: float | None = None,
         ) -> tuple[Connection, Connection]:
    """A connected (client, server) pair. `path` and `headers` are the opening request's; the
    keepalive options are the client's (websockets' defaults are 20 s / 20 s; None: no pings).
    `close_timeout` bounds how long an end waits for the peer's answer to its Close."""
    request = Request(path, Headers(headers or {}))
    client = Connection("client", request, ping_interval=ping_interval, ping_timeout=ping_timeout,
                        close_timeout=close_timeout)
    server = Connection("server", request, ping_interval=server_ping_interval,
                        ping_timeout=server_ping_timeout, close_timeout=close_timeout)
    client._peer, server._peer = server, client
    return client, server
