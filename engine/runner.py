"""The session loop: transport events, deadlines and playback reports go into the core; its
effects are carried out. The only wait is for "the next event or the next deadline".

Session time is the loop's clock since the start, times `speed`: at --speed 10 a 5 s timeout
passes in 0.5 s, exactly as the simulator and the virtual audio sink scale theirs, so a session
takes the same path at any speed.

One ending path: whatever ends a session (the flow's final state, the connection closing in any
way, `interrupt()` from a signal, a cancelled task, an exception in any task or in the core) it
reaches `_finish`, which writes every output it can (each isolated from the others, the trace
last) and returns a Result whose `reason` is one line saying why. `run()` never raises.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import secrets as tokens
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from . import audio as audiomod
from .effects import CancelJob, Effect, End, EndAudio, Fired, Log, Play, Save, Send, StartJob, StopPlayback
from .errors import EngineError, RemoteProtocolError
from .events import Event
from .flow import Flow
from .gate import is_collision
from .interview import Interview
from .jobs import JobFn, Jobs, registry, warm_up
from .realtime import Connect, Endpoint, Transport, choose_endpoint
from .sinks import SINKS, Sink, save_all
from .trace import MAX_BYTES, TraceWriter, flow_identity, redact
from .trace import _open as open_trace_file
from .ui import PlainView, make_view

__all__ = ["Session", "Result", "Participant", "run_session", "check_out", "exit_code"]

T = TypeVar("T")
GRACE = 10.0  # seconds of wall time that late jobs, the player and the hang-up get at the end
OUTPUTS_WAIT = 60.0  # ... and the outputs (queued behind other sessions' on a busy server)
HURRIED = 1.0  # ... once the finish has been interrupted again
_TICK = "engine.tick"  # the core's deadline has come (never shown to the core)
SIGNALS: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


def _now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _redacted(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` with every secret removed from every string in it."""
    if not secrets:
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, secrets) for v in value]
    return value


@dataclass
class Result:
    ok: bool
    reason: str
    folder: Path
    state: str
    outputs: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    outcome: str = "not_completed"
    signal: str | None = None  # the signal that interrupted the session, if one did


