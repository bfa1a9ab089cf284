"""How many interviews one engine process carries: N concurrent sessions over real WebSockets.

    python -m benchmarks.sessions [--steps 100,200,300,400] [--modes steady] [--window 40] [--quick]

The simulator runs in ANOTHER process (`python -m engine sim --port 0 --speed X --persona
benchmarks/personas/short.yaml`, 127.0.0.1), so its CPU does not count against the engine. This
process runs N `engine.runner.Session`s of flows/assessment.yaml in one event loop (audio "none",
the virtual player; default sinks, writing to a temporary folder; the offline assessment job), all
started within STAGGER_S seconds. A ticker task measures how late `asyncio.sleep(0.01)` wakes
(event-loop lag) while every session of the step is running; CPU is this process's
`time.process_time()` over the step, divided by N. RSS per session is this process's resident
set while the step's sessions run (mean of 1 s samples in the measured window) minus the RSS just
before the step, divided by N; freed memory is kept by the allocator, so it is exact only for the
first step of a process: the command line runs each step in a fresh child process (`--one-process`
runs them all in this one). Loop CPU is the event-loop thread's own CPU over the window (the
share of one core it used: near 100 % the loop is saturated). Each step has a
hard wall-clock cap: sessions still running then are cancelled and counted as not finished. The
answer is the largest N whose p99 lag stays under 50 ms (at --speed 1: real time, a session lasts
~45 s).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import stop_child
from engine import eventloop
from engine import flow as flowmod
from engine.realtime import Endpoint
from engine.runner import Session
from engine.ui import PlainView

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "flows" / "assessment.yaml"
PERSONA = Path(__file__).resolve().parent / "personas" / "short.yaml"
LAG_TARGET_S = 0.050
TICK_S = 0.010
STAGGER_S = 2.0  # burst: the N sessions of a step start within this many seconds (wall)
RAMP_S = 52.0  # steady: first starts spread over about one session length (simulated seconds)
WINDOW_S = 40.0  # steady: lag is measured over this many wall seconds once every slot runs
CLK_TCK = os.sysconf("SC_CLK_TCK")


def runqueue_wait_s() -> float:
    """How long the calling thread has waited for a CPU (ready to run, not running): the second
    field of /proc/thread-self/schedstat. Large when the machine has more work than cores."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_mb() -> float:
    """This process's resident set size (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Simulator:
    """`python -m engine sim` in a child process; `url` once it listens."""

    def __init__(self, speed: float, seed: int = 0):
        self.speed, self.seed = speed, seed
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> Simulator:
        cmd = [sys.executable, "-m", "engine", "sim", "--host", "127.0.0.1", "--port", "0", "--speed", str(self.speed),
               "--persona", str(PERSONA), "--seed", str(self.seed)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        buffer = ""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.readline()
            buffer += chunk or ""
            if "ws://" in buffer:
                self.url = buffer[buffer.index("ws://"):].split()[0]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine sim exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("engine sim did not report its URL within 30 s")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the simulator process so far."""
        if self.proc is None:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def step(n: int, url: str, flow: flowmod.Flow, speed: float, cap_s: float, out: Path,
               mode: str = "burst", window_s: float = 60.0) -> dict[str, Any]:
    """One step of N sessions.

    burst: N sessions start within STAGGER_S and run once; lag is measured while all N run. They
        go through each phase (greeting, answers, assessment, the back-to-back ack/summary/goodbye
        audio, saving) at the same moment: the worst case for one event loop.
    steady: N slots, the first sessions' starts spread over one session length (RAMP_S / speed), each
        slot starting a new interview as soon as its last one ends; lag is measured over `window_s`
        once every slot has started, then the slots are cancelled. N interviews in progress at any
        time, in every phase mixed: the load of a server with N concurrent users.
    """
    loop = asyncio.get_running_loop()
    state = {"started": 0, "finished": 0, "running": 0}
    ticks: list[tuple[float, float, bool]] = []  # (time, lag, inside the measurement window)
    stop = asyncio.Event()
    results: list[tuple[Any, float]] = []
    ramp = STAGGER_S if mode == "burst" else RAMP_S / speed
    t_start = loop.time()

    def measuring() -> bool:
        if mode == "burst":
            return state["started"] == n and state["finished"] == 0
        return t_start + ramp <= loop.time() <= t_start + ramp + window_s

    rss0 = rss_mb()
    rss: list[float] = []  # samples while measuring

    async def ticker() -> None:
        last_rss = 0.0
        while not stop.is_set():
            # The lag on the system clock, not the loop's: uvloop's loop.time() is read once per
            # iteration (milliseconds), which would hide part of the lateness being measured.
            t, wall = loop.time(), time.perf_counter()
            await asyncio.sleep(TICK_S)
            inside = measuring()
            ticks.append((t, time.perf_counter() - wall - TICK_S, inside))
            if inside and t - last_rss >= 1.0:
                last_rss = t
                rss.append(rss_mb())

    async def one(i: int, k: int) -> None:
        session = Session(flow, Endpoint(f"{url}?model=gpt-realtime", simulated=True), out=out, audio="none",
                          speed=speed, view=PlainView(stream=io.StringIO()), session_id=f"n{n}-{i:04d}-{k}")
        state["started"] += 1
        state["running"] += 1
        t0 = loop.time()
        try:
            result = await session.run()
        finally:
            state["finished"] += 1
            state["running"] -= 1
        results.append((result, loop.time() - t0))

    closing = asyncio.Event()  # Session.run() turns a cancel into an "interrupted" result: stop looping

    async def slot(i: int) -> None:
        await asyncio.sleep(ramp * i / n)
        k = 0
        while not closing.is_set():
            await one(i, k)
            k += 1
            if mode == "burst":
                return

    tick = asyncio.ensure_future(ticker())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.ensure_future(slot(i)) for i in range(n)]
    cpu_window = loop_cpu = loop_wait = None
    if mode == "burst":
        done, pending = await asyncio.wait(tasks, timeout=cap_s)
    else:
        await asyncio.sleep(ramp)
        c0, t0, w0 = time.process_time(), time.thread_time(), runqueue_wait_s()
        await asyncio.sleep(window_s)
        cpu_window, loop_cpu = time.process_time() - c0, time.thread_time() - t0
        loop_wait = runqueue_wait_s() - w0
        done, pending = set(), set(tasks)
    closing.set()
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=30)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stop.set()
    await tick
    errors = [repr(t.exception()) for t in done if not t.cancelled() and t.exception() is not None]
    finished = [(r, d) for r, d in results if not r.reason.startswith("interrupted")]
    ok = [r for r, _ in finished if r.ok]
    durations = [d for _, d in finished]
    window = [lag for _, lag, inside in ticks if inside]
    every = [lag for _, lag, _ in ticks]
    reasons: dict[str, int] = {}
    for r, _ in finished:
        if not r.ok:
            reasons[r.reason[:80]] = reasons.get(r.reason[:80], 0) + 1
    session_s = statistics.fmean(durations) if durations else float("nan")
    if mode == "burst":
        cpu_per_session = cpu / n
        not_finished = len(pending)
    else:  # CPU of the window, per interview's worth of work done in it
        cpu_per_session = (cpu_window or 0.0) / (n * window_s / session_s) if durations else float("nan")
        not_finished = 0
    return {
        "n": n, "mode": mode, "sessions": len(finished), "ok": len(ok), "not_finished": not_finished,
        "errors": errors[:3], "failed_reasons": reasons,
        "collisions": sum(r.stats.get("collisions", 0) for r, _ in finished),
        "sink_failures": sum(len(r.failures) for r, _ in finished),
        "sink_failure_kinds": dict(Counter(f.split(":")[0][:60] for r, _ in finished for f in r.failures)),
        "wall_s": wall, "cpu_s": cpu, "cpu_per_session_s": cpu_per_session,
        "session_s_mean": session_s,
        "process_cpu_share": cpu_window / window_s if cpu_window is not None else cpu / wall,
        "loop_cpu_share": loop_cpu / window_s if loop_cpu is not None else float("nan"),
        # the loop thread ready to run but not given a CPU (other processes, the simulator's included)
        "loop_runqueue_share": loop_wait / window_s if loop_wait is not None else float("nan"),
        "cpu_share_per_session": cpu_per_session / session_s if durations else float("nan"),
        "lag_p50_ms": pct(window, 50) * 1000, "lag_p99_ms": pct(window, 99) * 1000,
        "lag_max_ms": max(window, default=0) * 1000, "lag_ticks": len(window),
        "lag_all_p99_ms": pct(every, 99) * 1000, "lag_all_max_ms": max(every, default=0) * 1000,
        "rss_before_mb": rss0, "rss_mb": statistics.fmean(rss) if rss else float("nan"),
        "rss_per_session_kb": (statistics.fmean(rss) - rss0) * 1024 / n if rss else float("nan"),
    }


