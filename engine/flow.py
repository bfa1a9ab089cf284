"""YAML flow file -> validated `Flow`, or every problem as `path:line:col: message`.

Rules of this module:
1. Three stages, as sismic and python-statemachine do: `engine.source` composes the YAML safely
   (no code runs, bounded, with positions), the pydantic models below check its structure
   (extra=forbid, strict: they take what the JSON Schema says and nothing more), then
   `engine.checks` checks names, the graph and the no-stall rule.
2. Report everything found in one run, in file order, in the author's words (never a class name,
   never a traceback). A structural error removes only the broken part; the rest is still checked.
3. The models are the format: `engine schema` prints their JSON Schema, written in the forms an
   author may type (`30s`, `respond`, `guard: speaking`), with a description on every field.
"""

# No `from __future__ import annotations` here: pydantic would compile every annotation string at
# import (a third of this module's import time); the models' annotations are evaluated directly.
import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from . import cache as filecache
from .errors import FlowError, Problem
from .events import ALIASES, BETA_TO_GA, ENGINE_EVENTS, HIGH_RATE, SERVER_EVENTS, normalise_name
from .source import Document, Unreadable, inside, parse_yaml, read_text

__all__ = [
    "Flow",
    "State",
    "Transition",
    "Timeout",
    "Action",
    "Respond",
    "ToolResult",
    "Session",
    "Tool",
    "Job",
    "Guard",
    "Damage",
    "load",
    "parse",
    "check",
    "json_schema",
    "available_jobs",
    "parse_duration",
    "template_names",
    "suggest",
    "BUILTIN_GUARDS",
    "TEMPLATE_ROOTS",
    "MIN_DURATION",
    "MAX_DURATION",
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
MIN_DURATION, MAX_DURATION = 0.01, 86_400.0  # 10 ms .. 24 h: anything outside is a typo
_TEMPLATE = re.compile(r"\{([^{}]*)\}")
_NUMBER = r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_DURATION = re.compile(rf"^\s*({_NUMBER})\s*(ms|s|m|min|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}

Loc = tuple[Any, ...]  # where a value stands in the document: ("states", "ask", "after", 0, "delay")


def parse_duration(value: Any) -> float:
    """`5s`, `250ms`, `2m`, `1h`, or a number of seconds -> seconds, finite and 10 ms .. 24 h."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a duration: {_shown(value)} (write e.g. 5s, 250ms, 2m)")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (write e.g. 5s, 250ms, 2m)")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    else:
        seconds = float(value) if not isinstance(value, int) or abs(value) < 10**300 else math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite time, not {_shown(value)}")
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        raise ValueError(f"a duration is between 10ms and 24h, not {_shown(value)}")
    return seconds


# The schema cannot say "10ms .. 24h" of text; it refuses at least zero (`0s`), the likely mistake.
_DURATION_FORMS = Annotated[float, Field(ge=MIN_DURATION, le=MAX_DURATION)] | Annotated[
    str, Field(pattern=rf"^(?=[^1-9]*[1-9])\s*{_NUMBER}\s*(ms|s|m|min|h)?\s*$")
]
Duration = Annotated[float, BeforeValidator(parse_duration, json_schema_input_type=_DURATION_FORMS)]


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _event_schema() -> dict[str, Any]:
    """Every event name a flow may use: the fixed ones by name, the tool and job families by pattern."""
    spellings = SERVER_EVENTS | ENGINE_EVENTS | set(BETA_TO_GA) | set(ALIASES)
    known = sorted(n for n in spellings if normalise_name(n) not in HIGH_RATE)
    return {"description": "A Realtime event (GA or beta name) or an engine event.",
            "anyOf": [{"enum": known},
                      {"type": "string", "pattern": r"^tool\.[A-Za-z0-9_-]{1,64}$"},
                      {"type": "string", "pattern": r"^job\.[^.]+\.(done|failed)$"}]}


EventName = Annotated[str, WithJsonSchema(_event_schema())]


class _Model(BaseModel):
    # strict: `final: "yes"` or `threshold: "0.5"` are errors, as they are for the JSON Schema.
    # defer_build: a model's validator is built when first used (import time of `engine check`).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, defer_build=True)


# Actions ------------------------------------------------------------------------------------


class Respond(_Model):
    """Ask the model to speak. Goes through the response gate: queued while a response is active."""

    instructions: str | None = Field(
        default=None, description="Instructions for this response only; templates allowed.")
    input: str | None = Field(
        default=None, description="A user text message added to the conversation first; templates allowed.")
    tool_choice: str | None = Field(default=None, description="auto, none, required, or a tool name.")


class ToolResult(_Model):
    """Answer the model's last tool call (function_call_output)."""

    output: str | dict[str, Any] = Field(
        default_factory=lambda: {"ok": True}, description="Result of the last tool call; templates allowed.")


_BARE_ACTIONS: dict[str, Any] = {"respond": {}, "tool_result": {}, "truncate": True, "cancel_response": True,
                                 "save": "checkpoint"}
_ACTION_NAMES = ("respond", "tool_result", "start", "cancel", "cancel_response", "truncate", "save", "log", "end")
_EXAMPLE_ARG = {"start": "assessment", "cancel": "assessment", "log": "text", "end": "reason"}


def _action_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        if value in _BARE_ACTIONS:
            return {value: _BARE_ACTIONS[value]}
        if value in _ACTION_NAMES:
            raise ValueError(f"action '{value}' needs a value, e.g. `{value}: {_EXAMPLE_ARG[value]}`")
        raise ValueError(f"unknown action '{value}'{suggest(value, _ACTION_NAMES)}")
    if not isinstance(value, dict):
        raise ValueError(f"an action is a name (`- respond`) or a mapping with one key (`- respond: text`), "
                         f"not {_shown(value)}")
    if len(value) > 1:
        raise ValueError(f"an action has exactly one key, got {', '.join(map(str, value))}")
    if len(value) == 1:
        key, arg = next(iter(value.items()))
        if key == "respond" and isinstance(arg, str):
            return {"respond": {"instructions": arg}}
        if key == "tool_result" and isinstance(arg, (str, dict)) and not (isinstance(arg, dict) and "output" in arg):
            return {"tool_result": {"output": arg}}
        if arg is None and key in _BARE_ACTIONS:
            return {key: _BARE_ACTIONS[key]}
        if key in ("truncate", "cancel_response") and arg is not True:  # 1 == True: a Literal would take it
            raise ValueError(f"`{key}` takes no value: write `- {key}`")
    return value


def _one_of_these(schema: dict[str, Any]) -> None:
    schema.update(minProperties=1, maxProperties=1)
    for prop in schema["properties"].values():
        prop.pop("default", None)  # an action has no defaults: it is the one key written


class ActionForm(_Model):
    """An action: a bare name (`respond`, `tool_result`, `truncate`, `cancel_response`, `save`) or a
    mapping with exactly one key. The JSON Schema of what an author writes; `_Action` is what it means."""

    model_config = ConfigDict(json_schema_extra=_one_of_these)

    respond: str | Respond | None = Field(
        default=None, description="Ask the model to speak: the instructions as text, or a mapping of "
        "instructions, input, tool_choice; empty: the session's instructions.")
    tool_result: str | dict[str, Any] | None = Field(
        default=None, description="Answer the last tool call: the output as text or a mapping (or "
        "`{output: ...}`); templates allowed.")
    start: str = Field(default="", description="Start the named background job (declared under `jobs:`).")
    cancel: str = Field(default="", description="Cancel the named background job.")
    cancel_response: Literal[True] | None = Field(default=None, description="Cancel the response in progress.")
    truncate: Literal[True] | None = Field(
        default=None, description="Barge-in: stop playback, cancel the response, truncate what was not heard.")
    save: str | None = Field(default=None, description="Write the outputs now; the text is recorded as the reason.")
    log: str = Field(default="", description="A line for the log and the trace; templates allowed.")
    end: str = Field(
        default="", description="End the session now, with this reason (not completed unless in a final state).")


class _Action(_Model):
    """One action, after its shorthand is expanded: exactly one of these keys."""

    respond: Respond | None = None
    tool_result: ToolResult | None = None
    start: str | None = None
    cancel: str | None = None
    cancel_response: Literal[True] | None = None
    truncate: Literal[True] | None = None
    save: str | None = None
    log: str | None = None
    end: str | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Self:
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


_ACTION_FORMS = Literal["respond", "tool_result", "truncate", "cancel_response", "save"] | ActionForm
Action = Annotated[_Action, BeforeValidator(_action_shorthand, json_schema_input_type=_ACTION_FORMS)]


# States and transitions ---------------------------------------------------------------------


def _absent_not_null(schema: dict[str, Any]) -> None:
    """`None` here means "not written": the schema offers no `null`."""
    options = [o for o in schema.pop("anyOf") if o != {"type": "null"}]
    schema.update(options[0]) if "type" in options[0] and len(options) == 1 else schema.update(anyOf=options)
    schema.pop("default", None)


class Transition(_Model):
    """Fires on `event`, or on the last of the `all` events (a join), when every guard holds."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["event"]}, {"required": ["all"]}]})

    event: EventName | None = Field(
        default=None, json_schema_extra=_absent_not_null, description="A Realtime event (GA or beta name) or an "
        "engine event: playback.done, speech.started, input.committed, input.transcript, tool.<name>, "
        "job.<name>.done|failed, session.closed.")
    all_: list[EventName] | None = Field(
        default=None, alias="all", min_length=2, json_schema_extra=_absent_not_null,
        description="A join: fire once all of these events happened in this state, in any order.")
    guard: Annotated[list[str], BeforeValidator(_names, json_schema_input_type=str | list[str])] = Field(
        default_factory=list, description="Named conditions that must all hold: speaking, completed, failed, "
        "`not <guard>`, or a guard declared under `guards:`.")
    target: str | None = Field(
        default=None, description="Next state; absent = internal transition (no exit/enter).")
    actions: list[Action] = Field(
        default_factory=list, description="Actions run when the transition fires, after the state's `exit:`.")

    @model_validator(mode="after")
    def _one_trigger(self) -> Self:
        given = self.model_fields_set
        if ("event" in given and self.event is None) or ("all_" in given and self.all_ is None):
            raise ValueError("`event:` and `all:` name events; leave out the one you do not use")
        if (self.event is None) == (self.all_ is None):
            raise ValueError("a transition has either `event:` or `all:` (a join), not both or neither")
        return self

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(normalise_name(e) for e in ([self.event] if self.event is not None else self.all_ or []))


class Timeout(_Model):
    """Leave the state when it has lasted `delay` and nothing else moved it."""

    delay: Duration = Field(description="Time since the state was entered, e.g. 5s, 250ms, 2m (10ms .. 24h).")
    target: str = Field(description="The state to go to.")
    actions: list[Action] = Field(default_factory=list, description="Actions run when the timeout fires.")


class State(_Model):
    """A state: actions on entry and exit, transitions on events, timeouts."""

    description: str | None = Field(default=None, description="What happens in this state (shown in diagrams).")
    final: bool = Field(
        default=False, description="The interview ends here (completed); a final state has no transitions.")
    wait: Literal["forever"] | None = Field(
        default=None, description="Opt out of the no-stall rule: this state may wait with no `after:` timeout "
        "(a warning).")
    enter: list[Action] = Field(default_factory=list, description="Actions run on entering the state.")
    exit: list[Action] = Field(
        default_factory=list, description="Actions run on leaving it by a transition with a target or a timeout.")
    transitions: list[Transition] = Field(default_factory=list, description="Event transitions, tried in order.")
    after: list[Timeout] = Field(
        default_factory=list, description="Timeouts since entering the state; every state that waits needs one.")


# Session, jobs, guards ----------------------------------------------------------------------


class Tool(_Model):
    """A function the model may call; the call is the event `tool.<name>`, its arguments `{tool.<arg>}`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Function name: letters, digits, _ or -.")
    description: str = Field(default="", description="When the model should call it (the model reads this).")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments (`type: object`).")


class ServerVad(_Model):
    """Turn detection by voice activity: the turn ends after a silence."""

    type: Literal["server_vad"] = Field(description="Voice activity detection.")
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="Activation threshold, 0..1; higher needs louder speech.")
    prefix_padding_ms: int = Field(
        default=300, ge=0, le=10_000, description="Audio kept before detected speech, in ms.")
    silence_duration_ms: int = Field(
        default=500, ge=0, le=10_000,
        description="Silence that ends a turn, in ms; shorter replies sooner but may cut in on pauses.")
    idle_timeout_ms: int | None = Field(
        default=None, ge=1, le=86_400_000, description="The server answers on its own after this much silence "
        "(ms); leave it unset when the flow owns turn-taking.")
    create_response: bool = Field(
        default=False, description="Let the server answer each turn on its own; false (the default here) leaves "
        "that to the flow.")
    interrupt_response: bool = Field(
        default=True, description="The server cancels its response when the candidate talks over it.")


class SemanticVad(_Model):
    """Turn detection by a model that judges whether the candidate has finished."""

    type: Literal["semantic_vad"] = Field(description="Semantic turn detection.")
    eagerness: Literal["low", "medium", "high", "auto"] = Field(
        default="auto", description="How soon a turn ends: low waits longest (up to 8s), high shortest (2s); "
        "auto is medium.")
    create_response: bool = Field(
        default=False, description="Let the server answer each turn on its own; false (the default here) leaves "
        "that to the flow.")
    interrupt_response: bool = Field(
        default=True, description="The server cancels its response when the candidate talks over it.")


class Transcription(_Model):
    """Transcription of the candidate's audio (the `input.transcript` event)."""

    model: str = Field(
        default="gpt-4o-mini-transcribe", description="Transcription model, e.g. gpt-4o-mini-transcribe.")
    language: str | None = Field(
        default=None, description="Language of the candidate's speech (ISO-639-1, e.g. en).")
    prompt: str | None = Field(
        default=None, description="Text that guides the transcription (expected words, style).")


@cache
def _adapter(kind: str) -> TypeAdapter[Any]:
    if kind == "turn_detection":
        return TypeAdapter(Annotated[ServerVad | SemanticVad, Field(discriminator="type")])
    return TypeAdapter(Transcription)


def _plain(kind: str) -> Callable[[Any], Any]:
    """Validate a session block by its model, keep it a plain dict of what the author wrote."""

    def convert(value: Any) -> Any:
        if value is None:
            return None
        out: dict[str, Any] = _adapter(kind).validate_python(value).model_dump(exclude_unset=True)
        if kind == "turn_detection":
            out.setdefault("create_response", False)  # the API's default (true) would collide with the flow
        return out

    return convert


def _default_turn_detection() -> dict[str, Any]:
    # The flow owns turn-taking: the server detects speech but never answers on its own.
    return {"type": "server_vad", "create_response": False, "interrupt_response": True, "silence_duration_ms": 600}


class Session(_Model):
    """The Realtime session: instructions, voice, tools, how turns are detected and transcribed."""

    instructions: str | None = Field(default=None, description="The model's instructions for the whole session.")
    instructions_file: str | None = Field(
        default=None, description="A UTF-8 text file inside the flow's folder holding the instructions (instead "
        "of `instructions`).")
    voice: str = Field(
        default="marin", description="alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin or cedar.")
    tools: list[Tool] = Field(default_factory=list, description="Functions the model may call.")
    turn_end: Literal["committed", "speech_stopped"] = Field(
        default="committed", description="What ends the candidate's turn (`input.committed`): the server "
        "committed their audio (committed), or it heard them stop (speech_stopped: sooner, may cut in on pauses).")
    turn_detection: Annotated[
        dict[str, Any] | None,
        BeforeValidator(_plain("turn_detection"), json_schema_input_type=ServerVad | SemanticVad | None),
    ] = Field(
        default_factory=_default_turn_detection, description="server_vad or semantic_vad, sent to the Realtime "
        "API as written (create_response defaults to false); null turns turn detection off.")
    transcription: Annotated[
        dict[str, Any] | None, BeforeValidator(_plain("transcription"), json_schema_input_type=Transcription | None)
    ] = Field(
        default_factory=lambda: {"model": "gpt-4o-mini-transcribe", "language": "en"},
        description="How the candidate's audio is transcribed; null: no `input.transcript` ever arrives.")


class Job(_Model):
    """A background job the flow starts with `start: <name>`."""

    timeout: Duration = Field(default=30.0, description="The job fails (job.<name>.failed) if it takes longer.")
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the job as they are.")


class Guard(_Model):
    """A named condition on the number of answers so far."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["min_answers"]},
                                                           {"required": ["max_answers"]}]})

    min_answers: int | None = Field(
        default=None, ge=0, description="Holds once the candidate has given this many answers.")
    max_answers: int | None = Field(
        default=None, ge=0, description="Holds while the candidate has given at most this many.")

    @model_validator(mode="after")
    def _condition(self) -> Self:
        if self.min_answers is None and self.max_answers is None:
            raise ValueError("a guard needs a condition: min_answers, max_answers or both")
        if self.min_answers is not None and self.max_answers is not None and self.min_answers > self.max_answers:
            raise ValueError(f"min_answers ({self.min_answers}) is more than max_answers ({self.max_answers}), so "
                             f"this guard never holds")
        return self


class Flow(_Model):
    """An interview as a state machine (engine flow format)."""

    name: str = Field(description="Name of the interview, shown in reports.")
    description: str | None = Field(default=None, description="What this interview is for.")
    max_duration: Duration = Field(
        default=3600.0, description="Longest a session may last (e.g. 45min); then it is saved and ended as not "
        "completed. Default 60min, the Realtime API's own limit.")
    session: Session = Field(default_factory=lambda: Session(), description="The Realtime session's settings.")
    jobs: dict[str, Job] = Field(default_factory=dict, description="Background jobs by name (`start: <name>`).")
    guards: dict[str, Guard] = Field(default_factory=dict, description="Named conditions for `guard:`.")
    initial: str = Field(description="The state the interview starts in.")
    states: dict[str, State] = Field(description="The states by name.")
    _path: str = PrivateAttr("<flow>")  # where the flow was read from

    @property
    def path(self) -> str:
        return self._path

    def tool_names(self) -> set[str]:
        return {t.name for t in self.session.tools if t is not None}


# Public API ---------------------------------------------------------------------------------


def parse(text: str, path: str = "<flow>", *, read: Callable[[str], str] | None = None,
          jobs: Iterable[str] = ("assessment",)) -> tuple[Flow | None, list[Problem]]:
    """Parse and check a flow. Returns (flow or None, problems incl. warnings) — never raises.

    `read(name)` returns the text of a file beside the flow (for `instructions_file`); `jobs` are
    the job names this installation can run. The flow is None when any problem is an error.
    """
    from . import checks  # the checks import the models above

    src = parse_yaml(text, path)
    for loc, position, message in src.yaml11:  # a flow means in an editor what it means here
        src.add(position, message)
        src.dropped.add(loc)
    if src.data is None:
        return None, _ordered(src.problems)
    if not isinstance(src.data, dict):
        src.at((), "a flow is a mapping with `name`, `initial` and `states`")
        return None, _ordered(src.problems)
    flow, damage = _structure(src)
    if flow is not None:
        flow = _resolve_instructions(flow, src, read, damage)
        checks.run(flow, src, jobs if isinstance(jobs, _InstalledJobs) else set(jobs), damage)
    ok = src.ok
    if flow is not None:
        flow._path = path
    return (flow if ok else None), _ordered(src.problems)


def load(path: str | Path, *, jobs: Iterable[str] | None = None) -> Flow:
    """Read and check a flow file. Raises FlowError with every problem; Unreadable if unreadable.

    A flow checked against the installed jobs is kept (engine.cache): the next load of the same
    files only reads them."""
    path = Path(path)
    read = lambda name: read_text(inside(path.parent, name))  # noqa: E731
    if jobs is not None:  # a caller's own job names: not what an entry was checked against
        return _valid(parse(read_text(path), str(path), read=read, jobs=jobs))
    flow = filecache.load("flow", path, lambda: _valid(parse(read_text(path), str(path), read=read,
                                                             jobs=_InstalledJobs())))
    flow._path = str(path)  # as this caller names it
    return flow


def _valid(parsed: tuple[Flow | None, list[Problem]]) -> Flow:
    flow, problems = parsed
    if flow is None:
        raise FlowError([p for p in problems if not p.warning])
    return flow


def check(path: str | Path) -> list[Problem]:
    """Every problem of a flow file (errors and warnings). Raises Unreadable if unreadable."""
    path = Path(path)
    return parse(read_text(path), str(path), read=lambda name: read_text(inside(path.parent, name)),
                 jobs=_InstalledJobs())[1]


def available_jobs() -> set[str]:
    """Job names installed as entry points in group `engine.jobs` (plus the built-in assessment)."""
    from importlib.metadata import entry_points

    return {"assessment"} | {ep.name for ep in entry_points(group="engine.jobs")}


def json_schema() -> dict[str, Any]:
    """JSON Schema of the flow format, for editors (yaml-language-server modeline)."""
    events = _event_schema()

    def shared(node: Any) -> Any:  # the event names once, under $defs, not at every use
        if node == events:
            return {"$ref": "#/$defs/Event"}
        if isinstance(node, dict):
            return {k: shared(v) for k, v in node.items()}
        return [shared(v) for v in node] if isinstance(node, list) else node

    out = shared(Flow.model_json_schema(by_alias=True))
    out["$defs"]["Event"] = events
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **out, "title": "engine flow"}


def template_names(text: str) -> list[str]:
    """The `{name.path}` references in an instruction template (`{{` and `}}` are literal)."""
    return [m[1].strip() for m in _TEMPLATE.finditer(text.replace("{{", "").replace("}}", ""))]


def suggest(word: Any, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when one choice is close, naming look-alike characters; else ``."""
    word = str(word)
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        return ""
    odd = sorted(c for c in set(close[0]) ^ set(word) if ord(c) > 127)  # look-alikes: Cyrillic 'а' for 'a'
    note = ""
    if odd:
        import unicodedata

        note = "; note " + ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in odd[:3])
    return f" (did you mean '{close[0]}'?{note})"


