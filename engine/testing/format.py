"""The conversation test format: `*.test.yaml` files beside the flows they test (docs/tests.md).

A test file names one flow and holds tests; each test picks the simulated candidate and model (a
persona or an inline scenario, a seed, simulator faults), faults of the engine's own jobs, and
what the session must have done (`expect:`).

Rules of this module:
1. Files are read only through `engine.source` (bounded, safe YAML with positions).
2. Every problem is `path:line:col: message`, all found in one run, in the author's words (never
   a class name, never a traceback).
3. The models are the format: `engine schema --test` prints their JSON Schema
   (flows/test.schema.json), with a description on every field.
4. A file is checked whole before anything runs: its flow loads, its personas load, every state,
   tool and job it names exists in that flow, every fault spec and pattern parses.
"""

# No `from __future__ import annotations`: pydantic evaluates the models' annotations directly.
import contextlib
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from ..effects import OUTCOMES
from ..errors import EngineError, FlowError, Problem
from ..flow import Duration, Flow, parse_duration, suggest
from ..flow import load as load_flow
from ..sim import Faults, Persona, PersonaError, bundled_personas, load_persona, persona_from_data, persona_schema
from ..source import Document, Unreadable, clean, parse_yaml, read_text

__all__ = ["Suite", "Case", "Expect", "ExpectedCall", "Count", "Lines", "Transcript", "Budgets",
           "ConversationTest", "TestFileError", "load", "check", "json_schema", "WILDCARD", "ANY", "OUTPUTS",
           "is_pattern", "is_range", "pattern"]

WILDCARD = "..."  # in `path:`, any states (none or more)
ANY = "any"  # a matched value that may be anything (but must be there)
OUTPUTS = ("trace.jsonl", "report.json", "report.md", "transcript.md", "sessions.sqlite")


class _Model(BaseModel):
    # strict: the editor schema accepts exactly what the loader accepts ("3" is not a number).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Values ---------------------------------------------------------------------------------------------


