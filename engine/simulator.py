"""A local Realtime API server that plays the interviewer (the model) and a scripted candidate.

It speaks the GA protocol of research/realtime.md over a real WebSocket at ``/v1/realtime``, faithfully
enough that the official ``openai`` SDK can drive it. `engine run` uses it when there is no API key,
end-to-end tests run it at high speed, and benchmarks run many sessions against one server.

Rules of this module:
1. Deterministic for a seed: each random choice draws from a `random.Random` seeded by (seed, purpose),
   so turning one fault on does not change the choices of another.
2. Time is simulated: every delay is written in simulated seconds and divided by `speed` only when
   sleeping, so a session takes the same path at any speed.
3. No global state: one `Simulator` per server, one `_Session` per connection, one task per
   streamed response and per candidate answer.
4. State that the client may act on changes *before* the frame that reveals it is sent (the client may
   answer before `send` returns).
5. It shares no code with the engine's own transport: it is the second implementation that keeps the
   first honest.

Sections: personas, faults, statistics, the response builder, the session, the server.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import difflib
import itertools
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import tts

__all__ = [
    "Simulator",
    "simulator",
    "run_forever",
    "SimStats",
    "Faults",
    "Persona",
    "Interviewer",
    "BargeIn",
    "load_persona",
    "Response",
    "Step",
    "Speech",
    "Call",
]

logger = logging.getLogger(__name__)

Event = dict[str, Any]

BYTES_PER_MS = 48  # pcm16, 24 kHz, mono
DELIVERY = 4.0  # audio leaves the server this many times faster than real time
CHUNK_MS = (40, 100)  # size range of one output_audio.delta
TRANSCRIPT_LEAD_MS = 300  # the transcript runs ahead of the audio, as on the real server
FIRST_AUDIO_S = (0.2, 0.6)  # response.create -> first audio delta
TRANSCRIPTION_S = (0.1, 0.3)  # speech stopped -> input transcript
ASSESSMENT_TOOL = "trigger_assessment"
CLOSING_LINE = "Thank you, that's everything I wanted to ask."
INTERJECTION = "Right."  # what the model says when the collision fault makes it speak unasked


# ---------------------------------------------------------------------------------------------------
# Personas


def _strict() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True)


_DEFAULT_QUESTIONS = [
    "Could you tell me a little about yourself?",
    "What do you usually do in your free time?",
    "Can you describe a place you have visited that you really liked?",
    "What are your plans for the next few years?",
    "If you could change one thing about your town, what would it be, and why?",
]


class Interviewer(BaseModel):
    """The model's side: who speaks and which questions it asks, in order."""

    model_config = _strict()

    name: str = "Sam"
    voice: str = "en-us+f3"  # espeak-ng voice
    words_per_minute: int = Field(160, gt=0)
    questions: list[str] = Field(default_factory=lambda: list(_DEFAULT_QUESTIONS), min_length=1)


class BargeIn(BaseModel):
    """The candidate starts answering `after_s` simulated seconds into question number `question`."""

    model_config = _strict()

    question: int = Field(ge=1)
    after_s: float = Field(ge=0)


class Persona(BaseModel):
    """A scripted candidate (and, optionally, the interviewer it meets). See flows/personas/*.yaml."""

    model_config = _strict()

    name: str
    level: str = ""  # informational only
    voice: str = "en-us"  # espeak-ng voice of the candidate
    words_per_minute: int = Field(120, gt=0)
    reaction_s: tuple[float, float] = (0.6, 1.2)  # uniform delay before answering
    questions_before_assessment: int = Field(4, ge=0)
    interviewer: Interviewer = Field(default_factory=Interviewer)
    answers: list[str] = Field(min_length=1)  # in order; the last is reused when they run out
    barge_in: BargeIn | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Persona:
        low, high = self.reaction_s
        if not 0 <= low <= high:
            raise ValueError(f"reaction_s must be [low, high] with 0 <= low <= high, got {list(self.reaction_s)}")
        if len(self.interviewer.questions) < self.questions_before_assessment:
            raise ValueError(
                f"interviewer.questions has {len(self.interviewer.questions)} questions, fewer than "
                f"questions_before_assessment ({self.questions_before_assessment})"
            )
        return self


# The data of flows/personas/default.yaml, so that an installed (non-editable) package still has it.
_DEFAULT_PERSONA: dict[str, Any] = {
    "name": "Alex (B1, steady)",
    "level": "B1",
    "voice": "en-us",
    "words_per_minute": 120,
    "reaction_s": [0.6, 1.2],
    "questions_before_assessment": 4,
    "interviewer": {"name": "Sam", "voice": "en-us+f3", "words_per_minute": 160, "questions": _DEFAULT_QUESTIONS},
    "answers": [
        "Sure. My name is Alex and I'm twenty-eight years old. I live in Lyon with my girlfriend and I work "
        "for a small company that sells bicycles. I'm learning English because I want to travel more, and "
        "also I need it for my job.",
        "Well, in my free time I like cooking, especially Italian food, and I go running two or three times "
        "a week. At the weekend I often meet my friends and we play board games or watch a football match "
        "together.",
        "Last summer I went to Lisbon for one week. I really liked it because the city is very colourful and "
        "the people were so friendly. We ate a lot of fish and we walked up and down the hills every day, so "
        "I was quite tired in the evening.",
        "I hope to get a better position in my company, maybe as a team manager. I would also like to move to "
        "a bigger flat. And if it's possible, I want to spend a few months in Canada to improve my English.",
        "Hmm, that's a good question. I think I would make more cycle paths, because there is too much traffic "
        "in the centre and it's dangerous for bikes. It would be better for the air, and people would be more "
        "healthy.",
    ],
    "barge_in": None,
}

