"""What keeps the start fast: each command imports only what it uses, and the checks take their
short way for plain tool schemas without changing a verdict. No timing here (benchmarks/startup.py
measures the start); these assert what is imported and what is decided."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import flow as flowmod
from engine.checks import _meta_schema, _plainly_valid

ROOT = Path(__file__).resolve().parent.parent


def imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = f"import sys\n{code}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_engine_help_imports_no_engine_machinery() -> None:
    modules = imported_by("from engine.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not modules & {"pydantic", "yaml", "asyncio", "websockets", "numpy", "engine.flow", "engine.runner"}


def test_engine_check_imports_the_loader_and_nothing_of_a_session() -> None:
    modules = imported_by(f"from engine.cli import main\nmain(['check', {str(ROOT / 'flows' / 'assessment.yaml')!r}])")
    assert {"pydantic", "yaml", "engine.flow", "engine.checks"} <= modules
    assert not modules & {"asyncio", "websockets", "numpy", "transitions", "jsonschema", "engine.runner",
                          "engine.sim", "engine.assessment"}


def test_the_simulator_starts_without_numpy() -> None:
    # numpy is for its tone, speech resampling and real audio, all imported where they are used.
    modules = imported_by("import engine.simulator\nengine.simulator.Simulator(voices=True)")
    assert "engine.sim" in modules and "numpy" not in modules


def test_a_kept_flow_and_persona_start_a_session_without_yaml_validators_or_entry_points(tmp_path: Path) -> None:
    # What `engine run` does before its first response.create, the second time it runs a flow: the
    # flow and the persona come from engine.cache (no YAML parsed, no validator built), and the job
    # registry is not read yet (it is read when the first response is under way).
    code = f"""
import os
os.environ["ENGINE_CACHE_DIR"] = {str(tmp_path / "cache")!r}
from engine import flow, jobs
from engine.sim import scenario
from engine.runner import Session
f = flow.load({str(ROOT / "flows" / "assessment.yaml")!r})
p = scenario.load_persona(None)
installed = jobs.registry()
print(__import__("json").dumps([f.name, p.name, flow.Flow.__pydantic_complete__,
                                scenario.Persona.__pydantic_complete__, "_jobs" in vars(installed)]))
"""
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           check=True)
    name, persona, *built = json.loads(first.stdout.splitlines()[-1])
    assert built == [True, True, False]  # the first run validates (and keeps) both
    again = imported_by(code)
    assert "yaml" not in again and "engine.checks" not in again
    second = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert json.loads(second.stdout.splitlines()[-1]) == [name, persona, False, False, False]


FLOWS = sorted(p for p in [*ROOT.glob("flows/*.yaml"), *ROOT.glob("tests/flows/*.yaml"),
                           *ROOT.glob("benchmarks/flows/*.yaml")]
               if not p.name.endswith((".persona.yaml", ".test.yaml")))  # flows only, not personas or tests


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_the_tools_of_the_shipped_flows_take_the_short_way(path: Path) -> None:
    flow = flowmod.load(path)
    for tool in flow.session.tools:
        assert _plainly_valid(tool.parameters), tool.name


PLAIN = [
    {"type": "object", "properties": {"reason": {"type": "string", "description": "why"}}},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 4}}, "required": ["n"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                               "uniqueItems": True}}},
    {"type": ["string", "null"], "enum": ["a", None], "default": "a", "format": "email", "pattern": "^a"},
    {"type": "object", "additionalProperties": False, "properties": {}},
    True,
]
NOT_PLAIN = [  # jsonschema decides these (some valid, some not)
    {"type": "strin"}, {"type": []}, {"type": ["string", "string"]}, {"required": "name"},
    {"required": ["a", "a"]}, {"minLength": -1}, {"minLength": 2.0}, {"minLength": True}, {"properties": []},
    {"$ref": "#/$defs/x"}, {"allOf": [{"type": "string"}]}, {"x-custom": 1}, {"enum": "a"}, {"minimum": "1"},
    {"properties": {"a": {"type": "objet"}}}, 3, None, [],
]


@pytest.mark.parametrize("schema", PLAIN, ids=str)
def test_plain_schemas_are_valid_for_jsonschema_too(schema: Any) -> None:
    assert _plainly_valid(schema)
    assert not list(_meta_schema().iter_errors(schema))


@pytest.mark.parametrize("schema", NOT_PLAIN, ids=str)
def test_anything_else_is_left_to_jsonschema(schema: Any) -> None:
    assert not _plainly_valid(schema)


def test_the_short_way_never_passes_a_schema_jsonschema_refuses() -> None:
    rnd = random.Random(13)
    values = [None, True, False, 0, 1, -1, 2.5, 2.0, "x", "string", "object", "strin", [], ["string"],
              ["string", "string"], ["a", 1], {}, {"type": "string"}, {"type": 3}, [1, True]]
    keys = ["type", "properties", "items", "additionalProperties", "required", "enum", "examples", "const",
            "title", "description", "default", "format", "pattern", "uniqueItems", "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "$ref", "bogus"]

    def schema(depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(rnd.randint(0, 4)):
            key = rnd.choice(keys)
            if key == "properties" and depth < 3 and rnd.random() < 0.8:
                out[key] = {rnd.choice("abc"): schema(depth + 1) for _ in range(rnd.randint(0, 3))}
            elif key in ("items", "additionalProperties") and depth < 3 and rnd.random() < 0.7:
                out[key] = schema(depth + 1)
            else:
                out[key] = rnd.choice(values)
        return out

    short = 0
    for _ in range(3000):
        s = schema(0)
        if _plainly_valid(s):
            short += 1
            assert not list(_meta_schema().iter_errors(s)), s
    assert short > 300  # the short way was tried often enough to mean something
