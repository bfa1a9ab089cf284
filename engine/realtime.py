"""WebSocket transport to a Realtime server (OpenAI's, or any compatible one such as the simulator).

It only moves data: frames in become Events on the session inbox, effects' client events go out
as frames. Which server to use, the auth header, and keeping the API key out of every message live
here; every decision about the conversation lives in the core.

A dropped connection is not retried: a Realtime conversation does not survive its socket, so the
flow gets `session.closed` (its `reason` says how the connection ended) and decides (the default
ends the session, outputs saved). Keepalive pings end a connection to a server that stopped
answering (websockets' defaults: a ping every 20 s, 20 s to answer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from .errors import EngineError, RemoteProtocolError
from .events import Event, parse
from .trace import redact

__all__ = ["Endpoint", "choose_endpoint", "Transport", "Connect", "in_process", "OPENAI_URL",
           "PING_INTERVAL", "PING_TIMEOUT"]

OPENAI_URL = "wss://api.openai.com/v1/realtime"
MAX_FRAME = 16 * 1024 * 1024  # audio deltas can be large; the API allows 15 MiB appends
PING_INTERVAL = 20.0  # websockets' defaults
PING_TIMEOUT = 20.0
CLOSE_TIMEOUT = 10.0
# Query parameters whose values are credentials (besides any value equal to the key).
_CREDENTIAL_PARAMS = ("key", "token", "secret", "password", "auth", "signature", "sig")


@dataclass(frozen=True)
class Endpoint:
    url: str | None  # None: start the embedded simulator
    api_key: str | None = None
    simulated: bool = False  # the embedded simulator's own URL

    @property
    def kind(self) -> str:
        if self.url is None or self.simulated:
            return "simulator"
        return "openai" if self.url.startswith(OPENAI_URL) else "custom"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every string of this endpoint that must never be shown: the key (and its URL-quoted
        form), the URL's userinfo (and the Basic auth header made of it), credential-like query
        values."""
        found = [self.api_key] if self.api_key else []
        if self.url:
            parts = urlsplit(self.url)
            user, password = parts.username, parts.password
            if password:
                found.append(password)
            if user and (password or "@" in parts.netloc):
                found.append(user)  # a token is often passed as the user name alone
                pair = f"{user}:{password or ''}".encode()
                found.append(base64.b64encode(pair).decode())
            for name, value in parse_qsl(parts.query):
                if value and any(word in name.lower() for word in _CREDENTIAL_PARAMS):
                    found.append(value)
        found += [quote(s, safe="") for s in found]
        # Longest first: a secret that contains another is removed whole.
        return tuple(sorted({s for s in found if len(s) >= 3}, key=len, reverse=True))

    @property
    def display_url(self) -> str | None:
        """The URL with its userinfo and credentials removed, for messages."""
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = "***@" + netloc
        shown = urlunsplit(parts._replace(netloc=netloc))
        return redact(shown, self.secrets)

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint(url={self.display_url!r}, api_key={'***' if self.api_key else None})"


def choose_endpoint(url: str | None, model: str, env: Mapping[str, str] = os.environ) -> Endpoint:
    """`--realtime-url` wins; else OPENAI_API_KEY selects OpenAI; else the embedded simulator."""
    key = env.get("OPENAI_API_KEY") or None
    if url:
        return Endpoint(url, key)
    if key:
        return Endpoint(f"{OPENAI_URL}?{urlencode({'model': model})}", key)
    return Endpoint(None)


class WebSocket(Protocol):
    """What Transport needs of a connection: websockets' asyncio ClientConnection, or one end of
    `engine.loopback.pair()`."""

    async def send(self, message: str) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def transport(self) -> Any: ...