@dataclass(frozen=True)
class Damage:
    """Where stage 2 removed broken parts (or stage 1 dropped a value), so that the checks neither
    trust nor echo them: a damaged state may still reach a final state, its targets still count."""

    locs: frozenset[Loc] = frozenset()
    prefixes: frozenset[Loc] = frozenset()

    @classmethod
    def of(cls, locs: Iterable[Loc]) -> Self:
        locs = frozenset(locs)
        return cls(locs, frozenset(loc[:i] for loc in locs for i in range(len(loc) + 1)))

    def within(self, loc: Loc) -> bool:
        """Something at `loc` or under it was removed."""
        return loc in self.prefixes

    def removed(self, loc: Loc) -> bool:
        """The value at `loc` itself, or one of its parents, was removed."""
        return any(loc[:i] in self.locs for i in range(len(loc) + 1))


# Private ------------------------------------------------------------------------------------


class _InstalledJobs:
    """The installed job names, looked up (slowly: entry points) only for a job beyond the built-in."""

    def __contains__(self, name: object) -> bool:
        return name == "assessment" or name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names()))

    @staticmethod
    @cache
    def _names() -> frozenset[str]:
        return frozenset(available_jobs())


def _structure(src: Document) -> tuple[Flow | None, Damage]:
    """The flow's models, with broken parts removed (and recorded in the Damage)."""
    dropped = Damage.of(src.dropped)
    try:
        return Flow.model_validate(src.data), dropped
    except ValidationError as exc:
        from . import structure

        return structure.salvage(src, exc.errors(), dropped)


