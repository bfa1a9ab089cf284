"""The response gate: at most one `response.create` in flight, by construction.

Rules of this module:
1. The Realtime API allows one response in progress per conversation. The gate sends the head of
   its queue only when no create is pending and no response is active; nothing else sends
   `response.create`. That one condition (`_free`) is the whole collision-safety argument.
2. A create is resolved by the `response.created` or `response.done` that echoes its tag in
   `response.metadata` (then the response is ours) or by an `error` that echoes its `event_id`.
3. Inputs never raise: a late, duplicate or foreign event changes nothing it should not.

States (derived, see `state`):  IDLE -request-> REQUESTED -created-> ACTIVE -done-> IDLE
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Gate", "GateState", "Request", "TABLE", "is_collision", "is_rate_limited"]


class GateState(enum.Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    ACTIVE = "active"


IDLE, REQUESTED, ACTIVE = GateState.IDLE, GateState.REQUESTED, GateState.ACTIVE

# Every (state, input) -> state the gate can take, before it sends the next queued request.
# `error` means an error about our pending create; `collision` the active-response error.
TABLE: dict[GateState, dict[str, GateState]] = {
    IDLE: {"request": REQUESTED, "created": ACTIVE, "done": IDLE, "error": IDLE, "collision": IDLE},
    REQUESTED: {
        "request": REQUESTED,  # queued behind the pending create
        "created": ACTIVE,
        "done": IDLE,  # its response.created was lost; done still names our request
        "error": IDLE,
        "collision": ACTIVE,  # something else is speaking; wait for its done
    },
    ACTIVE: {"request": ACTIVE, "created": ACTIVE, "done": IDLE, "error": ACTIVE, "collision": ACTIVE},
}

COLLISION_RETRIES = 1  # a create rejected as a collision is sent once more, after a done
RATE_LIMIT_BACKOFF = (1.0, 2.0, 4.0)  # seconds before each re-send of a rate-limited response
UNKNOWN_ACTIVE_WAIT = 2.0  # a collision named a response we never saw: wait this long for its done
UNKNOWN = "?"  # `active` when the server says a response runs but we never saw its id


@dataclass(slots=True)
class Request:
    """One `respond` of the flow, waiting for, or holding, the conversation."""

    tag: str  # echoed back as response.metadata.engine_request
    owner: str  # the flow state that asked for it
    body: dict[str, Any] = field(default_factory=dict)  # the `response` object to send
    collisions: int = 0
    rate_limits: int = 0
    not_before: float = 0.0


def is_collision(code: str | None, message: str | None) -> bool:
    # Older servers sent code null with only the message (realtime.md §3).
    return code == "conversation_already_has_active_response" or (message or "").startswith(
        "Conversation already has an active response"
    )


def is_rate_limited(response: Any) -> bool:
    """True for a response.done payload that failed on a rate limit (retryable)."""
    if not isinstance(response, dict) or response.get("status") != "failed":
        return False
    error = (response.get("status_details") or {}).get("error") or {}
    return "rate_limit" in str(error.get("code") or "") or "rate_limit" in str(error.get("type") or "")


class Gate:
    """Sans-I/O gate. Each input returns the client events to send now, in order."""

    def __init__(self, new_event_id: Callable[[], str]):
        self._new_event_id = new_event_id
        # Requests waiting for the conversation, in order.
        self.queue: deque[Request] = deque()
        # The create we sent and its event_id, until created / error / done resolves it.
        self.pending: tuple[Request, str] | None = None
        # Responses in progress on the server (ours or not); UNKNOWN when an error says one runs
        # that we never saw. Normally at most one; more only when a done was lost.
        self.active: set[str] = set()
        # Deadline after which an UNKNOWN active response is presumed over.
        self.unknown_until: float | None = None
        # Response id -> the request that produced it; event_id -> request, for errors.
        self.owners: dict[str, Request] = {}
        self.sent: dict[str, Request] = {}
        # Responses that are over: their late or duplicate events change nothing.
        self.finished: set[str] = set()

    @property
    def state(self) -> GateState:
        if self.pending is not None:
            return REQUESTED
        return ACTIVE if self.active else IDLE

    # Public inputs.

    def request(self, req: Request, now: float) -> list[dict]:
        """Queue a response; it is sent at once when the conversation is free."""
        self.queue.append(req)
        return self._pump(now)

    def created(self, response_id: str, tag: str | None, now: float) -> list[dict]:
        """`response.created` (or the first event naming an unseen response)."""
        if response_id in self.finished or response_id in self.active:
            return []
        self._claim(response_id, tag)
        if UNKNOWN in self.active:  # the response the collision told us about
            self.active.discard(UNKNOWN)
            self.unknown_until = None
        self.active.add(response_id)
        return self._pump(now)

    def done(self, response_id: str, tag: str | None, payload: Any, now: float,
             retry: Callable[[Request], bool] = lambda req: True) -> tuple[Request | None, list[dict]]:
        """`response.done`. Returns the request it answers (None if foreign, duplicate or retried).

        A rate-limited response is asked for again after a backoff if `retry(request)` says it is
        still wanted."""
        if response_id in self.finished:
            return None, []
        self._claim(response_id, tag)
        self.finished.add(response_id)
        self.active.discard(response_id)
        self.active.discard(UNKNOWN)  # whatever the collision was about is over too
        req = self.owners.get(response_id)
        if (req is not None and is_rate_limited(payload) and req.rate_limits < len(RATE_LIMIT_BACKOFF)
                and retry(req)):
            req.not_before = now + RATE_LIMIT_BACKOFF[req.rate_limits]
            req.rate_limits += 1
            self.queue.appendleft(req)
            req = None
        return req, self._pump(now)

    def error(self, event_id: str | None, code: str | None, message: str | None, now: float) -> tuple[Request | None, list[dict]]:
        """An `error` event. Returns a request the server rejected for good, if any."""
        req = self.sent.get(event_id) if event_id else None
        if req is None and event_id is None and self.pending is not None and is_collision(code, message):
            req = self.pending[0]  # old servers do not echo event_id
        if req is None:
            return None, []
        if self.pending is not None and self.pending[0] is req:
            self.pending = None
        else:  # we took another response for this one's; that response is not ours
            for rid, owner in list(self.owners.items()):
                if owner is req and rid not in self.finished:
                    del self.owners[rid]
        if is_collision(code, message) and req.collisions < COLLISION_RETRIES:
            req.collisions += 1
            self.queue.appendleft(req)
            if not self.active:
                self.active.add(UNKNOWN)
                self.unknown_until = now + UNKNOWN_ACTIVE_WAIT
            return None, self._pump(now)
        return req, self._pump(now)

    def advance(self, now: float) -> list[dict]:
        """Time passed: send what a backoff or an unknown active response held back."""
        if UNKNOWN in self.active and self.unknown_until is not None and now >= self.unknown_until:
            self.active.discard(UNKNOWN)
            self.unknown_until = None
        return self._pump(now)

    def next_deadline(self) -> float | None:
        if UNKNOWN in self.active:
            return self.unknown_until
        if self.state is IDLE and self.queue and self.queue[0].not_before:
            return self.queue[0].not_before
        return None

    def drop(self, owner: str) -> list[Request]:
        """Forget queued (unsent) requests of a state the flow has left."""
        dropped = [r for r in self.queue if r.owner == owner]
        self.queue = deque(r for r in self.queue if r.owner != owner)
        return dropped

    def owner_of(self, response_id: str | None) -> Request | None:
        return self.owners.get(response_id) if response_id else None

    # Private.

    def _claim(self, response_id: str, tag: str | None) -> None:
        """Attribute a response to the pending create when its echoed metadata names it.

        Only the tag decides: a response without it (server VAD, another client) is not ours, even
        with a create in flight. The server echoes `response.metadata` on created and done."""
        if self.pending is None or response_id in self.owners:
            return
        req, _ = self.pending
        if tag == req.tag:
            self.owners[response_id] = req
            self.pending = None

    def _pump(self, now: float) -> list[dict]:
        if self.pending is not None or self.active or not self.queue:
            return []
        if self.queue[0].not_before > now:
            return []
        req = self.queue.popleft()
        event_id = self._new_event_id()
        self.pending = (req, event_id)
        self.sent[event_id] = req
        body = dict(req.body)
        body["metadata"] = {**body.get("metadata", {}), "engine_request": req.tag, "state": req.owner}
        return [{"type": "response.create", "event_id": event_id, "response": body}]
