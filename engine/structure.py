"""Stage 2 of `engine.flow` when the models find errors: each error in the author's words, and the
flow rebuilt without its broken parts so that stage 3 (`engine.checks`) still checks the rest.

Rules of this module:
1. A message names the key and what it should hold ("`final` is true or false, not 'yes'"),
   never a pydantic class or type name.
2. A broken part is removed at the smallest unit that stands alone: a key with a default, else the
   list item or the named entry (a state, a job, a guard) that holds it. A removed list item leaves
   a hole (None), so the others keep their index and their position in the file.
3. Only reached when a flow has structural errors: a valid flow never imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from .flow import (
    _ACTION_NAMES,
    Action,
    Damage,
    Flow,
    Guard,
    Job,
    Loc,
    Respond,
    SemanticVad,
    ServerVad,
    Session,
    State,
    Timeout,
    Tool,
    ToolResult,
    Transcription,
    Transition,
    _Action,
    _shown,
    suggest,
)
from .source import Document

__all__ = ["salvage"]

# What a value of each model looks like, for "expected a mapping, got text".
_SHAPES: dict[type[BaseModel], str] = {
    State: "a state is a mapping of enter/exit/transitions/after (and description, final, wait)",
    Transition: "a transition is a mapping with `event:` or `all:`, and guard, target, actions",
    Timeout: "a timeout is a mapping like `{delay: 5s, target: next}`",
    Session: "`session` is a mapping of instructions, voice, tools, turn_detection, transcription",
    Tool: "a tool is a mapping with `name`, `description` and `parameters`",
    Job: "a job is a mapping like `{timeout: 20s}`",
    Guard: "a guard is a mapping like `{min_answers: 6}`",
    Respond: "`respond` takes the instructions as text, or a mapping of instructions, input, tool_choice",
    ToolResult: "`tool_result` takes the output as text or a mapping",
    ServerVad: "`turn_detection` is a mapping with `type: server_vad` or `type: semantic_vad`, or null (off)",
    SemanticVad: "`turn_detection` is a mapping with `type: server_vad` or `type: semantic_vad`, or null (off)",
    Transcription: "`transcription` is a mapping of model, language, prompt, or null (off)",
}
_NOUNS = {
    "string_type": "text",
    "bool_type": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list (one `- ` item each)",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
}
# Better words for what a key holds, where its name alone says little.
_FIELD_NOUNS = {
    "target": "the name of a state",
    "initial": "the name of a state",
    "event": "an event name",
    "guard": "a guard name or a list of them",
    "states": "a mapping of state names to states",
    "jobs": "a mapping of job names to jobs",
    "guards": "a mapping of guard names to guards",
    "parameters": "a JSON Schema (a mapping)",
    "options": "a mapping",
}
_ITEM_NOUNS = {"all": "an event name", "guard": "a guard name"}
# Lists of models or actions, rebuilt item by item.
_LISTS: dict[type[BaseModel], dict[str, type[BaseModel] | None]] = {
    State: {"enter": None, "exit": None, "transitions": Transition, "after": Timeout},
    Transition: {"actions": None},
    Timeout: {"actions": None},
    Session: {"tools": Tool},
}


def salvage(src: Document, errors: list[ErrorDetails], dropped: Damage) -> tuple[Flow | None, Damage]:
    """Report `errors` in `src`; the flow without its broken parts, and where they were."""
    data = src.data
    broken = set(dropped.locs)
    for loc, message, key in _messages(data, errors, dropped):
        src.at(loc, message, key=key)
    for err in errors:
        loc = _data_loc(data, err["loc"])
        broken.add(loc + (err["loc"][-1],) if err["type"] == "missing" else loc)
    damage = Damage.of(broken)
    return _rebuild_flow(data, damage), damage


# Messages.


def _messages(data: Any, errors: list[ErrorDetails], dropped: Damage) -> Iterator[tuple[Loc, str, bool]]:
    groups: dict[Loc, list[ErrorDetails]] = {}
    for err in errors:
        loc = _data_loc(data, err["loc"])
        if dropped.within(loc) or dropped.removed(loc):
            continue  # stage 1 already reported why this value is missing or odd
        groups.setdefault(loc, []).append(err)
    for loc, errs in groups.items():
        kinds = [e for e in errs if e["type"] in _NOUNS]
        if kinds:  # one value, one message, even when a union tried several types
            yield loc, _type_message(data, loc, kinds), False
        for err in errs:
            if err["type"] not in _NOUNS:
                yield from _message(data, loc, err)


def _type_message(data: Any, loc: Loc, errs: list[ErrorDetails]) -> str:
    value = _value_at(data, loc)
    model = _model_for(data, loc)
    if model in _SHAPES and any(e["type"] != "list_type" for e in errs):
        return f"{_SHAPES[model]}, not {_shown(value)}"
    field = _field(loc)
    if loc and isinstance(loc[-1], int) and field in _ITEM_NOUNS:
        what = _ITEM_NOUNS[field]
    elif field in _FIELD_NOUNS:
        what = _FIELD_NOUNS[field]
    else:
        what = " or ".join(dict.fromkeys(_NOUNS[e["type"]] for e in errs))
    hint = f" (quote it: '{value}')" if isinstance(value, (int, float)) and what.endswith(("text", "state")) else ""
    return f"`{field}` is {what}, not {_shown(value)}{hint}"


def _message(data: Any, loc: Loc, err: ErrorDetails) -> Iterator[tuple[Loc, str, bool]]:
    kind, field, value = err["type"], _field(loc), _value_at(data, loc)
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        yield loc, _unknown_key(data, loc), True
    elif kind == "missing":
        yield loc, f"missing key '{err['loc'][-1]}'", False
    elif kind in ("value_error", "assertion_error"):
        yield loc, str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, "), False
    elif kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        if expected == "True":
            yield loc, f"`{field}` takes no value: write `- {field}`", False
        else:
            choices = re.findall(r"'([^']*)'", expected)
            yield loc, f"`{field}` is {expected}, not {_shown(value)}{suggest(value, choices)}", False
    elif kind == "union_tag_invalid":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        tag = ctx.get("tag")
        yield loc + ("type",), f"`type` is {' or '.join(choices)}, not {_shown(tag)}{suggest(tag, choices)}", False
    elif kind == "union_tag_not_found":
        yield loc, f"`{field}` needs `type: server_vad` or `type: semantic_vad` (or `{field}: null` for none)", False
    elif kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        yield loc, f"`{field}` is {_BOUNDS[kind]} {bound}, not {_shown(value)}", False
    elif kind == "too_short" and field == "all":
        yield loc, "`all:` joins two or more events; use `event:` for one", False
    elif kind == "string_pattern_mismatch" and field == "name":
        yield loc, (f"tool name {_shown(value)} may hold only letters, digits, _ and - (at most 64): "
                    f"it becomes the event tool.<name>"), False
    else:
        yield loc, f"`{field}`: {_no_class_names(str(err['msg']))}", False


_BOUNDS = {"greater_than_equal": "at least", "less_than_equal": "at most", "greater_than": "more than",
           "less_than": "less than"}


def _unknown_key(data: Any, loc: Loc) -> str:
    key = loc[-1]
    model = _model_for(data, loc[:-1])
    if model is _Action:
        return f"unknown action '{key}'{suggest(key, _ACTION_NAMES)}"
    choices = [f.alias or n for n, f in model.model_fields.items()] if model else []
    if model in (ServerVad, SemanticVad):
        kinds = {ServerVad: "server_vad", SemanticVad: "semantic_vad"}
        other = SemanticVad if model is ServerVad else ServerVad
        if key in other.model_fields:
            return f"'{key}' is a setting of {kinds[other]} turn detection, not of {kinds[model]}"
    return f"unknown key '{key}'{suggest(key, choices)}"


def _no_class_names(message: str) -> str:
    return re.sub(r"(?: or)? (?:an )?instance of \w+", "", message)


# Locations.


def _data_loc(data: Any, loc: tuple[int | str, ...]) -> Loc:
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


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def _field(loc: Loc) -> str:
    return next((part for part in reversed(loc) if isinstance(part, str)), "value")


def _model_for(data: Any, loc: Loc) -> type[BaseModel] | None:
    """The model whose keys are expected at `loc`."""
    match loc:
        case ():
            return Flow
        case ("session",):
            return Session
        case ("session", "tools", int()):
            return Tool
        case ("session", "turn_detection"):
            kind = _value_at(data, loc).get("type") if isinstance(_value_at(data, loc), dict) else None
            return SemanticVad if kind == "semantic_vad" else ServerVad
        case ("session", "transcription"):
            return Transcription
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


# Rebuilding what is left.


def _rebuild_flow(data: dict[str, Any], damage: Damage) -> Flow | None:
    parts = ("session", "jobs", "guards", "states")
    top = {k: v for k, v in data.items() if k not in parts and not damage.within((k,))}
    # Placeholders for a missing or broken name/initial; the checks see them in the damage.
    top = {"name": "", "initial": "", **top, "states": {}}
    try:
        flow = Flow.model_validate(top)
    except ValidationError:
        flow = Flow.model_validate({"name": "", "initial": "", "states": {}})
    session = _rebuild(Session, data.get("session", {}), ("session",), damage) or Session()

    def entries(key: str, model: type[BaseModel], empty: BaseModel) -> dict[str, Any]:
        raw = data.get(key)
        if not isinstance(raw, dict):
            return {}
        return {name: _rebuild(model, value, (key, name), damage) or empty for name, value in raw.items()}

    return flow.model_copy(update={
        "session": session,
        "jobs": entries("jobs", Job, Job()),
        "guards": entries("guards", Guard, Guard.model_construct()),
        "states": entries("states", State, State()),
    })


def _rebuild(model: type[BaseModel], raw: Any, loc: Loc, damage: Damage) -> Any:
    """`raw` validated as `model` without its broken parts, or None if nothing usable is left."""
    if not damage.within(loc):
        try:
            return model.model_validate(raw)
        except ValidationError:
            return None
    if loc in damage.locs or not isinstance(raw, dict):
        return None
    lists = _LISTS.get(model, {})
    fields = {k: v for k, v in raw.items()
              if not (k in lists and isinstance(v, list)) and not damage.within(loc + (k,))}
    try:
        obj = model.model_validate(fields)
    except ValidationError:
        return None
    update = {key: [_item(item_model, item, loc + (key, i), damage) for i, item in enumerate(raw[key])]
              for key, item_model in lists.items() if isinstance(raw.get(key), list)}
    return obj.model_copy(update=update)


def _item(model: type[BaseModel] | None, raw: Any, loc: Loc, damage: Damage) -> Any:
    if model is not None:
        return _rebuild(model, raw, loc, damage)
    if damage.within(loc):
        return None
    try:
        return _actions().validate_python(raw)
    except ValidationError:
        return None


@cache
def _actions() -> TypeAdapter[Any]:
    return TypeAdapter(Action)
