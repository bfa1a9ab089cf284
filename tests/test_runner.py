"""End to end: the runner, over a real WebSocket on 127.0.0.1, against the simulator at high speed."""

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field, TypeAdapter

from engine.effects import Fired
from engine.realtime import Endpoint, choose_endpoint
from engine.runner import Session
from engine.simulator import Persona, load_persona, simulator
from engine.sinks import SINKS
from engine.trace import read
from engine.ui import PlainView

from helpers import FLOWS, load_flow

SPEED = 60.0
SECRET = "sk-test-never-printed-0123456789"  # sent as the Authorization header to the simulator
FLOW = load_flow("assessment.yaml")
PERSONA = load_persona(FLOWS / "personas" / "default.yaml")


async def interview(out: Path, *, faults: str = "", persona=None, sinks=SINKS, jobs=None, seed: int = 1,
                    watch=None, speed: float = SPEED):
    view = _Watch(watch)
    async with simulator(persona=persona, seed=seed, faults=faults, speed=speed) as sim:
        session = Session(FLOW, Endpoint(sim.url, api_key=SECRET, simulated=True), out=out, speed=speed, view=view,
                          sinks=sinks, jobs=jobs)
        task = asyncio.create_task(session.run())
        if watch is not None:
            await asyncio.wait_for(view.seen.wait(), 30)
            task.cancel()  # what Ctrl-C does to the main task
        result = await asyncio.wait_for(task, 60)
    return result, sim.stats, session


class _Watch(PlainView):
    """A quiet view that can tell a test when the flow enters a given state."""

    def __init__(self, state: str | None):
        super().__init__(io.StringIO())
        self.state, self.seen = state, asyncio.Event()

    def fired(self, t, fired: Fired, deadline) -> None:
        super().fired(t, fired, deadline)
        if fired.target == self.state:
            self.seen.set()


def trace_of(result) -> list[dict]:
    return list(read(result.folder / "trace.jsonl"))


def fired_path(lines) -> list[str]:
    return [line["out"]["target"] for line in lines if "out" in line and line["out"]["effect"] == "Fired"]


def test_clean_interview_end_to_end(tmp_path):
    result, stats, _ = asyncio.run(interview(tmp_path))
    assert result.ok and result.state == "done" and result.reason == "reached final state 'done'"
    assert stats.collisions == 0 and stats.injected_collisions == 0
    report = json.loads((result.folder / "report.json").read_text())
    answers = [t["text"] for t in report["turns"] if t["role"] == "candidate"]
    assert answers == PERSONA.candidate.answers[:4]  # the persona's model calls the tool after four answers
    assert report["results"]["assessment"]["overall"]["band"] in {"B1", "B2"}
    assert report["ok"] is True and report["final_state"] == "done"
    summary = report["results"]["assessment"]["summary"]
    spoken = [t["text"] for t in report["turns"] if t["role"] == "interviewer"]
    assert summary in spoken  # the summary turn spoke the assessment
    assert fired_path(trace_of(result)) == ["greeting", "listening", "asking", "listening", "asking", "listening",
                                            "asking", "listening", "asking", "ack", "summary", "goodbye", "done"]
    transcript = (result.folder / "transcript.md").read_text()
    assert all(a in transcript for a in answers)
    assert "## Assessment" in (result.folder / "report.md").read_text()
    with sqlite3.connect(tmp_path / "sessions.sqlite") as db:
        row = db.execute("select ok, final_state, overall_band from sessions").fetchone()
        turns = db.execute("select count(*) from turns where role = 'candidate'").fetchone()[0]
    assert row == (1, "done", report["results"]["assessment"]["overall"]["band"]) and turns == len(answers)
    for path in result.folder.iterdir():
        assert SECRET not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("faults", ["shuffle_done", "drop_transcript_done", "duplicate", "unknown_events",
                                    "garbage", "slow_done=2", "collision=2", "rate_limit=2",
                                    "shuffle_done,duplicate,unknown_events,garbage"])
