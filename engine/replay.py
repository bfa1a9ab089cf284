"""Recorded sessions, read back: `engine replay` and `engine coverage`.

Rules of this module:
1. A trace is data: the inputs (`start`, `in`, `advance`) and, after each, the effects it caused.
   Replay feeds the inputs, at their recorded times, to a fresh core and compares effect by effect,
   so any change to the core or the flow that would have changed a real session shows up.
2. Transitions are named by `via` (`states.<s>.transitions[<i>]`, `states.<s>.after[<i>]`,
   `initial`), the same name the core puts in `Fired`; `edges(flow)` lists them in file order, and
   coverage and the diagrams (tools/render_flow.py) both use that list.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .flow import Flow
from .interview import Interview
from .trace import effect_record, event_from_record, flow_identity, read

__all__ = ["Edge", "edges", "fired", "replay", "Divergence", "coverage", "Coverage", "replay_main",
           "coverage_main", "format_delay"]

_INPUTS = ("start", "in", "advance")


# The flow's transitions, named as the core names them --------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One transition of the flow (or the initial arrow), as drawn and counted."""

    via: str
    source: str | None  # None for the initial arrow
    target: str | None  # None for an internal transition
    trigger: str  # "input.transcript", "all(response.done, playback.done)", "after 5s", "start"
    guard: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    timeout: bool = False

    @property
    def when(self) -> str:
        """Trigger and guard: `speech.started [speaking]`."""
        return self.trigger + (f" [{' and '.join(self.guard)}]" if self.guard else "")


