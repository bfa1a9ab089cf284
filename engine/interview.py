"""The interview core: events and time in, effects out. No I/O, no clock.

Rules of this module:
1. Every decision about the conversation is made here: which response an event belongs to, when
   the flow moves, what is sent. Drivers carry effects out and report what happened as Events.
2. Time is the `now` argument, sampled once per call by the driver; deadlines go out through
   `next_deadline()` and come back as `advance(now)` (or any later `receive`).
3. Response events reach the flow only when the current state asked for that response. Events of
   a response not yet known to be ours are held until its `response.done` says whose it is; late,
   duplicate, stray and foreign events are recorded (`stale`) and change nothing.
4. The session's state is data: `Model` below, the gate, the playback, the facts and the recent
   event ids; `snapshot()` is all of it. The flow's machine is shared by its sessions (machine.py).
5. A bug inside a call moves the interview to its error state (Save, then End with outcome
   "error"); every later call raises LocalProtocolError, as h11 does after ERROR.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .effects import CancelJob, Effect, End, Fired, Log, Save, Send, StartJob, StopPlayback
from .errors import LocalProtocolError, TemplateError
from .events import HIGH_RATE, PROVING_PREFIX, Event, RecentIds
from .facts import Facts, freeze, render, thaw
from .flow import Flow, Respond, ToolResult
from .gate import Gate, Request
from .machine import Step, compiled
from .playback import Playback

__all__ = ["Interview", "Model", "STALE_KEPT"]

STALE_KEPT = 100  # stale events recorded one by one; beyond this they are only counted
_AUDIO_DELTA = "response.output_audio.delta"
_NEVER = float("inf")
_SNAPSHOT = "interview/1"


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
    session_update: str | None = None  # event_id of our session.update
    responses: int = 0  # response.create sent
    timeouts: int = 0  # `after:` timeouts fired
    stale_count: int = 0
    stale: list[dict[str, Any]] = field(default_factory=list)  # the first STALE_KEPT of them
    strays: set[str] = field(default_factory=set)  # event types logged for naming an unknown response


class Interview:
    """One interview session of `flow`.

    Call `start(now)` once, then `receive(event, now)` for each server or engine event and
    `advance(now)` when `next_deadline()` has passed. Each returns the effects to carry out, in
    order. After an `End` effect (`done` is True) every call returns [].
    """

    def __init__(self, flow: Flow):
        self.flow = flow
        self._flow = compiled(flow)
        self._m = Model(flow.initial, flow.initial)
        self._gate = Gate()
        self._playback = Playback()
        self._facts = Facts()
        self._recent = RecentIds()
        self._effects: list[Effect] = []  # of the call in progress
        self._event: Event | None = None  # the event being handled (for guards)
        self._due = _NEVER  # next_deadline(), recomputed after every step

    # Public API.

    @property
    def state(self) -> str:
        return self._m.state

    @property
    def done(self) -> bool:
        return self._m.done

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

    def start(self, now: float) -> list[Effect]:
        """Configure the session and enter the initial state.

        After calling this you must carry out the effects in order, then feed events to `receive`
        and call `advance` once `next_deadline()` has passed."""
        if self._m.started is not None:
            raise LocalProtocolError("start() was already called")
        return self._call(self._start, now, None)

    def receive(self, event: Event, now: float) -> list[Effect]:
        """Handle one event (timeouts due by `now` fire first, as they happened first).

        After calling this you must carry out the effects in order."""
        m = self._m
        if event.type in HIGH_RATE and now < self._due and self._playback.hangup is None and not m.done:
            # The hot path (dozens a second): nothing is due, and streamed deltas drive no
            # transition; only the gate (the response lives) and the audio have something to do.
            if now > m.now:
                m.now = now
            try:
                eid = event.event_id
                if eid is not None and self._recent.seen(eid):
                    return [Log("info", f"duplicate event {event.type} {eid} ignored")]
                return self._on_delta(event)
            except Exception as exc:
                return self._fail(exc)
        return self._call(self._receive, now, event)

    def advance(self, now: float) -> list[Effect]:
        """Time passed without an event: fire every timeout due by `now`.

        After calling this you must carry out the effects in order."""
        return self._call(self._fire_due, now, None)

    def next_deadline(self) -> float | None:
        """The earliest session time at which `advance` has something to do, or None."""
        return None if self._due == _NEVER else self._due

    def context(self) -> dict[str, Any]:
        """What templates can name (see flow.TEMPLATE_ROOTS)."""
        return self._facts.context()

    def snapshot(self) -> tuple[Any, ...]:
        """The whole state of the session as a plain, hashable value (no wall-clock time in it).

        `Interview.restore(flow, snapshot)` continues exactly as this interview would."""
        model = tuple(freeze(getattr(self._m, f.name)) for f in dataclasses.fields(Model))
        return (_SNAPSHOT, model, self._gate.snapshot(), self._playback.snapshot(), self._facts.snapshot(),
                self._recent.snapshot())

    @classmethod
    def restore(cls, flow: Flow, snapshot: tuple[Any, ...]) -> Interview:
        """An Interview of `flow` in the state `snapshot` describes. Raises LocalProtocolError
        for a snapshot this engine did not make."""
        if not snapshot or snapshot[0] != _SNAPSHOT or len(snapshot) != 6:
            raise LocalProtocolError(f"not a snapshot of this engine ({_SNAPSHOT})")
        _, model, gate, playback, facts, recent = snapshot
        iv = cls(flow)
        iv._m = Model(*(thaw(v) for v in model))
        iv._gate, iv._playback = Gate.restore(gate), Playback.restore(playback)
        iv._facts, iv._recent = Facts.restore(facts), RecentIds.restore(recent)
        iv._schedule()
        return iv

    def __reduce__(self) -> tuple[Any, ...]:
        # deepcopy and pickle go through the snapshot: the flow (and its machine) is shared, never copied.
        return (Interview.restore, (self.flow, self.snapshot()))

    def __deepcopy__(self, memo: dict[int, Any]) -> Interview:
        return Interview.restore(self.flow, self.snapshot())

    def __copy__(self) -> Interview:
        return Interview.restore(self.flow, self.snapshot())

    # Called by the flow's machine (machine.Runner).

    def step_holds(self, step: Step) -> bool:
        seen = self._m.seen
        return all(e in seen for e in step.events) and all(self._guard(g) for g in step.guards)

    def step_fires(self, step: Step, trigger: str) -> None:
        self._effects.append(Fired(step.via, step.source, step.target, trigger))
        if step.timeout:
            self._m.timeouts += 1
        if step.target is not None:  # external: leave the source first (UML order: exit, actions, enter)
            self._run_actions(self.flow.states[step.source].exit)
            self._leave(step.source)
            self._m.asking = step.target  # what the transition asks for belongs to where it goes
        self._run_actions(step.actions)

    def state_entered(self, state: str) -> None:
        self._enter(state)

    # Private: one call.

    def _call(self, step: Any, now: float, event: Event | None) -> list[Effect]:
        m = self._m
        if m.broken is not None:
            raise LocalProtocolError(f"the interview is in its error state ({m.broken}); it takes no more calls")
        if m.done:
            return []
        try:
            step(now) if event is None else step(event, now)
            return self._step_done()
        except Exception as exc:
            return self._fail(exc)

    def _fail(self, exc: Exception) -> list[Effect]:
        self._m.broken = f"{type(exc).__name__}: {exc}"
        self._m.done = True
        self._effects, self._event, self._due = [], None, _NEVER
        return [Save("internal error"), End(f"internal error: {self._m.broken}", "error")]

    def _start(self, now: float) -> None:
        m = self._m
        m.now = m.started = now
        m.ids += 1
        m.session_update = f"evt_{m.ids}"
        self._effects.append(Send({"event_id": m.session_update, "type": "session.update",
                                   "session": self._flow.session}))
        self._effects.append(Fired("initial", None, self.flow.initial, "start"))
        self._enter(self.flow.initial)

    def _receive(self, event: Event, now: float) -> None:
        self._fire_due(now)
        if self._m.done:
            return
        eid = event.event_id
        if eid is not None and self._recent.seen(eid):
            self._log("info", f"duplicate event {event.type} {eid} ignored")
            return
        self._event = event
        if self._playback.hangup is not None:  # a final state: only the audio still to be heard matters
            self._after_the_end(event)
        elif (handler := _HANDLERS.get(event.type)) is not None:
            handler(self, event)
        elif event.type.startswith("job."):
            self._on_job(event)
        elif event.response_id is not None:
            self._on_response_event(event)
        else:
            self._deliver(event.type)
        self._event = None

    def _on_delta(self, event: Event) -> list[Effect]:
        """A streamed delta: the response lives; an audio delta is played."""
        rid = event.response_id
        if rid is None:
            return []
        if self._gate.proven(rid, self._m.now):
            self._schedule()  # a response we had not seen: its silence deadline is new
        if event.type == _AUDIO_DELTA:
            play = self._playback.audio(rid, event.item_id, event.data.get("delta") or "")
            if play is not None:
                return [play]
        return []

    def _step_done(self) -> list[Effect]:
        self._schedule()
        effects, self._effects = self._effects, []
        return effects

    def _schedule(self) -> None:
        """Recompute next_deadline() (once per input)."""
        m = self._m
        if m.done or m.started is None:
            self._due = _NEVER
            return
        due = m.started + self._flow.max_duration
        if self._playback.hangup is not None:
            self._due = min(due, self._playback.hangup_at)
            return
        gate = self._gate.next_deadline()
        self._due = min(due, min(m.deadlines, default=(_NEVER, ""))[0], min(m.jobs.values(), default=_NEVER),
                        _NEVER if gate is None else gate)

    def _fire_due(self, now: float) -> None:
        m = self._m
        m.now = max(m.now, now)
        if m.now < self._due:
            return
        if m.started is not None and m.now >= m.started + self._flow.max_duration:
            limit = _duration(self._flow.max_duration)
            self._abort(f"max_duration {limit} reached in state '{m.state}'")
            return
        if self._playback.hangup is not None:
            self._hang_up_if_heard()
            return
        given_up, sends = self._gate.advance(m.now, m.ids + 1)
        for req in given_up:
            self._log("warning", f"no answer to the response asked for by '{req.state}' ({req.tag}): given up")
        self._send_all(sends)
        for name, deadline in list(m.jobs.items()):
            if deadline <= m.now and name in m.jobs:
                del m.jobs[name]
                self._effects.append(CancelJob(name))
                self._log("warning", f"job '{name}' timed out")
                self._deliver(f"job.{name}.failed")
        while not m.done and m.deadlines:
            deadline, trigger = min(m.deadlines)
            if deadline > m.now:
                break
            m.deadlines.remove((deadline, trigger))
            self._flow.trigger(trigger, m, self)

    # Private: the flow's states.

    def _deliver(self, name: str) -> bool:
        """Offer an event to the current state. True if a transition fired."""
        m = self._m
        if m.done or name not in self._flow.triggers[m.state]:
            return False
        m.seen.add(name)
        return self._flow.trigger(name, m, self)

    def _enter(self, name: str) -> None:
        m = self._m
        m.asking = name
        m.deadlines = [(m.now + delay, trigger) for delay, trigger in self._flow.timeouts[name]]
        self._run_actions(self.flow.states[name].enter)
        if self.flow.states[name].final and not m.done:
            # Hang up once queued audio has been heard (the flow may have asked for its last turn
            # while earlier audio still played), waiting at most its length plus a margin.
            self._playback.hang_up(f"reached final state '{name}'", m.now)
            self._hang_up_if_heard()

    def _leave(self, name: str) -> None:
        for req in self._gate.forget(name):
            self._log("info", f"left '{name}' before its response could start: dropped request {req.tag}")
        m = self._m
        m.seen, m.asked, m.deadlines = set(), set(), []

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
            self._deliver("input.transcript")

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
        if kind == _AUDIO_DELTA:
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

    def _end_audio(self, rid: str) -> None:
        if not self._gate.superseded(rid) and (end := self._playback.end(rid)) is not None:
            self._effects.append(end)

    # Private: guards and actions.

    def _guard(self, guard: str) -> bool:
        negate = guard.startswith("not ")
        name = guard.removeprefix("not ").strip()
        return self._guard_value(name) != negate

    def _guard_value(self, name: str) -> bool:
        status = self._event.status if self._event is not None else None
        if name == "speaking":
            return self._playback.speaking
        if name == "completed":
            return status == "completed"
        if name == "failed":
            return status in ("failed", "cancelled", "incomplete")
        spec, answers = self.flow.guards[name], self._facts.answers
        return ((spec.min_answers is None or answers >= spec.min_answers)
                and (spec.max_answers is None or answers <= spec.max_answers))

    def _run_actions(self, actions: Any) -> None:
        for action in actions:
            if self._m.done:
                return
            try:
                _ACTIONS[action.name](self, action.arg)
            except TemplateError as exc:
                self._log("error", str(exc))
                self._end(str(exc), "not_completed")

    def _respond(self, arg: Respond) -> None:
        body: dict[str, Any] = {}
        if arg.instructions is not None:
            body["instructions"] = self._render(arg.instructions)
        if arg.tool_choice is not None:
            body["tool_choice"] = arg.tool_choice
        if arg.input is not None:
            self._send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": self._render(arg.input)}]}})
        m = self._m
        m.requests += 1
        req = Request(f"r{m.requests}", m.asking, body)
        m.asked.add(req.tag)
        self._send_all(self._gate.request(req, m.now, m.ids + 1))

    def _tool_result(self, arg: ToolResult) -> None:
        call_id = self._facts.tool_call_id
        if call_id is None:
            self._log("warning", f"{self.state}: tool_result with no tool call to answer")
            return
        output = self._render(arg.output) if isinstance(arg.output, str) else self._render_json(arg.output)
        self._send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": output}})

    def _start_job(self, name: str) -> None:
        self._m.jobs[name] = self._m.now + self.flow.jobs[name].timeout
        # The job hears what was said: interviewer turns and the candidate turns transcribed so far.
        turns = [t for t in self.turns if t["role"] == "interviewer" or t.get("transcribed")]
        self._effects.append(StartJob(name, {"turns": turns, "options": dict(self.flow.jobs[name].options)}))

    def _cancel_job(self, name: str) -> None:
        if self._m.jobs.pop(name, None) is not None:
            self._effects.append(CancelJob(name))

    def _cancel_response(self, _: Any = None) -> None:
        if self._gate.active:
            self._send({"type": "response.cancel"})

    def _truncate(self, _: Any = None) -> None:
        self._effects.append(StopPlayback())
        self._cancel_response()

    def _save(self, reason: str) -> None:
        self._effects.append(Save(reason))

    def _log_action(self, text: str) -> None:
        self._log("info", f"{self.state}: {self._render(text)}")

    def _end_action(self, reason: str) -> None:
        final = self.flow.states[self.state].final
        self._end(reason, ("completed_degraded" if self._m.timeouts else "completed") if final else "not_completed")

    # Private: helpers.

    def _render(self, text: str) -> str:
        return render(text, self._facts.context(), self._m.state)

    def _render_json(self, value: Any) -> str:
        def walk(v: Any) -> Any:
            if isinstance(v, str):
                return self._render(v)
            if isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            return [walk(x) for x in v] if isinstance(v, list) else v
        return json.dumps(walk(value))

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


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}min"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


_HANDLERS: dict[str, Any] = {
    "error": Interview._on_error,
    "response.created": Interview._on_created,
    "response.output_item.added": Interview._on_output_item,
    "response.output_audio.delta": Interview._on_audio_delta,
    "response.output_audio.done": Interview._on_audio_done,
    "response.output_audio_transcript.done": Interview._on_transcript_done,
    "response.function_call_arguments.done": Interview._on_function_call,
    "response.done": Interview._on_response_done,
    "input.committed": Interview._on_committed,
    "input.transcript": Interview._on_transcript,
    "speech.started": Interview._on_speech_started,
    "speech.stopped": Interview._on_speech_stopped,
    "playback.done": Interview._on_playback_done,
    "playback.stopped": Interview._on_playback_stopped,
    "session.closed": Interview._on_session_closed,
}

_ACTIONS: dict[str, Any] = {
    "respond": Interview._respond,
    "tool_result": Interview._tool_result,
    "start": Interview._start_job,
    "cancel": Interview._cancel_job,
    "cancel_response": Interview._cancel_response,
    "truncate": Interview._truncate,
    "save": Interview._save,
    "log": Interview._log_action,
    "end": Interview._end_action,
}
