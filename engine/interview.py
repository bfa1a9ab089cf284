"""The interview core: events and time in, effects out. No I/O, no clock.

Rules of this module:
1. Every decision about the conversation lives here: which response an event belongs to, when the
   flow moves, what is sent. Drivers only carry effects out and report what happened as Events.
2. Time is the `now` argument, sampled once per call by the driver; deadlines go out through
   `next_deadline()` and come back as a call to `advance(now)` (or any later `receive`).
3. Response events reach the flow only when the current state asked for that response; late,
   duplicate and foreign events are recorded (`stale`) and change nothing.
4. The flow's state machine is a sync, strict `transitions.Machine`; its callbacks only append
   effects. High-rate events (audio deltas) never reach it.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from transitions import Machine

from .effects import CancelJob, Effect, End, EndAudio, Fired, Log, Play, Save, Send, StartJob, StopPlayback
from .errors import TemplateError
from .events import HIGH_RATE, Event
from .flow import Flow, Respond, ToolResult, template_names
from .gate import Gate, Request

__all__ = ["Interview"]

_DEDUPE_WINDOW = 512  # server event ids remembered to drop exact duplicates
_AUDIO_DELTA = "response.output_audio.delta"
_NEVER = float("inf")
_BYTES_PER_S = 48_000  # pcm16, 24 kHz, mono
HANGUP_MARGIN = 5.0  # in a final state, wait for queued audio at most its length plus this
_NOT_COMPLETED = ("failed", "cancelled", "incomplete")


class _Model:
    """The object `transitions` moves between states; it holds nothing but `state`."""

    state: str


class Interview:
    """One interview session of `flow`.

    Call `start(now)` once, then `receive(event, now)` for each server or engine event and
    `advance(now)` when `next_deadline()` has passed. Each returns the effects to carry out, in
    order. After an `End` effect (`done` is True) every call returns [].
    """

    def __init__(self, flow: Flow):
        self.flow = flow
        self.done = False
        # Facts gathered so far: what the reports and templates are made of.
        self.turns: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}  # job name -> result
        self.tool_args: dict[str, Any] = {}  # arguments of the last tool call
        self.stale: list[dict[str, Any]] = []  # events that belonged to no waiting state
        self._tool_call_id: str | None = None
        self._call_names: dict[str, str | None] = {}
        self._superseded: set[str] = set()  # responses replaced by a retry: their events are stale
        self._owner = flow.initial  # the state new requests belong to
        self._effects: list[Effect] = []
        self._event: Event | None = None  # the event being handled (for guards and actions)
        self._now = 0.0
        self._ids = 0  # client event ids: evt_1, evt_2, ...
        self._requests = 0  # response requests: r1, r2, ... (echoed in response.metadata)
        self._gate = Gate(self._new_event_id)
        # Per state: events seen since entry (for joins), requests it made, its timeouts.
        self._seen: set[str] = set()
        self._owned: set[str] = set()
        self._deadlines: list[tuple[float, str]] = []
        self._jobs: dict[str, float] = {}  # running job -> deadline
        # Audio: bytes received per item (to clamp truncation) and per response (to bound the
        # final wait), what was heard of interrupted items, and per response: ended, playing,
        # silenced by a barge-in.
        self._received: dict[str, int] = {}
        self._heard_ms: dict[str, int] = {}
        self._audio_ended: set[str] = set()
        self._playing: set[str] = set()
        self._silenced: set[str] = set()
        self._seen_ids: deque[str] = deque()  # the last _DEDUPE_WINDOW ids, oldest first...
        self._seen_set: set[str] = set()  # ...and the same ids, for the lookup
        self._seen_keys: set[tuple] = set()  # terminal events already handled
        self._hangup: str | None = None  # a final state was reached: why the session will end
        self._hangup_until = _NEVER  # ...and when to stop waiting for queued audio to be heard
        self._audio_bytes: dict[str, int] = {}
        self._due = _NEVER  # next_deadline(), recomputed after every step
        self._speech: dict[str, float] = {}  # input item id -> speech start time
        self._speech_end: dict[str, float] = {}
        self._build_machine()

    # Public API.

    @property
    def state(self) -> str:
        return self._model.state

    def start(self, now: float) -> list[Effect]:
        """Configure the session and enter the initial state. Send the effects, then wait for events."""
        self._now = now
        self._send(self._session_update())
        self._effects.append(Fired("initial", None, self.flow.initial, "start"))
        self._enter(self.flow.initial)
        return self._step_done()

    def receive(self, event: Event, now: float) -> list[Effect]:
        """Handle one event. Timeouts due by `now` fire first, as they happened first."""
        if self.done:
            return []
        if event.type in HIGH_RATE and now < self._due and self._hangup is None:
            # The hot path (dozens a second): nothing is due, and streamed deltas change no
            # deadline and drive no transition; only audio has something to do.
            if now > self._now:
                self._now = now
            if event.type == _AUDIO_DELTA and self._fresh(event):
                self._on_audio_delta(event)
            return self._flush()
        self._fire_due(now)
        if not self.done:
            self._dispatch(event)
        return self._step_done()

    def advance(self, now: float) -> list[Effect]:
        """Time passed without an event: fire every timeout due by `now`."""
        if self.done:
            return []
        self._fire_due(now)
        return self._step_done()

    def next_deadline(self) -> float | None:
        """The earliest time at which `advance` has something to do, or None."""
        return None if self._due == _NEVER else self._due

    def context(self) -> dict[str, Any]:
        """What templates can name (see flow.TEMPLATE_ROOTS)."""
        answers = [t["text"] for t in self.turns if t["role"] == "candidate"]
        return {"answers": len(answers), "last_answer": answers[-1] if answers else "",
                "tool": self.tool_args, **self.results}

    # Dispatch.

    def _fresh(self, event: Event) -> bool:
        """False for an exact duplicate (same server event_id) of a recent event."""
        eid = event.event_id
        if eid is None:
            return True
        if eid in self._seen_set:
            self._log("info", f"duplicate event {event.type} {eid} ignored")
            return False
        if len(self._seen_ids) == _DEDUPE_WINDOW:
            self._seen_set.discard(self._seen_ids.popleft())
        self._seen_ids.append(eid)
        self._seen_set.add(eid)
        return True

    def _dispatch(self, event: Event) -> None:
        if not self._fresh(event):
            return
        self._event = event
        if self._hangup is not None:  # a final state: only the audio still to be heard matters now
            self._on_audio_after_the_end(event)
            self._hang_up_when_heard()
            return
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event)
        elif event.type.startswith("job."):
            self._on_job(event)
        elif event.response_id is not None:
            self._deliver_response(event)
        else:
            self._deliver(event.type)
        self._event = None

    def _on_error(self, event: Event) -> None:
        error = event.data.get("error") or {}
        code, message = error.get("code"), error.get("message")
        rejected, sends = self._gate.error(error.get("event_id"), code, message, self._now)
        if code == "response_cancel_not_active":
            self._log("info", "cancel raced the end of the response (benign)")
        elif rejected is not None:
            self._log("error", f"server rejected the response for '{rejected.owner}': {code}: {message}")
        else:
            self._log("warning", f"server error {code}: {message}")
        self._send_all(sends)
        self._deliver("error")

    def _on_created(self, event: Event) -> None:
        if event.response_id:
            self._send_all(self._gate.created(event.response_id, event.metadata.get("engine_request"), self._now))
        self._deliver_response(event)

    def _on_audio_delta(self, event: Event) -> None:
        play = self._play(event)
        if play is not None:
            self._effects.append(play)

    def _play(self, event: Event) -> Play | None:
        """The Play effect for an audio delta, or None if its response must stay silent."""
        rid, item = event.response_id, event.item_id
        if rid is None or rid in self._silenced or rid in self._audio_ended:
            return None
        if rid not in self._playing:  # its first audio
            self._claim(rid)
            self._playing.add(rid)
        audio = event.data.get("delta") or ""
        # Decoded length without decoding: base64 is 4 characters per 3 bytes, less the padding.
        size = len(audio) * 3 // 4 - audio[-2:].count("=") if audio else 0
        self._audio_bytes[rid] = self._audio_bytes.get(rid, 0) + size
        if item:
            self._received[item] = self._received.get(item, 0) + size
        return Play(rid, item, audio)

    def _on_audio_after_the_end(self, event: Event) -> None:
        """In a final state, audio still arriving or playing is let through (and waited for)."""
        kind, rid = event.type, event.response_id
        if kind == _AUDIO_DELTA:
            before = self._audio_bytes.get(rid or "", 0)
            self._on_audio_delta(event)
            self._hangup_until += (self._audio_bytes.get(rid or "", 0) - before) / _BYTES_PER_S
        elif kind in ("response.output_audio.done", "response.done") and rid:
            self._end_audio(rid)
        elif kind in ("playback.done", "playback.stopped"):
            _HANDLERS[kind](self, event)

    def _on_audio_done(self, event: Event) -> None:
        if event.response_id:
            self._end_audio(event.response_id)
        self._deliver_response(event)

    def _on_transcript_done(self, event: Event) -> None:
        if not self._first(("transcript", event.item_id or event.response_id)):
            return
        self._add_turn("interviewer", event.data.get("transcript") or "", response_id=event.response_id,
                       item_id=event.item_id)
        self._deliver_response(event)

    def _on_output_item(self, event: Event) -> None:
        item = event.data.get("item") or {}
        if item.get("type") == "function_call" and event.call_id:
            # Beta's function_call_arguments.done has no `name`; the item announced it.
            self._call_names[event.call_id] = item.get("name")
        self._deliver_response(event)

    def _on_function_call(self, event: Event) -> None:
        if not self._first(("call", event.call_id)):
            return
        name = event.data.get("name") or self._call_names.get(event.call_id or "")
        self._tool_call(name, event.call_id, event.data.get("arguments"), event.response_id)

    def _on_response_done(self, event: Event) -> None:
        rid = event.response_id
        if rid is None:
            self._log("warning", "response.done without a response id ignored")
            return
        if rid in self._gate.finished:
            self._stale(event, "duplicate response.done")
            return
        req, sends = self._gate.done(rid, event.metadata.get("engine_request"), event.data.get("response"), self._now,
                                     retry=lambda r: r.tag in self._owned)
        if req is None and self._gate.owner_of(rid) is not None:
            self._log("warning", f"response {rid} failed on a rate limit; asking again after a backoff")
            self._superseded.add(rid)
        # What the done event carries may be all we get of lost events: recover it.
        for item in (event.data.get("response") or {}).get("output") or []:
            self._recover_item(rid, item)
        self._end_audio(rid)
        self._send_all(sends)
        if req is not None:
            self._deliver_response(event)
        elif self._gate.owner_of(rid) is None:
            self._stale(event, "foreign or duplicate response")

    def _on_transcript(self, event: Event) -> None:
        if not self._first(("input", event.item_id)):
            return
        item = event.item_id or ""
        self._add_turn("candidate", event.data.get("transcript") or "", item_id=item,
                       start=self._speech.get(item), end=self._speech_end.get(item))
        self._deliver("input.transcript")

    def _on_speech_started(self, event: Event) -> None:
        self._speech[event.item_id or ""] = self._now
        self._deliver("speech.started")

    def _on_speech_stopped(self, event: Event) -> None:
        self._speech_end[event.item_id or ""] = self._now
        self._deliver("speech.stopped")

    def _on_playback_done(self, event: Event) -> None:
        rid = event.response_id
        self._playing.discard(rid)
        self._deliver_response(event)

    def _on_playback_stopped(self, event: Event) -> None:
        stopped = [event.response_id, *event.data.get("dropped", [])]
        for rid in stopped:
            if rid:
                self._silenced.add(rid)
                self._playing.discard(rid)
        played = int(event.data.get("played_ms") or 0)
        item = event.item_id
        if item and played > 0:
            # Never claim more than was received: the server rejects audio_end_ms past the end.
            heard = min(played, self._received.get(item, 0) // 48)
            self._send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                        "audio_end_ms": heard})
            self._heard_ms[item] = heard
            for turn in self.turns:
                if turn.get("item_id") == item and turn["role"] == "interviewer":
                    turn["heard_ms"] = heard  # the transcript says more than the candidate heard
        self._deliver("playback.stopped")

    def _on_job(self, event: Event) -> None:
        _, name, outcome = event.type.split(".", 2)
        if name not in self._jobs:
            self._stale(event, f"job '{name}' is not running")
            return
        del self._jobs[name]
        if outcome == "done":
            self.results[name] = event.data.get("result")
        else:
            self._log("warning", f"job '{name}' failed: {event.data.get('error', 'unknown error')}")
        self._deliver(event.type)

    def _on_session_closed(self, event: Event) -> None:
        if not self._deliver("session.closed") and not self.done:
            self._end(f"connection closed in state '{self.state}': {event.data.get('reason', 'no reason given')}", ok=False)

    # Correlation.

    def _claim(self, rid: str) -> None:
        """An event names a response we have not seen created (its response.created was lost):
        the server is busy with it, whoever asked for it."""
        if self._gate.owner_of(rid) is None and rid not in self._gate.finished and rid not in self._gate.active:
            self._send_all(self._gate.created(rid, None, self._now))

    def _deliver_response(self, event: Event) -> None:
        rid = event.response_id
        if rid is not None:
            self._claim(rid)
        if event.type not in self._triggers[self.state]:
            return  # the state does not wait for it: nothing to deliver or to call stale
        req = self._gate.owner_of(rid)
        if req is None or req.tag not in self._owned or rid in self._superseded:
            self._stale(event, "not requested by the current state")
            return
        if event.type == "response.done" and not self._first(("done", rid)):
            return
        self._deliver(event.type)

    def _recover_item(self, rid: str, item: dict[str, Any]) -> None:
        if item.get("type") == "function_call":
            if self._first(("call", item.get("call_id"))):
                self._tool_call(item.get("name"), item.get("call_id"), item.get("arguments"), rid)
        elif item.get("type") == "message":
            for part in item.get("content") or []:
                key = ("transcript", item.get("id") or rid)
                if part.get("transcript") and self._first(key):
                    self._add_turn("interviewer", part["transcript"], response_id=rid, item_id=item.get("id"))

    def _tool_call(self, name: str | None, call_id: str | None, arguments: Any, rid: str | None) -> None:
        try:
            args = json.loads(arguments) if isinstance(arguments, str) and arguments else (arguments or {})
        except ValueError:
            self._log("warning", f"tool {name}: arguments are not JSON: {str(arguments)[:80]!r}")
            args = {"raw": arguments}
        self.tool_args = args if isinstance(args, dict) else {"value": args}
        self._tool_call_id = call_id
        self.turns.append({"role": "tool", "text": f"{name}({json.dumps(self.tool_args)})", "t": self._now,
                           "response_id": rid, "call_id": call_id})
        req = self._gate.owner_of(rid)
        if name and req is not None and req.tag in self._owned:
            self._deliver(f"tool.{name}")
        else:
            self._log("info", f"tool call {name} from a response this state did not ask for: recorded")

    def _first(self, key: tuple) -> bool:
        if key in self._seen_keys:
            return False
        self._seen_keys.add(key)
        return True

    def _stale(self, event: Event, why: str) -> None:
        self.stale.append({"t": self._now, "type": event.type, "response_id": event.response_id, "why": why})

    # The flow's machine.

    def _build_machine(self) -> None:
        self._model = _Model()
        self._triggers: dict[str, set[str]] = {}
        self._machine = Machine(model=self._model, states=list(self.flow.states), initial=self.flow.initial,
                                auto_transitions=False, send_event=True, ignore_invalid_triggers=False,
                                model_override=False)
        for name, state in self.flow.states.items():
            triggers = self._triggers.setdefault(name, set())
            for i, tr in enumerate(state.transitions):
                via = f"states.{name}.transitions[{i}]"
                for event in tr.events:
                    triggers.add(event)
                    self._machine.add_transition(event, name, tr.target, conditions=[self._condition(tr)],
                                                 before=[self._runner(via, name, tr.target, tr.actions)])
            for i, timeout in enumerate(state.after):
                via = f"states.{name}.after[{i}]"
                self._machine.add_transition(f"after.{i}", name, timeout.target,
                                             before=[self._runner(via, name, timeout.target, timeout.actions)])
            self._machine.get_state(name).on_enter.append(self._on_enter_state)

    def _condition(self, tr) -> Callable[[Any], bool]:
        def holds(_: Any) -> bool:
            return all(e in self._seen for e in tr.events) and all(self._guard(g) for g in tr.guard)
        return holds

    def _runner(self, via: str, source: str, target: str | None, actions) -> Callable[[Any], None]:
        def run(event_data: Any) -> None:
            self._effects.append(Fired(via, source, target, event_data.event.name))
            if target is not None:  # external: leave the source first (UML order: exit, actions, enter)
                self._run_actions(self.flow.states[source].exit)
                self._leave(source)
                self._owner = target  # what the transition asks for belongs to where it goes
            self._run_actions(actions)
        return run

    def _deliver(self, name: str) -> bool:
        """Offer an event to the current state. True if a transition fired."""
        if self.done or name not in self._triggers.get(self.state, ()):
            return False
        self._seen.add(name)
        return bool(self._model.trigger(name))

    def _on_enter_state(self, event_data: Any) -> None:
        self._enter(event_data.state.name)

    def _enter(self, name: str) -> None:
        state = self.flow.states[name]
        self._owner = name
        self._deadlines = [(self._now + t.delay, f"after.{i}") for i, t in enumerate(state.after)]
        self._run_actions(state.enter)
        if state.final and not self.done:
            # Hang up once queued audio has been heard (the flow may have asked for its last turn
            # while earlier audio still played), waiting at most its length plus a margin.
            queued = sum(self._audio_bytes.get(rid, 0) for rid in self._playing) / _BYTES_PER_S
            self._hangup = f"reached final state '{name}'"
            self._hangup_until = self._now + queued + HANGUP_MARGIN
            self._hang_up_when_heard()

    def _leave(self, name: str) -> None:
        for req in self._gate.drop(name):
            self._log("info", f"left '{name}' before its response could start: dropped request {req.tag}")
        self._seen = set()
        self._owned = set()
        self._deadlines = []

    def _hang_up_when_heard(self) -> None:
        if not self._playing:
            self._end(self._hangup, ok=True)
        elif self._now >= self._hangup_until:
            self._log("warning", f"hanging up with audio of {len(self._playing)} response(s) not yet heard")
            self._end(self._hangup, ok=True)

    def _fire_due(self, now: float) -> None:
        self._now = max(self._now, now)
        if self._now < self._due:
            return
        if self._hangup is not None:
            self._hang_up_when_heard()
            return
        self._send_all(self._gate.advance(self._now))
        for name, deadline in list(self._jobs.items()):
            if deadline <= self._now and name in self._jobs:
                del self._jobs[name]
                self._effects.append(CancelJob(name))
                self._log("warning", f"job '{name}' timed out")
                self._deliver(f"job.{name}.failed")
        while not self.done and self._deadlines:
            deadline, trigger = min(self._deadlines)
            if deadline > self._now:
                break
            self._deadlines.remove((deadline, trigger))
            self._model.trigger(trigger)

    # Guards and actions.

    def _guard(self, guard: str) -> bool:
        negate = guard.startswith("not ")
        name = guard.removeprefix("not ").strip()
        return self._guard_value(name) != negate

    def _guard_value(self, name: str) -> bool:
        status = self._event.status if self._event is not None else None
        if name == "speaking":
            return bool(self._playing)
        if name == "completed":
            return status == "completed"
        if name == "failed":
            return status in _NOT_COMPLETED
        spec = self.flow.guards[name]
        answers = self.context()["answers"]
        return ((spec.min_answers is None or answers >= spec.min_answers)
                and (spec.max_answers is None or answers <= spec.max_answers))

    def _run_actions(self, actions) -> None:
        for action in actions:
            if self.done:
                return
            try:
                _ACTIONS[action.name](self, action.arg)
            except TemplateError as exc:
                self._log("error", str(exc))
                self._end(str(exc), ok=False)

    def _respond(self, arg: Respond) -> None:
        body: dict[str, Any] = {}
        if arg.instructions is not None:
            body["instructions"] = self._render(arg.instructions)
        if arg.tool_choice is not None:
            body["tool_choice"] = arg.tool_choice
        if arg.input is not None:
            self._send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": self._render(arg.input)}]}})
        self._requests += 1
        req = Request(tag=f"r{self._requests}", owner=self._owner, body=body)
        self._owned.add(req.tag)
        self._send_all(self._gate.request(req, self._now))

    def _tool_result(self, arg: ToolResult) -> None:
        if self._tool_call_id is None:
            self._log("warning", f"{self.state}: tool_result with no tool call to answer")
            return
        output = self._render(arg.output) if isinstance(arg.output, str) else json.dumps(self._render_all(arg.output))
        self._send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": self._tool_call_id, "output": output}})

    def _start_job(self, name: str) -> None:
        job = self.flow.jobs[name]
        self._jobs[name] = self._now + job.timeout
        turns = [t for t in self.turns if t["role"] in ("candidate", "interviewer")]
        self._effects.append(StartJob(name, {"turns": turns, "options": dict(job.options)}))

    def _cancel_job(self, name: str) -> None:
        if self._jobs.pop(name, None) is not None:
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
        self._end(reason, ok=self.flow.states[self.state].final)

    # Helpers.

    def _render(self, text: str) -> str:
        context = self.context()
        for name in template_names(text):
            value: Any = context
            for part in name.split("."):
                if isinstance(value, dict) and part in value:
                    value = value[part]
                else:
                    raise TemplateError(f"state '{self.state}': template {{{name}}} names nothing the session "
                                        f"has yet ('{part}' is missing)")
            text = text.replace("{" + name + "}", str(value))
        return text.replace("{{", "{").replace("}}", "}")

    def _render_all(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._render(value)
        if isinstance(value, dict):
            return {k: self._render_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._render_all(v) for v in value]
        return value

    def _add_turn(self, role: str, text: str, **extra: Any) -> None:
        turn = {"role": role, "text": text, "t": self._now, **extra}
        if role == "interviewer" and extra.get("item_id") in self._heard_ms:
            turn["heard_ms"] = self._heard_ms[extra["item_id"]]
        self.turns.append(turn)

    def _end_audio(self, rid: str) -> None:
        if rid not in self._audio_ended and rid not in self._silenced and rid not in self._superseded:
            self._audio_ended.add(rid)
            self._playing.add(rid)
            self._effects.append(EndAudio(rid))

    def _end(self, reason: str, ok: bool) -> None:
        self.done = True
        self._effects.append(End(reason, "completed" if ok else "not_completed"))

    def _new_event_id(self) -> str:
        self._ids += 1
        return f"evt_{self._ids}"

    def _send(self, event: dict[str, Any]) -> None:
        self._effects.append(Send({"event_id": self._new_event_id(), **event}))

    def _send_all(self, events: list[dict]) -> None:
        self._effects.extend(Send(e) for e in events)

    def _log(self, level: str, message: str) -> None:
        self._effects.append(Log(level, message))

    def _step_done(self) -> list[Effect]:
        """End of a step: recompute the next deadline (once per input), hand out the effects."""
        if self.done:
            self._due = _NEVER
        elif self._hangup is not None:
            self._due = self._hangup_until
        else:
            gate = self._gate.next_deadline()
            self._due = min((t for t, _ in self._deadlines), default=_NEVER)
            self._due = min(self._due, min(self._jobs.values(), default=_NEVER), _NEVER if gate is None else gate)
        return self._flush()

    def _flush(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def _session_update(self) -> dict[str, Any]:
        s = self.flow.session
        audio_in: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": 24000},
                                    "turn_detection": s.turn_detection}
        if s.transcription is not None:
            audio_in["transcription"] = s.transcription
        session: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": audio_in,
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": s.voice}},
            "tools": [{"type": "function", "name": t.name, "description": t.description,
                       "parameters": t.parameters} for t in s.tools],
            "tool_choice": "auto",
        }
        if s.instructions is not None:
            session["instructions"] = s.instructions
        return {"type": "session.update", "session": session}


_HANDLERS: dict[str, Callable[[Interview, Event], None]] = {
    "error": Interview._on_error,
    "response.created": Interview._on_created,
    "response.output_item.added": Interview._on_output_item,
    "response.output_audio.delta": Interview._on_audio_delta,
    "response.output_audio.done": Interview._on_audio_done,
    "response.output_audio_transcript.done": Interview._on_transcript_done,
    "response.function_call_arguments.done": Interview._on_function_call,
    "response.done": Interview._on_response_done,
    "input.transcript": Interview._on_transcript,
    "speech.started": Interview._on_speech_started,
    "speech.stopped": Interview._on_speech_stopped,
    "playback.done": Interview._on_playback_done,
    "playback.stopped": Interview._on_playback_stopped,
    "session.closed": Interview._on_session_closed,
}

_ACTIONS: dict[str, Callable[[Interview, Any], None]] = {
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
