"""The candidate's turn (issue 13 item 1): the reply starts when the turn is committed, answers are
committed turns, and each transcript joins its own turn whenever it arrives, or never."""

import itertools

import pytest
from helpers import (
    answer,
    audio,
    audio_done,
    committed,
    created,
    done,
    feed,
    flow_from,
    load_flow,
    playback_done,
    speech_started,
    speech_stopped,
    tags,
    transcript_done,
)

from engine.interview import Interview


def listening(flow_name="assessment.yaml"):
    """The greeting was heard: the interview listens for the first answer."""
    iv = Interview(load_flow(flow_name))
    iv.start(0.0)
    feed(iv, [(0.5, created("resp_1", "r1")), (0.6, audio("resp_1", "it1", 1000)), (0.7, audio_done("resp_1", "it1")),
              (0.7, transcript_done("resp_1", "it1", "Hello.")), (0.8, done("resp_1", "r1")),
              (1.8, playback_done("resp_1"))])
    assert iv.state == "listening"
    return iv


def candidate_turns(iv):
    return [t for t in iv.turns if t["role"] == "candidate"]


@pytest.mark.parametrize("when", ["earlier", "later", "never"])
def test_the_reply_is_asked_for_on_commit_whenever_the_transcript_comes(when):
    iv = listening()
    script = [(2.0, speech_started("u1")), (4.0, speech_stopped("u1"))]
    if when == "earlier":
        script.append((4.1, answer("u1", "I am Ana.")))
    assert tags(feed(iv, script)) == []  # the turn is not over until its audio is committed
    assert tags(feed(iv, [(4.2, committed("u1"))])) == ["r2"]
    assert iv.state == "asking"
    if when == "later":
        assert tags(feed(iv, [(5.5, answer("u1", "I am Ana."))])) == []  # the words change nothing now
    [turn] = candidate_turns(iv)
    expected_text = None if when == "never" else "I am Ana."
    assert turn == {"role": "candidate", "item_id": "u1", "t": 4.2, "start": 2.0, "end": 4.0, "committed": 4.2,
                    "text": expected_text, "transcribed": when != "never"}
    assert iv.counts["answers"] == 1


def test_enough_answers_counts_committed_turns_not_transcripts():
    iv = Interview(load_flow("assessment.yaml"))  # enough_answers: {min_answers: 6}
    effects = iv.start(10.0)
    for n in range(1, 7):
        [tag] = tags(effects)
        rid, t = f"resp_{n}", 10.0 * n
        feed(iv, [(t + 0.5, created(rid, tag)), (t + 0.6, audio(rid, f"i{n}", 500)),
                  (t + 0.7, audio_done(rid, f"i{n}")), (t + 0.8, done(rid, tag)), (t + 1.5, playback_done(rid))])
        assert iv.state == "listening"
        effects = feed(iv, [(t + 10.0, committed(f"u{n}"))])  # no transcript ever arrives
    assert iv.state == "ack_without_tool" and iv.counts["answers"] == 6
    assert all(not turn["transcribed"] for turn in candidate_turns(iv))


def test_the_same_commit_twice_is_one_turn():
    iv = listening()
    feed(iv, [(4.2, committed("u1"))])
    again = committed("u1")  # a second commit event for the same item (not a duplicate frame)
    assert feed(iv, [(4.3, again)]) == [] and iv.counts["answers"] == 1


ORDERS = list(itertools.permutations(["commit1", "text1", "commit2", "text2"]))


@pytest.mark.parametrize("order", [o for o in ORDERS if o.index("commit1") < o.index("commit2")], ids="-".join)
def test_each_transcript_lands_on_its_own_turn_in_every_order(order):
    flow = flow_from("""
name: two-answers
initial: listen
states:
  listen:
    transitions:
      - {event: input.committed, target: listen}
    after: [{delay: 60s, target: done}]
  done: {final: true}
""")
    iv = Interview(flow)
    iv.start(0.0)
    events = {"commit1": committed("u1"), "commit2": committed("u2"),
              "text1": answer("u1", "first answer"), "text2": answer("u2", "second answer")}
    feed(iv, [(1.0 + i, events[k]) for i, k in enumerate(order)])
    turns = {t["item_id"]: t for t in candidate_turns(iv)}
    assert turns["u1"]["text"] == "first answer" and turns["u2"]["text"] == "second answer"
    assert turns["u1"]["committed"] == 1.0 + order.index("commit1")
    assert turns["u2"]["committed"] == 1.0 + order.index("commit2")
    assert iv.counts["answers"] == 2


def test_last_answer_is_the_last_transcribed_text():
    iv = listening()
    feed(iv, [(4.0, committed("u1")), (4.1, answer("u1", "first")), (9.0, committed("u2"))])
    assert iv.context()["last_answer"] == "first"  # u2 has no words yet
    feed(iv, [(9.5, answer("u2", "second"))])
    assert iv.context()["last_answer"] == "second"


def speech_stopped_flow():
    """A flow whose turns end on speech.stopped (session.turn_end: speech_stopped)."""
    flow = flow_from("""
name: eager
initial: listen
states:
  listen:
    transitions:
      - {event: speech.stopped, target: reply}
    after: [{delay: 60s, target: done}]
  reply:
    enter: [respond]
    transitions:
      - {event: input.committed, target: done}
    after: [{delay: 60s, target: done}]
  done: {final: true}
""")
    # Set past the frozen model: the flow format gains `session.turn_end` in the flow stream.
    object.__setattr__(flow.session, "turn_end", "speech_stopped")
    return flow


def test_with_turn_end_speech_stopped_the_turn_ends_on_speech_stopped_and_its_commit_is_not_a_second_turn():
    iv = Interview(speech_stopped_flow())
    iv.start(0.0)
    effects = feed(iv, [(1.0, speech_started("u1")), (3.0, speech_stopped("u1"))])
    assert tags(effects) == ["r1"] and iv.state == "reply" and iv.counts["answers"] == 1
    feed(iv, [(3.1, committed("u1"))])  # delivered as itself, but the same turn
    assert iv.counts["answers"] == 1
    [turn] = candidate_turns(iv)
    assert (turn["t"], turn["end"], turn["committed"]) == (3.0, 3.0, 3.1)
