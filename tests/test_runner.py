"""End to end: the runner against the simulator. Most sessions run in this process over loopback
connections on the virtual-time loop (no wall time passes); a few go over a real WebSocket on
127.0.0.1 at high speed."""

import asyncio
import json
import sqlite3
import threading
from typing import Annotated

import pytest
from driver import FLOW, SECRET, URL, Watch, fired_path, outputs_agree, run, sent_events, serving, trace_of
from helpers import FLOWS
from pydantic import Field, TypeAdapter

from engine import vloop
from engine.realtime import Endpoint, Transport, choose_endpoint, in_process
from engine.runner import Session, exit_code
from engine.simulator import Persona, Simulator, load_persona, simulator
from engine.sinks import SINKS

PERSONA = load_persona(FLOWS / "personas" / "default.yaml")


async def instant_assessment(inputs):
    return {"summary": "Your English is around B1.", "overall": {"band": "B1"}}


def test_clean_interview_end_to_end(tmp_path):
    result, stats, _ = run(tmp_path)
    assert result.ok and result.state == "done" and result.reason == "reached final state 'done'"
    assert result.outcome == "completed" and not result.failures and exit_code(result) == 0
    assert stats.collisions == 0 and stats.injected_collisions == 0
    report = outputs_agree(result.folder, outcome="completed")
    answers = [t["text"] for t in report["turns"] if t["role"] == "candidate"]
    assert answers == PERSONA.candidate.answers[:4]  # the persona's model calls the tool after four answers
    assert report["results"]["assessment"]["overall"]["band"] in {"B1", "B2"}
    assert report["final_state"] == "done" and report["counts"]["answers"] == len(answers)
    assert report["counts"]["responses"] == stats.client_events["response.create"]
    assert report["counts"]["collisions"] == 0 and report["counts"]["events"] > 100
    summary = report["results"]["assessment"]["summary"]
    spoken = [t["text"] for t in report["turns"] if t["role"] == "interviewer"]
    assert summary in spoken  # the summary turn spoke the assessment
    assert fired_path(trace_of(result)) == ["greeting", "listening", "asking", "listening", "asking", "listening",
                                            "asking", "listening", "asking", "ack", "summary", "goodbye", "done"]
    assert "## Assessment" in (result.folder / "report.md").read_text()
    with sqlite3.connect(tmp_path / "sessions.sqlite") as db:
        row = db.execute("select ok, final_state, overall_band from sessions").fetchone()
    assert row == (1, "done", report["results"]["assessment"]["overall"]["band"])
    for path in result.folder.iterdir():
        assert SECRET not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("faults", ["shuffle_done", "drop_transcript_done", "duplicate", "unknown_events",
                                    "garbage", "slow_done=2", "collision=2", "rate_limit=2",
                                    "shuffle_done,duplicate,unknown_events,garbage"])
def test_interview_under_faults(tmp_path, faults):
    # The assessment's own work (a second of CPU) is not what faults test: an instant one stands in.
    result, stats, session = run(tmp_path, faults=faults, jobs={"assessment": instant_assessment})
    assert result.ok and result.state == "done", result.reason
    assert stats.collisions == 0  # the engine never caused one
    lines = trace_of(result)
    if "garbage" not in faults and "unknown" not in faults:
        validate_with_the_sdk(lines)
    assert fired_path(lines)[-4:] == ["ack", "summary", "goodbye", "done"]
    notes = [line["note"] for line in lines if "note" in line]
    report = outputs_agree(result.folder, outcome="completed")
    if "garbage" in faults:
        assert any(n.startswith("skipped a bad frame") for n in notes)
        assert report["counts"]["skipped"] == sum(n.startswith("skipped a bad frame") for n in notes) > 0
    if faults == "collision=2":
        assert stats.injected_collisions == 1 and session.stats["collisions"] == 1
        assert stats.client_events["response.create"] == session.iv.counts["responses"]
        assert report["counts"]["collisions"] == 1
    if faults == "rate_limit=2":
        assert "rate_limit_exceeded" in json.dumps([line for line in lines if "in" in line])
        assert session.iv.counts["responses"] == stats.client_events["response.create"]


