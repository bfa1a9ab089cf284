"""The response gate: every (state, input) cell of its TABLE, retries, releases, the one-in-flight rule."""

import pytest

from engine.errors import LocalProtocolError
from engine.gate import (
    ACTIVE,
    IDLE,
    INPUTS,
    REQUESTED,
    REQUESTED_ACTIVE,
    CREATE_ANSWER_WAIT,
    SILENCE_RELEASE,
    TABLE,
    UNKNOWN_ACTIVE_WAIT,
    Gate,
    GateState,
    Request,
)

COLLISION = "conversation_already_has_active_response"
RATE_LIMITED = {"status": "failed", "status_details": {"type": "failed", "error": {"code": "rate_limit_exceeded"}}}
COMPLETED = {"status": "completed"}


def create(tag: str, event_id: str, state: str = "s") -> dict:
    return {"type": "response.create", "event_id": event_id,
            "response": {"metadata": {"engine_request": tag, "state": state}}}


def in_state(state: GateState) -> Gate:
    """A gate brought to `state` through its public inputs; r1 is the first request (evt_1)."""
    gate = Gate()
    if state is not IDLE:
        assert gate.request(Request("r1", "s"), 0.0, 1) == [create("r1", "evt_1")]
    if state is ACTIVE:
        assert gate.created("resp_1", "r1", 0.1, 2) == []
    if state is REQUESTED_ACTIVE:
        assert gate.proven("resp_vad", 0.1)  # server VAD answering on its own, say
    assert gate.state is state
    return gate


# Every cell of the table --------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(GateState), ids=lambda s: s.name)
@pytest.mark.parametrize("event", INPUTS)
def test_every_cell_moves_by_the_table_or_raises_and_changes_nothing(state, event):
    gate = in_state(state)
    before = gate.snapshot()
    if event in TABLE[state]:
        gate._move(event)
        assert gate.state is TABLE[state][event]
    else:
        with pytest.raises(LocalProtocolError, match=f"can't handle {event} in state {state.name}"):
            gate._move(event)
        assert gate.snapshot() == before


def test_send_has_one_cell_the_collision_safety_argument():
    assert [s for s, row in TABLE.items() if "send" in row] == [IDLE]


# (state, input) -> a public call in that state that takes that cell
SCENARIOS = {
    (IDLE, "request"): lambda g: g.request(Request("r2", "s"), 1.0, 2),
    (IDLE, "send"): lambda g: g.request(Request("r2", "s"), 1.0, 2),
    (IDLE, "start"): lambda g: g.proven("resp_9", 1.0),
    (REQUESTED, "request"): lambda g: g.request(Request("r2", "s"), 1.0, 2),
    (REQUESTED, "start"): lambda g: g.created("resp_vad", None, 1.0, 2),
    (REQUESTED, "accept"): lambda g: g.created("resp_1", "r1", 1.0, 2),
    (REQUESTED, "reject"): lambda g: g.error("evt_1", "invalid_value", "bad", 1.0, 2),
    (ACTIVE, "request"): lambda g: g.request(Request("r2", "s"), 1.0, 2),
    (ACTIVE, "start"): lambda g: g.proven("resp_9", 1.0),
    (ACTIVE, "free"): lambda g: g.done("resp_1", "r1", COMPLETED, 1.0, 2),
    (REQUESTED_ACTIVE, "request"): lambda g: g.request(Request("r2", "s"), 1.0, 2),
    (REQUESTED_ACTIVE, "start"): lambda g: g.proven("resp_9", 1.0),
    (REQUESTED_ACTIVE, "accept"): lambda g: g.created("resp_1", "r1", 1.0, 2),
    (REQUESTED_ACTIVE, "reject"): lambda g: g.error("evt_1", "invalid_value", "bad", 1.0, 2),
    (REQUESTED_ACTIVE, "free"): lambda g: g.done("resp_vad", None, COMPLETED, 1.0, 2),
}


def test_scenarios_cover_every_legal_cell():
    assert set(SCENARIOS) == {(s, e) for s, row in TABLE.items() for e in row}


@pytest.mark.parametrize("cell", list(SCENARIOS), ids=lambda c: f"{c[0].name}-{c[1]}")
def test_each_legal_cell_is_taken_by_a_public_input(cell, monkeypatch):
    gate = in_state(cell[0])
    taken = []
    move = Gate._move
    monkeypatch.setattr(Gate, "_move", lambda self, e: (taken.append((self.state, e)), move(self, e))[1])
    SCENARIOS[cell](gate)
    assert cell in taken


# Behaviour ----------------------------------------------------------------------------------------


def test_queued_request_is_sent_on_done():
    gate = in_state(ACTIVE)
    assert gate.request(Request("r2", "ack"), 1.0, 2) == []
    tag, sent = gate.done("resp_1", "r1", COMPLETED, 2.0, 2)
    assert tag == "r1" and sent == [create("r2", "evt_2", "ack")] and gate.state is REQUESTED


