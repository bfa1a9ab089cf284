"""Server events in, one normalised `Event` out.

Rules of this module:
1. Every spelling the wire may use becomes one name here: beta names become GA names, and the
   few Realtime events a flow talks about get the engine's short alias (`input.transcript`).
2. The ids a flow needs (response, item, call) are pulled out of wherever the event keeps them.
3. Nothing is dropped silently: a frame we cannot read raises `RemoteProtocolError`, and the
   caller logs and skips it. Unknown event types pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import RemoteProtocolError

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


def normalise(raw: Any) -> Event:
    """Turn a decoded server event into an `Event`. Raises RemoteProtocolError if unusable."""
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"event is not an object: {str(raw)[:80]!r}")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind:
        raise RemoteProtocolError(f"event has no type: {str(raw)[:80]!r}")
    get = raw.get
    if kind == _AUDIO_DELTA:  # dozens a second, and their ids are always at the top level
        rid, item, eid = get("response_id"), get("item_id"), get("event_id")
        return Event(kind, rid if type(rid) is str else None, item if type(item) is str else None, None,
                     eid if type(eid) is str else None, raw)
    response_id, item_id, call_id = get("response_id"), get("item_id"), get("call_id")
    if response_id is None:  # response.created / response.done keep it in the response
        response = get("response")
        if isinstance(response, dict):
            response_id = response.get("id")
    if item_id is None or call_id is None:  # output_item.* and conversation.item.* keep the item
        item = get("item")
        if isinstance(item, dict):
            item_id = item_id if item_id is not None else item.get("id")
            call_id = call_id if call_id is not None else item.get("call_id")
    event_id = get("event_id")
    return Event(
        _NAMES.get(kind, kind),
        response_id if isinstance(response_id, str) else None,
        item_id if isinstance(item_id, str) else None,
        call_id if isinstance(call_id, str) else None,
        event_id if isinstance(event_id, str) else None,
        raw,
    )
