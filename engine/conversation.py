"""The conversation over the Realtime API: whose each event is, audio, turns, the gate.

Rules of this module:
1. It decides what a server or engine event means for the session: which response it belongs
   to, what it proves (a response in progress), what it adds to the facts, what must be sent;
   and it offers the result to the flow as an event name through `_deliver`. What the flow then
   does (its states, guards and actions) is interview.py's.
2. Response events reach the flow only when the current state asked for that response. Events of
   a response not yet known to be ours are held until its `response.done` says whose it is; late,
   duplicate, stray and foreign events are recorded (`stale`) and change nothing.
3. All its state is data: `Model`, the gate, the playback, the facts, the recent event ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .effects import Effect, End, Log, Save, Send
from .events import PROVING_PREFIX, Event, RecentIds
from .facts import Facts
from .gate import Gate
from .machine import CompiledFlow
from .playback import Playback

__all__ = ["Conversation", "Model", "STALE_KEPT"]

STALE_KEPT = 100  # stale events recorded one by one; beyond this they are only counted
AUDIO_DELTA = "response.output_audio.delta"


@dataclass(slots=True)
class Model:
    """One session's own state as plain data. The flow's shared machine moves `state`."""

    state: str
    asking: str  # the state new requests belong to (during a transition: where it goes)
    now: float = 0.0
    started: float | None = None  # session time of start()
    done: bool = False
    broken: str | None = None  # the error state: what went wrong inside the core
    ids: int = 0  # client event ids used: evt_1, evt_2, ...
    requests: int = 0  # response requests made: r1, r2, ...
    seen: set[str] = field(default_factory=set)  # events since the state was entered (joins)
    asked: set[str] = field(default_factory=set)  # tags of the requests the state made
    held: dict[str, list[str]] = field(default_factory=dict)  # response -> its events, until we know whose
    deadlines: list[tuple[float, str]] = field(default_factory=list)  # the state's timeouts
    jobs: dict[str, float] = field(default_factory=dict)  # running job -> deadline
    holds: dict[str, float] = field(default_factory=dict)  # job -> until when its start waits for transcripts
    session_update: str | None = None  # event_id of our session.update
    responses: int = 0  # response.create sent
    timeouts: int = 0  # `after:` timeouts fired
    stale_count: int = 0
    stale: list[dict[str, Any]] = field(default_factory=list)  # the first STALE_KEPT of them
    strays: set[str] = field(default_factory=set)  # event types logged for naming an unknown response

class Conversation:
    """The Realtime side of one session. `Interview` is the flow side; see its docstring."""

    def __init__(self, flow: CompiledFlow, model: Model):
        self._flow = flow
        self._m = model
        self._gate = Gate()
        self._playback = Playback()
        self._facts = Facts()
        self._recent = RecentIds()
        self._effects: list[Effect] = []  # of the call in progress
        self._event: Event | None = None  # the event being handled (for guards)

    # Public: the facts gathered.

    @property
    def turns(self) -> list[dict[str, Any]]:
        return self._facts.turns

    @property
    def results(self) -> dict[str, Any]:
        return self._facts.results

    @property
    def tool_args(self) -> dict[str, Any]:
        return self._facts.tool_args

    @property
    def stale(self) -> list[dict[str, Any]]:
        """Events that belonged to no waiting state (the first STALE_KEPT; `counts` has them all)."""
        return self._m.stale

    @property
    def counts(self) -> dict[str, int]:
        m = self._m
        return {"responses": m.responses, "answers": self._facts.answers, "timeouts": m.timeouts,
                "stale": m.stale_count}

    def _on_delta(self, event: Event) -> list[Effect]:
        """A streamed delta: the response lives; an audio delta is played."""
        rid = event.response_id
        if rid is None:
            return []
        if self._gate.proven(rid, self._m.now):
            self._schedule()  # a response we had not seen: its silence deadline is new
        if event.type == AUDIO_DELTA:
            play = self._playback.audio(rid, event.item_id, event.data.get("delta") or "")
            if play is not None:
                return [play]
        return []

    def _hang_up_if_heard(self) -> None:
        playback = self._playback
        if playback.may_hang_up(self._m.now):
            if playback.speaking:
                self._log("warning", f"hanging up with audio of {playback.unheard} response(s) not yet heard")
            self._end(playback.hangup or "", "completed_degraded" if self._m.timeouts else "completed")

    def _end(self, reason: str, outcome: str) -> None:
        self._m.done = True
        self._effects.append(End(reason, outcome))

    def _abort(self, reason: str) -> None:
        """The session cannot go on (not the flow's doing): save what was gathered, then end."""
        self._log("error", reason)
        self._effects.append(Save(reason))
        self._end(reason, "not_completed")

    # Private: whose is a response event.

    def _proven(self, rid: str | None) -> None:
        if rid is not None:
            self._gate.proven(rid, self._m.now)

    def _route(self, name: str, rid: str | None) -> bool:
        """Deliver `name`, an event of response `rid`, if the current state asked for `rid`.
        True if it was delivered or held for later."""
        m, gate = self._m, self._gate
        waits = name in self._flow.triggers[m.state]
        if rid is None:
            if waits:
                self._stale(name, None, "names no response")
            return False
        tag = gate.request_of(rid)
        if tag is not None and tag in m.asked and not gate.superseded(rid):
            self._deliver(name)
            return True
        if tag is None and not gate.known(rid):
            self._stray(name, rid)
        elif tag is None and not gate.finished(rid):  # in progress, not yet known to be ours
            if waits:
                m.held.setdefault(rid, []).append(name)
            return True
        elif waits:
            self._stale(name, rid, "not requested by the current state")
        return False

    def _release_held(self, rid: str) -> None:
        """`rid` turned out to be ours (or not): deliver or record the events held for it."""
        for name in self._m.held.pop(rid, None) or ():
            if self._gate.request_of(rid):
                self._route(name, rid)
            else:
                self._stale(name, rid, "foreign response")

    def _stray(self, name: str, rid: str) -> None:
        self._stale(name, rid, "names a response the server never showed")
        if name not in self._m.strays:
            self._m.strays.add(name)
            self._log("info", f"{name} names unknown response {rid}: recorded as stale (said once per event type)")

    def _stale(self, kind: str, rid: str | None, why: str) -> None:
        m = self._m
        m.stale_count += 1
        if len(m.stale) < STALE_KEPT:
            m.stale.append({"t": m.now, "type": kind, "response_id": rid, "why": why})

    # Private: event handlers (one per event type, see _HANDLERS).

    def _on_response_event(self, event: Event) -> None:
        if event.type.startswith(PROVING_PREFIX):
            self._proven(event.response_id)
        self._route(event.type, event.response_id)

    def _on_error(self, event: Event) -> None:
        error, m = event.data.get("error") or {}, self._m
        code, message, eid = error.get("code"), error.get("message"), error.get("event_id")
        if code == "session_expired":
            self._abort(f"the server expired the session in state '{m.state}': {message}")
            return
        if eid is not None and eid == m.session_update and "error" not in self._flow.triggers[m.state]:
            self._abort(f"the server rejected the flow's session.update: {code}: {message}")
            return
        probed = self._gate.probe_refused(eid, m.now, m.ids + 1)
        if probed is not None:  # the engine's own question, not the flow's business
            self._log("info", "the silent response is over on the server (its probe found nothing running)")
            self._end_released_audio()
            self._send_all(probed)
            return
        rejected, sends = self._gate.error(eid, code, message, m.now, m.ids + 1)
        if code == "response_cancel_not_active":
            self._log("info", "cancel raced the end of the response (benign)")
        elif rejected is not None:
            self._log("error", f"server rejected the response for '{rejected.state}': {code}: {message}")
        else:
            self._log("warning", f"server error {code}: {message}")
        self._send_all(sends)
        self._deliver("error")

    def _on_created(self, event: Event) -> None:
        rid, m = event.response_id, self._m
        if rid is None:
            self._log("warning", "response.created without a response id ignored")
            return
        self._send_all(self._gate.created(rid, event.metadata.get("engine_request"), m.now, m.ids + 1))
        if self._gate.request_of(rid):
            self._release_held(rid)
        self._route(event.type, rid)

    def _on_audio_delta(self, event: Event) -> None:
        self._effects.extend(self._on_delta(event))

    def _on_audio_done(self, event: Event) -> None:
        self._on_response_event(event)
        if event.response_id is not None:
            self._end_audio(event.response_id)

    def _on_transcript_done(self, event: Event) -> None:
        rid, item = event.response_id, event.item_id
        self._proven(rid)
        if self._facts.first("transcript", item or rid):
            self._facts.interviewer(event.data.get("transcript") or "", self._m.now, rid, item,
                                    self._playback.heard_ms(item))
            self._route(event.type, rid)

    def _on_output_item(self, event: Event) -> None:
        item = event.data.get("item") or {}
        if item.get("type") == "function_call" and event.call_id:
            # Beta's function_call_arguments.done has no `name`; the item announced it.
            self._facts.call_name(event.call_id, item.get("name"))
        self._on_response_event(event)

    def _on_function_call(self, event: Event) -> None:
        self._proven(event.response_id)
        if self._facts.first("call", event.call_id):
            self._tool_call(event.data.get("name"), event.call_id, event.data.get("arguments"), event.response_id)

    def _on_response_done(self, event: Event) -> None:
        rid, m, gate = event.response_id, self._m, self._gate
        if rid is None:
            self._log("warning", "response.done without a response id ignored")
            return
        if gate.finished(rid):
            self._stale(event.type, rid, "duplicate response.done")
            return
        tag, sends = gate.done(rid, event.metadata.get("engine_request"), event.data.get("response"), m.now,
                               m.ids + 1)
        if gate.superseded(rid):
            self._log("warning", f"response {rid} failed on a rate limit; asking again after a backoff")
        self._release_held(rid)
        # What the done event carries may be all we get of lost events: recover it.
        for item in (event.data.get("response") or {}).get("output") or []:
            self._recover_item(rid, item)
        self._end_audio(rid)
        self._send_all(sends)
        if tag is not None:
            self._route(event.type, rid)
        elif gate.request_of(rid) is None:
            self._stale(event.type, rid, "foreign or duplicate response")

    def _on_speech_started(self, event: Event) -> None:
        self._facts.speech(event.item_id or "", 0, self._m.now)
        self._deliver("speech.started")

    def _on_speech_stopped(self, event: Event) -> None:
        item = event.item_id or ""
        self._facts.speech(item, 1, self._m.now)
        self._turn_event("speech.stopped", item)

    def _on_committed(self, event: Event) -> None:
        item = event.item_id or ""
        self._facts.committed(item, self._m.now)
        self._turn_event("input.committed", item)

    def _turn_event(self, name: str, item: str) -> None:
        """speech.stopped / input.committed: the one the flow names as its turn end ends the turn
        (delivered once per item); a commit also ends a turn whose speech.stopped was lost."""
        if name == self._flow.turn_end or name == "input.committed":
            ended = self._facts.end_turn(item, self._m.now)
            if name == self._flow.turn_end and not ended:
                return  # the same turn again: not a second answer
        self._deliver(name)

    def _on_transcript(self, event: Event) -> None:
        item = event.item_id or ""
        if self._facts.transcript(item, event.data.get("transcript") or "", self._m.now):
            self._start_held_jobs()
            self._deliver("input.transcript")

    def _on_transcription_failed(self, event: Event) -> None:
        self._facts.transcript_failed(event.item_id or "", self._m.now)
        self._start_held_jobs()
        self._deliver(event.type)

    def _on_playback_done(self, event: Event) -> None:
        self._playback.played(event.response_id)
        self._route(event.type, event.response_id)

    def _on_playback_stopped(self, event: Event) -> None:
        stopped = [r for r in [event.response_id, *event.data.get("dropped", [])] if r]
        heard = self._playback.stopped(stopped, event.item_id, int(event.data.get("played_ms") or 0))
        if heard is not None and event.item_id:
            self._send({"type": "conversation.item.truncate", "item_id": event.item_id, "content_index": 0,
                        "audio_end_ms": heard})
            self._facts.heard(event.item_id, heard)  # the transcript says more than the candidate heard
        self._deliver("playback.stopped")

    def _on_job(self, event: Event) -> None:
        _, name, outcome = event.type.split(".", 2)
        if name not in self._m.jobs:
            self._stale(event.type, None, f"job '{name}' is not running")
            return
        del self._m.jobs[name]
        if outcome == "done":
            self._facts.results[name] = event.data.get("result")
        else:
            self._log("warning", f"job '{name}' failed: {event.data.get('error', 'unknown error')}")
        self._deliver(event.type)

    def _on_session_closed(self, event: Event) -> None:
        if not self._deliver("session.closed") and not self._m.done:
            why = event.data.get("reason", "no reason given")
            self._end(f"connection closed in state '{self._m.state}': {why}", "not_completed")

    def _after_the_end(self, event: Event) -> None:
        """In a final state, audio still arriving or playing is let through (and waited for)."""
        kind, rid = event.type, event.response_id
        if kind == AUDIO_DELTA:
            self._on_audio_delta(event)
        elif kind in ("response.output_audio.done", "response.done") and rid:
            self._end_audio(rid)
        elif kind == "playback.done":
            self._playback.played(rid)
        elif kind == "playback.stopped":
            self._on_playback_stopped(event)
        self._hang_up_if_heard()

    # Private: what responses carry.

    def _recover_item(self, rid: str, item: dict[str, Any]) -> None:
        if item.get("type") == "function_call":
            if self._facts.first("call", item.get("call_id")):
                self._tool_call(item.get("name"), item.get("call_id"), item.get("arguments"), rid)
        elif item.get("type") == "message":
            for part in item.get("content") or []:
                if part.get("transcript") and self._facts.first("transcript", item.get("id") or rid):
                    self._facts.interviewer(part["transcript"], self._m.now, rid, item.get("id"),
                                            self._playback.heard_ms(item.get("id")))

    def _tool_call(self, name: str | None, call_id: str | None, arguments: Any, rid: str | None) -> None:
        name = self._facts.tool_name(name, call_id)
        warning = self._facts.tool_call(name, call_id, arguments, self._m.now, rid)
        if warning:
            self._log("warning", warning)
        if not (name and rid and self._route(f"tool.{name}", rid)):
            self._log("info", f"tool call {name} from a response this state did not ask for: recorded")

    def _end_released_audio(self) -> None:
        # A response the gate presumed over (silent too long: its done was lost) sends no more
        # audio: end what it sent, or the player never reports it heard and it plays forever.
        for rid in self._playback.unended():
            if not self._gate.in_progress(rid):
                self._end_audio(rid)

    def _end_audio(self, rid: str) -> None:
        if not self._gate.superseded(rid) and (end := self._playback.end(rid)) is not None:
            self._effects.append(end)

    def _send(self, event: dict[str, Any]) -> None:
        self._m.ids += 1
        self._effects.append(Send({"event_id": f"evt_{self._m.ids}", **event}))

    def _send_all(self, events: list[dict[str, Any]]) -> None:
        """Events the gate made, numbered from m.ids + 1."""
        for event in events:
            self._m.ids += 1
            self._m.responses += event["type"] == "response.create"
            self._effects.append(Send(event))

    def _log(self, level: str, message: str) -> None:
        self._effects.append(Log(level, message))

    # Offered to the flow (interview.py).

    def _deliver(self, name: str) -> bool:
        """Offer an event to the current state. True if a transition fired."""
        raise NotImplementedError

    def _schedule(self) -> None:
        """Recompute the next deadline (a response came into progress)."""
        raise NotImplementedError

    def _start_held_jobs(self) -> None:
        """Start the jobs that were waiting for transcripts, if none is awaited any more."""
        raise NotImplementedError


_HANDLERS: dict[str, Any] = {
    "error": Conversation._on_error,
    "response.created": Conversation._on_created,
    "response.output_item.added": Conversation._on_output_item,
    "response.output_audio.delta": Conversation._on_audio_delta,
    "response.output_audio.done": Conversation._on_audio_done,
    "response.output_audio_transcript.done": Conversation._on_transcript_done,
    "response.function_call_arguments.done": Conversation._on_function_call,
    "response.done": Conversation._on_response_done,
    "input.committed": Conversation._on_committed,
    "input.transcript": Conversation._on_transcript,
    "conversation.item.input_audio_transcription.failed": Conversation._on_transcription_failed,
    "speech.started": Conversation._on_speech_started,
    "speech.stopped": Conversation._on_speech_stopped,
    "playback.done": Conversation._on_playback_done,
    "playback.stopped": Conversation._on_playback_stopped,
    "session.closed": Conversation._on_session_closed,
}
