"""Turn-taking: from the end of the candidate's answer to the first audio of the reply.

    python -m benchmarks.turn_taking [--seeds N] [--seed S] [--virtual] [--json FILE]

Three flows meet the same simulated world: the same seeded candidates (the simulator's default
persona: four answers, each transcribed 0.3-1.5 s after its commit) and the same server:

  (a) committed    flows/assessment.yaml as shipped: the reply is asked for on `input.committed`
  (b) transcript   benchmarks/flows/transcript_reply.yaml: the same flow replying on
                   `input.transcript`, i.e. once the transcription has arrived (the old behaviour)
  (c) server       benchmarks/flows/server_reply.yaml: the server replies to each committed turn
                   itself (`create_response: true`): the bound for a reply the client asks for

Each seed is one simulator (`engine.sim.Simulator(seed=...)`); its three connections, one per
flow, draw the same candidate and model timings. Measured per answer, in the engine process, at
the moments the session handles each event (`view.event`, session time): answer -> reply is the
time from `input_audio_buffer.speech_stopped` to the first `response.output_audio.delta` of the
next response. (a) - (c) is what asking for the reply costs: the commit travelling to the
client, the engine's handling of it, the `response.create` travelling back; (b) - (c) adds the
transcription delay.

Two ways to run it:
- real time (default): the simulators run in a child process (`--serve`, one WebSocket server per
  seed on 127.0.0.1) at --speed 1; this process runs every session in one event loop over real
  sockets, their starts spread over SPREAD_S. The engine's own time and the loopback network are in
  the figures (both small); the machine's load is too, so the event loop's lag is reported with them.
- `--virtual`: every session and simulator in this process on `engine.vloop` over `engine.loopback`:
  no CPU time or network passes, only the protocol's own waits (deterministic; the smoke test).

A stub assessment job (a short sleep) stands in for the real one; outputs are not written
(sinks=()): neither is what this measures, and both would only add noise (benchmarks/sessions.py
measures them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import eventloop, vloop
from engine import flow as flowmod
from engine.events import Event
from engine.realtime import Connect, Endpoint, Transport, in_process
from engine.runner import Result, Session
from engine.ui import PlainView

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
VARIANTS = {
    "a": ("(a) shipped flow, replies on input.committed", ROOT / "flows" / "assessment.yaml"),
    "b": ("(b) replies on input.transcript (old behaviour)", HERE / "flows" / "transcript_reply.yaml"),
    "c": ("(c) the server replies itself (create_response: true)", HERE / "flows" / "server_reply.yaml"),
}
SPREAD_S = 20.0  # session starts spread over this much (wall) time: no synchronised bursts
GROUP = 10  # real time: seeds run this many at a time (30 sessions at once: a light load, not a stress test)
CAP_S = 600.0  # a real-time run longer than this is a failure
TICK_S = 0.010  # event-loop lag: how late a sleep of this length wakes
TARGET_MEDIAN_MS, TARGET_P95_MS = 20.0, 50.0  # (a) against (c)
URL_WAIT_S = 60.0


async def _assessment(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Stands in for the assessment: the replies measured here come before it is started."""
    await asyncio.sleep(1.0)
    return {"summary": "Your English is around B1 overall.", "overall": {"band": "B1"}}


