"""The world around one interview, as the explorer plays it: a Realtime server, the candidate,
the audio player, the jobs and the connection.

Rules of this module:
1. The world is data (`World`, copied per branch) and tables (`SCRIPT`, `STATUSES`, `DUPLICABLE`,
   `CANDIDATE`). It offers `moves()` — every input it could send the core next, each a `Move`
   of one or two inputs — and `apply()` reads the core's effects as the server, the player and
   the job runner would, noting every property violation they show.
2. Time is abstract: between two inputs time stands still, jumps to the core's next deadline, or
   (once between two deadlines) passes half the way to it, so that deadlines set later land on
   either side of earlier ones. The world never lets time reach an obligation it has (an event a
   response in progress must send within `gate.SILENCE_RELEASE`, a playback report due after the
   audio's length): those are the assumptions the core is built on, and `bound()` is their
   earliest. So a deadline fires, or time passes, only where no obligation is due first.
3. The world never reads the clock, the core's internals or anything outside its arguments.

What the world includes and assumes is listed in docs/authors.md ("Exploring every order").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..effects import CancelJob, Effect, End, EndAudio, Fired, Log, Play, Send, StartJob, StopPlayback
from ..events import Event, normalise
from ..flow import Flow
from ..gate import SILENCE_RELEASE
from ..playback import BYTES_PER_S, HANGUP_MARGIN

__all__ = ["World", "Move", "Finding", "Shape", "AUDIO_S", "PROPERTIES", "CANDIDATE", "FAULTS"]

NEVER = float("inf")
AUDIO_S = 1.0  # every response that speaks sends this much audio (one delta)
_AUDIO = "A" * (int(AUDIO_S * BYTES_PER_S) * 4 // 3)  # its base64 (the core only counts its length)
# Time passes only to points of this grid (absolute session time): relative times stay multiples of
# it and of the flow's delays, so states that differ by a hair merge. A quarter second is finer than
# every margin of the core (gate.SILENCE_RELEASE, playback.HANGUP_MARGIN, the backoffs).
GRID = 0.25
SPOKEN = "Hello."  # what the interviewer says (transcripts) ...
ANSWER = "I think so."  # ... and what the candidate says

# The properties, in the order they are reported.
PROPERTIES = {
    "double-create": "a second response.create while one is pending or in progress",
    "stall": "nothing can happen and the session is not over",
    "livelock": "a cycle of timeouts that makes no progress",
    "no-final": "no path to a final state",
    "template": "a template names something the session does not have",
    "hangup-unheard": "hung up while audio the flow asked for was still unheard",
    "tool-unanswered": "a tool call the state expects is never answered",
    "internal-error": "the core failed (outcome error)",
    "stuck-request": "a request waits while the server is free for longer than the gate's release bound",
}

# response.done statuses a response may end with, at any point of its script. A rate limit is a
# `failed` done with a rate_limit error, and only before anything was generated (a fault). A flow
# tells the statuses apart only by its guards `completed` / `failed` (flow.py BUILTIN_GUARDS):
# without them `completed` stands for all (the rate limit, which the gate tells apart, stays).
STATUSES = ("completed", "failed", "cancelled", "incomplete")
STATUS_GUARDS = frozenset({"completed", "failed"})
_RATE_LIMITED = {"type": "invalid_request_error", "code": "rate_limit_exceeded", "message": "Rate limit reached."}

# The server's order of one response's events after its response.created (realtime.md §2, §4):
# phase -> (event, next phase). `response.done` may come from any phase (then the events not yet
# sent are missing). audio.done and transcript.done come once each, in either order; the tool
# call is the response's second item, after its message.
SCRIPT: dict[str, tuple[tuple[str, str], ...]] = {
    "open": (("audio", "message"), ("tool", "tool")),
    "message": (("audio.done", "message"), ("transcript.done", "message"), ("tool", "tool")),
    "tool": (),
}
# The server's own responses (a fault, or its answer to a turn with create_response: true): its
# response.created (once it starts), some audio, then done.
OWN_SCRIPT: dict[str, tuple[tuple[str, str], ...]] = {"new": (("created", "open"),), "open": (("audio", "message"),),
                                                      "message": (), "tool": ()}

# The faults (each costs one of the path's fault budget), and where each is injected.
FAULTS = {
    "lost-created": "a response.created never arrives (decided as the create reaches the server)",
    "collision": "the server had just started a response of its own: created(own), then the collision error",
    "rate-limited": "a response fails on a rate limit before generating (done failed, rate_limit_exceeded)",
    "own-response": "the server starts a response of its own right after it was free again",
    "stray": "an output_audio_buffer.started naming a response that does not exist, while a create is pending",
    "late": "a late event of the last finished response: its transcript.done, output_audio_buffer.stopped, "
            "a duplicate response.done",
    "duplicate": "an event delivered twice in a row (a re-delivered frame)",
    "lost-done": "a response.done never arrives (the gate must release the response after its silence)",
    "lost-tool-call": "a function call's event never arrives (response.done still lists the call)",
}

# Events a move may deliver twice in a row (a re-delivered frame), at the cost of a fault.
DUPLICABLE = frozenset({"response.created", "response.done", "response.function_call_arguments.done",
                        "input.committed", "input.transcript", "playback.done"})

# The candidate's turn, in order: started -> stopped -> committed; then the transcript may come
# (completed or failed) or never. Events a state waits for when it listens to the candidate.
CANDIDATE = frozenset({"speech.started", "speech.stopped", "input.committed", "input.transcript",
                       "conversation.item.input_audio_transcription.failed"})


class Finding(NamedTuple):
    prop: str  # a key of PROPERTIES
    state: str  # the flow state it is about
    detail: str


class Move(NamedTuple):
    """One step of the world: what it changes (`op`, `arg`) and the inputs it feeds the core."""

    label: str
    op: str  # the World method that records the step ("" for none)
    arg: Any
    inputs: tuple[tuple[float, Event | None], ...]  # (t, event), or (t, None) for advance(t)
    fault: bool = False
    time: bool = False  # only time passes (a wait or a pass): livelocks are cycles of these


class Create(NamedTuple):
    """A response.create the server has received and not yet acted on."""

    event_id: str
    tag: str
    state: str
    sent: float
    tools: tuple[str, ...]  # tools it may call (by its tool_choice)


class Resp(NamedTuple):
    """A response in progress on the server."""

    rid: str
    item: str
    tag: str | None  # None: the server's own
    state: str | None
    tools: tuple[str, ...]
    phase: str
    sent: frozenset[str]  # body events delivered
    since: float  # its silence bound counts from here (the create until the core knows it is ours)
    audio_at: float | None  # when its audio was delivered: it finishes within HANGUP_MARGIN of it
    tagged: bool  # the core has seen its tag (response.created delivered)
    cancel: bool  # the core asked to cancel it
    status: str = ""  # once done
    call: tuple[str, str, str] | None = None  # its tool call: (call id, tool, arguments)
    auto: bool = False  # the server's own answer to a turn (create_response: true), not a fault


class Shape(NamedTuple):
    """What the world needs to know of the flow (computed once)."""

    tools: dict[str, list[str]]  # tool -> the arguments (JSON) a call may carry
    results: dict[str, dict[str, Any]]  # job -> the result it reports (every field the templates read)
    triggers: dict[str, frozenset[str]]  # state -> the events its transitions name
    answers: int  # the candidate answers at most this often (0: the flow never listens)
    faults: int  # faults per path
    max_duration: float
    statuses: tuple[str, ...]  # the response.done statuses worth telling apart
    finals: frozenset[str]  # the flow's final states
    auto: bool  # turn_detection.create_response: the server answers each committed turn itself
    named: frozenset[str]  # every event some state of the flow names
    kinds: frozenset[str]  # the FAULTS explored
    stop_matters: bool  # the flow names speech.stopped or ends turns on it

    @classmethod
    def of(cls, flow: Flow, answers: int, faults: int, kinds: frozenset[str] = frozenset(FAULTS)) -> Shape:
        tools = {t.name: [json.dumps(a) for a in _arguments(t.parameters)] for t in flow.session.tools}
        results: dict[str, dict[str, Any]] = {name: {} for name in flow.jobs}
        for text in _flow_texts(flow):
            for name in _template_names(text):
                root, *path = name.split(".")
                if root in results and path:
                    node = results[root]
                    for part in path[:-1]:
                        node = node.setdefault(part, {})
                    node.setdefault(path[-1], "a value")
        triggers = {name: frozenset(e for tr in s.transitions for e in tr.events) for name, s in flow.states.items()}
        guards = {g.removeprefix("not ").strip()
                  for s in flow.states.values() for tr in s.transitions for g in tr.guard}
        listens = (any(t & CANDIDATE for t in triggers.values()) or any(g in flow.guards for g in guards)
                   or any(n.split(".")[0] in ("answers", "last_answer") for text in _flow_texts(flow)
                          for n in _template_names(text)))
        statuses = STATUSES if guards & STATUS_GUARDS else STATUSES[:1]
        return cls(tools, results, triggers, answers if listens else 0, faults,
                   float(getattr(flow, "max_duration", 3600.0)), statuses,
                   frozenset(name for name, st in flow.states.items() if st.final),
                   bool((flow.session.turn_detection or {}).get("create_response")),
                   frozenset().union(*triggers.values()), kinds,
                   any("speech.stopped" in t for t in triggers.values())
                   or getattr(flow.session, "turn_end", "committed") == "speech_stopped")


@dataclass(slots=True)
class World:
    """The world's state on one path. Copied per branch (`copy`); its fields are immutable values."""

    now: float = 0.0
    creates: tuple[Create, ...] = ()
    responses: tuple[Resp, ...] = ()
    recent: Resp | None = None  # the last finished response: its late events may still come
    playq: tuple[tuple[str, str | None, float, float | None], ...] = ()  # (rid, item, seconds, ended at)
    head_since: float = 0.0  # the head of playq plays from here
    stops: tuple[Event, ...] = ()  # playback.stopped the player owes
    muted: frozenset[str] = frozenset()  # responses the player dropped (a barge-in)
    cand: str = "idle"  # idle | speaking | stopped
    item: str | None = None  # the candidate's current input item
    given: int = 0  # turns the candidate has started
    pending_tx: str | None = None  # committed item whose transcript may still come
    jobs: tuple[str, ...] = ()
    owed: tuple[tuple[str, str], ...] = ()  # (call id, state) tool calls a state took and has not answered
    faults: int = 0
    passed: bool = False  # time passed half way since the last deadline (once per interval)
    closed: bool = False  # the connection is gone
    over: str | None = None  # the session ended: "final", "closed" or "error"
    heard: frozenset[str] = frozenset()  # responses in progress whose audio was reported heard
    fallback: bool = False  # the final state was reached by a timeout (the flow's own bound)
    # What the last move started: faults are injected at their source only (a create just sent can
    # lose its created or collide; a response just opened can be rate-limited; a response just done
    # can be followed by late events or by a response of the server's own). Later is the same fault.
    just: tuple[str, ...] = ()
    serial: int = 0  # fresh ids
    expecting: tuple[str, str, str] | None = None  # (call id, tool, state) while a tool call is fed
    # Cancels (the gate's probes) that named a response not running: the server refuses each with
    # an error (event_id), at once.
    refusals: tuple[tuple[str, float], ...] = ()  # (event_id of the cancel, sent at)

    def copy(self) -> World:
        return World(self.now, self.creates, self.responses, self.recent, self.playq, self.head_since, self.stops,
                     self.muted, self.cand, self.item, self.given, self.pending_tx, self.jobs, self.owed, self.faults,
                     self.passed, self.closed, self.over, self.heard, self.fallback, (), self.serial, None,
                     self.refusals)

    # Questions.

    def busy(self) -> bool:
        """A create of ours is unanswered or a response is in progress on the server."""
        return bool(self.creates or self.responses)

    def quiet(self) -> bool:
        """Nothing the world has started must still happen (only what may never happen is left)."""
        return not (self.creates or self.responses or self.stops or self.refusals or self.cand != "idle"
                    or (self.playq and self.playq[0][3] is not None))

    def bound(self) -> float:
        """Time may not reach this before the world's next obligation is delivered."""
        b = NEVER
        for c in self.creates:
            b = min(b, c.sent + SILENCE_RELEASE)
        for _, sent in self.refusals:
            b = min(b, sent + SILENCE_RELEASE)
        for r in self.responses:
            b = min(b, response_bound(r))
        heard = self.heard_by()
        if heard is not None:
            b = min(b, heard)
        if self.stops:
            b = min(b, self.now)
        return b

    def heard_by(self) -> float | None:
        """When the player must report the head of its queue heard (None while it is not ended).
        The entries behind it start when they become the head."""
        if not self.playq:
            return None
        _, _, seconds, ended = self.playq[0]
        return None if ended is None else max(ended, self.head_since) + seconds

    # The moves.

    def slowest(self, queued: int) -> float:
        """How long the world may still take, at its slowest, to deliver everything it has
        started, plus `queued` requests the core still holds (an upper bound)."""
        whole = 3 * SILENCE_RELEASE + AUDIO_S  # created, audio, done, then the audio heard
        total = (len(self.creates) + queued) * whole
        for r in self.responses:
            # The bound holds for the whole rest of the response once it has spoken or while the
            # core waits for its tag; else the audio may still take a bound and the done another.
            rest = response_bound(r) - self.now
            total += (rest if "audio" in r.sent or not r.tagged else rest + HANGUP_MARGIN) + AUDIO_S
        heard = self.heard_by()
        if heard is not None:
            total += max(0.0, heard - self.now)
        return total

    def moves(self, shape: Shape, deadline: float | None, timer: float | None, queued: int,
              state: str) -> list[Move]:
        """Every input the world may feed next. `deadline` is the core's next deadline (None if
        only max_duration is left), `timer` the earliest of the flow's own timers (state timeouts,
        job timeouts, the hang-up wait), `queued` the requests the core's gate still holds,
        `state` the flow state the core is in."""
        out: list[Move] = []
        if self.over is not None:
            return out
        now, bound = self.now, self.bound()
        if deadline is not None and deadline < bound:
            out.append(Move(f"wait {deadline - now:g}s", "wait", deadline, ((deadline, None),), time=True))
            t = _grid_below(now + (deadline - now) / 2 + GRID / 2)
            if not self.passed and now < t < deadline:
                # Once per interval between two deadlines: events may also come half way.
                out.append(Move(f"pass {t - now:g}s", "passing", t, ((t, None),), time=True))
        t = _grid_below(bound) if bound < NEVER else now
        if timer is not None and bound < timer < now + self.slowest(queued) and now < t:
            # The world's next obligation comes as late as it may: a slow server (or player)
            # within the core's assumptions, so that a flow timer can fire before it is done.
            out.append(Move(f"late {t - now:g}s", "late_pass", t, ((t, None),), time=True))
        fault = self.faults > 0
        if not self.closed:
            out += self._server_moves(shape, fault)
            out += self._candidate_moves(shape, state)
        out += self._player_moves()
        for name in self.jobs:
            out.append(self._one(f"job {name} done", "job_ends", name,
                                 Event(f"job.{name}.done", data={"result": shape.results.get(name, {})})))
            out.append(self._one(f"job {name} failed", "job_ends", name,
                                 Event(f"job.{name}.failed", data={"error": "the job failed"})))
        if fault and "duplicate" in shape.kinds:
            out += [self._dup(m) for m in out if len(m.inputs) == 1 and m.inputs[0][1] is not None
                    and m.inputs[0][1].type in DUPLICABLE]
        if not self.closed and ("session.closed" in shape.triggers.get(state, ()) or state in shape.finals):
            # Elsewhere a closed connection ends the session the same way in every state.
            out.append(self._one("session closed", "close", None,
                                 Event("session.closed", data={"reason": "the server closed the connection"})))
        return out

    def _one(self, label: str, op: str, arg: Any, event: Event, fault: bool = False) -> Move:
        return Move(label, op, arg, ((self.now, event),), fault)

    def _dup(self, move: Move) -> Move:
        t, event = move.inputs[0]
        return Move(move.label + " (delivered twice)", move.op, move.arg, ((t, event), (t, event)), True)

    def _server_moves(self, shape: Shape, fault: bool) -> Iterator[Move]:
        for event_id, _ in self.refusals:
            yield self._one("cancel refused", "refuse", event_id, _cancel_refused(event_id))
        for i, c in enumerate(self.creates):
            if self.responses:  # the server is busy: it refuses the create (after what it sent first)
                if all(r.tagged for r in self.responses):
                    yield self._one("collision error", "reject", i, _error(c.event_id))
                continue
            rid, item = self._fresh("resp"), self._fresh("item")
            yield self._one("created", "accept", (i, rid, item, True), _created(rid, c.tag, c.state))
            if fault and "sent" in self.just:
                if "lost-created" in shape.kinds:
                    yield Move("created lost", "accept", (i, rid, item, False), (), True)
                if "collision" in shape.kinds:  # the server had just started one of its own
                    own = self._fresh("own")
                    yield Move("collision", "collide", (i, own, self._fresh("item")),
                               ((self.now, _created(own, None, None)),
                                (self.now, _error(c.event_id))), True)
        for i, r in enumerate(self.responses):
            yield from self._response_moves(i, r, shape, fault)
        if self.recent is not None and fault and "late" in shape.kinds:
            r = self.recent
            if r.tag is not None and "audio" in r.sent and "transcript.done" not in r.sent:
                yield self._one("late transcript.done", "late", "transcript.done",
                                _transcript_done(r.rid, r.item), True)
            if "done" in self.just or "output_audio_buffer.stopped" in shape.named:
                yield self._one("late output_audio_buffer.stopped", "late", "",
                                _simple("output_audio_buffer.stopped", "response_id", r.rid), True)
            if "done" in self.just:
                yield self._one("late duplicate response.done", "late", "", _done(r, r.status or "completed"), True)
        if fault and "stray" in shape.kinds and (("sent" in self.just and self.creates)
                                                 or "output_audio_buffer.started" in shape.named):
            # A stray id matters while a create is pending (it must not take the create's place);
            # elsewhere it is only recorded, unless the flow listens for that event.
            yield self._one("stray event", "stray", None,
                            _simple("output_audio_buffer.started", "response_id", self._fresh("stray")), True)
        if fault and "own-response" in shape.kinds and "done" in self.just and not self.busy():  # free again
            own = self._fresh("own")
            yield self._one("server starts its own response", "own", (own, self._fresh("item")),
                            _created(own, None, None), True)

    def _response_moves(self, i: int, r: Resp, shape: Shape, fault: bool) -> Iterator[Move]:
        script = SCRIPT if r.tag is not None else OWN_SCRIPT
        for event, phase in script[r.phase]:
            if event in r.sent:
                continue
            if event == "created":
                yield self._one("created (the server's own)", "body", (i, event, phase), _created(r.rid, None, None))
            elif event == "audio":
                yield self._one("audio", "body", (i, event, phase), _audio(r.rid, r.item))
            elif event == "audio.done":
                yield self._one("audio.done", "body", (i, event, phase), _audio_done(r.rid, r.item))
            elif event == "transcript.done":
                yield self._one("transcript.done", "body", (i, event, phase), _transcript_done(r.rid, r.item))
            else:
                for tool in r.tools:
                    for n, args in enumerate(shape.tools.get(tool, ["{}"])):
                        call = f"call_{r.rid}"
                        label = f"tool {tool}" + (f" ({n + 1})" if n else "")
                        yield self._one(label, "tool", (i, call, tool, args), _tool_call(r.rid, call, tool, args))
                        if fault and "lost-tool-call" in shape.kinds:
                            yield Move(label + " lost", "tool_lost", (i, call, tool, args), (), True)
        if r.tag is None:
            yield self._one("done completed", "finish", (i, "completed"), _done(r, "completed"))
            return
        for status in shape.statuses:
            yield self._one(f"done {status}", "finish", (i, status), _done(r, status))
        if fault and "lost-done" in shape.kinds:
            yield Move("done lost", "finish", (i, "completed"), (), True)
        if fault and "rate-limited" in shape.kinds and r.phase == "open" and f"open {r.rid}" in self.just:
            yield self._one("done rate-limited", "finish", (i, "failed"), _done(r, "failed", True), True)

    def _candidate_moves(self, shape: Shape, state: str) -> Iterator[Move]:
        # A turn starts only while the state listens to the candidate (or would stop the
        # interviewer for them); once started it always runs to its commit.
        if self.cand == "idle" and self.given < shape.answers and shape.triggers.get(state, frozenset()) & CANDIDATE:
            item = f"user_{self.given + 1}"
            yield self._one("candidate speaks", "speak", item,
                            _simple("input_audio_buffer.speech_started", "item_id", item))
        elif self.cand == "speaking" and self.item is not None and not shape.stop_matters:
            # Nothing reacts to the gap between the end of speech and its commit: one move.
            yield Move("candidate stops, committed", "stop_and_commit", shape,
                       ((self.now, _simple("input_audio_buffer.speech_stopped", "item_id", self.item)),
                        (self.now, _simple("input_audio_buffer.committed", "item_id", self.item))))
        elif self.cand == "speaking" and self.item is not None:
            yield self._one("candidate stops", "stop_speaking", None,
                            _simple("input_audio_buffer.speech_stopped", "item_id", self.item))
        elif self.cand == "stopped" and self.item is not None:
            yield self._one("committed", "commit", shape, _simple("input_audio_buffer.committed", "item_id", self.item))
        if self.pending_tx is not None:
            item = self.pending_tx
            yield self._one("transcript", "transcribed", None,
                            _simple("conversation.item.input_audio_transcription.completed", "item_id", item))
            yield self._one("transcription failed", "transcribed", None,
                            _simple("conversation.item.input_audio_transcription.failed", "item_id", item))

    def _player_moves(self) -> Iterator[Move]:
        if self.stops:
            yield self._one("playback stopped", "stopped", None, self.stops[0])
        if self.playq and self.playq[0][3] is not None:
            rid, item, seconds, _ = self.playq[0]
            yield self._one("playback done", "played", None,
                            Event("playback.done", response_id=rid, item_id=item,
                                  data={"played_ms": round(seconds * 1000)}))

    def _fresh(self, prefix: str) -> str:
        return f"{prefix}_{self.serial + 1}"

    # Steps: what a move changes in the world (before its inputs reach the core).

    def step(self, move: Move) -> None:
        self.just = ()
        if move.op == "wait":
            self.passed = False
        elif move.op == "passing":
            self.passed = True
        if move.fault:
            self.faults -= 1
        if move.op in ("wait", "passing", "late_pass"):
            self.now = move.arg
            return
        if move.op:
            getattr(self, "_" + move.op)(move.arg)
        if self.faults <= 0:
            self.recent = None  # no late event can come any more: forget the response

    def _accept(self, arg: tuple[int, str, str, bool]) -> None:
        i, rid, item, delivered = arg
        c = self.creates[i]
        self.serial += 2
        self.creates = self.creates[:i] + self.creates[i + 1:]
        since = self.now if delivered else c.sent  # a lost created: the gate's create timer runs on
        self.responses += (Resp(rid, item, c.tag, c.state, c.tools, "open", frozenset(), since, None, delivered,
                                False),)
        self.just += (f"open {rid}",)

    def _reject(self, i: int) -> None:
        self.creates = self.creates[:i] + self.creates[i + 1:]

    def _collide(self, arg: tuple[int, str, str]) -> None:
        i, own, item = arg
        self.serial += 2
        self.creates = self.creates[:i] + self.creates[i + 1:]
        self.responses += (Resp(own, item, None, None, (), "open", frozenset(), self.now, None, True, False),)

    def _own(self, arg: tuple[str, str]) -> None:
        own, item = arg
        self.serial += 2
        self.responses += (Resp(own, item, None, None, (), "open", frozenset(), self.now, None, True, False),)

    def _body(self, arg: tuple[int, str, str]) -> None:
        i, event, phase = arg
        r = self.responses[i]
        moved = r.tagged or event == "created"  # the silence bound counts from its last event now
        r = r._replace(phase=phase, sent=r.sent | {event}, since=self.now if moved else r.since,
                       audio_at=self.now if event == "audio" else r.audio_at, tagged=r.tagged or event == "created")
        self.responses = self.responses[:i] + (r,) + self.responses[i + 1:]

    def _tool(self, arg: tuple[int, str, str, str]) -> None:
        i, call, tool, args = arg  # `args` is the JSON the call carries (listed again in response.done)
        r = self.responses[i]
        self.responses = (self.responses[:i]
                          + (r._replace(phase="tool", sent=r.sent | {"tool"}, call=(call, tool, args),
                                        since=self.now if r.tagged else r.since),)
                          + self.responses[i + 1:])
        self.expecting = (call, tool, r.state or "")

    def _tool_lost(self, arg: tuple[int, str, str, str]) -> None:
        self._tool(arg)
        i = arg[0]
        r = self.responses[i]
        self.responses = self.responses[:i] + (r._replace(sent=r.sent | {"tool lost"}),) + self.responses[i + 1:]
        self.expecting = None  # the core hears of the call only from the response.done

    def _finish(self, arg: tuple[int, str]) -> None:
        i, status = arg
        r = self.responses[i]._replace(status=status)
        self.responses = self.responses[:i] + self.responses[i + 1:]
        self.recent = r
        self.heard -= {r.rid}
        self.just += ("done",)
        if r.call is not None and r.tag is not None and "tool lost" in r.sent:  # it comes with the done
            self.expecting = (r.call[0], r.call[1], r.state or "")

    def _late(self, what: str) -> None:
        if what and self.recent is not None:
            self.recent = self.recent._replace(sent=self.recent.sent | {what})

    def _stray(self, _: None) -> None:
        self.serial += 1

    def _speak(self, item: str) -> None:
        self.cand, self.item, self.given = "speaking", item, self.given + 1

    def _stop_speaking(self, _: None) -> None:
        self.cand = "stopped"

    def _stop_and_commit(self, shape: Shape) -> None:
        self._commit(shape)

    def _commit(self, shape: Shape) -> None:
        self.cand, self.pending_tx, self.item = "idle", self.item, None
        if shape.auto and not self.responses:  # the server answers the turn on its own
            self.serial += 2
            self.responses += (Resp(f"auto_{self.serial}", f"item_{self.serial}", None, None, (), "new", frozenset(),
                                    self.now, None, False, False, auto=True),)

    def _transcribed(self, _: None) -> None:
        self.pending_tx = None

    def _stopped(self, _: None) -> None:
        self.stops = self.stops[1:]

    def _played(self, _: None) -> None:
        rid = self.playq[0][0]
        self.playq = self.playq[1:]
        self.head_since = self.now
        if any(r.rid == rid for r in self.responses):
            self.heard |= {rid}

    def _job_ends(self, name: str) -> None:
        self.jobs = tuple(j for j in self.jobs if j != name)

    def _close(self, _: None) -> None:
        self.closed = True
        self.creates, self.responses, self.recent, self.cand, self.pending_tx = (), (), None, "idle", None

    # The core's effects, as the server, the player and the job runner see them.

    def apply(self, effects: Sequence[Effect], shape: Shape, fired: set[str], out: list[Finding], state: str) -> None:
        """Carry out `effects` (the core is now in `state`); note the vias fired and any finding."""
        error_log = ""
        for effect in effects:
            kind = type(effect)
            if kind is Fired:
                assert isinstance(effect, Fired)
                fired.add(effect.via)
                if effect.target in shape.finals:
                    self.fallback = ".after[" in effect.via
                exp = self.expecting
                if exp is not None and effect.event == f"tool.{exp[1]}":
                    self._owe(exp[0], exp[2])
            elif kind is Send:
                assert isinstance(effect, Send)
                self._send(effect.event, shape, out)
            elif kind is Play:
                assert isinstance(effect, Play)
                self._play(effect.response_id, effect.item_id, len(effect.audio) * 3 / 4 / BYTES_PER_S)
            elif kind is EndAudio:
                assert isinstance(effect, EndAudio)
                self._end_audio(effect.response_id)
            elif kind is StopPlayback:
                self._stop_playback()
            elif kind is StartJob:
                assert isinstance(effect, StartJob)
                self.jobs += (effect.name,)
            elif kind is CancelJob:
                assert isinstance(effect, CancelJob)
                self.jobs = tuple(j for j in self.jobs if j != effect.name)
            elif kind is Log:
                assert isinstance(effect, Log)
                if effect.level == "error":
                    error_log = effect.message
                elif effect.message.startswith("hanging up with audio") and not self.closed:
                    out.append(Finding("hangup-unheard", state, effect.message))
            elif kind is End:
                assert isinstance(effect, End)
                self._ended(effect, error_log, out, state)

    def _owe(self, call: str, state: str) -> None:
        if all(c != call for c, _ in self.owed):
            self.owed += ((call, state),)

    def took_tool_call(self, seen: Iterable[str]) -> None:
        """After a tool call was fed: a state that waits for it in a join has taken it too
        (`expecting` is None once it was answered in the same step)."""
        exp = self.expecting
        if exp is not None and f"tool.{exp[1]}" in seen:
            self._owe(exp[0], exp[2])
        self.expecting = None

    def _send(self, event: Any, shape: Shape, out: list[Finding]) -> None:
        kind = event.get("type")
        if kind == "response.create":
            meta = event["response"]["metadata"]
            state = meta.get("state", "?")
            # A response of the server's own that the core could not have seen yet (a fault: it
            # started just before) collides without being the core's doing; one it has seen, or one
            # the flow's create_response: true makes the server start, does not.
            running = [r for r in self.responses if r.tag is not None or r.tagged or r.auto]
            if self.creates or running:
                what = ("our earlier create is still unanswered" if self.creates else
                        f"response {running[0].rid} is still in progress on the server"
                        + (" (the server answers turns itself: create_response: true)" if running[0].auto else ""))
                out.append(Finding("double-create", state, f"response.create {event['event_id']} sent while {what}"))
            for call, asker in self.owed:
                out.append(Finding("tool-unanswered", asker, f"{call} unanswered when the next response was asked "
                                                             f"for by '{state}'"))
            self.owed = ()
            self.creates += (Create(event["event_id"], meta["engine_request"], state, self.now,
                                    _tools_for(event["response"].get("tool_choice"), shape)),)
            self.just += ("sent",)
        elif kind == "conversation.item.create" and event["item"].get("type") == "function_call_output":
            call = event["item"].get("call_id")
            self.owed = tuple(o for o in self.owed if o[0] != call)
            exp = self.expecting
            if exp is not None and exp[0] == call:
                self.expecting = None  # answered in the same step that took it
        elif kind == "response.cancel" and event.get("response_id"):  # the gate's probe of a silent response
            rid = event["response_id"]
            if any(r.rid == rid for r in self.responses):
                self.responses = tuple(r._replace(cancel=True) if r.rid == rid else r for r in self.responses)
            else:
                self.refusals += ((event["event_id"], self.now),)
        elif kind == "response.cancel":
            self.responses = tuple(r._replace(cancel=True) if r.tag is not None else r for r in self.responses)

    def _refuse(self, event_id: str) -> None:
        self.refusals = tuple(x for x in self.refusals if x[0] != event_id)

    def _play(self, rid: str, item: str | None, seconds: float) -> None:
        if rid in self.muted:
            return
        for i, (r, it, s, ended) in enumerate(self.playq):
            if r == rid:
                self.playq = self.playq[:i] + ((r, item or it, s + seconds, ended),) + self.playq[i + 1:]
                return
        if not self.playq:
            self.head_since = self.now
        self.playq += ((rid, item, seconds, None),)

    def _end_audio(self, rid: str) -> None:
        if rid in self.muted:
            return
        for i, (r, it, s, ended) in enumerate(self.playq):
            if r == rid:
                if ended is None:
                    self.playq = self.playq[:i] + ((r, it, s, self.now),) + self.playq[i + 1:]
                return
        if not self.playq:
            self.head_since = self.now
        self.playq += ((rid, None, 0.0, self.now),)  # no audio: reported as soon as it is its turn

    def _stop_playback(self) -> None:
        playing = self.playq[0] if self.playq and self.head_since <= self.now and self.playq[0][2] > 0 else None
        dropped = [r for r, _, _, _ in self.playq]  # every response that gets no playback.done
        played = round(playing[2] * 500) if playing else 0  # half of it was heard
        self.stops += (Event("playback.stopped", response_id=playing[0] if playing else None,
                             item_id=playing[1] if playing else None,
                             data={"played_ms": played, "dropped": dropped}),)
        self.muted |= frozenset(dropped)
        self.playq = ()

    def _ended(self, end: End, error_log: str, out: list[Finding], state: str) -> None:
        self.over = "closed" if self.closed else "error" if end.outcome == "error" else "final"
        if end.outcome == "error":
            out.append(Finding("internal-error", state, end.reason))
            return
        if self.closed:
            return
        if error_log and end.reason == error_log and "template {" in error_log:
            where, detail = state, error_log
            if error_log.startswith("state '"):  # the core's TemplateError names the state first
                where, _, detail = error_log[len("state '"):].partition("': ")
            out.append(Finding("template", where, detail))
        if end.ok and not self.fallback:  # a timeout into the final state is the flow's own bound
            for c in self.creates:
                out.append(Finding("hangup-unheard", c.state, f"hung up in '{state}' before the response asked for "
                                                              f"by '{c.state}' was even created"))
            for r in self.responses:
                if r.tag is not None and not r.cancel and r.rid not in self.muted and r.rid not in self.heard:
                    out.append(Finding("hangup-unheard", r.state or state,
                                       f"hung up in '{state}' while the response asked for by '{r.state}' was still "
                                       f"being generated"))
        for call, asker in self.owed:
            out.append(Finding("tool-unanswered", asker, f"{call} unanswered when the session ended in '{state}'"))
        self.owed = ()


