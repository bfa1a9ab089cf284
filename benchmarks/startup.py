"""Start-up: from launching `engine run flows/assessment.yaml` to the first `response.create`.

    python -m benchmarks.startup [--runs N] [--json FILE]

Each run launches the console script exactly as a user types it (`engine run flows/assessment.yaml
--no-ui --audio none --out TMP`, no OPENAI_API_KEY: the embedded simulator) and times, on the
system-wide monotonic clock, the moments below. They are taken by a probe that the run's
interpreter imports as `sitecustomize` (a temporary folder on PYTHONPATH): it only reads the clock
when a watched module has finished importing and when the simulator first receives a
`response.create` (and first sends `response.created`). It imports nothing the engine would not,
so the run is the same run without it. Once the first create is seen the run is stopped (SIGTERM:
the session ends as interrupted, which is not timed).

The same is done for `engine --help` and `engine check flows/assessment.yaml` (launch to exit),
and each command's imports are listed from `python -X importtime` (which heavy packages it loads).
Three modes (MODES): `env` as this machine runs it, `cached` with compiled modules kept (a
pip-installed engine), `warm` also with the flow and persona kept validated by an earlier run
(engine.cache: any later run of an unchanged flow). The modes take turns run by run, so each sees
the machine's load of the same minutes. Wall-clock times on a shared machine: min and median of N
runs are reported; min is the one to compare (the machine can only add to it).

`--against TREE` also runs the engine of another checkout (`git worktree add TREE COMMIT`; its own
`engine/` and `flows/assessment.yaml`, put first on the path) in turn with this one, and prints the
ratio of the two: a before/after that holds on any machine, since both see the same minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "flows" / "assessment.yaml"
TIMEOUT_S = 60.0  # a run that has not sent its first create by then is a failure, not a data point
HEAVY = ("pydantic", "numpy", "asyncio", "websockets", "transitions", "yaml", "sqlite3", "engine.sim",
         "engine.flow", "engine.runner", "engine.assessment", "jsonschema")
# Module -> the mark the probe records when it has finished importing (nested imports finish first).
WATCHED = ("engine.cli", "engine.flow", "engine.runner", "engine.simulator", "engine.assessment")

PROBE = r'''
# Written by benchmarks/startup.py: marks on the monotonic clock, one "name seconds" line each.
import os as _os, sys as _sys, time as _time

_PATH = _os.environ.get("ENGINE_STARTUP_PROBE")


def _mark(name, _out=[]):
    if not _out:
        _out.append(open(_PATH, "a", buffering=1))
    _out[0].write(f"{name} {_time.monotonic()!r}\n")


class _Watch:
    """A meta path finder that only times the watched modules' execution (finds nothing itself)."""

    watched = set(_os.environ.get("ENGINE_STARTUP_WATCH", "").split(","))

    # Where the simulator's session class lives: engine.sim.session, engine.simulator before the split.
    hooked = {"engine.sim.session", "engine.simulator"}

    def find_spec(self, name, path=None, target=None):
        if name not in self.watched and name not in self.hooked:
            return None
        for finder in _sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                run = spec.loader.exec_module

                def exec_module(module, run=run, name=name):
                    run(module)
                    if name in self.hooked:
                        _hook(module)
                    if name in self.watched:
                        _mark(name)

                spec.loader.exec_module = exec_module
                return spec
        return None


def _hook(module):
    """Mark the simulator's first received response.create and first sent response.created."""
    found = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__
             and "_on_response_create" in vars(c) and "_send" in vars(c)]
    if not found:
        return
    cls = found[0]
    receive, send = cls._on_response_create, cls._send
    seen = set()

    async def on_create(self, event):
        if "create" not in seen:
            seen.add("create")
            _mark("first_create")
        return await receive(self, event)

    async def on_send(self, event):
        kind = event.get("type")
        if "created" not in seen and kind == "response.created":
            seen.add("created")
            _mark("first_created")
        if "audio" not in seen and kind == "response.output_audio.delta":
            seen.add("audio")
            _mark("first_audio")
        return await send(self, event)

    cls._on_response_create, cls._send = on_create, on_send


