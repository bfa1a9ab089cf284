"""What the core asks its driver to do. Plain frozen data; the driver pattern-matches on the type.

Every effect is named in the imperative. The core never waits for an effect to be carried out:
when the outcome matters (audio played, a job finished) the driver reports it back as an Event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Effect",
    "Send",
    "Play",
    "EndAudio",
    "StopPlayback",
    "StartJob",
    "CancelJob",
    "Save",
    "Log",
    "Fired",
    "End",
    "OUTCOMES",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send this client event (it already carries its `event_id`)."""

    event: Mapping[str, Any]


@dataclass(slots=True)
class Play:
    """Queue this base64 pcm16 chunk for playback, after all audio queued before it.

    Not frozen, unlike the other effects: one is made per audio delta (see events.Event)."""

    response_id: str
    item_id: str | None
    audio: str = field(repr=False, compare=False)  # traces keep only its length


@dataclass(frozen=True, slots=True)
class EndAudio:
    """No more audio will come for this response: report `playback.done` once it has been heard."""

    response_id: str


@dataclass(frozen=True, slots=True)
class StopPlayback:
    """Barge-in: silence playback now and drop queued audio, then report `playback.stopped`
    with the `item_id` that was playing and `played_ms` of it."""


@dataclass(frozen=True, slots=True)
class StartJob:
    """Start background job `name` with `inputs`; report `job.<name>.done` or `.failed`."""

    name: str
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel background job `name` if it still runs (the core has stopped waiting for it)."""

    name: str


@dataclass(frozen=True, slots=True)
class Save:
    """Write the session's outputs now (the sinks); `reason` is recorded with them."""

    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # "info" | "warning" | "error"
    message: str


@dataclass(frozen=True, slots=True)
class Fired:
    """A transition of the flow fired. For the trace, coverage and the live view.

    `via` names it in the flow file: `states.<source>.transitions[<i>]`, `states.<source>.after[<i>]`,
    or `initial`. `target` is None for an internal transition.
    """

    via: str
    source: str | None
    target: str | None
    event: str


OUTCOMES = ("completed", "completed_degraded", "not_completed", "interrupted", "error")


@dataclass(frozen=True, slots=True)
class End:
    """The session is over: finish jobs and sinks, then hang up.

    `outcome` is one of OUTCOMES: `completed` (a final state was reached), `completed_degraded` (a
    final state, but a timeout fallback carried the session there), `not_completed`, `interrupted`
    (a signal; set by the driver), `error` (a bug in the engine; `reason` says `internal error: ...`).
    """

    reason: str
    outcome: str

    @property
    def ok(self) -> bool:
        return self.outcome in ("completed", "completed_degraded")


Effect = Send | Play | EndAudio | StopPlayback | StartJob | CancelJob | Save | Log | Fired | End
