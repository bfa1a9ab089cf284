"""The sans-I/O core, driven by scripted (t, event) traces. Time is data; nothing sleeps."""

import copy
import itertools
import pickle

import pytest
from helpers import (
    answer,
    audio,
    audio_done,
    committed,
    created,
    done,
    error,
    feed,
    flow_from,
    job_done,
    job_failed,
    load_flow,
    playback_done,
    playback_stopped,
    sends,
    server,
    speech_started,
    speech_stopped,
    tags,
    tool_call,
    transcript_done,
)

from engine.effects import CancelJob, End, EndAudio, Fired, Log, Play, Save, Send, StartJob, StopPlayback
from engine.errors import LocalProtocolError
from engine.events import Event
from engine.gate import SILENCE_RELEASE
from engine.interview import TRANSCRIPT_WAIT, Interview

SUMMARY = {"summary": "Your English is around B1.", "overall": {"band": "B1"}}


def create(tag, event_id, state, instructions=None):
    body = {"metadata": {"engine_request": tag, "state": state}}
    if instructions is not None:
        body = {"instructions": instructions, **body}
    return Send({"type": "response.create", "event_id": event_id, "response": body})


def fired(effects):
    return [(f.source, f.target, f.event) for f in effects if isinstance(f, Fired)]


def effect_kinds(effects):
    return [type(e).__name__ for e in effects if not isinstance(e, Log)]


# The seed's ending: ack -> summary -> goodbye -------------------------------------------------


def test_seed_happy_path_exact_effects():
    iv = Interview(load_flow("seed.yaml"))
    start = iv.start(0.0)
    assert start[1:] == [
        Fired("initial", None, "ack", "start"),
        StartJob("assessment", {"turns": [], "options": {}}),
        create("r1", "evt_2", "ack", 'Say: "Thank you. One moment while I prepare your feedback."'),
    ]
    assert start[0].event["type"] == "session.update" and start[0].event["event_id"] == "evt_1"

    assert feed(iv, [(0.4, created("resp_a", "r1"))]) == []
    assert feed(iv, [(0.5, audio("resp_a", "item_a", 1000))]) == [Play("resp_a", "item_a", "")]
    assert feed(iv, [(0.6, audio_done("resp_a", "item_a"))]) == [EndAudio("resp_a")]
    assert feed(iv, [(0.6, transcript_done("resp_a", "item_a", "Thank you.", beta=True))]) == []
    assert feed(iv, [(0.7, done("resp_a", "r1"))]) == []
    summary = feed(iv, [(1.5, job_done("assessment", SUMMARY))])
    assert summary == [
        Fired("states.ack.transitions[0]", "ack", "summary", "job.assessment.done"),
        create("r2", "evt_3", "summary", 'Say: "Your English is around B1."'),
    ]
    assert feed(iv, [(1.6, created("resp_b", "r2")), (1.7, audio_done("resp_b", "item_b")),
                     (1.8, done("resp_b", "r2"))]) == [EndAudio("resp_b")]
    # The ack's audio finishing is not the summary's: it moves nothing.
    assert feed(iv, [(1.9, playback_done("resp_a", "item_a"))]) == []
    assert feed(iv, [(2.4, playback_done("resp_b", "item_b"))]) == [
        Fired("states.summary.transitions[0]", "summary", "goodbye", "playback.done"),
        create("r3", "evt_4", "goodbye", 'Say: "Goodbye!"'),
    ]
    feed(iv, [(2.5, created("resp_c", "r3")), (2.6, done("resp_c", "r3"))])
    assert feed(iv, [(3.0, playback_done("resp_c"))]) == [
        Fired("states.goodbye.transitions[0]", "goodbye", "done", "playback.done"),
        End("reached final state 'done'", "completed"),
    ]
    assert iv.done and iv.next_deadline() is None
    assert feed(iv, [(3.1, done("resp_c", "r3"))]) == []
    assert [t["text"] for t in iv.turns] == ["Thank you."]


def ack_response(order):
    """The ack response's events, its three terminal events in `order`."""
    terminal = {
        "audio": audio_done("resp_a", "item_a"),
        "transcript": transcript_done("resp_a", "item_a", "Thank you."),
        "done": done("resp_a", "r1"),
        "job": job_done("assessment", SUMMARY),
    }
    return [created("resp_a", "r1"), audio("resp_a", "item_a", 800)] + [terminal[k] for k in order]


@pytest.mark.parametrize("order", list(itertools.permutations(["audio", "transcript", "done", "job"])),
                         ids="-".join)