if _PATH:
    _mark("site")
    _sys.meta_path.insert(0, _Watch())
'''


def engine_command() -> list[str]:
    """The console script of this environment (what a user runs), else `python -m engine`."""
    script = Path(sys.executable).parent / "engine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def _env(probe_dir: Path | None, marks: Path | None, pycache: Path | None = None,
         validated: Path | None = None, tree: Path | None = None) -> dict[str, str]:
    """The run's environment: this one without an API key; with `pycache`, compiled modules are
    kept there (as an installed engine has them) even where PYTHONDONTWRITEBYTECODE is set; with
    `validated`, the engine keeps validated flows and personas there (engine.cache), else not at all;
    with `tree`, that checkout's engine is imported instead of this one."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "PYTHONPATH")}
    env["ENGINE_CACHE_DIR"] = str(validated) if validated is not None else "off"
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    path = [str(tree)] if tree is not None else []
    if probe_dir is not None and marks is not None:
        path.insert(0, str(probe_dir))
        env["ENGINE_STARTUP_PROBE"] = str(marks)
        env["ENGINE_STARTUP_WATCH"] = ",".join(WATCHED)
    if path:  # before site-packages, so before the editable install's finder
        env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def _read_marks(path: Path) -> dict[str, float]:
    marks: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            marks.setdefault(name, float(value))
    return marks


def run_once(tmp: Path, i: int, importtime: bool = False, pycache: Path | None = None,
             validated: Path | None = None, tree: Path | None = None) -> tuple[dict[str, float], str]:
    """One `engine run`: seconds from launch to each mark, and its stderr (with `importtime`, the
    interpreter's import times: that run is slower and is not one of the timed ones)."""
    probe_dir = tmp / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    tag = f"{'base-' if tree else ''}{'env' if pycache is None else 'cold' if validated is None else 'warm'}{i}"
    marks_path = tmp / f"marks-{tag}.txt"
    out = tmp / f"out-{tag}"
    root = tree or ROOT
    command = [*engine_command(), "run", str(root / FLOW.relative_to(ROOT)), "--no-ui", "--audio", "none",
               "--out", str(out)]
    env = _env(probe_dir, marks_path, pycache, validated, tree)
    if importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    errors = tmp / f"stderr-{tag}.txt"
    t0 = time.monotonic()
    with open(errors, "w") as stderr:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        while "first_create" not in (marks := _read_marks(marks_path)):
            if proc.poll() is not None:
                raise RuntimeError(f"engine run exited ({proc.returncode}) before its first response.create: "
                                   f"{errors.read_text()[-400:]}")
            if time.monotonic() - t0 > TIMEOUT_S:
                raise RuntimeError(f"no response.create within {TIMEOUT_S:g} s")
            time.sleep(0.002)
        cpu = _cpu_s(proc.pid)  # within a poll (2 ms) of the create: what the machine's load cannot inflate
        if importtime:
            proc.kill()  # at once: the imports after the first create are not the start's
        else:
            _wait_for(marks_path, "first_audio", 5.0)  # what follows the create: the greeting's first audio
        marks = _read_marks(marks_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return {**{name: t - t0 for name, t in marks.items()}, "cpu_at_first_create": cpu}, errors.read_text()


def _wait_for(path: Path, mark: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while mark not in _read_marks(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_command(args: list[str], runs: int, pycache: Path | None, validated: Path | None) -> list[float]:
    """Wall seconds from launch to exit of `engine ARGS`, `runs` times (after one untimed run)."""
    times = []
    for i in range(runs + 1):
        t0 = time.monotonic()
        subprocess.run([*engine_command(), *args], cwd=ROOT, env=_env(None, None, pycache, validated),
                       capture_output=True, check=False, timeout=TIMEOUT_S)
        if i:  # the first one fills the page cache
            times.append(time.monotonic() - t0)
    return times


def imports_of(args: list[str], pycache: Path | None, validated: Path | None) -> dict[str, Any]:
    """Which of the HEAVY packages `engine ARGS` imports (from `python -X importtime`, one run)."""
    env = {**_env(None, None, pycache, validated), "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([*engine_command(), *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=TIMEOUT_S)
    return parse_importtime(proc.stderr)


def parse_importtime(text: str) -> dict[str, Any]:
    """The number of modules imported and the cumulative import time (ms) of the HEAVY ones."""
    cumulative: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            cumulative.setdefault(m[4], int(m[2]))
    heavy = {name: round(us / 1000, 1) for name, us in cumulative.items() if name in HEAVY}
    return {"modules": len(cumulative), "heavy_ms": heavy}


def _commit(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False, timeout=TIMEOUT_S)
    return proc.stdout.strip() or "?"


def summary(values: list[float]) -> dict[str, float]:
    return {"min_ms": min(values) * 1000, "median_ms": statistics.median(values) * 1000,
            "max_ms": max(values) * 1000, "n": len(values)}


MODES = {
    "env": "this machine's environment (PYTHONDONTWRITEBYTECODE=1 here: every engine module is compiled "
           "from source at each launch), no validated files kept (ENGINE_CACHE_DIR=off)",
    "cached": "compiled modules cached (PYTHONPYCACHEPREFIX; what a pip-installed engine has), the flow and "
              "persona validated at each launch (ENGINE_CACHE_DIR=off: a flow's first run after an edit)",
    "warm": "compiled modules cached and the flow and persona kept validated by an earlier run (engine.cache: "
            "every later run of an unchanged flow)",
}


def run(runs: int = 10, progress: bool = False, modes: tuple[str, ...] = tuple(MODES),
        against: Path | None = None) -> dict[str, Any]:
    """`runs` launches per mode (and per engine, with `against`), the modes and engines in turn."""
    report: dict[str, Any] = {
        "runs": runs,
        "command": " ".join(["engine", "run", str(FLOW.relative_to(ROOT)), "--no-ui", "--audio", "none",
                             "--out", "TMP"]),
        "bytecode_env": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
        "python": platform.python_version(), "load_before": os.getloadavg(), "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="engine-startup-") as tmp_name:
        tmp = Path(tmp_name)
        where = {m: (None if m == "env" else tmp / "pycache", tmp / "validated" if m == "warm" else None)
                 for m in modes}
        stderr: dict[str, str] = {}
        samples: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        base: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for mode in modes:
            run_once(tmp, -1, pycache=where[mode][0], validated=where[mode][1])  # page cache, .pyc, cache entries
            stderr[mode] = run_once(tmp, -2, importtime=True, pycache=where[mode][0], validated=where[mode][1])[1]
            if against is not None:
                run_once(tmp, -1, pycache=where[mode][0], validated=where[mode][1], tree=against)
        for i in range(runs):  # modes and engines take turns: each sees the machine's load of the same minutes
            for mode in modes:
                samples[mode].append(run_once(tmp, i, pycache=where[mode][0], validated=where[mode][1])[0])
                if against is not None:
                    base[mode].append(run_once(tmp, i, pycache=where[mode][0], validated=where[mode][1],
                                               tree=against)[0])
                if progress:
                    print(f"  {mode} run {i + 1}/{runs}: first response.create at "
                          f"{samples[mode][-1]['first_create'] * 1000:.0f} ms"
                          + (f" (against: {base[mode][-1]['first_create'] * 1000:.0f} ms)" if against else ""),
                          file=sys.stderr)
        names = ["site", *WATCHED, "first_create", "cpu_at_first_create", "first_created", "first_audio"]
        if against is not None:
            report["against"] = {"tree": str(against), "commit": _commit(against), "modes": {
                mode: {"marks": {name: summary([s[name] for s in base[mode] if name in s]) for name in names
                                 if any(name in s for s in base[mode])}, "samples": base[mode]}
                for mode in modes}}
        for mode in modes:
            pycache, validated = where[mode]
            report["modes"][mode] = {
                "marks": {name: summary([s[name] for s in samples[mode] if name in s]) for name in names
                          if any(name in s for s in samples[mode])},
                "samples": samples[mode],
                "help": summary(time_command(["--help"], runs, pycache, validated)),
                "check": summary(time_command(["check", str(FLOW)], runs, pycache, validated)),
                "imports": {"run": parse_importtime(stderr[mode]),
                            "check": imports_of(["check", str(FLOW)], pycache, validated),
                            "help": imports_of(["--help"], pycache, validated)},
            }
    report["load_after"] = os.getloadavg()
    return report


LABELS = {"site": "interpreter up (site imported)", "engine.cli": "engine.cli imported",
          "engine.flow": "engine.flow imported", "engine.runner": "engine.runner imported",
          "engine.simulator": "simulator imported", "engine.assessment": "assessment imported",
          "first_create": "**first response.create at the simulator**",
          "first_created": "its response.created sent (the simulator has made the greeting's audio)",
          "first_audio": "the greeting's first audio sent (after the simulated time to first audio)",
          "cpu_at_first_create": "CPU time of the process (all threads) at the first response.create"}


def table(report: dict[str, Any]) -> str:
    """Launch -> each moment, one column pair (min, median) per mode."""
    modes = list(report["modes"])
    head = "| moment (from launch) | " + " | ".join(f"{m}: min | {m}: median" for m in modes) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(modes)]
    names = list(dict.fromkeys(n for m in modes for n in report["modes"][m]["marks"]))
    for name in names:
        cells = []
        for m in modes:
            s = report["modes"][m]["marks"].get(name)
            cells.append(f"{s['min_ms']:.0f} ms | {s['median_ms']:.0f} ms" if s else "- | -")
        rows.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    for key, label in (("help", "`engine --help`, launch to exit"),
                       ("check", "`engine check flows/assessment.yaml`, launch to exit")):
        cells = [f"{report['modes'][m][key]['min_ms']:.0f} ms | {report['modes'][m][key]['median_ms']:.0f} ms"
                 for m in modes]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def against_table(report: dict[str, Any]) -> str:
    """This engine against the other checkout's, launch -> first response.create, per mode."""
    base = report["against"]
    rows = [f"| mode | this: min | this: median | {base['commit']}: min | {base['commit']}: median "
            "| ratio of mins | ratio of medians |", "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, other in base["modes"].items():
        a, b = report["modes"][mode]["marks"]["first_create"], other["marks"]["first_create"]
        rows.append(f"| {mode} | {a['min_ms']:.0f} ms | {a['median_ms']:.0f} ms | {b['min_ms']:.0f} ms "
                    f"| {b['median_ms']:.0f} ms | {a['min_ms'] / b['min_ms']:.2f} "
                    f"| {a['median_ms'] / b['median_ms']:.2f} |")
    return "\n".join(rows)


def imports_table(report: dict[str, Any], mode: str = "cached") -> str:
    imports = report["modes"][mode]["imports"]
    rows = ["| command | modules imported | heavy packages among them (cumulative import ms under -X importtime) |",
            "|---|---:|---|"]
    for key, label in (("help", "`engine --help`"), ("check", "`engine check flows/assessment.yaml`"),
                       ("run", "`engine run`, launch to its first response.create")):
        imp = imports[key]
        heavy = ", ".join(f"{k} {v:g}" for k, v in sorted(imp["heavy_ms"].items(), key=lambda kv: -kv[1])) or "none"
        rows.append(f"| {label} | {imp['modules']} | {heavy} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES), help="env, cached, warm (comma-separated)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="also run the engine of this checkout (e.g. a git worktree of an older commit)")
    args = parser.parse_args(argv)
    if args.against is not None and not (args.against / "engine" / "cli.py").is_file():
        parser.error(f"{args.against}: not a checkout of the engine (no engine/cli.py)")
    against = args.against.resolve() if args.against is not None else None
    report = run(args.runs, progress=True, modes=tuple(args.modes.split(",")), against=against)
    print(table(report))
    if against is not None:
        print()
        print(against_table(report))
    print()
    print(imports_table(report, list(report["modes"])[-1]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