def test_collision_requeues_once_behind_an_unknown_response_then_gives_up():
    gate = in_state(REQUESTED)
    req, sent = gate.error("evt_1", COLLISION, "", 1.0, 2)
    assert (req, sent, gate.state, gate.active) == (None, [], ACTIVE, True)
    assert gate.next_deadline() == 1.0 + UNKNOWN_ACTIVE_WAIT
    assert gate.advance(2.9, 2) == ([], [])
    assert gate.advance(3.0, 2) == ([], [create("r1", "evt_2")])  # the unknown response never reported done
    req, sent = gate.error("evt_2", COLLISION, "", 4.0, 3)
    assert req.tag == "r1" and sent == [] and gate.state is IDLE


def test_collision_waits_for_the_response_it_collided_with():
    gate = in_state(REQUESTED)
    assert gate.created("resp_srv", None, 0.5, 2) == []  # untagged: not ours, but the server is busy
    req, sent = gate.error("evt_1", COLLISION, "Conversation already has an active response", 0.6, 2)
    assert (req, sent, gate.state) == (None, [], ACTIVE)
    assert gate.request_of("resp_srv") is None
    tag, sent = gate.done("resp_srv", None, COMPLETED, 2.0, 2)
    assert tag is None and sent == [create("r1", "evt_2")]


def test_old_servers_collision_without_code_or_event_id():
    gate = in_state(REQUESTED)
    req, sent = gate.error(None, None, "Conversation already has an active response", 1.0, 2)
    assert req is None and gate.queued == 1 and gate.state is ACTIVE


def test_an_error_about_anything_else_changes_nothing():
    gate = in_state(ACTIVE)
    before = gate.snapshot()
    assert gate.error("evt_1", "invalid_value", "late, about a create answered long ago", 1.0, 2) == (None, [])
    assert gate.error("evt_77", "invalid_value", "about an item", 1.0, 2) == (None, [])
    assert gate.snapshot() == before


def test_rate_limited_response_is_retried_with_backoff_then_surfaces():
    gate = in_state(ACTIVE)
    assert gate.done("resp_1", "r1", RATE_LIMITED, 10.0, 2) == (None, [])
    assert gate.superseded("resp_1") and gate.next_deadline() == 11.0
    assert gate.advance(11.0, 2) == ([], [create("r1", "evt_2")])
    gate.created("resp_2", "r1", 11.1, 3)
    assert gate.done("resp_2", "r1", RATE_LIMITED, 12.0, 3) == (None, [])
    assert gate.next_deadline() == 14.0
    gate.advance(14.0, 3)
    gate.created("resp_3", "r1", 14.1, 4)
    gate.done("resp_3", "r1", RATE_LIMITED, 15.0, 4)
    assert gate.next_deadline() == 19.0
    gate.advance(19.0, 4)
    gate.created("resp_4", "r1", 19.1, 5)
    assert gate.done("resp_4", "r1", RATE_LIMITED, 20.0, 5) == ("r1", [])  # retries exhausted: the flow sees it
    assert not gate.superseded("resp_4")


def test_a_request_of_a_state_left_is_not_retried_after_a_rate_limit():
    gate = in_state(ACTIVE)
    assert gate.forget("s") == []  # r1 is in flight: nothing to drop, but it is no longer wanted
    assert gate.done("resp_1", "r1", RATE_LIMITED, 10.0, 2) == ("r1", [])
    assert gate.state is IDLE and gate.queued == 0


def test_duplicate_and_late_done_change_nothing():
    gate = in_state(ACTIVE)
    gate.request(Request("r2", "s"), 0.2, 2)
    gate.done("resp_1", "r1", COMPLETED, 1.0, 2)
    before = gate.snapshot()
    assert gate.done("resp_1", "r1", COMPLETED, 1.1, 3) == (None, [])
    assert gate.created("resp_1", "r1", 1.2, 3) == []  # a created reordered after its done
    assert not gate.proven("resp_1", 1.3)  # and its late audio
    assert gate.snapshot() == before and gate.state is REQUESTED


def test_forget_drops_queued_requests_of_a_state():
    gate = in_state(ACTIVE)
    gate.request(Request("r2", "old"), 0.2, 2)
    gate.request(Request("r3", "new"), 0.3, 2)
    assert [r.tag for r in gate.forget("old")] == ["r2"]
    _, sent = gate.done("resp_1", "r1", COMPLETED, 1.0, 2)
    assert sent == [create("r3", "evt_2", "new")]


def test_an_untagged_response_is_never_taken_for_ours():
    gate = in_state(REQUESTED)
    gate.created("resp_vad", None, 0.5, 2)
    assert gate.request_of("resp_vad") is None and gate.state is REQUESTED_ACTIVE
    tag, sent = gate.done("resp_vad", None, COMPLETED, 1.0, 2)
    assert (tag, sent, gate.state) == (None, [], REQUESTED)  # r1 is still unanswered: nothing is sent


