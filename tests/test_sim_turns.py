"""The simulator's turn-taking: turn detection knobs (server_vad, semantic_vad), transcription delay,
idle timeout, real audio from a client, typed answers, and `handle()` on a virtual-time loop.

Every test is bounded (test_simulator.TIMEOUT); nothing sleeps to wait for something that has an event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_simulator import ENGINE_SESSION, SHORT_ANSWERS, Client, aio, ask, session, short_persona, types

from engine.sim import vad as vadmod
from engine.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.vloop import VirtualLoop  # noqa: E402

TRANSCRIBED = "conversation.item.input_audio_transcription.completed"


def with_vad(**turn_detection: Any) -> dict[str, Any]:
    """ENGINE_SESSION with another turn_detection."""
    audio = {**ENGINE_SESSION["audio"], "input": {**ENGINE_SESSION["audio"]["input"], "turn_detection": turn_detection}}
    return {**ENGINE_SESSION, "audio": audio}


async def answer_turns(client: Client, count: int) -> list[dict[str, Any]]:
    """Events until `count` user items were committed and transcribed."""
    got: list[dict[str, Any]] = []
    while sum(e["type"] == TRANSCRIBED for e in got) < count:
        got.append(await client.recv())
    return got


# ---------------------------------------------------------------------------------------------------
# server_vad


@aio
async def test_silence_duration_and_prefix_padding_shape_the_turn() -> None:
    persona = short_persona({"answers": ["one two three four five six"], "words_per_minute": 60})
    update = with_vad(type="server_vad", create_response=False, silence_duration_ms=1200, prefix_padding_ms=200)
    async with session(update=update, persona=persona) as (sim, client):
        assert client.events[-1]["session"]["audio"]["input"]["turn_detection"] == {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 200, "silence_duration_ms": 1200,
            "idle_timeout_ms": None, "create_response": False, "interrupt_response": True,
        }  # fmt: skip
        events = await ask(client)
        answer = await answer_turns(client, 1)
    done = events[-1]["response"]
    started = next(e for e in answer if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in answer if e["type"] == "input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] - started["audio_start_ms"] == pytest.approx(6000 + 200 + 1200, abs=2)
    assert done["status"] == "completed"


@aio
async def test_a_pause_longer_than_the_silence_duration_is_a_false_turn_end() -> None:
    hesitant = {"text": "I think that my favourite food is pasta", "pauses": [{"after_words": 4, "seconds": 0.8}]}
    for silence_ms, turns in ((500, ["I think that my", "favourite food is pasta"]), (1000, [hesitant["text"]])):
        persona = short_persona({"answers": [hesitant]})
        update = with_vad(type="server_vad", create_response=False, silence_duration_ms=silence_ms)
        async with session(update=update, persona=persona) as (sim, client):
            await ask(client)
            got = await answer_turns(client, len(turns))
        assert [e["transcript"] for e in got if e["type"] == TRANSCRIBED] == turns, silence_ms
        assert types(got).count("input_audio_buffer.committed") == len(turns)


@aio
async def test_interrupt_response_false_lets_the_question_finish() -> None:
    persona = short_persona({"answers": [{"text": SHORT_ANSWERS[0], "barge_in_s": 0.3}]})
    update = with_vad(type="server_vad", create_response=False, interrupt_response=False)
    async with session(update=update, persona=persona, speed=50) as (sim, client):
        await client.send("response.create")
        events = await answer_turns(client, 1)
    kinds = types(events)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")  # talked over it
    assert next(e for e in events if e["type"] == "response.done")["response"]["status"] == "completed"


@aio
async def test_idle_timeout_triggers_a_commit_and_a_response_that_checks_in() -> None:
    persona = short_persona({"answers": [{"silence": True}, SHORT_ANSWERS[1]]})
    update = with_vad(type="server_vad", create_response=True, idle_timeout_ms=6000)
    async with session(update=update, persona=persona) as (sim, client):
        question = await ask(client)
        got = await client.until("input_audio_buffer.timeout_triggered")
        assert not any(e["type"].startswith("input_audio_buffer.speech") for e in got)
        triggered = got[-1]
        assert triggered["audio_end_ms"] - triggered["audio_start_ms"] == 6000
        after = await client.until("response.done")
        answer = await answer_turns(client, 1)
    assert types(after)[:4] == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                                "response.created"]  # fmt: skip
    assert after[0]["item_id"] == triggered["item_id"]
    spoken = after[-1]["response"]["output"][0]["content"][0]["transcript"]
    first = question[-1]["response"]["output"][0]["content"][0]["transcript"]
    assert spoken.startswith("Are you still with me? Let me repeat the question.") and first.endswith(
        spoken.split("question. ")[1])
    assert [e["transcript"] for e in answer if e["type"] == TRANSCRIBED] == [SHORT_ANSWERS[1]]


# ---------------------------------------------------------------------------------------------------
# semantic_vad


def test_eagerness_orders_turn_end_delay_and_false_turn_ends() -> None:
    """Over many seeded answers, each with ten 1 s pauses: the more eager, the sooner a turn ends
    after the last word and the more often a pause is taken for the end of the turn."""
    text = " ".join(f"w{i}" for i in range(40))
    pauses = {4 * k: 1.0 for k in range(1, 11)}
    results = {}
    for eagerness in ("low", "medium", "high"):
        vad = vadmod.TurnDetection(kind="semantic_vad", eagerness=eagerness)
        splits, delays = [], []
        for seed in range(200):
            segments = vadmod.plan(text, 0.0, 120, pauses, vad, random.Random(seed))
            splits.append(len(segments) - 1)
            delays.append(segments[-1].detected - segments[-1].end)
        results[eagerness] = (sum(splits) / len(splits), sum(delays) / len(delays))
    (low_splits, low_delay), (mid_splits, mid_delay), (high_splits, high_delay) = (
        results["low"], results["medium"], results["high"])
    assert low_splits < mid_splits < high_splits and low_splits < 1.5 and high_splits > 5
    assert low_delay > mid_delay > high_delay
    auto = vadmod.TurnDetection(kind="semantic_vad", eagerness="auto")
    assert auto.semantic == vadmod.SEMANTIC["medium"]
    # Longer than the maximum wait (2 s for high): always the end of the turn.
    always = vadmod.plan("a b c d", 0.0, 120, {2: 2.5}, vadmod.TurnDetection(kind="semantic_vad", eagerness="high"),
                         random.Random(1))
    assert [s.text for s in always] == ["a b", "c d"]


@aio
async def test_semantic_vad_session_splits_a_long_pause_when_eager() -> None:
    hesitant = {"text": "My name is Alex and I like cycling", "pauses": [{"after_words": 3, "seconds": 2.5}]}
    for eagerness, count in (("high", 2), ("low", 1)):
        persona = short_persona({"answers": [hesitant]})
        update = with_vad(type="semantic_vad", eagerness=eagerness, create_response=False)
        async with session(update=update, persona=persona, seed=2) as (sim, client):
            detection = client.events[-1]["session"]["audio"]["input"]["turn_detection"]
            assert detection == {"type": "semantic_vad", "eagerness": eagerness, "create_response": False,
                                 "interrupt_response": True}  # fmt: skip
            await ask(client)
            got = await answer_turns(client, count)
        assert types(got).count("input_audio_buffer.committed") == count, eagerness


@aio
async def test_turn_detection_is_checked_like_the_api_does() -> None:
    async with session(update=None) as (sim, client):
        for detection, param in [
            ({"type": "smart_vad"}, "session.audio.input.turn_detection.type"),
            ({"type": "semantic_vad", "eagerness": "eager"}, "session.audio.input.turn_detection.eagerness"),
            ({"type": "semantic_vad", "silence_duration_ms": 500}, "session.audio.input.turn_detection.silence_duration_ms"),
            ({"type": "server_vad", "threshold": 2}, "session.audio.input.turn_detection.threshold"),
            ({"type": "server_vad", "create_response": "no"}, "session.audio.input.turn_detection.create_response"),
        ]:
            sent = await client.send("session.update", session=with_vad(**detection))
            error = (await client.until("error"))[-1]["error"]
            assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", param, sent)
        await client.send("session.update", session=with_vad(type="server_vad", silence_duration_ms=900))
        updated = (await client.until("session.updated"))[-1]
        await client.send("session.update", session=with_vad(type="semantic_vad"))
        replaced = (await client.until("session.updated"))[-1]
    assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 900
    # Replaced, not merged: server_vad's knobs are gone.
    assert replaced["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}


# ---------------------------------------------------------------------------------------------------
# Transcription


@aio
async def test_the_transcript_comes_after_its_delay_and_the_reply_does_not_wait_for_it() -> None:
    persona = short_persona({"answers": [SHORT_ANSWERS[0]], "transcription_delay_s": 3.0})
    async with session(persona=persona) as (sim, client):
        await ask(client)
        got = await client.until("input_audio_buffer.committed")
        await client.send("response.create", response={"instructions": 'Say "Thanks, and what else do you do?"'})
        later = await client.until(TRANSCRIBED)
    kinds = types(later)
    # The reply starts on the commit; the transcript, 3 s later, lands while it is being spoken.
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta") < kinds.index(TRANSCRIBED)
    assert later[-1]["item_id"] == got[-1]["item_id"] and later[-1]["transcript"] == SHORT_ANSWERS[0]


@aio
async def test_transcripts_never_or_failed_per_turn_or_for_the_candidate() -> None:
    answers: list[Any] = [{"text": SHORT_ANSWERS[0], "transcript": "never"},
                          {"text": SHORT_ANSWERS[1], "transcript": "failed"},
                          {"text": SHORT_ANSWERS[2], "transcript": "I want a new shop soon."}]  # fmt: skip
    async with session(persona=short_persona({"answers": answers})) as (sim, client):
        for _ in range(3):
            await ask(client)
            await client.until("input_audio_buffer.committed")
        await client.until(TRANSCRIBED)
        await client.probe()
        seen = client.events
    assert types(seen).count("conversation.item.input_audio_transcription.failed") == 1
    assert [e["transcript"] for e in seen if e["type"] == TRANSCRIBED] == ["I want a new shop soon."]
    persona = short_persona({"transcription_delay_s": "never"})
    async with session(persona=persona) as (sim, client):
        await ask(client)
        await client.until("input_audio_buffer.committed")
        await ask(client, instructions='Say "Thanks."')  # 0.3-1.5 s later than any default delay
        await client.probe()
    assert TRANSCRIBED not in types(client.events)


# ---------------------------------------------------------------------------------------------------
# The candidate's other behaviours


@aio
async def test_speaks_over_the_goodbye_and_hangs_up() -> None:
    persona = short_persona({"answers": [{"leave": "hang_up"}],
                             "speaks_over": [{"during": "goodbye", "after_s": 0.2, "text": "Wait, one more thing"}]})
    async with session(persona=persona) as (sim, client):
        events = await ask(client, instructions='Say "Goodbye, and good luck!"')
        over = await answer_turns(client, 1)
        assert over[-1]["transcript"] == "Wait, one more thing"
        # It starts during the goodbye, which the server's turn detection then cancels.
        assert "input_audio_buffer.speech_started" in types(events)
        assert events[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        await ask(client, instructions="Ask the next question.")
        with pytest.raises(Exception) as info:
            while True:
                await client.recv()
    assert events[0]["type"] == "response.created"
    closed = info.value
    assert getattr(closed, "rcvd", None) is not None and closed.rcvd.code == 1000  # type: ignore[attr-defined]
    assert closed.rcvd.reason == "the candidate hung up"  # type: ignore[attr-defined]
    assert sim.stats.endings == ["the candidate hung up"]


@aio
async def test_scripted_responses_refuse_and_fail() -> None:
    responses = [{"response": 1, "say": "Sorry, I can't help with that.", "skip_tools": True},
                 {"response": 2, "fail": "server_error"}]  # fmt: skip
    async with session(persona=short_persona(interviewer={"responses": responses})) as (sim, client):
        refused = await ask(client, tool_choice="required")
        failed = await ask(client)
        normal = await ask(client)
    assert [o["type"] for o in refused[-1]["response"]["output"]] == ["message"]
    assert refused[-1]["response"]["output"][0]["content"][0]["transcript"] == "Sorry, I can't help with that."
    done = failed[-1]["response"]
    assert types(failed) == ["response.created", "response.done"] and done["status"] == "failed"
    assert done["status_details"]["error"]["type"] == "server_error"
    assert normal[-1]["response"]["output"][0]["content"][0]["transcript"].endswith("about yourself?")


# ---------------------------------------------------------------------------------------------------
# Real audio and typed answers: no scripted candidate


def tone(seconds: float, dbfs: float = -20.0) -> bytes:
    t = np.arange(int(seconds * 24_000)) / 24_000
    return np.round(32767 * 10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def quiet(seconds: float) -> bytes:
    return np.random.default_rng(0).normal(0, 30, int(seconds * 24_000)).astype("<i2").tobytes()  # ~ -60 dBFS


async def append(client: Client, pcm: bytes, chunk_ms: int = 100) -> None:
    step = chunk_ms * 48
    for i in range(0, len(pcm), step):
        await client.send("input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + step]).decode())


@aio
async def test_appended_audio_is_detected_as_speech_like_a_server_vad() -> None:
    persona = short_persona({"answers": ["Hello from the browser."]})
    update = with_vad(type="server_vad", create_response=False, silence_duration_ms=500, prefix_padding_ms=300)
    async with session(update=update, persona=persona, scripted_candidate=False) as (sim, client):
        await ask(client)  # a question: nobody scripted answers it
        assert not any(e["type"].startswith("input_audio_buffer") for e in await client.probe())
        await append(client, quiet(0.5) + tone(1.2) + quiet(1.0))
        first = await client.until(TRANSCRIBED)
        await append(client, tone(2.4) + quiet(0.8))
        second = await client.until(TRANSCRIBED)
    kinds = [k for k in types(first) if not k.startswith("response.")]
    assert kinds == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                     TRANSCRIBED]  # fmt: skip
    started, stopped = first[0], first[1]
    assert started["audio_start_ms"] == 500 - 300  # speech began at 0.5 s; 300 ms of prefix padding
    assert stopped["audio_end_ms"] == pytest.approx(500 + 1200 + 500, abs=20)
    assert first[-1]["transcript"] == "Hello from the browser."  # the scenario's answer
    assert second[-1]["transcript"] == "(2.4 s of speech)"  # answers ran out: a placeholder
    assert second[0]["audio_start_ms"] == pytest.approx(2700 - 300, abs=20)


@aio
async def test_a_manual_commit_without_turn_detection_is_transcribed() -> None:
    update = {**ENGINE_SESSION, "audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": None}}}
    async with session(update=update, scripted_candidate=False, persona=short_persona({"answers": []})) as (sim, client):
        await append(client, tone(0.6))
        await client.send("input_audio_buffer.commit")
        got = await client.until(TRANSCRIBED)
    assert types(got)[:3] == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert got[-1]["transcript"] == "(0.6 s of speech)"


@aio
async def test_a_typed_answer_counts_for_the_model_and_a_cue_calls_the_tool() -> None:
    tool_calls = [{"tool": "trigger_assessment", "cue": ["cooking"], "arguments": {"reason": "they cook"}}]
    persona = short_persona(interviewer={"tool_calls": tool_calls})
    async with session(persona=persona, scripted_candidate=False) as (sim, client):
        await ask(client)
        typed = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "I like music."}]}
        await client.send("conversation.item.create", item=typed)
        no_cue = await ask(client)
        cooking = {**typed, "content": [{"type": "input_text", "text": "And Cooking, a lot."}]}
        await client.send("conversation.item.create", item=cooking)
        cue = await ask(client)
    assert [o["type"] for o in no_cue[-1]["response"]["output"]] == ["message"]
    assert no_cue[-1]["response"]["output"][0]["content"][0]["transcript"] == persona.interviewer.questions[1]
    call = cue[-1]["response"]["output"][-1]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"reason": "they cook"}


# ---------------------------------------------------------------------------------------------------
# handle(): any connection with websockets' subset, on a virtual clock


class MemoryConnection:
    """The subset of websockets' ServerConnection that `Simulator.handle` may use, in memory."""

    def __init__(self) -> None:
        self.request = SimpleNamespace(path="/v1/realtime?model=gpt-realtime", headers={})
        self.transport = SimpleNamespace(abort=self._abort, pause_reading=lambda: None)
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.outgoing: asyncio.Queue[str] = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

    async def send(self, message: str | bytes, *, text: bool | None = None) -> None:
        assert self.closed is None
        self.outgoing.put_nowait(message if isinstance(message, str) else message.decode(errors="replace"))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.incoming.put_nowait(None)

    def _abort(self) -> None:
        self.closed = (1006, "")
        self.incoming.put_nowait(None)

    def __aiter__(self) -> MemoryConnection:
        return self

    async def __anext__(self) -> str:
        message = await self.incoming.get()
        if message is None:
            raise StopAsyncIteration
        return message


