"""The response gate: every (state, input) cell, retries, and the one-in-flight rule."""

import itertools

import pytest

from engine.gate import ACTIVE, IDLE, REQUESTED, TABLE, UNKNOWN, Gate, GateState, Request

COLLISION = "conversation_already_has_active_response"
RATE_LIMITED = {"status": "failed", "status_details": {"type": "failed", "error": {"code": "rate_limit_exceeded"}}}


def new_gate() -> Gate:
    counter = itertools.count(1)
    return Gate(lambda: f"evt_{next(counter)}")


def create(tag: str, event_id: str, owner: str = "s") -> dict:
    return {"type": "response.create", "event_id": event_id,
            "response": {"metadata": {"engine_request": tag, "state": owner}}}


def in_state(state: GateState) -> Gate:
    """A gate brought to `state` through its public inputs, with request r1 as the first one."""
    gate = new_gate()
    if state is not IDLE:
        assert gate.request(Request("r1", "s"), 0.0) == [create("r1", "evt_1")]
    if state is ACTIVE:
        assert gate.created("resp_1", "r1", 0.1) == []
    assert gate.state is state
    return gate


def apply(gate: Gate, kind: str) -> tuple[list[dict], Request | None]:
    if kind == "request":
        return gate.request(Request("r2", "s"), 1.0), None
    if kind == "created":
        return gate.created("resp_9", "r9", 1.0), None
    if kind == "done":
        req, sent = gate.done("resp_1", "r1", {"status": "completed"}, 1.0)
        return sent, req
    if kind == "error":
        req, sent = gate.error("evt_1", "invalid_value", "bad", 1.0)
        return sent, req
    req, sent = gate.error("evt_1", COLLISION, "Conversation already has an active response", 1.0)
    return sent, req


# (state, input) -> (state after, what is sent, request handed back to the flow)
CELLS = {
    (IDLE, "request"): (REQUESTED, [create("r2", "evt_1")], None),
    (IDLE, "created"): (ACTIVE, [], None),  # a response the server started on its own
    (IDLE, "done"): (IDLE, [], None),  # foreign or late: nothing to free
    (IDLE, "error"): (IDLE, [], None),  # not about anything we sent
    (IDLE, "collision"): (IDLE, [], None),
    (REQUESTED, "request"): (REQUESTED, [], None),  # queued behind r1
    (REQUESTED, "created"): (REQUESTED, [], None),  # someone else's response: r1 still pending
    (REQUESTED, "done"): (IDLE, [], "r1"),  # response.created was lost; done names r1
    (REQUESTED, "error"): (IDLE, [], "r1"),  # rejected for good
    (REQUESTED, "collision"): (ACTIVE, [], None),  # re-queued; waits for the unknown response
    (ACTIVE, "request"): (ACTIVE, [], None),
    (ACTIVE, "created"): (ACTIVE, [], None),
    (ACTIVE, "done"): (IDLE, [], "r1"),
    # The server rejected r1 after all: the response taken for it was someone else's and still
    # holds the conversation. An error rejects r1; a collision re-queues it behind that response.
    (ACTIVE, "error"): (ACTIVE, [], "r1"),
    (ACTIVE, "collision"): (ACTIVE, [], None),
}


def test_cells_cover_the_table():
    assert {(s, i) for s, row in TABLE.items() for i in row} == set(CELLS)


@pytest.mark.parametrize("cell", list(CELLS), ids=lambda c: f"{c[0].name}-{c[1]}")
def test_cell(cell):
    state, kind = cell
    gate = in_state(state)
    sent, req = apply(gate, kind)
    after, expected_sent, expected_req = CELLS[cell]
    assert gate.state is after
    assert after is TABLE[state][kind] or (state, kind) == (REQUESTED, "created")
    assert sent == expected_sent
    assert (req.tag if req else None) == expected_req


def test_queued_request_is_sent_on_done():
    gate = in_state(ACTIVE)
    assert gate.request(Request("r2", "ack"), 1.0) == []
    req, sent = gate.done("resp_1", "r1", {"status": "completed"}, 2.0)
    assert req.tag == "r1"
    assert sent == [create("r2", "evt_2", "ack")]
    assert gate.state is REQUESTED