def test_the_same_session_takes_the_same_path_every_time(tmp_path):
    """The virtual-time loop makes a whole session deterministic, threads (sinks, the assessment) included."""
    first, _, _ = run(tmp_path / "a", faults="shuffle_done,duplicate", session_id="s")
    second, _, _ = run(tmp_path / "b", faults="shuffle_done,duplicate", session_id="s")
    def inputs(result):
        return [(line["t"], line.get("in")) for line in trace_of(result) if "in" in line or "advance" in line]
    assert inputs(first) == inputs(second)


def test_disconnect_mid_answer_saves_what_was_gathered(tmp_path):
    result, stats, _ = run(tmp_path, faults="disconnect_after=120")
    assert not result.ok and result.outcome == "not_completed"
    assert result.reason.startswith("connection closed in state")
    assert "the server closed the connection (1011: simulated disconnect)" in result.reason
    report = outputs_agree(result.folder, outcome="not_completed")
    assert report["turns"]  # the first turns were kept
    assert (result.folder / "trace.jsonl").exists()


def test_a_failing_sink_loses_nothing_else(tmp_path):
    def broken(record, folder):
        raise OSError("disk on fire")

    result, _, _ = run(tmp_path, sinks=(broken, *SINKS))
    assert result.ok
    assert result.failures and all("broken failed: OSError: disk on fire" in f for f in result.failures)
    outputs_agree(result.folder, outcome="completed")


def test_a_hanging_job_times_out_and_the_interview_still_ends(tmp_path):
    async def hangs(inputs):
        await asyncio.Event().wait()

    result, _, _ = run(tmp_path, jobs={"assessment": hangs})
    assert result.ok and result.state == "done"
    lines = trace_of(result)
    assert fired_path(lines)[-4:] == ["ack", "summary_fallback", "goodbye", "done"]
    assert any(line.get("out", {}).get("effect") == "CancelJob" for line in lines)
    report = outputs_agree(result.folder)
    assert "assessment" not in report["results"]


def test_cancelling_the_session_keeps_what_was_gathered(tmp_path):
    result, _, _ = run(tmp_path, watch="asking")
    assert not result.ok and result.outcome == "interrupted"
    assert result.reason == "interrupted in state 'asking'"
    report = outputs_agree(result.folder, outcome="interrupted")
    assert [t["role"] for t in report["turns"]][:2] == ["interviewer", "candidate"]
    assert (result.folder / "trace.jsonl").exists()


def test_the_first_response_create_does_not_wait_for_a_jobs_warm_up(tmp_path):
    """A warm-up that blocks (until the test releases it) runs while the interview starts; the job,
    started minutes later, waits for it without blocking the loop."""
    release, order = threading.Event(), []

    def warm_up():
        order.append("warm-up started")
        assert release.wait(60), "never released"
        order.append("warm-up finished")

    async def assessment(inputs):
        order.append("job ran")
        return {"summary": "Your English is around B1.", "overall": {"band": "B1"}}

    assessment.warm_up = warm_up

    class Watching(Transport):
        async def send(self, event):
            if event["type"] == "response.create" and "first response.create" not in order:
                order.append("first response.create")
                release.set()
            return await super().send(event)

    def connect_watching(sim):
        inner = in_process(serving(sim))

        async def connect(endpoint):
            transport = await inner(endpoint)
            return Watching(transport._ws, endpoint.secrets, peer=transport._peer)
        return connect

    async def main():
        sim = Simulator(seed=1)
        session = Session(FLOW, Endpoint(URL, simulated=True), out=tmp_path, view=Watch(),
                          jobs={"assessment": assessment}, connect=connect_watching(sim))
        return await session.run()

    result = vloop.run(main())
    assert result.ok and result.state == "done"
    assert order.index("first response.create") < order.index("warm-up finished") < order.index("job ran")
    assert "warm-up started" in order


@pytest.fixture(scope="module")
def barge_in_session(tmp_path_factory):
    """One session with a barge-in at 1 s into question 2. On the virtual-time loop the timing is
    exact: no scheduling hiccup can move the truncate point."""
    data = PERSONA.model_dump()
    data["candidate"]["answers"][1] = {"text": data["candidate"]["answers"][1], "barge_in_s": 1.0}
    data["interviewer"]["tool_calls"][0]["after_answers"] = 3
    persona = Persona.model_validate(data)
    result, stats, _ = run(tmp_path_factory.mktemp("barge"), persona=persona, jobs={"assessment": instant_assessment})
    return result, stats, trace_of(result)


