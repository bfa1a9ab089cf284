"""events.normalise: every payload shape the core reads is checked there (issue 11 item 5), so a
malformed event is a RemoteProtocolError the driver skips, and never reaches (or half-changes) the core."""

import pytest
from helpers import created, feed, load_flow

from engine.errors import RemoteProtocolError
from engine.events import MAX_ID, RecentIds, normalise
from engine.interview import Interview

LONG = "x" * 10_000
RESPONSE = {"id": "resp_1", "status": "completed", "output": [], "metadata": {"engine_request": "r1"}}

MALFORMED = {
    "error as a string": {"type": "error", "error": "boom"},
    "error missing": {"type": "error"},
    "error.code a number": {"type": "error", "error": {"code": 5, "message": "m"}},
    "error.event_id a list": {"type": "error", "error": {"code": "x", "event_id": ["evt_1"]}},
    "response a list": {"type": "response.done", "response": ["resp_1"]},
    "response.id a number": {"type": "response.created", "response": {"id": 7}},
    "response.id 10 KB": {"type": "response.created", "response": {"id": LONG}},
    "response.output a string": {"type": "response.done", "response": {**RESPONSE, "output": "oops"}},
    "response.output holding a string": {"type": "response.done", "response": {**RESPONSE, "output": ["item"]}},
    "output item content a dict": {"type": "response.done", "response": {
        **RESPONSE, "output": [{"type": "message", "id": "it", "content": {"transcript": "x"}}]}},
    "content part a string": {"type": "response.done", "response": {
        **RESPONSE, "output": [{"type": "message", "id": "it", "content": ["x"]}]}},
    "transcript of a part a number": {"type": "response.done", "response": {
        **RESPONSE, "output": [{"type": "message", "id": "it", "content": [{"transcript": 3}]}]}},
    "function call arguments a dict": {"type": "response.done", "response": {
        **RESPONSE, "output": [{"type": "function_call", "call_id": "c", "name": "t", "arguments": {"a": 1}}]}},
    "metadata a list": {"type": "response.created", "response": {"id": "resp_1", "metadata": ["r1"]}},
    "metadata tag a number": {"type": "response.created",
                              "response": {"id": "resp_1", "metadata": {"engine_request": 1}}},
    "status_details a string": {"type": "response.done", "response": {**RESPONSE, "status_details": "failed"}},
    "item not an object": {"type": "response.output_item.added", "response_id": "resp_1", "item": "fc"},
    "item.call_id a number": {"type": "response.output_item.added", "response_id": "resp_1", "item": {"call_id": 1}},
    "item_id a number": {"type": "input_audio_buffer.committed", "item_id": 12},
    "item_id 10 KB": {"type": "input_audio_buffer.committed", "item_id": LONG},
    "response_id a dict": {"type": "response.output_audio.done", "response_id": {"id": "resp_1"}},
    "event_id too long": {"type": "session.updated", "event_id": "e" * (MAX_ID + 1)},
    "call_id a list": {"type": "response.function_call_arguments.done", "response_id": "r", "call_id": ["c"]},
    "transcript a number": {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u",
                            "transcript": 42},
    "arguments a dict": {"type": "response.function_call_arguments.done", "response_id": "r", "call_id": "c",
                         "arguments": {"reason": "x"}},
    "audio delta without response_id": {"type": "response.output_audio.delta", "item_id": "i", "delta": "AAAA"},
    "audio delta not a string": {"type": "response.output_audio.delta", "response_id": "r", "delta": 5},
    "audio delta response_id 10 KB": {"type": "response.output_audio.delta", "response_id": LONG, "delta": "AAAA"},
    "audio delta item_id a number": {"type": "response.output_audio.delta", "response_id": "r", "item_id": 3,
                                     "delta": "AAAA"},
    "not an object": ["response.done"],
    "no type": {"response": RESPONSE},
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_event_is_a_remote_protocol_error_and_changes_nothing(raw):
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    feed(iv, [(0.5, created("resp_1", "r1"))])
    before = iv.snapshot()
    with pytest.raises(RemoteProtocolError):
        normalise(raw)
    assert iv.snapshot() == before  # the driver skips it: the core never saw it


def test_well_formed_events_pass_with_their_ids():
    event = normalise({"type": "response.done", "event_id": "e1", "response": {
        **RESPONSE, "output": [{"type": "function_call", "id": "fc", "call_id": "c", "name": "t", "arguments": "{}"},
                               {"type": "message", "id": "it", "content": [{"type": "audio", "transcript": "hi"}]}],
        "status_details": {"type": "failed", "error": {"code": "rate_limit_exceeded"}}}})
    assert (event.type, event.response_id, event.event_id) == ("response.done", "resp_1", "e1")
    delta = normalise({"type": "response.audio.delta", "response_id": "r", "item_id": "i", "delta": "AAAA"})
    assert (delta.type, delta.response_id, delta.item_id) == ("response.output_audio.delta", "r", "i")
    assert normalise({"type": "some.future.event", "whatever": [1, 2]}).type == "some.future.event"


def test_recent_ids_remember_between_one_and_two_generations():
    recent = RecentIds()
    assert not recent.seen("a") and recent.seen("a")
    for i in range(RecentIds.GENERATION - 1):
        assert not recent.seen(f"id{i}")
    assert recent.seen("a")  # now in the old generation
    for i in range(RecentIds.GENERATION):
        recent.seen(f"more{i}")
    assert not recent.seen("a")  # forgotten after two generations
    assert RecentIds.restore(recent.snapshot()).snapshot() == recent.snapshot()
