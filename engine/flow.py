"""YAML flow file -> validated `Flow`, or every problem as `path:line:col: message`.

Rules of this module:
1. Three stages, as sismic and python-statemachine do: a safe YAML composer that keeps node
   positions (no code runs from YAML, duplicate keys and YAML 1.1 boolean keys are errors), then
   the pydantic models (extra=forbid), then the semantic checks (names, graph, no-stall rule).
2. Report everything found, in file order; never a traceback for an author's mistake.
3. The models are the format: `engine schema` prints their JSON Schema for editors.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import FlowError, Problem
from .source import Document, Unreadable, inside, parse_yaml, read_text
from .events import ENGINE_EVENTS, HIGH_RATE, SERVER_EVENTS, normalise_name

__all__ = [
    "Flow",
    "State",
    "Transition",
    "Timeout",
    "Action",
    "Session",
    "load",
    "parse",
    "check",
    "parse_duration",
    "template_names",
    "BUILTIN_GUARDS",
    "TEMPLATE_ROOTS",
]

BUILTIN_GUARDS = {
    "speaking": "engine audio is still playing to the candidate",
    "completed": "the response that fired the transition finished with status completed",
    "failed": "the response that fired the transition failed, was cancelled or is incomplete",
}
TEMPLATE_ROOTS = {
    "answers": "how many answers the candidate has given",
    "last_answer": "the candidate's last transcribed answer",
    "tool": "arguments of the model's last tool call",
}
_TEMPLATE = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")


def parse_duration(value: Any) -> float:
    """`5s`, `250ms`, `2m`, or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (write e.g. 5s, 250ms, 2m)")
        number, unit = float(match[1]), match[2] or "s"
        seconds = number * {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0}[unit]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# Actions ------------------------------------------------------------------------------------


class Respond(_Model):
    """Ask the model to speak. Goes through the response gate: queued while a response is active."""

    instructions: str | None = Field(None, description="Instructions for this response only; templates allowed.")
    input: str | None = Field(None, description="A user text message added to the conversation first.")
    tool_choice: str | None = Field(None, description="auto, none, required, or a tool name.")


class ToolResult(_Model):
    output: str | dict[str, Any] = Field(
        default_factory=lambda: {"ok": True}, description="Result of the last tool call; templates allowed."
    )


_BARE_ACTIONS = {"respond": {}, "tool_result": {}, "truncate": True, "cancel_response": True, "save": "checkpoint"}


def _action_shorthand(value: Any) -> Any:
    if isinstance(value, str) and value in _BARE_ACTIONS:
        return {value: _BARE_ACTIONS[value]}
    if isinstance(value, dict) and len(value) > 1:
        raise ValueError(f"an action has exactly one key, got {', '.join(map(str, value))}")
    if isinstance(value, dict) and len(value) == 1:
        key, arg = next(iter(value.items()))
        if key == "respond" and isinstance(arg, str):
            return {"respond": {"instructions": arg}}
        if key == "tool_result" and isinstance(arg, (str, dict)) and not (isinstance(arg, dict) and "output" in arg):
            return {"tool_result": {"output": arg}}
        if arg is None and key in _BARE_ACTIONS:
            return {key: _BARE_ACTIONS[key]}
    return value


