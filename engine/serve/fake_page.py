"""A candidate's page without a browser, for tests and benchmarks.

It speaks the page protocol (link.py) over a real WebSocket: says hello with its token, "plays" the
interviewer on the engine's own model of a speaker (`audio.VirtualPlayer` on the loop's clock, at
`speed`), sends back exactly the reports the browser's playback worklet sends, and streams
microphone frames (40 ms of pcm16 24 kHz) at real time. `drop()` cuts the connection without a
close frame, as a lost network does, and `run()` then rejoins once with the resume key, as the
page does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

from ..audio import VirtualPlayer
from ..events import Event

__all__ = ["FakePage", "PageResult"]

FRAME_BYTES = 1920  # 40 ms of pcm16 at 24 kHz


@dataclass
class PageResult:
    kind: str  # "ended" | "refused" | "closed"
    outcome: str | None = None  # of an ended interview
    reason: str | None = None  # of a refusal
    message: str = ""
    code: int | None = None  # the close code
    session: str | None = None


@dataclass
class FakePage:
    base_url: str
    token: str | None
    origin: str | None = "same"  # "same": this server's own origin; None: no Origin header
    speed: float = 1.0
    mic: bytes | None = b""  # pcm to send, looped; b"": silence; None: send nothing
    reconnect: bool = True
    received: Counter[str] = field(default_factory=Counter)  # message types (binary: "pcm")
    audio_bytes: int = 0
    transcripts: list[tuple[str, str]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    frames: list[str | bytes] = field(default_factory=list)  # every frame received, when `keep` is set
    keep: bool = False
    resume: str | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        self.seen: dict[str, asyncio.Event] = {}
        self._ws: ClientConnection | None = None
        self._player: VirtualPlayer | None = None
        self._current: tuple[str, str | None] | None = None
        self._dropped = False

    async def wait_for(self, kind: str, timeout: float = 30.0) -> None:
        """Until a message of this type has been received."""
        await asyncio.wait_for(self._event(kind).wait(), timeout)

    async def drop(self) -> None:
        """Cut the connection with no close frame (the network went away)."""
        self._dropped = True
        if self._ws is not None:
            self._ws.transport.abort()

    async def run(self) -> PageResult:
        loop = asyncio.get_running_loop()
        self._player = VirtualPlayer(self._report, clock=loop.time, call_at=loop.call_at, speed=self.speed)
        result = await self._connection()
        if result.kind == "closed" and self.reconnect and self.resume:
            result = await self._connection()
        await self._player.aclose()
        return result

    # Inside.

    async def _connection(self) -> PageResult:
        parts = urlsplit(self.base_url)
        url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/ws"
        origin = f"{parts.scheme}://{parts.netloc}" if self.origin == "same" else self.origin
        self._dropped = False
        async with connect(url, origin=origin, max_size=2**22, open_timeout=10) as ws:  # type: ignore[arg-type]
            self._ws = ws
            hello = {"type": "hello", "resume": self.resume} if self.resume else {"type": "hello", "token": self.token}
            with contextlib.suppress(websockets.ConnectionClosed):  # refused before it spoke: read why
                await ws.send(json.dumps(hello))
            mic = asyncio.create_task(self._microphone(ws))
            try:
                return await self._read(ws)
            finally:
                mic.cancel()
                self._ws = None

    async def _read(self, ws: ClientConnection) -> PageResult:
        result = PageResult("closed")
        try:
            async for frame in ws:
                if self.keep:
                    self.frames.append(frame)
                if isinstance(frame, bytes):
                    self._audio(frame)
                    continue
                m = json.loads(frame)
                kind = m.get("type")
                self.received[kind] += 1
                self._event(kind).set()
                if kind == "welcome":
                    self.resume, self.session = m["resume"], m["session"]
                elif kind == "audio":
                    self._current = (m["response"], m["item"])
                elif kind == "end":
                    self._play().end(m["response"])
                elif kind == "stop":
                    self._play().stop()
                elif kind == "transcript":
                    self.transcripts.append((m["role"], m["text"]))
                elif kind == "ended":
                    result = PageResult("ended", outcome=m["outcome"], message=m["message"])
                elif kind == "refused":
                    result = PageResult("refused", reason=m["reason"], message=m["message"])
        except websockets.ConnectionClosed:
            pass
        result.code = None if self._dropped else ws.close_code
        result.session = self.session
        return result

    def _audio(self, pcm: bytes) -> None:
        self.received["pcm"] += 1
        self.audio_bytes += len(pcm)
        if self._current is not None:
            self._play().feed(self._current[0], self._current[1], pcm)

    def _play(self) -> VirtualPlayer:
        assert self._player is not None
        return self._player

    def _report(self, event: Event) -> None:
        """The VirtualPlayer's event, sent as the browser's playback worklet reports it."""
        kind = event.type.split(".", 1)[1]
        report: dict[str, Any] = {"type": kind, "response": event.response_id, "item": event.item_id}
        report.update(event.data)
        self.reports.append(report)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                asyncio.ensure_future(self._ws.send(json.dumps(report)))

    async def _microphone(self, ws: ClientConnection) -> None:
        if self.mic is None:
            return
        await self.wait_for("welcome")
        source = self.mic or bytes(FRAME_BYTES)
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                at = (n * FRAME_BYTES) % len(source)
                frame = (source[at:] + source)[:FRAME_BYTES]
                await ws.send(frame)
                n += 1
                # Paced on the clock, not by sleeping a fixed 40 ms: no drift under load.
                await asyncio.sleep(max(0.0, start + n * 0.04 - loop.time()))

    def _event(self, kind: str) -> asyncio.Event:
        return self.seen.setdefault(kind, asyncio.Event())
