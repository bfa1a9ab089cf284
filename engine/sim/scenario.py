"""Personas and scenarios: the simulated candidate, and what the simulated model is scripted to do.

One format (docs/personas.md). A *persona* file gives a candidate and the interviewer defaults
(voice, questions); a *scenario* is the same document that also scripts the model (tool calls,
refusals, failed responses) and the candidate's behaviour turn by turn (silence, hesitation,
barge-in, speaking over the interviewer, leaving). Every field has a default, so the smallest valid
document is `name: Someone` (or nothing at all: `Persona()` is the default persona), and
`extends: NAME` starts from another persona.

Rules of this module:
1. Files are read only through `engine.source` (bounded, safe YAML with positions).
2. Problems are `path:line:col: message` (`check_persona`); `load_persona` raises one line.
3. Plain data: the models hold no behaviour beyond validating themselves.
"""

from __future__ import annotations

import copy
import difflib
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from .. import cache as filecache
from ..errors import Problem
from ..source import Document, Unreadable, parse_yaml, read_text

__all__ = [
    "Persona",
    "Scenario",
    "Candidate",
    "Interviewer",
    "Answer",
    "Pause",
    "SpeaksOver",
    "ToolCall",
    "ScriptedResponse",
    "PersonaError",
    "PERSONA_DIR",
    "load_persona",
    "check_persona",
    "persona_schema",
    "persona_from_data",
    "bundled_personas",
]

# The bundled personas: engine/flows/personas (in the repo a symlink to flows/personas, in a wheel the files).
PERSONA_DIR = (Path(__file__).parent.parent / "flows" / "personas").resolve()
MAX_EXTENDS = 8  # a chain of `extends:` longer than this is a mistake (or a cycle)


def _strict() -> ConfigDict:
    # strict: the editor schema accepts exactly what the loader accepts ("1.5" is not a number).
    # defer_build: the validators are built on first use, not at import; `engine run` takes its
    # persona from engine.cache and never builds them (~30 ms before its first response.create).
    return ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, defer_build=True)


class _Model(BaseModel):
    model_config = _strict()


# ---------------------------------------------------------------------------------------------------
# Value types


def _delay_kind(value: Any) -> str:
    if isinstance(value, str):
        return "never"
    return "range" if isinstance(value, list) else "value"


Seconds = Annotated[float, Field(ge=0, le=3600)]
_SecondsRange = Annotated[list[Seconds], Field(min_length=2, max_length=2)]
Range = Annotated[
    Annotated[Seconds, Tag("value")] | Annotated[_SecondsRange, Tag("range")],
    Discriminator(_delay_kind),
]
"""Seconds: a number, or ``[low, high]`` drawn uniformly (seeded) each time it is used."""

Delay = Annotated[
    Annotated[Seconds, Tag("value")]
    | Annotated[_SecondsRange, Tag("range")]
    | Annotated[Literal["never"], Tag("never")],
    Discriminator(_delay_kind),
]
"""A Range, or ``never``."""