def _resolve_instructions(flow: Flow, src: Document, read: Callable[[str], str] | None, damage: Damage) -> Flow:
    name = flow.session.instructions_file
    where = ("session", "instructions_file")
    if name is None or damage.within(where):
        return flow
    if flow.session.instructions is not None:
        src.at(where, "give `instructions` or `instructions_file`, not both")
        return flow
    try:
        text = read(name) if read else None
    except Unreadable as exc:
        src.at(where, f"cannot use instructions file '{name}': {exc.message}")
        return flow
    except ValueError as exc:  # outside the flow's folder, or not a file name
        src.at(where, f"instructions file {exc}")
        return flow
    if text is None:
        return flow
    session = flow.session.model_copy(update={"instructions": text})
    return flow.model_copy(update={"session": session})


def _ordered(problems: list[Problem]) -> list[Problem]:
    """In file order, each problem once."""
    return sorted(dict.fromkeys(problems), key=lambda p: (p.line, p.col))


def _shown(value: Any) -> str:
    """A value as the author wrote it, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan" if value != value else repr(value))
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else f"a number of {len(str(abs(value)))} digits"
        return text
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    kinds = {"list": "a list", "dict": "a mapping", "bytes": "binary data (!!binary)", "date": "a date",
             "datetime": "a date and time"}
    return kinds.get(type(value).__name__, f"a {type(value).__name__}")
