"""The server events of one response in GA order (realtime.md §2a, §2c, §4), with their times.

No I/O: the session streams `Response.steps` and, on a cancel, asks `closing()` for the events that
end the response early.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .faults import Faults
from .model import Call

__all__ = ["Response", "Speech", "Step", "BYTES_PER_MS", "DELIVERY", "failure_details"]

Event = dict[str, Any]

BYTES_PER_MS = 48  # pcm16, 24 kHz, mono
DELIVERY = 4.0  # audio leaves the server this many times faster than real time
CHUNK_MS = (40, 100)  # size range of one output_audio.delta
TRANSCRIPT_LEAD_MS = 300  # the transcript runs ahead of the audio, as on the real server
FIRST_AUDIO_S = (0.2, 0.6)  # response.create -> first audio delta, unless the scenario says otherwise

_RATE_LIMIT_MESSAGE = "Rate limit reached for requests. Please try again in 20ms. (simulated)"
_SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that! (simulated)"


_NO_FAULTS = Faults()


def failure_details(kind: str) -> dict[str, Any]:
    """`status_details` of a failed response: a rate limit or a server error (realtime.md §3)."""
    if kind == "rate_limit":
        error = {"type": "invalid_request_error", "code": "rate_limit_exceeded", "message": _RATE_LIMIT_MESSAGE}
    else:
        error = {"type": "server_error", "code": "server_error", "message": _SERVER_ERROR_MESSAGE}
    return {"type": "failed", "error": error}


@dataclass(frozen=True, slots=True)
class Speech:
    """Something the interviewer says, and its audio (pcm16 24 kHz mono)."""

    text: str
    audio: bytes

    @property
    def seconds(self) -> float:
        return len(self.audio) / (BYTES_PER_MS * 1000)


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
        failure: ``status_details`` of a response that fails at once (`failure_details`).
        first_audio: the range of seconds from response.create to the first audio (model latency).
    """

    def __init__(
        self,
        new_id: Callable[[str], str],
        *,
        rng: random.Random,
        shuffle_rng: random.Random | None = None,
        faults: Faults = _NO_FAULTS,
        speech: Speech | None = None,
        call: Call | None = None,
        metadata: dict[str, str] | None = None,
        voice: str = "alloy",
        conversation_id: str = "conv_sim",
        previous_item_id: str | None = None,
        failure: dict[str, Any] | None = None,
        first_audio: tuple[float, float] = FIRST_AUDIO_S,
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
        self.first_audio_at = rng.uniform(*first_audio)
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

    @property
    def audio_seconds(self) -> float:
        """The length of the response's audio."""
        return sum(s.audio_bytes for s in self.steps) / (BYTES_PER_MS * 1000)

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
        at = max(self.steps[-1].at, self.first_audio_at / 2) + 0.05
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
            return {
                **base,
                "type": "function_call",
                "name": out.call.name,
                "call_id": out.call_id,
                "arguments": arguments,
            }
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
            {
                "type": "response.content_part.done",
                **ref,
                "content_index": 0,
                "part": {"type": "audio", "transcript": transcript},
            },
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
        deltas.append(
            (
                start + position_ms / 1000 / DELIVERY,
                {"type": "response.output_audio_transcript.delta", "delta": word},
                0,
            )
        )
        chars += len(word)
    return deltas


def _audio_deltas(speech: Speech, start: float, rng: random.Random) -> list[tuple[float, Event, int]]:
    """Chunks of 40-100 ms, sent `DELIVERY` times faster than they play."""
    deltas, offset = [], 0
    while offset < len(speech.audio):
        chunk = speech.audio[offset : offset + rng.randint(*CHUNK_MS) * BYTES_PER_MS]
        at = start + offset / BYTES_PER_MS / 1000 / DELIVERY
        deltas.append(
            (at, {"type": "response.output_audio.delta", "delta": base64.b64encode(chunk).decode()}, len(chunk))
        )
        offset += len(chunk)
    return deltas


def _rate_limits(rng: random.Random) -> Event:
    return {
        "type": "rate_limits.updated",
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {
                "name": "tokens",
                "limit": 40000,
                "remaining": rng.randint(30000, 39000),
                "reset_seconds": round(rng.uniform(1, 9), 3),
            },
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