def test_collision_requeues_once_then_gives_up():
    gate = in_state(REQUESTED)
    req, sent = gate.error("evt_1", COLLISION, "", 1.0)
    assert (req, sent, gate.active) == (None, [], {UNKNOWN})
    assert gate.next_deadline() == 3.0
    assert gate.advance(2.9) == []
    assert gate.advance(3.0) == [create("r1", "evt_2")]  # the unknown response never reported done
    req, sent = gate.error("evt_2", COLLISION, "", 4.0)
    assert req.tag == "r1" and sent == [] and gate.state is IDLE


def test_collision_waits_for_the_response_it_collided_with():
    gate = in_state(REQUESTED)
    assert gate.created("resp_srv", None, 0.5) == []  # untagged: not ours, but the server is busy
    req, sent = gate.error("evt_1", COLLISION, "Conversation already has an active response", 0.6)
    assert (req, sent) == (None, [])  # re-queued behind it
    assert gate.owner_of("resp_srv") is None and gate.active == {"resp_srv"}
    req, sent = gate.done("resp_srv", None, {"status": "completed"}, 2.0)
    assert req is None and sent == [create("r1", "evt_2")]


def test_old_servers_collision_without_code_or_event_id():
    gate = in_state(REQUESTED)
    req, sent = gate.error(None, None, "Conversation already has an active response", 1.0)
    assert req is None and gate.queue[0].tag == "r1"


def test_rate_limited_response_is_retried_with_backoff_then_surfaces():
    gate = in_state(ACTIVE)
    req, sent = gate.done("resp_1", "r1", RATE_LIMITED, 10.0)
    assert (req, sent, gate.next_deadline()) == (None, [], 11.0)
    assert gate.advance(11.0) == [create("r1", "evt_2")]
    gate.created("resp_2", "r1", 11.1)
    assert gate.done("resp_2", "r1", RATE_LIMITED, 12.0) == (None, [])
    assert gate.next_deadline() == 14.0
    gate.advance(14.0)
    gate.created("resp_3", "r1", 14.1)
    gate.done("resp_3", "r1", RATE_LIMITED, 15.0)
    assert gate.next_deadline() == 19.0
    gate.advance(19.0)
    gate.created("resp_4", "r1", 19.1)
    req, sent = gate.done("resp_4", "r1", RATE_LIMITED, 20.0)
    assert req.tag == "r1" and sent == []  # retries exhausted: the flow sees the failure


def test_duplicate_and_late_done_change_nothing():
    gate = in_state(ACTIVE)
    gate.request(Request("r2", "s"), 0.2)
    gate.done("resp_1", "r1", {"status": "completed"}, 1.0)
    assert gate.state is REQUESTED
    assert gate.done("resp_1", "r1", {"status": "completed"}, 1.1) == (None, [])
    assert gate.state is REQUESTED


def test_drop_forgets_queued_requests_of_a_state():
    gate = in_state(ACTIVE)
    gate.request(Request("r2", "old"), 0.2)
    gate.request(Request("r3", "new"), 0.3)
    assert [r.tag for r in gate.drop("old")] == ["r2"]
    _, sent = gate.done("resp_1", "r1", {"status": "completed"}, 1.0)
    assert sent == [create("r3", "evt_2", "new")]


def test_an_untagged_response_is_never_taken_for_ours():
    gate = in_state(REQUESTED)
    gate.created("resp_vad", None, 0.5)  # e.g. server VAD answering on its own
    assert gate.owner_of("resp_vad") is None and gate.state is REQUESTED and gate.active == {"resp_vad"}
    req, sent = gate.done("resp_vad", None, {"status": "completed"}, 1.0)
    assert (req, sent, gate.state) == (None, [], REQUESTED)  # r1 is still unanswered: nothing is sent


def test_a_done_that_names_the_request_resolves_it_when_created_was_lost():
    gate = in_state(REQUESTED)
    gate.request(Request("r2", "s"), 0.2)
    req, sent = gate.done("resp_7", "r1", {"status": "completed"}, 1.0)
    assert req.tag == "r1" and sent == [create("r2", "evt_2")]