def format_delay(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def edges(flow: Flow) -> list[Edge]:
    """Every transition of `flow`: the initial arrow, then per state its transitions and timeouts."""
    out = [Edge("initial", None, flow.initial, "start")]
    for name, state in flow.states.items():
        for i, tr in enumerate(state.transitions):
            events = tr.events
            trigger = events[0] if tr.event else f"all({', '.join(events)})"
            out.append(Edge(f"states.{name}.transitions[{i}]", name, tr.target, trigger, tuple(tr.guard),
                            tuple(a.name for a in tr.actions)))
        for i, timeout in enumerate(state.after):
            out.append(Edge(f"states.{name}.after[{i}]", name, timeout.target, f"after {format_delay(timeout.delay)}",
                            actions=tuple(a.name for a in timeout.actions), timeout=True))
    return out


def fired(lines: Iterable[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """The `Fired` effects of a trace, in order, as (t, record)."""
    return [(line["t"], line["out"]) for line in lines
            if isinstance(line.get("out"), dict) and line["out"].get("effect") == "Fired"]


# Replay -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """The first place where the core, fed the recorded inputs, did something else.

    `line` is the 1-based line of the input in the trace file (the meta line is line 1); `index`
    is the position of the differing effect among that input's effects. `expected` is None when
    the core produced an extra effect, `got` is None when it left out a recorded one.
    """

    line: int
    t: float
    input: str
    index: int
    expected: dict[str, Any] | None
    got: dict[str, Any] | None

    def __str__(self) -> str:
        where = _first_difference(self.expected, self.got)
        return "\n".join([
            f"diverged at line {self.line} (t={self.t:.3f}s, {self.input}), effect {self.index + 1}:",
            f"  expected: {_compact(self.expected)}",
            f"  got:      {_compact(self.got)}",
            *([f"  differs at: {where}"] if where else []),
        ])


@dataclass(frozen=True)
class _Step:
    line: int
    record: dict[str, Any]
    expected: list[dict[str, Any]] = field(default_factory=list)


def _steps(lines: Iterable[dict[str, Any]]) -> Iterator[_Step]:
    """Group a trace into inputs, each with the effects recorded after it."""
    step: _Step | None = None
    for number, line in enumerate(lines, start=1):
        if any(k in line for k in _INPUTS):
            if step is not None:
                yield step
            step = _Step(number, line)
        elif "out" in line:
            if step is None:
                # A trace without a `start` line (older runners): its first effects are start's.
                step = _Step(number, {"t": line.get("t", 0.0), "start": True})
            step.expected.append(line["out"])
    if step is not None:
        yield step


def _describe(record: dict[str, Any]) -> str:
    if "start" in record:
        return "start"
    if "advance" in record:
        return "advance"
    src = record["in"]
    return f"in {src['server'].get('type') if 'server' in src else src['engine'].get('type')}"


def _plain(value: Any) -> Any:
    """As it reads back from the trace file (tuples become lists, odd types strings)."""
    return json.loads(json.dumps(value, default=str))


def replay(lines: Iterable[dict[str, Any]], flow: Flow) -> Divergence | None:
    """Feed a trace's inputs to a fresh `Interview(flow)`; the first divergence, or None."""
    iv = Interview(flow)
    for step in _steps(lines):
        rec, t = step.record, step.record["t"]
        if "start" in rec:
            got = iv.start(t)
        elif "advance" in rec:
            got = iv.advance(t)
        else:
            got = iv.receive(event_from_record(rec["in"]), t)
        got_records = [_plain(effect_record(e)) for e in got]
        for i in range(max(len(got_records), len(step.expected))):
            want = step.expected[i] if i < len(step.expected) else None
            have = got_records[i] if i < len(got_records) else None
            if want != have:
                return Divergence(step.line, t, _describe(rec), i, want, have)
    return None


def _compact(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two records first differ (`event.response.instructions`), to read long effects."""
    if a is None or b is None:
        return ""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return path


_MISSING = object()


# Coverage -----------------------------------------------------------------------------------------


@dataclass
class Coverage:
    """What a set of sessions exercised of a flow. `taken` counts firings by `via`."""

    flow: Flow
    edges: list[Edge]
    taken: Counter[str] = field(default_factory=Counter)
    visited: Counter[str] = field(default_factory=Counter)  # state -> times entered
    unknown: Counter[str] = field(default_factory=Counter)  # vias the flow does not have (edited since?)
    sessions: int = 0

    @property
    def transitions(self) -> list[Edge]:
        """The author's transitions and timeouts (the initial arrow is not one)."""
        return [e for e in self.edges if e.via != "initial"]

    @property
    def never_taken(self) -> list[Edge]:
        return [e for e in self.transitions if not self.taken[e.via]]

    @property
    def never_visited(self) -> list[str]:
        return [s for s in self.flow.states if not self.visited[s]]


def coverage(flow: Flow, traces: Iterable[Iterable[dict[str, Any]] | Path]) -> Coverage:
    """Count which states and transitions the sessions in `traces` (line lists or paths) took."""
    cov = Coverage(flow, edges(flow))
    known = {e.via for e in cov.edges}
    for trace in traces:
        cov.sessions += 1
        for _, rec in fired(read(trace) if isinstance(trace, (str, Path)) else trace):
            counter = cov.taken if rec["via"] in known else cov.unknown
            counter[rec["via"]] += 1
            if rec.get("target") in flow.states:
                cov.visited[rec["target"]] += 1
    return cov


# Command line -------------------------------------------------------------------------------------


def _meta(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return lines[0].get("meta", {}) if lines else {}


def _load_trace(path: Path) -> list[dict[str, Any]] | None:
    try:
        lines = list(read(path))
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return None
    except ValueError as exc:
        print(f"{path}: not a trace (a line is not JSON: {exc})", file=sys.stderr)
        return None
    if not lines or "meta" not in lines[0]:
        print(f"{path}: not a trace (no meta line)", file=sys.stderr)
        return None
    return lines


def _load_flow(path: Path | None, trace: Path, lines: list[dict[str, Any]]) -> Flow | None:
    from .cli import load_flow_or_report

    if path is None:
        recorded = _meta(lines).get("flow")
        if not recorded or not Path(recorded).is_file():
            print(f"{trace}: the flow it was recorded with ({recorded or 'not named'}) cannot be read; "
                  f"pass --flow FLOW", file=sys.stderr)
            return None
        path = Path(recorded)
    return load_flow_or_report(path)


def replay_main(args: argparse.Namespace) -> int:
    """`engine replay TRACE [--flow FLOW]`: 0 identical, 1 diverged, 2 unreadable."""
    lines = _load_trace(args.trace)
    flow = _load_flow(args.flow, args.trace, lines) if lines is not None else None
    if lines is None or flow is None:
        return 2
    recorded = _meta(lines).get("flow_sha256")
    if recorded and recorded != flow_identity(flow.path).get("flow_sha256", recorded):
        print(f"note: {flow.path} has changed since this session was recorded", file=sys.stderr)
    divergence = replay(lines, flow)
    if divergence is not None:
        print(f"{args.trace}: {divergence}")
        return 1
    steps = list(_steps(lines))
    print(f"identical: {len(steps)} inputs, {sum(len(s.expected) for s in steps)} effects")
    return 0


def coverage_main(args: argparse.Namespace) -> int:
    """`engine coverage TRACE... [--flow FLOW]`: a table of what the sessions exercised."""
    traces = []
    for path in args.traces:
        lines = _load_trace(path)
        if lines is None:
            return 2
        traces.append(lines)
    flow = _load_flow(args.flow, args.traces[0], traces[0])
    if flow is None:
        return 2
    print(render_coverage(coverage(flow, traces)))
    return 0


def render_coverage(cov: Coverage) -> str:
    """Aligned text (stable, greppable, and the same in a terminal and a CI log)."""
    def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]

    def arrow(e: Edge) -> str:
        return f"{e.source} -> {e.target or '(internal)'}"

    head = ("via", "source -> target", "event", "taken")
    taken = [e for e in cov.transitions if cov.taken[e.via]]
    out = [f"{cov.flow.name}: {cov.sessions} session(s)", ""]
    out += table([head] + [(e.via, arrow(e), e.when, str(cov.taken[e.via])) for e in taken])
    never = cov.never_taken
    if never:
        out += ["", "never taken:"]
        out += ["  " + line for line in table([head[:3]] + [(e.via, arrow(e), e.when) for e in never])]
    if cov.never_visited:
        out += ["", f"never visited: {', '.join(cov.never_visited)}"]
    if cov.unknown:
        out += ["", f"not in this flow (edited since?): {', '.join(sorted(cov.unknown))}"]
    states = len(cov.flow.states)
    out += ["", f"states {states - len(cov.never_visited)}/{states}, "
                f"transitions {len(cov.transitions) - len(never)}/{len(cov.transitions)}"]
    return "\n".join(out)