PERSONA_DIR = Path(__file__).resolve().parent.parent / "flows" / "personas"


def load_persona(path: str | Path | None = None) -> Persona:
    """Read a persona YAML file.

    Args:
        path: a file, or the bare name of a file in flows/personas (``"a2_hesitant"``), or None for
            flows/personas/default.yaml (its embedded copy when the package is installed without it).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid YAML or not a valid persona; the message names the file.
    """
    if path is None:
        path = PERSONA_DIR / "default.yaml"
        if not path.is_file():
            return Persona.model_validate(_DEFAULT_PERSONA)
    path = Path(path)
    if not path.is_file() and path.parent == Path(".") and not path.suffix:
        path = PERSONA_DIR / f"{path}.yaml"
    try:
        return Persona.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'persona'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: invalid persona: {problems}") from None


# ---------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True, slots=True)
class Faults:
    """Misbehaviour to inject, parsed from a spec such as ``"shuffle_done,slow_done=2,collision=2"``.

    Flags take no value; numbers must be positive. 0 means off for the numeric ones.
    """

    shuffle_done: bool = False  # shuffle the done group of a spoken item; sometimes transcript.done after response.done
    drop_transcript_done: bool = False  # never send response.output_audio_transcript.done
    duplicate: bool = False  # send some frames twice with the same event_id, every other response.done among them
    unknown_events: bool = False  # interleave events of types no client knows
    garbage: bool = False  # interleave frames that are not JSON objects
    slow_done: float = 0.0  # delay response.done by this many simulated seconds
    collision: int = 0  # on the K-th response.create the model starts speaking on its own first
    disconnect_after: int = 0  # close the connection after this many frames
    rate_limit: int = 0  # the K-th response.create fails with rate_limit_exceeded

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Parse a comma-separated spec; raise ValueError naming the bad entry."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            name, has_value, raw = (s.strip() for s in entry.partition("="))
            if name not in kinds:
                close = difflib.get_close_matches(name, kinds, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known faults: {', '.join(kinds)}"
                raise ValueError(f"unknown fault {name!r}{hint}")
            if name in values:
                raise ValueError(f"fault {name!r} given twice")
            values[name] = _fault_value(name, kinds[name], raw if has_value else None)
        return cls(**values)

    def __str__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is True:
                parts.append(f.name)
            elif value:
                parts.append(f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
        return ",".join(parts)


def _fault_value(name: str, kind: str, raw: str | None) -> bool | int | float:
    if kind == "bool":
        if raw is not None:
            raise ValueError(f"fault {name!r} takes no value, got {name}={raw}")
        return True
    convert, what = (float, "a positive number of seconds") if kind == "float" else (int, "a positive integer")
    if raw is None:
        raise ValueError(f"fault {name!r} needs a value: {name}=<{what}>")
    try:
        value = convert(raw)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"fault {name!r} needs {what}, got {raw!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Statistics


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


# ---------------------------------------------------------------------------------------------------
# The response builder


@dataclass(frozen=True, slots=True)
class Speech:
    """Something the interviewer says, and its audio (pcm16 24 kHz mono)."""

    text: str
    audio: bytes

    @property
    def seconds(self) -> float:
        return len(self.audio) / (BYTES_PER_MS * 1000)


@dataclass(frozen=True, slots=True)
class Call:
    """A function call the model makes."""

    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Step:
    """One server event of a response, due `at` simulated seconds after the response started."""

    at: float
    event: Event  # without event_id: the session stamps one when it sends
    item_id: str | None = None  # the output item it belongs to
    audio_bytes: int = 0  # pcm bytes it carries (response.output_audio.delta)


@dataclass(frozen=True, slots=True)
class _Output:
    """An output item being planned: a spoken message or a function call."""

    id: str
    index: int
    speech: Speech | None = None
    call: Call | None = None
    call_id: str = ""


class Response:
    """The server events of one response in GA order (realtime.md §2a, §2c, §4), with their times.

    The builder does no I/O: the session streams `steps` and counts how many it sent; a cancel then
    asks `closing(sent, reason)` for the events that end the response early.

    Args:
        new_id: makes unique ids from a prefix (``"resp"``, ``"item"``, ``"call"``).
        rng: timing and chunking; shuffle_rng: the `shuffle_done` fault's choices.
        failure: ``status_details`` of a response that fails at once (the rate-limit fault).
    """

    def __init__(
        self,
        new_id: Callable[[str], str],
        *,
        rng: random.Random,
        shuffle_rng: random.Random | None = None,
        faults: Faults = Faults(),
        speech: Speech | None = None,
        call: Call | None = None,
        metadata: dict[str, str] | None = None,
        voice: str = "alloy",
        conversation_id: str = "conv_sim",
        previous_item_id: str | None = None,
        failure: dict[str, Any] | None = None,
    ):
        self.id = new_id("resp")
        self.metadata = metadata
        self.voice = voice
        self.conversation_id = conversation_id
        self.first_audio_at = 0.0
        self.steps: list[Step] = []
        self._outputs: list[_Output] = []
        self._add(0.0, self._response_event("response.created", "in_progress"))
        if failure is not None:
            self._add(0.0, self._response_event("response.done", "failed", failure))
            return
        self._add(0.0, _rate_limits(rng))
        self.first_audio_at = rng.uniform(*FIRST_AUDIO_S)
        deferred: list[Step] = []
        if speech is not None:
            out = _Output(new_id("item"), 0, speech=speech)
            deferred = self._plan_message(out, previous_item_id, rng, shuffle_rng or rng, faults)
            previous_item_id = out.id
        if call is not None:
            out = _Output(new_id("item"), len(self._outputs), call=call, call_id=new_id("call"))
            self._plan_call(out, previous_item_id)
        done_at = self.steps[-1].at + faults.slow_done
        output = [self._item(o, "completed") for o in self._outputs]
        self._add(done_at, self._response_event("response.done", "completed", None, output))
        self.steps += [Step(done_at, s.event, s.item_id) for s in deferred]

    def closing(self, sent: int, reason: str) -> list[Step]:
        """Events that end the response as ``cancelled`` after the first `sent` steps went out.

        Items already started are finished (status ``incomplete`` unless already done), with the
        transcript heard so far; items not started are left out (realtime.md §5).
        """
        seen = self.steps[:sent]
        steps: list[Step] = []
        output: list[Event] = []
        for out in self._outputs:
            mine = [s.event for s in seen if s.item_id == out.id]
            if not mine:
                break
            sent_types = {e["type"] for e in mine}
            complete = "response.output_item.done" in sent_types
            status = "completed" if complete else "incomplete"
            transcript = out.speech.text if out.speech and complete else _heard(mine)
            finish = self._finish(out, status, transcript) + [self._conversation_item_done(out, status, transcript)]
            if out.call and not complete:  # half a call is no call: never send its arguments as done
                finish = [e for e in finish if e["type"] != "response.function_call_arguments.done"]
            steps += [Step(0.0, e, out.id) for e in finish if e["type"] not in sent_types]
            output.append(self._item(out, status, transcript))
        details = {"type": "cancelled", "reason": reason}
        steps.append(Step(0.0, self._response_event("response.done", "cancelled", details, output)))
        return steps

    # Private: planning.

    def _add(self, at: float, event: Event, item_id: str | None = None, audio_bytes: int = 0) -> None:
        self.steps.append(Step(at, event, item_id, audio_bytes))

    def _open_item(self, at: float, out: _Output, previous_item_id: str | None) -> None:
        self._outputs.append(out)
        item = self._item(out, "in_progress")
        added = {"type": "response.output_item.added", "response_id": self.id, "output_index": out.index}
        self._add(at, {**added, "item": item}, out.id)
        conversation = {"type": "conversation.item.added", "previous_item_id": previous_item_id}
        self._add(at, {**conversation, "item": item}, out.id)

    def _plan_message(
        self, out: _Output, previous_item_id: str | None, rng: random.Random, shuffle_rng: random.Random, faults: Faults
    ) -> list[Step]:
        """Plan a spoken message; return the steps that the shuffle fault holds back past response.done."""
        assert out.speech is not None
        start = self.first_audio_at
        self._open_item(start / 2, out, previous_item_id)
        part = {**self._ref(out), "content_index": 0, "part": {"type": "audio", "transcript": ""}}
        self._add(start / 2, {"type": "response.content_part.added", **part}, out.id)
        deltas = _transcript_deltas(out.speech, start) + _audio_deltas(out.speech, start, rng)
        deltas.sort(key=lambda d: d[0])  # stable: the transcript goes first on a tie
        for at, event, audio_bytes in deltas:
            self._add(at, {**event, **self._ref(out), "content_index": 0}, out.id, audio_bytes)
        end = self.steps[-1].at
        group = self._finish(out, "completed", out.speech.text)
        if faults.drop_transcript_done:
            group = [e for e in group if e["type"] != "response.output_audio_transcript.done"]
        deferred: list[Event] = []
        if faults.shuffle_done:
            shuffle_rng.shuffle(group)
            transcript_done = [e for e in group if e["type"] == "response.output_audio_transcript.done"]
            if transcript_done and shuffle_rng.random() < 0.5:
                group.remove(transcript_done[0])
                deferred = transcript_done
        for event in group + [self._conversation_item_done(out, "completed", out.speech.text)]:
            self._add(end, event, out.id)
        return [Step(end, e, out.id) for e in deferred]

    def _plan_call(self, out: _Output, previous_item_id: str | None) -> None:
        assert out.call is not None
        at = self.steps[-1].at + 0.05
        self._open_item(at, out, previous_item_id)
        arguments = out.call.arguments
        for piece in (arguments[i : i + 16] for i in range(0, len(arguments), 16)):
            at += 0.01
            delta = {"type": "response.function_call_arguments.delta", **self._ref(out), "call_id": out.call_id}
            self._add(at, {**delta, "delta": piece}, out.id)
        for event in self._finish(out, "completed") + [self._conversation_item_done(out, "completed")]:
            self._add(at, event, out.id)

    # Private: event shapes.

    def _ref(self, out: _Output) -> Event:
        return {"response_id": self.id, "item_id": out.id, "output_index": out.index}

    def _item(self, out: _Output, status: str, transcript: str | None = None) -> Event:
        base = {"id": out.id, "object": "realtime.item", "status": status}
        if out.call is not None:
            arguments = out.call.arguments if status == "completed" else ""
            return {**base, "type": "function_call", "name": out.call.name, "call_id": out.call_id, "arguments": arguments}
        if transcript is None and status != "in_progress" and out.speech is not None:
            transcript = out.speech.text
        content = [] if status == "in_progress" else [{"type": "output_audio", "transcript": transcript}]
        return {**base, "type": "message", "role": "assistant", "content": content}

    def _finish(self, out: _Output, status: str, transcript: str | None = None) -> list[Event]:
        """The done events of an output item, in the usual order (realtime.md §2a)."""
        ref = self._ref(out)
        item_done = {"type": "response.output_item.done", "response_id": self.id, "output_index": out.index}
        item_done["item"] = self._item(out, status, transcript)
        if out.call is not None:
            name, arguments = out.call.name, out.call.arguments
            args_done = {"type": "response.function_call_arguments.done", **ref, "call_id": out.call_id}
            return [{**args_done, "name": name, "arguments": arguments}, item_done]
        return [
            {"type": "response.output_audio.done", **ref, "content_index": 0},
            {"type": "response.output_audio_transcript.done", **ref, "content_index": 0, "transcript": transcript},
            {"type": "response.content_part.done", **ref, "content_index": 0, "part": {"type": "audio", "transcript": transcript}},
            item_done,
        ]

    def _conversation_item_done(self, out: _Output, status: str, transcript: str | None = None) -> Event:
        return {"type": "conversation.item.done", "item": self._item(out, status, transcript)}

    def _response_event(
        self, kind: str, status: str, details: dict[str, Any] | None = None, output: list[Event] | None = None
    ) -> Event:
        output = output or []
        response = {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": self.voice}},
            "usage": None if status == "in_progress" else _usage(output),
            "metadata": self.metadata,
        }
        return {"type": kind, "response": response}


def _heard(events: list[Event]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")


def _transcript_deltas(speech: Speech, start: float) -> list[tuple[float, Event, int]]:
    """One delta per word, each due a little before the audio that speaks it."""
    words = re.findall(r"\S+\s*", speech.text)
    total_chars = max(sum(map(len, words)), 1)
    total_ms = speech.seconds * 1000
    deltas, chars = [], 0
    for word in words:
        position_ms = max(0.0, total_ms * chars / total_chars - TRANSCRIPT_LEAD_MS)
        deltas.append((start + position_ms / 1000 / DELIVERY, {"type": "response.output_audio_transcript.delta", "delta": word}, 0))
        chars += len(word)
    return deltas


def _audio_deltas(speech: Speech, start: float, rng: random.Random) -> list[tuple[float, Event, int]]:
    """Chunks of 40-100 ms, sent `DELIVERY` times faster than they play."""
    deltas, offset = [], 0
    while offset < len(speech.audio):
        chunk = speech.audio[offset : offset + rng.randint(*CHUNK_MS) * BYTES_PER_MS]
        at = start + offset / BYTES_PER_MS / 1000 / DELIVERY
        deltas.append((at, {"type": "response.output_audio.delta", "delta": base64.b64encode(chunk).decode()}, len(chunk)))
        offset += len(chunk)
    return deltas


def _rate_limits(rng: random.Random) -> Event:
    return {
        "type": "rate_limits.updated",
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": rng.randint(30000, 39000), "reset_seconds": round(rng.uniform(1, 9), 3)},
        ],
    }


def _usage(output: list[Event]) -> dict[str, Any]:
    """Token counts in the right proportions; nothing reads them but dashboards."""
    words = sum(len(str(c.get("transcript") or "").split()) for item in output for c in item.get("content", []))
    text, audio = round(words * 1.3), round(words * 6.5)
    return {
        "total_tokens": 1200 + text + audio,
        "input_tokens": 1200,
        "output_tokens": text + audio,
        "input_token_details": {"text_tokens": 1000, "audio_tokens": 200, "cached_tokens": 0},
        "output_token_details": {"text_tokens": text, "audio_tokens": audio},
    }


# ---------------------------------------------------------------------------------------------------
# The session: one connection


class _Clock:
    """The simulated time of one session, and the order of everything timed in it (rule 2).

    Each actor (a response stream, a candidate answer) owns a `_Timeline` and awaits `at(t)` before
    each timed action. The action runs once real time has reached ``t / speed`` *and* no other
    timeline has an earlier action pending (ties go to the older timeline). So actions happen in
    simulated-time order even when sending lags behind real time (flow control, a busy loop), and a
    session takes the same path at any speed. A client event is placed at the present: `settle()`
    lets everything due before it happen first.
    """

    def __init__(self, speed: float):
        self.speed = speed
        self.now = 0.0  # simulated seconds of the latest action
        self.changed = asyncio.Event()  # replaced and set whenever a waiter may be able to go on
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._pending: dict[int, float] = {}  # timeline id -> time of its next action
        self._ids = itertools.count()

    def timeline(self, first: float) -> _Timeline:
        """A new actor whose first action is at simulated time `first`; nothing later may pass it."""
        timeline = _Timeline(self, next(self._ids))
        self._pending[timeline.id] = first
        return timeline

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def present(self) -> float:
        """Move `now` up to the wall clock (for what a client event starts) and return it."""
        self.now = max(self.now, self._wall())
        return self.now

    async def settle(self) -> None:
        """Let every action due before the present happen first (a client event arrives now)."""
        present = max(self.now, self._wall())
        while any(t < present for t in self._pending.values()):
            await self.changed.wait()

    def _wall(self) -> float:
        return (self._loop.time() - self._t0) * self.speed

    def _first(self, ident: int) -> bool:
        mine = (self._pending[ident], ident)
        return all((t, other) >= mine for other, t in self._pending.items())

    def _delay(self, t: float) -> float:
        return self._t0 + t / self.speed - self._loop.time()


class _Timeline:
    """One actor's place in the session's simulated time (see `_Clock`)."""

    def __init__(self, clock: _Clock, ident: int):
        self.clock, self.id = clock, ident

    async def at(self, t: float, interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Wait for simulated time `t`, in order with the other timelines; False if `interrupted()`."""
        clock = self.clock
        clock._pending[self.id] = t
        clock.notify()  # moving on may let another timeline go
        while not interrupted():
            delay = clock._delay(t)
            if delay <= 0 and clock._first(self.id):
                clock.now = max(clock.now, t)
                return True
            try:
                async with asyncio.timeout(delay if delay > 0 else None):
                    await clock.changed.wait()
            except TimeoutError:
                pass
        return False

    def close(self) -> None:
        self.clock._pending.pop(self.id, None)
        self.clock.notify()


@dataclass(eq=False)
class _Running:
    """A response being streamed, and how far it got."""

    response: Response
    start: float  # simulated time of its response.created
    timeline: _Timeline
    sent: int = 0
    cancel_reason: str | None = None


_SESSION_KEYS = {
    "type", "model", "output_modalities", "instructions", "audio", "include", "max_output_tokens",
    "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools", "tracing", "truncation",
}  # fmt: skip
_AUDIO_KEYS = {"input": {"format", "noise_reduction", "transcription", "turn_detection"}, "output": {"format", "voice", "speed"}}

_GARBAGE = ["{not json", "[]", "null", '"just a string"', "42", '{"type": "response.done"']


class _Session:
    """One connection: the model, the candidate and the protocol bookkeeping of one conversation."""

    def __init__(self, sim: Simulator, ws: ServerConnection, number: int):
        self.sim, self.ws, self.number = sim, ws, number
        self.persona, self.faults, self.stats = sim.persona, sim.faults, sim.stats
        seed = sim.seed
        self._ids = itertools.count(1)
        self._rng = {name: random.Random(f"{seed}:{name}") for name in ("duplicate", "unknown_events", "garbage")}
        self._seed = seed
        self._draws: Counter[str] = Counter()
        self._handlers = self._handler_table()
        self.clock = _Clock(sim.speed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._frames = 0
        self._dones = 0
        query = parse_qs(urlsplit(ws.request.path).query) if ws.request else {}
        self.session = _default_session(self.new_id("sess"), query.get("model", ["gpt-realtime"])[0])
        self.conversation_id = self.new_id("conv")
        # The conversation as the client has seen it.
        self.items: dict[str, Event] = {}
        self.last_item: str | None = None
        self.audio_bytes: Counter[str] = Counter()  # per assistant item, for truncate
        self.call_ids: set[str] = set()
        self.input_bytes = 0
        # The model's memory.
        self.active: _Running | None = None
        self.creates = 0  # response.create events received
        self.asked = 0  # questions asked
        self.answered = 0  # answers the candidate finished
        self.next_answer = 0
        self.called: set[str] = set()  # tools the model has called

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_S{self.number:03d}{next(self._ids):07d}"

    async def run(self) -> None:
        """Serve the connection until it closes; then stop every task of the session quietly."""
        try:
            if self.ws.request and self.ws.request.headers.get("OpenAI-Beta"):
                message = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
                await self._error("beta_api_shape_disabled", message)
                await self.ws.close()
                return
            await self._send({"type": "session.created", "session": self.session})
            if self.faults.unknown_events:
                await self._frame(self._unknown_event())
            if self.faults.garbage:
                await self._frame(_GARBAGE[0])
            async for message in self.ws:
                await self._receive(message)
        except ConnectionClosed:
            pass
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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
        return json.dumps({"type": kind, "event_id": self.new_id("event"), "note": "the simulator's unknown_events fault"})

    async def _frame(self, text: str) -> None:
        await self.ws.send(text)
        self._frames += 1
        self.stats.events_sent += 1
        if self._frames == self.faults.disconnect_after:
            await self.ws.close(1011, "simulated disconnect")
            raise ConnectionClosed(None, None)

    async def _error(
        self, code: str, message: str, client_event: Event | None = None, *, param: str | None = None
    ) -> None:
        self.stats.errors_sent.append(code)
        client_id = client_event.get("event_id") if isinstance(client_event, dict) else None
        error = {"type": "invalid_request_error", "code": code, "message": message, "param": param, "event_id": client_id}
        await self._send({"type": "error", "error": error})

    async def _emit(self, step: Step) -> None:
        self._note(step)
        await self._send(step.event)

    def _note(self, step: Step) -> None:
        """Update the conversation for a response event before it goes out (rule 4)."""
        event, kind = step.event, step.event["type"]
        if kind in ("conversation.item.added", "conversation.item.done"):
            self._remember(event["item"])
        elif kind == "response.output_audio.delta":
            self.audio_bytes[step.item_id or ""] += step.audio_bytes
        elif kind == "response.function_call_arguments.done":
            self.called.add(event["name"])
        elif kind == "response.done" and self.active and self.active.response.id == event["response"]["id"]:
            self.active = None

    def _remember(self, item: Event) -> None:
        if item["id"] not in self.items:
            self.last_item = item["id"]
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
        except ConnectionClosed:
            pass  # the client left: a pending answer or response just stops
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
        if kind not in handlers:
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
            return await self._error("missing_required_parameter", "Missing required parameter: 'session'.", event, param="session")
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
        _merge(self.session, patch)
        await self._send({"type": "session.updated", "session": self.session})

    async def _on_audio_append(self, event: Event) -> None:
        self.input_bytes += len(str(event.get("audio", ""))) * 3 // 4  # live mic: counted, never heard

    async def _on_audio_commit(self, event: Event) -> None:
        if self.input_bytes < 100 * BYTES_PER_MS:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {self.input_bytes / BYTES_PER_MS:.2f}ms of audio."
            )
            return await self._error("input_audio_buffer_commit_empty", message, event)
        self.input_bytes = 0
        await self._user_item(self.new_id("item"))

    async def _on_audio_clear(self, event: Event) -> None:
        self.input_bytes = 0
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_item_create(self, event: Event) -> None:
        item = event.get("item")
        item = item if isinstance(item, dict) else {}
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            message = f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', and 'function_call_output'."
            return await self._error("invalid_value", message, event, param="item.type")
        if kind == "function_call_output" and item.get("call_id") not in self.call_ids:
            message = f"Tool call ID '{item.get('call_id')}' not found in conversation."
            return await self._error("invalid_value", message, event, param="item.call_id")
        item = {"id": item.get("id") or self.new_id("item"), "object": "realtime.item", "status": "completed", **item}
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
            return await self._error("unsupported_content_type", "Only model output audio messages can be truncated", event)
        if event.get("content_index") != 0:
            message = f"Invalid value: '{event.get('content_index')}'. The item has one content part, 0."
            return await self._error("invalid_value", message, event, param="content_index")
        audio_ms = self.audio_bytes[item["id"]] // BYTES_PER_MS
        if not isinstance(end_ms, int) or end_ms < 0:
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
            return await self._error("response_cancel_not_active", "Cancellation failed: no active response found", event)
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
        if self.creates == self.faults.collision:
            # The model starts speaking on its own just before the engine's request lands.
            own = await self._respond(INTERJECTION, metadata=None)
            self.stats.injected_collisions += 1
            await self._start(own, then=lambda: self._collision(event, own.id))
            return
        if self.creates == self.faults.rate_limit:
            error = {"type": "invalid_request_error", "code": "rate_limit_exceeded", "message": _RATE_LIMIT_MESSAGE}
            details = {"type": "failed", "error": error}
            await self._start(Response(self.new_id, rng=self._next_rng("response"), metadata=metadata, failure=details))
            return
        await self._model_turn(params, metadata)

    async def _collision(self, event: Event, response_id: str) -> None:
        message = (
            f"Conversation already has an active response in progress: {response_id}. "
            "Wait until the response is finished before creating a new one."
        )
        await self._error("conversation_already_has_active_response", message, event)

    # Private: the model.

    async def _model_turn(self, params: Event, metadata: dict[str, str] | None, at: float | None = None) -> None:
        """Decide what the model says (see `_decide`), stream it, and schedule the candidate's answer."""
        text, call, question = self._decide(params)
        response = await self._respond(text, call=call, metadata=metadata)
        running = await self._start(response, at=at)
        if question:
            self._schedule_answer(running)

    def _decide(self, params: Event) -> tuple[str, Call | None, bool]:
        """What the model says, which function it calls, and whether it asked a question.

        Quoted text in the instructions is spoken verbatim; no instructions means a question turn;
        other instructions are spoken as they are.
        """
        instructions = str(params.get("instructions") or "").strip()
        if instructions:
            quoted = re.findall(r'"([^"]+)"|“([^”]+)”', instructions)
            return (" ".join(a or b for a, b in quoted) if quoted else instructions), None, False
        tools = params.get("tools") if isinstance(params.get("tools"), list) else self.session.get("tools") or []
        declared = any(isinstance(t, dict) and t.get("name") == ASSESSMENT_TOOL for t in tools)
        enough = self.answered >= self.persona.questions_before_assessment
        if enough and declared and ASSESSMENT_TOOL not in self.called:
            return CLOSING_LINE, Call(ASSESSMENT_TOOL, json.dumps({"reason": "enough answers"})), False
        questions = self.persona.interviewer.questions
        if self.asked >= len(questions):
            return CLOSING_LINE, None, False
        self.asked += 1
        question = questions[self.asked - 1]
        if self.asked == 1:
            question = f"Hello, and welcome! I'm {self.persona.interviewer.name}, your interviewer today. {question}"
        return question, None, True

    async def _respond(self, text: str, *, call: Call | None = None, metadata: dict[str, str] | None) -> Response:
        interviewer = self.persona.interviewer
        audio = await self.sim.voices.speech(text, interviewer.voice, interviewer.words_per_minute)
        return Response(
            self.new_id,
            rng=self._next_rng("response"),
            shuffle_rng=self._next_rng("shuffle"),
            faults=self.faults,
            speech=Speech(text, audio),
            call=call,
            metadata=metadata,
            voice=str(self._audio("output").get("voice") or "alloy"),
            conversation_id=self.conversation_id,
            previous_item_id=self.last_item,
        )

    def _next_rng(self, purpose: str) -> random.Random:
        """A fresh generator per response or answer, so concurrent tasks never share draws."""
        self._draws[purpose] += 1
        return random.Random(f"{self._seed}:{purpose}:{self._draws[purpose]}")

    def _audio(self, side: str) -> Event:
        audio = self.session.get("audio") or {}
        return audio.get(side) or {}

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
        finally:
            timeline.close()
            if self.active is running:
                self.active = None

    # Private: the candidate.

    def _schedule_answer(self, running: _Running) -> None:
        persona, number = self.persona, self.next_answer
        self.next_answer += 1
        text = persona.answers[min(number, len(persona.answers) - 1)]
        rng = self._next_rng("answer")
        response = running.response
        barge = persona.barge_in if persona.barge_in and persona.barge_in.question == self.asked else None
        if barge is not None:
            delay = response.first_audio_at + barge.after_s
        else:
            audio_s = sum(s.audio_bytes for s in response.steps) / (BYTES_PER_MS * 1000)
            delay = response.first_audio_at + audio_s + rng.uniform(*persona.reaction_s)
        # Take the timeline now, so that the stream cannot run past the answer's start.
        timeline = self.clock.timeline(running.start + delay)
        self._spawn(self._answer(timeline, running.start + delay, text, rng))

    async def _answer(self, timeline: _Timeline, start: float, text: str, rng: random.Random) -> None:
        """The candidate's turn from simulated time `start`: VAD events, the committed user item, its transcript."""
        try:
            await timeline.at(start)
            item_id = self.new_id("item")
            # Without turn detection the real server would wait for the client's commit; the scripted
            # candidate commits anyway (without the VAD events), so that the interview goes on.
            vad = self._audio("input").get("turn_detection")
            if vad:
                started = {"type": "input_audio_buffer.speech_started", "audio_start_ms": round(start * 1000)}
                await self._send({**started, "item_id": item_id})
                if vad.get("interrupt_response") is not False and self.active is not None:
                    self._cancel(self.active, "turn_detected")
            speaking_s = _speaking_seconds(text, self.persona.words_per_minute)
            await timeline.at(start + speaking_s)
            if vad:
                end_ms = round((start + speaking_s) * 1000)
                await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id})
            self.answered += 1
            await self._user_item(item_id)
            if vad and vad.get("create_response") is not False and self.active is None:
                # The server answers the user itself (realtime.md §6, defaults).
                await self._model_turn({}, None, at=self.clock.now)
            if self._audio("input").get("transcription"):
                await timeline.at(self.clock.now + rng.uniform(*TRANSCRIPTION_S))
                usage = {"type": "duration", "seconds": round(speaking_s, 3)}
                completed = {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id}
                await self._send({**completed, "content_index": 0, "transcript": text, "usage": usage})
        finally:
            timeline.close()

    async def _user_item(self, item_id: str) -> None:
        await self._send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": self.last_item})
        content = [{"type": "input_audio", "transcript": None}]
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed"}
        await self._add_item({**item, "content": content})


_RATE_LIMIT_MESSAGE = "Rate limit reached for requests. Please try again in 20ms. (simulated by the rate_limit fault)"


def _speaking_seconds(text: str, wpm: int) -> float:
    return max(len(text.split()), 1) * 60.0 / wpm


def _default_session(session_id: str, model: str) -> Event:
    """What session.created reports before any session.update (realtime.md §6 defaults)."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    vad = {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
        "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
    }  # fmt: skip
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


# ---------------------------------------------------------------------------------------------------
# The server


class _Voices:
    """Audio for the interviewer: espeak-ng when asked for and installed, else a soft tone of the right length."""

    def __init__(self, speak: bool):
        self._speak = speak and tts.available()
        self._cache: dict[tuple[str, str, int], bytes] = {}
        self._tone = _hum(2.0)

    async def speech(self, text: str, voice: str, wpm: int) -> bytes:
        if self._speak:
            key = (text, voice, wpm)
            if key not in self._cache:
                audio = await asyncio.to_thread(tts.synthesize, text, voice, wpm)
                self._cache[key] = audio or self.tone(_speaking_seconds(text, wpm))
            return self._cache[key]
        return self.tone(_speaking_seconds(text, wpm))

    def tone(self, seconds: float) -> bytes:
        """A hum with a syllable-rate envelope: it sounds like speech from afar and costs one slice."""
        size = round(seconds * 1000) * BYTES_PER_MS
        repeats = -(-size // len(self._tone))
        return (self._tone * repeats)[:size] if repeats > 1 else self._tone[:size]


def _hum(seconds: float) -> bytes:
    """`seconds` of hum; periodic every 0.25 s but for the noise, so it tiles without a click."""
    t = np.arange(int(seconds * tts.RATE)) / tts.RATE
    voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t) + 0.25 * np.sin(2 * np.pi * 420 * t)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)  # four syllables a second
    noise = np.random.default_rng(0).normal(0, 0.05, t.size)
    return np.round(2500 * syllables * (voice + noise)).astype("<i2").tobytes()


class Simulator:
    """A Realtime-protocol server on a local port; one `_Session` per connection.

    Not started yet: ``async with simulator(speed=50) as sim: ... sim.url ...`` starts it (then `url`
    is set); leaving closes every connection and stops it.

    Args:
        port: 0 picks a free port.
        persona: a `Persona`, a persona file or name, or None for the default persona.
        seed: every random choice follows from it.
        faults: a `Faults` or its spec string; `Faults.parse` explains bad specs.
        speed: divides every simulated delay (50 runs a 5-minute interview in 6 seconds).
        voices: speak with espeak-ng when it is installed (slower; off keeps tests fast).

    Raises:
        ValueError: bad faults spec, bad persona or non-positive speed.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        persona: Persona | str | Path | None = None,
        seed: int = 0,
        faults: Faults | str = "",
        speed: float = 1.0,
        voices: bool = False,
    ):
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.host, self.port = host, port
        self.persona = persona if isinstance(persona, Persona) else load_persona(persona)
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self.seed, self.speed = seed, speed
        self.stats = SimStats()
        self.voices = _Voices(voices)
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/realtime``; the SDK wants the part before ``/realtime`` as websocket_base_url."""
        if self._server is None:
            raise RuntimeError("the simulator is not started: use `async with simulator(...) as sim`")
        host, port = self._server.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{port}/v1/realtime"

    async def __aenter__(self) -> Simulator:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=_only_realtime_path,
            max_size=16 * 2**20,  # an input_audio_buffer.append may carry up to 15 MiB
            compression=None,  # audio frames are base64 noise; deflate would only cost CPU
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats.sessions += 1
        await _Session(self, ws, self.stats.sessions).run()


def _only_realtime_path(connection: ServerConnection, request: Any) -> Any:
    if urlsplit(request.path).path.rstrip("/") != "/v1/realtime":
        return connection.respond(HTTPStatus.NOT_FOUND, "The simulator serves only /v1/realtime\n")
    return None  # any query string and any Authorization header are fine


simulator = Simulator  # the factory the rest of the engine calls: simulator(...) -> Simulator


async def run_forever(host: str = "127.0.0.1", port: int = 8765, *, voices: bool = True, **options: Any) -> None:
    """Serve until cancelled (`engine sim`); print one line that ends with the URL.

    Args:
        options: ``persona``, ``seed``, ``faults``, ``speed``, as for `Simulator`.
    """
    async with Simulator(host, port, voices=voices, **options) as sim:
        print(f"Realtime simulator listening on {sim.url}", flush=True)
        await asyncio.Future()