class Recorder(PlainView):
    """A silent view that keeps the session time at which the session handled the events that
    matter here: the candidate's turn ends and transcripts, and each response's first audio."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.marks: list[tuple[float, str, str | None]] = []  # (t, kind, item or response id)
        self._audio: set[str] = set()

    def event(self, t: float, event: Event) -> None:
        kind = event.type
        if kind == "response.output_audio.delta":
            if event.response_id not in self._audio:
                self._audio.add(event.response_id or "")
                self.marks.append((t, "audio", event.response_id))
        elif kind in ("speech.stopped", "input.committed", "input.transcript"):
            self.marks.append((t, kind, event.item_id))
            if kind == "speech.stopped" and isinstance(event.data.get("audio_end_ms"), int):
                # When the simulator meant the turn to end (ms of its session): how late it got here.
                self.marks.append((event.data["audio_end_ms"] / 1000, "scheduled", event.item_id))


@dataclass
class Answer:
    """One candidate turn and the reply to it (session times, seconds)."""

    index: int
    stopped: float
    committed: float | None = None
    transcript: float | None = None
    received: dict[str, float] = field(default_factory=dict)  # when the transport read the commit, transcript
    scheduled: float | None = None  # when the simulator meant the turn to end (its own session clock)
    create: float | None = None  # the engine sent its response.create (not in (c))
    audio: float | None = None  # first audio of the reply

    @property
    def gap_ms(self) -> float | None:
        return None if self.audio is None else (self.audio - self.stopped) * 1000

    @property
    def reaction_ms(self) -> float | None:
        """The engine's own part: from reading what the reply waited for off the socket (the commit;
        in (b) the transcript) to sending the response.create."""
        if self.create is None:
            return None
        before = [t for t in self.received.values() if t <= self.create]
        return (self.create - max(before)) * 1000 if before else None


def answers(marks: list[tuple[float, str, str | None]]) -> list[Answer]:
    """The turns in order; each reply is the first response whose audio starts after the turn ended."""
    per_item: dict[str, dict[str, float]] = {}  # item -> kind -> first time (commits, transcripts)
    for t, kind, ident in marks:
        if kind not in ("speech.stopped", "create", "audio") and ident is not None:
            per_item.setdefault(ident, {}).setdefault(kind, t)
    out: list[Answer] = []
    waiting: Answer | None = None
    for t, kind, ident in sorted((m for m in marks if m[1] in ("speech.stopped", "create", "audio")),
                                 key=lambda m: m[0]):
        if kind == "speech.stopped":
            if waiting is None:  # (a second speech.stopped before a reply: the same answer, ended later)
                waiting = Answer(len(out), t)
                out.append(waiting)
            waiting.stopped = t
            seen = per_item.get(ident or "", {})
            waiting.committed, waiting.transcript = seen.get("input.committed"), seen.get("input.transcript")
            waiting.scheduled = seen.get("scheduled")
            waiting.received = {k.removeprefix("received "): v for k, v in seen.items() if k.startswith("received ")}
        elif kind == "create" and waiting is not None and waiting.create is None:
            waiting.create = t
        elif kind == "audio" and waiting is not None:
            waiting.audio = t
            waiting = None
    return out


class _Timed:
    """A session's transport that notes, in the recorder, when each commit was received (read and
    parsed, before the session's inbox) and when each response.create is sent."""

    def __init__(self, inner: Transport, recorder: Recorder, now: Callable[[], float]):
        self._inner, self._recorder, self._now = inner, recorder, now

    async def send(self, event: Mapping[str, Any]) -> bool:
        if event.get("type") == "response.create":
            self._recorder.marks.append((self._now(), "create", None))
        return await self._inner.send(event)

    async def reader(self, put: Callable[[Event], None], note: Callable[[str], None]) -> None:
        def timed_put(event: Event) -> None:
            if event.type in ("input.committed", "input.transcript"):
                self._recorder.marks.append((self._now(), "received " + event.type, event.item_id))
            put(event)

        await self._inner.reader(timed_put, note)

    def __getattr__(self, name: str) -> Any:  # reader, close, abort, skipped: the transport's own
        return getattr(self._inner, name)


@dataclass
class Run:
    variant: str
    seed: int
    result: Result | None
    answers: list[Answer] = field(default_factory=list)
    error: str | None = None


def _session(variant: str, seed: int, flow: flowmod.Flow, url: str, out: Path, speed: float,
             connect: Connect | None) -> tuple[Session, Recorder]:
    recorder = Recorder()
    opened = connect or Transport.connect

    async def timed(endpoint: Endpoint) -> Transport:
        transport = await opened(endpoint)
        return _Timed(transport, recorder, session.now)  # type: ignore[return-value]  # a Transport by duck typing

    session = Session(flow, Endpoint(f"{url}?model=gpt-realtime&variant={variant}", simulated=True), out=out,
                      audio="none", speed=speed, view=recorder, sinks=(), jobs={"assessment": _assessment},
                      session_id=f"seed{seed}-{variant}", connect=timed)
    return session, recorder


