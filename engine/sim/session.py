"""One connection: the protocol bookkeeping of one conversation, the model and the candidate.

Rules of this module:
1. Deterministic for a seed: each random choice draws from a `random.Random` seeded by (seed,
   purpose, n), so turning one fault on does not change the choices of another.
2. Time is simulated (`Clock`): every delay is in simulated seconds; only `loop.time()` and asyncio
   timers are read, so a session runs unchanged on a virtual-time loop.
3. State that the client may act on changes *before* the frame that reveals it is sent (the client
   may answer before `send` returns).
4. The connection is used only through `Connection`: send, async iteration, close, request.path and
   .headers, transport.abort and .pause_reading.
5. It shares no code with the engine's own transport (engine/realtime.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed

from . import vad as vadmod
from .clock import Clock, Timeline
from .model import Call, Model, Turn
from .response import BYTES_PER_MS, Response, Speech, Step, failure_details
from .scenario import Answer

if TYPE_CHECKING:
    from .server import Simulator

__all__ = ["Session", "Connection", "SimStats"]

logger = logging.getLogger("engine.sim")

Event = dict[str, Any]

INTERJECTION = "Right."  # what the model says when the collision fault makes it speak unasked
EXPIRED = "Your session hit the maximum duration of 60 minutes."
FREEZE_LIMIT = 300.0  # loop seconds a frozen connection is held before it is dropped
CANDIDATE_GAP_S = 0.2  # the candidate never starts a turn before this long after their last one
_BAD_UTF8 = b'{"type": "sim.bad_utf8", "note": "\xff\xfe not UTF-8"}'
_GARBAGE = ["{not json", "[]", "null", '"just a string"', "42", '{"type": "response.done"']
_SESSION_KEYS = {
    "type", "model", "output_modalities", "instructions", "audio", "include", "max_output_tokens",
    "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools", "tracing", "truncation",
}  # fmt: skip
_AUDIO_KEYS = {
    "input": {"format", "noise_reduction", "transcription", "turn_detection"},
    "output": {"format", "voice", "speed"},
}


class _Request(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Any: ...  # .get(name) -> str | None


class _Transport(Protocol):
    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...


class Connection(Protocol):
    """What the simulator needs of a connection: websockets' ServerConnection, or engine.loopback's
    server end. Nothing else is used; `transport` only by the abort and freeze faults."""

    @property
    def request(self) -> _Request | None: ...

    @property
    def transport(self) -> _Transport: ...

    async def send(self, message: str | bytes, *, text: bool | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...


@dataclass
class SimStats:
    """Counts over every session of one `Simulator`."""

    sessions: int = 0  # connections accepted
    responses: int = 0  # responses started (the engine's, injected ones, failed ones)
    collisions: int = 0  # response.create refused because a response was really in progress
    injected_collisions: int = 0  # refusals made up by the `collision` fault
    events_sent: int = 0  # frames sent, duplicates and garbage included
    client_events: Counter[str] = field(default_factory=Counter)  # by type; "<invalid>" for non-JSON
    truncations: list[int] = field(default_factory=list)  # audio_end_ms of every truncate received
    errors_sent: list[str] = field(default_factory=list)  # error codes, in order
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # tool calls the model made
    endings: list[str] = field(default_factory=list)  # how each session ended, in order


class _Hangup(Exception):
    """The session ends now (a fault, or the candidate hung up): whatever was sending stops."""


@dataclass(eq=False)
class _Running:
    """A response being streamed, and how far it got."""

    response: Response
    start: float  # simulated time of its response.created
    timeline: Timeline
    sent: int = 0
    cancel_reason: str | None = None


class Session:
    """One connection: the model, the candidate and the protocol bookkeeping of one conversation."""

    def __init__(self, sim: Simulator, ws: Connection, number: int):
        self.sim, self.ws, self.number = sim, ws, number
        self.persona, self.faults, self.stats = sim.persona, sim.faults, sim.stats
        self._seed = sim.seed
        self._ids = itertools.count(1)
        self._rng = {name: random.Random(f"{self._seed}:{name}") for name in ("duplicate", "unknown_events", "garbage")}
        self._draws: Counter[str] = Counter()
        self._handlers = self._handler_table()
        self.clock = Clock(sim.speed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._frames = 0
        self._dones = 0
        self._ending: str | None = None
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = ws.request
        path = request.path if request is not None else ""
        self._headers = request.headers if request is not None else None
        model = parse_qs(urlsplit(path).query).get("model", ["gpt-realtime"])[0]
        self.session = _default_session(self.new_id("sess"), model)
        self.conversation_id = self.new_id("conv")
        # The conversation as the client has seen it.
        self.items: dict[str, Event] = {}
        self.last_item: str | None = None
        self._last_type: str | None = None  # of the newest item, for "right after a tool output"
        self.audio_bytes: Counter[str] = Counter()  # per assistant item, for truncate
        self.call_ids: set[str] = set()
        self.input_bytes = 0  # appended since the last commit
        self._detector: vadmod.EnergyDetector | None = None
        self._real_item: str | None = None  # the item of real speech in progress
        # The model and the candidate.
        self.model = Model(self.persona.interviewer)
        self.active: _Running | None = None
        self.creates = 0  # response.create events received
        self._next_answer = 0
        self._candidate_until = 0.0  # simulated time the candidate's planned speech ends
        self._left = False
        self._spoken_over: set[int] = set()
        self._idle_generation = 0

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_S{self.number:03d}{next(self._ids):07d}"

    async def run(self) -> None:
        """Serve the connection until it closes or a fault ends it; then stop every task quietly."""
        reader = asyncio.ensure_future(self._read())
        why = "closed by the client"
        try:
            waiters: list[asyncio.Future[Any]] = [reader, self._ended]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if self._ending is not None:
                await self._ended  # a close in progress finishes before the session's tasks stop
        finally:
            if not reader.done():
                reader.cancel()
            results = await asyncio.gather(reader, return_exceptions=True)
            if isinstance(results[0], str):
                why = results[0]
            elif isinstance(results[0], Exception):
                why = f"simulator error: {results[0]!r}"
                logger.error("simulator session %d failed", self.number, exc_info=results[0])
            if self._ending == "freeze_after":
                await self._frozen()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stats.endings.append(self._ending or why)

    # Private: reading and ending.

    async def _read(self) -> str:
        try:
            if self._headers is not None and self._headers.get("OpenAI-Beta"):
                message = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
                await self._error("beta_api_shape_disabled", message)
                await self.ws.close()
                return "beta header refused"
            await self._send({"type": "session.created", "session": self.session})
            if self.faults.unknown_events:
                await self._frame(self._unknown_event())
            if self.faults.garbage:
                await self._frame(_GARBAGE[0])
            async for frame in self.ws:
                await self._receive(frame)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            return "the connection dropped" if code is None else f"closed by the client ({code})"
        except _Hangup:
            pass
        return "closed by the client"

    async def _end(self, why: str, *, close: tuple[int, str] | None = None, abort: bool = False,
                   freeze: bool = False) -> None:  # fmt: skip
        """End the session now: close, abort or freeze the connection, and stop every sender."""
        if self._ending is not None:
            raise _Hangup
        self._ending = why
        try:
            if freeze:
                self.ws.transport.pause_reading()
            elif abort:
                self.ws.transport.abort()
            elif close is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.close(*close)
        finally:
            if not self._ended.done():
                self._ended.set_result(None)
        raise _Hangup

    async def _frozen(self) -> None:
        """A frozen server says nothing and reads nothing until the client gives up (or we stop)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FREEZE_LIMIT):
                await self.sim.closing.wait()
        self.ws.transport.abort()

    # Private: sending.

    async def _send(self, event: Event) -> None:
        """Send one server event with a fresh event_id, applying the frame-level faults."""
        frame = json.dumps({"type": event["type"], "event_id": self.new_id("event"), **event})
        opening = self._frames == 0  # session.created always comes first
        if self.faults.garbage and not opening and self._rng["garbage"].random() < 0.04:
            await self._frame(self._rng["garbage"].choice(_GARBAGE))
        if self.faults.unknown_events and not opening and self._rng["unknown_events"].random() < 0.05:
            await self._frame(self._unknown_event())
        await self._frame(frame)
        if self.faults.duplicate and self._duplicate(event["type"]):
            await self._frame(frame)

    def _duplicate(self, kind: str) -> bool:
        if kind == "response.done":
            self._dones += 1
            return self._dones % 2 == 1
        return self._rng["duplicate"].random() < 0.05

    def _unknown_event(self) -> str:
        kind = self._rng["unknown_events"].choice(["sim.unknown", "sim.future_feature.delta"])
        return json.dumps(
            {"type": kind, "event_id": self.new_id("event"), "note": "the simulator's unknown_events fault"}
        )

    async def _frame(self, text: str) -> None:
        if self._ending is not None:
            raise _Hangup
        await self.ws.send(text)
        self._frames += 1
        self.stats.events_sent += 1
        await self._connection_faults(self._frames)

    async def _connection_faults(self, n: int) -> None:
        faults = self.faults
        if n == faults.bad_utf8_after:
            await self.ws.send(_BAD_UTF8, text=True)  # a text frame whose bytes are not UTF-8
            self.stats.events_sent += 1
        if n == faults.disconnect_after:
            await self._end("disconnect_after", close=(1011, "simulated disconnect"))
        if n == faults.close_after:
            await self._end("close_after", close=(1000, "simulated normal close"))
        if n == faults.abort_after:
            await self._end("abort_after", abort=True)
        if n == faults.freeze_after:
            await self._end("freeze_after", freeze=True)
        if n == faults.expire_after:
            error = {"type": "invalid_request_error", "code": "session_expired", "message": EXPIRED,
                     "param": None, "event_id": None}  # fmt: skip
            await self.ws.send(json.dumps({"type": "error", "event_id": self.new_id("event"), "error": error}))
            self.stats.events_sent += 1
            self.stats.errors_sent.append("session_expired")
            await self._end("expire_after", close=(1001, EXPIRED))

    async def _error(
        self, code: str, message: str, client_event: Event | None = None, *, param: str | None = None
    ) -> None:
        self.stats.errors_sent.append(code)
        client_id = client_event.get("event_id") if isinstance(client_event, dict) else None
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_id,
        }
        await self._send({"type": "error", "error": error})

    async def _emit(self, step: Step) -> None:
        self._note(step)
        await self._send(step.event)

    def _note(self, step: Step) -> None:
        """Update the conversation for a response event before it goes out (rule 3)."""
        event, kind = step.event, step.event["type"]
        if kind in ("conversation.item.added", "conversation.item.done"):
            self._remember(event["item"])
        elif kind == "response.output_audio.delta":
            self.audio_bytes[step.item_id or ""] += step.audio_bytes
        elif kind == "response.done" and self.active and self.active.response.id == event["response"]["id"]:
            self.active = None

    def _remember(self, item: Event) -> None:
        if item["id"] not in self.items:
            self.last_item = item["id"]
            self._last_type = str(item.get("type"))
        self.items[item["id"]] = item
        if item.get("type") == "function_call":
            self.call_ids.add(item["call_id"])

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except (ConnectionClosed, _Hangup):
            pass  # the client left or a fault ended the session: a pending answer or response just stops
        except Exception:
            logger.exception("simulator session %d: task failed", self.number)

    # Private: receiving.

    async def _receive(self, message: str | bytes) -> None:
        await self.clock.settle()
        try:
            event = json.loads(message)
        except ValueError as exc:
            self.stats.client_events["<invalid>"] += 1
            return await self._error("invalid_json", f"The event could not be parsed as JSON: {exc}.")
        if not isinstance(event, dict):
            self.stats.client_events["<invalid>"] += 1
            return await self._error("invalid_event", "The event must be a JSON object.")
        kind = event.get("type")
        self.stats.client_events[str(kind)] += 1
        handlers = self._handlers
        if kind is None:
            return await self._error("invalid_event", "The 'type' field is missing.", event, param="type")
        if not isinstance(kind, str) or kind not in handlers:
            supported = ", ".join(f"'{k}'" for k in handlers)
            message = f"Invalid value: '{kind}'. Supported values are: {supported}."
            return await self._error("invalid_value", message, event, param="type")
        await handlers[kind](event)

    def _handler_table(self) -> dict[str, Callable[[Event], Awaitable[None]]]:
        return {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_audio_append,
            "input_audio_buffer.commit": self._on_audio_commit,
            "input_audio_buffer.clear": self._on_audio_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_clear,
        }

    async def _on_session_update(self, event: Event) -> None:
        patch = event.get("session")
        if not isinstance(patch, dict):
            return await self._error(
                "missing_required_parameter", "Missing required parameter: 'session'.", event, param="session"
            )
        if "type" not in patch:
            message = "Missing required parameter: 'session.type'."
            return await self._error("missing_required_parameter", message, event, param="session.type")
        if patch["type"] != "realtime":
            message = f"Invalid value: '{patch['type']}'. Supported values are: 'realtime' and 'transcription'."
            if patch["type"] == "transcription":
                message = "The simulator serves only 'realtime' sessions, not 'transcription'."
            return await self._error("invalid_value", message, event, param="session.type")
        if unknown := _unknown_parameter(patch):
            return await self._error("unknown_parameter", f"Unknown parameter: '{unknown}'.", event, param=unknown)
        audio_in = (patch.get("audio") or {}).get("input") if isinstance(patch.get("audio"), dict) else None
        turn_detection = audio_in.get("turn_detection", ...) if isinstance(audio_in, dict) else ...
        if turn_detection is not ... and (problem := vadmod.validate(turn_detection)):
            param, message = problem
            return await self._error("invalid_value", message, event, param=param)
        _merge(self.session, patch)
        if turn_detection is not ...:
            # Replaced, not merged: switching to semantic_vad drops server_vad's knobs.
            effective = None if turn_detection is None else vadmod.effective(turn_detection)
            self.session["audio"]["input"]["turn_detection"] = effective
            self._detector = None
        await self._send({"type": "session.updated", "session": self.session})

    async def _on_audio_append(self, event: Event) -> None:
        try:
            pcm = base64.b64decode(str(event.get("audio", "")), validate=True)
        except (binascii.Error, ValueError):
            return await self._error(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", event, param="audio"
            )
        self.input_bytes += len(pcm)
        vad = self._vad()
        if vad is None:
            return
        if self._detector is None:
            self._detector = vadmod.EnergyDetector(vad)
        detector = self._detector
        if self._scripted_speaking():
            detector.position_ms += len(pcm) // BYTES_PER_MS  # the scripted candidate has the floor
            return
        for kind, ms in detector.feed(pcm):
            if kind == "started":
                self._real_item = self.new_id("item")
                await self._speech_started(self._real_item, ms, vad)
            else:
                item_id, self._real_item = self._real_item or self.new_id("item"), None
                await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id})
                await self._turn_committed(item_id, self._real_transcript(detector.speech_ms), vad)

    async def _on_audio_commit(self, event: Event) -> None:
        if self.input_bytes < 100 * BYTES_PER_MS:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {self.input_bytes / BYTES_PER_MS:.2f}ms of audio."
            )
            return await self._error("input_audio_buffer_commit_empty", message, event)
        speech_ms = self.input_bytes // BYTES_PER_MS
        await self._turn_committed(self.new_id("item"), self._real_transcript(speech_ms), None)

    async def _on_audio_clear(self, event: Event) -> None:
        self.input_bytes = 0
        if self._detector is not None:
            self._detector.speaking = False
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_item_create(self, event: Event) -> None:
        item = event.get("item")
        item = item if isinstance(item, dict) else {}
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            supported = "'message', 'function_call', and 'function_call_output'"
            message = f"Invalid value: '{kind}'. Supported values are: {supported}."
            return await self._error("invalid_value", message, event, param="item.type")
        if kind == "function_call_output" and item.get("call_id") not in self.call_ids:
            message = f"Tool call ID '{item.get('call_id')}' not found in conversation."
            return await self._error("invalid_value", message, event, param="item.call_id")
        item = {"id": item.get("id") or self.new_id("item"), "object": "realtime.item", "status": "completed", **item}
        if kind == "message" and item.get("role") == "user":
            self.model.hear(_user_text(item))  # a typed line (engine chat) is the candidate's answer
        await self._add_item(item)

    async def _add_item(self, item: Event) -> None:
        previous = self.last_item
        self._remember(item)
        await self._send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self._send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def _on_item_retrieve(self, event: Event) -> None:
        if (item := await self._known_item(event)) is not None:
            await self._send({"type": "conversation.item.retrieved", "item": item})

    async def _on_item_delete(self, event: Event) -> None:
        if (item := await self._known_item(event)) is not None:
            del self.items[item["id"]]
            await self._send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def _known_item(self, event: Event) -> Event | None:
        item = self.items.get(str(event.get("item_id")))
        if item is None:
            message = f"Item with item_id '{event.get('item_id')}' not found."
            await self._error("item_not_found", message, event, param="item_id")
        return item

    async def _on_item_truncate(self, event: Event) -> None:
        end_ms = event.get("audio_end_ms")
        if isinstance(end_ms, int):
            self.stats.truncations.append(end_ms)
        if (item := await self._known_item(event)) is None:
            return
        if item.get("type") != "message" or item.get("role") != "assistant":
            return await self._error(
                "unsupported_content_type", "Only model output audio messages can be truncated", event
            )
        if event.get("content_index") != 0:
            message = f"Invalid value: '{event.get('content_index')}'. The item has one content part, 0."
            return await self._error("invalid_value", message, event, param="content_index")
        audio_ms = self.audio_bytes[item["id"]] // BYTES_PER_MS
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            message = f"Invalid value: '{end_ms}'. audio_end_ms must be a non-negative integer."
            return await self._error("invalid_value", message, event, param="audio_end_ms")
        if end_ms > audio_ms:
            message = f"Audio content of {audio_ms}ms is already shorter than {end_ms}ms"
            return await self._error("invalid_value", message, event, param="audio_end_ms")
        self.audio_bytes[item["id"]] = end_ms * BYTES_PER_MS
        truncated = {"type": "conversation.item.truncated", "item_id": item["id"], "content_index": 0}
        await self._send({**truncated, "audio_end_ms": end_ms})

    async def _on_output_audio_clear(self, event: Event) -> None:
        message = "output_audio_buffer.clear is only supported on WebRTC and SIP connections."
        await self._error("invalid_value", message, event, param="type")

    async def _on_response_cancel(self, event: Event) -> None:
        running, wanted = self.active, event.get("response_id")
        if running is None or (wanted and wanted != running.response.id):
            return await self._error(
                "response_cancel_not_active", "Cancellation failed: no active response found", event
            )
        self._cancel(running, "client_cancelled")

    def _cancel(self, running: _Running, reason: str) -> None:
        if running.cancel_reason is None:
            running.cancel_reason = reason
            self.clock.notify()

    async def _on_response_create(self, event: Event) -> None:
        self.creates += 1
        if self.active is not None:
            self.stats.collisions += 1
            return await self._collision(event, self.active.response.id)
        params = event.get("response")
        params = params if isinstance(params, dict) else {}
        metadata = params.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else None
        if self.creates == self.faults.collision:
            # The model starts speaking on its own just before the engine's request lands.
            own = await self._respond(INTERJECTION, metadata=None)
            self.stats.injected_collisions += 1
            await self._start(own, then=lambda: self._collision(event, own.id))
            return
        if self.creates == self.faults.rate_limit:
            await self._start(self._failed("rate_limit", metadata))
            return
        await self._model_turn(params, metadata)

    async def _collision(self, event: Event, response_id: str) -> None:
        message = (
            f"Conversation already has an active response in progress: {response_id}. "
            "Wait until the response is finished before creating a new one."
        )
        await self._error("conversation_already_has_active_response", message, event)

    # Private: the model.

    async def _model_turn(self, params: Event, metadata: dict[str, str] | None, at: float | None = None,
                          idle: bool = False) -> None:  # fmt: skip
        """Let the model decide (engine.sim.model), stream its response, schedule what the candidate does."""
        decision = self.model.decide(self._turn(params, idle))
        if decision.fail is not None:
            await self._start(self._failed(decision.fail, metadata), at=at)
            return
        if decision.call is not None:
            self.stats.calls.append((decision.call.name, json.loads(decision.call.arguments)))
        response = await self._respond(decision.text, call=decision.call, metadata=metadata)
        running = await self._start(response, at=at)
        if decision.asks:
            self._schedule_answer(running)
        self._schedule_speaks_over(running, decision.text)

    def _turn(self, params: Event, idle: bool) -> Turn:
        instructions = params.get("instructions")
        tools = params.get("tools") if isinstance(params.get("tools"), list) else self.session.get("tools")
        choice = params.get("tool_choice", self.session.get("tool_choice", "auto"))
        return Turn(
            instructions=(instructions.strip() or None) if isinstance(instructions, str) else None,
            session_instructions=str(self.session.get("instructions") or ""),
            tools=tuple(t for t in tools or [] if isinstance(t, dict) and t.get("type", "function") == "function"),
            tool_choice=choice,
            after_tool_output=self._last_type == "function_call_output",
            idle=idle,
        )

    def _failed(self, kind: str, metadata: dict[str, str] | None) -> Response:
        return Response(self.new_id, rng=self._next_rng("response"), metadata=metadata, failure=failure_details(kind))

    async def _respond(self, text: str, *, call: Call | None = None, metadata: dict[str, str] | None) -> Response:
        interviewer = self.persona.interviewer
        speech = None
        if text:
            audio = await self.sim.voices.speech(text, interviewer.voice, interviewer.words_per_minute)
            speech = Speech(text, audio)
        return Response(
            self.new_id,
            rng=self._next_rng("response"),
            shuffle_rng=self._next_rng("shuffle"),
            faults=self.faults,
            speech=speech,
            call=call,
            metadata=metadata,
            voice=str(self._audio("output").get("voice") or "alloy"),
            conversation_id=self.conversation_id,
            previous_item_id=self.last_item,
            first_audio=_bounds(interviewer.first_audio_s),
        )

    def _next_rng(self, purpose: str) -> random.Random:
        """A fresh generator per response or answer, so concurrent tasks never share draws."""
        self._draws[purpose] += 1
        return random.Random(f"{self._seed}:{purpose}:{self._draws[purpose]}")

    def _audio(self, side: str) -> Event:
        audio = self.session.get("audio") or {}
        return audio.get(side) or {}

    def _vad(self) -> vadmod.TurnDetection | None:
        return vadmod.TurnDetection.of(self._audio("input").get("turn_detection"))

    async def _start(
        self, response: Response, then: Callable[[], Awaitable[None]] | None = None, at: float | None = None
    ) -> _Running:
        """Make `response` the active one, send its response.created, then `then()`; a task streams the rest.

        `at` is its simulated start when an actor starts it; None means now, for a client event.
        The stream task starts only after `then()` has been sent, so nothing can overtake it.
        """
        start = self.clock.present() if at is None else at
        running = _Running(response, start, self.clock.timeline(start), sent=1)
        self.active = running
        self.stats.responses += 1
        self._idle_generation += 1  # the model speaks: the idle timeout starts again after it
        self.clock.notify()
        try:
            await self._emit(response.steps[0])
            if then is not None:
                await then()
        except BaseException:
            running.timeline.close()  # no stream will ever release it
            raise
        self._spawn(self._stream(running))
        return running

    async def _stream(self, running: _Running) -> None:
        response, timeline = running.response, running.timeline
        try:
            while running.sent < len(response.steps):
                step = response.steps[running.sent]
                if not await timeline.at(running.start + step.at, lambda: running.cancel_reason is not None):
                    break
                running.sent += 1
                await self._emit(step)
            if running.cancel_reason is not None:
                await timeline.at(self.clock.now)  # the response ends when it was cancelled
                for step in response.closing(running.sent, running.cancel_reason):
                    await self._emit(step)
            self._arm_idle(response)
        finally:
            timeline.close()
            if self.active is running:
                self.active = None

    # Private: turn detection.

    def _arm_idle(self, response: Response) -> None:
        """server_vad's idle_timeout_ms counts from response.done plus the audio's length (realtime.md §5)."""
        vad = self._vad()
        if vad is None or vad.kind != "server_vad" or not vad.idle_timeout_ms:
            return
        if self.clock.now < self._candidate_until or (self._detector is not None and self._detector.speaking):
            return  # the candidate has the floor: not idle
        self._idle_generation += 1
        generation = self._idle_generation
        deadline = self.clock.now + response.audio_seconds + vad.idle_timeout_ms / 1000
        timeline = self.clock.timeline(deadline)
        self._spawn(self._idle(timeline, deadline, generation, vad))

    async def _idle(self, timeline: Timeline, deadline: float, generation: int, vad: vadmod.TurnDetection) -> None:
        try:
            if not await timeline.at(deadline, lambda: self._idle_generation != generation):
                return
            item_id = self.new_id("item")
            assert vad.idle_timeout_ms is not None
            start_ms = round(deadline * 1000) - vad.idle_timeout_ms
            triggered = {"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": max(0, start_ms)}
            await self._send({**triggered, "audio_end_ms": round(deadline * 1000), "item_id": item_id})
            self.input_bytes = 0
            await self._user_item(item_id)  # the silence is committed as an (empty) input_audio item
            if vad.create_response and self.active is None:
                await self._model_turn({}, None, at=self.clock.now, idle=True)
        finally:
            timeline.close()

    async def _speech_started(self, item_id: str, audio_start_ms: int, vad: vadmod.TurnDetection) -> None:
        self._idle_generation += 1
        self.clock.notify()
        started = {"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms}
        await self._send({**started, "item_id": item_id})
        if vad.interrupt_response and self.active is not None:
            self._cancel(self.active, "turn_detected")

    async def _turn_committed(self, item_id: str, text: str | None, vad: vadmod.TurnDetection | None,
                              answer: Answer | None = None) -> None:  # fmt: skip
        """A candidate turn is over: the model hears it, the item is committed, the server may answer,
        and the transcript follows after its delay."""
        heard = text if text is not None else ""
        self.model.hear(heard)
        self.input_bytes = 0
        await self._user_item(item_id)
        if vad is not None and vad.create_response and self.active is None:
            await self._model_turn({}, None, at=self.clock.now)  # the server answers the user itself
        self._schedule_transcript(item_id, heard, answer)

    async def _user_item(self, item_id: str) -> None:
        await self._send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": self.last_item}
        )
        content = [{"type": "input_audio", "transcript": None}]
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed"}
        await self._add_item({**item, "content": content})

    def _schedule_transcript(self, item_id: str, text: str, answer: Answer | None) -> None:
        if not self._audio("input").get("transcription"):
            return  # input transcription is off unless the session asks for it (realtime.md §6)
        candidate = self.persona.candidate
        delay = answer.transcription_delay_s if answer and answer.transcription_delay_s is not None else None
        delay = candidate.transcription_delay_s if delay is None else delay
        override = answer.transcript if answer is not None else None
        if delay == "never" or override == "never":
            return
        at = self.clock.now + _draw(delay, self._next_rng("transcription"))
        failed = override == "failed"
        transcript = text if override in (None, "failed") else override
        self._spawn(self._transcribe(self.clock.timeline(at), at, item_id, transcript or "", failed))

    async def _transcribe(self, timeline: Timeline, at: float, item_id: str, text: str, failed: bool) -> None:
        try:
            await timeline.at(at)
            if failed:
                error = {"type": "transcription_error", "code": "audio_unintelligible",
                         "message": "The audio could not be transcribed. (simulated)", "param": None}  # fmt: skip
                failure = {"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id}
                await self._send({**failure, "content_index": 0, "error": error})
                return
            item = self.items.get(item_id)
            if item is not None and item.get("content"):
                item["content"][0]["transcript"] = text
            seconds = round(len(text.split()) * 60 / self.persona.candidate.words_per_minute, 3)
            completed = {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id}
            usage = {"type": "duration", "seconds": seconds}
            await self._send({**completed, "content_index": 0, "transcript": text, "usage": usage})
        finally:
            timeline.close()

    def _real_transcript(self, speech_ms: int) -> str:
        """What the transcription of real speech says: the scenario's next answer when no scripted
        candidate plays it (and answers are left), else a placeholder with its length."""
        if not self.sim.scripted_candidate and self._next_answer < len(self.persona.candidate.answers):
            answer = self._take_answer()
            if answer is not None and answer.text is not None:
                return answer.text
        return f"({speech_ms / 1000:.1f} s of speech)"

    def _scripted_speaking(self) -> bool:
        return self.clock.present() < self._candidate_until  # a client event happens at the present

    # Private: the scripted candidate.

    def _take_answer(self) -> Answer | None:
        """The candidate's next turn from the script (None when there is none at all)."""
        candidate = self.persona.candidate
        number = self._next_answer
        self._next_answer += 1
        if number < len(candidate.answers):
            entry = candidate.answers[number]
        elif candidate.when_answers_run_out == "silence":
            return Answer(silence=True)
        elif candidate.when_answers_run_out == "hang_up":
            return Answer(leave="hang_up")
        elif candidate.answers:
            entry = candidate.answers[-1]
        else:
            return None
        return Answer(text=entry) if isinstance(entry, str) else entry

    def _schedule_answer(self, running: _Running) -> None:
        if not self.sim.scripted_candidate or self._left:
            return
        answer = self._take_answer()
        if answer is None or answer.silence:
            return
        if answer.leave == "silent":
            self._left = True
            return
        rng = self._next_rng("answer")
        response = running.response
        if answer.barge_in_s is not None:
            start = running.start + response.first_audio_at + answer.barge_in_s
        else:
            reaction = answer.reaction_s if answer.reaction_s is not None else self.persona.candidate.reaction_s
            start = running.start + response.first_audio_at + response.audio_seconds + _draw(reaction, rng)
        if answer.leave == "hang_up":
            self._left = True
            self._spawn(self._hang_up(self.clock.timeline(start), start))
            return
        assert answer.text is not None
        self._schedule_speech(start, answer.text, answer, rng)

    def _schedule_speaks_over(self, running: _Running, text: str) -> None:
        if not self.sim.scripted_candidate or self._left or not text:
            return
        for index, over in enumerate(self.persona.candidate.speaks_over):
            if index not in self._spoken_over and over.during.lower() in text.lower():
                self._spoken_over.add(index)
                start = running.start + running.response.first_audio_at + over.after_s
                self._schedule_speech(start, over.text, None, self._next_rng("answer"))

    def _schedule_speech(self, start: float, text: str, answer: Answer | None, rng: random.Random) -> None:
        """Plan one utterance (its turns as the server's turn detection will see them) and take its timeline now,
        so that no response stream can run past its start."""
        if self._candidate_until:
            start = max(start, self._candidate_until + CANDIDATE_GAP_S)
        wpm = answer.words_per_minute if answer and answer.words_per_minute else self.persona.candidate.words_per_minute
        pauses = {p.after_words: p.seconds for p in answer.pauses} if answer else {}
        segments = vadmod.plan(text, start, wpm, pauses, self._vad(), rng)
        self._candidate_until = segments[-1].detected
        self._spawn(self._speak(self.clock.timeline(start), segments, answer))

    async def _speak(self, timeline: Timeline, segments: list[vadmod.Segment], answer: Answer | None) -> None:
        """The candidate's turn(s): VAD events, the committed user item, its transcript."""
        try:
            for segment in segments:
                await timeline.at(segment.start)
                item_id = self.new_id("item")
                # Without turn detection the real server would wait for the client's commit; the scripted
                # candidate commits anyway (without the VAD events), so that the interview goes on.
                vad = self._vad()
                if vad is not None:
                    start_ms = max(0, round(segment.start * 1000) - vad.prefix_padding_ms)
                    await self._speech_started(item_id, start_ms, vad)
                await timeline.at(segment.detected)
                if vad is not None:
                    stopped = {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": round(segment.detected * 1000),
                    }
                    await self._send({**stopped, "item_id": item_id})
                await self._turn_committed(item_id, segment.text, vad, answer)
        finally:
            timeline.close()

    async def _hang_up(self, timeline: Timeline, at: float) -> None:
        try:
            await timeline.at(at)
            await self._end("the candidate hung up", close=(1000, "the candidate hung up"))
        finally:
            timeline.close()


# ---------------------------------------------------------------------------------------------------
# Helpers


def _draw(value: float | list[float], rng: random.Random) -> float:
    if isinstance(value, list):
        return rng.uniform(value[0], value[1])
    return float(value)


def _bounds(value: float | list[float]) -> tuple[float, float]:
    return (value[0], value[1]) if isinstance(value, list) else (float(value), float(value))


def _user_text(item: Event) -> str:
    parts = []
    for part in item.get("content") or []:
        if isinstance(part, dict):
            if part.get("type") == "input_text":
                parts.append(str(part.get("text") or ""))
            elif part.get("type") == "input_audio":
                parts.append(str(part.get("transcript") or "(audio)"))
    return " ".join(p for p in parts if p)


def _default_session(session_id: str, model: str) -> Event:
    """What session.created reports before any session.update (realtime.md §6 defaults)."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    vad = vadmod.effective({"type": "server_vad"})
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "audio": {
            "input": {"format": pcm, "transcription": None, "noise_reduction": None, "turn_detection": vad},
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "truncation": "auto",
    }


def _unknown_parameter(patch: Event) -> str | None:
    """The dotted path of the first key a GA session does not have (beta shapes land here)."""
    for key in patch:
        if key not in _SESSION_KEYS:
            return f"session.{key}"
    audio = patch.get("audio")
    for side, allowed in _AUDIO_KEYS.items():
        part = audio.get(side) if isinstance(audio, dict) else None
        for key in part if isinstance(part, dict) else ():
            if key not in allowed:
                return f"session.audio.{side}.{key}"
    return None


def _merge(base: Event, patch: Event) -> None:
    """Only the fields sent are updated (realtime.md §6); nested objects merge, lists replace."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
