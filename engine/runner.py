"""The session loop: transport events, deadlines and playback reports go into the core; its
effects are carried out. The only wait is for "the next event or the next deadline".

Session time is the loop's clock since the start, times `speed`: at --speed 10 a 5 s timeout
passes in 0.5 s, exactly as the simulator and the virtual audio sink scale theirs, so a session
takes the same path at any speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import audio as audiomod
from .effects import CancelJob, Effect, End, EndAudio, Fired, Log, Play, Save, Send, StartJob, StopPlayback
from .errors import EngineError
from .events import Event
from .flow import Flow
from .gate import is_collision
from .interview import Interview
from .jobs import JobFn, Jobs, registry
from .realtime import Endpoint, Transport, choose_endpoint
from .sinks import SINKS, Sink, save_all
from .trace import TraceWriter, flow_identity
from .ui import PlainView, make_view

__all__ = ["Session", "Result", "run_session"]

GRACE = 10.0  # seconds of wall time that jobs and outputs get to finish after the interview ends


@dataclass
class Result:
    ok: bool
    reason: str
    folder: Path
    state: str
    outputs: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


class Session:
    """One interview over one connection. `await Session(...).run()` returns its Result.

    Injection points for other drivers (`engine serve`, tests):
        connect: opens the connection (default: a real WebSocket to `endpoint`).
        player: a ready `audio.Player` instead of one opened from `audio`; it reports its
            playback.* events through `deliver()`, and the session closes it at the end.
        audio_input: candidate pcm16 chunks (24 kHz mono), each relayed as
            `input_audio_buffer.append`; `live_input=True` without it uses the microphone.
    """

    def __init__(self, flow: Flow, endpoint: Endpoint, *, out: Path, audio: str = "none", speed: float = 1.0,
                 view: PlainView | None = None, sinks: tuple[Sink, ...] = SINKS,
                 jobs: Mapping[str, JobFn] | None = None, session_id: str | None = None,
                 connect: Callable[[Endpoint], Awaitable[Transport]] = Transport.connect,
                 live_input: bool = False, player: audiomod.Player | None = None,
                 audio_input: AsyncIterator[bytes] | None = None):
        self.flow = flow
        self.endpoint = endpoint
        self.speed = speed
        self.audio_mode = audio
        self.view = view or PlainView()
        self.sinks = sinks
        self.job_fns = dict(registry()) if jobs is None else jobs
        self.connect = connect
        self.live_input = live_input
        self._ready_player = player
        self._audio_input = audio_input
        self.id = session_id or datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.folder = out / self.id
        self.iv = Interview(flow)
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        self.stats = {"events": 0, "responses": 0, "collisions": 0, "bad_frames": 0, "server_errors": 0}
        self.failures: list[str] = []
        self._end: End | None = None
        self._saves: list[asyncio.Task] = []
        self.late_results: dict[str, Any] = {}
        self._started = datetime.datetime.now().isoformat(timespec="seconds")

    # Public.

    async def run(self) -> Result:
        self.folder.mkdir(parents=True, exist_ok=True)
        loop = self._loop = asyncio.get_running_loop()
        # Jobs may load data once per process (the assessment's dictionaries): do it before the
        # clock starts, so it never stalls the event loop mid-interview.
        await asyncio.gather(*(asyncio.to_thread(fn.warm_up) for fn in self.job_fns.values()
                               if hasattr(fn, "warm_up")))
        self._t0 = loop.time()
        self.trace = TraceWriter(self.folder / "trace.jsonl", {
            **flow_identity(self.flow.path), "session": self.id, "speed": self.speed,
            "endpoint": self.endpoint.kind}, secret=self.endpoint.api_key)
        self.view.start(f"{self.flow.name} — session {self.id} ({self.endpoint.kind})", self.now)
        interrupted = False
        try:
            self.transport = await self.connect(self.endpoint)
        except EngineError as exc:
            self._end = End(str(exc), "not_completed")
            return await self._finish(None)
        if self._ready_player is not None:
            self.player = self._ready_player
        else:
            wav = self.folder / "session.wav" if self.audio_mode == "wav" else None
            self.player, why = audiomod.open_player(self.audio_mode, self.deliver, loop=loop,
                                                    speed=self.speed, wav_path=wav)
            if why:
                self._note(f"audio: {why}")
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self.transport.reader(self.inbox.put_nowait, self._note))
                mic = None
                if self._audio_input is not None:
                    mic = group.create_task(self._relay(self._audio_input))
                elif self.live_input:
                    mic = group.create_task(self._microphone(loop))
                self.jobs = Jobs(group, self.inbox.put_nowait, self.job_fns)
                await self._drive()
                await self.jobs.wait(GRACE)
                self._collect_late_results()
                for task in (reader, mic):
                    if task is not None:
                        task.cancel()
        except asyncio.CancelledError:  # Ctrl-C: keep what was gathered
            interrupted = True
            self._end = End(f"interrupted in state '{self.iv.state}'", "interrupted")
        return await self._finish(self.player, interrupted)

    def deliver(self, event: Event) -> None:
        """Report an engine event (playback.*) to the session; call it on the event loop's thread."""
        self.inbox.put_nowait(event)

    def now(self) -> float:
        return (self._loop.time() - self._t0) * self.speed  # loop.time() is safe from any thread

    # The loop.

    async def _drive(self) -> None:
        self.trace.start(0.0)
        await self._execute(self.iv.start(0.0), 0.0)
        while not self.iv.done:
            deadline = self.iv.next_deadline()
            when = None if deadline is None else self._t0 + deadline / self.speed
            try:
                async with asyncio.timeout_at(when):
                    event = await self.inbox.get()
            except TimeoutError:
                # The loop may wake a hair early (clock resolution): the deadline has passed.
                now = max(self.now(), deadline or 0.0)
                self.trace.advance(now)
                effects = self.iv.advance(now)
            else:
                now = self.now()
                self._observe(now, event)
                effects = self.iv.receive(event, now)
            await self._execute(effects, now)

    def _observe(self, now: float, event: Event) -> None:
        self.stats["events"] += 1
        if event.type == "error":
            error = event.data.get("error") or {}
            self.stats["server_errors"] += 1
            if is_collision(error.get("code"), error.get("message")):
                self.stats["collisions"] += 1
        self.trace.event(now, event)
        self.view.event(now, event)

    async def _execute(self, effects: list[Effect], now: float) -> None:
        self.trace.effects(now, effects)
        for effect in effects:
            match effect:
                case Send(event=event):
                    if event["type"] == "response.create":
                        self.stats["responses"] += 1
                    with contextlib.suppress(Exception):  # a dead socket reports itself as session.closed
                        await self.transport.send(event)
                case Play(response_id=rid, item_id=item, audio=audio):
                    self.player.feed(rid, item, base64.b64decode(audio))
                case EndAudio(response_id=rid):
                    self.player.end(rid)
                case StopPlayback():
                    self.player.stop()
                case StartJob(name=name, inputs=inputs):
                    self.jobs.start(name, inputs)
                case CancelJob(name=name):
                    self.jobs.cancel(name)
                case Save(reason=reason):
                    self._saves.append(asyncio.create_task(self._save(reason)))
                case Log(level=level, message=message):
                    self.view.log(now, level, message)
                case Fired():
                    self.view.fired(now, effect, self.iv.next_deadline())
                case End():
                    self._end = effect

    def _collect_late_results(self) -> None:
        """Jobs that finished after the flow stopped waiting still belong in the report."""
        while not self.inbox.empty():
            event = self.inbox.get_nowait()
            if event.type.startswith("job.") and event.type.endswith(".done"):
                self.late_results[event.type.split(".")[1]] = event.data.get("result")

    async def _microphone(self, loop: asyncio.AbstractEventLoop) -> None:
        mic, why = audiomod.open_microphone(loop)
        if mic is None:
            self._note(f"microphone: {why}")
            return
        try:
            await self._relay(mic.chunks())
        finally:
            await mic.aclose()

    async def _relay(self, chunks: AsyncIterator[bytes]) -> None:
        """Send the candidate's audio to the server as it comes."""
        n = 0
        async for chunk in chunks:
            n += 1
            self.player.record_input(chunk)  # --audio wav keeps both sides
            await self.transport.send({"type": "input_audio_buffer.append", "event_id": f"mic_{n}",
                                       "audio": base64.b64encode(chunk).decode()})

    # Outputs.

    def record(self, reason: str, ok: bool) -> dict[str, Any]:
        return {
            "session": self.id, "flow": self.flow.name, "flow_path": self.flow.path, "started": self._started,
            "duration_s": round(self.now(), 3), "endpoint": self.endpoint.kind, "final_state": self.iv.state,
            "ok": ok, "reason": reason, "turns": self.iv.turns,
            "results": {**self.late_results, **self.iv.results},
            "stale_events": len(self.iv.stale), "stats": dict(self.stats),
        }

    async def _save(self, reason: str) -> None:
        _, failed = await save_all(self.record(f"in progress: {reason}", ok=False), self.folder, self.sinks)
        self._failed(failed)

    async def _finish(self, player: Any, interrupted: bool = False) -> Result:
        end = self._end or End("the interview stopped", "not_completed")
        # Outputs first, then hang up: a pending save must not overwrite the final one.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._saves, return_exceptions=True), GRACE)
        written, failed = await save_all(self.record(end.reason, end.ok), self.folder, self.sinks)
        self._failed(failed)
        if player is not None:
            with contextlib.suppress(Exception):
                await player.aclose()
        if hasattr(self, "transport"):
            with contextlib.suppress(Exception):
                await self.transport.close()
        self.trace.close()
        self.view.stop()
        return Result(end.ok and not interrupted, end.reason, self.folder, self.iv.state,
                      written + [self.trace.path], self.failures, dict(self.stats))

    def _failed(self, failed: list[str]) -> None:
        for line in failed:
            self.failures.append(line)
            self._note(line)

    def _note(self, text: str) -> None:
        t = self.now()
        self.trace.note(t, text)
        self.view.log(t, "warning", text)


async def run_session(flow: Flow, args: argparse.Namespace) -> int:
    """`engine run`: pick the server (starting the simulator if needed), run, print where things are."""
    endpoint = choose_endpoint(args.realtime_url, args.model)
    view = make_view(args.no_ui)
    async with contextlib.AsyncExitStack() as stack:
        if endpoint.url is None:
            from .simulator import simulator

            try:
                sim = await stack.enter_async_context(simulator(
                    persona=args.persona, seed=args.seed, faults=args.faults, speed=args.speed, voices=True))
            except ValueError as exc:
                print(f"engine run: {exc}", file=sys.stderr)
                return 2
            endpoint = Endpoint(f"{sim.url}?model={args.model}", simulated=True)
        session = Session(flow, endpoint, out=args.out, audio=args.audio, speed=args.speed, view=view,
                          live_input=endpoint.kind == "openai")
        result = await session.run()
    print(f"\n{'completed' if result.ok else 'not completed'}: {result.reason}")
    for path in result.outputs:
        print(f"  {path}")
    if result.ok:
        return 0
    return 130 if result.reason.startswith("interrupted") else 1