class Count(_Model):
    """A number of things: at least `min`, at most `max` (either may be left out)."""

    min: int | None = Field(default=None, ge=0, le=1_000_000, description="At least this many.")
    max: int | None = Field(default=None, ge=0, le=1_000_000, description="At most this many.")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("a count needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self

    def holds(self, n: int) -> bool:
        return (self.min is None or n >= self.min) and (self.max is None or n <= self.max)

    def __str__(self) -> str:
        if self.min == self.max:
            return f"exactly {self.min}"
        if self.max is None:
            return f"at least {self.min}"
        return f"at most {self.max}" if self.min is None else f"{self.min} to {self.max}"


def _count(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"min": value, "max": value}
    if not isinstance(value, dict):
        raise ValueError("a count is a number, or a mapping with min and/or max")
    return value


CountSpec = Annotated[Count, BeforeValidator(_count, json_schema_input_type=Annotated[int, Field(ge=0)] | Count)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_range(spec: Any) -> bool:
    """A matched value written as `{min: A, max: B}` (a number in range)."""
    return isinstance(spec, dict) and bool(spec) and set(spec) <= {"min", "max"}


def _match(value: Any) -> Any:
    if is_range(value):
        if not all(_number(v) for v in value.values()):
            raise ValueError("min and max of a range are numbers")
        if len(value) == 2 and value["min"] > value["max"]:
            raise ValueError(f"min ({value['min']}) is more than max ({value['max']})")
    return value


_MATCH_SCHEMA = {
    "description": "A value: equal to it; a list: one of these; `any`: there, with any value; {min, max}: a number "
                   "in that range.",
    "anyOf": [
        {"const": ANY},
        {"type": "array"},
        {"type": "object", "properties": {"min": {"type": "number", "description": "At least this."},
                                          "max": {"type": "number", "description": "At most this."}},
         "additionalProperties": False, "minProperties": 1},
        {"type": ["string", "number", "boolean", "null", "object"]},  # a mapping other than {min, max}: equal
    ],
}
Match = Annotated[Any, BeforeValidator(_match), WithJsonSchema(_MATCH_SCHEMA)]


def is_pattern(text: str) -> bool:
    """`/regex/` or `/regex/i`, rather than a plain substring."""
    return len(text) >= 2 and text.startswith("/") and (text.endswith("/") or (len(text) >= 3 and text.endswith("/i")))


def pattern(text: str) -> re.Pattern[str]:
    """The regular expression of a `/regex/` (or `/regex/i`: ignoring case)."""
    if text.endswith("/i"):
        return re.compile(text[1:-2], re.IGNORECASE)
    return re.compile(text[1:-1])


def _line(value: Any) -> Any:
    if isinstance(value, str) and is_pattern(value):
        try:
            pattern(value)
        except re.error as exc:
            raise ValueError(f"{value} is not a regular expression: {exc}") from None
    return value


Line = Annotated[str, Field(min_length=1), BeforeValidator(_line)]


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Outcome = Literal["completed", "completed_degraded", "not_completed", "interrupted", "error"]
assert set(Outcome.__args__) == set(OUTCOMES)  # type: ignore[attr-defined]
OutputName = Literal["trace.jsonl", "report.json", "report.md", "transcript.md", "sessions.sqlite"]
StateName = Annotated[str, Field(min_length=1)]
# A list, or one value written alone.
StateNames = Annotated[list[StateName], BeforeValidator(_names, json_schema_input_type=StateName | list[StateName])]
Outcomes = Annotated[list[Outcome], BeforeValidator(_names, json_schema_input_type=Outcome | list[Outcome])]


def _job_fault(value: Any) -> Any:
    if value in ("fail", "hang"):
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"a job fault is fail, hang or a duration such as 3s, not {value!r}") from None


JobFault = Annotated[
    Literal["fail", "hang"] | float,
    BeforeValidator(_job_fault, json_schema_input_type=Literal["fail", "hang"] | Annotated[
        str, Field(pattern=r"^\s*\d+(\.\d+)?\s*(ms|s|m|min|h)?\s*$")] | Annotated[float, Field(gt=0)]),
]


# Expectations ---------------------------------------------------------------------------------------


class ExpectedCall(_Model):
    """A tool call of the model's (each call counted once, however often the server repeated it)."""

    name: str = Field(min_length=1, description="The tool's name, one the flow declares under session.tools.")
    arguments: dict[str, Match] = Field(
        default_factory=dict, description="Arguments the call must have: a value (equal), a list (one of these), "
        "`any` (there, any value), {min, max} (a number in range). Arguments not listed may be anything.")
    times: CountSpec = Field(
        default_factory=lambda: Count(min=1), description="How many calls of this tool match: a number, or "
        "{min, max}. Default: at least one; 0: never.")


class Lines(_Model):
    """What one side says, over all of its turns in the transcript."""

    says: list[Line] = Field(
        default_factory=list, description="Each must appear in one of its turns: a substring (case matters), or "
        "/regex/ (/regex/i ignores case).")
    never_says: list[Line] = Field(
        default_factory=list, description="None of these may appear in any of its turns (substring or /regex/).")


class Transcript(_Model):
    """Lines of the transcript (report.json's turns), by who speaks them."""

    interviewer: Lines | None = Field(default=None, description="The interviewer's turns (the model's speech).")
    candidate: Lines | None = Field(default=None, description="The candidate's turns (as transcribed).")


class Budgets(_Model):
    """Latency budgets, in session time (the simulator's virtual clock; e.g. 800ms, 2s, 5min)."""

    dead_air: Duration | None = Field(
        default=None, description="The longest silence the candidate may hear while waiting for the interviewer: "
        "from the start to its first words, and between two of its turns with no candidate speech between.")
    answer_to_reply: Duration | None = Field(
        default=None, description="The longest time from the end of a candidate's turn (speech stopped, else "
        "committed) to the first audio of the interviewer's reply heard.")
    session: Duration | None = Field(default=None, description="The longest the whole session may last.")


class Expect(_Model):
    """What the session must have done. Each key is one expectation, checked in the order written;
    `collisions` (default 0) is always checked, first."""

    path: list[StateName] | None = Field(
        default=None, min_length=1, description="The states entered, in order, from the initial state to the "
        "last; `...` stands for any states (none or more).")
    visited: list[StateName] = Field(default_factory=list, description="States entered at least once.")
    not_visited: list[StateName] = Field(default_factory=list, description="States never entered.")
    tool_calls: list[ExpectedCall] = Field(default_factory=list, description="Tool calls of the model's.")
    transcript: Transcript | None = Field(default=None, description="Lines each side says or never says.")
    final_state: StateNames | None = Field(
        default=None, description="The state the session ended in (or one of a list).")
    outcome: Outcomes | None = Field(
        default=None, description="How it ended: completed, completed_degraded (a timeout carried it), "
        "not_completed, interrupted or error (or one of a list).")
    outputs: list[OutputName] = Field(
        default_factory=list, description="Output files the session must have written (sessions.sqlite is "
        "beside the session folder).")
    report: dict[str, Match] = Field(
        default_factory=dict, description="Fields of report.json by dotted path (`results.assessment.overall.band`, "
        "`counts.answers`, `turns.0.role`), each matched like a tool argument.")
    responses: CountSpec | None = Field(
        default=None, description="How many responses the engine asked for (counts.responses): a number, or "
        "{min, max}.")
    collisions: int = Field(
        default=0, ge=0, le=1_000_000, description="Responses refused because one was already in progress. Always "
        "checked; only the simulator's `collision` fault makes one the engine did not cause.")
    budgets: Budgets | None = Field(default=None, description="Latency budgets on session time.")


class Case(_Model):
    """One conversation test: who the candidate and the model are, what goes wrong, what must happen."""

    name: str = Field(min_length=1, description="Shown in the results; unique in the file.")
    description: str = Field(default="", description="What this test is for.")
    persona: str | None = Field(
        default=None, min_length=1, description="The simulated candidate and model: a bundled persona's name "
        "(a2_hesitant) or a persona file relative to this file. Default: the default persona.")
    scenario: dict[str, Any] | None = Field(
        default=None, description="An inline persona or scenario (the persona format, docs/personas.md), instead "
        "of `persona`; `extends:` names a bundled persona or a file relative to this file.")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Seed of every random choice of the simulator.")
    faults: str = Field(
        default="", description="Simulator faults, as for `engine run --faults`: e.g. shuffle_done,duplicate.")
    jobs: dict[str, JobFault] = Field(
        default_factory=dict, description="Faults of the flow's own jobs, by name: fail, hang, or a duration (the "
        "real job's result that long after it started). Jobs not named run as installed.")
    expect: Expect = Field(description="What the session must have done.")


class Suite(_Model):
    """A conversation test file (`*.test.yaml`): one flow, and tests of it."""

    flow: str = Field(min_length=1, description="The flow under test: a path relative to this file.")
    description: str = Field(default="", description="What these tests are for.")
    tests: list[Case] = Field(min_length=1, description="The tests, run in parallel; each is one session.")


# Loaded tests -----------------------------------------------------------------------------------------


class TestFileError(EngineError):
    """A test file is invalid. `problems` holds every error found, in file order."""

    __test__ = False  # not a pytest class

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class ConversationTest:
    """One test of a loaded file, ready to run: its flow, persona and faults resolved."""

    file: Path
    index: int  # in the file's `tests:`
    case: Case
    flow: Flow
    persona: Persona
    faults: Faults
    order: tuple[str, ...]  # the expectations, in the order written (`collisions` first)

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def slug(self) -> str:
        """The test's name as a folder name."""
        return _slug(self.case.name)


def load(path: str | Path) -> list[ConversationTest]:
    """Read and check a test file (its flow and personas too).

    Raises:
        TestFileError: every problem (`path:line:col: message`).
        Unreadable: the file cannot be read at all.
    """
    tests, problems = _read(Path(path))
    errors = [p for p in problems if not p.warning]
    if errors:
        raise TestFileError(errors)
    return tests


def check(path: str | Path) -> list[Problem]:
    """Every problem of a test file, for `engine check`. Raises Unreadable if unreadable."""
    return _read(Path(path))[1]


def json_schema() -> dict[str, Any]:
    """JSON Schema of the test format, for editors; the scenario format is embedded under $defs."""
    out = Suite.model_json_schema()
    persona = persona_schema()
    defs = persona.pop("$defs", {})
    assert not set(defs) & set(out["$defs"]), "a persona definition has the name of a test definition"
    persona.pop("$schema", None)
    out["$defs"].update(defs)
    out["$defs"]["Scenario"] = {**persona, "title": "Scenario"}
    scenario = out["$defs"]["Case"]["properties"]["scenario"]  # validated by the persona format
    scenario["anyOf"] = [{"$ref": "#/$defs/Scenario"}, {"type": "null"}]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **out, "title": "engine conversation test"}