class Transport:
    """One WebSocket connection. `reader()` feeds the inbox until the socket closes.

    Args:
        ws: the connection.
        secrets: strings to remove from anything it reports (`Endpoint.secrets`).
        peer: a task serving the other end in this process (see `in_process`); closing waits
            for it, so no task outlives the session.
    """

    def __init__(self, ws: WebSocket, secrets: Iterable[str] = (), peer: asyncio.Task[None] | None = None):
        self._ws = ws
        self._secrets = tuple(secrets)
        self._peer = peer
        self.skipped = 0  # frames that were not events

    @classmethod
    async def connect(cls, endpoint: Endpoint, *, open_timeout: float = 15.0,
                      ping_interval: float | None = PING_INTERVAL, ping_timeout: float | None = PING_TIMEOUT,
                      close_timeout: float = CLOSE_TIMEOUT) -> Transport:
        """Open a real WebSocket to `endpoint`. Raises EngineError (one line, key removed)."""
        if endpoint.url is None:
            raise EngineError("no Realtime URL to connect to")
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel (a signal's) that
            # lands as the connection completes, and the interview would run on.
            async with asyncio.timeout(open_timeout + 1):
                ws = await ws_connect(endpoint.url, additional_headers=headers, max_size=MAX_FRAME,
                                      open_timeout=open_timeout, ping_interval=ping_interval,
                                      ping_timeout=ping_timeout, close_timeout=close_timeout)
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI, ValueError) as exc:
            # Exceptions may quote the request; keep the key out of anything we show.
            why = redact(str(exc) or type(exc).__name__, endpoint.secrets)
            raise EngineError(f"cannot connect to {endpoint.display_url}: {why}") from None
        return cls(ws, endpoint.secrets)

    async def send(self, event: Mapping[str, Any]) -> bool:
        """Send one client event; False if the connection is gone (the reader reports how)."""
        try:
            await self._ws.send(json.dumps(event, separators=(",", ":")))
        except ConnectionClosed:
            return False
        return True

    async def reader(self, put: Callable[[Event], None], note: Callable[[str], None]) -> None:
        """Put every server event on the inbox; a bad frame is noted and skipped; the end of the
        connection becomes `session.closed` with a `reason` (and the close `code`, if any)."""
        while True:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed as exc:
                closed = exc
                break
            try:
                event = parse(frame)
            except (RemoteProtocolError, RecursionError) as error:  # RecursionError: JSON nested too deep
                self.skipped += 1
                why = str(error) if isinstance(error, RemoteProtocolError) else "JSON nested too deep"
                note(f"skipped a bad frame: {redact(why, self._secrets)}")
                continue
            put(event)
        reason, code = self._why(closed)
        put(Event("session.closed", data={"reason": reason, "code": code}))

    def _why(self, exc: ConnectionClosed) -> tuple[str, int | None]:
        """How the connection ended, from the Close frames websockets reports."""
        def frame(close: Close) -> str:
            return f"{close.code}: {close.reason}" if close.reason else str(close.code)

        if exc.rcvd is not None:
            text, code = f"the server closed the connection ({frame(exc.rcvd)})", exc.rcvd.code
        elif exc.sent is not None:  # we failed it: keepalive timeout, invalid UTF-8, too big
            text, code = f"the engine closed the connection ({frame(exc.sent)})", exc.sent.code
        else:
            text, code = "the connection dropped without a close frame", None
        return redact(text, self._secrets), code

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection: the closing handshake, bounded by `timeout`, then drop it."""
        # Keep reading while closing: a stopped reader lets unread frames block the server's close
        # frame, and close() would wait its full timeout.
        drain = asyncio.create_task(self._drain())
        try:
            async with asyncio.timeout(timeout):
                await self._ws.close()
        except (TimeoutError, ConnectionClosed, OSError):
            self.abort()
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
        if self._peer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(self._peer, return_exceptions=True)
            self._peer.cancel()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        with contextlib.suppress(Exception):
            self._ws.transport.abort()

    async def _drain(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._ws.recv()


Connect = Callable[[Endpoint], Awaitable[Transport]]


def in_process(serve: Callable[[Any], Coroutine[Any, Any, None]], *, ping_interval: float | None = PING_INTERVAL,
               ping_timeout: float | None = PING_TIMEOUT, close_timeout: float = CLOSE_TIMEOUT) -> Connect:
    """A `connect` for Session that serves each connection in this process over
    `engine.loopback.pair()`: `serve(server_end)` runs as a task (e.g. `Simulator.handle`).
    No socket, so it runs on `engine.vloop.VirtualLoop` too."""
    from . import loopback

    async def connect(endpoint: Endpoint) -> Transport:
        parts = urlsplit(endpoint.url or "/v1/realtime")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        client, server = loopback.pair(path or "/", headers, ping_interval=ping_interval,
                                       ping_timeout=ping_timeout, close_timeout=close_timeout)
        peer = asyncio.get_running_loop().create_task(serve(server), name="in-process server")
        return Transport(client, endpoint.secrets, peer=peer)

    return connect
