"""Flows unlike the example run offline end to end through the real engine and take their tool paths.

Each of tests/flows/*.yaml (with its scenario, *.persona.yaml) runs as `engine run FLOW --persona P
--speed 50 --audio none --no-ui` in a subprocess against the embedded simulator. The simulated model
knows nothing about these flows: it follows their instructions, tools and tool_choice by the rules of
docs/personas.md. The transcripts must hold every quoted line verbatim and no instruction text.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine import flow as flowmod
from engine.trace import read

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "tests" / "flows"
CASES = {
    # flow: (tool, calls, lines the transcript must hold besides the quoted ones)
    "screening": ("record_screening", 1, ["Hello, I'm Robin from Acme. What do you do at the moment?",
                                          "How many years of experience do you have?"]),
    "support_triage": ("open_ticket", 1, ["Hello, I'm Lee from Northwind. How can I help you today?",
                                          "Let me open a ticket for you.", "All right, I've noted that."]),
    "practice_scores": ("score_answer", 2, []),
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every case's `engine run`, in parallel; name -> (process, its session folder)."""
    started = {}
    for name in CASES:
        out = tmp_path_factory.mktemp(name)
        command = [sys.executable, "-m", "engine", "run", str(FLOWS / f"{name}.yaml"), "--persona",
                   str(FLOWS / f"{name}.persona.yaml"), "--speed", "50", "--audio", "none", "--no-ui",
                   "--out", str(out)]  # fmt: skip
        started[name] = (subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True), out)  # fmt: skip
    done = {}
    for name, (proc, out) in started.items():
        stdout, stderr = proc.communicate(timeout=240)
        folders = [p for p in out.iterdir() if p.is_dir()]
        assert len(folders) == 1, f"{name}: no session folder\n{stdout}\n{stderr}"
        done[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), folders[0])
    return done


def instructions_of(flow: flowmod.Flow) -> list[str]:
    """Every `respond` instruction of the flow."""
    found = []
    for state in flow.states.values():
        actions = list(state.enter) + list(state.exit) + [a for t in state.transitions for a in t.actions]
        for action in actions:
            if action.name == "respond" and action.arg is not None and action.arg.instructions:
                found.append(action.arg.instructions)
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_the_flow_completes_on_its_tool_path(name: str, runs: dict[str, Any]) -> None:
    proc, folder = runs[name]
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "completed: reached final state 'done'" in proc.stdout
    report = json.loads((folder / "report.json").read_text())
    assert report["ok"] is True and report["final_state"] == "done"
    tool, calls, _ = CASES[name]
    lines = list(read(folder / "trace.jsonl"))
    fired = [line["out"] for line in lines if line.get("out", {}).get("effect") == "Fired"]
    assert [f["event"] for f in fired].count(f"tool.{tool}") == calls  # the tool path, as often as the flow needs
    assert not any(f["event"].startswith("after") or f["event"] == "timeout" for f in fired), fired
    flow = flowmod.load(FLOWS / f"{name}.yaml")
    schema = next(t.parameters for t in flow.session.tools if t.name == tool)
    arguments = [json.loads(line["in"]["server"]["arguments"]) for line in lines
                 if line.get("in", {}).get("server", {}).get("type") == "response.function_call_arguments.done"]
    assert len(arguments) == calls
    for args in arguments:
        jsonschema.validate(args, schema)  # generated from the tool's own JSON Schema


@pytest.mark.parametrize("name", list(CASES))
def test_quoted_lines_verbatim_and_no_instruction_text(name: str, runs: dict[str, Any]) -> None:
    _, folder = runs[name]
    transcript = (folder / "transcript.md").read_text()
    spoken = re.findall(r"\*\*Interviewer\*\*: (.*)", transcript)
    flow = flowmod.load(FLOWS / f"{name}.yaml")
    instructions = instructions_of(flow)
    quoted = [q for text in instructions for q in re.findall(r'"([^"]+)"', text)]
    assert quoted or name == "support_triage"
    for line in quoted + CASES[name][2]:
        assert line in spoken, (line, spoken)
    for text in instructions:
        unquoted = re.sub(r'"[^"]*"', "", text).strip()
        for sentence in filter(None, (s.strip() for s in re.split(r"[.:]", unquoted))):
            if len(sentence.split()) >= 3:
                assert sentence not in transcript, sentence
    assert flow.session.instructions is not None and flow.session.instructions not in transcript


def test_the_arguments_follow_the_schema_rules(runs: dict[str, Any]) -> None:
    def calls(name: str) -> list[dict[str, Any]]:
        lines = read(runs[name][1] / "trace.jsonl")
        return [json.loads(line["in"]["server"]["arguments"]) for line in lines
                if line.get("in", {}).get("server", {}).get("type") == "response.function_call_arguments.done"]

    # enum: its first value; integer in [1, 5]: the middle; other strings name the property.
    assert calls("screening") == [{"decision": "advance", "score": 3, "notes": "simulated notes"}]
    # The scenario's fixed argument over generated ones: a nested object with a format, an array.
    assert calls("support_triage") == [{"category": "refund", "priority": 2, "tags": ["simulated tag"],
                                        "customer": {"email": "candidate@example.com", "name": "simulated name"}}]
    # One call per answer, each with the scenario's own score.
    assert [c["score"] for c in calls("practice_scores")] == [6, 7]