def test_interview_under_faults(tmp_path, faults):
    result, stats, session = asyncio.run(interview(tmp_path, faults=faults))
    assert result.ok and result.state == "done", result.reason
    assert stats.collisions == 0  # the engine never caused one
    lines = trace_of(result)
    if "garbage" not in faults and "unknown" not in faults:
        validate_with_the_sdk(lines)
    assert fired_path(lines)[-4:] == ["ack", "summary", "goodbye", "done"]
    notes = [line["note"] for line in lines if "note" in line]
    if "garbage" in faults:
        assert any(n.startswith("skipped a bad frame") for n in notes)
    if faults == "collision=2":
        assert stats.injected_collisions == 1 and session.stats["collisions"] == 1
        assert stats.client_events["response.create"] == session.stats["responses"]
    if faults == "rate_limit=2":
        assert "rate_limit_exceeded" in json.dumps([line for line in lines if "in" in line])
        assert session.stats["responses"] == stats.client_events["response.create"]


def test_disconnect_mid_answer_saves_what_was_gathered(tmp_path):
    result, stats, _ = asyncio.run(interview(tmp_path, faults="disconnect_after=120"))
    assert not result.ok
    assert result.reason.startswith("connection closed in state")
    report = json.loads((result.folder / "report.json").read_text())
    assert report["ok"] is False and report["turns"]  # the first turns were kept
    assert (result.folder / "transcript.md").exists() and (result.folder / "trace.jsonl").exists()


def test_a_failing_sink_loses_nothing_else(tmp_path):
    def broken(record, folder):
        raise OSError("disk on fire")

    result, _, _ = asyncio.run(interview(tmp_path, sinks=(broken, *SINKS)))
    assert result.ok
    assert result.failures and all("broken failed: OSError: disk on fire" in f for f in result.failures)
    for name in ("report.json", "report.md", "transcript.md", "trace.jsonl"):
        assert (result.folder / name).stat().st_size > 0
    assert (tmp_path / "sessions.sqlite").exists()


def test_a_hanging_job_times_out_and_the_interview_still_ends(tmp_path):
    async def hangs(inputs):
        await asyncio.Event().wait()

    result, _, _ = asyncio.run(interview(tmp_path, jobs={"assessment": hangs}))
    assert result.ok and result.state == "done"
    lines = trace_of(result)
    assert fired_path(lines)[-4:] == ["ack", "summary_fallback", "goodbye", "done"]
    assert any(line.get("out", {}).get("effect") == "CancelJob" for line in lines)
    assert "assessment" not in json.loads((result.folder / "report.json").read_text())["results"]


def test_ctrl_c_keeps_what_was_gathered(tmp_path):
    result, _, _ = asyncio.run(interview(tmp_path, watch="asking"))
    assert not result.ok and result.reason.startswith("interrupted in state")
    report = json.loads((result.folder / "report.json").read_text())
    assert [t["role"] for t in report["turns"]][:2] == ["interviewer", "candidate"]
    assert (result.folder / "trace.jsonl").exists()


async def instant_assessment(inputs):
    return {"summary": "Your English is around B1.", "overall": {"band": "B1"}}


@pytest.fixture(scope="module")
def barge_in_session(tmp_path_factory):
    """One session, slower than the others: a barge-in is about timing, and at 60x one scheduling
    hiccup of 10 ms is 0.6 s of session time, enough to overlap the end of an ordinary question.
    The job is instant because a real one's CPU time does not scale with --speed."""
    data = PERSONA.model_dump()
    data["candidate"]["answers"][1] = {"text": data["candidate"]["answers"][1], "barge_in_s": 1.0}
    data["interviewer"]["tool_calls"][0]["after_answers"] = 3
    persona = Persona.model_validate(data)
    result, stats, _ = asyncio.run(interview(tmp_path_factory.mktemp("barge"), persona=persona, speed=15,
                                             jobs={"assessment": instant_assessment}))
    return result, stats, trace_of(result)


def sent_events(lines) -> list[dict]:
    return [line["out"]["event"] for line in lines if line.get("out", {}).get("effect") == "Send"]


