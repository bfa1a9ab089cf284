"""The editor schema (`engine schema`) accepts what the loader accepts, and says what each field is."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from engine import flow as flowmod
from engine.cli import SCHEMAS, main
from engine.source import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "tests" / "broken_flows"
SCHEMA = flowmod.json_schema()
VALIDATOR = Draft202012Validator(SCHEMA)


def schema_errors(text: str) -> list[str]:
    data = parse_yaml(text, "t.yaml").data
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(data)]


def loader_accepts(text: str) -> bool:
    return flowmod.parse(text, "t.yaml")[0] is not None


def test_the_committed_schema_is_what_engine_schema_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == SCHEMA
    assert json.loads((ROOT / "flows" / "flow.schema.json").read_text()) == printed, \
        "run: engine schema > flows/flow.schema.json"
    Draft202012Validator.check_schema(printed)


def test_other_formats_plug_into_engine_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert SCHEMAS["flow"] == "engine.flow:json_schema"
    for kind in ("persona", "test"):
        if kind in SCHEMAS:
            continue  # wired at merge by the stream that owns the format
        assert main(["schema", f"--{kind}"]) == 2
        assert capsys.readouterr().err.strip() == f"engine schema: the {kind} schema is not available yet"


def properties(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, schema) of an object property anywhere in the schema."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            found.append((f"{where}.{name}", prop))
        for key, value in node.items():
            found += properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += properties(value, f"{where}[{i}]")
    return found


def test_every_field_has_a_description_for_editors() -> None:
    props = properties(SCHEMA)
    assert len(props) > 60
    assert [where for where, prop in props if not prop.get("description")] == []
    assert all(d.get("description") for d in SCHEMA["$defs"].values())
    assert SCHEMA["title"] == "engine flow" and SCHEMA["description"]


def shipped_flows() -> list[Path]:
    return sorted(p for p in [*ROOT.glob("flows/*.yaml"), *ROOT.glob("benchmarks/flows/*.yaml")]
                  if not p.name.endswith(".test.yaml"))  # conversation tests have their own schema


@pytest.mark.parametrize("path", shipped_flows(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_flow_passes_the_schema(path: Path) -> None:
    assert flowmod.load(path)
    assert schema_errors(path.read_text()) == []


def flows_in_the_tests() -> list[str]:
    """Flow texts written in the test modules (string constants with `initial:` and `states:`)."""
    texts = []
    for module in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "initial:" in node.value \
                    and "\nstates:" in node.value:
                texts.append(node.value)
    return texts


def test_every_valid_flow_in_the_tests_passes_the_schema() -> None:
    valid = [text for text in flows_in_the_tests() if loader_accepts(text)]
    assert len(valid) >= 4
    assert [schema_errors(text) for text in valid] == [[] for _ in valid]


# Every form the docs show, each accepted by both; mistakes a schema can see, refused by both.
TINY = """\
name: t
session:
  tools:
    - {name: finish, parameters: {type: object, properties: {reason: {type: string}}}}
jobs:
  assessment: {timeout: 20s}
guards:
  enough: {min_answers: 2}
initial: ask
states:
  ask:
    enter:
      - respond
    transitions:
      - all: [response.done, playback.done]
        target: bye
      - event: tool.finish
        target: bye
    after:
      - {delay: 10s, target: bye}
  bye:
    final: true