def response_bound(r: Resp) -> float:
    """Its next event must come before this: within SILENCE_RELEASE of the last (of the create,
    until the core knows the response is ours), and its done within HANGUP_MARGIN of its audio."""
    b = r.since + SILENCE_RELEASE
    return b if r.audio_at is None else min(b, r.audio_at + HANGUP_MARGIN)


def _grid_below(t: float) -> float:
    """The last grid point strictly before `t`."""
    k = int(t // GRID)
    return (k - 1) * GRID if k * GRID >= t else k * GRID


def _tools_for(choice: Any, shape: Shape) -> tuple[str, ...]:
    """The tools a response may call, by the create's tool_choice."""
    if choice == "none":
        return ()
    if isinstance(choice, str) and choice in shape.tools:
        return (choice,)
    return tuple(shape.tools)


# Wire events ------------------------------------------------------------------------------------
# Built as the server sends them (GA names) and normalised like a received frame. No event_id: the
# core drops an id it has seen lately, and a duplicate is modelled as the same event delivered again.


def _server(raw: dict[str, Any]) -> Event:
    return normalise(raw)


# Each builder is cached: the same event is offered from many states, and Events are read-only.
_cached = functools.lru_cache(maxsize=1 << 16)


@_cached
def _simple(kind: str, field: str, value: str) -> Event:
    """An event that carries one id: the candidate's, a stray or late one."""
    raw: dict[str, Any] = {"type": kind, field: value}
    if kind.endswith("speech_started"):
        raw["audio_start_ms"] = 0
    elif kind.endswith("speech_stopped"):
        raw["audio_end_ms"] = 0
    elif kind.endswith("committed"):
        raw["previous_item_id"] = None
    elif kind.endswith("transcription.completed"):
        raw.update(content_index=0, transcript=ANSWER)
    elif kind.endswith("transcription.failed"):
        raw.update(content_index=0, error={"type": "transcription_error", "code": "audio_unintelligible",
                                           "message": "unclear"})
    return normalise(raw)


@_cached
def _created(rid: str, tag: str | None, state: str | None) -> Event:
    meta = {"engine_request": tag, "state": state} if tag is not None and state is not None else {}
    return _server({"type": "response.created", "response": {"id": rid, "status": "in_progress", "output": [],
                                                               "metadata": meta}})


@_cached
def _audio(rid: str, item: str) -> Event:
    return _server({"type": "response.output_audio.delta", "response_id": rid, "item_id": item, "output_index": 0,
                    "content_index": 0, "delta": _AUDIO})


@_cached
def _audio_done(rid: str, item: str) -> Event:
    return _server({"type": "response.output_audio.done", "response_id": rid, "item_id": item, "output_index": 0,
                    "content_index": 0})


@_cached
def _transcript_done(rid: str, item: str) -> Event:
    return _server({"type": "response.output_audio_transcript.done", "response_id": rid, "item_id": item,
                    "output_index": 0, "content_index": 0, "transcript": SPOKEN})


@_cached
def _tool_call(rid: str, call: str, name: str, arguments: str) -> Event:
    return _server({"type": "response.function_call_arguments.done", "response_id": rid, "item_id": f"fc_{call}",
                    "output_index": 1, "call_id": call, "name": name, "arguments": arguments})


def _done(r: Resp, status: str, rate_limited: bool = False) -> Event:
    return _done_event(r.rid, r.item, r.tag, r.state, "audio" in r.sent, r.call, status, rate_limited)


@_cached
def _done_event(rid: str, item: str, tag: str | None, state: str | None, spoke: bool,
                call: tuple[str, str, str] | None, status: str, rate_limited: bool) -> Event:
    output: list[dict[str, Any]] = []
    if spoke:
        output.append({"type": "message", "id": item, "role": "assistant", "status": status,
                       "content": [{"type": "output_audio", "transcript": SPOKEN}]})
    if call is not None:  # response.done lists the call with its arguments (realtime.md §4)
        output.append({"type": "function_call", "id": f"fc_{call[0]}", "call_id": call[0], "name": call[1],
                       "arguments": call[2], "status": "completed"})
    response: dict[str, Any] = {"id": rid, "status": status, "output": output,
                                "metadata": {"engine_request": tag, "state": state} if tag else {}}
    if rate_limited:
        response["status_details"] = {"type": status, "error": _RATE_LIMITED}
    return _server({"type": "response.done", "response": response})


def _cancel_refused(event_id: str) -> Event:
    return _server({"type": "error", "error": {
        "type": "invalid_request_error", "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found", "param": None, "event_id": event_id}})


@_cached
def _error(event_id: str) -> Event:
    return _server({"type": "error", "error": {
        "type": "invalid_request_error", "code": "conversation_already_has_active_response",
        "message": "Conversation already has an active response in progress. Wait until the response is finished "
                   "before creating a new one.", "param": None, "event_id": event_id}})


# The flow's shape ---------------------------------------------------------------------------------


def _arguments(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The argument objects the model may send: every declared parameter, and (when some are
    optional) only the required ones."""
    props = schema.get("properties") or {}
    required = [p for p in schema.get("required") or [] if p in props]
    full = {name: _value(spec) for name, spec in props.items()}
    if len(required) < len(props):
        return [full, {name: full[name] for name in required}]
    return [full]


def _value(spec: Any) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    return {"string": "because", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}.get(
        kind if isinstance(kind, str) else "string", "because")


def _flow_texts(flow: Flow) -> Iterator[str]:
    from ..flow import Respond, ToolResult

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for state in flow.states.values():
        actions = [*state.enter, *state.exit, *(a for t in state.transitions for a in t.actions),
                   *(a for t in state.after for a in t.actions)]
        for action in actions:
            arg = action.arg
            if isinstance(arg, Respond):
                yield from (s for s in (arg.instructions, arg.input) if s)
            elif isinstance(arg, ToolResult):
                yield from strings(arg.output)
            elif action.name == "log" and isinstance(arg, str):
                yield arg


def _template_names(text: str) -> list[str]:
    from ..flow import template_names

    return template_names(text)