async def _run_all(plan: list[tuple[str, int, str, Connect | None]], flows: dict[str, flowmod.Flow], out: Path,
                   speed: float, spread_s: float, cap_s: float) -> tuple[list[Run], list[float]]:
    """Every (variant, seed, url, connect) of the plan as a session, starts spread over `spread_s`;
    returns the runs and the event loop's lag samples (seconds) while they ran."""
    loop = asyncio.get_running_loop()
    # Lag on the system clock in real time, as benchmarks/sessions.py (uvloop's loop.time() is whole
    # milliseconds, read once per loop pass, and would hide part of the lateness); on virtual time, the loop's.
    clock = loop.time if isinstance(loop, vloop.VirtualLoop) else time.perf_counter
    runs: list[Run] = []
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = clock()
            await asyncio.sleep(TICK_S)
            lags.append(clock() - t - TICK_S)

    async def one(i: int, variant: str, seed: int, url: str, connect: Connect | None) -> None:
        await asyncio.sleep(spread_s * i / max(1, len(plan)))
        session, recorder = _session(variant, seed, flows[variant], url, out, speed, connect)
        run = Run(variant, seed, None)
        runs.append(run)
        try:
            run.result = await session.run()
        except Exception as exc:  # Session.run() never raises; if it does, say so in the report
            run.error = f"{type(exc).__name__}: {exc}"
        run.answers = answers(recorder.marks)

    tick = asyncio.ensure_future(ticker())
    tasks = [asyncio.ensure_future(one(i, *entry)) for i, entry in enumerate(plan)]
    done, pending = await asyncio.wait(tasks, timeout=cap_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    stop.set()
    await tick
    for task in done:
        task.result()  # a bug in the benchmark itself: raised here, not lost
    return runs, lags


def _plan(seeds: list[int], urls: list[str], connects: list[Connect | None]) -> list[tuple[str, int, str,
                                                                                        Connect | None]]:
    plan = [(v, seed, url, connect) for seed, url, connect in zip(seeds, urls, connects, strict=True)
            for v in VARIANTS]
    random.Random(0).shuffle(plan)  # the starts of one seed's three sessions are spread too
    return plan


def run_virtual(seeds: list[int]) -> tuple[list[Run], list[float]]:
    from engine.simulator import Simulator

    flows = {v: flowmod.load(path) for v, (_, path) in VARIANTS.items()}

    async def main() -> tuple[list[Run], list[float]]:
        sims = [Simulator(seed=s) for s in seeds]
        connects: list[Connect | None] = [in_process(sim.handle) for sim in sims]
        with tempfile.TemporaryDirectory(prefix="engine-turns-") as tmp:
            return await _run_all(_plan(seeds, ["ws://simulator.invalid/v1/realtime"] * len(seeds), connects), flows,
                                  Path(tmp), 1.0, SPREAD_S, CAP_S)

    return vloop.run(main())


class _Simulators:
    """`python -m benchmarks.turn_taking --serve`: one simulator per seed in a child process."""

    def __init__(self, seeds: list[int], speed: float):
        self.seeds, self.speed = seeds, speed
        self.proc: subprocess.Popen[str] | None = None
        self.urls: list[str] = []
        self.create_handling_ms: list[float] = []

    def __enter__(self) -> _Simulators:
        cmd = [sys.executable, "-m", "benchmarks.turn_taking", "--serve", "--seeds", str(len(self.seeds)),
               "--seed", str(self.seeds[0]), "--speed", str(self.speed)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], URL_WAIT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("{"):
            self.__exit__()
            raise RuntimeError(f"the simulators did not start within {URL_WAIT_S:g} s")
        self.urls = json.loads(line)["urls"]
        return self

    def cpu_s(self) -> float:
        if self.proc is None:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                out, _ = self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return
            last = out.strip().splitlines()[-1:] if out else []
            if last and last[0].startswith("{"):
                self.create_handling_ms = json.loads(last[0]).get("create_handling_ms", [])


async def _serve(seeds: list[int], speed: float) -> None:
    """The child: one simulator per seed; on SIGTERM, one line of how long it took to handle each
    response.create (receipt to its response.created sent: a cost (a) pays and (c) does not, as the
    simulator starts its own replies at the planned turn end however busy it is)."""
    from engine.sim import session as simsession
    from engine.simulator import Simulator

    loop = asyncio.get_running_loop()
    handled: list[float] = []
    receive = simsession.Session._receive

    async def timed_receive(self: simsession.Session, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith('{"type":"response.create"'):
            t0 = loop.time()
            await receive(self, message)
            handled.append((loop.time() - t0) * 1000)
        else:
            await receive(self, message)

    simsession.Session._receive = timed_receive  # type: ignore[method-assign]  # this child only measures
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        sims = [await stack.enter_async_context(Simulator(seed=s, speed=speed)) for s in seeds]
        print(json.dumps({"urls": [sim.url for sim in sims]}), flush=True)
        await stop.wait()
    print(json.dumps({"create_handling_ms": handled}), flush=True)


def run_real_time(seeds: list[int], speed: float = 1.0, spread_s: float = SPREAD_S,
                  group: int = GROUP) -> tuple[list[Run], list[float], dict[str, Any]]:
    """The seeds `group` at a time (3 x group sessions at once; each group its own simulators)."""
    flows = {v: flowmod.load(path) for v, (_, path) in VARIANTS.items()}
    runs: list[Run] = []
    lags: list[float] = []
    handling: list[float] = []
    cpu: dict[str, Any] = {"engine_cpu_s": 0.0, "simulator_cpu_s": 0.0, "wall_s": 0.0}
    for first in range(0, len(seeds), group):
        chosen = seeds[first:first + group]
        with _Simulators(chosen, speed) as sims, tempfile.TemporaryDirectory(prefix="engine-turns-") as tmp:
            cpu0, sim0, wall0 = time.process_time(), sims.cpu_s(), time.perf_counter()
            plan = _plan(chosen, sims.urls, [None] * len(chosen))
            more, more_lags = eventloop.run(_run_all(plan, flows, Path(tmp), speed, spread_s, CAP_S))
            cpu["engine_cpu_s"] += time.process_time() - cpu0
            cpu["simulator_cpu_s"] += sims.cpu_s() - sim0
            cpu["wall_s"] += time.perf_counter() - wall0
        runs += more
        lags += more_lags
        handling += sims.create_handling_ms
    cpu["simulator_create_handling"] = _stats(handling)
    cpu["group"] = group
    return runs, lags, cpu


# ---------------------------------------------------------------------------------------------
# Summary


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": pct(values, 50), "p95_ms": pct(values, 95),
            "mean_ms": statistics.fmean(values) if values else float("nan"),
            "min_ms": min(values, default=float("nan")), "max_ms": max(values, default=float("nan"))}


def summarise(runs: list[Run], seeds: list[int]) -> dict[str, Any]:
    by = {(r.variant, r.seed): r for r in runs}
    out: dict[str, Any] = {"variants": {}, "paired": {}}
    for v, (name, path) in VARIANTS.items():
        mine = [r for r in runs if r.variant == v]
        gaps = [a.gap_ms for r in mine for a in r.answers if a.gap_ms is not None]
        delays = [(a.transcript - a.committed) * 1000 for r in mine for a in r.answers
                  if a.transcript is not None and a.committed is not None]
        reactions = [a.reaction_ms for r in mine for a in r.answers if a.reaction_ms is not None]
        late = []  # how much later than planned each turn end reached the session, against the session's earliest
        for r in mine:
            offsets = [a.stopped - a.scheduled for a in r.answers if a.scheduled is not None]
            late += [(x - min(offsets)) * 1000 for x in offsets]
        out["variants"][v] = {
            "name": name, "flow": str(path.relative_to(ROOT)), "sessions": len(mine),
            "completed": sum(1 for r in mine if r.result is not None and r.result.ok),
            "outcomes": sorted({r.result.outcome for r in mine if r.result is not None}),
            "errors": [r.error for r in mine if r.error],
            "collisions": sum(r.result.stats.get("collisions", 0) for r in mine if r.result is not None),
            "answers": sum(len(r.answers) for r in mine),
            "unanswered": sum(1 for r in mine for a in r.answers if a.audio is None),
            "gap": _stats(gaps),
            "transcription_delay": _stats(delays),
            "engine_reaction": _stats(reactions),
            "turn_end_lateness": _stats(late),
        }
    for v in ("a", "b"):
        diffs = []
        for seed in seeds:
            run_v, run_c = by.get((v, seed)), by.get(("c", seed))
            if run_v is None or run_c is None:
                continue
            for x, y in zip(run_v.answers, run_c.answers, strict=False):
                if x.gap_ms is not None and y.gap_ms is not None:
                    diffs.append(x.gap_ms - y.gap_ms)
        out["paired"][v] = _stats(diffs)
    a, c = out["variants"]["a"]["gap"], out["variants"]["c"]["gap"]
    out["targets"] = {"median_excess_ms": a["median_ms"] - c["median_ms"], "p95_excess_ms": a["p95_ms"] - c["p95_ms"],
                      "median_ok": a["median_ms"] - c["median_ms"] <= TARGET_MEDIAN_MS,
                      "p95_ok": a["p95_ms"] - c["p95_ms"] <= TARGET_P95_MS}
    return out


def run(seeds: int = 20, seed: int = 1, virtual: bool = False, speed: float = 1.0,
        spread_s: float = SPREAD_S, group: int = GROUP) -> dict[str, Any]:
    chosen = list(range(seed, seed + seeds))
    load0 = os.getloadavg()
    cpu: dict[str, Any] = {}
    if virtual:
        runs, lags = run_virtual(chosen)
    else:
        runs, lags, cpu = run_real_time(chosen, speed, spread_s, group)
    report = summarise(runs, chosen)
    report.update({"mode": "virtual" if virtual else "real time", "seeds": f"{seed}..{seed + seeds - 1}",
                   "speed": speed, "spread_s": spread_s, "load_before": load0, "load_after": os.getloadavg(),
                   "lag_p50_ms": pct(lags, 50) * 1000, "lag_p99_ms": pct(lags, 99) * 1000,
                   "lag_max_ms": max(lags, default=0.0) * 1000, **cpu,
                   "runs": [{"variant": r.variant, "seed": r.seed,
                             "answers": [{"stopped": a.stopped, "committed": a.committed, "transcript": a.transcript,
                                          "create": a.create, "audio": a.audio, "scheduled": a.scheduled,
                                          "received": a.received} for a in r.answers]}
                            for r in runs]})
    return report


def table(report: dict[str, Any]) -> str:
    rows = ["| flow | answers (replied) | answer -> first audio: median | p95 | mean | max | paired vs (c): median "
            "| p95 | engine: commit read -> create sent (median, p95, max) | transcription delay (median, range) "
            "| sessions completed | collisions |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for v, s in report["variants"].items():
        g, d, e = s["gap"], s["transcription_delay"], s["engine_reaction"]
        paired = report["paired"].get(v)
        pm = f"{paired['median_ms']:+.1f} ms | {paired['p95_ms']:+.1f} ms" if paired else "- | -"
        react = (f"{e['median_ms']:.2f}, {e['p95_ms']:.2f}, {e['max_ms']:.1f} ms" if e["n"]
                 else "- (the server replies)")
        rows.append(f"| {s['name']} | {s['answers']} ({s['answers'] - s['unanswered']}) | {g['median_ms']:.1f} ms | "
                    f"{g['p95_ms']:.1f} ms | {g['mean_ms']:.1f} ms | {g['max_ms']:.1f} ms | {pm} | {react} | "
                    f"{d['median_ms']:.0f} ms ({d['min_ms']:.0f}-{d['max_ms']:.0f}) | "
                    f"{s['completed']}/{s['sessions']} | {s['collisions']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeded worlds (three sessions each)")
    parser.add_argument("--seed", type=int, default=1, help="the first seed")
    parser.add_argument("--virtual", action="store_true", help="on virtual time, in this process")
    parser.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--spread", type=float, default=SPREAD_S, help="seconds over which sessions start")
    parser.add_argument("--group", type=int, default=GROUP, help="real time: seeds run this many at a time")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the simulators' child process
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(list(range(args.seed, args.seed + args.seeds)), args.speed))  # as `engine sim`
        return 0
    t0 = time.perf_counter()
    report = run(args.seeds, args.seed, args.virtual, args.speed, args.spread, args.group)
    print(f"turn taking ({report['mode']}): seeds {report['seeds']}, {time.perf_counter() - t0:.0f} s, "
          f"loop lag p50 {report['lag_p50_ms']:.1f} ms, p99 {report['lag_p99_ms']:.1f} ms\n")
    print(table(report))
    t = report["targets"]
    print(f"\n(a) - (c): median {t['median_excess_ms']:+.1f} ms (target <= {TARGET_MEDIAN_MS:g}), "
          f"p95 {t['p95_excess_ms']:+.1f} ms (target <= {TARGET_P95_MS:g})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
