"""Dead air between turns: the engine against the three ways people wait for the model today.

    python -m benchmarks.dead_air [--scenarios N] [--seed S] [--quick] [--json FILE]

The sequence is the end of the example interview (flows/assessment.yaml): the interviewer asks a
question, the candidate answers, the model replies and calls `trigger_assessment`, then ack ->
summary -> goodbye, and the session hangs up. Every strategy runs on the SAME seeded scenarios
against the SAME simulated server, network, candidate, assessment job and speaker:

  (a) sleep3       hand-written asyncio: `await asyncio.sleep(3)` after `response.done`
  (b) transcript   hand-written asyncio: `await transcript_done[response_id].wait()`
                   (an asyncio.Event per response id, set on response.output_audio_transcript.done)
  (c) hybrid       (b) under `asyncio.wait_for(..., 5)`
  (d) engine-heard the real `Interview` core, benchmarks/flows/playback_aware.yaml: every next turn
                   waits for `all: [response.done, playback.done]`
  (e) engine       the real `Interview` core, flows/assessment.yaml as shipped: the next turn is
                   requested once the previous response is done on the server; its audio queues
  (e') = (e), but after End the queued audio plays out before the hang-up (the wait for it
                   bounded by the audio itself, up to DRAIN_CAP_S, instead of a fixed time)
  (f) bound        the lower bound: each create is sent the moment its inputs exist (the reply's:
                   the answer's commit, not its transcript) and the server (only for this row)
                   queues it until the previous response is done, so generation starts at the
                   earliest instant the protocol could allow

How time works: everything runs on `engine.vloop.VirtualLoop`, a stock asyncio event loop
whose clock jumps to the next timer whenever all tasks wait (no wall time passes). (a)-(c) are
real asyncio code as people write it; (d)/(e) drive the real core through a loop modelled on
engine/runner.py; the world (server, network, candidate, speaker) is callbacks on the same loop.

The world, per scenario (all draws seeded by the scenario's seed, identical for every strategy):
- response audio 1-20 s (uniform, every response), time to first audio 0.2-1.5 s, audio streamed
  at 4x real time in 0.5 s chunks (engine/simulator.py streams at 4x too);
- transcript.done: on time, late by 5-35 s (P_LATE) or never sent (P_MISSING) (realtime.md §2b, §8);
- response.done 1-20 ms after the last item's done events (realtime.md §2b: "batched within a few
  milliseconds"); the reply's function call arguments take 0.1-0.5 s after its spoken message;
- network: one-way latency 10-80 ms per scenario plus per-message jitter (exponential, mean 8 ms,
  capped at 100 ms), in-order delivery in each direction (a WebSocket is a TCP stream);
- candidate: starts answering 0.3-1.5 s after the question has been heard, speaks 3-20 s; server
  VAD reports the end 0.7 s later (the flow's silence_duration_ms) and commits the turn; its
  transcript comes 0.3-1.5 s after that (the simulator's default transcription delay);
- assessment job: 0.5-10 s from the tool call;
- speaker: strict FIFO, audio plays from its first chunk; a response's audio ends at
  max(its first chunk's arrival, previous end) + its length. The same speaker for every strategy:
  the most favourable one for the hand-written baselines (they never talk over themselves);
- the candidate hangs up after PATIENCE s of silence (a stalled session).

Measured per strategy: dead air per transition (answer->reply, then between consecutive interviewer
utterances; question->answer is the candidate's time and is not counted), overlaps (two voices at
once), cut-offs (audio not heard in full because the session ended), collisions (a response.create
that reached the server while a response was in progress), stalls, total interview time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import flow as flowmod
from engine.effects import CancelJob, End, EndAudio, Play, Send, StartJob, StopPlayback
from engine.events import Event, normalise
from engine.interview import Interview
from engine.vloop import Deadlock, Timeline, VirtualLoop

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FLOW = ROOT / "flows" / "assessment.yaml"
HEARD_FLOW = Path(__file__).resolve().parent / "flows" / "playback_aware.yaml"

# Scenario distributions (seconds). Printed with the results.
AUDIO_S = (1.0, 20.0)
TTFA_S = (0.2, 1.5)
P_LATE, LATE_S = 0.10, (5.0, 35.0)
P_MISSING = 0.03
DONE_LAG_S = (0.001, 0.020)
ARGS_S = (0.1, 0.5)
ASSESSMENT_S = (0.5, 10.0)
REACTION_S = (0.3, 1.5)
ANSWER_S = (3.0, 20.0)
VAD_SILENCE_S = 0.7
TRANSCRIPTION_S = (0.3, 1.5)  # the simulator's default (engine/sim/scenario.py)
LATENCY_S = (0.010, 0.080)
JITTER_MEAN_S, JITTER_CAP_S = 0.008, 0.100
DELIVERY = 4.0  # audio leaves the server this many times faster than real time
CHUNK_S = 0.5
PATIENCE = 60.0  # seconds of silence after which the candidate hangs up
CAP_S = 900.0  # a run longer than this (simulated) is a bug in the benchmark
EPS = 1e-6  # timers may run a clock-resolution early: compare simulated times with this slack

KINDS = ("question", "reply", "ack", "summary", "goodbye")
STRATEGIES = {
    "a": "(a) sleep(3) after response.done",
    "b": "(b) await transcript.done",
    "c": "(c) transcript.done, wait_for 5 s",
    "d": "(d) engine, waits for playback",
    "e": "(e) engine, queues behind (shipped flow)",
    "e2": "(e') = (e), hang-up waits for all queued audio",
    "f": "(f) lower bound",
}
DEFAULT_STRATEGIES = ("a", "b", "c", "d", "e", "e2", "f")
DRAIN_CAP_S = 120.0  # (e'): the longest a runner would let queued audio play after End
BYTES_PER_S = 48_000  # pcm16 24 kHz mono


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    seed: int
    audio_s: dict[str, float]
    ttfa_s: dict[str, float]
    transcript_delay: dict[str, float | None]  # 0 on time, >0 late, None never sent
    done_lag_s: dict[str, float]
    args_s: float
    assessment_s: float
    reaction_s: float
    answer_s: float
    transcription_s: float
    latency_s: float
    jitter_down: dict[str, list[float]] = field(repr=False)  # per response kind (and "vad"), per event
    jitter_up: dict[str, float] = field(repr=False)  # per create kind (and "other")

    @classmethod
    def make(cls, seed: int) -> Scenario:
        rnd = random.Random(seed)
        u = rnd.uniform

        def transcript() -> float | None:
            x = rnd.random()
            return None if x < P_MISSING else (u(*LATE_S) if x < P_MISSING + P_LATE else 0.0)

        audio = {k: u(*AUDIO_S) for k in KINDS}
        ttfa = {k: u(*TTFA_S) for k in KINDS}
        delay = {k: transcript() for k in KINDS}
        lag = {k: u(*DONE_LAG_S) for k in KINDS}
        rng = np.random.default_rng(seed)
        jit = np.minimum(rng.exponential(JITTER_MEAN_S, size=(len(KINDS) + 1, 128)), JITTER_CAP_S)
        down = {k: jit[i].tolist() for i, k in enumerate((*KINDS, "vad"))}
        up_j = np.minimum(rng.exponential(JITTER_MEAN_S, size=len(KINDS) + 1), JITTER_CAP_S)
        up = {k: float(up_j[i]) for i, k in enumerate((*KINDS, "other"))}
        return cls(seed, audio, ttfa, delay, lag, u(*ARGS_S), u(*ASSESSMENT_S), u(*REACTION_S), u(*ANSWER_S),
                   u(*TRANSCRIPTION_S), u(*LATENCY_S), down, up)


# ---------------------------------------------------------------------------------------------
# The world: network, server, candidate, speaker, assessment, patience


@dataclass
class Heard:
    """One voice on the speaker (or the candidate's answer)."""

    kind: str
    arrived: float  # first chunk reached the client
    start: float
    end: float


@dataclass
class RunResult:
    strategy: str
    seed: int
    gaps: list[tuple[str, float]]
    overlaps: int
    cutoffs: int
    collisions: int
    queued: int  # responses whose first audio arrived while the previous one was still playing
    stalled: bool
    lost: list[str]
    total_s: float


_AUDIO_CACHE: dict[int, str] = {}


def _b64_audio(seconds: float) -> str:
    """Base64 text of `seconds` of pcm16 silence (only its length matters)."""
    n = int(round(seconds * BYTES_PER_S)) // 2 * 2
    text = _AUDIO_CACHE.get(n)
    if text is None:
        chars = -(-n // 3) * 4
        pad = (3 - n % 3) % 3
        text = _AUDIO_CACHE[n] = "A" * (chars - pad) + "=" * pad
    return text


def b64_seconds(text: str) -> float:
    return (len(text) * 3 // 4 - text[-2:].count("=")) / BYTES_PER_S if text else 0.0


def kind_of(create: dict[str, Any], answered: bool) -> str:
    """What the model says for a response.create: read from its instructions, like the simulator."""
    text = str((create.get("response") or {}).get("instructions") or "").lower()
    if "goodbye" in text:
        return "goodbye"
    if "result" in text or "report" in text:
        return "summary"
    if "thank" in text:
        return "ack"
    return "reply" if answered else "question"


class Speaker:
    """Strict FIFO playback: audio plays from its first chunk, one response after another."""

    def __init__(self, world: World):
        self.world = world
        self.cursor = 0.0
        self.voices: dict[str, Heard] = {}  # response id -> what was (or will be) heard
        self.closed_at: float | None = None

    def feed(self, rid: str, seconds: float) -> None:
        if self.closed_at is not None or seconds <= 0:
            return
        now = self.world.now()
        start = max(now, self.cursor)
        self.cursor = start + seconds
        heard = self.voices.get(rid)
        if heard is None:
            heard = self.voices[rid] = Heard(self.world.kinds.get(rid, "?"), now, start, self.cursor)
            self.world.first_audio(rid, heard)
        heard.end = self.cursor
        self.world.sound_until(self.cursor)

    def end(self, rid: str, notify: Callable[[], None]) -> None:
        """Call `notify` once everything fed so far has been heard (the player's playback.done)."""
        self.world.timeline.at(max(self.world.now(), self.cursor), notify)


class World:
    def __init__(self, scenario: Scenario, loop: asyncio.AbstractEventLoop, instructions: dict[str, str],
                 queue_creates: bool = False):
        self.sc = scenario
        self.loop = loop
        self.timeline = Timeline(loop)
        self.instructions = instructions
        self.queue_creates = queue_creates
        self.speaker = Speaker(self)
        self.client: Callable[[dict[str, Any]], None] = lambda raw: None  # the strategy's receiver
        self.kinds: dict[str, str] = {}  # response id -> kind
        self.collisions = 0
        self.stalled = False
        self.finished_at: float | None = None
        self.main: asyncio.Task | None = None
        self.answer: Heard | None = None
        self._ids = 0
        self._up_last = self._down_last = -1.0
        self._down_index: dict[str, int] = defaultdict(int)
        self._active: str | None = None
        self._queue: list[dict[str, Any]] = []
        self._answered = False
        self._responses = 0
        self._silence_until = 0.0

    def now(self) -> float:
        return self.loop.time()

    # Client side: what strategies call.

    def send(self, event: dict[str, Any]) -> None:
        """The client sends a client event; it reaches the server after the uplink latency."""
        if self.finished_at is not None:
            return
        key = kind_of(event, self._answered) if event.get("type") == "response.create" else "other"
        arrival = max(self.now() + self.sc.latency_s + self.sc.jitter_up[key], self._up_last + 1e-6)
        self._up_last = arrival
        self.timeline.at(arrival, self._server_receive, event)

    def hang_up(self) -> None:
        if self.finished_at is None:
            self.finished_at = self.now()
            self.speaker.closed_at = self.finished_at
            self.timeline.close()

    async def assess(self) -> dict[str, Any]:
        """The assessment job (client side), as long as the scenario says."""
        await asyncio.sleep(self.sc.assessment_s)
        return {"summary": "Your English is around B1 overall.", "overall": {"band": "B1"}}

    async def heard_all(self) -> None:
        """Wait until everything queued on the speaker has played (the bound's hang-up)."""
        while self.now() < self.speaker.cursor - EPS:
            await asyncio.sleep(self.speaker.cursor - self.now())

    # Speaker and candidate.

    def first_audio(self, rid: str, heard: Heard) -> None:
        if heard.kind == "question" and self.answer is None:
            start = heard.start + self.sc.audio_s["question"] + self.sc.reaction_s
            self.answer = Heard("answer", start, start, start + self.sc.answer_s)
            self.sound_until(self.answer.end)
            up = self.sc.latency_s
            self.timeline.at(start + up, self._emit, {"type": "input_audio_buffer.speech_started",
                                                      "item_id": "item_user", "audio_start_ms": 0}, "vad")
            stopped = self.answer.end + up + VAD_SILENCE_S
            self.timeline.at(stopped, self._emit, {"type": "input_audio_buffer.speech_stopped",
                                                   "item_id": "item_user", "audio_end_ms": 0}, "vad")
            self.timeline.at(stopped, self._emit, {"type": "input_audio_buffer.committed", "item_id": "item_user",
                                                   "previous_item_id": None}, "vad")
            self.timeline.at(stopped, self._committed)
            self.timeline.at(stopped + self.sc.transcription_s, self._transcribed)

    def _committed(self) -> None:
        # The model hears the committed audio: it can answer it before any transcript exists.
        self._answered = True

    def _transcribed(self) -> None:
        self._emit({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_user",
                    "content_index": 0, "transcript": "I hope to get a better position in my company."}, "vad")

    def sound_until(self, t: float) -> None:
        if t > self._silence_until:
            self._silence_until = t
            self.timeline.at(t + PATIENCE, self._patience)

    def _patience(self) -> None:
        if self.finished_at is None and self.now() >= self._silence_until + PATIENCE - EPS:
            self.stalled = True
            self.hang_up()
            if self.main is not None:
                self.main.cancel()

    # Server side.

    def _emit(self, raw: dict[str, Any], stream: str) -> None:
        """The server sends an event; it reaches the client after the downlink latency, in order."""
        self._ids += 1
        raw = {"event_id": f"event_{self._ids}", **raw}
        i = self._down_index[stream]
        self._down_index[stream] = i + 1
        jitter = self.sc.jitter_down[stream][i % 128]
        arrival = max(self.now() + self.sc.latency_s + jitter, self._down_last + 1e-6)
        self._down_last = arrival
        if raw["type"] == "response.done" and self._active == raw["response"]["id"]:
            self._active = None
            if self._queue:
                self._start(self._queue.pop(0))
        self.timeline.at(arrival, self._deliver, raw)

    def _deliver(self, raw: dict[str, Any]) -> None:
        if self.finished_at is None:
            self.client(raw)

    def _server_receive(self, event: dict[str, Any]) -> None:
        if event.get("type") != "response.create":
            return  # session.update, function_call_output items: nothing this benchmark needs
        if self._active is not None:
            if self.queue_creates:
                self._queue.append(event)
                return
            self.collisions += 1
            message = (f"Conversation already has an active response in progress: {self._active}. "
                       "Wait until the response is finished before creating a new one.")
            self._emit({"type": "error", "error": {"type": "invalid_request_error",
                                                   "code": "conversation_already_has_active_response",
                                                   "message": message, "param": None,
                                                   "event_id": event.get("event_id")}}, "vad")
            return
        self._start(event)

    def _start(self, create: dict[str, Any]) -> None:
        kind = kind_of(create, self._answered)
        self._responses += 1
        n = self._responses
        rid, item = f"resp_{n}", f"item_{n}"
        self.kinds[rid] = kind
        self._active = rid
        metadata = (create.get("response") or {}).get("metadata")
        sc, g = self.sc, self.now()
        ttfa, length = sc.ttfa_s[kind], sc.audio_s[kind]
        at = self.timeline.at
        ref = {"response_id": rid, "item_id": item, "output_index": 0}
        message = {"id": item, "type": "message", "role": "assistant", "status": "in_progress", "content": []}

        def emit(t: float, raw: dict[str, Any]) -> None:
            at(t, self._emit, raw, kind)

        emit(g, {"type": "response.created", "response": {"id": rid, "status": "in_progress", "output": [],
                                                          "metadata": metadata}})
        emit(g + ttfa / 2, {"type": "response.output_item.added", "response_id": rid, "output_index": 0,
                            "item": message})
        chunks = max(1, math.ceil(length / CHUNK_S - 1e-9))
        for i in range(chunks):
            seconds = min(CHUNK_S, length - i * CHUNK_S)
            emit(g + ttfa + i * CHUNK_S / DELIVERY,
                 {"type": "response.output_audio.delta", **ref, "content_index": 0, "delta": _b64_audio(seconds)})
        end = g + ttfa + (chunks - 1) * CHUNK_S / DELIVERY
        emit(end, {"type": "response.output_audio.done", **ref, "content_index": 0})
        delay = sc.transcript_delay[kind]
        transcript = {"type": "response.output_audio_transcript.done", **ref, "content_index": 0,
                      "transcript": f"({kind})"}
        if delay is not None:
            emit(end + delay, transcript)
        done_item = {**message, "status": "completed", "content": [{"type": "output_audio", "transcript": f"({kind})"}]}
        emit(end, {"type": "response.content_part.done", **ref, "content_index": 0,
                   "part": {"type": "audio", "transcript": f"({kind})"}})
        emit(end, {"type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": done_item})
        output = [done_item]
        if kind == "reply":
            call = {"id": f"fc_{n}", "type": "function_call", "status": "completed", "name": "trigger_assessment",
                    "call_id": f"call_{n}", "arguments": '{"reason": "enough answers"}'}
            emit(end + 0.01, {"type": "response.output_item.added", "response_id": rid, "output_index": 1,
                              "item": {**call, "status": "in_progress", "arguments": ""}})
            end += sc.args_s
            emit(end, {"type": "response.function_call_arguments.done", "response_id": rid, "item_id": call["id"],
                       "output_index": 1, "call_id": call["call_id"], "name": call["name"],
                       "arguments": call["arguments"]})
            emit(end, {"type": "response.output_item.done", "response_id": rid, "output_index": 1, "item": call})
            output.append(call)
        emit(end + sc.done_lag_s[kind], {"type": "response.done", "response": {
            "id": rid, "status": "completed", "status_details": None, "output": output, "metadata": metadata}})

    # Measurement.

    def result(self, strategy: str) -> RunResult:
        end = self.finished_at if self.finished_at is not None else self.now()
        voices = sorted(self.speaker.voices.values(), key=lambda h: h.start)
        cutoffs = sum(1 for h in voices if h.end > end + 1e-9)
        heard = [h for h in voices if h.start < end]
        queued = sum(1 for prev, h in zip(heard, heard[1:], strict=False) if h.arrived < prev.end - 1e-9)
        timeline = sorted(heard + ([self.answer] if self.answer and self.answer.start < end else []),
                          key=lambda h: h.start)
        overlaps = sum(1 for prev, h in zip(timeline, timeline[1:], strict=False) if h.start < prev.end - 1e-6)
        gaps: list[tuple[str, float]] = []
        after_answer = False
        for prev, h in zip(timeline, timeline[1:], strict=False):
            if prev.kind == "answer":
                after_answer = True
            if after_answer:
                gaps.append((f"{prev.kind}->{h.kind}", max(0.0, h.start - min(prev.end, end))))
        if self.stalled:
            last = timeline[-1].kind if timeline else "start"
            gaps.append((f"{last}->(hung up)", PATIENCE))
        spoken = {h.kind for h in heard}
        lost = [k for k in KINDS if k not in spoken]
        return RunResult(strategy, self.sc.seed, gaps, overlaps, cutoffs, self.collisions, queued, self.stalled,
                         lost, end)


# ---------------------------------------------------------------------------------------------
# Strategies (a), (b), (c): hand-written asyncio, as people write it


class HandWritten:
    """A reader task dispatching on `type`, an asyncio.Event per response id, queues for the rest.

    `turn_end` is the only thing that differs between (a), (b) and (c): how `say` decides that
    the model's turn is over and the next response.create may go.
    """

    def __init__(self, world: World, turn_end: str):
        self.world = world
        self.turn_end = turn_end
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.created: asyncio.Queue[str] = asyncio.Queue()  # response ids, in order of response.created
        self.response_done: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.transcript_done: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.answers: asyncio.Queue[str] = asyncio.Queue()
        self.tool_calls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.assessment: asyncio.Task | None = None
        self.errors: list[dict[str, Any]] = []
        world.client = self.inbox.put_nowait

    async def reader(self) -> None:
        while True:
            event = await self.inbox.get()
            match event["type"]:
                case "response.created":
                    self.created.put_nowait(event["response"]["id"])
                case "response.output_audio.delta" | "response.audio.delta":
                    self.world.speaker.feed(event["response_id"], b64_seconds(event["delta"]))
                case "response.output_audio_transcript.done" | "response.audio_transcript.done":
                    self.transcript_done[event["response_id"]].set()
                case "response.done":
                    self.response_done[event["response"]["id"]].set()
                case "response.function_call_arguments.done":
                    self.tool_calls.put_nowait(event)
                    self.assessment = asyncio.ensure_future(self.world.assess())  # start it at once
                case "conversation.item.input_audio_transcription.completed":
                    self.answers.put_nowait(event["transcript"])
                case "error":
                    self.errors.append(event["error"])  # logged; nobody retries

    async def say(self, instructions: str | None) -> None:
        response = {"instructions": instructions} if instructions else {}
        self.world.send({"type": "response.create", "response": response})
        if self.turn_end == "sleep3":
            rid = await self.created.get()
            await self.response_done[rid].wait()
            await asyncio.sleep(3)
        elif self.turn_end == "transcript":
            rid = await self.created.get()
            await self.transcript_done[rid].wait()
        else:  # hybrid
            with contextlib.suppress(TimeoutError):  # "the event did not come: carry on"
                await asyncio.wait_for(self._transcript_of_next(), 5)

    async def _transcript_of_next(self) -> None:
        rid = await self.created.get()
        await self.transcript_done[rid].wait()

    async def interview(self) -> None:
        ins = self.world.instructions
        reader = asyncio.ensure_future(self.reader())
        try:
            self.world.send({"type": "session.update", "session": {"type": "realtime"}})
            await self.say(None)  # the question
            await self.answers.get()
            await self.say(None)  # the model replies and calls trigger_assessment
            call = await self.tool_calls.get()
            self.world.send({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": call["call_id"], "output": '{"status": "started"}'}})
            await self.say(ins["ack"])
            result = await self.assessment
            await self.say(ins["summary"].replace("{assessment.summary}", result["summary"]))
            await self.say(ins["goodbye"])
            self.world.hang_up()
        finally:
            reader.cancel()
            if self.assessment is not None:
                self.assessment.cancel()


# ---------------------------------------------------------------------------------------------
# Strategies (d), (e): the real core, driven like engine/runner.py drives it


async def engine_session(world: World, flow: flowmod.Flow, drain_at_end: bool = False) -> Interview:
    """`drain_at_end` models a proposed change: after an End with ok=True, the audio already queued
    plays out (up to DRAIN_CAP_S) before the hang-up, i.e. the wait for queued audio is bounded by
    that audio rather than by a fixed time."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    world.client = lambda raw: inbox.put_nowait(normalise(raw))
    iv = Interview(flow)
    jobs: dict[str, asyncio.Task] = {}

    async def job(name: str) -> None:
        result = await world.assess()
        inbox.put_nowait(Event(f"job.{name}.done", data={"result": result}))

    def execute(effects: list) -> None:
        for effect in effects:
            match effect:
                case Send(event=event):
                    world.send(dict(event))
                case Play(response_id=rid, audio=audio):
                    world.speaker.feed(rid, b64_seconds(audio))
                case EndAudio(response_id=rid):
                    world.speaker.end(rid, lambda rid=rid: inbox.put_nowait(Event("playback.done", response_id=rid)))
                case StopPlayback():
                    raise AssertionError("no barge-in in this benchmark")
                case StartJob(name=name):
                    jobs[name] = asyncio.ensure_future(job(name))
                case CancelJob(name=name):
                    if name in jobs:
                        jobs.pop(name).cancel()
                case End() as end:
                    ok = end.ok
                    if not (drain_at_end and ok):
                        world.hang_up()

    try:
        execute(iv.start(loop.time()))
        while not iv.done:
            deadline = iv.next_deadline()
            try:
                async with asyncio.timeout_at(deadline):
                    event = await inbox.get()
            except TimeoutError:
                execute(iv.advance(max(loop.time(), deadline or 0.0)))
            else:
                execute(iv.receive(event, loop.time()))
        if world.finished_at is None:  # (e'): End was ok; the queued audio plays out first
            limit = loop.time() + DRAIN_CAP_S
            while loop.time() < min(world.speaker.cursor, limit) - EPS:
                await asyncio.sleep(min(world.speaker.cursor, limit) - loop.time())
            world.hang_up()
    finally:
        for task in jobs.values():
            task.cancel()
    return iv


# ---------------------------------------------------------------------------------------------
# (f) the lower bound


async def lower_bound(world: World) -> None:
    """Each create goes out the moment its inputs exist; the server queues it (this row only)."""
    ins = world.instructions
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    world.client = inbox.put_nowait
    answered = asyncio.Event()
    call: asyncio.Future = asyncio.get_running_loop().create_future()

    async def reader() -> None:
        while True:
            event = await inbox.get()
            kind = event["type"]
            if kind == "response.output_audio.delta":
                world.speaker.feed(event["response_id"], b64_seconds(event["delta"]))
            elif kind == "input_audio_buffer.committed":
                answered.set()  # the model hears the committed audio: no transcript is needed to reply
            elif kind == "response.function_call_arguments.done" and not call.done():
                call.set_result(event)

    task = asyncio.ensure_future(reader())
    try:
        world.send({"type": "response.create", "response": {}})
        await answered.wait()
        world.send({"type": "response.create", "response": {}})
        await call
        assessment = asyncio.ensure_future(world.assess())
        world.send({"type": "response.create", "response": {"instructions": ins["ack"]}})
        result = await assessment
        world.send({"type": "response.create", "response": {
            "instructions": ins["summary"].replace("{assessment.summary}", result["summary"])}})
        world.send({"type": "response.create", "response": {"instructions": ins["goodbye"]}})
        while len(world.speaker.voices) < len(KINDS) or world.now() < world.speaker.cursor - EPS:
            await asyncio.sleep(max(world.speaker.cursor - world.now(), 0.05))
        world.hang_up()
    finally:
        task.cancel()


# ---------------------------------------------------------------------------------------------
# Running


class Bench:
    """Flows and prompts loaded once; `run(strategy, scenario)` plays one interview tail."""

    def __init__(self) -> None:
        self.example = flowmod.load(EXAMPLE_FLOW)
        self.heard = flowmod.load(HEARD_FLOW)
        self.instructions = {name: self._prompt(self.example, name) for name in ("ack", "summary", "goodbye")}

    @staticmethod
    def _prompt(flow: flowmod.Flow, state: str) -> str:
        for action in flow.states[state].enter:
            if action.name == "respond":
                return action.arg.instructions
        raise ValueError(f"{flow.path}: state {state} has no respond")

    def run(self, strategy: str, scenario: Scenario) -> RunResult:
        loop = VirtualLoop()
        try:
            world = World(scenario, loop, self.instructions, queue_creates=strategy == "f")
            coro: Awaitable[Any]
            if strategy in ("a", "b", "c"):
                coro = HandWritten(world, {"a": "sleep3", "b": "transcript", "c": "hybrid"}[strategy]).interview()
            elif strategy == "d":
                coro = engine_session(world, self.heard)
            elif strategy == "e":
                coro = engine_session(world, self.example)
            elif strategy == "e2":
                coro = engine_session(world, self.example, drain_at_end=True)
            elif strategy == "f":
                coro = lower_bound(world)
            else:
                raise ValueError(strategy)

            async def main() -> None:
                world.main = asyncio.current_task()
                guard = loop.call_at(CAP_S, lambda: world.main.cancel())
                try:
                    await coro
                except asyncio.CancelledError:
                    if not world.stalled:
                        raise RuntimeError(f"strategy {strategy} seed {scenario.seed}: ran past {CAP_S} s") from None
                finally:
                    guard.cancel()
                    world.hang_up()

            loop.run_until_complete(main())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            return world.result(strategy)
        except Deadlock as exc:
            raise RuntimeError(f"strategy {strategy} seed {scenario.seed}: {exc}") from None
        finally:
            loop.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(results: dict[str, list[RunResult]]) -> dict[str, dict[str, Any]]:
    bound = results.get("f")
    bound_gaps = [g for r in bound for _, g in r.gaps] if bound else []
    bound_mean = statistics.fmean(bound_gaps) if bound_gaps else float("nan")
    bound_total = statistics.fmean(r.total_s for r in bound) if bound else float("nan")
    out: dict[str, dict[str, Any]] = {}
    for key, runs in results.items():
        gaps = [g for r in runs for _, g in r.gaps]
        per_label: dict[str, list[float]] = defaultdict(list)
        for r in runs:
            for label, g in r.gaps:
                per_label[label].append(g)
        mean = statistics.fmean(gaps) if gaps else float("nan")
        total = statistics.fmean(r.total_s for r in runs)
        out[key] = {
            "name": STRATEGIES[key],
            "scenarios": len(runs),
            "transitions": len(gaps),
            "mean_s": mean,
            "p50_s": percentile(gaps, 50),
            "p95_s": percentile(gaps, 95),
            "max_s": max(gaps) if gaps else float("nan"),
            "overlaps": sum(r.overlaps for r in runs),
            "cutoffs": sum(r.cutoffs for r in runs),
            "cutoff_scenarios": sum(1 for r in runs if r.cutoffs),
            "collisions": sum(r.collisions for r in runs),
            "collision_scenarios": sum(1 for r in runs if r.collisions),
            "stalls": sum(r.stalled for r in runs),
            "complete": sum(1 for r in runs if not (r.cutoffs or r.stalled or r.lost)),
            "lost_turns": sum(len(r.lost) for r in runs),
            "queued": sum(r.queued for r in runs),
            "total_s": total,
            "ratio_mean": mean / bound_mean if bound_mean else float("inf"),
            "excess_ms": (mean - bound_mean) * 1000,
            "total_ratio": total / bound_total,
            "per_label": {k: {"n": len(v), "mean_s": statistics.fmean(v)} for k, v in sorted(per_label.items())},
            "gaps": gaps,
        }
    return out


def run(scenarios: int, seed: int, strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
        progress: bool = False) -> dict[str, Any]:
    """Every strategy on scenarios seed, seed+1, ..., seed+scenarios-1."""
    bench = Bench()
    results: dict[str, list[RunResult]] = {k: [] for k in strategies}
    timings: dict[str, float] = {}
    cases = [Scenario.make(seed + i) for i in range(scenarios)]
    for key in strategies:
        t0 = time.perf_counter()
        for sc in cases:
            results[key].append(bench.run(key, sc))
        timings[key] = time.perf_counter() - t0
        if progress:
            print(f"  {STRATEGIES[key]}: {scenarios} scenarios in {timings[key]:.1f} s", file=sys.stderr)
    summary = summarise(results)
    # Paired with the bound, scenario by scenario and transition by transition (same label in both).
    for key, runs in results.items():
        paired = []
        if "f" in results:
            for rs, rf in zip(runs, results["f"], strict=False):
                ds, df = dict(rs.gaps), dict(rf.gaps)
                paired += [ds[k] - df[k] for k in ds.keys() & df.keys()]
        summary[key]["paired_excess_ms"] = statistics.fmean(paired) * 1000 if paired else float("nan")
        summary[key]["paired_excess_p95_ms"] = percentile(paired, 95) * 1000 if paired else float("nan")
        summary[key]["paired_excess_max_ms"] = max(paired) * 1000 if paired else float("nan")
        summary[key]["paired_n"] = len(paired)
    return {
        "scenarios": scenarios, "seed": seed, "seeds": f"{seed}..{seed + scenarios - 1}",
        "summary": summary, "timings_s": timings,
        "worst": {k: [asdict(r) for r in sorted(v, key=lambda r: -max((g for _, g in r.gaps), default=0))[:3]]
                  for k, v in results.items()},
        "runs": results,
        "parameters": parameters(),
    }


def parameters() -> dict[str, Any]:
    return {"audio_s": AUDIO_S, "time_to_first_audio_s": TTFA_S, "p_transcript_done_late": P_LATE,
            "late_by_s": LATE_S, "p_transcript_done_missing": P_MISSING, "done_lag_s": DONE_LAG_S,
            "tool_args_s": ARGS_S, "assessment_s": ASSESSMENT_S, "reaction_s": REACTION_S, "answer_s": ANSWER_S,
            "vad_silence_s": VAD_SILENCE_S, "transcription_s": TRANSCRIPTION_S, "one_way_latency_s": LATENCY_S,
            "jitter_mean_s": JITTER_MEAN_S, "jitter_cap_s": JITTER_CAP_S, "delivery_x_realtime": DELIVERY,
            "chunk_s": CHUNK_S, "patience_s": PATIENCE}


TRANSITIONS = ("answer->reply", "reply->ack", "ack->summary", "summary->goodbye")


def table(report: dict[str, Any]) -> str:
    """The main table: every transition of every scenario pooled, per strategy."""
    rows = ["| strategy | transitions | mean dead air | p95 | max | overlaps | cut-offs (scenarios) | "
            "collisions (scenarios) | stalls | complete interviews | total time | mean / bound | "
            "excess over bound, paired |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["summary"].values():
        rows.append(
            f"| {s['name']} | {s['transitions']} | {s['mean_s']:.3f} s | {s['p95_s']:.3f} s | {s['max_s']:.2f} s | "
            f"{s['overlaps']} | {s['cutoffs']} ({s['cutoff_scenarios']}) | {s['collisions']} "
            f"({s['collision_scenarios']}) | {s['stalls']} | {s['complete']}/{s['scenarios']} | "
            f"{s['total_s']:.1f} s | {s['ratio_mean']:.2f}x | {s['paired_excess_ms']:+.1f} ms |")
    return "\n".join(rows)


def transition_table(report: dict[str, Any]) -> str:
    """Mean dead air per kind of transition (n = how many of them were heard at all)."""
    rows = ["| strategy | " + " | ".join(TRANSITIONS) + " | hung up by the candidate |",
            "|---|" + "---:|" * (len(TRANSITIONS) + 1)]
    for s in report["summary"].values():
        cells = []
        for label in TRANSITIONS:
            v = s["per_label"].get(label)
            cells.append(f"{v['mean_s']:.3f} s (n={v['n']})" if v else "-")
        rows.append(f"| {s['name']} | " + " | ".join(cells) + f" | {s['stalls']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100 scenarios")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    n = 100 if args.quick else args.scenarios
    t0 = time.perf_counter()
    report = run(n, args.seed, tuple(args.strategies.split(",")), progress=True)
    print(f"dead air: {n} scenarios, seeds {report['seeds']}, {time.perf_counter() - t0:.1f} s\n")
    print(table(report))
    print()
    print(transition_table(report))
    if args.json:
        slim = {k: v for k, v in report.items() if k != "runs"}
        args.json.write_text(json.dumps(slim, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