def construction_ms(flow: flowmod.Flow, n: int = 30) -> dict[str, float]:
    """How long `Session(...)` blocks the event loop, with the default job registry and with a
    registry looked up once and passed in (the difference is `jobs.registry()`, which reads every
    installed package's entry points each time)."""
    from engine.jobs import registry

    jobs = registry()
    out = {}
    for label, kwargs in (("default", {}), ("jobs passed in", {"jobs": jobs})):
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            Session(flow, Endpoint("ws://127.0.0.1:9/v1/realtime", simulated=True), out=Path("/nonexistent"),
                    view=PlainView(stream=io.StringIO()), session_id=f"c{i}", **kwargs)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times) * 1000
    return out


def run(steps: list[int], speed: float, cap_s: float, seed: int = 0, progress: bool = True,
        out_dir: Path | None = None, modes: tuple[str, ...] = ("burst", "steady"),
        window_s: float = WINDOW_S) -> dict[str, Any]:
    """`out_dir`: where the sessions write their outputs (a temporary folder inside it; default the
    system's temporary directory)."""
    from engine.assessment import warm_up

    warm_up()  # once per process, as the runner does; outside every measurement
    flow = flowmod.load(FLOW)
    report: dict[str, Any] = {"speed": speed, "cap_s": cap_s, "seed": seed, "stagger_s": STAGGER_S,
                              "persona": str(PERSONA.relative_to(ROOT)), "steps": [],
                              "load_before": os.getloadavg(), "construction_ms": construction_ms(flow),
                              "modes": list(modes), "window_s": window_s, "ramp_s": RAMP_S / speed}
    report["out_dir"] = str(out_dir or tempfile.gettempdir())
    with Simulator(speed, seed) as sim, tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        report["simulator"] = sim.url
        # One session first: the simulator synthesises and caches the voices, the engine warms up.
        eventloop.run(step(1, sim.url, flow, speed, cap_s, Path(tmp) / "warm"))
        for mode in modes:
            for n in steps:
                sim0 = sim.cpu_s()
                load0 = os.getloadavg()[0]
                result = eventloop.run(step(n, sim.url, flow, speed, cap_s, Path(tmp) / f"{mode}{n}", mode, window_s))
                result["simulator_cpu_s"] = sim.cpu_s() - sim0
                result["load_1min_before"] = load0
                report["steps"].append(result)
                if progress:
                    print(f"  {mode} N={n}: p50 {result['lag_p50_ms']:.1f} ms, p99 {result['lag_p99_ms']:.1f} ms, "
                          f"ok {result['ok']}/{result['sessions']}, {result['wall_s']:.0f} s", file=sys.stderr)
                if result["lag_p99_ms"] > 8 * LAG_TARGET_S * 1000 or result["not_finished"] > n // 2:
                    break  # far past the target: larger steps only take longer to say the same
    report["load_after"] = os.getloadavg()
    report["max_n_under_target"] = {
        mode: max((s["n"] for s in report["steps"] if s["mode"] == mode and s["lag_p99_ms"] < LAG_TARGET_S * 1000
                   and s["ok"] == s["sessions"] > 0), default=0) for mode in modes}
    return report


