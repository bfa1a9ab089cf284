"""The session trace: every input to the core and every effect out, one JSON object per line.

Line kinds (each has `t`, the session time in seconds, except `meta`):
    {"meta": {"format": "engine-trace/2", "engine": version, "flow": path, ...}}   first line
    {"t": 0.0, "start": true}                                    Interview.start
    {"t": 1.2, "in": {"server": {...raw event...}}}              Interview.receive(server event)
    {"t": 1.9, "in": {"engine": {"type": ..., ...}}}             Interview.receive(engine event)
    {"t": 5.0, "advance": true}                                  Interview.advance
    {"t": 1.2, "out": {"effect": "Send", ...}}                   one effect, in order
    {"t": 1.3, "note": "..."}                                    what the driver saw (bad frames, sink errors)
    {"t": 9.9, "summary": {"type": count, ...}}                  inputs counted instead of written
Audio payloads are kept as their length only, so a trace stays small; the core only counts them.
Traces of format 1 (no `format` in meta) read the same.

Off the event loop: the loop only encodes lines and hands each batch to one disk thread shared by
every trace of the process, which writes them in order (a write can wait on a busy disk; the loop
must not). `close()` waits for its own trace to be on disk.

Bounded: past `summarise_after` lines of one type, high-rate or unknown events that caused no
effect are only counted (the summary line at the end), which loses nothing a replay needs; at
`max_bytes` the trace stops with a final note. A write error (a full disk) stops the trace, never
the session: `failed` says why, and `on_problem` is told once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import json.encoder
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .effects import Effect, Play
from .events import ENGINE_EVENTS, HIGH_RATE, SERVER_EVENTS, Event, normalise
from .sinks import _Writers

__all__ = ["TraceWriter", "read", "flow_identity", "event_record", "event_from_record", "effect_record", "redact",
           "engine_version", "FORMAT", "MAX_BYTES"]

FORMAT = "engine-trace/2"
MAX_BYTES = 64 * 2**20
SUMMARISE_AFTER = 1000  # lines per type written one by one before counting starts
BATCH_BYTES = 8 * 1024  # written in one call once this much is buffered (a few a second)...
BATCH_S = 1.0  # ...or this much session time has passed since the last write
RESERVE_BYTES = 2 * 2**20  # free disk space the trace leaves for the reports
_TAIL = 4096  # room kept under max_bytes for the closing lines
_DISK = _Writers(threads=1)  # one thread: every trace's batches are written in the order handed over


def _line_encoder() -> Callable[[Any], str]:
    """`json.dumps(obj, separators=(",", ":"), default=str)`, the same text, without building an
    encoder for every line: json.dumps makes a JSONEncoder and a C encoder per call, which was half
    the trace's cost (hundreds of lines a second per session). No circular check: trace lines are
    parsed frames and effects, never circular."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python): the encoder, made once
        return json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False).encode
    encode = make(None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda obj: "".join(encode(obj, 0))


_encode_line = _line_encoder()


def redact(text: str, secrets: str | Iterable[str] | None) -> str:
    """Remove secrets (the API key, a URL's password) from text bound for a log, a trace, a report
    or an exception."""
    if not secrets:
        return text
    for secret in (secrets,) if isinstance(secrets, str) else secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def event_record(event: Event) -> dict[str, Any]:
    data = event.data
    if "type" in data:  # as received from the server
        audio = data.get("delta") if event.type == "response.output_audio.delta" else None
        if isinstance(audio, str):
            return {"server": {**data, "delta": {"len": len(audio), "pad": audio[-2:].count("=")}}}
        return {"server": data}  # written as it is, never changed
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
    if type(effect) is Play:  # one per audio delta: the short way
        return {"effect": "Play", "response_id": effect.response_id, "item_id": effect.item_id,
                "audio": len(effect.audio)}
    kind = type(effect)
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(effect))
    fields = {name: getattr(effect, name) for name in names}
    if "event" in fields and not isinstance(fields["event"], str):
        fields["event"] = dict(fields["event"])
    return {"effect": kind.__name__, **fields}