async def scripted_exchange(speed: float) -> tuple[list[str], float]:
    """A question and its answer over a MemoryConnection; the frames and the loop time it took."""
    loop = asyncio.get_running_loop()
    sim = Simulator(persona=short_persona(), speed=speed, seed=4)
    conn = MemoryConnection()
    served = asyncio.ensure_future(sim.handle(conn))
    t0 = loop.time()
    frames = [await conn.outgoing.get()]
    conn.incoming.put_nowait(json.dumps({"type": "session.update", "session": ENGINE_SESSION}))
    conn.incoming.put_nowait(json.dumps({"type": "response.create"}))
    while json.loads(frames[-1])["type"] != TRANSCRIBED:
        frames.append(await conn.outgoing.get())
    elapsed = loop.time() - t0
    await conn.close()
    await served
    return frames, elapsed


def test_handle_serves_a_memory_connection_on_a_virtual_clock() -> None:
    loop = VirtualLoop()
    try:
        began = time.monotonic()
        frames, elapsed = loop.run_until_complete(scripted_exchange(speed=1.0))
        wall = time.monotonic() - began
        again, _ = loop.run_until_complete(scripted_exchange(speed=1.0))
    finally:
        loop.close()
    kinds = [json.loads(f)["type"] for f in frames]
    assert kinds[:2] == ["session.created", "session.updated"] and "input_audio_buffer.committed" in kinds
    # At speed 1 the exchange takes its simulated length of virtual time: the question's audio, the
    # reaction, the answer (6 words at 120 wpm = 3 s), the turn end and the transcript delay.
    assert elapsed > 5.0 and wall < elapsed / 2
    assert frames == again  # byte for byte: deterministic for a seed, ids and audio included


@aio
async def test_without_turn_detection_the_scripted_candidate_still_commits_its_turn() -> None:
    update = {**ENGINE_SESSION, "audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": None}}}
    async with session(update=update, persona=short_persona()) as (sim, client):
        assert client.events[-1]["session"]["audio"]["input"]["turn_detection"] is None
        await ask(client)
        got = await client.until(TRANSCRIBED)
    assert [k for k in types(got) if k.startswith("input_audio_buffer")] == ["input_audio_buffer.committed"]
    assert got[-1]["transcript"] == SHORT_ANSWERS[0]