def test_seed_ack_in_every_order(order):
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    effects = feed(iv, [(0.1 * (i + 1), e) for i, e in enumerate(ack_response(order))])
    # Whatever the order, the join fires once, on the last of its three events, and asks for the summary.
    names = {"transcript": "response.output_audio_transcript.done", "done": "response.done",
             "job": "job.assessment.done"}
    last = [names[k] for k in order if k in names][-1]
    assert fired(effects) == [("ack", "summary", last)]
    assert tags(effects) == ["r2"]
    assert effect_kinds(effects).count("EndAudio") == 1
    assert iv.state == "summary"


def test_seed_missing_transcript_takes_the_timeout_path():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    feed(iv, [(0.2, e) for e in ack_response(["audio", "done", "job"])])
    assert iv.state == "ack" and iv.next_deadline() == 8.0
    assert feed(iv, [(7.99, None)]) == []
    effects = feed(iv, [(8.0, None)])
    assert effects == [Fired("states.ack.after[0]", "ack", "summary_fallback", "after.0"),
                       create("r2", "evt_3", "summary_fallback",
                              'Say: "Your feedback will be in your written report."')]


def test_seed_timeout_fires_before_a_later_event():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    # The transcript arrives at 9 s, after the 8 s timeout: the timeout happened first.
    effects = feed(iv, [(0.2, e) for e in ack_response(["audio", "done", "job"])]
                   + [(9.0, transcript_done("resp_a", "item_a", "late"))])
    assert fired(effects) == [("ack", "summary_fallback", "after.0")]


def test_duplicate_response_done_moves_once():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    feed(iv, [(0.1, e) for e in ack_response(["audio", "transcript", "done", "job"])])
    feed(iv, [(1.0, created("resp_b", "r2")), (1.1, done("resp_b", "r2"))])
    first = feed(iv, [(1.5, playback_done("resp_b"))])
    assert fired(first) == [("summary", "goodbye", "playback.done")]
    dup = done("resp_b", "r2")  # the same response done again, with a new event id
    assert feed(iv, [(1.6, dup), (1.7, dup)]) == [Log("info", f"duplicate event response.done {dup.event_id} ignored")]
    assert iv.state == "goodbye" and tags(first) == ["r3"]


def test_late_done_of_an_earlier_response_is_recorded_and_ignored():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    # ack's response never completes in time (it is still streaming: it is alive); the flow has
    # moved on when its done arrives.
    feed(iv, [(0.1, created("resp_a", "r1")), (0.2, job_done("assessment", SUMMARY)),
              (4.0, audio("resp_a", "item_a", 100)), (7.5, audio("resp_a", "item_a", 100)), (8.0, None)])
    assert iv.state == "summary_fallback"
    effects = feed(iv, [(8.5, audio_done("resp_a", "item_a")),
                        (8.6, transcript_done("resp_a", "item_a", "x")), (8.7, done("resp_a", "r1"))])
    assert fired(effects) == [] and iv.state == "summary_fallback"
    # ...but it frees the gate, so the fallback's queued response goes out now.
    assert tags(effects) == ["r2"]
    # Recorded: the event the state waits for, from a response it did not ask for.
    assert [(s["type"], s["response_id"]) for s in iv.stale] == [("response.done", "resp_a")]


@pytest.mark.parametrize("status", ["failed", "cancelled", "incomplete"])
def test_failed_response_takes_the_guarded_path(status):
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    feed(iv, [(0.1, e) for e in ack_response(["audio", "transcript", "done", "job"])])
    effects = feed(iv, [(1.0, created("resp_b", "r2")), (1.1, done("resp_b", "r2", status=status))])
    assert fired(effects) == [("summary", "goodbye", "response.done")]


def test_collision_error_requeues_and_the_response_goes_out_after_done():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    # The server had a response of its own running: our create is rejected.
    effects = feed(iv, [(0.1, created("resp_srv")), (0.2, error(
        "conversation_already_has_active_response", "Conversation already has an active response", "evt_2"))])
    assert sends(effects) == []
    effects = feed(iv, [(0.9, done("resp_srv"))])
    assert tags(effects) == ["r1"] and sends(effects)[0]["event_id"] == "evt_3"
    feed(iv, [(1.0, created("resp_a", "r1")), (1.1, transcript_done("resp_a", "i", "t")),
              (1.2, done("resp_a", "r1"))])
    assert fired(feed(iv, [(1.3, job_done("assessment", SUMMARY))])) == [("ack", "summary", "job.assessment.done")]


def test_template_error_names_the_state_and_ends_the_session():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    effects = feed(iv, [(0.1, e) for e in ack_response(["audio", "transcript", "done"])]
                   + [(0.5, job_done("assessment", {"overall": {}}))])
    message = "state 'summary': template {assessment.summary} names nothing the session has yet ('summary' is missing)"
    assert effects[-2:] == [Log("error", message), End(message, "not_completed")]


