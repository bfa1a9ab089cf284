"""Builders for server and engine events, and `feed` for scripted (t, event) traces.

Server events are built as the wire dicts the simulator and the real service send, then passed
through `events.normalise`, so core tests exercise the same path as a live session.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any, Iterable

from engine import flow as flowmod
from engine.effects import Effect, Send
from engine.events import Event, normalise
from engine.interview import Interview

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
_ids = itertools.count(1)


def server(raw: dict[str, Any]) -> Event:
    """A server event with a fresh event_id, normalised like a received frame."""
    return normalise({"event_id": f"sev_{next(_ids)}", **raw})


def created(rid: str, tag: str | None = None) -> Event:
    metadata = {"engine_request": tag} if tag else {}
    return server({"type": "response.created", "response": {"id": rid, "status": "in_progress", "metadata": metadata}})


def audio(rid: str, item: str, ms: int) -> Event:
    pcm = b"\x00\x00" * (24 * ms)  # 48 bytes per ms
    return server({"type": "response.output_audio.delta", "response_id": rid, "item_id": item,
                   "output_index": 0, "content_index": 0, "delta": base64.b64encode(pcm).decode()})


def audio_done(rid: str, item: str) -> Event:
    return server({"type": "response.output_audio.done", "response_id": rid, "item_id": item})


def transcript_done(rid: str, item: str, text: str, beta: bool = False) -> Event:
    kind = "response.audio_transcript.done" if beta else "response.output_audio_transcript.done"
    return server({"type": kind, "response_id": rid, "item_id": item, "transcript": text})


def tool_call(rid: str, call_id: str, name: str, arguments: str = "{}") -> Event:
    return server({"type": "response.function_call_arguments.done", "response_id": rid, "item_id": f"fc_{call_id}",
                   "call_id": call_id, "name": name, "arguments": arguments})


def done(rid: str, tag: str | None = None, status: str = "completed", output: list | None = None,
         error: dict | None = None) -> Event:
    response: dict[str, Any] = {"id": rid, "status": status, "output": output or [],
                                "metadata": {"engine_request": tag} if tag else {}}
    if error:
        response["status_details"] = {"type": status, "error": error}
    return server({"type": "response.done", "response": response})


def error(code: str | None, message: str = "", event_id: str | None = None) -> Event:
    return server({"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message,
                                              "param": None, "event_id": event_id}})


def speech_started(item: str) -> Event:
    return server({"type": "input_audio_buffer.speech_started", "item_id": item, "audio_start_ms": 0})


def speech_stopped(item: str) -> Event:
    return server({"type": "input_audio_buffer.speech_stopped", "item_id": item, "audio_end_ms": 0})


def committed(item: str) -> Event:
    """The candidate's turn on `item` is over: the server committed its audio."""
    return server({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": None})


def answer(item: str, text: str) -> Event:
    return server({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                   "content_index": 0, "transcript": text})


def playback_done(rid: str, item: str | None = None) -> Event:
    return Event("playback.done", response_id=rid, item_id=item)


def playback_stopped(rid: str | None, item: str | None, played_ms: int, dropped: Iterable[str] = ()) -> Event:
    return Event("playback.stopped", response_id=rid, item_id=item,
                 data={"played_ms": played_ms, "dropped": list(dropped)})


def job_done(name: str, result: Any) -> Event:
    return Event(f"job.{name}.done", data={"result": result})


def job_failed(name: str, why: str = "boom") -> Event:
    return Event(f"job.{name}.failed", data={"error": why})


def load_flow(name: str) -> flowmod.Flow:
    return flowmod.load(FLOWS / name)


def flow_from(text: str) -> flowmod.Flow:
    flow, problems = flowmod.parse(text, "test.yaml")
    assert flow is not None, "\n".join(map(str, problems))
    return flow


def feed(iv: Interview, trace: Iterable[tuple[float, Event | None]]) -> list[Effect]:
    """Run a scripted trace; `None` as the event means "only time passes" (advance)."""
    out: list[Effect] = []
    for t, event in trace:
        out += iv.advance(t) if event is None else iv.receive(event, t)
    return out


def sends(effects: Iterable[Effect], kind: str | None = None) -> list[dict]:
    return [dict(e.event) for e in effects if isinstance(e, Send) and (kind is None or e.event["type"] == kind)]


def tags(effects: Iterable[Effect]) -> list[str]:
    """The engine_request tags of the response.create events among `effects`."""
    return [e["response"]["metadata"]["engine_request"] for e in sends(effects, "response.create")]
