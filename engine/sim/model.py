"""The simulated model's decisions: what it says and which tool it calls, for each response.

Pure and deterministic: no I/O, no clock, no randomness (generated arguments are fixed functions
of the schema). The session tells the `Model` what it hears (`hear`) and asks it to `decide` each
response from what a real model would see: the session's instructions and tools, the response's
own instructions, tool_choice and tools, and the conversation so far. The rules are written out
in docs/personas.md ("How the simulated model decides"); this module is their one implementation.

In short:
1. A scripted response (`interviewer.responses`) wins.
2. Speech, with instructions: quoted text is spoken verbatim (all passages, in order); else the text
   after `Say:` on its line; else each clause is matched against a few acts (introduce yourself,
   greet, repeat the question, check in, ask a question, thank, apologise, wait, goodbye,
   acknowledge) and their sentences are spoken in order; else `Let me <verb>.`.
3. Speech, without instructions: the text of a tool call (`say`) when a call is made; right after a
   tool output, the acknowledgement; else the next question (with a greeting before the first
   thing the model says); after the last question, the closing line.
4. Tool calls: never with tool_choice `none`; the named tool when tool_choice names one; with
   `required`, the first due scenario call or the first declared tool; with `auto`, the first
   scenario call (`interviewer.tool_calls`) that is due.
5. The candidate answers a response that asked one of the scenario's questions, or whose text holds
   a question mark or ends with a request (`Tell me...`, `Describe...`: `invites_answer`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .arguments import generate_arguments
from .scenario import Interviewer, ScriptedResponse, ToolCall

__all__ = ["Model", "Turn", "Decision", "Call", "speech_for", "invites_answer", "EXTRA_QUESTION", "CHECK_IN"]

EXTRA_QUESTION = "Is there anything else you would like to tell me?"  # asked when the questions have run out
CHECK_IN = "Are you still with me?"
REPEAT = "Let me repeat the question."
FALLBACK = "All right."


@dataclass(frozen=True, slots=True)
class Call:
    """A function call the model makes."""

    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Turn:
    """What the model sees when a response starts."""

    instructions: str | None = None  # the response's own (None: the session's apply)
    session_instructions: str = ""
    tools: tuple[dict[str, Any], ...] = ()  # function tools in effect (the response's, else the session's)
    tool_choice: Any = "auto"
    after_tool_output: bool = False  # the conversation's last item is a function_call_output
    idle: bool = False  # started by the server's idle timeout (turn_detection.idle_timeout_ms)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the model does in one response."""

    text: str  # spoken; "" when the response is only a function call
    call: Call | None = None
    asks: bool = False  # the candidate is expected to answer
    fail: str | None = None  # "rate_limit" | "server_error": the response fails at once


