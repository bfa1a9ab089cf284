"""The Realtime simulator over real loopback WebSockets: protocol order, the model, the candidate, faults.

Every test is bounded by `TIMEOUT`; nothing sleeps to wait for something that has an event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable

import pytest
from pydantic import Field, TypeAdapter, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from engine import tts
from engine.sim import server as servermod
from engine.sim.scenario import ACKNOWLEDGEMENT, CLOSING
from engine.simulator import Faults, Persona, Simulator, load_persona, run_forever, simulator

openai = pytest.importorskip("openai")
from openai.types.realtime import RealtimeServerEvent  # noqa: E402

ServerEvent = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])

TIMEOUT = 10.0  # seconds, per test
FAST = 200.0  # simulated seconds per real second

ROOT = Path(__file__).resolve().parent.parent
TOOL = {
    "type": "function",
    "name": "trigger_assessment",
    "description": "Start the assessment once enough answers are in.",
    "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]},
}
ENGINE_SESSION = {
    "type": "realtime",
    "instructions": "You are Sam, a friendly English examiner.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "create_response": False, "interrupt_response": True},
        },
        "output": {"voice": "marin"},
    },
    "tools": [TOOL],
}
HEAD = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
DONE_GROUP = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
]
DELTAS = {"response.output_audio.delta", "response.output_audio_transcript.delta"}
ANSWER = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.completed",
]


def aio(fn: Callable[..., Any]) -> Callable[..., None]:
    """Run an async test in a fresh event loop, bounded by TIMEOUT."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(TIMEOUT):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return run


class Client:
    """A raw WebSocket client that logs every frame and stamps every event with an event_id."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.frames: list[str] = []  # every frame received, raw
        self.events: list[dict[str, Any]] = []  # the JSON objects among them
        self._sent = 0

    async def send(self, kind: str, **fields: Any) -> str:
        self._sent += 1
        event_id = f"evt_client_{self._sent}"
        await self.ws.send(json.dumps({"type": kind, "event_id": event_id, **fields}))
        return event_id

    async def recv(self) -> dict[str, Any]:
        """The next JSON object event (frames that are not are only logged)."""
        while True:
            frame = await self.ws.recv()
            self.frames.append(frame)
            try:
                event = json.loads(frame)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                return event

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Events up to and including the first of type `kind`."""
        got = [await self.recv()]
        while got[-1]["type"] != kind:
            got.append(await self.recv())
        return got

    async def probe(self) -> list[dict[str, Any]]:
        """Events up to a reply that proves the server handled everything sent before (a refused cancel)."""
        event_id = await self.send("response.cancel")
        got = await self.until("error")
        assert got[-1]["error"]["event_id"] == event_id and got[-1]["error"]["code"] == "response_cancel_not_active"
        return got[:-1]


@contextlib.asynccontextmanager
async def session(
    update: dict[str, Any] | None = ENGINE_SESSION, **options: Any
) -> AsyncIterator[tuple[Simulator, Client]]:
    """A started simulator and one connected client; the session is updated like the engine does."""
    options.setdefault("speed", FAST)
    async with simulator(**options) as sim, connect(sim.url + "?model=gpt-realtime", max_queue=None) as ws:  # never stops reading: a close is never stuck behind unread frames
        client = Client(ws)
        assert (await client.recv())["type"] == "session.created"
        if update is not None:
            await client.send("session.update", session=update)
            await client.until("session.updated")
        yield sim, client


async def ask(client: Client, **response: Any) -> list[dict[str, Any]]:
    """Send response.create and return the events up to its response.done."""
    await client.send("response.create", response=response)
    created = (await client.until("response.created"))[-1]
    got = [created]
    while not (got[-1]["type"] == "response.done" and got[-1]["response"]["id"] == created["response"]["id"]):
        got.append(await client.recv())
    return got


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def of(response_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("response_id") == response_id or (e.get("response") or {}).get("id") == response_id]


SHORT_ANSWERS = ["I like cycling and cooking.", "Lisbon, because it is sunny.", "I want a new job soon."]


def short_persona(candidate: dict[str, Any] | None = None, interviewer: dict[str, Any] | None = None) -> Persona:
    """The default persona with short answers, so multi-turn tests stay fast; `candidate` and
    `interviewer` change fields of those parts."""
    data = load_persona().model_dump()
    data["candidate"]["answers"] = list(SHORT_ANSWERS)
    data["candidate"].update(candidate or {})
    data["interviewer"].update(interviewer or {})
    return Persona.model_validate(data)


