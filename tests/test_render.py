"""tools/render_flow.py: diagrams (golden files), the path of a session, the timeline.

Golden files live in tests/golden/. After an intended change to the drawing, regenerate them with

    UPDATE_GOLDEN=1 pytest tests/test_render.py

and review the diff like code (`git diff tests/golden`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engine.replay import edges, fired
from engine.trace import read

from helpers import ROOT, flow_from, load_flow
from test_replay import PATH_A, PATH_B, SESSION_A, SESSION_B, record

sys.path.insert(0, str(ROOT / "tools"))
import render_flow  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("name", ["assessment", "seed"])
@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_golden(name, fmt, capsys):
    assert render_flow.main([str(ROOT / "flows" / f"{name}.yaml"), "--format", fmt]) == 0
    got = capsys.readouterr().out
    golden = GOLDEN / f"{name}.{'mmd' if fmt == 'mermaid' else 'dot'}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got, encoding="utf-8")
    assert got == golden.read_text(encoding="utf-8"), f"{golden} is stale: UPDATE_GOLDEN=1 pytest {__file__}"


def test_the_documented_diagram_is_current():
    """The ```mermaid blocks for authors (README, docs/authors.md) are the current drawing."""
    drawing = render_flow.mermaid(load_flow("assessment.yaml"))
    for doc in (ROOT / "README.md", ROOT / "docs" / "authors.md"):
        blocks = re.findall(r"```mermaid\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
        documented = [b for b in blocks if b.startswith("%% flow: english-assessment\n")]
        assert documented == [drawing], f"{doc}: paste the output of render_flow.py flows/assessment.yaml"


def test_markings_joins_guards_timeouts_internal_and_odd_names():
    flow = flow_from("""
name: marks
initial: wait-here
states:
  wait-here:
    transitions:
      - {event: speech.started, guard: [speaking, not completed], actions: [truncate]}
      - {all: [response.done, playback.done], target: end}
    after:
      - {delay: 250ms, target: end}
  end: {final: true}
""")
    text = render_flow.mermaid(flow)
    assert text.splitlines()[2:] == [
        '  state "wait-here" as wait_here',
        '  state "end" as s1_end',  # `end` is a mermaid keyword
        "  [*] --> wait_here",
        "  wait_here --> wait_here : (internal) speech.started [speaking and not completed] / truncate",
        "  wait_here --> s1_end : all(response.done, playback.done)",
        "  wait_here --> s1_end : ⏱ after 250ms",
        "  s1_end --> [*]",
    ]
    dot = render_flow.dot(flow)
    assert '"wait-here" -> "wait-here" [label="(internal) speech.started [speaking and not completed] / truncate"];' in dot
    assert '"wait-here" -> "end" [label="after 250ms", style="dashed"];' in dot
    assert '"end" [peripheries="2"];' in dot and '"end" -> "_end_";' in dot


# The path of a session -------------------------------------------------------------------------


def _shown(numbers: list[int]) -> list[int]:
    return numbers if len(numbers) <= 6 else numbers[:2] + numbers[-1:]  # long loops are elided


def check_overlay(lines: list[dict], flow) -> None:
    """The drawings mark exactly the transitions the trace fired, numbered in firing order; every
    other edge is grey."""
    numbers: dict[str, list[int]] = {}
    for n, (_, rec) in enumerate(fired(lines), start=1):
        numbers.setdefault(rec["via"], []).append(n)
    ov = render_flow.overlay(lines)
    assert ov.numbers == numbers
    flow_edges = edges(flow)
    finals = [name for name, s in flow.states.items() if s.final]

    # Mermaid: link i is edge i (then the final markers); linkStyle colours by index.
    text = render_flow.mermaid(flow, ov)
    links = [line for line in text.splitlines() if re.search(r" (-->|-\.->)", line)]
    assert len(links) == len(flow_edges) + len(finals)
    for edge, link in zip(flow_edges, links):
        assert [int(n) for n in re.findall(r"#(\d+)", link)] == _shown(numbers.get(edge.via, [])), link
    styles = dict(re.findall(r"linkStyle ([\d,]+) stroke:(#\w+)", text)[::-1])
    by_colour = {colour: {int(i) for i in idx.split(",")} for idx, colour in styles.items()}
    taken = {i for i, e in enumerate(flow_edges) if e.via in numbers}
    taken |= {len(flow_edges) + k for k, name in enumerate(finals) if name in ov.visited}
    assert by_colour[render_flow.TAKEN] == taken
    assert by_colour[render_flow.GREY] == set(range(len(links))) - taken

    # DOT: taken edges coloured with their numbers as xlabel; the rest grey, unnumbered.
    dot = render_flow.dot(flow, ov)
    edge_lines = [line for line in dot.splitlines() if " -> " in line and '"_end_"' not in line]
    assert len(edge_lines) == len(flow_edges)
    for edge, line in zip(flow_edges, edge_lines):
        if edge.via in numbers:
            assert f'color="{render_flow.TAKEN}"' in line
            assert [int(n) for n in re.findall(r"#(\d+)", line)] == _shown(numbers[edge.via]), line
        else:
            assert f'color="{render_flow.GREY}"' in line and "xlabel" not in line, line
    for name in flow.states:
        node = next(line for line in dot.splitlines() if line.startswith(f'  "{name}" ['))
        assert (f'fillcolor="{render_flow.TAKEN_FILL}"' in node) == (name in ov.visited)


