"""What a session has gathered: the turns, job results, tool arguments; and the templates that
render from them.

Rules of this module:
1. A candidate turn is keyed by its input item. It ends once (the caller says when: its commit,
   or `speech.stopped` when the flow says so) and only then counts as an answer; its transcript
   is attached to it whenever that arrives: before the commit, after the reply, or never.
2. Templates are the flow's text only: a value substituted into one is never expanded again, and
   a template is rendered in one pass over it.
3. Plain data; times are session times handed in by the caller.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import TemplateError

__all__ = ["Facts", "render", "freeze", "thaw"]

# `{{` and `}}` are literal braces; `{name.path}` is a reference (as flow.template_names reads them).
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def render(template: str, context: dict[str, Any], where: str) -> str:
    """`template` with every `{name.path}` replaced from `context`. Raises TemplateError naming
    `where` (the state) when the context lacks a name."""

    def value(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        name = match.group(1).strip()
        found: Any = context
        for part in name.split("."):
            if not (isinstance(found, dict) and part in found):
                raise TemplateError(f"state '{where}': template {{{name}}} names nothing the session "
                                    f"has yet ('{part}' is missing)")
            found = found[part]
        return str(found)

    return _TEMPLATE.sub(value, template)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """A hashable, comparable copy of JSON-like data that `thaw` turns back (order kept)."""
    # Exact types first (every snapshot freezes the turns; the explorer takes one per branch).
    kind = type(value)
    if kind in _SCALARS:
        return ("v", value)
    if kind is dict:
        return ("d", tuple([(k, freeze(v)) for k, v in value.items()]))
    if kind is list:
        return ("l", tuple([freeze(v) for v in value]))
    if kind is tuple:
        return ("t", tuple([freeze(v) for v in value]))
    if isinstance(value, dict):
        return ("d", tuple((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("l", tuple(freeze(v) for v in value))
    if isinstance(value, tuple):
        return ("t", tuple(freeze(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("s", tuple(sorted((freeze(v) for v in value), key=repr)))
    return ("v", value)


def thaw(value: Any) -> Any:
    kind, body = value
    if kind == "v":
        return body
    if kind == "d":
        return {k: thaw(v) for k, v in body}
    if kind == "l":
        return [thaw(v) for v in body]
    if kind == "t":
        return tuple(thaw(v) for v in body)
    if kind == "s":
        return {thaw(v) for v in body}
    return body


class Facts:
    """Turns, results and tool arguments of one session."""

    def __init__(self) -> None:
        self.turns: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}  # job name -> result
        self.tool_args: dict[str, Any] = {}  # arguments of the last tool call
        self.tool_call_id: str | None = None  # the call a `tool_result` answers
        self.answers = 0  # candidate turns that ended
        self._candidate: dict[str, int] = {}  # input item -> index of its turn in `turns`
        self._ended: set[str] = set()  # input items whose turn is over (counted in `answers`)
        self._speech: dict[str, list[float | None]] = {}  # input item -> [start, end] before its turn exists
        self._call_names: dict[str, str | None] = {}  # call id -> tool name (beta's arguments.done has none)
        self._handled: set[tuple[str, str]] = set()  # (kind, id) recorded once: transcripts, tool calls

    # Candidate turns.

    def speech(self, item: str, key: int, t: float) -> None:
        """`speech.started` (key 0) or `speech.stopped` (key 1) of an input item."""
        index = self._candidate.get(item)
        if index is not None:
            self.turns[index]["start" if key == 0 else "end"] = t
        else:
            self._speech.setdefault(item, [None, None])[key] = t

    def end_turn(self, item: str, t: float) -> bool:
        """The candidate's turn on `item` is over. True the first time: one more answer."""
        if item in self._ended:
            return False
        self._ended.add(item)
        self.answers += 1
        self._record(item, t)["t"] = t
        return True

    def committed(self, item: str, t: float) -> None:
        turn = self._record(item, t)
        if turn["committed"] is None:
            turn["committed"] = t

    def transcript(self, item: str, text: str, t: float) -> bool:
        """Attach the transcript to the item's turn, whenever it comes. True the first time."""
        turn = self._record(item, t)
        if turn["transcribed"]:
            return False
        turn["text"], turn["transcribed"] = text, True
        return True

    def transcript_failed(self, item: str, t: float) -> None:
        """The server gave up transcribing the item: its turn stays, untranscribed, and is no
        longer waited for."""
        self._record(item, t)["transcript_failed"] = True

    @property
    def awaiting_transcripts(self) -> bool:
        """Some ended turn has neither its transcript nor a transcription failure yet."""
        return any(not (t["transcribed"] or t.get("transcript_failed")) for t in self.turns
                   if t["role"] == "candidate" and t["item_id"] in self._ended)

    # Interviewer turns and tool calls.

    def first(self, kind: str, key: str | None) -> bool:
        """True the first time (kind, key) is seen: transcripts and tool calls are recorded once."""
        mark = (kind, key or "")
        if mark in self._handled:
            return False
        self._handled.add(mark)
        return True

    def interviewer(self, text: str, t: float, response_id: str | None, item: str | None,
                    heard_ms: int | None) -> None:
        turn: dict[str, Any] = {"role": "interviewer", "text": text, "t": t, "response_id": response_id,
                                "item_id": item}
        if heard_ms is not None:
            turn["heard_ms"] = heard_ms
        self.turns.append(turn)

    def heard(self, item: str, ms: int) -> None:
        """A barge-in: the candidate heard `ms` of the interviewer's `item` (less than its transcript)."""
        for turn in self.turns:
            if turn["role"] == "interviewer" and turn.get("item_id") == item:
                turn["heard_ms"] = ms

    def call_name(self, call_id: str, name: str | None) -> None:
        self._call_names[call_id] = name

    def tool_call(self, name: str | None, call_id: str | None, arguments: Any, t: float,
                  response_id: str | None) -> str | None:
        """Record a tool call. Returns a warning if its arguments were not JSON."""
        warning = None
        try:
            args = json.loads(arguments) if isinstance(arguments, str) and arguments else (arguments or {})
        except ValueError:
            warning = f"tool {name}: arguments are not JSON: {str(arguments)[:80]!r}"
            args = {"raw": arguments}
        self.tool_args = args if isinstance(args, dict) else {"value": args}
        self.tool_call_id = call_id
        self.turns.append({"role": "tool", "text": f"{name}({json.dumps(self.tool_args)})", "t": t,
                           "response_id": response_id, "call_id": call_id})
        return warning

    def tool_name(self, name: str | None, call_id: str | None) -> str | None:
        return name or self._call_names.get(call_id or "")

    # Templates.

    def context(self) -> dict[str, Any]:
        """What templates can name (see flow.TEMPLATE_ROOTS)."""
        last = next((t["text"] for t in reversed(self.turns) if t["role"] == "candidate" and t["transcribed"]), "")
        return {"answers": self.answers, "last_answer": last, "tool": self.tool_args, **self.results}

    # Snapshots.

    def snapshot(self) -> tuple[Any, ...]:
        return (freeze(self.turns), freeze(self.results), freeze(self.tool_args), self.tool_call_id, self.answers,
                tuple(self._candidate.items()), tuple(sorted(self._ended)),
                tuple((k, tuple(v)) for k, v in self._speech.items()),
                tuple(self._call_names.items()), tuple(sorted(self._handled)))

    @classmethod
    def restore(cls, snap: tuple[Any, ...]) -> Facts:
        f = cls()
        turns, results, args, f.tool_call_id, f.answers, candidate, ended, speech, names, handled = snap
        f.turns, f.results, f.tool_args = thaw(turns), thaw(results), thaw(args)
        f._candidate = dict(candidate)
        f._ended = set(ended)
        f._speech = {k: list(v) for k, v in speech}
        f._call_names = dict(names)
        f._handled = {tuple(h) for h in handled}
        return f

    def _record(self, item: str, t: float) -> dict[str, Any]:
        """The turn of input item `item`, made on first sight with the speech times seen before."""
        index = self._candidate.get(item)
        if index is not None:
            return self.turns[index]
        start, end = self._speech.pop(item, (None, None))
        turn = {"role": "candidate", "item_id": item, "t": t, "start": start, "end": end, "committed": None,
                "text": None, "transcribed": False}
        self._candidate[item] = len(self.turns)
        self.turns.append(turn)
        return turn
