"""The persona/scenario format: the bundled files, its JSON Schema, and one clear line for every bad file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from engine import cli
from engine.errors import Problem
from engine.sim.scenario import (
    PERSONA_DIR,
    Persona,
    PersonaError,
    bundled_personas,
    check_persona,
    load_persona,
    persona_from_data,
    persona_schema,
)
from engine.source import Unreadable, parse_yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = PERSONA_DIR / "persona.schema.json"
ALL_PERSONAS = sorted(PERSONA_DIR.glob("*.yaml")) + sorted((ROOT / "tests" / "flows").glob("*.persona.yaml")) + [
    ROOT / "benchmarks" / "personas" / "short.yaml"
]


def validator() -> jsonschema.Draft202012Validator:
    schema = persona_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", ALL_PERSONAS, ids=lambda p: p.name)
def test_every_shipped_persona_validates_against_the_schema_and_loads(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    errors = [e.message for e in validator().iter_errors(data)]
    assert errors == [], errors
    assert check_persona(path) == []
    assert isinstance(load_persona(path), Persona)


def test_the_bundled_personas_by_name() -> None:
    assert {"default", "a2_hesitant", "c1_fluent"} <= set(bundled_personas())
    assert load_persona("a2_hesitant").level == "A2" and load_persona("c1_fluent").level == "C1"
    assert load_persona("default") == load_persona() == Persona()  # default.yaml restates the defaults
    with pytest.raises(PersonaError) as info:
        load_persona("b2_confident")
    line = str(info.value)
    assert line.startswith("b2_confident: no such persona file or bundled persona (bundled: a2_hesitant, c1_fluent")
    assert "\n" not in line


def test_the_committed_schema_file_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == persona_schema(), (
        "regenerate: python -c 'import json; from engine.sim import persona_schema; "
        "print(json.dumps(persona_schema(), indent=2))' > flows/personas/persona.schema.json"
    )


def test_every_field_in_the_schema_has_a_description() -> None:
    schema = persona_schema()
    missing = []
    for name, definition in [("Persona", schema), *schema.get("$defs", {}).items()]:
        for key, prop in definition.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{key}")
        if not definition.get("description"):
            missing.append(name)
    assert missing == []


# Documents the schema can judge on its own, and what both it and the loader say of them.
SCHEMA_CASES: list[tuple[str, bool]] = [
    ("name: X\n", True),
    ("candidate: {answers: [Hi., {text: Hello there, pauses: [{after_words: 1, seconds: 1.5}]}, {silence: true}]}\n", True),
    ("candidate: {reaction_s: 1.5, transcription_delay_s: never}\n", True),
    ("interviewer: {tool_calls: [{cue: [refund], times: 2, arguments: [{a: 1}, {a: 2}]}]}\n", True),
    ("interviewer: {responses: [{response: 2, fail: rate_limit}]}\n", True),
    ("mood: grumpy\n", False),
    ("candidate: {words_per_minute: '120'}\n", False),
    ("candidate: {reaction_s: [1, 2, 3]}\n", False),
    ("candidate: {transcription_delay_s: later}\n", False),
    ("candidate: {answers: [{text: Hi, mood: calm}]}\n", False),
    ("candidate: {answers: [{text: Hi, leave: forever}]}\n", False),
    ("interviewer: {responses: [{response: 0, say: Hi}]}\n", False),
    ("interviewer: {tool_calls: [{after_answers: -1}]}\n", False),
    ("interviewer: {first_audio_s: .inf}\n", False),
]


@pytest.mark.parametrize(("text", "valid"), SCHEMA_CASES)
def test_the_schema_accepts_what_the_loader_accepts(text: str, valid: bool, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    schema_ok = not list(validator().iter_errors(yaml.safe_load(text)))
    loader_ok = check_persona(path) == []
    assert (schema_ok, loader_ok) == (valid, valid)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: X\ncandidate:\n  answres: [hi]\n", "3:3: unknown key 'answres' (did you mean 'answers'?)"),
        ("candidate:\n  reaction_s: [2, 1]\n", "2:3: candidate: reaction_s must be [low, high] with low <= high"),
        ("candidate:\n  answers:\n    - text: hi\n      silence: true\n",
         "3:7: candidate.answers.0: an answer has exactly one of text, silence, leave; got text, silence"),
        ("candidate:\n  answers:\n    - {text: one two, pauses: [{after_words: 5, seconds: 1}]}\n",
         "3:7: candidate.answers.0: a pause after word 5 of an answer of 2 words"),
        ("interviewer:\n  tool_calls:\n    - tool: note\n", "3:7: interviewer.tool_calls.0: a tool call needs exactly one "
                                                           "of after_answers, cue"),
        ("interviewer:\n  words_per_minute: fast\n", "2:21: interviewer.words_per_minute: Input should be a valid integer"),
        ("candidate:\n  answers: [{text: Hi, pauses: [{seconds: 1}]}]\n",
         "2:33: candidate.answers.0.pauses.0: missing key 'after_words'"),
        ("- just\n- a list\n", "1:1: a persona is a mapping (name, candidate, interviewer, ...)"),
        ("", "1:1: the document is empty"),
        ("name: [unclosed\n", "2:1: YAML: "),
        ("on: yes\n", "1:1: key 'on' is read by YAML 1.1 as a boolean"),
        ("a: &a [*a]\n", "a recursive alias"),
        ("extends: nobody_here\n", "1:10: extends: no persona 'nobody_here' (bundled: a2_hesitant"),
    ],
)
def test_a_bad_persona_is_one_line_with_its_position(text: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    problems = check_persona(path)
    assert problems and all(isinstance(p, Problem) for p in problems)
    assert problem in str(problems[0]) and str(problems[0]).startswith(f"{path}:"), problems
    with pytest.raises(PersonaError) as info:
        load_persona(path)
    line = str(info.value)
    assert line.startswith(f"{path}:") and problem in line and "\n" not in line


@pytest.mark.parametrize("kind", ["missing", "directory", "utf16", "binary", "latin1", "huge", "fifo", "deep", "bomb"])
def test_hostile_persona_files_give_one_line_naming_the_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "utf16":
        path.write_bytes("name: X\n".encode("utf-16"))
    elif kind == "binary":
        path.write_bytes(b"name: \x00\x01\x02")
    elif kind == "latin1":
        path.write_bytes("name: Jos\xe9\n".encode("latin-1"))
    elif kind == "huge":
        path.write_text("name: X\n" + "# padding\n" * 200_000)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "bomb":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
                  f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]  # fmt: skip
        path.write_text("\n".join(lines) + "\n")
    began = time.monotonic()
    with pytest.raises(PersonaError) as info:
        load_persona(path)
    assert time.monotonic() - began < 2.0
    line = str(info.value)
    assert line.startswith(str(path)) and "\n" not in line and len(line) < 300, line
    if kind in ("missing", "directory", "utf16", "binary", "latin1", "huge", "fifo"):
        with pytest.raises(Unreadable):
            check_persona(path)
    else:
        assert check_persona(path)[0].line >= 1


def test_engine_run_with_a_bad_persona_says_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidate:\n  speed: 3\n")
    flow = str(ROOT / "flows" / "assessment.yaml")
    for persona, expected in [(str(bad), f"engine run: {bad}:2:3: unknown key 'speed'"),
                              (str(tmp_path), f"engine run: {tmp_path}: not a regular file (it is a directory)"),
                              ("nobody", "engine run: nobody: no such persona file or bundled persona")]:  # fmt: skip
        code = cli.main(["run", flow, "--persona", persona, "--no-ui", "--audio", "none", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(expected) and "\n" not in err and "Traceback" not in err, err


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    scenario = tmp_path / "forgetful.yaml"
    scenario.write_text(
        "name: Maria forgets nothing, the model forgets the tool\n"
        "extends: a2_hesitant\n"
        "candidate:\n  answers: [Yes., No.]\n"
        "interviewer:\n  tool_calls: []\n"
    )
    persona = load_persona(scenario)
    base = load_persona("a2_hesitant")
    assert persona.candidate.answers == ["Yes.", "No."] and persona.interviewer.tool_calls == []
    assert persona.candidate.words_per_minute == base.candidate.words_per_minute == 80
    assert persona.interviewer.questions == base.interviewer.questions
    again = tmp_path / "again.yaml"
    again.write_text("extends: forgetful.yaml\ncandidate: {words_per_minute: 90}\n")  # a file beside this one
    chained = load_persona(again)
    assert chained.candidate.answers == ["Yes.", "No."] and chained.candidate.words_per_minute == 90
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    assert "extends itself (a cycle)" in str(check_persona(loop)[0])
    broken = tmp_path / "broken.yaml"
    broken.write_text("extends: bad_base.yaml\n")
    (tmp_path / "bad_base.yaml").write_text("candidate: {mood: 1}\n")
    assert f"extends: 'bad_base.yaml' is not a valid persona: {tmp_path / 'bad_base.yaml'}:1:13: unknown key 'mood'" in str(
        check_persona(broken)[0])


def test_an_inline_scenario_in_another_document_reports_positions_there() -> None:
    doc = parse_yaml("name: a test\nscenario:\n  candidate:\n    answers: [{silence: yes, text: hi}]\n", "t.yaml")
    assert persona_from_data(doc.data["scenario"], doc, ("scenario",)) is None
    assert [str(p) for p in doc.problems] == [
        "t.yaml:4:15: scenario.candidate.answers.0: an answer has exactly one of text, silence, leave; got text, silence"]
    ok = parse_yaml("scenario: {extends: c1_fluent, candidate: {answers: [Hi.]}}\n", "t.yaml")
    persona = persona_from_data(ok.data["scenario"], ok, ("scenario",))
    assert persona is not None and persona.level == "C1" and persona.candidate.answers == ["Hi."]


def test_persona_data_round_trips(tmp_path: Path) -> None:
    data: dict[str, Any] = load_persona("c1_fluent").model_dump()
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_persona(path) == load_persona("c1_fluent")


def test_the_documented_example_is_a_valid_scenario(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "personas.md").read_text()
    example = doc.split("## The file format", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = ROOT / "docs" / "example.persona.yaml"  # where its $schema and extends resolve
    src = parse_yaml(example, str(path))
    persona = persona_from_data(src.data, src)
    assert src.problems == [] and persona is not None, src.problems
    assert persona.extends == "a2_hesitant" and persona.candidate.words_per_minute == 90
    assert len(persona.candidate.answers) == 5 and persona.interviewer.tool_calls == []
    assert not list(validator().iter_errors(src.data))


def test_engine_schema_persona_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["schema", "--persona"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(SCHEMA_FILE.read_text())


def test_engine_check_reads_personas_by_their_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    bad = tmp_path / "alex.persona.yaml"
    bad.write_text("name: Alex\ncandidate: {answrs: [Hello.]}\n")
    assert main(["check", str(bad), *map(str, sorted(PERSONA_DIR.glob("*.yaml")))]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{bad}:2:13: unknown key 'answrs' (did you mean 'answers'?)"
    assert all(line.endswith(": ok") for line in out[1:]) and len(out) == 1 + len(list(PERSONA_DIR.glob("*.yaml")))