# The assessment flow ---------------------------------------------------------------------------


def question(iv, tag, rid, t, text="Tell me about yourself."):
    return feed(iv, [(t, created(rid, tag)), (t + 0.1, audio(rid, f"it_{rid}", 2000)),
                     (t + 0.2, audio_done(rid, f"it_{rid}")), (t + 0.2, transcript_done(rid, f"it_{rid}", text)),
                     (t + 0.3, done(rid, tag))])


def to_ack(iv):
    """Greeting, one answer, then the model calls trigger_assessment. Returns the effects of the call."""
    feed(iv, [])
    question(iv, "r1", "resp_1", 0.5)
    effects = feed(iv, [(2.6, playback_done("resp_1")), (3.0, speech_started("u1")), (5.0, speech_stopped("u1")),
                        (5.5, committed("u1")), (6.0, answer("u1", "I am Ana."))])
    assert iv.state == "asking" and tags(effects) == ["r2"]
    return feed(iv, [(6.5, created("resp_2", "r2")), (6.6, tool_call("resp_2", "call_1", "trigger_assessment",
                                                                     '{"reason": "enough"}'))])


def test_tool_call_acknowledges_and_starts_the_assessment_while_the_gate_holds_the_ack():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    effects = to_ack(iv)
    assert fired(effects) == [("asking", "ack", "tool.trigger_assessment")]
    assert sends(effects, "conversation.item.create") == [{
        "event_id": "evt_4", "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"status": "assessment started"}'}}]
    assert StartJob("assessment", {"turns": [
        {"role": "interviewer", "text": "Tell me about yourself.", "t": 0.7, "response_id": "resp_1", "item_id": "it_resp_1"},
        {"role": "candidate", "item_id": "u1", "t": 5.5, "start": 3.0, "end": 5.0, "committed": 5.5,
         "text": "I am Ana.", "transcribed": True}],
        "options": {}}) in effects
    assert tags(effects) == []  # asking's response (the tool call) is still active: the ack waits
    effects = feed(iv, [(6.8, done("resp_2", "r2"))])
    assert tags(effects) == ["r3"]


def test_no_dead_air_summary_is_requested_while_the_ack_still_plays():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    to_ack(iv)
    feed(iv, [(6.8, done("resp_2", "r2")), (7.0, created("resp_3", "r3")), (7.1, audio("resp_3", "a3", 3000)),
              (7.3, audio_done("resp_3", "a3")), (7.4, done("resp_3", "r3"))])
    effects = feed(iv, [(8.0, job_done("assessment", SUMMARY))])
    assert fired(effects) == [("ack", "summary", "job.assessment.done")]
    [request] = sends(effects, "response.create")
    assert request["response"]["instructions"].endswith('"Your English is around B1."')
    assert Save("assessment ready") in effects


def test_barge_in_stops_playback_cancels_and_truncates_what_was_heard():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    feed(iv, [(0.5, created("resp_1", "r1")), (0.6, audio("resp_1", "it1", 1500))])
    effects = feed(iv, [(1.0, speech_started("u1"))])
    assert effects == [Fired("states.greeting.transitions[2]", "greeting", "listening", "speech.started"),
                       StopPlayback(), Send({"event_id": "evt_3", "type": "response.cancel"})]
    # The player heard 1,700 ms by its clock, but only 1,500 ms were ever received: clamp.
    effects = feed(iv, [(1.1, playback_stopped("resp_1", "it1", 1700))])
    assert sends(effects) == [{"event_id": "evt_4", "type": "conversation.item.truncate", "item_id": "it1",
                               "content_index": 0, "audio_end_ms": 1500}]
    # Audio still arriving for the interrupted response is not played.
    assert feed(iv, [(1.2, audio("resp_1", "it1", 100))]) == []
    # The transcript keeps the words the model said and how much of them was heard.
    feed(iv, [(1.3, transcript_done("resp_1", "it1", "Hello, and welcome to the interview."))])
    assert iv.turns[-1]["heard_ms"] == 1500


def test_barge_in_with_nothing_played_sends_no_truncate():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    feed(iv, [(0.5, created("resp_1", "r1")), (0.6, audio("resp_1", "it1", 500)), (0.7, speech_started("u1"))])
    assert sends(feed(iv, [(0.8, playback_stopped("resp_1", "it1", 0))])) == []


def test_speech_while_silent_is_not_a_barge_in():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    effects = feed(iv, [(0.5, created("resp_1", "r1")), (0.6, speech_started("u1"))])
    assert fired(effects) == [] and iv.state == "greeting"


def test_lost_function_call_event_is_recovered_from_response_done():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    question(iv, "r1", "resp_1", 0.5)
    feed(iv, [(2.6, playback_done("resp_1")), (5.9, committed("u1")), (6.0, answer("u1", "I am Ana."))])
    output = [{"type": "function_call", "id": "fc1", "call_id": "call_9", "name": "trigger_assessment",
               "arguments": "{}"}]
    effects = feed(iv, [(6.5, created("resp_2", "r2")), (6.9, done("resp_2", "r2", output=output))])
    assert fired(effects) == [("asking", "ack", "tool.trigger_assessment")]
    assert sends(effects, "conversation.item.create")[0]["item"]["call_id"] == "call_9"


def test_connection_closed_ends_the_session_unless_the_flow_handles_it():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    from engine.events import Event
    effects = iv.receive(Event("session.closed", data={"reason": "server closed the connection (1001)"}), 3.0)
    assert effects == [End("connection closed in state 'greeting': server closed the connection (1001)", "not_completed")]


def six_committed_answers(iv, last_transcript):
    """Six committed answers, each transcribed after its commit; the sixth's transcript comes
    "before" its commit, "after" it, or never (None). Returns the effects of the sixth commit."""
    effects = iv.start(0.0)
    t = 0.0
    for n in range(1, 7):
        [tag] = tags(effects)
        question(iv, tag, f"resp_{n}", t + 0.5)
        feed(iv, [(t + 2.6, playback_done(f"resp_{n}"))])
        if n == 6 and last_transcript == "before":
            feed(iv, [(t + 5.9, answer(f"u{n}", f"answer {n}"))])
        effects = feed(iv, [(t + 6.0, committed(f"u{n}"))])
        if n < 6:
            feed(iv, [(t + 6.5, answer(f"u{n}", f"answer {n}"))])
        t += 10
    if last_transcript == "after":
        effects = feed(iv, [(57.2, answer("u6", "answer 6"))])
    return effects


def job_inputs(effects):
    [start] = [e for e in effects if isinstance(e, StartJob)]
    return [turn["text"] for turn in start.inputs["turns"] if turn["role"] == "candidate"]


def test_enough_answers_without_a_tool_call_assesses_anyway():
    iv = Interview(load_flow("assessment.yaml"))
    effects = six_committed_answers(iv, last_transcript=None)
    assert fired(effects)[-1] == ("listening", "ack_without_tool", "input.committed")
    # The reply goes out on the commit; the assessment waits for the sixth answer's words.
    assert [type(e).__name__ for e in effects if isinstance(e, (StartJob, Send))] == ["Send"]


def test_a_job_started_before_the_last_transcript_waits_for_it():
    effects = six_committed_answers(Interview(load_flow("assessment.yaml")), last_transcript="after")
    assert job_inputs(effects) == [f"answer {n}" for n in range(1, 7)]


def test_a_job_with_every_answer_transcribed_starts_at_once():
    effects = six_committed_answers(Interview(load_flow("assessment.yaml")), last_transcript="before")
    assert fired(effects)[-1] == ("listening", "ack_without_tool", "input.committed")
    assert job_inputs(effects) == [f"answer {n}" for n in range(1, 7)]


def test_a_started_job_keeps_the_inputs_it_was_given_while_the_session_goes_on():
    # Found by the fork property: StartJob handed out the facts' own turn dicts, which the core
    # changed afterwards (here a speech.stopped that comes after its commit), under a job that
    # reads them in another thread.
    iv = Interview(load_flow("assessment.yaml"))
    effects = six_committed_answers(iv, last_transcript="before")
    [start] = [e for e in effects if isinstance(e, StartJob)]
    sixth = dict(start.inputs["turns"][-1])
    assert sixth["item_id"] == "u6" and sixth["end"] is None
    feed(iv, [(56.1, speech_stopped("u6"))])
    assert iv.turns[-1]["end"] == 56.1
    assert start.inputs["turns"][-1] == sixth


def test_the_audio_of_a_response_released_as_silent_is_ended_so_that_it_can_be_heard():
    # Found by `engine check --explore` (a lost response.done after the audio): the gate released
    # the response after SILENCE_RELEASE, but no EndAudio ever went out, so the player never
    # reported it heard: `speaking` stayed true and the final state waited its whole margin.
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    assert feed(iv, [(0.5, created("resp_1", "r1")), (0.6, audio("resp_1", "it_1", 1000))]) == [
        Play("resp_1", "it_1", "")]
    assert feed(iv, [(0.6 + SILENCE_RELEASE - 0.01, None)]) == []
    probe = sends(feed(iv, [(0.6 + SILENCE_RELEASE, None)]))  # the gate asks whether it still runs
    assert [(e["type"], e["response_id"]) for e in probe] == [("response.cancel", "resp_1")]
    refused = error("response_cancel_not_active", "Cancellation failed: no active response found",
                    probe[0]["event_id"])
    assert feed(iv, [(0.7 + SILENCE_RELEASE, refused)]) == [
        Log("info", "the silent response is over on the server (its probe found nothing running)"),
        EndAudio("resp_1")]
    feed(iv, [(1.7 + SILENCE_RELEASE, playback_done("resp_1"))])
    effects = feed(iv, [(30.0, None)])  # greeting's timeout: goodbye is said, then heard
    assert fired(effects) == [("greeting", "goodbye", "after.0")]
    [tag] = tags(effects)
    effects = feed(iv, [(30.1, created("resp_2", tag)), (30.2, done("resp_2", tag)), (30.2, playback_done("resp_2"))])
    assert [e for e in effects if isinstance(e, Log) and "not yet heard" in e.message] == []
    assert [e.outcome for e in effects if isinstance(e, End)] == ["completed_degraded"]


def test_a_job_waits_for_a_transcript_at_most_transcript_wait():
    iv = Interview(load_flow("assessment.yaml"))
    six_committed_answers(iv, last_transcript=None)
    assert feed(iv, [(56.0 + TRANSCRIPT_WAIT - 0.01, None)]) == []
    effects = feed(iv, [(56.0 + TRANSCRIPT_WAIT, None)])
    assert job_inputs(effects) == [f"answer {n}" for n in range(1, 6)]  # the sixth never came
    assert iv.turns[-1]["role"] == "candidate" and iv.turns[-1]["transcribed"] is False


def test_a_failed_transcription_is_not_waited_for():
    iv = Interview(load_flow("assessment.yaml"))
    six_committed_answers(iv, last_transcript=None)
    failed = server({"type": "conversation.item.input_audio_transcription.failed", "item_id": "u6",
                     "content_index": 0, "error": {"type": "transcription_error", "message": "no"}})
    effects = feed(iv, [(56.5, failed)])
    assert job_inputs(effects) == [f"answer {n}" for n in range(1, 6)]
    assert iv.turns[-1]["transcript_failed"] is True


def test_job_timeout_cancels_it_and_the_flow_falls_back():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    to_ack(iv)  # the job started at 6.6 s with a 20 s limit; ack itself waits 25 s
    feed(iv, [(6.8, done("resp_2", "r2")), (7.0, created("resp_3", "r3")), (7.4, done("resp_3", "r3"))])
    assert iv.next_deadline() == pytest.approx(26.6)
    effects = feed(iv, [(26.6, None)])
    assert effects[:2] == [CancelJob("assessment"), Log("warning", "job 'assessment' timed out")]
    assert fired(effects) == [("ack", "summary_fallback", "job.assessment.failed")]
    assert feed(iv, [(27.0, job_done("assessment", SUMMARY))]) == []  # too late: recorded only
    assert iv.stale[-1]["why"] == "job 'assessment' is not running"


def test_job_failure_goes_to_the_fallback_summary():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    to_ack(iv)
    feed(iv, [(6.8, done("resp_2", "r2")), (7.0, created("resp_3", "r3")), (7.4, done("resp_3", "r3"))])
    effects = feed(iv, [(8.0, job_failed("assessment"))])
    assert fired(effects) == [("ack", "summary_fallback", "job.assessment.failed")]
    assert Log("warning", "job 'assessment' failed: boom") in effects


def test_final_state_waits_for_queued_audio_to_be_heard_then_hangs_up():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    feed(iv, [(0.1, e) for e in ack_response(["audio", "transcript", "done", "job"])])
    # The summary's audio is long; its playback has not finished when goodbye's 10 s timeout fires.
    feed(iv, [(1.0, created("resp_b", "r2")), (1.1, audio("resp_b", "b", 15000)), (1.2, audio_done("resp_b", "b")),
              (1.3, done("resp_b", "r2")), (1.5, playback_done("resp_a"))])
    assert iv.state == "summary"
    feed(iv, [(1.6, None)])
    effects = feed(iv, [(20.0, None)])  # summary's 15 s timeout: on to goodbye, whose audio queues
    assert fired(effects) == [("summary", "goodbye", "after.0")]
    feed(iv, [(20.1, created("resp_c", "r3")), (20.2, audio("resp_c", "c", 2000)), (20.3, audio_done("resp_c", "c")),
              (20.4, done("resp_c", "r3"))])
    effects = feed(iv, [(30.0, None)])  # goodbye's 10 s timeout: the final state, audio still queued
    assert fired(effects) == [("goodbye", "done", "after.0")] and not iv.done
    assert iv.next_deadline() == 30.0 + 15.0 + 2.0 + 5.0  # the queued audio's length plus a margin
    assert feed(iv, [(30.5, playback_done("resp_b")), (30.6, answer("u9", "ignored now"))]) == []
    assert feed(iv, [(32.5, playback_done("resp_c"))]) == [End("reached final state 'done'", "completed_degraded")]


def test_final_state_hangs_up_after_a_bounded_wait_for_audio_that_never_finishes():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    feed(iv, [(0.1, e) for e in ack_response(["audio", "transcript", "done", "job"])] + [(0.5, None)])
    effects = feed(iv, [(16.0, None), (26.0, None)])  # summary, then goodbye, time out; ack never heard
    assert fired(effects)[-1] == ("goodbye", "done", "after.0") and not iv.done
    assert iv.next_deadline() == pytest.approx(26.0 + 0.8 + 5.0)  # the ack's 800 ms, plus the margin
    assert feed(iv, [(31.8, None)]) == [Log("warning", "hanging up with audio of 1 response(s) not yet heard"),
                                         End("reached final state 'done'", "completed_degraded")]


def test_audio_still_arriving_in_the_final_state_is_played_and_waited_for():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    feed(iv, [(0.1, e) for e in ack_response(["audio", "transcript", "done", "job"])] + [(0.5, None)])
    feed(iv, [(0.9, playback_done("resp_a")), (16.0, None)])  # summary's response never came
    feed(iv, [(16.5, created("resp_b", "r2")), (16.6, done("resp_b", "r2"))])  # ...until now; goodbye asked
    feed(iv, [(17.0, created("resp_c", "r3"))])
    assert fired(feed(iv, [(26.0, None)])) == [("goodbye", "done", "after.0")] and not iv.done
    effects = feed(iv, [(26.1, audio("resp_c", "c", 4000)), (26.2, audio_done("resp_c", "c"))])
    assert effects == [Play("resp_c", "c", ""), EndAudio("resp_c")]
    assert iv.next_deadline() == pytest.approx(26.0 + 5.0 + 4.0)  # extended by the audio that came
    assert feed(iv, [(26.3, playback_done("resp_b")), (30.2, playback_done("resp_c"))])[-1] == End(
        "reached final state 'done'", "completed_degraded")


# A stray id cannot poison the gate (issue 11 item 4) ----------------------------------------------


def greeted(iv):
    """Greeting heard, the candidate answered (committed): asking has sent r2."""
    iv.start(0.0)
    question(iv, "r1", "resp_1", 0.5)
    effects = feed(iv, [(2.6, playback_done("resp_1")), (3.0, speech_started("u1")), (5.0, speech_stopped("u1")),
                        (5.1, committed("u1"))])
    assert iv.state == "asking" and tags(effects) == ["r2"]


def test_a_stray_id_just_before_our_created_neither_blocks_the_gate_nor_steals_the_tool_call():
    iv = Interview(load_flow("assessment.yaml"))
    greeted(iv)
    stray = server({"type": "output_audio_buffer.started", "response_id": "resp_random"})
    effects = feed(iv, [(5.4, stray), (5.5, created("resp_2", "r2")),
                        (5.6, tool_call("resp_2", "call_1", "trigger_assessment"))])
    assert fired(effects) == [("asking", "ack", "tool.trigger_assessment")]
    assert tags(effects) == []  # the ack waits for resp_2, which is in progress
    assert tags(feed(iv, [(5.8, done("resp_2", "r2"))])) == ["r3"]  # ...and goes out once it is done
    assert [(s["type"], s["response_id"], s["why"]) for s in iv.stale][0] == (
        "output_audio_buffer.started", "resp_random", "names a response the server never showed")
    assert Log("info", "output_audio_buffer.started names unknown response resp_random: recorded as stale "
                       "(said once per event type)") in effects
    # Said once per event type; recorded each time.
    stale = iv.counts["stale"]
    again = feed(iv, [(6.0, server({"type": "output_audio_buffer.started", "response_id": "resp_other"}))])
    assert again == [] and iv.counts["stale"] == stale + 1


def test_a_lost_created_then_playback_done_before_the_done_that_proves_it_ours_completes_the_join():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    # resp_1's response.created never arrives: its audio proves it runs, whoever asked for it.
    assert feed(iv, [(0.5, audio("resp_1", "it1", 500)), (0.6, audio_done("resp_1", "it1"))]) == [
        Play("resp_1", "it1", ""), EndAudio("resp_1")]
    assert feed(iv, [(1.2, playback_done("resp_1"))]) == []  # held: whose is resp_1?
    effects = feed(iv, [(1.3, done("resp_1", "r1"))])  # ours: the held playback.done counts
    assert fired(effects) == [("greeting", "listening", "response.done")]
    assert iv.stale == []


def test_a_tagged_created_is_ours_even_after_its_audio_came_first():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    feed(iv, [(0.5, audio("resp_1", "it1", 500)), (0.6, created("resp_1", "r1")), (0.7, audio_done("resp_1", "it1")),
              (0.8, playback_done("resp_1"))])
    assert fired(feed(iv, [(0.9, done("resp_1", "r1"))])) == [("greeting", "listening", "response.done")]


def test_the_events_held_for_a_response_that_turns_out_foreign_are_stale():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    feed(iv, [(0.5, audio("resp_x", "itx", 500)), (0.6, audio_done("resp_x", "itx")), (0.7, playback_done("resp_x"))])
    effects = feed(iv, [(0.8, done("resp_x"))])  # untagged: the server's own
    assert fired(effects) == [] and iv.state == "greeting"
    assert [(s["type"], s["why"]) for s in iv.stale] == [("playback.done", "foreign response"),
                                                       ("response.done", "foreign or duplicate response")]


def test_a_presumed_response_that_goes_silent_is_released_and_the_next_request_goes_out():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    # The server runs a response we never saw created (and whose done is lost); ours waits behind it.
    feed(iv, [(0.1, created("resp_a", "r1")), (0.15, transcript_done("resp_a", "a", "Thank you.")),
              (0.2, done("resp_a", "r1")), (0.3, audio("resp_srv", "s", 100))])
    feed(iv, [(0.4, job_done("assessment", SUMMARY))])
    assert iv.state == "summary"
    assert iv.next_deadline() == pytest.approx(0.3 + SILENCE_RELEASE)
    probe = sends(feed(iv, [(0.3 + SILENCE_RELEASE, None)]))  # asked about first, not yet released
    assert [(e["type"], e["response_id"]) for e in probe] == [("response.cancel", "resp_srv")]
    assert iv.next_deadline() == pytest.approx(0.3 + 2 * SILENCE_RELEASE)
    # The probe's answer is lost as well: silent through it, the response is presumed over.
    assert tags(feed(iv, [(0.3 + 2 * SILENCE_RELEASE, None)])) == ["r2"]


# Outcomes, limits, server errors ------------------------------------------------------------------


def test_counts_say_what_happened():
    iv = Interview(load_flow("assessment.yaml"))
    greeted(iv)
    feed(iv, [(5.4, server({"type": "output_audio_buffer.started", "response_id": "resp_random"}))])
    assert iv.counts == {"responses": 2, "answers": 1, "timeouts": 0, "stale": 1}


def test_a_rejected_session_update_ends_the_session_not_completed():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    effects = feed(iv, [(0.1, error("invalid_value", "Invalid value: 'nonsense'", "evt_1"))])
    reason = "the server rejected the flow's session.update: invalid_value: Invalid value: 'nonsense'"
    assert effects == [Log("error", reason), Save(reason), End(reason, "not_completed")]
    assert iv.done


def test_a_flow_that_handles_error_handles_a_rejected_session_update_itself():
    flow = flow_from("""
name: handles-errors
initial: wait
states:
  wait:
    transitions:
      - {event: error, target: done}
    after:
      - {delay: 5s, target: done}
  done: {final: true}
""")
    iv = Interview(flow)
    iv.start(0.0)
    effects = feed(iv, [(0.1, error("invalid_value", "bad", "evt_1"))])
    assert fired(effects) == [("wait", "done", "error")]
    assert effects[-1] == End("reached final state 'done'", "completed")


def test_session_expired_ends_the_session_not_completed():
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    effects = feed(iv, [(0.1, error("session_expired", "Your session hit the maximum duration of 60 minutes."))])
    reason = ("the server expired the session in state 'greeting': "
              "Your session hit the maximum duration of 60 minutes.")
    assert effects == [Log("error", reason), Save(reason), End(reason, "not_completed")]


def test_max_duration_ends_the_session_saved_and_not_completed():
    flow = flow_from("""
name: bouncing
initial: a
states:
  a:
    transitions: [{event: session.closed, target: done}]
    after: [{delay: 1s, target: b}]
  b:
    after: [{delay: 1s, target: a}]
  done: {final: true}
""")
    iv = Interview(flow)
    iv.start(100.0)
    reason = "max_duration 60min reached in state 'a'"
    assert iv.next_deadline() == 101.0
    effects = feed(iv, [(100.0 + 3600.0, None)])
    assert effects[-3:] == [Log("error", reason), Save(reason), End(reason, "not_completed")]
    assert iv.done and iv.next_deadline() is None


# The error state (issue 11 item 5) ---------------------------------------------------------------


def test_a_bug_inside_the_core_ends_the_session_with_outcome_error_and_later_calls_raise(monkeypatch):
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)

    def broken(self, rid):
        raise KeyError("boom")

    monkeypatch.setattr("engine.playback.Playback.played", broken)
    effects = feed(iv, [(0.5, playback_done("resp_1"))])
    assert effects == [Save("internal error"), End("internal error: KeyError: 'boom'", "error")]
    assert iv.done and iv.next_deadline() is None
    with pytest.raises(LocalProtocolError, match="error state"):
        iv.receive(created("resp_1", "r1"), 0.6)
    with pytest.raises(LocalProtocolError, match="error state"):
        iv.advance(10.0)


def test_a_bug_on_the_audio_hot_path_is_caught_too(monkeypatch):
    iv = Interview(load_flow("assessment.yaml"))
    iv.start(0.0)
    monkeypatch.setattr("engine.playback.Playback.audio", lambda *a: 1 / 0)
    effects = feed(iv, [(0.5, audio("resp_1", "it1", 100))])
    assert effects[-1] == End("internal error: ZeroDivisionError: division by zero", "error")


def test_start_twice_is_the_drivers_mistake():
    iv = Interview(load_flow("seed.yaml"))
    iv.start(0.0)
    with pytest.raises(LocalProtocolError, match="already"):
        iv.start(1.0)
    assert not iv.done


# Templates (issue 11 item 10) --------------------------------------------------------------------


def test_what_a_template_substitutes_is_never_expanded_again():
    flow = flow_from("""
name: echo
initial: listen
states:
  listen:
    transitions:
      - event: input.transcript
        target: echo
    after: [{delay: 30s, target: done}]
  echo:
    enter:
      - respond: 'You said: "{last_answer}" ({answers} answers, {{literal}})'
    after: [{delay: 30s, target: done}]
  done: {final: true}
""")
    iv = Interview(flow)
    iv.start(0.0)
    effects = feed(iv, [(1.0, committed("u1")), (1.1, answer("u1", "my {answers} and {{ and {tool.x} }}"))])
    [request] = sends(effects, "response.create")
    assert request["response"]["instructions"] == (
        'You said: "my {answers} and {{ and {tool.x} }}" (1 answers, {literal})')


# Forks and sharing (issue 15 item 1) -------------------------------------------------------------


def test_sessions_of_a_flow_share_one_machine_and_a_fork_shares_the_flow():
    flow = load_flow("assessment.yaml")
    a, b = Interview(flow), Interview(flow)
    assert a._flow is b._flow
    a.start(0.0)
    snap = a.snapshot()
    hash(snap)
    for fork in (copy.deepcopy(a), copy.copy(a), Interview.restore(flow, snap)):
        assert fork.snapshot() == snap and fork is not a and fork.flow is flow  # never a copy of the flow
    unpickled = pickle.loads(pickle.dumps(a))
    assert unpickled.snapshot() == snap and unpickled.flow == flow
    effects = a.receive(created("resp_1", "r1"), 0.5), a.receive(audio("resp_1", "it1", 100), 0.6)
    fork = Interview.restore(flow, snap)
    assert (fork.receive(created("resp_1", "r1"), 0.5), fork.receive(audio("resp_1", "it1", 100), 0.6)) == effects


def test_equal_states_give_equal_snapshots():
    flow = load_flow("seed.yaml")
    a, b = Interview(flow), Interview(flow)
    for iv in (a, b):
        iv.start(0.0)
    # The same facts, learned in another order (events without ids, as an explorer sends them).
    a.receive(Event("job.assessment.done", data={"result": SUMMARY}), 1.0)
    a.receive(Event("playback.done", response_id="resp_z"), 1.0)
    b.receive(Event("playback.done", response_id="resp_z"), 1.0)
    b.receive(Event("job.assessment.done", data={"result": SUMMARY}), 1.0)
    assert a.snapshot() == b.snapshot()


def test_restore_refuses_what_is_not_a_snapshot():
    with pytest.raises(LocalProtocolError):
        Interview.restore(load_flow("seed.yaml"), ("something", "else"))


def test_a_slow_response_whose_event_was_lost_is_probed_not_released():
    # Found by `engine check --explore --faults 1`: a response's function-call event was lost and
    # the server was slow; 5 s of silence released it and the next create collided with it.
    iv = Interview(load_flow("assessment.yaml"))
    [tag] = tags(iv.start(0.0))
    feed(iv, [(0.5, created("resp_1", tag)), (0.6, audio("resp_1", "it_1", 1000))])
    probe = sends(feed(iv, [(0.6 + SILENCE_RELEASE, None)]))
    assert [e["type"] for e in probe] == ["response.cancel"]
    later = feed(iv, [(7.0, audio_done("resp_1", "it_1")), (0.6 + 2 * SILENCE_RELEASE, None)])
    assert sends(later, "response.create") == []  # it still ran: its done decides
    assert iv._gate.in_progress("resp_1")
