"""Flows unlike the example run offline end to end through the real engine and take their tool paths.

Each of tests/flows/*.yaml (with its scenario, *.persona.yaml) runs as an offline session against the
simulator (engine.testing.offline: the real Session, in this process, on virtual time; the
conversation tests beside them, tests/flows/*.test.yaml, run the same way). The simulated model
knows nothing about these flows: it follows their instructions, tools and tool_choice by the rules of
docs/personas.md. The transcripts must hold every quoted line verbatim and no instruction text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine import flow as flowmod
from engine.testing.offline import OfflineRun, run_offline
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
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OfflineRun]:
    """Every case as an offline session (in this process, on virtual time); name -> the run."""
    return {name: run_offline(flowmod.load(FLOWS / f"{name}.yaml"), tmp_path_factory.mktemp(name),
                              persona=FLOWS / f"{name}.persona.yaml", session_id=name)
            for name in CASES}


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
def test_the_flow_completes_on_its_tool_path(name: str, runs: dict[str, OfflineRun]) -> None:
    result, folder = runs[name].result, runs[name].folder
    assert result.ok and result.outcome == "completed", result.reason
    assert result.reason == "reached final state 'done'"
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
def test_quoted_lines_verbatim_and_no_instruction_text(name: str, runs: dict[str, OfflineRun]) -> None:
    folder = runs[name].folder
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


def test_the_arguments_follow_the_schema_rules(runs: dict[str, OfflineRun]) -> None:
    def calls(name: str) -> list[dict[str, Any]]:
        lines = read(runs[name].folder / "trace.jsonl")
        return [json.loads(line["in"]["server"]["arguments"]) for line in lines
                if line.get("in", {}).get("server", {}).get("type") == "response.function_call_arguments.done"]

    # enum: its first value; integer in [1, 5]: the middle; other strings name the property.
    assert calls("screening") == [{"decision": "advance", "score": 3, "notes": "simulated notes"}]
    # The scenario's fixed argument over generated ones: a nested object with a format, an array.
    assert calls("support_triage") == [{"category": "refund", "priority": 2, "tags": ["simulated tag"],
                                        "customer": {"email": "candidate@example.com", "name": "simulated name"}}]
    # One call per answer, each with the scenario's own score.
    assert [c["score"] for c in calls("practice_scores")] == [6, 7]