_FIELDS: dict[type, tuple[str, ...]] = {}  # field names per effect type (dataclasses.fields is slow)


def flow_identity(path: str) -> dict[str, str]:
    """Where the flow came from and a hash of its text, so a replay can tell it has changed."""
    file = Path(path)
    try:
        return {"flow": str(file.resolve()), "flow_sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    except OSError:  # gone or unreadable since it was loaded: the trace still names it
        return {"flow": path}


def _known(kind: str) -> bool:
    return kind in SERVER_EVENTS or kind in ENGINE_EVENTS or kind.startswith(("job.", "tool."))


def _open(path: Path) -> IO[str]:
    # Same mode as every other output (0644 under the usual umask); no newline translation.
    return open(path, "w", encoding="utf-8", newline="\n")


@functools.cache
def engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("engine")
    except PackageNotFoundError:
        return "unknown"


class TraceWriter:
    """Buffers trace lines and writes them to `<path>.part` in batches; `close()` renames it into
    place (atomic). An input line waits for its effects (`effects()`), which decide whether it is
    written or only counted.

    Args:
        secret: strings to redact from every line (the API key, `Endpoint.secrets`).
        on_problem: called once with a one-line warning when the trace stops early.
        open_file: opens the `.part` file (tests inject one that fails).
    """

    def __init__(self, path: Path, meta: dict[str, Any], secret: str | Iterable[str] | None = None, *,
                 max_bytes: int = MAX_BYTES, summarise_after: int = SUMMARISE_AFTER,
                 on_problem: Callable[[str], None] | None = None,
                 open_file: Callable[[Path], IO[str]] = _open):
        self.path = path
        self._part = path.with_name(path.name + ".part")
        self._secrets = (secret,) if isinstance(secret, str) else tuple(secret or ())
        self._max, self._summarise_after = max_bytes, summarise_after
        self._on_problem = on_problem
        self.failed: str | None = None  # why the trace stopped early (a write error, the cap)
        self._buffer: list[str] = []
        self._buffered = 0
        self._written = 0
        self._dropped = 0  # lines not written after the cap
        self._last_write_t = 0.0
        self._t = 0.0
        self._pending: tuple[float, Event] | None = None  # an input waiting for its effects
        self._lines: Counter[str] = Counter()  # input lines written per type
        self._counted: Counter[str] = Counter()  # inputs counted instead of written
        self._file: IO[str] | None = None
        self._disk_error: str | None = None  # set by the disk thread: why the trace stopped there
        try:
            self._file = open_file(self._part)
        except OSError as exc:
            self._stop(f"trace not written: {self._part}: {exc.strerror or exc}")
        self._write({"meta": {"format": FORMAT, "engine": engine_version(), **meta}})

    # Public: the runner's calls, in session order.

    def start(self, t: float) -> None:
        self._settle()
        self._write({"t": t, "start": True})

    def event(self, t: float, event: Event) -> None:
        """An input; written (or counted) once `effects()` says what it caused."""
        self._settle()
        self._pending = (t, event)

    def advance(self, t: float) -> None:
        self._settle()
        self._write({"t": t, "advance": True})

    def effects(self, t: float, effects: list[Effect]) -> None:
        self._settle(quiet=not effects)
        for effect in effects:
            self._write({"t": t, "out": effect_record(effect)})

    def note(self, t: float, text: str) -> None:
        self._settle()
        self._write({"t": t, "note": text})

    def flush(self) -> None:
        """Hand what is buffered to the disk thread now (every batch, a Save, the end)."""
        self._disk_stopped()
        if not self._buffer or self._file is None:
            self._buffer.clear()
            self._buffered = 0
            return
        chunk = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._last_write_t = self._t
        self._written += len(chunk)
        _DISK.submit(self._put, self._file, chunk)

    async def synced(self) -> None:
        """Wait, without blocking the loop, until every batch handed over so far is on disk (a
        Save: the trace on disk then agrees with the reports)."""
        await asyncio.get_running_loop().run_in_executor(_DISK, _nothing)

    def close(self) -> None:
        """Write the closing lines and move the trace into place; returns once that is done."""
        self._settle()
        if self._counted:
            self._write({"t": self._t, "summary": dict(self._counted)}, tail=True)
        if self._dropped:
            self._write({"t": self._t, "note": f"trace stopped at {self._max} bytes (the cap): "
                                               f"{self._dropped} later lines not written"}, tail=True)
        self.flush()
        if self._file is None:
            return
        file, self._file = self._file, None
        _DISK.submit(self._finish_file, file).result()
        self._disk_stopped()

    # Private.

    def _settle(self, quiet: bool = False) -> None:
        """Write the input waiting for its effects, or count it if it is noise."""
        if self._pending is None:
            return
        t, event = self._pending
        self._pending = None
        kind = event.type
        if quiet and self._lines[kind] >= self._summarise_after and (kind in HIGH_RATE or not _known(kind)):
            self._counted[kind] += 1
            return
        self._lines[kind] += 1
        self._write({"t": t, "in": event_record(event)})

    def _write(self, line: dict[str, Any], tail: bool = False) -> None:
        if self._file is None:
            return
        t = line.get("t")
        if isinstance(t, float):
            self._t = t
        text = redact(_encode_line(line), self._secrets) + "\n"
        limit = self._max if tail else self._max - _TAIL
        if self._written + self._buffered + len(text) > limit:
            if not tail:
                if not self._dropped:
                    self._problem(f"trace reached its cap of {self._max} bytes; later lines are not written")
                self._dropped += 1
            return
        self._buffer.append(text)
        self._buffered += len(text)
        if self._buffered >= BATCH_BYTES or self._t - self._last_write_t >= BATCH_S:
            self.flush()

    # In the disk thread.

    def _put(self, file: IO[str], chunk: str) -> None:
        if self._disk_error is not None:
            return
        try:
            file.write(chunk)
            file.flush()
            if _low_space(file):
                self._disk_error = ("trace stopped: the disk is nearly full (room is left for the reports; "
                                    "the session goes on)")
        except Exception as exc:  # OSError (a full disk); anything else must not kill the thread
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._disk_error = f"trace stopped: {why} (the session goes on)"
        if self._disk_error is not None:
            _close_into_place(file, self._part, self.path)

    def _finish_file(self, file: IO[str]) -> None:
        if self._disk_error is not None:  # stopped (and closed) by a failed write
            return
        try:
            file.close()
            os.replace(self._part, self.path)
        except OSError as exc:
            self._disk_error = f"trace not finished: {exc.strerror or exc}"

    # Back on the loop.

    def _disk_stopped(self) -> None:
        """Report a stop in the disk thread (once) and stop handing it lines."""
        if self._disk_error is not None and self.failed is None:
            self._file = None
            self._buffer.clear()
            self._buffered = 0
            self._problem(self._disk_error)

    def _stop(self, why: str) -> None:
        if self.failed is None:
            self._problem(why)
        if self._file is not None:
            _DISK.submit(_close_into_place, self._file, self._part, self.path)
            self._file = None
        self._buffer.clear()
        self._buffered = 0

    def _problem(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            if self._on_problem is not None:
                self._on_problem(why)


def _nothing() -> None:
    pass


def _low_space(file: IO[str]) -> bool:
    try:
        stat = os.fstatvfs(file.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests)
        return False
    return stat.f_bavail * stat.f_frsize < RESERVE_BYTES


def _close_into_place(file: IO[str], part: Path, path: Path) -> None:
    """Close a trace stopped early: what was written is still a readable trace."""
    try:
        file.close()
        os.replace(part, path)
    except OSError:
        pass


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a trace file as dicts (a `.part` left by a crash reads the same)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