def run_fresh(steps: list[int], speed: float, cap_s: float, modes: tuple[str, ...], window_s: float,
              out_dir: Path | None = None) -> dict[str, Any]:
    """`run`, each step in a fresh child process (`--one-process`), so RSS per session is exact for
    every step (a process keeps the memory freed by its earlier steps). Same report."""
    report: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for n in steps:
                out = Path(tmp) / f"{mode}{n}.json"
                cmd = [sys.executable, "-m", "benchmarks.sessions", "--one-process", "--steps", str(n), "--modes", mode,
                       "--speed", str(speed), "--cap", str(cap_s), "--window", str(window_s), "--json", str(out)]
                if out_dir is not None:
                    cmd += ["--out", str(out_dir)]
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
                child = json.loads(out.read_text())
                if report is None:
                    report = {**child, "steps": [], "modes": list(modes), "fresh_process_per_step": True}
                report["steps"] += child["steps"]
                result = child["steps"][-1]
                if result["lag_p99_ms"] > 8 * LAG_TARGET_S * 1000 or result["not_finished"] > n // 2:
                    break  # far past the target: larger steps only take longer to say the same
    assert report is not None
    report["load_after"] = os.getloadavg()
    report["max_n_under_target"] = {
        mode: max((s["n"] for s in report["steps"] if s["mode"] == mode and s["lag_p99_ms"] < LAG_TARGET_S * 1000
                   and s["ok"] == s["sessions"] > 0), default=0) for mode in modes}
    return report


