"""Server events in, one normalised `Event` out.

Rules of this module:
1. Every spelling the wire may use becomes one name here: beta names become GA names, and the
   few Realtime events a flow talks about get the engine's short alias (`input.transcript`).
2. The ids a flow needs (response, item, call) are pulled out of wherever the event keeps them.
3. Nothing is dropped silently: a frame we cannot read raises `RemoteProtocolError`, and the
   caller logs and skips it. Unknown event types pass through untouched.
4. Every part of a payload the core reads is checked here, once: after `normalise` the core
   trusts the shapes (a malformed event never reaches it, so it can never half-apply one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "Event",
    "parse",
    "normalise",
    "normalise_name",
    "BETA_TO_GA",
    "ALIASES",
    "SERVER_EVENTS",
    "ENGINE_EVENTS",
    "HIGH_RATE",
    "MAX_ID",
    "PROVING_PREFIX",
    "RecentIds",
]

BETA_TO_GA = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}

# Realtime events a flow reacts to under the engine's own, shorter name.
ALIASES = {
    "conversation.item.input_audio_transcription.completed": "input.transcript",
    "input_audio_buffer.speech_started": "speech.started",
    "input_audio_buffer.speech_stopped": "speech.stopped",
    "input_audio_buffer.committed": "input.committed",
}

# GA server events (openai 3.5x `RealtimeServerEvent`), after normalisation.
SERVER_EVENTS = frozenset(
    {
        "error",
        "session.created",
        "session.updated",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "rate_limits.updated",
        "response.created",
        "response.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    }
    | set(ALIASES.values())
)

# Events the engine itself produces. `tool.<name>` and `job.<name>.done|failed` are families.
ENGINE_EVENTS = frozenset(
    {
        "playback.started",
        "playback.done",
        "playback.stopped",
        "session.closed",
    }
)

# Streamed many times a second; they never reach the state machine.
HIGH_RATE = frozenset(
    {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "conversation.item.input_audio_transcription.delta",
        "rate_limits.updated",
    }
)


@dataclass(slots=True)
class Event:
    """One input to the core: a normalised server event or an engine event.

    `data` is the payload as received; the other fields are the parts the core dispatches on,
    found once here so nobody digs through `data` again. Read-only by convention: not frozen,
    because audio deltas make dozens a second and a frozen dataclass is built ~3x slower.
    """

    type: str
    response_id: str | None = None
    item_id: str | None = None
    call_id: str | None = None
    event_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def metadata(self) -> Mapping[str, str]:
        """`response.metadata` of response.created / response.done (empty otherwise)."""
        response = self.data.get("response")
        return (response.get("metadata") or {}) if isinstance(response, dict) else {}

    @property
    def status(self) -> str | None:
        """The response status of response.done, else None."""
        response = self.data.get("response")
        return response.get("status") if isinstance(response, dict) else None


# Events whose type starts with this exist only while a response does: they prove it runs. Others
# that name a response (output_audio_buffer.*, the driver's playback.*) may be stray or late.
PROVING_PREFIX = "response."

_AUDIO_DELTA = "response.output_audio.delta"
# Every spelling -> the one the core uses (beta -> GA -> engine alias), in one lookup.
_NAMES = {**BETA_TO_GA, **ALIASES, **{beta: ALIASES.get(ga, ga) for beta, ga in BETA_TO_GA.items()}}


def normalise_name(name: str) -> str:
    """GA and engine spelling of an event name a flow or the wire may use."""
    return _NAMES.get(name, name)


def parse(frame: str | bytes) -> Event:
    """Decode one WebSocket text frame. Raises RemoteProtocolError if it is not a JSON event."""
    try:
        raw = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"frame is not JSON: {str(frame)[:80]!r}") from exc
    return normalise(raw)


MAX_ID = 256  # longest id accepted (the API's are ~30 characters)
_IDS = ("response_id", "item_id", "call_id", "event_id")
_TEXTS = ("transcript", "arguments", "name", "delta")


def normalise(raw: Any) -> Event:
    """Turn a decoded server event into an `Event`.

    Raises RemoteProtocolError if it is unusable: not an object, no type, or any part the core
    reads of the wrong shape (objects, lists, ids as strings of at most MAX_ID characters, texts
    as strings). After it returns, the core may read the payload without checking it again."""
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"event is not an object: {str(raw)[:80]!r}")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind:
        raise RemoteProtocolError(f"event has no type: {str(raw)[:80]!r}")
    get = raw.get
    if kind == _AUDIO_DELTA:  # dozens a second, and their ids are always at the top level
        rid, item, eid, delta = get("response_id"), get("item_id"), get("event_id"), get("delta")
        if (type(rid) is str and type(delta) is str and len(rid) <= MAX_ID
                and (item is None or (type(item) is str and len(item) <= MAX_ID))
                and (eid is None or (type(eid) is str and len(eid) <= MAX_ID))):
            return Event(kind, rid, item, None, eid, raw)
        _check_fields(kind, raw)  # says what is wrong
        raise RemoteProtocolError(f"{kind}: needs response_id and delta as strings")
    _check_fields(kind, raw)
    response_id, item_id, call_id = get("response_id"), get("item_id"), get("call_id")
    response = get("response")
    if response_id is None and response is not None:  # response.created / response.done keep it there
        response_id = response.get("id")
    item = get("item")
    if item is not None:  # output_item.* and conversation.item.* keep the item
        item_id = item_id if item_id is not None else item.get("id")
        call_id = call_id if call_id is not None else item.get("call_id")
    return Event(_NAMES.get(kind, kind), response_id, item_id, call_id, get("event_id"), raw)


def _is_id(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_ID


def _bad(kind: str, where: str, what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"{kind}: {where} must be {what}")


def _check_id(kind: str, where: str, value: Any) -> None:
    if value is not None and not _is_id(value):
        raise _bad(kind, where, f"a string of at most {MAX_ID} characters")


def _check_str(kind: str, where: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _bad(kind, where, "a string")


def _check_object(kind: str, where: str, value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise _bad(kind, where, "an object")
    return value


def _check_list(kind: str, where: str, value: Any) -> list[Any]:
    if value is not None and not isinstance(value, list):
        raise _bad(kind, where, "a list")
    return value or []


def _check_item(kind: str, where: str, item: dict[str, Any]) -> None:
    for key in ("id", "call_id"):
        _check_id(kind, f"{where}.{key}", item.get(key))
    for key in ("type", "name", "arguments"):
        _check_str(kind, f"{where}.{key}", item.get(key))
    for i, part in enumerate(_check_list(kind, f"{where}.content", item.get("content"))):
        part = _check_object(kind, f"{where}.content[{i}]", part)
        if part is None:
            raise _bad(kind, f"{where}.content[{i}]", "an object")
        _check_str(kind, f"{where}.content[{i}].transcript", part.get("transcript"))


def _check_fields(kind: str, raw: dict[str, Any]) -> None:
    """Every part of an event the core reads, checked once (see `normalise`)."""
    get = raw.get
    for key in _IDS:  # inlined: every event passes here
        value = get(key)
        if value is not None and (type(value) is not str or len(value) > MAX_ID):
            raise _bad(kind, key, f"a string of at most {MAX_ID} characters")
    for key in _TEXTS:
        value = get(key)
        if value is not None and not isinstance(value, str):
            raise _bad(kind, key, "a string")
    error = get("error")
    if error is not None or kind == "error":
        if not isinstance(error, dict):
            raise _bad(kind, "error", "an object")
        _check_id(kind, "error.event_id", error.get("event_id"))
        for key in ("code", "message", "type"):
            _check_str(kind, f"error.{key}", error.get(key))
    response = get("response")
    if response is not None:
        _check_response(kind, response)
    item = get("item")
    if item is not None:
        if not isinstance(item, dict):
            raise _bad(kind, "item", "an object")
        _check_item(kind, "item", item)


def _check_response(kind: str, response: Any) -> None:
    if not isinstance(response, dict):
        raise _bad(kind, "response", "an object")
    _check_id(kind, "response.id", response.get("id"))
    _check_str(kind, "response.status", response.get("status"))
    metadata = _check_object(kind, "response.metadata", response.get("metadata"))
    for key, value in (metadata or {}).items():
        _check_str(kind, f"response.metadata.{key}", value)
    details = _check_object(kind, "response.status_details", response.get("status_details"))
    if details is not None:
        _check_object(kind, "response.status_details.error", details.get("error"))
    for i, out in enumerate(_check_list(kind, "response.output", response.get("output"))):
        if not isinstance(out, dict):
            raise _bad(kind, f"response.output[{i}]", "an object")
        _check_item(kind, f"response.output[{i}]", out)


class RecentIds:
    """The server event ids seen lately, to drop exact duplicates (a frame delivered twice).

    Two generations of at most GENERATION hashes each: the last GENERATION to 2 x GENERATION ids
    are remembered, at a few KB per session, and no string is kept. Hashes are Python's (the same
    cost as a set of the strings); a snapshot records the process's hash seed by a fingerprint."""

    GENERATION = 128

    def __init__(self) -> None:
        self._new: set[int] = set()
        self._old: set[int] = set()

    def seen(self, event_id: str) -> bool:
        """True for an id seen lately; otherwise remember it and return False."""
        h = hash(event_id)
        if h in self._new or h in self._old:
            return True
        new = self._new
        new.add(h)
        if len(new) >= self.GENERATION:
            self._old, self._new = new, set()
        return False

    def snapshot(self) -> tuple[Any, ...]:
        return (_FINGERPRINT, tuple(sorted(self._new)), tuple(sorted(self._old)))

    @classmethod
    def restore(cls, snap: tuple[Any, ...]) -> RecentIds:
        fingerprint, new, old = snap
        if fingerprint != _FINGERPRINT:
            raise LocalProtocolError("the snapshot was taken in a process with another hash seed (PYTHONHASHSEED): "
                                     "its recent event ids cannot be restored here")
        recent = cls()
        recent._new, recent._old = set(new), set(old)
        return recent


_FINGERPRINT = hash("engine.events.RecentIds")