def test_a_done_that_names_the_request_resolves_it_when_created_was_lost():
    gate = in_state(REQUESTED)
    gate.request(Request("r2", "s"), 0.2, 2)
    tag, sent = gate.done("resp_7", "r1", COMPLETED, 1.0, 2)
    assert tag == "r1" and sent == [create("r2", "evt_2")]


def test_a_tagged_created_is_ours_even_if_its_id_was_seen_before():
    gate = in_state(REQUESTED)
    assert gate.proven("resp_1", 0.3)  # its audio came first (created reordered or late)
    assert gate.state is REQUESTED_ACTIVE and gate.request_of("resp_1") is None
    gate.created("resp_1", "r1", 0.4, 2)
    assert gate.request_of("resp_1") == "r1" and gate.state is ACTIVE


def probe(rid: str, event_id: str) -> dict:
    return {"type": "response.cancel", "response_id": rid, "event_id": event_id}


def silent_response_probed() -> Gate:
    """resp_x streams until 2.0, then nothing; r1 waits behind it; at 7.0 the gate probes it."""
    gate = in_state(IDLE)
    assert gate.proven("resp_x", 1.0)  # a response whose created (and maybe done) was lost
    gate.request(Request("r1", "s"), 1.5, 1)
    assert gate.state is ACTIVE and gate.next_deadline() == 1.0 + SILENCE_RELEASE
    gate.proven("resp_x", 2.0)  # still streaming: the bound runs from its last event
    assert gate.advance(6.9, 1) == ([], [])
    assert gate.advance(2.0 + SILENCE_RELEASE, 1) == ([], [probe("resp_x", "evt_1")])  # not a create
    assert gate.state is ACTIVE and gate.next_deadline() == 2.0 + 2 * SILENCE_RELEASE
    return gate


def test_a_silent_response_is_probed_and_a_refused_probe_frees_it_at_once():
    gate = silent_response_probed()
    assert gate.probe_refused("evt_9", 7.1, 2) is None  # not a probe's error: the flow's business
    assert gate.probe_refused("evt_1", 7.1, 2) == [create("r1", "evt_2")]
    assert not gate.finished("resp_x")  # presumed, not known: a later event of it proves it again


def test_a_probed_response_that_still_runs_is_not_taken_for_over():
    gate = silent_response_probed()
    gate.proven("resp_x", 8.0)  # one of its events was lost, not its end: it goes on
    assert gate.advance(7.0 + SILENCE_RELEASE, 2) == ([], [])
    assert gate.done("resp_x", None, {"status": "cancelled"}, 8.5, 2) == (None, [create("r1", "evt_2")])
    assert gate.probe_refused("evt_1", 8.6, 3) is None  # its answer came as the done


def test_a_response_silent_through_its_probe_is_presumed_over():
    gate = silent_response_probed()
    assert gate.advance(2.0 + 2 * SILENCE_RELEASE - 0.01, 2) == ([], [])
    assert gate.advance(2.0 + 2 * SILENCE_RELEASE, 2) == ([], [create("r1", "evt_2")])
    assert Gate.restore(gate.snapshot()).snapshot() == gate.snapshot()


def test_a_create_nothing_answers_is_given_up_after_create_answer_wait():
    gate = in_state(REQUESTED)
    gate.request(Request("r2", "s"), 0.5, 2)
    assert gate.next_deadline() == CREATE_ANSWER_WAIT > SILENCE_RELEASE  # a slow start is not a loss
    assert gate.advance(CREATE_ANSWER_WAIT - 0.01, 2) == ([], [])
    given_up, sent = gate.advance(CREATE_ANSWER_WAIT, 2)
    assert [r.tag for r in given_up] == ["r1"] and sent == [create("r2", "evt_2")]
    gate.created("resp_late", "r1", CREATE_ANSWER_WAIT + 1, 3)  # its response after all: no longer ours, but it is busy
    assert gate.request_of("resp_late") is None and gate.state is REQUESTED_ACTIVE


def test_snapshot_restore_round_trip():
    gate = in_state(REQUESTED_ACTIVE)
    gate.request(Request("r2", "s", {"instructions": "hi"}), 0.2, 2)
    snap = gate.snapshot()
    hash(snap)
    copy = Gate.restore(snap)
    assert copy.snapshot() == snap
    assert copy.created("resp_1", "r1", 1.0, 2) == gate.created("resp_1", "r1", 1.0, 2)
    assert copy.done("resp_1", "r1", COMPLETED, 2.0, 2) == gate.done("resp_1", "r1", COMPLETED, 2.0, 2)
    assert copy.snapshot() == gate.snapshot()