def profile_step(n: int, speed: float, cap_s: float) -> str:
    """cProfile of one step (main thread only: the assessment's worker threads are not in it),
    own time grouped by where the code lives, with the top functions."""
    import cProfile
    import pstats

    from engine.assessment import warm_up

    warm_up()
    flow = flowmod.load(FLOW)
    with Simulator(speed) as sim, tempfile.TemporaryDirectory() as tmp:
        eventloop.run(step(1, sim.url, flow, speed, cap_s, Path(tmp) / "warm"))
        prof = cProfile.Profile()
        cpu0 = time.process_time()
        prof.enable()
        result = eventloop.run(step(n, sim.url, flow, speed, cap_s, Path(tmp) / "run"))
        prof.disable()
        cpu = time.process_time() - cpu0
    stats = pstats.Stats(prof)
    groups: dict[str, float] = {}
    funcs = []
    for (file, line, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/engine/" in file and "site-packages" not in file:
            group = "engine/" + file.rsplit("/engine/", 1)[1]
        elif "site-packages/" in file:
            group = file.split("site-packages/", 1)[1].split("/", 1)[0]
        elif file.startswith(("~", "<")):
            group = "builtins (C: json, select, socket, base64, ...)"
        else:
            group = "stdlib " + Path(file).stem if "python3" in file else file
        groups[group] = groups.get(group, 0.0) + tottime
        funcs.append((tottime, f"{Path(file).name}:{line}({name})"))
    total = sum(groups.values())
    lines = [f"profile of N={n} at speed {speed:g}: process CPU {cpu:.2f} s ({cpu / n * 1000:.0f} ms/session), "
             f"{result['ok']}/{n} ok; main-thread own time {total:.2f} s by place:"]
    for group, t in sorted(groups.items(), key=lambda kv: -kv[1])[:16]:
        lines.append(f"  {t / total * 100:5.1f} %  {group}")
    lines.append("top functions (own time):")
    for t, name in sorted(funcs, reverse=True)[:12]:
        lines.append(f"  {t / total * 100:5.1f} %  {name}")
    return "\n".join(lines)


def table(report: dict[str, Any]) -> str:
    rows = ["| load | N | interviews finished ok | lag p50 | lag p99 | lag max | CPU / interview | "
            "CPU share / interview | loop thread CPU | loop waiting for a CPU | process CPU | RSS / session | "
            "interview length | simulator CPU | collisions | load (1 min) before |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["steps"]:
        rows.append(f"| {s['mode']} | {s['n']} | {s['ok']}/{s['sessions']} | {s['lag_p50_ms']:.1f} ms | "
                    f"{s['lag_p99_ms']:.1f} ms | "
                    f"{s['lag_max_ms']:.0f} ms | {s['cpu_per_session_s'] * 1000:.0f} ms | "
                    f"{s['cpu_share_per_session'] * 100:.2f} % | {s.get('loop_cpu_share', float('nan')) * 100:.0f} % | "
                    f"{s.get('loop_runqueue_share', float('nan')) * 100:.0f} % | "
                    f"{s.get('process_cpu_share', float('nan')) * 100:.0f} % | "
                    f"{s.get('rss_per_session_kb', float('nan')):.0f} KB | "
                    f"{s['session_s_mean']:.1f} s | "
                    f"{s['simulator_cpu_s']:.1f} s | {s['collisions']} | {s['load_1min_before']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="100,200,300,400")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--cap", type=float, default=240.0, help="wall-clock seconds per step")
    parser.add_argument("--quick", action="store_true", help="steps 10,25 at --speed 10, cap 40 s, window 10 s")
    parser.add_argument("--modes", default="steady", help="burst, steady or both (comma-separated)")
    parser.add_argument("--one-process", action="store_true", help="every step in this process (RSS per session "
                        "then exact only for the first)")
    parser.add_argument("--window", type=float, default=WINDOW_S, help="steady: measured seconds per step")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the sessions' outputs (default: the system temp dir)")
    parser.add_argument("--profile", type=int, metavar="N", help="only profile one step of N sessions")
    args = parser.parse_args(argv)
    if args.profile:
        print(profile_step(args.profile, args.speed, args.cap))
        return 0
    steps, speed, cap, window = [int(x) for x in args.steps.split(",")], args.speed, args.cap, args.window
    if args.quick:
        steps, speed, cap, window = [10, 25], 10.0, 40.0, 10.0
    t0 = time.perf_counter()
    modes = tuple(args.modes.split(","))
    if args.one_process or args.quick:
        report = run(steps, speed, cap, out_dir=args.out, modes=modes, window_s=window)
    else:
        report = run_fresh(steps, speed, cap, modes, window, out_dir=args.out)
    print(f"sessions: speed {speed:g}, {time.perf_counter() - t0:.0f} s\n")
    print(table(report))
    print(f"\nlargest N with p99 lag < {LAG_TARGET_S * 1000:.0f} ms and every session ok: "
          f"{report['max_n_under_target']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
