#!/usr/bin/env python3
"""Draw a flow: its states and transitions, optionally the path a recorded session took.

    python tools/render_flow.py FLOW [--format mermaid|dot|svg|png] [--trace TRACE] [--timeline] [-o FILE]

Mermaid and DOT are plain text (no system package); SVG and PNG pipe the DOT through Graphviz's
`dot`. `--trace` highlights and numbers the transitions a session fired and greys the rest;
`--timeline` draws the session's responses, the candidate's turns, jobs and dead air as SVG.

Why not `transitions.extensions.diagrams` (graph_engine="mermaid")? Its output merges every
transition between two states into one `a --> b: e1 | e2` line, so a join (`all(a, b)`), a guarded
alternative and a timeout between the same states read as one edge, `linkStyle` indices cannot
name our transitions, and it has no final states, timeouts or dashed edges. The text here is
generated directly from `engine.replay.edges(flow)`, which names edges the way the core's `Fired`
effects do.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from engine import flow as flowmod
from engine.errors import FlowError
from engine.flow import Flow
from engine.replay import Edge, edges, fired
from engine.source import Unreadable
from engine.trace import event_from_record, read

TAKEN, TAKEN_FILL, GREY, GREY_TEXT = "#d97706", "#fde68a", "#c8c8c8", "#a0a0a0"
_START, _END = "_start_", "_end_"


# The path of a session ----------------------------------------------------------------------------


@dataclass
class Overlay:
    """Which transitions a session fired, numbered in firing order (1 = the initial arrow)."""

    numbers: dict[str, list[int]] = field(default_factory=dict)  # via -> firing numbers
    visited: set[str] = field(default_factory=set)
    session: str = ""

    def taken(self, edge: Edge) -> bool:
        return edge.via in self.numbers


def overlay(lines: Iterable[dict[str, Any]]) -> Overlay:
    lines = list(lines)
    ov = Overlay(session=str(lines[0].get("meta", {}).get("session", "")) if lines else "")
    for n, (_, rec) in enumerate(fired(lines), start=1):
        ov.numbers.setdefault(rec["via"], []).append(n)
        if rec.get("target"):
            ov.visited.add(rec["target"])
    return ov


def _numbers(ns: list[int]) -> str:
    if len(ns) > 6:  # a loop taken many times: first ones, last one, count
        return f"#{ns[0]}, #{ns[1]}, … #{ns[-1]} ({len(ns)}×)"
    return ", ".join(f"#{n}" for n in ns)


def _label(edge: Edge, timer: str = "") -> str:
    """`event [guard] / actions`, UML style; internal transitions say so."""
    text = (timer + edge.when) if edge.timeout else edge.when
    if edge.actions:
        text += " / " + ", ".join(edge.actions)
    if edge.target is None:
        text = "(internal) " + text
    return text


# Mermaid ------------------------------------------------------------------------------------------

_MERMAID_WORDS = {"end", "graph", "subgraph", "flowchart", "class", "classDef", "style", "click",
                  "linkStyle", "default", "state", "note", "direction"}


def _ids(flow: Flow) -> dict[str, str]:
    """Mermaid ids for state names (names may hold characters or words mermaid would misread)."""
    out: dict[str, str] = {}
    for name in flow.states:
        ident = re.sub(r"\W", "_", name)
        if ident in _MERMAID_WORDS or ident in (_START, _END) or ident in out.values() or ident[:1].isdigit():
            ident = f"s{len(out)}_{ident}"
        out[name] = ident
    return out


def mermaid(flow: Flow, ov: Overlay | None = None) -> str:
    """A `stateDiagram-v2`; with an overlay a `flowchart` instead, because mermaid's state diagrams
    ignore `linkStyle` (mermaid-js/mermaid#1352) and the path has to be coloured edge by edge."""
    if ov is not None:
        return _mermaid_flowchart(flow, ov)
    ids = _ids(flow)
    out = [f"%% flow: {flow.name}", "stateDiagram-v2"]
    out += [f'  state "{name}" as {ident}' for name, ident in ids.items() if ident != name]
    for e in edges(flow):
        if e.source is None:
            out.append(f"  [*] --> {ids[e.target]}")
        else:  # stateDiagram has no dashed edges: a timeout is marked in its label
            out.append(f"  {ids[e.source]} --> {ids[e.target or e.source]} : {_label(e, '⏱ ')}")
    out += [f"  {ids[name]} --> [*]" for name, s in flow.states.items() if s.final]
    return "\n".join(out) + "\n"


def _mermaid_flowchart(flow: Flow, ov: Overlay) -> str:
    ids = _ids(flow)
    out = [f"%% flow: {flow.name}, path of session {ov.session}".rstrip(), "flowchart TB",
           f"  classDef taken fill:{TAKEN_FILL},stroke:{TAKEN},stroke-width:2px,color:#000",
           f"  classDef untaken fill:#f6f6f6,stroke:{GREY},color:{GREY_TEXT}",
           "  classDef marker fill:#000,stroke:#000",
           f'  {_START}((" ")):::marker']
    for name in flow.states:
        shape = '((("{}")))' if flow.states[name].final else '("{}")'
        out.append(f"  {ids[name]}{shape.format(name)}:::{'taken' if name in ov.visited else 'untaken'}")
    if any(s.final for s in flow.states.values()):
        out.append(f'  {_END}((" ")):::marker')
    links: list[tuple[str, bool]] = []  # (line, taken), in mermaid's link order
    for e in edges(flow):
        number = _numbers(ov.numbers[e.via]) + " " if ov.taken(e) else ""
        text = (number + ("" if e.source is None else _label(e, "⏱ "))).strip().replace('"', "#quot;")
        arrow = f'-.->|"{text}"|' if e.timeout else (f'-->|"{text}"|' if text else "-->")
        source = _START if e.source is None else ids[e.source]
        links.append((f"  {source} {arrow} {ids[e.target or e.source]}", ov.taken(e)))
    for name, s in flow.states.items():
        if s.final:
            links.append((f"  {ids[name]} --> {_END}", name in ov.visited))
    out += [line for line, _ in links]
    taken = [str(i) for i, (_, t) in enumerate(links) if t]
    grey = [str(i) for i, (_, t) in enumerate(links) if not t]
    if taken:
        out.append(f"  linkStyle {','.join(taken)} stroke:{TAKEN},stroke-width:3px,color:{TAKEN}")
    if grey:
        out.append(f"  linkStyle {','.join(grey)} stroke:{GREY},color:{GREY_TEXT}")
    return "\n".join(out) + "\n"


# DOT ----------------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**attrs: Any) -> str:
    return "[" + ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items()) + "]"