def answers_of(persona: Persona) -> list[str]:
    return [a if isinstance(a, str) else a.text or "" for a in persona.candidate.answers]


# ---------------------------------------------------------------------------------------------------
# The happy path


@aio
async def test_question_turn_in_ga_order_then_the_candidate_answers() -> None:
    async with session(speed=100) as (sim, client):
        assert client.events[-1]["session"]["audio"]["input"]["turn_detection"]["create_response"] is False
        assert client.events[-1]["session"]["tools"] == [TOOL]
        metadata = {"engine_request": "r1", "state": "ask"}
        events = await ask(client, metadata=metadata)

        kinds = types(events)
        assert kinds[:5] == HEAD
        assert kinds[-6:] == [*DONE_GROUP, "conversation.item.done", "response.done"]
        middle = kinds[5:-6]
        assert set(middle) == DELTAS and middle[0] == "response.output_audio_transcript.delta"
        assert "response.output_audio_transcript.delta" in middle[middle.index("response.output_audio.delta") :]

        created, done = events[0]["response"], events[-1]["response"]
        rid, item_id = created["id"], events[2]["item"]["id"]
        assert rid.startswith("resp_") and created["status"] == "in_progress"
        assert created["metadata"] == done["metadata"] == metadata
        assert all(e["response_id"] == rid for e in events[2:-1] if "response_id" in e)
        assert all(e.get("item_id", e.get("item", {}).get("id")) == item_id for e in events[2:-1])
        assert len({e["event_id"] for e in client.events}) == len(client.events)

        text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
        question = sim.persona.interviewer.questions[0]
        assert text == f"Hello, I'm Sam. {question}"  # the session's instructions name the interviewer
        assert next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"] == text
        assert done["status"] == "completed" and done["output"][0]["content"] == [{"type": "output_audio", "transcript": text}]
        audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
        expected_ms = len(text.split()) * 60_000 / sim.persona.interviewer.words_per_minute
        assert abs(len(audio) - 48 * expected_ms) <= 48
        chunks = [len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta"]
        assert all(40 * 48 <= n <= 100 * 48 for n in chunks[:-1])

        answer = await client.until("conversation.item.input_audio_transcription.completed")
        assert [k for k in types(answer) if k in ANSWER] == ANSWER
        started, stopped = answer[0], next(e for e in answer if e["type"] == "input_audio_buffer.speech_stopped")
        first = answers_of(sim.persona)[0]
        assert answer[-1]["transcript"] == first and answer[-1]["item_id"] == started["item_id"]
        # audio_start_ms includes the prefix padding (300 ms), audio_end_ms the silence that ended the turn (500 ms).
        speaking_ms = len(first.split()) * 60_000 / sim.persona.candidate.words_per_minute
        assert stopped["audio_end_ms"] - started["audio_start_ms"] == pytest.approx(speaking_ms + 300 + 500, abs=2)
        user = next(e for e in answer if e["type"] == "conversation.item.added")["item"]
        assert user["role"] == "user" and user["content"][0]["type"] == "input_audio"


@aio
async def test_interview_reaches_the_tool_call_and_refuses_a_second_create() -> None:
    persona = short_persona(interviewer={"tool_calls": [{"after_answers": 2, "say": CLOSING}]})
    async with session(persona=persona) as (sim, client):
        for number in range(2):
            events = await ask(client, metadata={"engine_request": f"q{number}"})
            assert events[-1]["response"]["output"][0]["content"][0]["transcript"].endswith(
                persona.interviewer.questions[number]
            )
            answer = await client.until("conversation.item.input_audio_transcription.completed")
            assert answer[-1]["transcript"] == SHORT_ANSWERS[number]

        # After the scenario's two answers: its closing line and the tool call, in one response.
        await client.send("response.create", response={"metadata": {"engine_request": "r3"}})
        second = await client.send("response.create", response={"metadata": {"engine_request": "r4"}})
        events = await client.until("response.done")
        rid = next(e for e in events if e["type"] == "response.created")["response"]["id"]
        error = next(e for e in events if e["type"] == "error")
        assert error == {
            "type": "error",
            "event_id": error["event_id"],
            "error": {
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "message": f"Conversation already has an active response in progress: {rid}. "
                "Wait until the response is finished before creating a new one.",
                "param": None,
                "event_id": second,
            },
        }
        assert sim.stats.collisions == 1 and sim.stats.injected_collisions == 0
        kinds = types(events)
        assert kinds.count("response.created") == 1
        call_part = kinds[kinds.index("conversation.item.done") + 1 :]
        assert call_part == [
            "response.output_item.added",
            "conversation.item.added",
            *["response.function_call_arguments.delta"] * call_part.count("response.function_call_arguments.delta"),
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        message, call = events[-1]["response"]["output"]
        assert message["content"][0]["transcript"] == CLOSING
        assert call["type"] == "function_call" and call["name"] == "trigger_assessment"
        assert json.loads(call["arguments"]) == {"reason": "simulated reason"}  # from the tool's JSON Schema
        assert sim.stats.calls == [("trigger_assessment", {"reason": "simulated reason"})]
        args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert (args_done["call_id"], args_done["name"], args_done["arguments"]) == (call["call_id"], call["name"], call["arguments"])
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
        assert deltas == call["arguments"]
        assert len({e["response"]["id"] for e in events if e["type"] == "response.done"}) == 1
        assert types(await client.probe()) == []  # nothing ever answers the refused create

        output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"ok": true}'}
        await client.send("conversation.item.create", item=output)
        added, done = await client.until("conversation.item.done")
        assert added["type"] == "conversation.item.added" and added["item"]["call_id"] == call["call_id"]
        bad = await client.send("conversation.item.create", item={**output, "call_id": "call_nope"})
        error = (await client.until("error"))[-1]["error"]
        assert error["event_id"] == bad and error["param"] == "item.call_id"

        # Right after the tool's output a response without instructions acknowledges it (what the Agents
        # SDK sends); the one after goes on with the questions, and the tool is not called again.
        events = await ask(client)
        assert [o["type"] for o in events[-1]["response"]["output"]] == ["message"]
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == ACKNOWLEDGEMENT
        events = await ask(client)
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == persona.interviewer.questions[2]
        assert (await client.until("conversation.item.input_audio_transcription.completed"))[-1]["transcript"] == SHORT_ANSWERS[2]
        assert len(sim.stats.calls) == 1


@aio
async def test_questions_run_out_into_a_closing_line() -> None:
    persona = short_persona(interviewer={"name": "Kim", "questions": ["Where do you live?"], "closing": "That's all."})
    update = {**ENGINE_SESSION, "instructions": "Be kind.", "tools": []}  # no name in the instructions
    async with session(update=update, persona=persona) as (sim, client):
        events = await ask(client)
        spoken = events[-1]["response"]["output"][0]["content"][0]["transcript"]
        assert spoken == "Hello, I'm Kim. Where do you live?"  # the scenario's name, then its question
        await client.until("conversation.item.input_audio_transcription.completed")
        events = await ask(client)  # no questions left and no tool declared: just the closing line
        assert [o["type"] for o in events[-1]["response"]["output"]] == ["message"]
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "That's all."
        assert not any(e["type"].startswith("input_audio_buffer") for e in await client.probe())


@aio
async def test_instructions_decide_what_is_said() -> None:
    async with session() as (sim, client):
        quoted = 'Tell the candidate, in your own words: "You did well." Then add "Goodbye!"'
        events = await ask(client, instructions=quoted, metadata={"engine_request": "r1"})
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "You did well. Goodbye!"
        events = await ask(client, instructions="Please wait a moment.")  # never read aloud
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "One moment, please."
        later = await client.probe()
        assert not any(e["type"].startswith("input_audio_buffer") for e in later)  # no answer to statements


# ---------------------------------------------------------------------------------------------------
# Compatibility with the SDK


@aio
async def test_every_event_validates_with_the_sdk_types() -> None:
    faults = "shuffle_done,drop_transcript_done,duplicate,slow_done=0.5,collision=2,rate_limit=4"
    answers: list[Any] = [SHORT_ANSWERS[0], {"text": SHORT_ANSWERS[1], "barge_in_s": 0.3}, SHORT_ANSWERS[2]]
    persona = short_persona({"answers": answers}, {"tool_calls": [{"after_answers": 2, "say": CLOSING}]})
    async with session(persona=persona, faults=faults, seed=3) as (sim, client):
        await ask(client, metadata={"engine_request": "r1"})
        await client.until("conversation.item.input_audio_transcription.completed")
        await client.send("response.create")  # the collision fault: the model's own response, then an error
        await client.until("error")
        await client.until("response.done")
        events = await ask(client)  # question 2: the candidate barges in
        await client.until("conversation.item.input_audio_transcription.completed")
        message = next(e for e in events if e["type"] == "conversation.item.added")["item"]["id"]
        await client.send("conversation.item.truncate", item_id=message, content_index=0, audio_end_ms=100)
        await client.until("conversation.item.truncated")
        await client.send("response.create")  # the rate_limit fault
        await client.until("response.done")
        events = await ask(client)  # closing line + tool call
        call = events[-1]["response"]["output"][-1]
        await client.send("conversation.item.create", item={"type": "function_call_output", "call_id": call["call_id"], "output": "{}"})
        await client.send("response.create")
        await client.send("response.cancel")
        await client.until("response.done")
        await client.send("input_audio_buffer.append", audio=base64.b64encode(bytes(9600)).decode())
        await client.send("input_audio_buffer.commit")
        await client.send("input_audio_buffer.clear")
        await client.send("conversation.item.retrieve", item_id=message)
        await client.until("conversation.item.retrieved")
        await client.probe()

    seen = set()
    for event in client.events:
        ServerEvent.validate_python(event)
        seen.add(event["type"])
    assert {"error", "conversation.item.truncated", "input_audio_buffer.cleared", "response.function_call_arguments.done"} <= seen
    statuses = {e["response"]["status"] for e in client.events if e["type"] == "response.done"}
    assert statuses == {"completed", "cancelled", "failed"}


@aio
async def test_the_openai_sdk_drives_a_session() -> None:
    async with simulator(speed=FAST) as sim:
        client = openai.AsyncOpenAI(api_key="sk-test", websocket_base_url=sim.url.removesuffix("/realtime"))
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
            await conn.response.create(response={"metadata": {"engine_request": "r1"}})
            seen = []
            async for event in conn:
                seen.append(event.type)
                if event.type == "response.done":
                    assert event.response.status == "completed"
                    assert event.response.metadata == {"engine_request": "r1"}
                    break
    assert seen[:3] == ["session.created", "session.updated", "response.created"]
    assert "response.output_audio.delta" in seen and sim.stats.sessions == 1


@aio
async def test_default_vad_answers_the_user_itself_like_the_real_server() -> None:
    """Without create_response: false the server starts its own response after the answer, and the
    engine's response.create then collides: the simulator shows the trap instead of hiding it."""
    # slow_done keeps the server's own response active long enough for our create to meet it.
    async with session(update=None, persona=short_persona(), faults="slow_done=100", speed=50) as (sim, client):
        await ask(client)
        events = await client.until("response.created")
        assert events[-1]["response"]["metadata"] is None
        assert "conversation.item.input_audio_transcription.completed" not in types(events)  # transcription is off
        await client.send("response.create")
        assert (await client.until("error"))[-1]["error"]["code"] == "conversation_already_has_active_response"
        assert sim.stats.collisions == 1


# ---------------------------------------------------------------------------------------------------
# The client's mistakes and control events


@aio
async def test_cancel_ends_the_response_and_a_second_cancel_is_refused() -> None:
    # The cancel must land mid-stream whatever the machine's load: the audio takes ~300 ms to send.
    async with session(speed=5) as (sim, client):
        await client.send("response.create", response={"metadata": {"engine_request": "r1"}})
        await client.until("response.output_audio.delta")
        await client.send("response.cancel")
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "cancelled" and done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["metadata"] == {"engine_request": "r1"}
        assert [k for k in types(events) if k.endswith(".done")] == [*DONE_GROUP, "conversation.item.done", "response.done"]
        heard = "".join(e.get("delta", "") for e in client.events if e["type"] == "response.output_audio_transcript.delta")
        item = done["output"][0]
        assert item["status"] == "incomplete" and item["content"][0]["transcript"] == heard
        cancel = await client.send("response.cancel")
        error = (await client.until("error"))[-1]["error"]
        assert (error["code"], error["event_id"]) == ("response_cancel_not_active", cancel)
        assert error["message"] == "Cancellation failed: no active response found"


@aio
async def test_truncate_checks_the_item_and_clamps_like_the_real_server() -> None:
    async with session() as (sim, client):
        events = await ask(client)
        item = events[2]["item"]["id"]
        audio_ms = sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta") // 48
        too_long = await client.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=audio_ms + 85)
        error = (await client.until("error"))[-1]["error"]
        assert error["event_id"] == too_long
        assert error["message"] == f"Audio content of {audio_ms}ms is already shorter than {audio_ms + 85}ms"
        await client.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=1200)
        truncated = (await client.until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (item, 0, 1200)
        await client.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=1300)
        assert (await client.until("error"))[-1]["error"]["message"] == "Audio content of 1200ms is already shorter than 1300ms"

        answer = await client.until("conversation.item.input_audio_transcription.completed")
        user = answer[-1]["item_id"]
        await client.send("conversation.item.truncate", item_id=user, content_index=0, audio_end_ms=0)
        error = (await client.until("error"))[-1]["error"]
        assert (error["code"], error["message"]) == ("unsupported_content_type", "Only model output audio messages can be truncated")
        await client.send("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0)
        assert (await client.until("error"))[-1]["error"]["code"] == "item_not_found"
        assert sim.stats.truncations == [audio_ms + 85, 1200, 1300, 0, 0]


@aio
async def test_bad_client_events_get_real_errors_with_the_event_id() -> None:
    async with session(update=None) as (sim, client):
        unknown = await client.send("response.creat")
        error = (await client.until("error"))[-1]["error"]
        assert (error["type"], error["code"], error["param"], error["event_id"]) == ("invalid_request_error", "invalid_value", "type", unknown)
        assert error["message"].startswith("Invalid value: 'response.creat'. Supported values are: 'session.update'")
        await client.ws.send("{nope")
        assert (await client.until("error"))[-1]["error"]["code"] == "invalid_json"
        beta = await client.send("session.update", session={"type": "realtime", "modalities": ["audio", "text"]})
        error = (await client.until("error"))[-1]["error"]
        assert (error["code"], error["message"], error["event_id"]) == ("unknown_parameter", "Unknown parameter: 'session.modalities'.", beta)
        await client.send("session.update", session={"instructions": "hi"})
        error = (await client.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "session.type")
        await client.send("input_audio_buffer.commit")
        assert (await client.until("error"))[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
        assert sim.stats.client_events["<invalid>"] == 1 and sim.stats.client_events["response.creat"] == 1
        assert sim.stats.errors_sent == ["invalid_value", "invalid_json", "unknown_parameter", "missing_required_parameter", "input_audio_buffer_commit_empty"]


@aio
async def test_only_the_realtime_path_is_served() -> None:
    async with simulator() as sim:
        with pytest.raises(InvalidStatus) as info:
            async with connect(sim.url.replace("/v1/realtime", "/v1/other")):
                pass
        assert info.value.response.status_code == 404
        headers = {"Authorization": "Bearer sk-test", "OpenAI-Beta": "realtime=v1"}
        async with connect(sim.url + "?model=x", additional_headers=headers) as ws:
            error = json.loads(await ws.recv())
            assert error["error"]["code"] == "beta_api_shape_disabled"
            with pytest.raises(ConnectionClosed):
                await ws.recv()


@aio
async def test_barge_in_cancels_the_question_with_turn_detected() -> None:
    persona = short_persona({"answers": [{"text": SHORT_ANSWERS[0], "barge_in_s": 0.5}]})
    async with session(persona=persona, speed=50) as (sim, client):
        await client.send("response.create", response={"metadata": {"engine_request": "r1"}})
        events = await client.until("conversation.item.input_audio_transcription.completed")
        kinds = types(events)
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
        done = next(e for e in events if e["type"] == "response.done")["response"]
        assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
        assert "response.output_audio.done" in kinds and "response.output_item.done" in kinds  # done events still sent
        assert events[-1]["transcript"] == SHORT_ANSWERS[0]


# ---------------------------------------------------------------------------------------------------
# Faults, one test each


async def statements(client: Client, count: int) -> list[dict[str, Any]]:
    """`count` short spoken responses (no candidate answers), each awaited to its response.done."""
    for number in range(count):
        await ask(client, instructions=f'Say "Statement number {number}."')
    return client.events


@aio
async def test_fault_shuffle_done() -> None:
    async with session(faults="shuffle_done") as (sim, client):
        events = await statements(client, 8)
        await client.probe()
    orders, late = [], 0
    for rid in {e["response"]["id"] for e in events if e["type"] == "response.created"}:
        mine = types(of(rid, client.events))
        orders.append(tuple(k for k in mine if k in DONE_GROUP))
        late += mine.index("response.done") < mine.index("response.output_audio_transcript.done")
    assert any(order != tuple(DONE_GROUP) for order in orders)
    assert all(sorted(order) == sorted(DONE_GROUP) for order in orders)
    assert late > 0


@aio
async def test_fault_drop_transcript_done() -> None:
    async with session(faults="drop_transcript_done") as (sim, client):
        kinds = types(await statements(client, 3))
    assert "response.output_audio_transcript.done" not in kinds and kinds.count("response.content_part.done") == 3


@aio
async def test_fault_duplicate() -> None:
    async with session(faults="duplicate") as (sim, client):
        await statements(client, 4)
        await client.probe()
    ids = [e["event_id"] for e in client.events]
    twice = {i for i in ids if ids.count(i) == 2}
    dones = [e for e in client.events if e["type"] == "response.done"]
    assert len({e["event_id"] for e in dones}) == 4 and len(dones) == 6  # the 1st and 3rd came twice
    assert any(e["type"] != "response.done" for e in client.events if e["event_id"] in twice)
    assert all(client.frames[i] == client.frames[i + 1] for i, e in enumerate(client.events[:-1]) if e["event_id"] == client.events[i + 1]["event_id"])


@aio
async def test_fault_unknown_events() -> None:
    async with session(faults="unknown_events") as (sim, client):
        await statements(client, 3)
    unknown = [e for e in client.events if e["type"].startswith("sim.")]
    assert client.events[1]["type"].startswith("sim.") and len(unknown) >= 2
    for event in unknown:
        with pytest.raises(ValidationError):
            ServerEvent.validate_python(event)


@aio
async def test_fault_garbage() -> None:
    async with session(faults="garbage") as (sim, client):
        await statements(client, 3)
    bad = [f for f in client.frames if not isinstance(_json_or_none(f), dict)]
    assert client.frames[1] == bad[0] and len(bad) >= 2


def _json_or_none(frame: str) -> Any:
    try:
        return json.loads(frame)
    except ValueError:
        return None


@aio
async def test_fault_slow_done_keeps_the_response_active() -> None:
    async with session(faults="slow_done=2", speed=10) as (sim, client):  # a 200 ms window for our create
        await client.send("response.create", response={"instructions": 'Say "Hi."'})
        await client.until("conversation.item.done")
        began = time.monotonic()
        early = await client.send("response.create")  # still in progress while response.done waits
        events = await client.until("response.done")
        assert time.monotonic() - began >= 2 / 10 * 0.5
        error = next(e for e in events if e["type"] == "error")["error"]
        assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", early)
        assert sim.stats.collisions == 1


@aio
async def test_fault_collision() -> None:
    async with session(faults="collision=2") as (sim, client):
        await statements(client, 1)
        mine = await client.send("response.create", response={"metadata": {"engine_request": "r2"}})
        events = await client.until("response.done")
        await client.probe()
    assert types(events)[:2] == ["response.created", "error"]
    rid = events[0]["response"]["id"]
    assert events[0]["response"]["metadata"] is None and events[-1]["response"]["id"] == rid
    assert events[-1]["response"]["status"] == "completed"
    error = events[1]["error"]
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", mine)
    assert rid in error["message"]
    assert (sim.stats.collisions, sim.stats.injected_collisions, sim.stats.responses) == (0, 1, 2)


@aio
async def test_fault_disconnect_after() -> None:
    async with session(update=None, faults="disconnect_after=12") as (sim, client):
        await client.send("response.create")
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await client.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert len(client.frames) == 12 and sim.stats.events_sent == 12
    for event in client.events:
        ServerEvent.validate_python(event)


async def frames_until_closed(client: Client) -> ConnectionClosed:
    """Read until the connection ends; the exception that ended it."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.recv()
    return info.value


@aio
async def test_fault_close_after_is_a_normal_close() -> None:
    async with session(update=None, faults="close_after=12") as (sim, client):
        await client.send("response.create")
        closed = await frames_until_closed(client)
    assert isinstance(closed, ConnectionClosedOK)
    assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1000, "simulated normal close")
    assert len(client.frames) == 12 and sim.stats.endings == ["close_after"]


@aio
async def test_fault_abort_after_drops_the_connection_without_a_close_frame() -> None:
    async with session(update=None, faults="abort_after=12") as (sim, client):
        await client.send("response.create")
        closed = await frames_until_closed(client)
    assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None and closed.sent is None
    assert client.ws.close_code == 1006  # abnormal closure: no close frame either way
    assert len(client.frames) == 12 and sim.stats.endings == ["abort_after"]


@aio
async def test_fault_freeze_after_answers_nothing_so_keepalive_ends_it() -> None:
    async with simulator(speed=FAST, faults="freeze_after=2") as sim:
        # The client's own keepalive is what must end a frozen server: 0.2 s ping, 0.2 s to answer.
        async with connect(sim.url, ping_interval=None, close_timeout=0.2) as ws:
            client = Client(ws)
            await client.recv()  # session.created
            await client.send("session.update", session=ENGINE_SESSION)
            assert (await client.recv())["type"] == "session.updated"  # frame 2: then the freeze
            await client.send("response.create")
            pong = await ws.ping()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pong, 0.5)  # nothing reads the ping any more
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # and nothing is sent: the response never starts
        assert ws.close_code == 1006  # our close frame was never answered: the client gave up
    assert len(client.frames) == 2 and sim.stats.events_sent == 2 and sim.stats.endings == ["freeze_after"]


@aio
async def test_fault_freeze_after_trips_the_clients_keepalive() -> None:
    async with simulator(speed=FAST, faults="freeze_after=1") as sim:
        async with connect(sim.url, ping_interval=0.1, ping_timeout=0.2, close_timeout=0.2) as ws:
            client = Client(ws)
            await client.recv()
            closed = await frames_until_closed(client)
    assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None
    assert closed.sent is not None and closed.sent.code == 1011  # websockets: "keepalive ping timeout"


@aio
async def test_fault_bad_utf8_after_makes_the_client_close_with_1007() -> None:
    async with session(update=None, faults="bad_utf8_after=3") as (sim, client):
        await client.send("session.update", session=ENGINE_SESSION)
        await client.send("response.create")
        closed = await frames_until_closed(client)
    assert isinstance(closed, ConnectionClosedError)
    assert closed.sent is not None and closed.sent.code == 1007  # invalid frame payload data
    assert len(client.frames) == 3  # the bad frame itself is never delivered
    assert sim.stats.endings == ["closed by the client (1007)"]


@aio
async def test_fault_expire_after_sends_session_expired_then_closes() -> None:
    async with session(update=None, faults="expire_after=5") as (sim, client):
        await client.send("response.create")
        closed = await frames_until_closed(client)
    error = client.events[-1]
    assert len(client.frames) == 6 and error["type"] == "error"
    assert error["error"] == {"type": "invalid_request_error", "code": "session_expired",
                              "message": "Your session hit the maximum duration of 60 minutes.",
                              "param": None, "event_id": None}  # fmt: skip
    ServerEvent.validate_python(error)
    assert isinstance(closed, ConnectionClosedOK) and closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1001, "Your session hit the maximum duration of 60 minutes.")
    assert sim.stats.endings == ["expire_after"]


@aio
async def test_fault_rate_limit() -> None:
    async with session(faults="rate_limit=2") as (sim, client):
        await statements(client, 1)
        await client.send("response.create", response={"metadata": {"engine_request": "r2"}})
        events = await client.until("response.done")
    assert types(events) == ["response.created", "response.done"]
    done = events[-1]["response"]
    assert done["status"] == "failed" and done["metadata"] == {"engine_request": "r2"} and done["output"] == []
    assert done["status_details"]["type"] == "failed"
    assert done["status_details"]["error"]["code"] == "rate_limit_exceeded"
    assert done["status_details"]["error"]["type"] == "invalid_request_error"
    assert done["status_details"]["error"]["message"].startswith("Rate limit reached")


# ---------------------------------------------------------------------------------------------------
# Determinism, parsing, personas, voices, run_forever


@aio
async def test_same_seed_gives_the_same_event_types() -> None:
    async def script(seed: int) -> list[str]:
        faults = "shuffle_done,duplicate,unknown_events"
        async with session(faults=faults, seed=seed, persona=short_persona()) as (sim, client):
            for _ in range(2):
                await ask(client)
                await client.until("conversation.item.input_audio_transcription.completed")
            await statements(client, 2)
        return types(client.events)

    first, again, other = await script(7), await script(7), await script(8)
    assert first == again
    assert first != other


@aio
async def test_the_path_does_not_depend_on_speed() -> None:
    """At 100 000x every delay is ~0 and sending lags behind simulated time; the order must not change."""

    async def script(speed: float) -> list[str]:
        persona = short_persona({"answers": [SHORT_ANSWERS[0], {"text": SHORT_ANSWERS[1], "barge_in_s": 0.4}]})
        async with session(persona=persona, seed=5, speed=speed, faults="duplicate") as (sim, client):
            for _ in range(3):
                await ask(client)
                await client.until("conversation.item.input_audio_transcription.completed")
        return [k for k in types(client.events) if k not in DELTAS]

    assert await script(50) == await script(100_000)


def test_faults_parse() -> None:
    faults = Faults.parse(" shuffle_done, slow_done=2.5,collision=2 ,disconnect_after=120,rate_limit=1,")
    assert faults == Faults(shuffle_done=True, slow_done=2.5, collision=2, disconnect_after=120, rate_limit=1)
    assert Faults.parse(str(faults)) == faults and Faults.parse("") == Faults()
    ending = Faults.parse("close_after=3,abort_after=4,freeze_after=5,bad_utf8_after=6,expire_after=7")
    assert (ending.close_after, ending.abort_after, ending.freeze_after, ending.bad_utf8_after, ending.expire_after) == (3, 4, 5, 6, 7)
    for spec, message in [
        ("shufle_done", "unknown fault 'shufle_done' (did you mean 'shuffle_done'?)"),
        ("bogus", "unknown fault 'bogus'; known faults: shuffle_done,"),
        ("duplicate=3", "fault 'duplicate' takes no value"),
        ("collision", "fault 'collision' needs a value: collision=<a whole number, 1 to 1000000>"),
        ("collision=0", "fault 'collision' needs a whole number, 1 to 1000000, got '0'"),
        ("slow_done=soon", "fault 'slow_done' needs a number of seconds, 0 < x <= 3600, got 'soon'"),
        ("slow_done=inf", "fault 'slow_done' needs a number of seconds, 0 < x <= 3600, got 'inf'"),
        ("slow_done=nan", "fault 'slow_done' needs a number of seconds, 0 < x <= 3600, got 'nan'"),
        ("slow_done=1e9", "fault 'slow_done' needs a number of seconds, 0 < x <= 3600, got '1e9'"),
        ("close_after=" + "9" * 400, "fault 'close_after' needs a whole number, 1 to 1000000, got '9999"),
        ("abort_after=" + "9" * 12, "fault 'abort_after' needs a whole number, 1 to 1000000, got '999999999999'"),
        ("rate_limit=1.5", "fault 'rate_limit' needs a whole number, 1 to 1000000, got '1.5'"),
        ("garbage,garbage", "fault 'garbage' given twice"),
    ]:
        with pytest.raises(ValueError) as info:
            Faults.parse(spec)
        line = str(info.value)
        assert line.startswith(message) and "\n" not in line and len(line) < 300, line
    with pytest.raises(ValueError, match="unknown fault"):
        simulator(faults="nope")
    for speed in (0, -1, float("inf"), float("nan"), 1e12):
        with pytest.raises(ValueError, match="speed must be a number"):
            simulator(speed=speed)


def test_tts_without_espeak_returns_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not tts.available() and tts.synthesize("Hello there.") is None


@pytest.fixture
def fake_espeak(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in espeak-ng on PATH: logs its arguments and stdin, writes one second at 22050 Hz."""
    log = tmp_path / "espeak.log"
    fake = tmp_path / "espeak-ng"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, wave\n"
        "args = sys.argv[1:]\n"
        f"with open({str(log)!r}, 'a') as f: f.write(json.dumps([args, sys.stdin.read()]) + '\\n')\n"
        "with wave.open(args[args.index('-w') + 1], 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050); w.writeframes(b'\\x10\\x00' * 22050)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def espeak_calls(log: Path) -> list[tuple[list[str], str]]:
    return [tuple(json.loads(line)) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_tts_reads_espeak_output_and_resamples(fake_espeak: Path) -> None:
    pcm = tts.synthesize("-Hello", "en-us+f3", 170)
    assert pcm is not None and len(pcm) == 48_000 and pcm[:2] == b"\x10\x00"  # one second at 24 kHz
    [(args, text)] = espeak_calls(fake_espeak)
    assert (args[args.index("-v") + 1], args[args.index("-s") + 1], text) == ("en-us+f3", "170", "-Hello")


@aio
async def test_voices_speak_with_espeak_when_asked(fake_espeak: Path) -> None:
    async with session(voices=True) as (sim, client):
        events = await ask(client, instructions='Say "Good morning."')
    audio = sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")
    assert audio == 48_000
    [(args, text)] = espeak_calls(fake_espeak)
    assert (args[args.index("-v") + 1], args[args.index("-s") + 1], text) == ("en-us+f3", "160", "Good morning.")


def test_tone_has_the_length_of_the_words() -> None:
    voices = servermod._Voices(speak=False)
    assert len(voices.tone(2.5)) == 2500 * 48 and len(voices.tone(75.0)) == 75_000 * 48
    assert voices.tone(1.0) == voices.tone(2.0)[: 48_000]


def test_run_forever_prints_the_url_and_serves(capsys: pytest.CaptureFixture[str]) -> None:
    @aio
    async def serve_and_connect() -> None:
        task = asyncio.create_task(run_forever("127.0.0.1", 0, voices=False))
        async with asyncio.timeout(10):  # bounded: run_forever has no event to wait on; it prints once bound
            while not (out := capsys.readouterr().out):
                await asyncio.sleep(0)
        url = out.split()[-1]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime") and out.count("\n") == 1
        async with connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    serve_and_connect()
