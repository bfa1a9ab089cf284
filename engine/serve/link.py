"""One candidate's page and its session: the relay between the browser's WebSocket and the Session.

It only moves data. Microphone frames from the page become the session's `audio_input`; what the
session plays and says becomes messages to the page; the page's playback reports go to the
`BrowserPlayer`. Every decision stays in the core.

The page protocol (one WebSocket, `/ws`; text frames are JSON, binary frames are pcm16 24 kHz mono):

    page -> engine   {"type": "hello", "token": T} | {"type": "hello", "resume": R}   first frame
                     binary: microphone audio
                     {"type": "started"|"progress"|"done"|"stopped", ...}   playback reports (player.py)
    engine -> page   {"type": "welcome", "session": id, "resume": R}
                     {"type": "audio", "response", "item"}, then binary frames of that item's audio
                     {"type": "end", "response"}    {"type": "stop"}    (barge-in: flush and report)
                     {"type": "status", "state": "listening"|"thinking"}
                     {"type": "transcript", "role": "interviewer"|"candidate", "text", ["response"]}
                     {"type": "ended", "outcome", "message"}   then close 1000
                     {"type": "refused", "reason", "message"}  then close 4xxx

A dropped page has `resume_window` seconds to come back with its resume key (the page retries
once); meanwhile the session goes on and messages for the page wait in a bounded outbox. After
that the session is told `session.closed`, and the flow ends it (saved) as for any lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.websockets import WebSocket

from ..events import Event
from .player import BrowserPlayer

__all__ = ["PageLink", "MIC_FRAME_MAX", "OUTBOX_MAX"]

MIC_FRAME_MAX = 64 * 1024  # bytes in one microphone frame (the page sends 40 ms = 1,920 bytes)
MIC_RATE = 48_000  # bytes per second of pcm16 24 kHz mono
MIC_BURST_S = 2.0  # a page may send this much audio ahead of real time (a reconnect flushes a little)
OUTBOX_MAX = 8 * 1024 * 1024  # bytes waiting for a slow or absent page (~80 s of audio)
MIC_QUEUE = 500  # microphone frames waiting for the Realtime socket (~20 s)
MIC_BATCH = 10  # frames at most in one append (~400 ms)


class PageLink:
    """The session side of one candidate's page, across WebSocket reconnects."""

    def __init__(self, session_id: str, *, resume_window: float, on_gone: Callable[[str], None]):
        self.session_id = session_id
        self.resume_key = secrets.token_urlsafe(24)
        self.resume_window = resume_window
        self.player = BrowserPlayer(self.send)
        self.ended = False
        self.stats = {"mic_frames": 0, "mic_dropped": 0, "out_dropped": 0, "reports_ignored": 0, "reconnects": 0}
        self._on_gone = on_gone  # told once when the page is gone for good (the session must end)
        self._outbox: deque[str | bytes] = deque()
        self._outbox_bytes = 0
        self._wake = asyncio.Event()
        self._mic: asyncio.Queue[bytes | None] = asyncio.Queue(MIC_QUEUE)
        self._bucket = (MIC_BURST_S * MIC_RATE, time.monotonic())  # (allowance in bytes, when)
        self._ws: WebSocket | None = None
        self._attachments = 0
        self._gone_timer: asyncio.TimerHandle | None = None

    # The session's side.

    def send(self, frame: str | bytes) -> None:
        """Queue a frame for the page (never blocks). Over the outbox bound audio is dropped."""
        if self.ended:
            return
        size = len(frame)
        if isinstance(frame, bytes) and self._outbox_bytes + size > OUTBOX_MAX:
            self.stats["out_dropped"] += 1
            return
        self._outbox.append(frame)
        self._outbox_bytes += size
        self._wake.set()

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(json.dumps(message, separators=(",", ":")))

    async def microphone(self) -> AsyncIterator[bytes]:
        """The candidate's audio as the page sent it, until the session ends. Frames that have
        piled up while the relay was busy go out as one append: fewer, larger messages exactly when
        the process is loaded, and no added delay when it is not."""
        while (chunk := await self._mic.get()) is not None:
            parts = [chunk]
            while not self._mic.empty() and len(parts) < MIC_BATCH:
                more = self._mic.get_nowait()
                if more is None:
                    yield b"".join(parts)
                    return
                parts.append(more)
            yield b"".join(parts)

    async def finish(self, outcome: str, message: str) -> None:
        """The session is over: tell the page, let it read that, and close."""
        if self._gone_timer is not None:
            self._gone_timer.cancel()
        self.send_json({"type": "ended", "outcome": outcome, "message": message})
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._drained()
        self.ended = True
        self._wake.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._mic.put_nowait(None)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "interview over")

    # The page's side.

    async def attach(self, ws: WebSocket) -> None:
        """Serve one WebSocket of the page until it closes (or the session ends)."""
        if self._ws is not None:  # a newer connection wins; the old one is closed
            with contextlib.suppress(Exception):
                await self._ws.close(4409, "replaced by a newer connection")
        self._attachments += 1
        self.stats["reconnects"] = self._attachments - 1
        if self._gone_timer is not None:
            self._gone_timer.cancel()
            self._gone_timer = None
        self._ws = ws
        # The welcome goes first on this connection, before whatever waited for the page.
        welcome = json.dumps({"type": "welcome", "session": self.session_id, "resume": self.resume_key})
        self._outbox.appendleft(welcome)
        self._outbox_bytes += len(welcome)
        writer = asyncio.create_task(self._writer(ws))
        try:
            await self._reader(ws)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self._ws is ws:
                self._ws = None
                if not self.ended:
                    loop = asyncio.get_running_loop()
                    self._gone_timer = loop.call_later(self.resume_window, self._gone)

    def _gone(self) -> None:
        self._gone_timer = None
        if self._ws is None and not self.ended:
            self._on_gone(self.session_id)

    async def _reader(self, ws: WebSocket) -> None:
        while not self.ended:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                self._microphone_frame(message["bytes"])
            elif message.get("text") is not None:
                self._report(message["text"])

    async def _writer(self, ws: WebSocket) -> None:
        while not self.ended or self._outbox:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = self._outbox[0]
            try:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_text(frame)
            except Exception:
                return  # the page is gone; the frame stays for a reconnect
            self._outbox.popleft()
            self._outbox_bytes -= len(frame)
            if not self._outbox:
                self._wake.set()  # wakes _drained

    async def _drained(self) -> None:
        while self._outbox and self._ws is not None:
            self._wake.clear()
            await self._wake.wait()

    def _microphone_frame(self, pcm: bytes) -> None:
        allowance, when = self._bucket
        now = time.monotonic()
        allowance = min(MIC_BURST_S * MIC_RATE, allowance + (now - when) * MIC_RATE)
        if len(pcm) > MIC_FRAME_MAX or len(pcm) > allowance:
            self._bucket = (allowance, now)
            self.stats["mic_dropped"] += 1  # faster than real time, or oversized: not relayed
            return
        self._bucket = (allowance - len(pcm), now)
        pcm = pcm[: len(pcm) // 2 * 2]
        try:
            self._mic.put_nowait(pcm)
            self.stats["mic_frames"] += 1
        except asyncio.QueueFull:
            self.stats["mic_dropped"] += 1

    def _report(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or len(text) > 16_384:
            self.stats["reports_ignored"] += 1
            return
        self.player.report(message)


def closed_event() -> Event:
    """What the session is told when its page is gone for good."""
    return Event("session.closed", data={"reason": "the candidate's page disconnected"})