def test_barge_in_end_to_end(barge_in_session):
    result, stats, lines = barge_in_session
    assert result.ok and stats.collisions == 0
    truncates = [e for e in sent_events(lines) if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1 and stats.truncations == [truncates[0]["audio_end_ms"]]
    assert 900 <= truncates[0]["audio_end_ms"] <= 1100  # ~1 s heard (plus the network's share)
    assert len([line for line in lines if line.get("out", {}).get("effect") == "StopPlayback"]) == 1
    assert "*(interrupted after 1." in (result.folder / "transcript.md").read_text() or \
        "*(interrupted after 0.9" in (result.folder / "transcript.md").read_text()
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
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 1e-6, "two responses' audio overlapped"
    # The last three responses (ack, summary, goodbye) follow each other with gaps of network and
    # model cost only (the simulator's 0.2-0.6 s to first audio), not a wait for the previous audio.
    gaps = [round(start - end, 2) for (_, end), (start, _) in zip(spans[-3:], spans[-2:], strict=False)]
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


# Over a real WebSocket on 127.0.0.1 ---------------------------------------------------------------


def test_clean_interview_over_a_real_socket(tmp_path):
    async def main():
        async with simulator(seed=1, speed=60) as sim:
            session = Session(FLOW, Endpoint(sim.url, api_key=SECRET, simulated=True), out=tmp_path, speed=60,
                              view=Watch(), jobs={"assessment": instant_assessment})
            return await asyncio.wait_for(session.run(), 60)

    result = asyncio.run(main())
    assert result.ok and result.state == "done", result.reason
    assert not result.failures
    outputs_agree(result.folder, outcome="completed")
    assert fired_path(trace_of(result))[-4:] == ["ack", "summary", "goodbye", "done"]


def test_endpoint_choice_and_the_key_never_shows():
    assert choose_endpoint(None, "gpt-realtime", env={}).kind == "simulator"
    live = choose_endpoint(None, "gpt-realtime", env={"OPENAI_API_KEY": "sk-secret-123"})
    assert live.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime" and live.kind == "openai"
    assert "sk-secret-123" not in repr(live)
    assert choose_endpoint("ws://127.0.0.1:9/v1/realtime", "m", env={}).kind == "custom"


def test_a_session_with_no_turns_writes_every_output(tmp_path):
    """Connection refused: nothing was said, and still report.md and the rest are written."""
    endpoint = Endpoint("ws://127.0.0.1:9/v1/realtime", api_key="sk-secret-456")
    session = Session(FLOW, endpoint, out=tmp_path, view=Watch(), jobs={})
    result = asyncio.run(session.run())
    assert not result.ok and result.outcome == "not_completed" and exit_code(result) == 1
    assert result.reason.startswith("cannot connect to ws://127.0.0.1:9/v1/realtime")
    report = outputs_agree(result.folder, outcome="not_completed")
    assert report["turns"] == [] and "*(no turns)*" in (result.folder / "report.md").read_text()
    for path in result.folder.iterdir():
        assert "sk-secret-456" not in path.read_text()


def test_a_flow_that_ends_before_the_first_turn_writes_every_output(tmp_path):
    from helpers import flow_from

    flow = flow_from("""
name: closed-today
initial: waiting
states:
  waiting:
    after:
      - {delay: 10ms, target: done}
  done:
    final: true
""")
    result, _, _ = run(tmp_path, flow=flow, jobs={})
    assert result.state == "done" and result.ok, result.reason
    report = outputs_agree(result.folder)
    assert report["turns"] == [] and report["counts"]["responses"] == 0
    assert "*(no turns)*" in (result.folder / "transcript.md").read_text()


def test_sessions_run_on_uvloop_where_it_is_installed():
    """`engine run`, `chat` and `serve` run their sessions through engine.eventloop: the loop
    the benchmarks measure (benchmarks/RESULTS.md, sessions per process) is the loop shipped."""
    from engine import eventloop

    async def loop_kind() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_kind()).startswith("uvloop")