def dot(flow: Flow, ov: Overlay | None = None) -> str:
    title = flow.name + (f" — path of session {ov.session}" if ov and ov.session else "")
    out = [f"digraph {_q(flow.name)} {{",
           f"  graph {_attrs(label=title, labelloc='t', fontname='Helvetica', rankdir='TB')};",
           "  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=11];",
           "  edge [fontname=\"Helvetica\", fontsize=9];",
           f"  {_q(_START)} [shape=point, width=0.15, label=\"\"];"]
    finals = [name for name, s in flow.states.items() if s.final]
    if finals:
        out.append(f"  {_q(_END)} [shape=doublecircle, width=0.08, label=\"\", style=filled, fillcolor=black];")
    for name, state in flow.states.items():
        attrs: dict[str, Any] = {"peripheries": 2} if state.final else {}
        if ov is not None:
            attrs |= ({"style": "rounded,filled", "fillcolor": TAKEN_FILL, "color": TAKEN} if name in ov.visited
                      else {"color": GREY, "fontcolor": GREY_TEXT})
        out.append(f"  {_q(name)}" + (f" {_attrs(**attrs)}" if attrs else "") + ";")
    for e in edges(flow):
        attrs = {} if e.source is None else {"label": _label(e)}
        if e.timeout:
            attrs["style"] = "dashed"
        if ov is not None:
            attrs |= ({"color": TAKEN, "fontcolor": TAKEN, "penwidth": 2.5, "xlabel": _numbers(ov.numbers[e.via])}
                      if ov.taken(e) else {"color": GREY, "fontcolor": GREY_TEXT})
        source = _START if e.source is None else e.source
        out.append(f"  {_q(source)} -> {_q(e.target or e.source)}" + (f" {_attrs(**attrs)}" if attrs else "") + ";")
    for name in finals:
        attrs = {} if ov is None else ({"color": TAKEN, "penwidth": 2.5} if name in ov.visited else {"color": GREY})
        out.append(f"  {_q(name)} -> {_q(_END)}" + (f" {_attrs(**attrs)}" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"


class NoGraphviz(Exception):
    pass


def graphviz(dot_text: str, fmt: str, dot_binary: str = "dot") -> bytes:
    """Render DOT with Graphviz; NoGraphviz (one line for the user) when `dot` is not installed."""
    exe = shutil.which(dot_binary)
    if exe is None:
        raise NoGraphviz(f"{fmt} needs Graphviz: apt-get install graphviz (or use --format mermaid)")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise NoGraphviz(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


# Timeline -----------------------------------------------------------------------------------------


@dataclass
class _Response:
    label: str
    requested: float | None = None
    created: float | None = None
    done: float | None = None
    status: str | None = None
    heard: float | None = None  # first sample heard (playback.started, else the first Play)
    heard_end: float | None = None  # playback.done, or playback.stopped on barge-in
    cut: bool = False
    audio_ms: float = 0.0  # from the Play effects' lengths: how long it plays if nobody reports done

    def heard_until(self) -> float | None:
        if self.heard_end is not None or self.heard is None:
            return self.heard_end
        return self.heard + self.audio_ms / 1000  # never reported (no player): its length is our best guess


@dataclass
class _Session:
    responses: dict[str, _Response] = field(default_factory=dict)  # key: our request tag, else response id
    turns: dict[str, list[float | None]] = field(default_factory=dict)  # item -> [started, stopped, transcript]
    jobs: list[list[Any]] = field(default_factory=list)  # [name, start, end, outcome]
    states: list[tuple[float, str]] = field(default_factory=list)
    end: float = 0.0


def _session(lines: Iterable[dict[str, Any]]) -> _Session:
    s = _Session()
    key_of: dict[str, str] = {}  # response id -> row key

    def row(rid: str | None, tag: str | None = None) -> _Response | None:
        if rid is None:
            return None
        if rid not in key_of:
            if tag is None:  # no metadata echoed: with a create in flight, it is that one (as the core assumes)
                tag = next((k for k, r in s.responses.items() if r.requested is not None and r.created is None
                            and k not in key_of.values()), None)
            key_of[rid] = tag if tag in s.responses else rid
            s.responses.setdefault(key_of[rid], _Response(f"{tag} {rid}" if tag else rid))
            if tag in s.responses:
                s.responses[tag].label = f"{tag} {rid}"
        return s.responses[key_of[rid]]

    for line in lines:
        t = line.get("t")
        if t is None:
            continue
        s.end = max(s.end, t)
        if "out" in line:
            eff = line["out"]
            kind = eff.get("effect")
            if kind == "Send" and eff["event"].get("type") == "response.create":
                tag = (eff["event"].get("response") or {}).get("metadata", {}).get("engine_request") or "?"
                r = s.responses.setdefault(tag, _Response(tag))
                r.requested = t if r.requested is None else r.requested
            elif kind == "Play" and (r := row(eff.get("response_id"))):
                r.heard = t if r.heard is None else r.heard
                r.audio_ms += int(eff.get("audio") or 0) * 3 / 4 / 48  # base64 chars -> pcm16 bytes -> ms
            elif kind == "StartJob":
                s.jobs.append([eff["name"], t, None, "running"])
            elif kind == "CancelJob":
                _end_job(s, eff["name"], t, "cancelled")
            elif kind == "Fired" and eff.get("target"):
                s.states.append((t, eff["target"]))
        elif "in" in line:
            ev = event_from_record(line["in"])
            if ev.type == "response.created" and (r := row(ev.response_id, ev.metadata.get("engine_request"))):
                r.created = t if r.created is None else r.created
            elif ev.type == "response.done" and (r := row(ev.response_id, ev.metadata.get("engine_request"))):
                r.done, r.status = (t if r.done is None else r.done), ev.status
            elif ev.type == "playback.started" and (r := row(ev.response_id)):
                r.heard = t  # the player's own word beats the first Play (queued audio starts later)
            elif ev.type in ("playback.done", "playback.stopped") and (r := row(ev.response_id)):
                if r.heard_end is None:
                    r.heard_end, r.cut = t, ev.type == "playback.stopped"
            elif ev.type in ("speech.started", "speech.stopped", "input.transcript"):
                i = ("speech.started", "speech.stopped", "input.transcript").index(ev.type)
                turn = s.turns.setdefault(ev.item_id or f"?{len(s.turns)}", [None, None, None])
                turn[i] = t if turn[i] is None else turn[i]
            elif ev.type.startswith("job.") and ev.type.count(".") == 2:
                _, name, outcome = ev.type.split(".")
                _end_job(s, name, t, outcome)
    return s


def _end_job(s: _Session, name: str, t: float, outcome: str) -> None:
    for job in s.jobs:
        if job[0] == name and job[2] is None:
            job[2], job[3] = t, outcome
            return


def _busy(s: _Session) -> list[tuple[float, float]]:
    """When someone is heard: the candidate speaking, or engine audio playing. Merged, sorted."""
    spans = [(r.heard, r.heard_until()) for r in s.responses.values() if r.heard is not None]
    spans += [(a, _turn_end(b, c, s.end)) for a, b, c in s.turns.values() if a is not None]
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _turn_end(stopped: float | None, transcript: float | None, end: float) -> float:
    return stopped if stopped is not None else (transcript if transcript is not None else end)


def dead_air(s: _Session, minimum: float = 0.0) -> list[tuple[float, float]]:
    """Gaps in [0, end] where neither side speaks and nothing plays."""
    gaps, at = [], 0.0
    for a, b in _busy(s):
        if a - at > minimum:
            gaps.append((at, a))
        at = max(at, b)
    if s.end - at > minimum:
        gaps.append((at, s.end))
    return gaps


def _tick_step(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if span / step <= 12:
            return step
    return 10 ** math.ceil(math.log10(span / 10))


def timeline(lines: Iterable[dict[str, Any]]) -> str:
    """The session as an SVG: rows of responses, the candidate and jobs; dead air shaded."""
    s = _session(lines)
    label_w, plot_w, row_h, top = 170, 900, 22, 90
    end = max(s.end, 1e-6)
    x = lambda t: label_w + plot_w * min(t if t is not None else end, end) / end  # noqa: E731
    rows = [("response", k, r.label) for k, r in s.responses.items()] + [("candidate", "", "candidate"),
                                                                        ("jobs", "", "jobs")]
    height = top + row_h * len(rows) + 56
    gaps = dead_air(s, minimum=0.05)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 20}" height="{height}" '
           f'font-family="Helvetica,Arial,sans-serif" font-size="11">',
           "<style>.req{stroke:#999;stroke-width:1;fill:#ddd}.gen{fill:#bfdbfe}.heard{fill:#2563eb}.guessed{fill-opacity:0.45}.cut{fill:#f59e0b}"
           ".speech{fill:#16a34a}.stt{stroke:#16a34a;stroke-dasharray:3 2}.job{fill:#a78bfa}.failed{fill:#ef4444}"
           ".dead{fill:#ef4444;fill-opacity:0.12}.state{stroke:#555;stroke-width:0.6}</style>",
           f'<text x="8" y="16" font-size="13">session timeline — dead air {sum(b - a for a, b in gaps):.1f}s '
           f'of {s.end:.1f}s</text>']
    bottom = top + row_h * len(rows)
    svg.append('<g class="dead-air">')
    svg += [f'<rect class="dead" x="{x(a):.1f}" y="{top}" width="{x(b) - x(a):.1f}" height="{bottom - top}">'
            f'<title>dead air {b - a:.2f}s</title></rect>' for a, b in gaps]
    svg.append("</g>")
    for i, (kind, key, label) in enumerate(rows):
        y = top + i * row_h
        svg.append(f'<g class="row {kind}" data-key={quoteattr(key)}>')
        svg.append(f'<text x="8" y="{y + 15}">{escape(label)}</text>')
        svg.append(f'<line x1="{label_w}" y1="{y + row_h}" x2="{label_w + plot_w}" y2="{y + row_h}" stroke="#eee"/>')
        if kind == "response":
            r = s.responses[key]
            svg += _response_row(r, x, y)
        elif kind == "candidate":
            for a, b, c in s.turns.values():
                if a is not None:
                    e = _turn_end(b, c, s.end)
                    svg.append(f'<rect class="speech" x="{x(a):.1f}" y="{y + 5}" width="{max(x(e) - x(a), 1):.1f}" '
                               f'height="12"><title>speaking {a:.2f}–{e:.2f}s</title></rect>')
                if b is not None and c is not None:
                    svg.append(f'<line class="stt" x1="{x(b):.1f}" y1="{y + 11}" x2="{x(c):.1f}" y2="{y + 11}"/>')
                if c is not None:
                    svg.append(f'<circle class="speech" cx="{x(c):.1f}" cy="{y + 11}" r="3">'
                               f'<title>transcript {c:.2f}s</title></circle>')
        else:
            for name, a, b, outcome in s.jobs:
                cls = "job" if outcome in ("done", "running") else "failed"
                svg.append(f'<rect class="{cls}" x="{x(a):.1f}" y="{y + 5}" width="{max(x(b) - x(a), 1):.1f}" '
                           f'height="12"><title>{escape(name)} {outcome} {a:.2f}–{(b or end):.2f}s</title></rect>')
        svg.append("</g>")
    svg.append('<g class="states">')
    for t, name in s.states:
        svg.append(f'<line class="state" x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{bottom}"/>')
        svg.append(f'<text x="{x(t):.1f}" y="{top - 6}" font-size="9" transform="rotate(-35 {x(t):.1f} {top - 6})">'
                   f'{escape(name)}</text>')
    svg.append("</g>")
    step = _tick_step(end)
    svg.append(f'<g class="axis"><line x1="{label_w}" y1="{bottom}" x2="{label_w + plot_w}" y2="{bottom}" '
               'stroke="#333"/>')
    for k in range(int(end / step) + 1):
        t = k * step
        svg.append(f'<line x1="{x(t):.1f}" y1="{bottom}" x2="{x(t):.1f}" y2="{bottom + 4}" stroke="#333"/>'
                   f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}s</text>')
    svg.append("</g>")
    legend = [("req", "requested (waiting)"), ("gen", "generating"), ("heard", "heard"), ("cut", "cut by barge-in"),
              ("speech", "candidate speaking"), ("job", "job"), ("failed", "job failed"), ("dead", "dead air")]
    svg.append(f'<g class="legend" transform="translate({label_w} {bottom + 30})">')
    for k, (cls, text) in enumerate(legend):
        svg.append(f'<rect class="{cls}" x="{k * 110}" y="0" width="12" height="10" stroke="#999" stroke-width="0.5"/>'
                   f'<text x="{k * 110 + 16}" y="9" font-size="10">{text}</text>')
    svg.append("</g></svg>")
    return "\n".join(svg) + "\n"


def _response_row(r: _Response, x: Any, y: float) -> list[str]:
    out = []
    if r.requested is not None:  # waiting: in the gate's queue or at the server
        out.append(f'<line class="req" x1="{x(r.requested):.1f}" y1="{y + 11}" x2="{x(r.created):.1f}" y2="{y + 11}">'
                   f'<title>requested {r.requested:.2f}s</title></line>')
    if r.created is not None:
        width = max(x(r.done) - x(r.created), 1)
        out.append(f'<rect class="gen" x="{x(r.created):.1f}" y="{y + 4}" width="{width:.1f}" height="14">'
                   f'<title>generating {r.created:.2f}–{r.done or 0:.2f}s ({r.status})</title></rect>')
    if r.heard is not None:
        cls = "cut" if r.cut else "heard" if r.heard_end is not None else "heard guessed"
        until = r.heard_until()
        what = ("cut by barge-in" if r.cut else "heard" if r.heard_end is not None
                else "playing (no playback.done; length)")
        out.append(f'<rect class="{cls}" x="{x(r.heard):.1f}" y="{y + 8}" width="{max(x(until) - x(r.heard), 1):.1f}" '
                   f'height="6"><title>{what} {r.heard:.2f}–{until:.2f}s</title></rect>')
    return out


# Command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, dot_binary: str = "dot") -> int:
    parser = argparse.ArgumentParser(prog="render_flow.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("flow", type=Path)
    parser.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid")
    parser.add_argument("--trace", type=Path, help="highlight the path of this recorded session")
    parser.add_argument("--timeline", action="store_true", help="draw the --trace session's timeline (SVG)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"render_flow: {message}", file=sys.stderr)
        return 2

    try:
        flow = flowmod.load(args.flow)
    except FlowError as exc:
        return fail(f"invalid flow:\n{exc}")
    except Unreadable as exc:
        return fail(str(exc))
    lines = None
    if args.trace is not None:
        try:
            lines = list(read(args.trace))
        except (OSError, ValueError) as exc:
            return fail(f"{args.trace}: cannot read trace: {exc}")
    if args.timeline:
        if lines is None:
            return fail("--timeline needs --trace TRACE")
        data: str | bytes = timeline(lines)
    else:
        ov = overlay(lines) if lines is not None else None
        if args.format == "mermaid":
            data = mermaid(flow, ov)
        else:
            data = dot(flow, ov)
            if args.format in ("svg", "png"):
                try:
                    data = graphviz(data, args.format, dot_binary)
                except NoGraphviz as exc:
                    print(exc, file=sys.stderr)
                    return 2
    if args.output is not None:
        args.output.write_bytes(data if isinstance(data, bytes) else data.encode())
    elif isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
