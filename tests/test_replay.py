"""`engine replay` and `engine coverage` on recorded traces.

Traces are made the way the runner makes them (`record` below): a scripted session is driven
through the core and written with `TraceWriter`, inputs and effects interleaved. Two sessions of
flows/assessment.yaml take different paths (SESSION_A and SESSION_B); real simulator sessions are
recorded once per module as offline sessions (engine.testing.offline, virtual time).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.cli import main as engine
from engine.interview import Interview
from engine.replay import coverage, edges, fired, replay
from engine.testing.offline import run_offline
from engine.trace import TraceWriter, read

from helpers import (FLOWS, ROOT, answer, audio, audio_done, committed, created, done, job_done, job_failed, load_flow,
                     playback_done, playback_stopped, speech_started, speech_stopped, tool_call, transcript_done)

SUMMARY = {"summary": "Your English is around B1.", "overall": {"band": "B1"}}


def spoken(t, rid, tag, ms=1500):
    """A response with audio: created, one audio chunk, audio and transcript done, done."""
    item = f"it_{rid}"
    return [(t, created(rid, tag)), (t + 0.1, audio(rid, item, ms)), (t + 0.2, audio_done(rid, item)),
            (t + 0.2, transcript_done(rid, item, "...")), (t + 0.3, done(rid, tag))]


# Greeting, one answer, the tool call, assessment done, summary, goodbye.
SESSION_A = [
    *spoken(0.5, "resp_1", "r1"),
    (2.6, playback_done("resp_1")),
    (3.0, speech_started("u1")), (5.0, speech_stopped("u1")), (5.1, committed("u1")), (6.0, answer("u1", "I am Ana.")),
    (6.5, created("resp_2", "r2")), (6.6, tool_call("resp_2", "call_1", "trigger_assessment", "{}")),
    (6.7, done("resp_2", "r2")), (6.7, playback_done("resp_2")),  # no audio: the player reports at once
    *spoken(7.0, "resp_3", "r3"),
    (8.0, job_done("assessment", SUMMARY)),
    *spoken(8.5, "resp_4", "r4"),
    (9.2, playback_done("resp_3")),
    *spoken(9.5, "resp_5", "r5"),
    (11.0, playback_done("resp_4")), (12.0, playback_done("resp_5")),
]
PATH_A = ["initial", "states.greeting.transitions[1]", "states.listening.transitions[1]",
          "states.asking.transitions[0]", "states.ack.transitions[0]", "states.summary.transitions[0]",
          "states.goodbye.transitions[0]"]

# Barge-in on the greeting, silence until the nudge, the tool call, the assessment fails, and the
# goodbye's audio is never reported heard (its timeout ends the session).
SESSION_B = [
    (0.5, created("resp_1", "r1")), (0.6, audio("resp_1", "it_1", 3000)), (0.7, audio_done("resp_1", "it_1")),
    (0.8, done("resp_1", "r1")),
    (1.5, speech_started("u1")), (1.6, playback_stopped("resp_1", "it_1", 900)), (2.5, speech_stopped("u1")),
    (41.5, None),
    *spoken(42.0, "resp_2", "r2"),
    (45.0, speech_started("u2")), (46.6, committed("u2")), (47.0, answer("u2", "Sorry, yes.")),
    (47.5, created("resp_3", "r3")), (47.6, tool_call("resp_3", "call_1", "trigger_assessment", "{}")),
    (47.7, done("resp_3", "r3")),
    *spoken(48.0, "resp_4", "r4"),
    (49.0, job_failed("assessment")),
    *spoken(49.5, "resp_5", "r5"),
    (50.5, created("resp_6", "r6")), (51.0, done("resp_6", "r6")),
    (70.0, None),
]
PATH_B = ["initial", "states.greeting.transitions[2]", "states.listening.after[0]", "states.nudge.transitions[0]",
          "states.asking.transitions[0]", "states.ack.transitions[1]", "states.summary_fallback.transitions[0]",
          "states.goodbye.after[0]"]


def record(path: Path, script, flow: str = "assessment.yaml") -> Path:
    """Drive the core through `script` ((t, event), None = time passes) and write the trace as the
    runner does: each input, then the effects it caused."""
    iv = Interview(load_flow(flow))
    trace = TraceWriter(path, {"flow": str(FLOWS / flow), "session": path.stem, "speed": 1.0})
    trace.start(0.0)
    trace.effects(0.0, iv.start(0.0))
    for t, event in script:
        if event is None:
            trace.advance(t)
            trace.effects(t, iv.advance(t))
        else:
            trace.event(t, event)
            trace.effects(t, iv.receive(event, t))
    trace.close()
    return path


def lines_of(path: Path) -> list[dict]:
    return list(read(path))


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def trace_a(tmp_path):
    return record(tmp_path / "a.jsonl", SESSION_A)


@pytest.fixture
def trace_b(tmp_path):
    return record(tmp_path / "b.jsonl", SESSION_B)


def test_scripted_sessions_take_their_paths(trace_a, trace_b):
    assert [rec["via"] for _, rec in fired(read(trace_a))] == PATH_A
    assert [rec["via"] for _, rec in fired(read(trace_b))] == PATH_B


def test_replay_of_recorded_sessions_is_identical(trace_a, trace_b, capsys):
    flow = load_flow("assessment.yaml")
    assert replay(read(trace_a), flow) is None
    assert replay(read(trace_b), flow) is None
    assert engine(["replay", str(trace_a)]) == 0
    inputs = 1 + len(SESSION_A)  # start + each scripted input
    effects = sum(1 for line in read(trace_a) if "out" in line)
    assert capsys.readouterr().out == f"identical: {inputs} inputs, {effects} effects\n"


def test_a_later_playback_done_past_the_timeout_diverges_at_its_line(trace_a, tmp_path, capsys):
    lines = lines_of(trace_a)
    # greeting's audio is reported heard at 31 s instead of 2.6 s: its 30 s timeout fires first.
    n = next(i for i, line in enumerate(lines) if line.get("in", {}).get("engine", {}).get("type") == "playback.done")
    lines[n]["t"] = 31.0
    edited = write_lines(tmp_path / "late.jsonl", lines)
    d = replay(read(edited), load_flow("assessment.yaml"))
    assert (d.line, d.t, d.input, d.index) == (n + 1, 31.0, "in playback.done", 0)
    assert d.expected["via"] == "states.greeting.transitions[1]" and d.got["via"] == "states.greeting.after[0]"
    assert engine(["replay", str(edited)]) == 1
    out = capsys.readouterr().out
    assert f"diverged at line {n + 1} (t=31.000s, in playback.done), effect 1:" in out
    assert '"via":"states.greeting.after[0]"' in out and "differs at: via" in out


def test_two_swapped_inputs_diverge_at_the_first_of_them(trace_a, tmp_path):
    lines = lines_of(trace_a)
    # The candidate starts speaking before the greeting was heard: a barge-in, not an answer.
    i = next(k for k, line in enumerate(lines) if line.get("in", {}).get("engine", {}).get("type") == "playback.done")
    j = next(k for k in range(i + 1, len(lines)) if "in" in lines[k])
    lines[i], lines[j] = lines[j], lines[i]
    d = replay(read(write_lines(tmp_path / "swapped.jsonl", lines)), load_flow("assessment.yaml"))
    assert (d.line, d.input) == (i + 1, "in input_audio_buffer.speech_started")
    assert d.expected["via"] == "states.greeting.transitions[1]"
    assert d.got["via"] == "states.greeting.transitions[2]"


def test_an_effect_missing_from_the_trace_is_reported_as_extra(trace_a, tmp_path):
    lines = lines_of(trace_a)
    k = max(i for i, line in enumerate(lines) if line.get("out", {}).get("effect") == "End")
    d = replay(read(write_lines(tmp_path / "cut.jsonl", lines[:k])), load_flow("assessment.yaml"))
    assert d.expected is None and d.got["effect"] == "End"


def test_a_trace_without_a_start_line_replays(trace_a, tmp_path):
    # Runners that write no `start` line: the effects before the first input are start's.
    lines = [line for line in lines_of(trace_a) if "start" not in line]
    lines.insert(3, {"t": 0.1, "note": "audio: no device"})
    assert replay(lines, load_flow("assessment.yaml")) is None


def test_replay_exit_2_for_unreadable_trace_or_flow(tmp_path, trace_a, capsys):
    assert engine(["replay", str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "junk.jsonl").write_text("not json\n")
    assert engine(["replay", str(tmp_path / "junk.jsonl")]) == 2
    assert engine(["replay", str(trace_a), "--flow", str(ROOT / "tests/broken_flows/01_unknown_target.yaml")]) == 2
    lines = lines_of(trace_a)
    lines[0]["meta"]["flow"] = str(tmp_path / "gone.yaml")
    assert engine(["replay", str(write_lines(tmp_path / "moved.jsonl", lines))]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl: cannot read" in err and "gone.yaml) cannot be read; pass --flow FLOW" in err


def test_replay_against_another_flow_diverges(trace_a):
    # The seed flow's start sends other effects: replaying against it must not pass quietly.
    d = replay(read(trace_a), load_flow("seed.yaml"))
    assert d is not None and d.line == 2 and d.input == "start"


# Coverage -----------------------------------------------------------------------------------


def test_coverage_of_two_sessions_is_the_union_of_their_paths(trace_a, trace_b):
    flow = load_flow("assessment.yaml")
    cov = coverage(flow, [trace_a, lines_of(trace_b)])
    taken = set(PATH_A + PATH_B) - {"initial"}
    assert set(cov.taken) - {"initial"} == taken
    assert cov.taken["states.asking.transitions[0]"] == 2  # both sessions called the tool
    every = {e.via for e in edges(flow)} - {"initial"}
    assert {e.via for e in cov.never_taken} == every - taken
    assert cov.never_visited == ["ack_without_tool"]
    assert cov.sessions == 2


def test_coverage_command_prints_taken_never_taken_and_totals(trace_a, trace_b, capsys):
    assert engine(["coverage", str(trace_a), str(trace_b)]) == 0
    out = capsys.readouterr().out
    taken, _, never = out.partition("never taken:")
    assert re.search(r"states\.listening\.after\[0\] +listening -> nudge +after 40s +1\n", taken)
    assert "states.listening.transitions[0]" in never and "input.committed [enough_answers]" in never
    total = len(edges(load_flow("assessment.yaml"))) - 1
    assert f"states 9/10, transitions {len(set(PATH_A + PATH_B)) - 1}/{total}" in out


# Sessions against the simulator ------------------------------------------------------------


@pytest.fixture(scope="module", params=["clean", "shuffle_done,duplicate"])
def simulated(request, tmp_path_factory):
    """A session against the simulator, offline (in this process, on virtual time)."""
    out = tmp_path_factory.mktemp("runs")
    faults = "" if request.param == "clean" else request.param
    ran = run_offline(load_flow("assessment.yaml"), out, faults=faults, session_id="s")
    assert ran.result.ok, ran.result.reason
    return ran.folder / "trace.jsonl"


def test_replay_of_a_simulator_session_is_identical(simulated, capsys):
    assert engine(["replay", str(simulated)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("identical: ")


def test_the_drawings_of_a_simulator_session(simulated):
    # Here, beside the recorded session (one run per module); imported late: test_render imports us.
    from test_render import check_overlay, check_timeline

    lines = list(read(simulated))
    check_overlay(lines, load_flow("assessment.yaml"))
    check_timeline(lines)