def _ordered(name: str, value: Any) -> None:
    if isinstance(value, list) and value[0] > value[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {value}")


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------------
# The candidate


class Pause(_Model):
    """A hesitation inside an answer: the candidate stops talking for a while, then goes on."""

    after_words: int = Field(ge=1, le=10_000, description="The pause comes after this many words of the answer.")
    seconds: float = Field(gt=0, le=60, description="How long the candidate is silent (simulated seconds).")


class Answer(_Model):
    """One turn of the candidate, in full form. Exactly one of `text`, `silence`, `leave`."""

    text: str | None = Field(default=None, min_length=1, description="What the candidate says.")
    silence: bool = Field(
        default=False, description="The candidate says nothing to this question (the flow's timeout decides)."
    )
    leave: Literal["silent", "hang_up"] | None = Field(
        default=None,
        description="The candidate leaves instead of answering: `silent` never speaks again; `hang_up` ends the "
        "call (the server closes the connection with code 1000).",
    )
    reaction_s: Range | None = Field(
        default=None,
        description="Seconds between the end of the question's audio and the first word (default: the candidate's).",
    )
    barge_in_s: float | None = Field(
        default=None, ge=0, le=600,
        description="Start speaking this many seconds after the question's audio begins, over it (a barge-in).",
    )  # fmt: skip
    words_per_minute: int | None = Field(default=None, ge=30, le=400, description="Speaking rate of this answer only.")
    pauses: list[Pause] = Field(default_factory=list, description="Hesitations inside the answer, in order.")
    transcript: str | None = Field(
        default=None,
        min_length=1,
        description="What input transcription reports for this turn (default: `text`); `never`: no transcription "
        "event at all; `failed`: a transcription `failed` event.",
    )
    transcription_delay_s: Delay | None = Field(
        default=None, description="Seconds from the commit to the transcript, or `never` (default: the candidate's)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Answer:
        kinds = [name for name, on in (("text", self.text is not None), ("silence", self.silence),
                                       ("leave", self.leave is not None)) if on]  # fmt: skip
        if len(kinds) != 1:
            raise ValueError(f"an answer has exactly one of text, silence, leave; got {', '.join(kinds) or 'none'}")
        if self.text is None:
            extras = [n for n in ("reaction_s", "barge_in_s", "words_per_minute", "transcript", "transcription_delay_s")
                      if getattr(self, n) is not None] + (["pauses"] if self.pauses else [])  # fmt: skip
            if extras and not (self.leave is not None and extras == ["reaction_s"]):
                raise ValueError(f"{', '.join(extras)} only apply to an answer with text")
            return self
        _ordered("reaction_s", self.reaction_s)
        _ordered("transcription_delay_s", self.transcription_delay_s)
        words = _words(self.text)
        for pause in self.pauses:
            if pause.after_words >= words:
                raise ValueError(f"a pause after word {pause.after_words} of an answer of {words} words")
        if [p.after_words for p in self.pauses] != sorted({p.after_words for p in self.pauses}):
            raise ValueError("pauses must be in order of after_words, each at a different word")
        if self.pauses and self.transcript not in (None, "never", "failed"):
            raise ValueError("a custom transcript cannot be combined with pauses (each part is transcribed apart)")
        return self


def _answer_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "turn"


AnswerEntry = Annotated[
    Annotated[Annotated[str, Field(min_length=1)], Tag("text")] | Annotated[Answer, Tag("turn")],
    Discriminator(_answer_kind),
]


class SpeaksOver(_Model):
    """The candidate talks over one of the interviewer's lines (not a question it asked): e.g. the goodbye."""

    during: str = Field(
        min_length=1, description="Words of the interviewer's line that set this off (case-insensitive)."
    )
    after_s: float = Field(default=0.5, ge=0, le=600, description="Seconds after that line's audio begins.")
    text: str = Field(min_length=1, description="What the candidate says over it.")


_DEFAULT_ANSWERS = [
    "Sure. My name is Alex and I'm twenty-eight years old. I live in Lyon with my girlfriend and I work for a small "
    "company that sells bicycles. I'm learning English because I want to travel more, and also I need it for my job.",
    "Well, in my free time I like cooking, especially Italian food, and I go running two or three times a week. At "
    "the weekend I often meet my friends and we play board games or watch a football match together.",
    "Last summer I went to Lisbon for one week. I really liked it because the city is very colourful and the people "
    "were so friendly. We ate a lot of fish and we walked up and down the hills every day, so I was quite tired in "
    "the evening.",
    "I hope to get a better position in my company, maybe as a team manager. I would also like to move to a bigger "
    "flat. And if it's possible, I want to spend a few months in Canada to improve my English.",
    "Hmm, that's a good question. I think I would make more cycle paths, because there is too much traffic in the "
    "centre and it's dangerous for bikes. It would be better for the air, and people would be more healthy.",
]


class Candidate(_Model):
    """The scripted candidate: how they speak, and what they say turn by turn."""

    voice: str = Field(
        default="en-us", description="espeak-ng voice of the candidate, for tools that synthesise their side."
    )
    words_per_minute: int = Field(
        default=120, ge=30, le=400, description="Speaking rate; an answer's length follows from it."
    )
    reaction_s: Range = Field(
        default_factory=lambda: [0.6, 1.2],
        description="Seconds between the end of a question's audio and the candidate's first word.",
    )
    transcription_delay_s: Delay = Field(
        default_factory=lambda: [0.3, 1.5],
        description="Seconds from the commit of a turn to its input transcript, or `never` (no transcripts). Takes "
        "effect only when the session asks for input transcription.",
    )
    answers: list[AnswerEntry] = Field(
        default_factory=lambda: list[str | Answer](_DEFAULT_ANSWERS),
        max_length=1000,
        description="The candidate's turns, in order: one per question the interviewer asks. A string is an "
        "answer; a mapping is a turn with options (see Answer).",
    )
    when_answers_run_out: Literal["repeat_last", "silence", "hang_up"] = Field(
        default="repeat_last", description="After the last answer: say the last one again, stay silent, or hang up."
    )
    speaks_over: list[SpeaksOver] = Field(
        default_factory=list, description="Lines of the interviewer the candidate talks over; each happens once."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Candidate:
        _ordered("reaction_s", self.reaction_s)
        _ordered("transcription_delay_s", self.transcription_delay_s)
        return self


# ---------------------------------------------------------------------------------------------------
# The interviewer (the simulated model)


_DEFAULT_QUESTIONS = [
    "Could you tell me a little about yourself?",
    "What do you usually do in your free time?",
    "Can you describe a place you have visited that you really liked?",
    "What are your plans for the next few years?",
    "If you could change one thing about your town, what would it be, and why?",
]
CLOSING = "Thank you, that's everything I wanted to ask."
ACKNOWLEDGEMENT = "All right, I've noted that."


class ToolCall(_Model):
    """When the model calls one of the flow's tools on its own (tool_choice `auto`)."""

    tool: str | None = Field(
        default=None, min_length=1, description="The tool's name; omitted: the first tool the session declares."
    )
    after_answers: int | None = Field(
        default=None, ge=0, le=10_000, description="Call once the candidate has given at least this many answers."
    )
    cue: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Call after an answer that contains one of these words (case-insensitive).",
    )
    times: int = Field(default=1, ge=1, le=100, description="How many calls in all (2 or more tests duplicate calls).")
    again_after: Literal["answer", "response"] = Field(
        default="answer",
        description="When a call may come again: after the candidate's next answer, or in the very next response.",
    )
    arguments: dict[str, Any] | list[dict[str, Any]] | None = Field(
        default=None,
        description="Fixed arguments, laid over the ones generated from the tool's JSON Schema; a list gives each "
        "call its own (the last one repeats).",
    )
    say: str | None = Field(
        default=None,
        description="What the model says with the call when the response has no instructions (default: nothing).",
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> ToolCall:
        if (self.after_answers is None) == (self.cue is None):
            raise ValueError("a tool call needs exactly one of after_answers, cue")
        if isinstance(self.arguments, list) and not self.arguments:
            raise ValueError("arguments: an empty list; give one mapping per call, or a mapping")
        return self


class ScriptedResponse(_Model):
    """What the model does in its N-th response, whatever the rules would decide."""

    response: int = Field(ge=1, le=100_000, description="Which response: 1 is the model's first.")
    say: str | None = Field(default=None, min_length=1, description="Speak exactly this.")
    skip_tools: bool = Field(
        default=False, description="Call no tool, even one that is due or that tool_choice requires."
    )
    fail: Literal["rate_limit", "server_error"] | None = Field(
        default=None, description="The response fails at once (`response.done` with status `failed`)."
    )

    @model_validator(mode="after")
    def _something(self) -> ScriptedResponse:
        if self.fail is not None and (self.say is not None or self.skip_tools):
            raise ValueError("a failed response says nothing and calls nothing: give `fail` alone")
        if self.fail is None and self.say is None and not self.skip_tools:
            raise ValueError("a scripted response needs say, skip_tools or fail")
        return self


def _default_tool_calls() -> list[ToolCall]:
    return [ToolCall(after_answers=4, say=CLOSING)]


class Interviewer(_Model):
    """The model's side: its voice, the questions it asks, and what the scenario makes it do."""

    name: str | None = Field(
        default=None, description="Used in the greeting when the session's instructions do not name the interviewer."
    )
    voice: str = Field(default="en-us+f3", description="espeak-ng voice of the interviewer's audio.")
    words_per_minute: int = Field(
        default=160, ge=30, le=400, description="Speaking rate; the audio's length follows from it."
    )
    first_audio_s: Range = Field(
        default_factory=lambda: [0.2, 0.6],
        description="Seconds from response.create to the first audio (model latency).",
    )
    greeting: str | None = Field(
        default=None,
        description="Said before the first question of a response without instructions; default `Hello, I'm NAME.`; "
        "an empty string: no greeting.",
    )
    questions: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(_DEFAULT_QUESTIONS), max_length=1000,
        description="The questions the model asks, in order.",
    )  # fmt: skip
    closing: str = Field(
        default=CLOSING, min_length=1, description="Said instead of a question once every question was asked."
    )
    acknowledgement: str = Field(
        default=ACKNOWLEDGEMENT,
        min_length=1,
        description="Said in a response without instructions right after a tool's output.",
    )
    tool_calls: list[ToolCall] = Field(
        default_factory=_default_tool_calls,
        description="When the model calls the flow's tools on its own; `[]`: never.",
    )
    responses: list[ScriptedResponse] = Field(
        default_factory=list, description="Responses scripted by number: refusals, fixed lines, failures."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Interviewer:
        _ordered("first_audio_s", self.first_audio_s)
        numbers = [r.response for r in self.responses]
        if len(numbers) != len(set(numbers)):
            raise ValueError("responses: two entries for the same response number")
        return self


# ---------------------------------------------------------------------------------------------------
# The document


class Persona(_Model):
    """A persona or scenario file (flows/personas/*.yaml; docs/personas.md)."""

    name: str = Field(default="Alex (B1, steady)", min_length=1, description="Shown in logs and reports.")
    description: str = Field(default="", description="What this persona or scenario is for.")
    level: str = Field(default="B1", description="The CEFR level the answers are written to show (informational).")
    extends: str | None = Field(
        default=None,
        min_length=1,
        description="Start from another persona: a bundled name (`a2_hesitant`) or a file relative to this one; "
        "mappings merge, lists and values replace.",
    )
    candidate: Candidate = Field(default_factory=lambda: Candidate(), description="The scripted candidate.")
    interviewer: Interviewer = Field(default_factory=lambda: Interviewer(), description="The simulated model.")


Scenario = Persona  # one format: a scenario is a persona that also scripts the model and the turns


class PersonaError(ValueError):
    """A persona cannot be used; `str()` is one line naming the file (and position), `problems` all of them."""

    def __init__(self, problems: list[Problem], line: str | None = None):
        self.problems = problems
        if line is None:
            line = str(problems[0]) if problems else "invalid persona"
            if len(problems) > 1:
                line += f" (and {len(problems) - 1} more)"
        super().__init__(line)


# ---------------------------------------------------------------------------------------------------
# Public API


def persona_schema() -> dict[str, Any]:
    """JSON Schema of the persona/scenario format (for `engine schema --persona` and editors)."""
    out = Persona.model_json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "engine persona or scenario"
    return out


def bundled_personas() -> dict[str, Path]:
    """The personas that ship with the engine, by name (file stem)."""
    if not PERSONA_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(PERSONA_DIR.glob("*.yaml"))}


def load_persona(path: str | Path | None = None) -> Persona:
    """A persona from a file, a bundled name (``"a2_hesitant"``), or None (the default persona).

    Raises:
        PersonaError: (a ValueError) the file is missing, unreadable or invalid; its message is one
            line naming the file, and the position where there is one.
    """
    if path is None or (str(path) == "default" and not Path(path).is_file()):
        default = bundled_personas().get("default")
        return Persona() if default is None else load_persona(default)
    resolved = _resolve(str(path), None)
    if resolved is None:
        known = ", ".join(bundled_personas()) or "none installed"
        raise PersonaError([], f"{path}: no such persona file or bundled persona (bundled: {known})")
    return filecache.load("persona", resolved, partial(_load, resolved))


def _load(path: Path) -> Persona:
    try:
        text = read_text(path)
    except Unreadable as exc:
        raise PersonaError([], str(exc)) from None
    persona, problems = _parse(text, path, ())
    if persona is None:
        raise PersonaError([p for p in problems if not p.warning])
    return persona


def check_persona(path: str | Path) -> list[Problem]:
    """Every problem of a persona or scenario file, as `path:line:col: message`.

    Raises:
        Unreadable: the file cannot be read at all (missing, a directory, too large, not UTF-8).
    """
    text = read_text(path)
    return _parse(text, Path(path), ())[1]


def persona_from_data(data: Any, src: Document, loc: tuple[Any, ...] = (), base: Path | None = None) -> Persona | None:
    """Validate a persona or scenario embedded in another document (a conversation test's inline
    scenario) at `loc`; problems go into `src` with their positions. None if invalid.

    Args:
        base: the folder `extends:` paths are relative to (default: the document's).
    """
    folder = base if base is not None else Path(src.path).parent
    return _validate(data, src, loc, folder, ())


# ---------------------------------------------------------------------------------------------------
# Private


def _resolve(name: str, folder: Path | None) -> Path | None:
    """A file path (relative to `folder` when given), else a bundled persona by name."""
    candidate = Path(name) if folder is None or Path(name).is_absolute() else folder / name
    if candidate.exists() or candidate.suffix in (".yaml", ".yml") or "/" in name:
        return candidate
    return bundled_personas().get(name)


def _parse(text: str, path: Path, chain: tuple[Path, ...]) -> tuple[Persona | None, list[Problem]]:
    src = parse_yaml(text, str(path))
    if src.problems:
        return None, src.sorted_problems()
    persona = _validate(src.data, src, (), path.parent, chain + (path.resolve(),))
    return persona, src.sorted_problems()


def _validate(data: Any, src: Document, loc: tuple[Any, ...], folder: Path, chain: tuple[Path, ...]) -> Persona | None:
    if not isinstance(data, dict):
        src.at(loc, "a persona is a mapping (name, candidate, interviewer, ...)")
        return None
    merged = data
    if data.get("extends") is not None:
        base = _base_data(data["extends"], src, loc, folder, chain)
        if base is None:
            return None
        merged = _merge(base, data)
    try:
        return Persona.model_validate(merged)
    except ValidationError as exc:
        _report(exc, data, src, loc)
        return None


def _base_data(name: Any, src: Document, loc: tuple[Any, ...], folder: Path, chain: tuple[Path, ...]) -> Any:
    """The complete data of the persona `name` (its own `extends` applied), or None after a problem."""
    where = loc + ("extends",)
    if not isinstance(name, str) or not name:
        src.at(where, "extends: give a bundled persona's name or a file")
        return None
    path = _resolve(name, folder)
    if path is None:
        known = ", ".join(bundled_personas()) or "none installed"
        src.at(where, f"extends: no persona '{name}' (bundled: {known})")
        return None
    if path.resolve() in chain:
        src.at(where, f"extends: '{name}' extends itself (a cycle)")
        return None
    if len(chain) >= MAX_EXTENDS:
        src.at(where, f"extends: more than {MAX_EXTENDS} personas deep")
        return None
    try:
        base_src = parse_yaml(read_text(path), str(path))
    except Unreadable as exc:
        src.at(where, f"extends: {exc}")
        return None
    base = None if base_src.problems else _validate(base_src.data, base_src, (), path.parent, chain + (path.resolve(),))
    if base is None:
        src.at(where, f"extends: '{name}' is not a valid persona: {base_src.sorted_problems()[0]}")
        return None
    return base.model_dump()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and values replace; `extends` is this document's own."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_MODELS: dict[str, type[BaseModel]] = {
    "": Persona, "candidate": Candidate, "interviewer": Interviewer, "answers": Answer, "speaks_over": SpeaksOver,
    "pauses": Pause, "tool_calls": ToolCall, "responses": ScriptedResponse,
}  # fmt: skip


def _report(exc: ValidationError, data: Any, src: Document, loc: tuple[Any, ...]) -> None:
    seen: set[tuple[tuple[Any, ...], str]] = set()
    for err in exc.errors():
        where, field = _data_loc(data, err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            model = _MODELS.get(field, Persona)
            hint = difflib.get_close_matches(key, list(model.model_fields), n=1)
            message = f"unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
            if (where, message) not in seen:
                src.at(loc + where, message, key=True)
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if kind == "missing":
                where, message = where[:-1], f"missing key '{err['loc'][-1]}'"
            named = ".".join(str(p) for p in loc + where)
            message = f"{named}: {message}" if named else message
            if (where, message) not in seen:
                src.at(loc + where, message)
        seen.add((where, message))


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str]:
    """A pydantic error location mapped onto the document (union tags dropped), and the name of the
    last list or mapping field on the way (for "did you mean")."""
    out: list[Any] = []
    field = ""
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            out.append(part)
            if isinstance(part, str) and part in _MODELS:
                field = part
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
            out.append(part)
        elif (
            isinstance(data, dict) and isinstance(part, str) and part not in ("text", "turn", "value", "range", "never")
        ):
            out.append(part)  # a key that is not there: missing or unknown
            break
    return tuple(out), field