@pytest.mark.parametrize("script, path", [(SESSION_A, PATH_A), (SESSION_B, PATH_B)], ids=["a", "b"])
def test_overlay_marks_exactly_the_path_of_a_session(tmp_path, script, path):
    lines = list(read(record(tmp_path / "t.jsonl", script)))
    check_overlay(lines, load_flow("assessment.yaml"))
    assert list(render_flow.overlay(lines).numbers) == path  # first firing of each, in order


def test_overlay_from_the_command_line(tmp_path, capsys):
    trace = record(tmp_path / "t.jsonl", SESSION_A)
    out = tmp_path / "path.dot"
    assert render_flow.main([str(ROOT / "flows/assessment.yaml"), "--trace", str(trace), "--format", "dot",
                             "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert '"listening" -> "asking" [label="input.committed", color="#d97706"' in out.read_text()
    assert 'xlabel="#3"' in out.read_text()


# Graphviz -------------------------------------------------------------------------------------


def test_svg_without_graphviz_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools/render_flow.py"), str(ROOT / "flows/seed.yaml"),
                           "--format", "svg"], capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "svg needs Graphviz: apt-get install graphviz (or use --format mermaid)\n"


def test_png_without_graphviz_by_parameter(capsys):
    assert render_flow.main([str(ROOT / "flows/seed.yaml"), "--format", "png"], dot_binary="no-such-dot") == 2
    assert capsys.readouterr().err == "png needs Graphviz: apt-get install graphviz (or use --format mermaid)\n"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_svg_with_graphviz(tmp_path):
    out = tmp_path / "seed.svg"
    assert render_flow.main([str(ROOT / "flows/seed.yaml"), "--format", "svg", "-o", str(out)]) == 0
    titles = {t.text for t in ET.parse(out).getroot().iter(f"{SVG}title")}
    assert {"ack", "summary", "goodbye", "done"} <= titles


# Timeline -------------------------------------------------------------------------------------


def timeline_of(lines: list[dict]) -> ET.Element:
    return ET.fromstring(render_flow.timeline(lines))  # well-formed, or this raises


def rows(svg: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == f"row {kind}"]


def test_timeline_has_a_row_per_response_and_shades_dead_air(tmp_path):
    lines = list(read(record(tmp_path / "b.jsonl", SESSION_B)))
    svg = timeline_of(lines)
    assert [g.get("data-key") for g in rows(svg, "response")] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert len(rows(svg, "candidate")) == len(rows(svg, "jobs")) == 1
    # After the barge-in the candidate stops at 2.5 s and nothing is heard until the nudge plays at 42.1 s.
    dead = [t.text for t in svg.iter(f"{SVG}title") if t.text.startswith("dead air")]
    assert "dead air 39.60s" in dead
    states = [t.text for g in svg.iter(f"{SVG}g") if g.get("class") == "states" for t in g.iter(f"{SVG}text")]
    assert states == ["greeting", "listening", "nudge", "asking", "ack", "summary_fallback", "goodbye", "done"]


def test_timeline_from_the_command_line(tmp_path, capsys):
    trace = record(tmp_path / "a.jsonl", SESSION_A)
    flow = str(ROOT / "flows/assessment.yaml")
    assert render_flow.main([flow, "--timeline"]) == 2
    assert "--timeline needs --trace" in capsys.readouterr().err
    assert render_flow.main([flow, "--trace", str(trace), "--timeline"]) == 0
    assert len(rows(ET.fromstring(capsys.readouterr().out), "response")) == 5


def response_count(lines: list[dict]) -> int:
    """Our requests by tag, plus responses the server started on its own."""
    tags = {line["out"]["event"]["response"]["metadata"]["engine_request"] for line in lines
            if line.get("out", {}).get("effect") == "Send" and line["out"]["event"]["type"] == "response.create"}
    foreign = {line["in"]["server"]["response"]["id"] for line in lines
               if line.get("in", {}).get("server", {}).get("type") == "response.created"
               and not line["in"]["server"]["response"].get("metadata", {}).get("engine_request")}
    return len(tags) + len(foreign)


def check_timeline(lines: list[dict]) -> None:
    assert len(rows(timeline_of(lines), "response")) == response_count(lines)
