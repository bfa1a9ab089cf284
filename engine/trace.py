"""The session trace: every input to the core and every effect out, one JSON object per line.

Line kinds (each has `t`, the session time in seconds, except `meta`):
    {"meta": {"flow": path, "session": id, "speed": x, ...}}   first line
    {"t": 0.0, "start": true}                                    Interview.start
    {"t": 1.2, "in": {"server": {...raw event...}}}              Interview.receive(server event)
    {"t": 1.9, "in": {"engine": {"type": ..., ...}}}             Interview.receive(engine event)
    {"t": 5.0, "advance": true}                                  Interview.advance
    {"t": 1.2, "out": {"effect": "Send", ...}}                   one effect, in order
    {"t": 1.3, "note": "..."}                                    what the driver saw (bad frames, sink errors)
Audio payloads are kept as their length only, so a trace stays small; the core only counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .effects import Effect, Play
from .events import Event, normalise

__all__ = ["TraceWriter", "read", "flow_identity", "event_record", "event_from_record", "effect_record", "redact"]



def redact(text: str, secret: str | None) -> str:
    """Remove a secret (the API key) from text bound for a log, a trace or an exception."""
    return text.replace(secret, "***") if secret else text


def event_record(event: Event) -> dict[str, Any]:
    if "type" in event.data:  # as received from the server
        raw = dict(event.data)
        if event.type == "response.output_audio.delta" and isinstance(raw.get("delta"), str):
            audio = raw["delta"]
            raw["delta"] = {"len": len(audio), "pad": audio[-2:].count("=")}
        return {"server": raw}
    fields = {"type": event.type, "response_id": event.response_id, "item_id": event.item_id,
              "call_id": event.call_id, "data": dict(event.data)}
    return {"engine": {k: v for k, v in fields.items() if v not in (None, {})}}


def event_from_record(record: dict[str, Any]) -> Event:
    if "server" in record:
        raw = dict(record["server"])
        if isinstance(raw.get("delta"), dict):  # audio kept as its length: rebuild same-length text
            n, pad = raw["delta"]["len"], raw["delta"]["pad"]
            raw["delta"] = "A" * (n - pad) + "=" * pad
        return normalise(raw)
    e = record["engine"]
    return Event(e["type"], response_id=e.get("response_id"), item_id=e.get("item_id"),
                 call_id=e.get("call_id"), data=e.get("data", {}))


def effect_record(effect: Effect) -> dict[str, Any]:
    fields = {f.name: getattr(effect, f.name) for f in dataclasses.fields(effect)}
    if isinstance(effect, Play):
        fields["audio"] = len(effect.audio)
    if "event" in fields and not isinstance(fields["event"], str):
        fields["event"] = dict(fields["event"])
    return {"effect": type(effect).__name__, **fields}


def flow_identity(path: str) -> dict[str, str]:
    """Where the flow came from and a hash of its text, so a replay can tell it has changed."""
    file = Path(path)
    if not file.is_file():
        return {"flow": path}
    return {"flow": str(file.resolve()), "flow_sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


class TraceWriter:
    """Appends trace lines to `<path>.part`; `close()` renames it into place (atomic)."""

    def __init__(self, path: Path, meta: dict[str, Any], secret: str | None = None):
        self.path = path
        self._part = path.with_name(path.name + ".part")
        self._secret = secret
        self._file = open(self._part, "w", encoding="utf-8")
        self._write({"meta": meta})

    def start(self, t: float) -> None:
        self._write({"t": t, "start": True})

    def event(self, t: float, event: Event) -> None:
        self._write({"t": t, "in": event_record(event)})

    def advance(self, t: float) -> None:
        self._write({"t": t, "advance": True})

    def effects(self, t: float, effects: list[Effect]) -> None:
        for effect in effects:
            self._write({"t": t, "out": effect_record(effect)})

    def note(self, t: float, text: str) -> None:
        self._write({"t": t, "note": text})

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        os.replace(self._part, self.path)

    def _write(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":"), default=str)
        self._file.write(redact(text, self._secret) + "\n")


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a trace file as dicts (a `.part` left by a crash reads the same)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
