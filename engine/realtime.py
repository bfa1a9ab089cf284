"""WebSocket transport to a Realtime server (OpenAI's, or any compatible one such as the simulator).

It only moves data: frames in become Events on the session inbox, effects' client events go out
as frames. Which server to use, the auth header, and keeping the API key out of every message live
here; every decision about the conversation lives in the core.

A dropped connection is not retried: a Realtime conversation does not survive its socket, so the
flow gets `session.closed` and decides (the default ends the session, outputs saved).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .errors import EngineError, RemoteProtocolError
from .events import Event, parse
from .trace import redact

__all__ = ["Endpoint", "choose_endpoint", "Transport", "OPENAI_URL"]

OPENAI_URL = "wss://api.openai.com/v1/realtime"
MAX_FRAME = 16 * 1024 * 1024  # audio deltas can be large; the API allows 15 MiB appends


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

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint(url={self.url!r}, api_key={'***' if self.api_key else None})"


def choose_endpoint(url: str | None, model: str, env: Mapping[str, str] = os.environ) -> Endpoint:
    """`--realtime-url` wins; else OPENAI_API_KEY selects OpenAI; else the embedded simulator."""
    key = env.get("OPENAI_API_KEY") or None
    if url:
        return Endpoint(url, key)
    if key:
        return Endpoint(f"{OPENAI_URL}?{urlencode({'model': model})}", key)
    return Endpoint(None)


class Transport:
    """One WebSocket connection. `reader()` feeds the inbox until the socket closes."""

    def __init__(self, ws: ClientConnection, secret: str | None):
        self._ws = ws
        self._secret = secret

    @classmethod
    async def connect(cls, endpoint: Endpoint, timeout: float = 15.0) -> Transport:
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        try:
            ws = await asyncio.wait_for(
                connect(endpoint.url, additional_headers=headers, max_size=MAX_FRAME, open_timeout=timeout),
                timeout + 1,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            # Exceptions may quote the request; keep the key out of anything we show.
            raise EngineError(f"cannot connect to {endpoint.url}: "
                              f"{redact(str(exc) or type(exc).__name__, endpoint.api_key)}") from None
        return cls(ws, endpoint.api_key)

    async def send(self, event: Mapping[str, Any]) -> None:
        await self._ws.send(json.dumps(event, separators=(",", ":")))

    async def reader(self, put: Callable[[Event], None], note: Callable[[str], None]) -> None:
        """Put every server event on the inbox; a bad frame is noted and skipped; the end of the
        connection becomes `session.closed`."""
        reason = "closed by the client"
        try:
            async for frame in self._ws:
                try:
                    put(parse(frame))
                except RemoteProtocolError as exc:
                    note(f"skipped a bad frame: {redact(str(exc), self._secret)}")
        except websockets.ConnectionClosed as exc:
            reason = self._why(exc)
        else:
            reason = self._why(None)
        put(Event("session.closed", data={"reason": reason}))

    def _why(self, exc: websockets.ConnectionClosed | None) -> str:
        close = (exc.rcvd if exc is not None else None) or self._ws.protocol.close_rcvd
        if close is None:
            return "the connection dropped"
        text = f"server closed the connection ({close.code}"
        return text + (f": {redact(close.reason, self._secret)})" if close.reason else ")")

    async def close(self) -> None:
        # Keep reading while closing: a stopped reader lets unread frames block the server's close
        # frame, and close() would wait its full timeout.
        drain = asyncio.create_task(self._drain())
        try:
            await self._ws.close()
        finally:
            drain.cancel()

    async def _drain(self) -> None:
        try:
            async for _ in self._ws:
                pass
        except websockets.ConnectionClosed:
            pass