# Private -------------------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80] or "test"


def _read(path: Path) -> tuple[list[ConversationTest], list[Problem]]:
    src = parse_yaml(read_text(path), str(path))
    for _, position, message in src.yaml11:  # a test means in an editor what it means here
        src.add(position, message)
    if src.data is None or src.yaml11:
        return [], src.sorted_problems()
    data = src.data
    if not isinstance(data, dict):
        src.at((), "a test file is a mapping with `flow` and `tests`")
        return [], src.sorted_problems()
    try:
        suite = Suite.model_validate(data)
        flow_name: Any = suite.flow
        cases = list(enumerate(suite.tests))
    except ValidationError as exc:
        # Reported; the tests that are valid on their own are still checked against the flow.
        _report(exc, src)
        flow_name = data.get("flow")
        cases = []
        raw_tests = data.get("tests")
        for i, raw in enumerate(raw_tests if isinstance(raw_tests, list) else []):
            with contextlib.suppress(ValidationError):
                cases.append((i, Case.model_validate(raw)))
    folder = path.parent
    flow = _flow(flow_name, folder, src) if isinstance(flow_name, str) and flow_name else None
    tests = []
    slugs: dict[str, str] = {}
    for i, case in cases:
        loc = ("tests", i)
        slug = _slug(case.name)
        if slug in slugs:
            src.at(loc + ("name",), f"two tests are named alike: '{slugs[slug]}' and '{case.name}'")
        slugs.setdefault(slug, case.name)
        persona = _persona(case, src, loc, folder)
        faults = _faults(case.faults, src, loc + ("faults",))
        if flow is not None:
            _names_in_flow(case, flow, src, loc)
        written = list(src.data["tests"][i]["expect"])
        order = tuple(["collisions", *[k for k in written if k != "collisions"]] if "collisions" not in written
                      else written)
        if flow is not None and persona is not None and faults is not None:
            tests.append(ConversationTest(path, i, case, flow, persona, faults, order))
    problems = src.sorted_problems()
    return (tests if not any(not p.warning for p in problems) else []), problems


