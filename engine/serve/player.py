"""The candidate's browser as the engine's speaker: an `audio.Player` whose clock is the page's.

The runner calls feed/end/stop as it does for a sound device; each becomes a message to the page
(queued by `send`, never blocking). The page's playback worklet plays the audio and reports what it
has actually rendered; `report()` turns those reports into the events every player gives:

    page says                                          engine event
    {"type": "started", "response", "item"}            playback.started
    {"type": "progress", "item", "played_ms"}          (kept for played_ms())
    {"type": "done", "response", "item", "played_ms"}  playback.done    (heard, not arrived)
    {"type": "stopped", "response", "item", "played_ms", "dropped"}     playback.stopped

The page is not trusted: a report may only name responses and items this player sent, and its
`played_ms` is capped at the audio sent for that item (a truncate past the end is an API error).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..audio import Emit
from ..events import Event

__all__ = ["BrowserPlayer"]

Send = Callable[[str | bytes], None]


def _ms(n_bytes: int) -> int:
    return n_bytes // 48  # pcm16, 24 kHz, mono


class BrowserPlayer:
    """Plays through the page. `emit` (the session's inbox) may be set after construction."""

    def __init__(self, send: Send, emit: Emit | None = None):
        self.emit = emit
        self._send = send
        self._sent: dict[str, int] = {}  # response id -> bytes of audio sent, in the order first seen
        self._items: dict[str, int] = {}  # item id -> bytes of audio sent
        self._played: dict[str, int] = {}  # item id -> ms the page says it has rendered
        self._ended: set[str] = set()  # end() called
        self._closed_for_audio: set[str] = set()  # stopped: later feeds and ends are ignored
        self._reported: set[str] = set()  # playback.done or dropped already told
        self._current: tuple[str, str | None] | None = None  # what the binary frames now belong to
        self._closed = False

    # The runner's calls (audio.Player).

    def feed(self, response_id: str, item_id: str | None, pcm: bytes) -> None:
        if self._closed or response_id in self._closed_for_audio or response_id in self._ended:
            return
        pcm = pcm[: len(pcm) // 2 * 2]
        self._sent.setdefault(response_id, 0)
        if not pcm:
            return
        if self._current != (response_id, item_id):
            self._current = (response_id, item_id)
            self._json({"type": "audio", "response": response_id, "item": item_id})
        self._send(pcm)
        self._sent[response_id] += len(pcm)
        if item_id is not None:
            self._items[item_id] = self._items.get(item_id, 0) + len(pcm)

    def feed_base64(self, response_id: str, item_id: str | None, audio: str) -> None:
        """`feed` for audio as the server sends it: the page needs the samples, so decode."""
        self.feed(response_id, item_id, base64.b64decode(audio))

    def end(self, response_id: str) -> None:
        if self._closed or response_id in self._closed_for_audio or response_id in self._ended:
            return
        self._ended.add(response_id)
        self._sent.setdefault(response_id, 0)
        self._json({"type": "end", "response": response_id})

    def stop(self) -> None:
        if self._closed:
            return
        # Everything sent so far is flushed by the page; audio of these responses still on its way
        # from the server must not start a new queue there.
        self._closed_for_audio.update(self._sent)
        self._current = None
        self._json({"type": "stop"})

    def played_ms(self, item_id: str) -> int:
        return self._played.get(item_id, 0)

    def record_input(self, pcm: bytes) -> None:
        """The server keeps no recording of the candidate (nothing to do)."""

    async def aclose(self) -> None:
        self._closed = True

    # The page's reports.

    def report(self, message: Mapping[str, Any]) -> None:
        """One playback report from the page; anything malformed or unknown is ignored."""
        kind = message.get("type")
        rid = self._known_response(message.get("response"))
        item = self._known_item(message.get("item"))
        played = self._played_ms(message.get("played_ms"), item)
        if kind == "progress" and item is not None:
            self._played[item] = max(self._played.get(item, 0), played)
        elif kind == "started" and rid is not None:
            self._emit(Event("playback.started", response_id=rid, item_id=item))
        elif kind == "done" and rid is not None and rid not in self._reported:
            self._reported.add(rid)
            total = min(self._played_ms(message.get("played_ms"), None), _ms(self._sent[rid]))
            self._emit(Event("playback.done", response_id=rid, item_id=item, data={"played_ms": total}))
        elif kind == "stopped":
            dropped = [r for r in message.get("dropped") or [] if self._known_response(r) and r not in self._reported]
            self._reported.update(dropped)
            if item is not None:
                self._played[item] = played
            data = {"played_ms": played if item is not None else 0, "dropped": dropped}
            self._emit(Event("playback.stopped", response_id=rid, item_id=item, data=data))

    # Inside.

    def _known_response(self, value: Any) -> str | None:
        return value if isinstance(value, str) and value in self._sent else None

    def _known_item(self, value: Any) -> str | None:
        return value if isinstance(value, str) and value in self._items else None

    def _played_ms(self, value: Any, item: str | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            return 0
        ms = int(min(value, 24 * 3600 * 1000))
        return min(ms, _ms(self._items[item])) if item is not None else ms

    def _json(self, message: dict[str, Any]) -> None:
        self._send(json.dumps(message, separators=(",", ":")))

    def _emit(self, event: Event) -> None:
        if self.emit is not None and not self._closed:
            self.emit(event)