def test_barge_in_end_to_end(barge_in_session):
    result, stats, lines = barge_in_session
    assert result.ok and stats.collisions == 0
    truncates = [e for e in sent_events(lines) if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1 and stats.truncations == [truncates[0]["audio_end_ms"]]
    assert 700 <= truncates[0]["audio_end_ms"] <= 1300  # ~1 s heard, within the scheduling slack
    assert len([line for line in lines if line.get("out", {}).get("effect") == "StopPlayback"]) == 1
    assert "*(interrupted after 1." in (result.folder / "transcript.md").read_text() or \
        "*(interrupted after 0." in (result.folder / "transcript.md").read_text()
    barge = fired_path(lines).index("listening", 2)
    assert [line["out"]["event"] for line in lines if line.get("out", {}).get("effect") == "Fired"][barge] == \
        "speech.started"


def test_no_dead_air_and_no_overlap_between_ack_summary_and_goodbye(barge_in_session):
    heard: dict[str, list[float]] = {}
    for line in barge_in_session[2]:
        engine = line.get("in", {}).get("engine")
        if engine and engine["type"] in ("playback.started", "playback.done"):
            heard.setdefault(engine["response_id"], []).append(line["t"])
    spans = sorted(v for v in heard.values() if len(v) == 2)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 1e-6, "two responses' audio overlapped"
    # The last three responses (ack, summary, goodbye) follow each other with gaps of network and
    # model cost only (the simulator's 0.2-0.6 s to first audio), not a wait for the previous audio.
    gaps = [round(start - end, 2) for (_, end), (start, _) in zip(spans[-3:], spans[-2:])]
    assert all(g < 0.7 for g in gaps), gaps



def validate_with_the_sdk(lines) -> set[str]:
    """Every client event sent and every server event received parses with the openai SDK's unions."""
    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

    client = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])
    server = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
    sent = sent_events(lines)
    for event in sent:
        client.validate_python(event)
    for line in lines:
        event = line.get("in", {}).get("server")
        if event is None or event["type"].startswith("sim."):
            continue
        if isinstance(event.get("delta"), dict):  # audio kept as its length in traces
            event = {**event, "delta": "AAAA"}
        server.validate_python(event)
    return {e["type"] for e in sent}


def test_every_client_event_validates_against_the_openai_sdk(barge_in_session):
    kinds = validate_with_the_sdk(barge_in_session[2])
    assert kinds >= {"session.update", "response.create", "conversation.item.create", "conversation.item.truncate"}


def test_endpoint_choice_and_the_key_never_shows():
    assert choose_endpoint(None, "gpt-realtime", env={}).kind == "simulator"
    live = choose_endpoint(None, "gpt-realtime", env={"OPENAI_API_KEY": "sk-secret-123"})
    assert live.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime" and live.kind == "openai"
    assert "sk-secret-123" not in repr(live)
    assert choose_endpoint("ws://127.0.0.1:9/v1/realtime", "m", env={}).kind == "custom"


def test_connection_refused_is_one_clear_line_without_the_key(tmp_path):
    endpoint = Endpoint("ws://127.0.0.1:9/v1/realtime", api_key="sk-secret-456")
    session = Session(FLOW, endpoint, out=tmp_path, view=PlainView(io.StringIO()), jobs={})
    result = asyncio.run(session.run())
    assert not result.ok and result.reason.startswith("cannot connect to ws://127.0.0.1:9/v1/realtime")
    assert "sk-secret-456" not in result.reason
    for path in result.folder.iterdir():
        assert "sk-secret-456" not in path.read_text()


def test_trace_writer_redacts_the_key(tmp_path):
    from engine.events import Event
    from engine.trace import TraceWriter

    trace = TraceWriter(tmp_path / "trace.jsonl", {"flow": "x"}, secret=SECRET)
    trace.event(0.0, Event("session.closed", data={"reason": f"echoed {SECRET} back"}))
    trace.note(0.1, f"error mentioning Bearer {SECRET}")
    trace.close()
    text = (tmp_path / "trace.jsonl").read_text()
    assert SECRET not in text and text.count("***") == 2