def _flow(name: str, folder: Path, src: Document) -> Flow | None:
    where = ("flow",)
    file = Path(name) if Path(name).is_absolute() else folder / name
    try:
        return load_flow(file)
    except Unreadable as exc:
        src.at(where, f"flow: cannot read '{name}': {exc.message}")
    except FlowError as exc:
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        src.at(where, f"flow '{name}' does not load: {exc.problems[0]}{more}")
    return None


def _persona(case: Case, src: Document, loc: tuple[Any, ...], folder: Path) -> Persona | None:
    if case.persona is not None and case.scenario is not None:
        src.at(loc + ("scenario",), "give `persona` or `scenario`, not both")
        return None
    if case.scenario is not None:
        return persona_from_data(src.data["tests"][loc[1]]["scenario"], src, loc + ("scenario",), base=folder)
    name = case.persona
    if name is None:
        return load_persona(None)
    file = Path(name) if Path(name).is_absolute() else folder / name
    target: str | Path = file
    if not file.is_file() and not name.endswith((".yaml", ".yml")) and "/" not in name:
        if name not in bundled_personas():
            known = ", ".join(bundled_personas()) or "none installed"
            src.at(loc + ("persona",), f"persona: no file '{name}' beside this test and no bundled persona of that "
                                       f"name (bundled: {known})")
            return None
        target = name
    try:
        return load_persona(target)
    except PersonaError as exc:
        src.at(loc + ("persona",), f"persona: {exc}")
        return None