class Session:
    """One interview over one connection. `await Session(...).run()` returns its Result.

    Injection points for other drivers (`engine serve`, tests):
        connect: opens the connection (default: a real WebSocket to `endpoint`;
            `realtime.in_process(handler)` serves it in this process, with no socket).
        player: a ready `audio.Player` instead of one opened from `audio`; it reports its
            playback.* events through `deliver()`, and the session closes it at the end.
        audio_input: candidate pcm16 chunks (24 kHz mono), each relayed as
            `input_audio_buffer.append`; `live_input=True` without it uses the microphone.
        open_trace: opens the trace file (tests inject one that fails like a full disk).
    """

    def __init__(self, flow: Flow, endpoint: Endpoint, *, out: Path, audio: str = "none", speed: float = 1.0,
                 view: PlainView | None = None, sinks: tuple[Sink, ...] = SINKS,
                 jobs: Mapping[str, JobFn] | None = None, session_id: str | None = None,
                 connect: Connect = Transport.connect, live_input: bool = False,
                 player: audiomod.Player | None = None, audio_input: AsyncIterator[bytes] | None = None,
                 trace_max_bytes: int = MAX_BYTES, open_trace: Callable[[Path], IO[str]] = open_trace_file):
        self.flow = flow
        self.endpoint = endpoint
        self.speed = speed
        self.audio_mode = audio
        self.secrets = endpoint.secrets
        self.view = view or PlainView(secrets=self.secrets)
        self.sinks = sinks
        self.job_fns = registry() if jobs is None else jobs
        self.connect = connect
        self.live_input = live_input
        self._ready_player = player
        self._audio_input = audio_input
        self._trace_max, self._open_trace = trace_max_bytes, open_trace
        self.id = session_id or datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + tokens.token_hex(3)
        self.folder = out / self.id
        self.iv = Interview(flow)
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        # What only the driver sees; the core counts responses, answers, timeouts and stale events.
        self.stats = {"events": 0, "collisions": 0, "skipped": 0, "server_errors": 0}
        self.failures: list[str] = []
        self.late_results: dict[str, Any] = {}
        self.player: audiomod.Player | None = None
        self.transport: Transport | None = None
        self._end: End | None = None
        self._closed: str | None = None  # how the connection ended, once it has
        self._armed: float | None = None  # the deadline the timer is set for
        self._timer: asyncio.TimerHandle | None = None
        self._signal: str | None = None
        self._task: asyncio.Task[None] | None = None  # the interview, until the finish
        self._finishing = False
        self._hurry = threading.Event()  # a second interrupt: the finish stops waiting for slow outputs
        self._saves: list[asyncio.Task[None]] = []
        self._save_lock = asyncio.Lock()
        self._save_waiting = False
        self._warming = False  # the job warm-ups have been started
        self._started = _now_iso()
        self._t0 = 0.0

    # Public.

    async def run(self) -> Result:
        """Run the interview, write its outputs, return the Result. Never raises: a cancel of
        the task running it is an interruption, an exception an internal error."""
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._started = _now_iso()
        try:
            self._open_outputs()
        except Exception as exc:  # a bug (a view that cannot start): the finish still runs
            self._internal_error(exc)
        self._task = self._loop.create_task(self._guarded(), name=f"session {self.id}")
        # Cancelling run() cancels the interview (awaiting a task passes the cancel on); the
        # interview ends as interrupted and run() goes on to the finish.
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._end is None and self._task.cancelled():
            self._end = self._interrupted(None)
        return await self._finish()

    def interrupt(self, why: str) -> None:
        """Stop the session (a signal, a server shutting down): the interview ends as interrupted
        and its outputs are saved. After the flow has ended it only stops the wait for late jobs;
        during the finish, a further call stops waiting for outputs not yet begun (the one being
        written is finished)."""
        if self._finishing:
            self._hurry.set()
            return
        if self._end is None:  # (once the flow has ended, a signal only cuts the wait for late jobs)
            self._signal = why
            self._end = self._interrupted(why)
        if self._task is not None:
            self._task.cancel()

    def deliver(self, event: Event) -> None:
        """Hand the session an event as if it had arrived (a player's playback.*, engine chat's speech
        events for a typed turn); call it on the event loop's thread."""
        self.inbox.put_nowait(event)

    def now(self) -> float:
        return (self._loop.time() - self._t0) * self.speed  # loop.time() is safe from any thread

    def record(self, end: End | None = None, reason: str = "") -> dict[str, Any]:
        """The report: report.json and the SQLite row (engine/schemas/report.schema.json)."""
        iv = self.iv
        turns = iv.turns
        counts = {
            **iv.counts,
            "skipped": self.stats["skipped"] + (self.transport.skipped if self.transport else 0),
            "collisions": self.stats["collisions"],
            "server_errors": self.stats["server_errors"],
            "events": self.stats["events"],
        }
        record = {
            "session": self.id, "flow": self.flow.name, "flow_path": self.flow.path,
            "started": self._started, "ended": _now_iso() if end else None,
            "duration_s": round(self.now(), 3), "endpoint": self.endpoint.kind, "final_state": iv.state,
            "outcome": end.outcome if end else "in_progress", "ok": end.ok if end else False,
            "reason": end.reason if end else reason, "counts": counts, "turns": turns,
            "results": {**self.late_results, **iv.results},
        }
        return dict(_redacted(record, self.secrets))

    # The interview.

    def _open_outputs(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # every output will fail and say so; the interview may still run
            self.failures.append(f"outputs: {self.folder}: {exc.strerror or exc}")
        meta = {**flow_identity(self.flow.path), "session": self.id, "speed": self.speed,
                "endpoint": self.endpoint.kind, "started": self._started}
        self.trace = TraceWriter(self.folder / "trace.jsonl", meta, secret=self.secrets, max_bytes=self._trace_max,
                                 on_problem=self._trace_problem, open_file=self._open_trace)
        self.view.start(f"{self.flow.name} — session {self.id} ({self.endpoint.kind})", self.now)

    async def _guarded(self) -> None:
        """The interview; whatever stops it is turned into the End the finish reports."""
        try:
            await self._interview()
        except asyncio.CancelledError:
            if self._end is None:
                self._end = self._interrupted(self._signal)
        except Exception as exc:  # a bug in the engine: say so, keep everything gathered
            self._internal_error(exc)

    async def _interview(self) -> None:
        if self._signal is not None:
            return
        try:
            self.transport = await self.connect(self.endpoint)
            if self._signal is not None:  # interrupted while connecting (a cancel some library dropped)
                return
            if self._ready_player is not None:
                self.player = self._ready_player
            else:
                wav = self.folder / "session.wav" if self.audio_mode == "wav" else None
                self.player, why = audiomod.open_player(self.audio_mode, self.deliver, loop=self._loop,
                                                        speed=self.speed, wav_path=wav)
                if why:
                    self._note(f"audio: {why}")
        except EngineError as exc:
            self._end = End(redact(str(exc), self.secrets), "not_completed")
            return
        async with asyncio.TaskGroup() as group:
            helpers = [group.create_task(self.transport.reader(self.deliver, self._note), name="reader")]
            if self._audio_input is not None:
                helpers.append(group.create_task(self._relay(self._audio_input), name="audio input"))
            elif self.live_input:
                helpers.append(group.create_task(self._microphone(), name="microphone"))
            self.jobs = Jobs(group, self.deliver, self.job_fns)
            try:
                await self._drive()
                if self._signal is None:
                    await self.jobs.wait(GRACE)  # results that come a little late still belong in the report
            finally:
                for task in helpers:
                    task.cancel()
        self._collect_late_results()

    async def _drive(self) -> None:
        """Events and deadlines both arrive through the inbox: one timer, moved only when the
        core's next deadline changes, puts a tick there (audio deltas come dozens a second; a
        timeout armed and cancelled around every wait would cost more than the event)."""
        self.trace.start(0.0)
        await self._execute(self.iv.start(0.0), 0.0)
        inbox = self.inbox
        last = 0.0  # the core's time never goes back, though a tick's may run ahead of the clock
        try:
            while not self.iv.done and self._signal is None:
                self._arm(self.iv.next_deadline())
                if inbox.empty():
                    if self._closed is not None and self._armed is None:
                        # Nothing can come any more: the flow handled session.closed but waits on.
                        self._end = End(f"connection closed in state '{self.iv.state}' and the flow waits for "
                                        f"nothing that can still come: {self._closed}", "not_completed")
                        return
                    event = await inbox.get()
                else:
                    event = inbox.get_nowait()
                if event.type == _TICK:
                    deadline = event.data["deadline"]
                    if deadline != self.iv.next_deadline():
                        continue  # armed for a deadline that has moved since
                    # The loop may wake a hair early (uvloop's clock counts milliseconds): the
                    # deadline has passed.
                    now = last = max(self.now(), deadline, last)
                    self.trace.advance(now)
                    await self._execute(self.iv.advance(now), now)
                    continue
                now = last = max(self.now(), last)
                self._observe(now, event)
                try:
                    effects = self.iv.receive(event, now)
                except RemoteProtocolError as exc:  # a malformed event: the core refused it, nothing changed
                    self.stats["skipped"] += 1
                    self._note(f"skipped a malformed {event.type}: {exc}")
                    continue
                await self._execute(effects, now)
        finally:
            self._arm(None)

    def _arm(self, deadline: float | None) -> None:
        """Have a tick put on the inbox at `deadline` (session time), replacing the one armed."""
        if deadline == self._armed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = deadline
        if deadline is not None:
            tick = Event(_TICK, data={"deadline": deadline})
            self._timer = self._loop.call_at(self._t0 + deadline / self.speed, self.inbox.put_nowait, tick)

    def _observe(self, now: float, event: Event) -> None:
        self.stats["events"] += 1
        kind = event.type
        if kind == "error":
            error = event.data.get("error")
            error = error if isinstance(error, dict) else {}
            self.stats["server_errors"] += 1
            if is_collision(error.get("code"), error.get("message")):
                self.stats["collisions"] += 1
        elif kind == "session.closed":
            self._closed = str(event.data.get("reason", "closed"))
        elif kind == "response.created" and not self._warming:
            # The first response is under way: now the job warm-ups (threads; the assessment's loads
            # dictionaries for ~1 s of CPU) may take the GIL. Earlier they would slow the start: the
            # first response.create and, with the embedded simulator, the making of its audio.
            self._warming = True
            warm_up(self.job_fns)
        self.trace.event(now, event)
        self.view.event(now, event)

    async def _execute(self, effects: list[Effect], now: float) -> None:
        self.trace.effects(now, effects)
        for effect in effects:
            match effect:
                case Play(response_id=rid, item_id=item, audio=audio):
                    self.player.feed_base64(rid, item, audio)  # type: ignore[union-attr]
                case Send(event=event):
                    await self.transport.send(event)  # type: ignore[union-attr]  # False: the reader tells
                case EndAudio(response_id=rid):
                    self.player.end(rid)  # type: ignore[union-attr]
                case StopPlayback():
                    self.player.stop()  # type: ignore[union-attr]
                case StartJob(name=name, inputs=inputs):
                    self.jobs.start(name, inputs)
                case CancelJob(name=name):
                    self.jobs.cancel(name)
                case Save(reason=reason):
                    self._request_save(reason)
                case Log(level=level, message=message):
                    self.view.log(now, level, message)
                case Fired():
                    self.view.fired(now, effect, self.iv.next_deadline())
                case End():
                    if self._signal is None:  # an interrupt's End stands: it came first
                        self._end = effect

    def _collect_late_results(self) -> None:
        """Jobs that finished after the flow stopped waiting still belong in the report."""
        while not self.inbox.empty():
            event = self.inbox.get_nowait()
            if event.type.startswith("job.") and event.type.endswith(".done"):
                self.late_results[event.type.split(".")[1]] = event.data.get("result")

    async def _microphone(self) -> None:
        mic, why = audiomod.open_microphone(self._loop)
        if mic is None:
            self._note(f"microphone: {why}")
            return
        try:
            await self._relay(mic.chunks())
        finally:
            await mic.aclose()

    async def _relay(self, chunks: AsyncIterator[bytes]) -> None:
        """Send the candidate's audio to the server as it comes; a failing source ends only the relay."""
        n = 0
        try:
            async for chunk in chunks:
                n += 1
                assert self.player is not None and self.transport is not None
                self.player.record_input(chunk)  # --audio wav keeps both sides
                event = {"type": "input_audio_buffer.append", "event_id": f"mic_{n}",
                         "audio": base64.b64encode(chunk).decode()}
                if not await self.transport.send(event):
                    return
        except (OSError, EngineError, ValueError) as exc:
            self._note(f"audio input stopped: {type(exc).__name__}: {exc}")

    # Outputs.

    def _request_save(self, reason: str) -> None:
        """A Save effect: write the outputs in the background, one save at a time; a save
        requested while one waits is the same save (it records the state when it runs)."""
        if self._save_waiting:
            return
        self._save_waiting = True
        self._saves.append(asyncio.create_task(self._save(reason)))

    async def _save(self, reason: str) -> None:
        async with self._save_lock:
            self._save_waiting = False
            if self._finishing:
                return  # the final save supersedes it
            self.trace.flush()
            await self.trace.synced()  # the trace on disk agrees with the reports
            _, failed = await save_all(self.record(None, f"in progress: {reason}"), self.folder, self.sinks)
        self._failed(failed)

    async def _finish(self) -> Result:
        self._finishing = True
        end = self._end or End(f"the interview stopped in state '{self.iv.state}'", "not_completed")
        self._end = end
        self.view.finishing(self.now(), end)
        # Saves already writing finish first, so none can overwrite the final one.
        if self._saves:
            await self._bounded(asyncio.gather(*self._saves, return_exceptions=True), OUTPUTS_WAIT)
        self.trace.flush()
        record = self._final_record(end)
        end = self._end  # an internal error while building the record replaced it
        final = await self._bounded(save_all(record, self.folder, self.sinks, hurry=self._hurry), OUTPUTS_WAIT)
        if final.done() and not final.cancelled():
            written, failed = final.result()
        else:
            written, failed = [], [f"outputs not finished within {OUTPUTS_WAIT:g} s (still writing in the background)"]
        self._failed(failed)
        # Then the player (its WAV is an output too) and the connection.
        hurried = HURRIED if self._hurry.is_set() else GRACE
        if self.player is not None:
            closing = await self._bounded(self.player.aclose(), hurried)
            if closing.done() and not closing.cancelled() and closing.exception() is not None:
                self._note(f"audio: closing failed: {closing.exception()}")
        if self.transport is not None:
            if self._hurry.is_set():
                self.transport.abort()
            await self._bounded(self.transport.close(HURRIED if self._hurry.is_set() else GRACE), GRACE)
        self.trace.close()  # last: it records everything above
        outputs = [*written, self.trace.path] if self.trace.path.exists() else written
        self.view.stop()
        return Result(end.ok, end.reason, self.folder, self.iv.state, outputs, self.failures, dict(self.stats),
                      end.outcome, self._signal)

    def _final_record(self, end: End) -> dict[str, Any]:
        """The record; if building it fails (a bug), the parts that cannot fail, saying so."""
        try:
            return self.record(end)
        except Exception as exc:
            self._internal_error(exc)
            assert self._end is not None
            return {"session": self.id, "flow": self.flow.name, "flow_path": self.flow.path,
                    "started": self._started, "ended": _now_iso(), "duration_s": round(self.now(), 3),
                    "endpoint": self.endpoint.kind, "final_state": str(self.iv.state), "outcome": "error",
                    "ok": False, "reason": self._end.reason, "counts": dict.fromkeys(
                        ("responses", "answers", "timeouts", "stale", "skipped", "collisions", "server_errors",
                         "events"), 0), "turns": [], "results": {}}

    async def _bounded(self, aw: Awaitable[T], timeout: float) -> asyncio.Future[T]:
        """Wait for one step of the finish, at most `timeout` seconds. Being cancelled meanwhile is
        a second interrupt: it hurries the finish but does not abandon what is being written."""
        future = asyncio.ensure_future(aw)
        deadline = self._loop.time() + timeout
        while not future.done():
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait([future])
            except TimeoutError:
                break
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                self._hurry.set()
                deadline = min(deadline, self._loop.time() + HURRIED)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: the caller decides what a failure means
        return future

    def _interrupted(self, why: str | None) -> End:
        by = f" by {why}" if why else ""
        return End(f"interrupted{by} in state '{self.iv.state}'", "interrupted")

    def _internal_error(self, exc: BaseException) -> None:
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        self._end = End(redact(f"internal error: {type(leaf).__name__}: {leaf}", self.secrets), "error")
        text = redact("".join(traceback.format_exception(exc)), self.secrets)
        if hasattr(self, "trace"):
            self.trace.note(self.now(), text)
        with contextlib.suppress(Exception):
            print(f"engine: {self._end.reason}\n{text}", file=sys.stderr, flush=True)

    def _trace_problem(self, why: str) -> None:
        self.failures.append(why)
        self.view.log(self.now(), "warning", why)

    def _failed(self, failed: list[str]) -> None:
        for line in failed:
            self.failures.append(line)
            self._note(line)

    def _note(self, text: str) -> None:
        text = redact(text, self.secrets)
        t = self.now()
        self.trace.note(t, text)
        self.view.log(t, "warning", text)


# `engine run` -------------------------------------------------------------------------------------

_LABELS = {"completed": "completed", "completed_degraded": "completed (degraded)", "not_completed": "not completed",
           "interrupted": "stopped", "error": "failed"}


def exit_code(result: Result) -> int:
    """0 completed, 1 not completed (or failed), 128 + N when signal N stopped the interview (130
    SIGINT, 143 SIGTERM, 129 SIGHUP). A signal that came after the flow had ended changes nothing."""
    if result.signal is not None:
        number = next((int(n) for n, name in SIGNALS.items() if name == result.signal), None)
        if number is not None:
            return 128 + number
    return 0 if result.ok else 1


def check_out(out: Path) -> str | None:
    """None if sessions can be written under `out`; else one line `path: message`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f".engine-write-test-{tokens.token_hex(4)}", "w") as probe:
            probe_path = Path(probe.name)
        probe_path.unlink()
    except OSError as exc:
        return f"{exc.filename or out}: {exc.strerror or exc}"
    return None


class Participant(Protocol):
    """Someone who plays the candidate instead of the simulator's script (`engine chat`'s typist).

    run_session asks it for the session's view and player, then runs `play(session)` beside the
    session; `play` is cancelled when the session has finished."""

    def view(self, secrets: tuple[str, ...]) -> PlainView: ...
    def player(self, emit: audiomod.Emit, loop: asyncio.AbstractEventLoop, speed: float) -> audiomod.Player: ...
    async def play(self, session: Session) -> None: ...


async def run_session(flow: Flow, args: argparse.Namespace, participant: Participant | None = None) -> int:
    """`engine run`: pick the server (starting the simulator if needed), run, print where things are.

    With a `participant` (`engine chat`) the simulator plays no candidate and nobody listens to the
    microphone: the participant is the candidate.

    SIGINT, SIGTERM and SIGHUP end the session through its finish (everything saved); a second one
    hurries the finish. One line says how it ended; the exit code says the same (see exit_code)."""
    endpoint = choose_endpoint(args.realtime_url, args.model)
    problem = check_out(args.out)
    if problem is not None:
        print(f"engine run: {problem}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    session: Session | None = None
    early: list[int] = []
    main = asyncio.current_task()

    def on_signal(number: int) -> None:
        if session is not None:
            session.interrupt(SIGNALS[number])
        elif not early:  # before the session exists (the simulator is starting): stop here
            early.append(number)
            if main is not None:
                main.cancel()

    for number in SIGNALS:
        loop.add_signal_handler(number, on_signal, number)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if endpoint.url is None:
                from .simulator import simulator

                try:
                    sim = await stack.enter_async_context(simulator(
                        persona=args.persona, seed=args.seed, faults=args.faults, speed=args.speed,
                        # Synthesised voices only where someone can hear them (espeak-ng costs real time,
                        # which a session at --speed 50 sees as seconds of model latency).
                        voices=participant is None and args.audio != "none",
                        scripted_candidate=participant is None))
                except ValueError as exc:
                    print(f"engine run: {exc}", file=sys.stderr)
                    return 2
                endpoint = Endpoint(f"{sim.url}?model={args.model}", simulated=True)
            connect = partial(Transport.connect, ping_interval=args.ping_interval or None,
                              ping_timeout=args.ping_timeout or None)
            if participant is None:
                view, player = make_view(args.no_ui, endpoint.secrets), None
            else:
                view = participant.view(endpoint.secrets)
                player = participant.player(lambda event: session.deliver(event), loop, args.speed)  # type: ignore[union-attr]
            session = Session(flow, endpoint, out=args.out, audio=args.audio, speed=args.speed, view=view,
                              player=player, live_input=endpoint.kind == "openai" and participant is None,
                              connect=connect, trace_max_bytes=int(args.trace_max_mb * 2**20))
            playing = None if participant is None else loop.create_task(participant.play(session), name="participant")
            try:
                result = await session.run()
            finally:
                if playing is not None:
                    playing.cancel()
                    await asyncio.gather(playing, return_exceptions=True)
        # Printed while the handlers are still ours: a signal now only hurries what is left.
        print(f"\n{_LABELS.get(result.outcome, result.outcome)}: {result.reason}", flush=True)
        for line in result.failures:
            print(f"  warning: {line}")
        for path in result.outputs:
            print(f"  {path}", flush=True)
        return exit_code(result)
    except asyncio.CancelledError:
        if not early:
            raise
        print(f"\nstopped: interrupted by {SIGNALS[early[0]]} before the session started", flush=True)
        return 128 + early[0]
    finally:
        for number in SIGNALS:
            loop.remove_signal_handler(number)