@dataclass
class Model:
    """The simulated model of one conversation: the interviewer's script and what it remembers."""

    interviewer: Interviewer
    asked: int = 0  # the scenario's questions asked so far (the current one is asked - 1)
    spoken: bool = False  # the model has said something in this conversation
    answers: int = 0  # the candidate's answers heard (committed turns and typed messages)
    last_answer: str = ""
    responses: int = 0  # responses decided
    _calls: list[int] = field(default_factory=list)  # per scenario tool call: calls made
    _answers_at_call: list[int] = field(default_factory=list)  # per scenario tool call: answers at its last call

    def __post_init__(self) -> None:
        n = len(self.interviewer.tool_calls)
        self._calls, self._answers_at_call = [0] * n, [-1] * n

    def hear(self, text: str) -> None:
        """The candidate finished a turn (its words, as the model heard them)."""
        self.answers += 1
        self.last_answer = text

    def decide(self, turn: Turn) -> Decision:
        """The model's next response (rules in the module docstring)."""
        self.responses += 1
        script = self._scripted()
        if script is not None and script.fail is not None:
            return Decision("", fail=script.fail)
        call = None if script is not None and script.skip_tools else self._call(turn)
        if script is not None and script.say is not None:
            text, asks = script.say, False
        elif turn.instructions:
            text, asks = self._instructed(turn.instructions, turn.session_instructions)
        else:
            text, asks = self._unprompted(turn, call)
        if not text and call is None:
            text = FALLBACK
        self.spoken = self.spoken or bool(text)
        return Decision(text, call[1] if call else None, asks or invites_answer(text))

    # Private: speech.

    def _instructed(self, instructions: str, session: str) -> tuple[str, bool]:
        text, acts = speech_for(instructions, name=self._name(session))
        asks = False
        sentences: list[str] = []
        for act, number in acts:
            if act in ("ask", "repeat", "check"):
                asks = True
            sentences.append(self._act_sentence(act, number, sentences))
        return (text if text is not None else " ".join(s for s in sentences if s)), asks

    def _act_sentence(self, act: str, arg: Any, before: list[str]) -> str:
        greeted = any(s.startswith("Hello") for s in before)
        match act:
            case "introduce":
                who = arg or ""
                if not who:
                    return "" if greeted else "Hello."
                return f"I'm {who}." if greeted else f"Hello, I'm {who}."
            case "ask":
                return self._question(arg)
            case "repeat":
                return f"{REPEAT} {self._current_question()}"
            case "check":
                return CHECK_IN
            case _:
                return _ACT_LINES.get(act, self.interviewer.acknowledgement if act == "acknowledge" else FALLBACK)

    def _unprompted(self, turn: Turn, call: tuple[int | None, Call] | None) -> tuple[str, bool]:
        interviewer = self.interviewer
        if call is not None:
            rule = call[0]
            say = interviewer.tool_calls[rule].say if rule is not None else None
            return say or "", False
        if turn.idle:
            return f"{CHECK_IN} {REPEAT} {self._current_question()}", True
        if turn.after_tool_output:
            return interviewer.acknowledgement, False
        if self.asked < len(interviewer.questions):
            question = self._question(None)
            greeting = self._greeting(turn.session_instructions) if not self.spoken else ""
            return (f"{greeting} {question}" if greeting else question), True
        return interviewer.closing, False

    def _question(self, number: int | None) -> str:
        questions = self.interviewer.questions
        index = self.asked if number is None else number - 1
        if not 0 <= index < len(questions):
            self.asked = max(self.asked, len(questions))
            return EXTRA_QUESTION
        self.asked = index + 1
        return questions[index]

    def _current_question(self) -> str:
        questions = self.interviewer.questions
        if self.asked == 0:
            return self._question(None)
        return questions[self.asked - 1] if self.asked <= len(questions) else EXTRA_QUESTION

    def _greeting(self, session: str) -> str:
        if self.interviewer.greeting is not None:
            return self.interviewer.greeting
        name = self._name(session)
        return f"Hello, I'm {name}." if name else "Hello."

    def _name(self, session: str) -> str | None:
        match = _NAME.search(session)
        return match.group(1) if match else self.interviewer.name

    # Private: tool calls.

    def _scripted(self) -> ScriptedResponse | None:
        return next((r for r in self.interviewer.responses if r.response == self.responses), None)

    def _call(self, turn: Turn) -> tuple[int | None, Call] | None:
        """(index of the scenario call or None, the call), or None for no call."""
        declared = [t["name"] for t in turn.tools if isinstance(t.get("name"), str)]
        if not declared:
            return None
        choice = turn.tool_choice
        rules = self.interviewer.tool_calls
        if choice == "none":
            return None
        named = _named_choice(choice)
        if named is not None and named in declared:
            rule = next((i for i, r in enumerate(rules) if self._tool_of(r, declared) == named), None)
            return self._make(rule, named, turn)
        due = next((i for i, r in enumerate(rules) if self._due(i, r, declared)), None)
        if due is not None:
            return self._make(due, self._tool_of(rules[due], declared) or declared[0], turn)
        if choice == "required":
            return self._make(None, declared[0], turn)
        return None

    def _tool_of(self, rule: ToolCall, declared: list[str]) -> str | None:
        name = rule.tool or declared[0]
        return name if name in declared else None

    def _due(self, index: int, rule: ToolCall, declared: list[str]) -> bool:
        if self._tool_of(rule, declared) is None or self._calls[index] >= rule.times:
            return False
        if self._calls[index] and rule.again_after == "answer" and self.answers == self._answers_at_call[index]:
            return False
        if rule.after_answers is not None:
            return self.answers >= rule.after_answers
        words = rule.cue or []
        return self.answers > 0 and any(_mentions(self.last_answer, w) for w in words)

    def _make(self, rule: int | None, name: str, turn: Turn) -> tuple[int | None, Call]:
        schema = next((t.get("parameters") for t in turn.tools if t.get("name") == name), None)
        arguments = generate_arguments(schema)
        if rule is not None:
            fixed = self.interviewer.tool_calls[rule].arguments
            if isinstance(fixed, list):
                fixed = fixed[min(self._calls[rule], len(fixed) - 1)]
            arguments.update(fixed or {})
            self._calls[rule] += 1
            self._answers_at_call[rule] = self.answers
        return rule, Call(name, json.dumps(arguments, ensure_ascii=False))