def _faults(spec: str, src: Document, loc: tuple[Any, ...]) -> Faults | None:
    try:
        return Faults.parse(spec)
    except ValueError as exc:
        src.at(loc, f"faults: {exc}")
        return None


def _names_in_flow(case: Case, flow: Flow, src: Document, loc: tuple[Any, ...]) -> None:
    """Every state, tool and job the test names is one of the flow's."""
    states = list(flow.states)
    expect, at = case.expect, loc + ("expect",)

    def state(name: str, where: tuple[Any, ...], wildcard: bool = False) -> None:
        if name not in flow.states and not (wildcard and name == WILDCARD):
            src.at(where, f"no state '{name}' in flow '{flow.name}'{suggest(name, states)}")

    for i, name in enumerate(expect.path or []):
        state(name, at + ("path", i), wildcard=True)
    for key in ("visited", "not_visited"):
        for i, name in enumerate(getattr(expect, key)):
            state(name, at + (key, i))
    for name in set(expect.visited) & set(expect.not_visited):
        src.at(at + ("not_visited", expect.not_visited.index(name)), f"'{name}' is both visited and not_visited")
    listed = isinstance(src.data["tests"][loc[1]]["expect"].get("final_state"), list)
    for i, name in enumerate(expect.final_state or []):
        state(name, at + (("final_state", i) if listed else ("final_state",)))
    tools = sorted(flow.tool_names())
    for i, call in enumerate(expect.tool_calls):
        if call.name not in tools:
            known = f" (its tools: {', '.join(tools)})" if tools else " (it declares no tools)"
            src.at(at + ("tool_calls", i, "name"), f"no tool '{call.name}' in flow '{flow.name}'"
                   f"{suggest(call.name, tools) or known}")
    for name in case.jobs:
        if name not in flow.jobs:
            known = f" (its jobs: {', '.join(flow.jobs)})" if flow.jobs else " (it declares no jobs)"
            src.at(loc + ("jobs", name), f"no job '{name}' in flow '{flow.name}'{suggest(name, flow.jobs) or known}",
                   key=True)


# Which model a mapping at a key is, for "did you mean" on an unknown key.
_MODELS: dict[str, type[BaseModel]] = {
    "": Suite, "tests": Case, "expect": Expect, "tool_calls": ExpectedCall, "transcript": Transcript,
    "interviewer": Lines, "candidate": Lines, "budgets": Budgets, "times": Count, "responses": Count,
}  # fmt: skip


def _report(exc: ValidationError, src: Document) -> None:
    """pydantic's errors as the author's: at their position, in plain words."""
    seen: set[tuple[tuple[Any, ...], str]] = set()
    for err in exc.errors():
        where, model = _data_loc(src.data, err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            hint = difflib.get_close_matches(key, list(model.model_fields), n=1)
            message, at_key = f"unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""), True
        elif kind == "missing":
            where, message, at_key = where[:-1], f"missing key '{err['loc'][-1]}'", False
        else:
            text = str(err["msg"]).removeprefix("Value error, ")
            if kind in ("model_type", "model_attributes_type", "dict_type"):
                text = "should be a mapping"
            elif kind == "list_type":
                text = "should be a list"
            named = ".".join(str(p) for p in where)
            message, at_key = (f"{named}: {text}" if named else text), False
        if (where, message) not in seen:
            seen.add((where, message))
            src.at(where, clean(message), key=at_key)


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type[BaseModel]]:
    """A pydantic error location mapped onto the document (parts pydantic adds dropped), and the
    model of the mapping the error is in."""
    out: list[Any] = []
    model: type[BaseModel] = Suite
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            out.append(part)
            if isinstance(part, str) and part in _MODELS and isinstance(data, (dict, list)):
                model = _MODELS[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
            out.append(part)
        elif isinstance(data, dict) and isinstance(part, str):
            out.append(part)  # a key that is not there: missing or unknown
            break
    return tuple(out), model
