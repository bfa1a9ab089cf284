"""The interview core: events and time in, effects out. No I/O, no clock.

Rules of this module:
1. Every decision about the session is made in the core: here what the flow does (its states,
   guards, actions, timeouts, the session's limits); in conversation.py what each Realtime event
   means. Drivers carry effects out and report what happened as Events.
2. Time is the `now` argument, sampled once per call by the driver; deadlines go out through
   `next_deadline()` and come back as `advance(now)` (or any later `receive`).
3. The session's state is data (conversation.Model, the gate, the playback, the facts, the recent
   event ids); `snapshot()` is all of it. The flow's machine is shared by its sessions (machine.py).
4. A bug inside a call moves the interview to its error state (Save, then End with outcome
   "error"); every later call raises LocalProtocolError, as h11 does after ERROR.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .conversation import _HANDLERS, Conversation, Model
from .effects import CancelJob, Effect, End, Fired, Log, Save, Send, StartJob, StopPlayback
from .errors import LocalProtocolError, TemplateError
from .events import HIGH_RATE, Event, RecentIds
from .facts import Facts, freeze, render, thaw
from .flow import Flow, Respond, ToolResult
from .gate import SILENCE_RELEASE, Gate, Request
from .machine import Step, compiled
from .playback import Playback

__all__ = ["Interview"]

_NEVER = float("inf")
_SNAPSHOT = "interview/1"
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(Model))  # the snapshot's layout, in order
# A job hears the candidate's words: started while a finished turn is still being transcribed (the
# flow replies on the commit, the transcript comes 0.3-1.5 s later), it waits this long for them.
TRANSCRIPT_WAIT = 5.0


class Interview(Conversation):
    """One interview session of `flow`.

    Call `start(now)` once, then `receive(event, now)` for each server or engine event and
    `advance(now)` when `next_deadline()` has passed. Each returns the effects to carry out, in
    order. After an `End` effect (`done` is True) every call returns [].
    """

    def __init__(self, flow: Flow):
        super().__init__(compiled(flow), Model(flow.initial, flow.initial))
        self.flow = flow
        self._due = _NEVER  # next_deadline(), recomputed after every step
        self._hot_until = -_NEVER  # deltas before this take the hot path (-inf: none may)

    # Public API.

    @property
    def state(self) -> str:
        return self._m.state

    @property
    def done(self) -> bool:
        return self._m.done

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
        if now < self._hot_until and event.type in HIGH_RATE:
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
        m = self._m
        model = tuple([freeze(getattr(m, name)) for name in _MODEL_FIELDS])
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
        self._effects, self._event, self._due, self._hot_until = [], None, _NEVER, -_NEVER
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

    def _step_done(self) -> list[Effect]:
        self._schedule()
        effects, self._effects = self._effects, []
        return effects

    def _schedule(self) -> None:
        """Recompute next_deadline() (once per input)."""
        m = self._m
        if m.done or m.started is None:
            self._due, self._hot_until = _NEVER, -_NEVER
            return
        due = m.started + self._flow.max_duration
        if self._playback.hangup is not None:  # in a final state every event takes the long path
            self._due, self._hot_until = min(due, self._playback.hangup_at), -_NEVER
            return
        gate = self._gate.next_deadline()
        self._due = self._hot_until = min(due, min(m.deadlines, default=(_NEVER, ""))[0],
                                          min(m.jobs.values(), default=_NEVER), min(m.holds.values(), default=_NEVER),
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
        for probe in sends:
            if probe["type"] == "response.cancel":
                self._log("warning", f"response {probe['response_id']} silent for {SILENCE_RELEASE:g} s: cancelled "
                                     "to learn whether it still runs")
        self._end_released_audio()
        self._send_all(sends)
        self._start_held_jobs()
        for name, deadline in list(m.jobs.items()):
            if deadline <= m.now and name in m.jobs:
                del m.jobs[name]
                m.holds.pop(name, None)
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
            content = [{"type": "input_text", "text": self._render(arg.input)}]
            self._send({"type": "conversation.item.create",
                        "item": {"type": "message", "role": "user", "content": content}})
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
        m = self._m
        m.jobs[name] = m.now + self.flow.jobs[name].timeout  # the flow's timeout counts from the action
        m.holds[name] = m.now + TRANSCRIPT_WAIT
        self._start_held_jobs()

    def _start_held_jobs(self) -> None:
        m = self._m
        for name, until in list(m.holds.items()):
            if self._facts.awaiting_transcripts and m.now < until:
                continue
            del m.holds[name]
            # The job hears what was said: interviewer turns and the candidate's transcribed turns,
            # as copies: the facts go on changing (a late speech.stopped, a barge-in's heard_ms) and
            # the job reads its inputs in another thread.
            turns = [dict(t) for t in self.turns if t["role"] == "interviewer" or t.get("transcribed")]
            self._effects.append(StartJob(name, {"turns": turns, "options": dict(self.flow.jobs[name].options)}))

    def _cancel_job(self, name: str) -> None:
        self._m.holds.pop(name, None)
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

def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}min"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


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