# ---------------------------------------------------------------------------------------------------
# Reading instructions


_QUOTED = re.compile(r'"([^"\n]*[^"\s][^"\n]*)"|“([^”\n]*[^”\s][^”\n]*)”')
_SAY = re.compile(r"\bsay:\s*(\S[^\n]*)", re.IGNORECASE)
_CLAUSES = re.compile(r"[.;!?\n]+(?:\s|$)|,?\s+(?:and\s+)?then\s+|\s+and\s+|:\s+", re.IGNORECASE)
_NAME = re.compile(
    r"\b(?i:you are|you're|your name is)\s+([A-Z][\w'-]*(?:\s+(?:from|at|of)\s+[A-Z][\w&'-]*(?:\s+[A-Z][\w&'-]*)*)?)"
)
_WHO_END = re.compile(r"\s+(?:in|to|and|then|with|for|who)\b.*$|\s+\w+ly\b.*$|,.*$")
_ORDINAL_WORDS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
_ORDINALS = {w: i for i, w in enumerate(_ORDINAL_WORDS, start=1)}
_ACTS: list[tuple[str, re.Pattern[str]]] = [
    ("introduce", re.compile(r"\bintroduce yourself\b(?:\s+as\s+(?P<who>.+))?", re.IGNORECASE)),
    ("greet", re.compile(r"\b(?:greet|welcome)\b", re.IGNORECASE)),
    ("repeat", re.compile(r"\b(?:repeat|rephrase)\b|\bask\b.*\bagain\b", re.IGNORECASE)),
    ("check", re.compile(r"\bask (?:them |the candidate )?(?:whether|if)\b", re.IGNORECASE)),
    ("ask", re.compile(r"\bask\b(?!(?:\s+\w+){0,2}\s+to\b)|\bquestions?\b", re.IGNORECASE)),  # not "ask them to"
    ("thank", re.compile(r"\bthank", re.IGNORECASE)),
    ("apologise", re.compile(r"\bapologi[sz]e|\bsorry\b", re.IGNORECASE)),
    ("wait", re.compile(r"\b(?:wait|moment|hold on|bear with)\b", re.IGNORECASE)),
    (
        "goodbye",
        re.compile(
            r"\b(?:goodbye|bye|farewell)\b|\b(?:end|close|finish|wrap up)\b.*\b(?:interview|call|"
            r"conversation|session)\b",
            re.IGNORECASE,
        ),
    ),
    ("acknowledge", re.compile(r"\b(?:acknowledge|confirm)\b", re.IGNORECASE)),
]
_ACT_LINES = {
    "greet": "Hello, and welcome.",
    "thank": "Thank you.",
    "apologise": "I'm sorry about that.",
    "wait": "One moment, please.",
    "goodbye": "Goodbye.",
}
_NOT_VERBS = {
    "a", "an", "the", "you", "your", "you're", "i", "we", "it", "this", "that", "be", "do", "don't", "never",
    "always", "if", "when", "now", "keep", "stay", "remain", "use", "speak", "respond", "reply", "answer", "avoid",
    "make", "try", "only", "just", "again", "here", "there", "in", "on", "at", "as", "for", "with",
}  # fmt: skip
_PARTICLES = {"on", "up", "over", "back", "through", "out", "down", "in", "ahead", "along"}
_OBJECT = {"tell": "you", "inform": "you", "remind": "you", "show": "you", "ask": "you"}