"""
FORMS = {
    "durations as text": ("{delay: 10s, target: bye}", "{delay: 250ms, target: bye}"),
    "durations in minutes": ("{delay: 10s, target: bye}", "{delay: 2m, target: bye}"),
    "durations as numbers": ("{delay: 10s, target: bye}", "{delay: 1.5, target: bye}"),
    "durations with exponents": ("{delay: 10s, target: bye}", "{delay: 1e2, target: bye}"),
    "max_duration": ("name: t\n", "name: t\nmax_duration: 45min\n"),
    "max_duration in hours": ("name: t\n", "name: t\nmax_duration: 1h\n"),
    "respond with instructions": ("      - respond\n", "      - respond: Ask a question.\n"),
    "respond as a mapping": ("      - respond\n",
                             "      - respond: {instructions: Ask., input: hi, tool_choice: auto}\n"),
    "respond with nothing": ("      - respond\n", "      - respond:\n"),
    "tool_result bare": ("      - respond\n", "      - tool_result\n"),
    "tool_result as a mapping": ("      - respond\n", "      - tool_result: {status: started}\n"),
    "tool_result as text": ("      - respond\n", "      - tool_result: done\n"),
    "tool_result with output": ("      - respond\n", "      - tool_result: {output: {ok: true}}\n"),
    "save bare": ("      - respond\n", "      - save\n"),
    "save with a reason": ("      - respond\n", "      - save: checkpoint\n"),
    "truncate and cancel_response": ("      - respond\n", "      - truncate\n      - cancel_response\n"),
    "truncate as a key": ("      - respond\n", "      - truncate: true\n"),
    "start, cancel, log, end": ("      - respond\n", "      - start: assessment\n      - cancel: assessment\n"
                                "      - log: hello {answers}\n      - end: because\n"),
    "a list of bare actions": ("        target: bye\n      - event: tool.finish",
                               "        target: bye\n        actions: [truncate, save]\n      - event: tool.finish"),
    "guard as text": ("      - event: tool.finish\n", "      - event: tool.finish\n        guard: speaking\n"),
    "guard as a list": ("      - event: tool.finish\n",
                        "      - event: tool.finish\n        guard: [enough, not speaking]\n"),
    "an internal transition": ("      - event: tool.finish\n        target: bye\n",
                               "      - event: tool.finish\n        actions: [tool_result]\n"),
    "beta event names": ("all: [response.done, playback.done]", "all: [response.audio_transcript.done, playback.done]"),
    "realtime names of engine events": ("event: tool.finish", "event: input_audio_buffer.committed"),
    "job events": ("event: tool.finish", "event: job.assessment.done"),
    "wait forever": ("    after:\n      - {delay: 10s, target: bye}\n", "    wait: forever\n"),
    "descriptions": ("  ask:\n", "  ask:\n    description: Ask.\n"),
    "turn detection off": ("session:\n", "session:\n  turn_detection: null\n  transcription: null\n"),
    "server vad": ("session:\n", "session:\n  turn_detection: {type: server_vad, threshold: 0.6, prefix_padding_ms: "
                   "300, silence_duration_ms: 700, idle_timeout_ms: 6000, create_response: false, "
                   "interrupt_response: true}\n"),
    "semantic vad": ("session:\n", "session:\n  turn_detection: {type: semantic_vad, eagerness: low}\n"),
    "transcription": ("session:\n", "session:\n  transcription: {model: gpt-4o-transcribe, language: en, prompt: x}\n"),
    "turn_end": ("session:\n", "session:\n  turn_end: speech_stopped\n"),
    "instructions and voice": ("session:\n", "session:\n  instructions: Be kind.\n  voice: cedar\n"),
    "guards with both bounds": ("enough: {min_answers: 2}", "enough: {min_answers: 2, max_answers: 9}"),
    "job options": ("assessment: {timeout: 20s}", "assessment: {timeout: 20s, options: {level: b2}}"),
}
MISTAKES = {
    "an unknown key": ("  ask:\n", "  ask:\n    transitons: []\n"),
    "an unknown top-level key": ("name: t\n", "name: t\nversion: 2\n"),
    "a misspelt action": ("      - respond\n", "      - respnd: hi\n"),
    "a misspelt bare action": ("      - respond\n", "      - respnd\n"),
    "a bare action that needs a value": ("      - respond\n", "      - start\n"),
    "two keys in an action": ("      - respond\n", "      - {respond: hi, log: x}\n"),
    "a bad duration string": ("{delay: 10s, target: bye}", "{delay: soon, target: bye}"),
    "a duration with two units": ("{delay: 10s, target: bye}", "{delay: 1m 30s, target: bye}"),
    "a zero duration": ("{delay: 10s, target: bye}", "{delay: 0, target: bye}"),
    "a duration over a day": ("{delay: 10s, target: bye}", "{delay: 90000, target: bye}"),
    "a state that is text": ("  bye:\n    final: true\n", "  bye: done\n"),
    "final as text": ("    final: true\n", "    final: 'yes'\n"),
    "a target that is a list": ("        target: bye\n      - event", "        target: [bye]\n      - event"),
    "event and all": ("      - event: tool.finish\n", "      - event: tool.finish\n        all: [a.b, c.d]\n"),
    "neither event nor all": ("      - event: tool.finish\n        target: bye\n", "      - target: bye\n"),
    "a join of one": ("all: [response.done, playback.done]", "all: [response.done]"),
    "an unknown event": ("event: tool.finish", "event: input.transcrpt"),
    "a high-rate event": ("event: tool.finish", "event: response.output_audio.delta"),
    "a timeout without target": ("{delay: 10s, target: bye}", "{delay: 10s}"),
    "a guard with no condition": ("enough: {min_answers: 2}", "enough: {}"),
    "a negative answer count": ("enough: {min_answers: 2}", "enough: {min_answers: -1}"),
    "an unknown vad type": ("session:\n", "session:\n  turn_detection: {type: vad}\n"),
    "a bad eagerness": ("session:\n", "session:\n  turn_detection: {type: semantic_vad, eagerness: eager}\n"),
    "a threshold above one": ("session:\n", "session:\n  turn_detection: {type: server_vad, threshold: 2}\n"),
    "a server vad knob on semantic vad": ("session:\n", "session:\n  turn_detection: {type: semantic_vad, "
                                                        "silence_duration_ms: 300}\n"),
    "an unknown transcription key": ("session:\n", "session:\n  transcription: {model: x, lang: en}\n"),
    "a bad turn_end": ("session:\n", "session:\n  turn_end: soon\n"),
    "a tool name with a space": ("{name: finish,", "{name: fin ish,"),
    "a missing name": ("name: t\n", ""),
    "truncate with a value": ("      - respond\n", "      - truncate: false\n"),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_documented_form_is_accepted_by_loader_and_schema(form: str) -> None:
    old, new = FORMS[form]
    assert old in TINY
    text = TINY.replace(old, new, 1)
    _, problems = flowmod.parse(text, "t.yaml")
    assert [str(p) for p in problems if not p.warning] == []
    assert schema_errors(text) == []


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_mistake_the_schema_can_see_is_refused_by_both(mistake: str) -> None:
    old, new = MISTAKES[mistake]
    assert old in TINY
    text = TINY.replace(old, new, 1)
    assert not loader_accepts(text)
    assert len(schema_errors(text)) >= 1


# The broken flows of the loader's own tests whose mistake is one of structure.
SCHEMA_SEES = ["03_yaml11_on_key", "05_missing_initial", "10_unknown_action", "14_unknown_state_key",
               "15_bad_duration", "16_event_and_all", "17_high_rate_event", "21_two_keys_action", "22_join_of_one",
               "02_unknown_event", "28_missing_target_in_after"]


@pytest.mark.parametrize("name", SCHEMA_SEES)
def test_the_schema_sees_the_structural_broken_flows(name: str) -> None:
    assert len(schema_errors((BROKEN / f"{name}.yaml").read_text())) >= 1


# The real editor, when it is installed (npm install yaml-language-server; see docs/authors.md).
YLS = os.environ.get("YAML_LANGUAGE_SERVER") or shutil.which("yaml-language-server")


@pytest.mark.skipif(not YLS, reason="yaml-language-server is not installed")
def test_yaml_language_server_marks_nothing_in_the_shipped_flows(tmp_path: Path) -> None:
    from yls_client import diagnostics

    found = diagnostics(str(YLS), ROOT / "flows" / "flow.schema.json", shipped_flows(), timeout=60)
    assert found == {str(p): [] for p in shipped_flows()}
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("      - respond\n", "      - respnd: hi\n").replace("10s", "soon"))
    assert len(diagnostics(str(YLS), ROOT / "flows" / "flow.schema.json", [bad], timeout=60)[str(bad)]) >= 2


def test_the_schema_module_imports_nothing_extra() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, engine.flow; print('jsonschema' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # jsonschema is only imported for a flow with tools


def test_what_the_loader_accepts_the_schema_accepts() -> None:
    from test_hostile_inputs import mutations

    accepted = [text for text in mutations(seed=7, count=800) if loader_accepts(text)]
    assert len(accepted) >= 8  # most damage is an error; these are the damaged flows that still load
    assert [e for text in accepted for e in schema_errors(text)] == []
