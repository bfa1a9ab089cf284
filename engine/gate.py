"""The response gate: at most one `response.create` in flight, by construction.

Rules of this module:
1. The Realtime API allows one response in progress per conversation. The gate sends the head of
   its queue only in IDLE (no create pending, no response in progress): `send` has one cell in
   TABLE. That cell is the whole collision-safety argument.
2. Every change of `state` is a lookup in TABLE; a miss is a LocalProtocolError naming the state
   and the input (a bug in the engine, never the server's doing).
3. Only the tag decides whose a response is: it answers our pending create when its
   response.created or response.done echoes that create's tag in `response.metadata`.
4. Only events that prove a response exists on the server (its own `response.*` events) put it in
   progress. A response in progress that sends nothing for SILENCE_RELEASE seconds is asked about:
   a `response.cancel` naming it (the probe). An error answering the probe (nothing of that id
   runs) frees it at once; its `response.done` (it still ran: now cancelled) frees it as usual;
   silence through another SILENCE_RELEASE, and a create that nothing answers for
   CREATE_ANSWER_WAIT, are presumed over. So one lost event never blocks the gate, and a response
   that is merely slow while one of its events was lost is never taken for over.
5. The gate is data and calls nobody. Each input returns the client events to send now; the
   interview asks questions (`busy`, `finished(rid)`, `request_of(rid)`) and never reads fields.

    state              request  send       start             accept  reject  free
    IDLE               IDLE     REQUESTED  ACTIVE            -       -       -
    REQUESTED          =        -          REQUESTED_ACTIVE  ACTIVE  IDLE    -
    ACTIVE             =        -          ACTIVE            -       -       IDLE
    REQUESTED_ACTIVE   =        -          =                 ACTIVE  ACTIVE  REQUESTED
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import LocalProtocolError

__all__ = ["Gate", "GateState", "Request", "TABLE", "INPUTS", "SILENCE_RELEASE", "CREATE_ANSWER_WAIT",
           "UNKNOWN_ACTIVE_WAIT",
           "COLLISION_RETRIES", "RATE_LIMIT_BACKOFF", "is_collision", "is_rate_limited"]


class GateState(enum.Enum):
    IDLE = "idle"  # nothing pending, nothing in progress: the next create may go
    REQUESTED = "requested"  # our create is pending (sent, not yet answered)
    ACTIVE = "active"  # a response is in progress (ours or not), no create pending
    REQUESTED_ACTIVE = "requested_active"  # our create is pending while another response runs


IDLE, REQUESTED, ACTIVE, REQUESTED_ACTIVE = GateState

INPUTS = ("request", "send", "start", "accept", "reject", "free")
# request: a request joins the queue.  send: the head of the queue is sent.  start: a response we
# were not waiting for is in progress.  accept: the pending create is answered by its response.
# reject: the pending create is refused (or presumed lost).  free: the last response in progress ended.
TABLE: dict[GateState, dict[str, GateState]] = {
    IDLE: {"request": IDLE, "send": REQUESTED, "start": ACTIVE},
    REQUESTED: {"request": REQUESTED, "start": REQUESTED_ACTIVE, "accept": ACTIVE, "reject": IDLE},
    ACTIVE: {"request": ACTIVE, "start": ACTIVE, "free": IDLE},
    REQUESTED_ACTIVE: {"request": REQUESTED_ACTIVE, "start": REQUESTED_ACTIVE, "accept": ACTIVE, "reject": ACTIVE,
                       "free": REQUESTED},
}

SILENCE_RELEASE = 5.0  # seconds without an event of a response in progress: probed, then presumed over
# A server answers a create at once (response.created, or an error) however long the response then
# takes; only a lost frame leaves it unanswered. Longer than SILENCE_RELEASE: a slow start is no loss.
CREATE_ANSWER_WAIT = 15.0
UNKNOWN_ACTIVE_WAIT = 2.0  # a collision named a response we never saw: wait this long for it
COLLISION_RETRIES = 1  # a create rejected as a collision is sent once more
RATE_LIMIT_BACKOFF = (1.0, 2.0, 4.0)  # seconds before each re-send of a rate-limited response


@dataclass(slots=True)
class Request:
    """One `respond` of the flow, waiting for, or holding, the conversation."""

    tag: str  # echoed back as response.metadata.engine_request
    state: str  # the flow state that asked for it
    body: Mapping[str, Any] = field(default_factory=dict)  # the `response` object to send
    collisions: int = 0
    rate_limits: int = 0
    not_before: float = 0.0
    wanted: bool = True  # False once the state that asked has been left: never re-sent

    def frozen(self) -> tuple[Any, ...]:
        return (self.tag, self.state, tuple(self.body.items()), self.collisions, self.rate_limits,
                self.not_before, self.wanted)


def is_collision(code: str | None, message: str | None) -> bool:
    # Older servers sent code null with only the message (realtime.md §3).
    return code == "conversation_already_has_active_response" or (message or "").startswith(
        "Conversation already has an active response"
    )


def is_rate_limited(response: Any) -> bool:
    """True for a response.done payload that failed on a rate limit (retryable)."""
    if not isinstance(response, dict) or response.get("status") != "failed":
        return False
    details = response.get("status_details")
    error = details.get("error") if isinstance(details, dict) else None
    if not isinstance(error, dict):
        return False
    return "rate_limit" in str(error.get("code") or "") or "rate_limit" in str(error.get("type") or "")


class Gate:
    """Sans-I/O response gate. Each input returns the client events to send now, in order.

    Inputs that can send take `next_id`, the next free client event number: the gate holds no
    reference to anybody, and the caller counts the events it is handed.
    """

    def __init__(self) -> None:
        self.state = IDLE
        # Requests by tag, from `request` until their response is done (or they are given up).
        self._requests: dict[str, Request] = {}
        # Tags waiting for the conversation, in order.
        self._queue: list[str] = []
        # The create in flight: its tag, its event_id and when it was sent.
        self._pending: tuple[str, str, float] | None = None
        # Responses in progress on the server -> session time of their last event.
        self._in_progress: dict[str, float] = {}
        # A collision said a response runs that we never saw: presumed over at this time.
        self._unknown_until: float | None = None
        # Response id -> tag of the request it answers.
        self._answers: dict[str, str] = {}
        # Responses that are over; and those of them that failed on a rate limit and were asked again.
        self._finished: set[str] = set()
        self._superseded: set[str] = set()
        # Probes: the event_id of each response.cancel sent to a silent response -> that response.
        self._probes: dict[str, str] = {}

    # Public questions.

    @property
    def busy(self) -> bool:
        """A create is pending or a response is in progress: a new request would wait."""
        return self.state is not IDLE

    @property
    def active(self) -> bool:
        """A response is in progress on the server (a `response.cancel` has something to cancel)."""
        return self.state in (ACTIVE, REQUESTED_ACTIVE)

    @property
    def queued(self) -> int:
        """Requests waiting to be sent."""
        return len(self._queue)

    def sendable(self, now: float) -> bool:
        """A queued request could go now if the conversation were free (no backoff holds it)."""
        return bool(self._queue) and self._requests[self._queue[0]].not_before <= now

    def finished(self, response_id: str) -> bool:
        return response_id in self._finished

    def in_progress(self, response_id: str) -> bool:
        """The server is (presumed to be) still generating it."""
        return response_id in self._in_progress

    def known(self, response_id: str) -> bool:
        """In progress, over, or attributed: the server has shown us this response."""
        return response_id in self._in_progress or response_id in self._finished or response_id in self._answers

    def request_of(self, response_id: str | None) -> str | None:
        """The tag of our request that `response_id` answers, or None (not ours, or not yet known)."""
        return self._answers.get(response_id) if response_id else None

    def superseded(self, response_id: str | None) -> bool:
        """The response failed on a rate limit and its request was asked again: its events are stale."""
        return response_id in self._superseded

    def next_deadline(self) -> float | None:
        times = [t + SILENCE_RELEASE for t in self._in_progress.values()]
        if self._pending is not None:
            times.append(self._pending[2] + CREATE_ANSWER_WAIT)
        if self._unknown_until is not None:
            times.append(self._unknown_until)
        if self.state is IDLE and self._queue and self._requests[self._queue[0]].not_before:
            times.append(self._requests[self._queue[0]].not_before)
        return min(times, default=None)

    # Public inputs. `next_id` is the number the next client event_id may use; the events returned
    # use `evt_<next_id>`, `evt_<next_id + 1>`, ... in order.

    def request(self, req: Request, now: float, next_id: int) -> list[dict[str, Any]]:
        """Queue a response; it is sent at once when the conversation is free."""
        self._requests[req.tag] = req
        self._queue.append(req.tag)
        self._move("request")
        return self._pump(now, next_id)

    def created(self, response_id: str, tag: str | None, now: float, next_id: int) -> list[dict[str, Any]]:
        """`response.created`. Ours when it echoes the pending tag, whatever was seen of this id before."""
        if response_id in self._finished:
            return []  # reordered after its done
        if self._pending is not None and tag is not None and tag == self._pending[0]:
            self._accept(response_id, now)
        else:
            self.proven(response_id, now)
        return self._pump(now, next_id)

    def proven(self, response_id: str, now: float) -> bool:
        """Another event of `response_id` (output item, audio, transcript): it exists on the server.
        True if that puts it in progress (its response.created was lost or is late).

        Cheap on purpose: every audio delta calls it."""
        progress = self._in_progress
        if response_id in progress:
            progress[response_id] = now
            return False
        if response_id in self._finished:
            return False
        self._start(response_id, now)
        return True

    def done(self, response_id: str, tag: str | None, payload: Any, now: float,
             next_id: int) -> tuple[str | None, list[dict[str, Any]]]:
        """`response.done`. Returns the tag of the request it answers (None if foreign or
        duplicate, or if a rate limit made the request go again: then `superseded(rid)`)."""
        if response_id in self._finished:
            return None, []
        if self._pending is not None and tag is not None and tag == self._pending[0]:
            self._accept(response_id, now)  # its response.created was lost
        self._finished.add(response_id)
        self._end(response_id)
        answered = self._answers.get(response_id)
        req = self._requests.get(answered) if answered else None
        if req is not None and is_rate_limited(payload) and req.rate_limits < len(RATE_LIMIT_BACKOFF) and req.wanted:
            req.not_before = now + RATE_LIMIT_BACKOFF[req.rate_limits]
            req.rate_limits += 1
            self._queue.insert(0, req.tag)
            self._superseded.add(response_id)
            return None, self._pump(now, next_id)
        if req is not None:
            del self._requests[req.tag]
        return answered, self._pump(now, next_id)

    def error(self, event_id: str | None, code: str | None, message: str | None, now: float,
              next_id: int) -> tuple[Request | None, list[dict[str, Any]]]:
        """An `error` event. Returns the request the server refused for good, if any."""
        pending = self._pending
        if pending is None:
            return None, []  # about nothing in flight (a create answered long ago, or no create)
        ours = event_id == pending[1] or (event_id is None and is_collision(code, message))
        if not ours:
            return None, []
        req = self._requests[pending[0]]
        self._pending = None
        self._move("reject")
        if is_collision(code, message) and req.collisions < COLLISION_RETRIES:
            req.collisions += 1
            self._queue.insert(0, req.tag)
            if not self.active:  # the server is busy with a response we never saw
                self._unknown_until = now + UNKNOWN_ACTIVE_WAIT
                self._move("start")
            return None, self._pump(now, next_id)
        del self._requests[req.tag]
        return req, self._pump(now, next_id)

    def advance(self, now: float, next_id: int) -> tuple[list[Request], list[dict[str, Any]]]:
        """Time passed: release what has been silent too long, send what a backoff held back.
        Returns the requests given up (a create nothing answered) and the events to send."""
        given_up: list[Request] = []
        if self._pending is not None and now >= self._pending[2] + CREATE_ANSWER_WAIT:
            req = self._requests.pop(self._pending[0])
            self._pending = None
            self._move("reject")
            given_up.append(req)
        if self._unknown_until is not None and now >= self._unknown_until:
            self._unknown_until = None
            self._free_if_idle()
        probes: list[dict[str, Any]] = []
        for rid, last in list(self._in_progress.items()):
            if now < last + SILENCE_RELEASE:
                continue
            if rid in self._probes.values():
                self._end(rid)  # silent through its probe as well: presumed over
            else:
                event_id = f"evt_{next_id + len(probes)}"
                self._probes[event_id] = rid
                self._in_progress[rid] = now  # the probe's answer has SILENCE_RELEASE to come
                probes.append({"type": "response.cancel", "response_id": rid, "event_id": event_id})
        return given_up, probes + self._pump(now, next_id + len(probes))

    def probe_refused(self, event_id: str | None, now: float, next_id: int) -> list[dict[str, Any]] | None:
        """An `error` answering a probe: no response of that id runs on the server, so it is over.
        Returns the events to send now, or None if `event_id` is not a probe's."""
        rid = self._probes.get(event_id) if event_id is not None else None
        if rid is None:
            return None
        self._end(rid)
        return self._pump(now, next_id)

    def forget(self, state: str) -> list[Request]:
        """The flow left `state`: drop its queued requests (returned) and never re-send the others."""
        dropped = [self._requests[t] for t in self._queue if self._requests[t].state == state]
        for req in self._requests.values():
            if req.state == state:
                req.wanted = False
        for req in dropped:
            del self._requests[req.tag]
        self._queue = [t for t in self._queue if t in self._requests]
        return dropped

    # Snapshots.

    def snapshot(self) -> tuple[Any, ...]:
        return (self.state.value, tuple(r.frozen() for r in self._requests.values()), tuple(self._queue),
                self._pending, tuple(self._in_progress.items()), self._unknown_until,
                tuple(self._answers.items()), tuple(sorted(self._finished)), tuple(sorted(self._superseded)),
                tuple(self._probes.items()))

    @classmethod
    def restore(cls, snap: tuple[Any, ...]) -> Gate:
        gate = cls()
        state, requests, queue, pending, progress, unknown, answers, finished, superseded, probes = snap
        gate.state = GateState(state)
        for tag, asker, body, collisions, rate_limits, not_before, wanted in requests:
            gate._requests[tag] = Request(tag, asker, dict(body), collisions, rate_limits, not_before, wanted)
        gate._queue = list(queue)
        gate._pending = (pending[0], pending[1], pending[2]) if pending is not None else None
        gate._in_progress = dict(progress)
        gate._unknown_until = unknown
        gate._answers = dict(answers)
        gate._finished = set(finished)
        gate._superseded = set(superseded)
        gate._probes = dict(probes)
        return gate

    # Private.

    def _move(self, event: str) -> None:
        try:
            self.state = TABLE[self.state][event]
        except KeyError:
            raise LocalProtocolError(f"gate can't handle {event} in state {self.state.name}") from None

    def _accept(self, response_id: str, now: float) -> None:
        assert self._pending is not None
        self._answers[response_id] = self._pending[0]
        self._pending = None
        self._in_progress[response_id] = now
        self._unknown_until = None  # the server took our create: whatever ran before is over
        self._move("accept")

    def _start(self, response_id: str, now: float) -> None:
        self._in_progress[response_id] = now
        self._unknown_until = None  # the response a collision told us about, most likely
        self._move("start")

    def _end(self, response_id: str) -> None:
        if self._probes and response_id in self._probes.values():
            self._probes = {e: r for e, r in self._probes.items() if r != response_id}
        if self._in_progress.pop(response_id, None) is not None or self._unknown_until is not None:
            self._unknown_until = None  # whatever the collision was about is over too
            self._free_if_idle()

    def _free_if_idle(self) -> None:
        if self.active and not self._in_progress and self._unknown_until is None:
            self._move("free")

    def _pump(self, now: float, next_id: int) -> list[dict[str, Any]]:
        if self.state is not IDLE or not self._queue:
            return []
        req = self._requests[self._queue[0]]
        if req.not_before > now:
            return []
        self._move("send")
        self._queue.pop(0)
        event_id = f"evt_{next_id}"
        self._pending = (req.tag, event_id, now)
        body = dict(req.body)
        body["metadata"] = {**body.get("metadata", {}), "engine_request": req.tag, "state": req.state}
        return [{"type": "response.create", "event_id": event_id, "response": body}]