def speech_for(instructions: str, name: str | None = None) -> tuple[str | None, list[tuple[str, Any]]]:
    """Read a response's instructions: (verbatim text, []) when they quote or `Say:` it, else
    (None, acts) with the acts found clause by clause, in order, each kind once; a clause with no
    act falls back to `Let me <verb>.` only when no clause has an act.

    `name` is the interviewer's name, used by "introduce yourself" without "as ...".
    """
    quoted = [a or b for a, b in _QUOTED.findall(instructions)]
    if quoted:
        return " ".join(q.strip() for q in quoted), []
    said = _SAY.search(instructions)
    if said:
        return said.group(1).strip(), []
    acts: list[tuple[str, Any]] = []
    clauses = [c.strip() for c in _CLAUSES.split(instructions) if c and c.strip()]
    for clause in clauses:
        for act, pattern in _ACTS:
            match = pattern.search(clause)
            if match is None or any(a == act for a, _ in acts):
                continue
            acts.append((act, _argument(act, match, clause, name)))
            break
    if not acts:
        return _fallback(clauses[0] if clauses else ""), []
    return None, acts


def _argument(act: str, match: re.Match[str], clause: str, name: str | None) -> Any:
    if act == "introduce":
        who = match.group("who")
        return _WHO_END.sub("", who).strip(" .,") if who else name
    if act == "ask":
        number = re.search(r"\bquestion\s+(?:number\s+)?(\d+)\b", clause, re.IGNORECASE)
        if number:
            return int(number.group(1))
        ordinal = re.search(r"\b(" + "|".join(_ORDINALS) + r")\s+question\b", clause, re.IGNORECASE)
        return _ORDINALS[ordinal.group(1).lower()] if ordinal else None
    return None


def _fallback(clause: str) -> str:
    words = re.findall(r"[A-Za-z']+", clause)
    while words and (words[0].lower() == "please" or words[0].lower().endswith("ly")):
        words.pop(0)
    if not words or words[0].lower() in _NOT_VERBS:
        return FALLBACK
    verb = words[0].lower()
    rest = ""
    if verb in _OBJECT:
        rest = " " + _OBJECT[verb]
    elif len(words) > 1 and words[1].lower() in _PARTICLES:
        rest = " " + words[1].lower()
    return f"Let me {verb}{rest}."


def invites_answer(text: str) -> bool:
    """A line the candidate answers: it holds a question mark, or its last sentence asks for
    something (`Tell me...`, `Describe...`, after a `Now`, `So`, `Please`...)."""
    if "?" in text:
        return True
    sentences = [s for s in re.split(r"(?<=[.!])\s+", text.strip()) if s]
    words = re.findall(r"[A-Za-z']+", sentences[-1].lower()) if sentences else []
    while words and words[0] in _LEAD_INS:
        words.pop(0)
    return bool(words) and words[0] in _REQUESTS


_LEAD_INS = {"now", "so", "please", "and", "next", "then", "finally", "ok", "okay", "right", "well", "good", "great"}
# "Give me a moment" asks for nothing: "give" is not among them.
_REQUESTS = {"tell", "describe", "explain", "talk", "share", "name", "list", "walk", "imagine", "compare"}


def _named_choice(choice: Any) -> str | None:
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return choice
    return None


def _mentions(text: str, word: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text, re.IGNORECASE) is not None
