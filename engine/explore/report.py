"""`engine check --explore`: explore each valid flow, print what was found, write the counterexamples.

Each violation is one line, `path:line:col: <property>: state '<s>': <detail>; counterexample:
DIR/<file>.trace.jsonl (N steps)`, where the position is the state's in the flow file. The trace is
written the way `engine run` writes one (engine.trace.TraceWriter, from a fresh core), so `engine
replay` reproduces it and `tools/render_flow.py FLOW --trace FILE` draws it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .. import flow as flowmod
from ..errors import FlowError
from ..source import Document, Unreadable, read_yaml
from ..trace import TraceWriter, flow_identity
from .search import Bounds, Result, Violation, explore, rerun
from .world import PROPERTIES

__all__ = ["explore_file", "write_trace", "summary"]

def explore_file(path: Path, bounds: Bounds, out: Path) -> int:
    """Explore one flow that `engine check` found valid; print the summary, the violations (their
    traces under `out`) and the warnings. Returns 0, or 1 if a property is violated."""
    try:
        flow = flowmod.load(path)
    except (FlowError, Unreadable) as exc:  # changed since the check: report it as it is
        print(exc, file=sys.stderr)
        return 1
    result = explore(flow, bounds)
    print(summary(result, path))
    for line in findings(result, path, out):
        print(line)
    return 1 if result.violations else 0


def summary(result: Result, path: Path) -> str:
    rate = result.explored / result.seconds if result.seconds > 0 else 0.0
    cut = "complete" if result.complete else f"cut by the {result.cut}"
    return (f"{path}: explored {result.explored} states ({result.distinct} distinct, {result.transitions} "
            f"transitions between them), flow transitions covered {result.covered}/{result.flow_transitions}, "
            f"{rate:.0f} states/s, {result.seconds:.1f} s; {cut} (depth {result.bounds.depth}, answers "
            f"{result.answers}, faults {result.bounds.faults})")


def findings(result: Result, path: Path, out: Path) -> list[str]:
    """The violation lines (writing their traces under `out`), then the warnings."""
    doc = _document(path)
    folder = out / path.stem
    for old in folder.glob("*.trace.jsonl") if folder.is_dir() else ():
        old.unlink()  # the counterexamples of an earlier run of this flow
    lines = []
    order = list(PROPERTIES)
    for v in sorted(result.violations, key=lambda v: (order.index(v.finding.prop), len(v.labels))):
        f = v.finding
        trace, steps = write_trace(result, v, folder)
        line, col = _position(doc, ("states", f.state))
        lines.append(f"{path}:{line}:{col}: {f.prop}: state '{f.state}': {f.detail}; counterexample: {trace} "
                     f"({steps} steps)")
    for w in result.warnings:
        loc = ("states", w.state) if w.via is None else _loc(w.via)
        line, col = _position(doc, loc)
        lines.append(f"{path}:{line}:{col}: warning: {w.message}")
    return lines


def write_trace(result: Result, violation: Violation, folder: Path) -> tuple[Path, int]:
    """Write `violation`'s counterexample from a fresh core; returns the file and its input count."""
    f = violation.finding
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{f.prop}-{f.state}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.trace.jsonl"
    steps = rerun(result.flow, result.bounds, result.answers, violation.labels)
    if f.prop in ("livelock", "no-final"):  # properties of the graph: the rerun must reach the same state
        reproduced = steps[-1].key == violation.key and (
            violation.entry < 0 or steps[violation.entry].key == violation.key)
    else:
        reproduced = any(x.prop == f.prop for x in steps[-1].findings)
    meta: dict[str, Any] = {**flow_identity(result.flow.path),
                            "session": f"explore:{name}",
                            "explore": {"property": f.prop, "state": f.state, "detail": f.detail,
                                        "moves": violation.labels, "answers": result.answers,
                                        "faults": result.bounds.faults,
                                        "reproduced": reproduced}}
    writer = TraceWriter(path, meta)
    inputs = 0
    try:
        for step in steps:
            for t, event, effects in step.outputs:
                if event == "start":
                    writer.start(t)
                elif event is None:
                    writer.advance(t)
                    inputs += 1
                else:
                    writer.event(t, event)
                    inputs += 1
                writer.effects(t, effects)
    finally:
        writer.close()
    return path, inputs


def _document(path: Path) -> Document | None:
    try:
        return read_yaml(path)
    except Unreadable:
        return None


def _loc(via: str) -> tuple[Any, ...]:
    """`states.a.transitions[2]` -> ("states", "a", "transitions", 2)."""
    match = re.fullmatch(r"states\.(.+)\.(transitions|after)\[(\d+)\]", via)
    return ("states", match[1], match[2], int(match[3])) if match else ()


def _position(doc: Document | None, loc: tuple[Any, ...]) -> tuple[int, int]:
    if doc is None:
        return 1, 1
    while loc:
        if loc in doc.keys:
            return doc.keys[loc]
        if loc in doc.values:
            return doc.values[loc]
        loc = loc[:-1]
    return 1, 1