class _Action(_Model):
    """One action: a mapping with exactly one key (or the bare name of an argument-less action)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    respond: Respond | None = None
    tool_result: ToolResult | None = None
    start: str | None = Field(None, description="Start the named background job.")
    cancel: str | None = Field(None, description="Cancel the named background job.")
    cancel_response: Literal[True] | None = Field(None, description="Cancel the response in progress.")
    truncate: Literal[True] | None = Field(
        None, description="Barge-in: stop playback, cancel the response, truncate what was not heard."
    )
    save: str | None = Field(None, description="Write the outputs now; the text is recorded as the reason.")
    log: str | None = Field(None, description="A line for the log and the trace; templates allowed.")
    end: str | None = Field(None, description="End the session now (not ok unless in a final state).")

    @model_validator(mode="after")
    def _one_key(self) -> _Action:
        keys = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(keys) != 1:
            raise ValueError(f"an action has exactly one key, got {', '.join(keys) or 'none'}")
        return self

    @property
    def name(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def arg(self) -> Any:
        return getattr(self, self.name)


Action = Annotated[_Action, BeforeValidator(_action_shorthand)]


# States and transitions ---------------------------------------------------------------------


class Transition(_Model):
    """Fires on `event`, or on the last of the `all` events (a join), when every guard holds."""

    event: str | None = Field(None, description="A Realtime event (GA or beta name) or an engine event.")
    all_: list[str] | None = Field(None, alias="all", description="Join: fire once all these events happened in this state.")
    guard: Annotated[list[str], BeforeValidator(_names)] = Field(default_factory=list)
    target: str | None = Field(None, description="Next state; absent = internal transition (no exit/enter).")
    actions: list[Action] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_trigger(self) -> Transition:
        if (self.event is None) == (self.all_ is None):
            raise ValueError("a transition has either `event:` or `all:` (a join), not both or neither")
        if self.all_ is not None and len(self.all_) < 2:
            raise ValueError("`all:` joins two or more events; use `event:` for one")
        return self

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(normalise_name(e) for e in ([self.event] if self.event else self.all_ or []))


class Timeout(_Model):
    delay: Duration = Field(description="Time since the state was entered, e.g. 5s or 250ms.")
    target: str
    actions: list[Action] = Field(default_factory=list)


class State(_Model):
    description: str | None = None
    final: bool = False
    wait: Literal["forever"] | None = Field(None, description="Opt out of the no-stall rule (a warning).")
    enter: list[Action] = Field(default_factory=list)
    exit: list[Action] = Field(default_factory=list)
    transitions: list[Transition] = Field(default_factory=list)
    after: list[Timeout] = Field(default_factory=list)


# Session, jobs, guards ----------------------------------------------------------------------


class Tool(_Model):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


def _default_turn_detection() -> dict[str, Any]:
    # The flow owns turn-taking: the server detects speech but never answers on its own.
    return {"type": "server_vad", "create_response": False, "interrupt_response": True, "silence_duration_ms": 600}


class Session(_Model):
    instructions: str | None = None
    instructions_file: str | None = Field(None, description="A text file beside the flow.")
    voice: str = "marin"
    tools: list[Tool] = Field(default_factory=list)
    turn_detection: dict[str, Any] | None = Field(default_factory=_default_turn_detection)
    transcription: dict[str, Any] | None = Field(default_factory=lambda: {"model": "gpt-4o-mini-transcribe", "language": "en"})


class Job(_Model):
    timeout: Duration = 30.0
    options: dict[str, Any] = Field(default_factory=dict)


class Guard(_Model):
    """A named condition the flow declares from the built-in kinds."""

    min_answers: int | None = None
    max_answers: int | None = None


class Flow(_Model):
    name: str
    description: str | None = None
    session: Session = Field(default_factory=Session)
    jobs: dict[str, Job] = Field(default_factory=dict)
    guards: dict[str, Guard] = Field(default_factory=dict)
    initial: str
    states: dict[str, State]
    _path: str = PrivateAttr("<flow>")  # where the flow was read from

    @property
    def path(self) -> str:
        return self._path

    def tool_names(self) -> set[str]:
        return {t.name for t in self.session.tools}


# Loading ------------------------------------------------------------------------------------


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _data_loc(data: Any, loc: tuple) -> tuple:
    """Map a pydantic error location onto the document (dropping union tags and aliases)."""
    out: list[Any] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            out.append(part)
        elif isinstance(data, dict) and part == "all_" and "all" in data:
            data = data["all"]
            out.append("all")
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
            out.append(part)
    return tuple(out)


def _model_for(loc: tuple) -> type[BaseModel] | None:
    """The model whose keys are expected at `loc` (for "did you mean" on unknown keys)."""
    match loc:
        case ():
            return Flow
        case ("session",):
            return Session
        case ("session", "tools", int()):
            return Tool
        case ("jobs", _):
            return Job
        case ("guards", _):
            return Guard
        case ("states", _):
            return State
        case ("states", _, "transitions", int()):
            return Transition
        case ("states", _, "after", int()):
            return Timeout
        case (*_, "enter" | "exit" | "actions", int()):
            return _Action
        case (*_, "enter" | "exit" | "actions", int(), "respond"):
            return Respond
        case (*_, "enter" | "exit" | "actions", int(), "tool_result"):
            return ToolResult
    return None


def _pydantic_problems(exc: ValidationError, src: Document) -> None:
    for err in exc.errors():
        loc = _data_loc(src.data, err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = err["loc"][-1]
            model = _model_for(loc[:-1])
            choices = [f.alias or n for n, f in model.model_fields.items()] if model else []
            what = "action" if model is _Action else "key"
            src.at(loc, f"unknown {what} '{key}'{_suggest(key, choices)}", key=True)
        elif kind == "missing":
            src.at(loc, f"missing key '{err['loc'][-1]}'")
        else:
            message = err["msg"].removeprefix("Value error, ")
            src.at(loc, message)


def parse(text: str, path: str = "<flow>", *, read: Callable[[str], str] | None = None, jobs: Iterable[str] = ("assessment",)) -> tuple[Flow | None, list[Problem]]:
    """Parse and check a flow. Returns (flow or None, problems incl. warnings) — never raises.

    `read(name)` returns the text of a file beside the flow (for `instructions_file`); `jobs` are
    the job names this installation can run.
    """
    src = parse_yaml(text, path)
    if src.problems or src.data is None:
        return None, sorted(src.problems, key=lambda p: (p.line, p.col))
    if not isinstance(src.data, dict):
        src.at((), "a flow is a mapping with `name`, `initial` and `states`")
        return None, src.problems
    try:
        flow = Flow.model_validate(src.data)
        flow._path = path
    except ValidationError as exc:
        _pydantic_problems(exc, src)
        return None, sorted(src.problems, key=lambda p: (p.line, p.col))
    flow = _resolve_instructions(flow, src, read)
    _Checker(flow, src, set(jobs)).run()
    ok = not any(not p.warning for p in src.problems)
    return (flow if ok else None), sorted(src.problems, key=lambda p: (p.line, p.col))


def load(path: str | Path, *, jobs: Iterable[str] | None = None) -> Flow:
    """Read and check a flow file. Raises FlowError with every problem; Unreadable if unreadable."""
    path = Path(path)
    text = read_text(path)
    flow, problems = parse(text, str(path), read=lambda name: read_text(inside(path.parent, name)),
                           jobs=available_jobs() if jobs is None else jobs)
    if flow is None:
        raise FlowError([p for p in problems if not p.warning])
    return flow


def check(path: str | Path) -> list[Problem]:
    """Every problem of a flow file (errors and warnings). Raises Unreadable if unreadable."""
    path = Path(path)
    text = read_text(path)
    _, problems = parse(text, str(path), read=lambda name: read_text(inside(path.parent, name)),
                        jobs=available_jobs())
    return problems


def available_jobs() -> set[str]:
    """Job names installed as entry points in group `engine.jobs` (plus the built-in assessment)."""
    from importlib.metadata import entry_points

    return {"assessment"} | {ep.name for ep in entry_points(group="engine.jobs")}


def _resolve_instructions(flow: Flow, src: Document, read: Callable[[str], str] | None) -> Flow:
    name = flow.session.instructions_file
    if name is None:
        return flow
    if flow.session.instructions is not None:
        src.at(("session", "instructions_file"), "give `instructions` or `instructions_file`, not both")
        return flow
    try:
        text = read(name) if read else None
    except Unreadable as exc:
        src.at(("session", "instructions_file"), f"cannot use instructions file '{name}': {exc.message}")
        return flow
    except ValueError as exc:  # outside the flow's folder
        src.at(("session", "instructions_file"), f"instructions file {exc}")
        return flow
    if text is None:
        return flow
    session = flow.session.model_copy(update={"instructions": text})
    resolved = flow.model_copy(update={"session": session})
    resolved._path = flow.path
    return resolved


def _strings(value: Any, loc: tuple) -> Iterable[tuple[str, tuple]]:
    """Every string inside a nested value, with its location (templates may stand in any)."""
    if isinstance(value, str):
        yield value, loc
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, loc + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, loc + (i,))


def template_names(text: str) -> list[str]:
    """The `{name.path}` references in an instruction template (`{{` and `}}` are literal)."""
    return [m[1].strip() for m in _TEMPLATE.finditer(text.replace("{{", "").replace("}}", ""))]


class _Checker:
    """Semantic checks on a structurally valid flow; findings go to `src.problems`."""

    def __init__(self, flow: Flow, src: Document, jobs: set[str]):
        self.flow, self.src, self.jobs = flow, src, jobs

    def run(self) -> None:
        flow = self.flow
        for name in flow.jobs:
            if name not in self.jobs:
                self.src.at(("jobs", name), f"unknown job '{name}'{_suggest(name, self.jobs)}", key=True)
        if flow.initial not in flow.states:
            self.src.at(("initial",), f"unknown initial state '{flow.initial}'{_suggest(flow.initial, flow.states)}")
        if not any(s.final for s in flow.states.values()):
            self.src.at(("states",), "no final state: mark the state that ends the interview with `final: true`")
        self._check_session()
        for name, state in flow.states.items():
            self._check_state(name, state)
        self._check_reachable()

    def _check_session(self) -> None:
        td = self.flow.session.turn_detection or {}
        if td.get("create_response") is True:
            self.src.at(("session", "turn_detection", "create_response"),
                        "create_response: true lets the server answer on its own and collide with the flow's "
                        "responses", warning=True)

    def _check_state(self, name: str, state: State) -> None:
        here = ("states", name)
        if state.final and (state.transitions or state.after):
            self.src.at(here, f"final state '{name}' has transitions; a final state ends the session")
        if not state.final and not state.after:
            if state.wait == "forever":
                self.src.at(here, f"state '{name}' may wait forever (wait: forever)", key=True, warning=True)
            else:
                self.src.at(here, f"state '{name}' has no `after:` timeout, so it can stall "
                            f"(add one, or `wait: forever` to accept that)", key=True)
        for key in ("enter", "exit"):
            for i, action in enumerate(getattr(state, key)):
                self._check_action(name, action, here + (key, i))
        for i, tr in enumerate(state.transitions):
            loc = here + ("transitions", i)
            for j, event in enumerate(tr.events):
                self._check_event(event, loc + (("event",) if tr.event else ("all", j)))
            for j, guard in enumerate(tr.guard):
                self._check_guard(guard, loc + ("guard", j))
            if tr.target is not None:
                self._check_target(tr.target, loc + ("target",))
            for j, action in enumerate(tr.actions):
                self._check_action(name, action, loc + ("actions", j))
        for i, timeout in enumerate(state.after):
            loc = here + ("after", i)
            self._check_target(timeout.target, loc + ("target",))
            for j, action in enumerate(timeout.actions):
                self._check_action(name, action, loc + ("actions", j))

    def _known_events(self) -> set[str]:
        flow = self.flow
        events = set(SERVER_EVENTS - HIGH_RATE) | set(ENGINE_EVENTS)
        events |= {f"tool.{t}" for t in flow.tool_names()}
        events |= {f"job.{j}.{end}" for j in flow.jobs for end in ("done", "failed")}
        return events

    def _check_event(self, event: str, loc: tuple) -> None:
        known = self._known_events()
        if event in known:
            return
        if event in HIGH_RATE:
            self.src.at(loc, f"'{event}' streams many times a second and cannot drive a transition")
        elif event.startswith("tool."):
            tool = event.removeprefix("tool.")
            self.src.at(loc, f"unknown tool '{tool}'{_suggest(event, known)}; tools are declared under "
                        f"session.tools")
        elif event.startswith("job."):
            self.src.at(loc, f"unknown job event '{event}' (jobs: {', '.join(self.flow.jobs) or 'none'})"
                        f"{_suggest(event, known)}")
        else:
            self.src.at(loc, f"unknown event '{event}'{_suggest(event, known)}")

    def _check_guard(self, guard: str, loc: tuple) -> None:
        name = guard.removeprefix("not ").strip()
        known = set(BUILTIN_GUARDS) | set(self.flow.guards)
        if name not in known:
            self.src.at(loc, f"unknown guard '{name}'{_suggest(name, known)}")

    def _check_target(self, target: str, loc: tuple) -> None:
        if target not in self.flow.states:
            self.src.at(loc, f"unknown target state '{target}'{_suggest(target, self.flow.states)}")

    def _check_action(self, state: str, action: _Action, loc: tuple) -> None:
        loc = loc + (action.name,)
        if action.name in ("start", "cancel") and action.arg not in self.flow.jobs:
            self.src.at(loc, f"unknown job '{action.arg}'{_suggest(action.arg, self.flow.jobs)}; jobs are "
                        f"declared under `jobs:`")
        for text, where in self._templates(action):
            for name in template_names(text):
                self._check_template(name, loc + where)

    @staticmethod
    def _templates(action: _Action) -> Iterable[tuple[str, tuple]]:
        arg = action.arg
        if isinstance(arg, Respond):
            yield from ((getattr(arg, k), (k,)) for k in ("instructions", "input") if getattr(arg, k))
        elif isinstance(arg, ToolResult):
            yield from _strings(arg.output, ("output",))
        elif action.name == "log":
            yield arg, ()

    def _check_template(self, name: str, loc: tuple) -> None:
        if not _NAME.fullmatch(name):
            self.src.at(loc, f"template '{{{name}}}' is not a name (write {{assessment.summary}})")
            return
        root = name.split(".")[0]
        known = set(TEMPLATE_ROOTS) | set(self.flow.jobs)
        if root not in known:
            self.src.at(loc, f"unknown template name '{{{name}}}'{_suggest(root, known)}")

    def _check_reachable(self) -> None:
        flow = self.flow
        if flow.initial not in flow.states:
            return
        seen, todo = {flow.initial}, [flow.initial]
        while todo:
            state = flow.states[todo.pop()]
            for target in [t.target for t in state.transitions] + [t.target for t in state.after]:
                if target in flow.states and target not in seen:
                    seen.add(target)
                    todo.append(target)
        targets = [t.target for s in flow.states.values() for t in [*s.transitions, *s.after] if t.target]
        if any(t not in flow.states for t in targets):
            return  # the graph has holes already reported; reachability would only echo them
        for name in flow.states:
            if name not in seen:
                self.src.at(("states", name), f"state '{name}' is unreachable from '{flow.initial}'", key=True)
