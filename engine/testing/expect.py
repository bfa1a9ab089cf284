"""What a session did, read from its folder (trace.jsonl, report.json), and the expectations of a
conversation test checked on it.

Everything is measured on session time, the `t` of the trace: with `engine test` that is the
simulator's virtual clock, so the figures are the same at any machine load.

- The path: the targets of the core's `Fired` effects, in order (the initial state first).
- Tool calls: `response.function_call_arguments.done` from the server, once per call id.
- The interviewer's turns as heard: from `playback.started` to `playback.done` (or
  `playback.stopped`, a barge-in) of each response.
- The candidate's turns: `speech.started` to `speech.stopped` (else `input.committed`).
- Answer -> reply: from the end of a candidate turn (speech stopped, else committed) to the first
  interviewer audio heard after it, when the candidate did not speak again first.
- Dead air: the silences before the interviewer's first words and between two of its turns
  heard, where the candidate did not speak either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..trace import event_from_record, read
from .format import ANY, WILDCARD, Budgets, Count, Expect, ExpectedCall, Lines, is_pattern, is_range, pattern

__all__ = ["Observed", "Unmet", "check"]


@dataclass(frozen=True)
class Unmet:
    """An expectation the session did not meet: which, what it asked, what happened instead."""

    expectation: str  # e.g. "path", "budgets.answer_to_reply", "report.results.assessment.overall.band"
    expected: str
    got: str

    def __str__(self) -> str:
        return f"{self.expectation}: expected {self.expected}; got {self.got}"


@dataclass
class Observed:
    """The facts of one session that expectations are checked on."""

    folder: Path
    report: dict[str, Any] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (tool, arguments), once per call
    heard: list[tuple[float, float]] = field(default_factory=list)  # interviewer audio (start, end), by start
    speech: list[tuple[float, float]] = field(default_factory=list)  # candidate turns (start, end), by start
    turn_ends: list[float] = field(default_factory=list)  # candidate turns: speech stopped, else committed
    end: float = 0.0  # the last time in the trace
    missing: list[str] = field(default_factory=list)  # outputs that could not be read

    @classmethod
    def of(cls, folder: Path) -> Observed:
        seen = cls(folder)
        try:
            seen.report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            seen.missing.append("report.json")
        try:
            seen._read_trace(read(folder / "trace.jsonl"))
        except (OSError, ValueError):
            seen.missing.append("trace.jsonl")
        return seen

    # Measures.

    def replies(self) -> list[tuple[float, float]]:
        """(end of a candidate turn, first interviewer audio heard after it) for each turn replied to
        before the candidate spoke again."""
        starts = sorted(s for s, _ in self.speech)
        out = []
        for end in self.turn_ends:
            reply = next((s for s, _ in self.heard if s >= end), None)
            if reply is None:
                continue
            if any(end < s < reply for s in starts):
                continue  # the candidate spoke again before any reply
            out.append((end, reply))
        return out

    def silences(self) -> list[tuple[float, float]]:
        """(from, to) of each wait for the interviewer: before its first words, and between two
        of its turns, with the candidate silent too."""
        out = []
        at = 0.0
        for start, end in self.heard:
            if start > at and not any(s < start and e > at for s, e in self.speech):
                out.append((at, start))
            at = max(at, end)
        return out

    # Private.

    def _read_trace(self, lines: Iterable[dict[str, Any]]) -> None:
        started: dict[str, float] = {}
        ended: dict[str, float] = {}
        turns: dict[str, list[float | None]] = {}  # item -> [started, stopped, committed]
        calls: set[str] = set()
        for line in lines:
            t = line.get("t")
            if not isinstance(t, (int, float)):
                continue
            self.end = max(self.end, float(t))
            out = line.get("out")
            if isinstance(out, dict):
                if out.get("effect") == "Fired" and out.get("target"):
                    self.path.append(str(out["target"]))
                continue
            if "in" not in line:
                continue
            try:
                event = event_from_record(line["in"])
            except (EngineError, KeyError, TypeError):  # a malformed event the session skipped too
                continue
            kind, rid = event.type, event.response_id
            if kind == "response.function_call_arguments.done":
                key = event.call_id or event.event_id or f"call {len(calls)}"
                if key not in calls:
                    calls.add(key)
                    self.calls.append((str(event.data.get("name")), _arguments(event.data.get("arguments"))))
            elif kind == "playback.started" and rid is not None:
                started.setdefault(rid, t)
            elif kind in ("playback.done", "playback.stopped") and rid is not None:
                ended.setdefault(rid, t)
            elif kind in ("speech.started", "speech.stopped", "input.committed"):
                turn = turns.setdefault(event.item_id or f"?{len(turns)}", [None, None, None])
                slot = ("speech.started", "speech.stopped", "input.committed").index(kind)
                turn[slot] = t if turn[slot] is None else turn[slot]
        self.heard = sorted((s, ended.get(rid, self.end)) for rid, s in started.items())
        for begun, stopped, committed in turns.values():
            end = stopped if stopped is not None else committed
            if end is not None:
                self.turn_ends.append(end)
            if begun is not None:
                self.speech.append((begun, end if end is not None else self.end))
        self.turn_ends.sort()
        self.speech.sort()


def check(expect: Expect, order: Iterable[str], seen: Observed) -> list[Unmet]:
    """Every unmet expectation, in `order` (the expectations as written); first, the outputs they
    are checked on if one could not be read."""
    unmet = [Unmet("outputs", f"a readable {name}", f"none in {seen.folder}") for name in seen.missing]
    for key in order:
        unmet += _CHECKS[key](expect, seen)
    return unmet


# The expectations, one function each -----------------------------------------------------------------


def _path(expect: Expect, seen: Observed) -> list[Unmet]:
    want, got = expect.path, seen.path
    if want is None or _fits(want, got):
        return []
    if not got:
        return [Unmet("path", _arrows(want), "no states entered")]
    j, next_ = _divergence(want, got)
    where = (f"off the expected path at state {j + 1}, {got[j]}" if j < len(got)
             else f"no {next_} where the expected path needs it")
    return [Unmet("path", _arrows(want), f"{_arrows(got)} ({where})")]


def _visited(expect: Expect, seen: Observed) -> list[Unmet]:
    return [Unmet("visited", f"a visit to '{name}'", f"never entered (path: {_arrows(seen.path)})")
            for name in expect.visited if name not in seen.path]


def _not_visited(expect: Expect, seen: Observed) -> list[Unmet]:
    return [Unmet("not_visited", f"no visit to '{name}'",
                  f"entered as state {seen.path.index(name) + 1} of the path ({_arrows(seen.path)})")
            for name in expect.not_visited if name in seen.path]


def _tool_calls(expect: Expect, seen: Observed) -> list[Unmet]:
    unmet = []
    for call in expect.tool_calls:
        n = sum(1 for name, args in seen.calls if name == call.name and _arguments_match(call, args))
        if not call.times.holds(n):
            made = ", ".join(f"{name}({_show(args)})" for name, args in seen.calls) or "none"
            unmet.append(Unmet("tool_calls", f"{_times(call.times)} {_call(call)}",
                               f"{n} (the calls made: {made})"))
    return unmet


def _transcript(expect: Expect, seen: Observed) -> list[Unmet]:
    if expect.transcript is None:
        return []
    unmet = []
    for role in ("interviewer", "candidate"):
        lines: Lines | None = getattr(expect.transcript, role)
        if lines is None:
            continue
        turns = [t for t in seen.report.get("turns") or [] if t.get("role") == role and isinstance(t.get("text"), str)]
        for line in lines.says:
            if not any(_says(line, t["text"]) for t in turns):
                shown = "; ".join(repr(_short(t["text"])) for t in turns[:4]) + (" ..." if len(turns) > 4 else "")
                unmet.append(Unmet(f"transcript.{role}.says", repr(line),
                                   f"not in any of its {len(turns)} turns" + (f": {shown}" if turns else "")))
        for line in lines.never_says:
            said = next((t for t in turns if _says(line, t["text"])), None)
            if said is not None:
                unmet.append(Unmet(f"transcript.{role}.never_says", f"never {line!r}",
                                   f"said at {float(said.get('t') or 0):.2f} s: {_short(said['text'])!r}"))
    return unmet


def _final_state(expect: Expect, seen: Observed) -> list[Unmet]:
    state = seen.report.get("final_state")
    if expect.final_state is None or state in expect.final_state:
        return []
    return [Unmet("final_state", _one_of(expect.final_state), f"{state} ({seen.report.get('reason', 'no report')})")]


def _outcome(expect: Expect, seen: Observed) -> list[Unmet]:
    outcome = seen.report.get("outcome")
    if expect.outcome is None or outcome in expect.outcome:
        return []
    return [Unmet("outcome", _one_of(expect.outcome), f"{outcome} ({seen.report.get('reason', 'no report')})")]


def _outputs(expect: Expect, seen: Observed) -> list[Unmet]:
    def where(name: str) -> Path:
        return seen.folder.parent / name if name == "sessions.sqlite" else seen.folder / name

    return [Unmet("outputs", name, f"no {where(name)}") for name in expect.outputs if not where(name).is_file()]


def _report(expect: Expect, seen: Observed) -> list[Unmet]:
    unmet = []
    for dotted, spec in expect.report.items():
        found, value = _field(seen.report, dotted)
        if not found:
            unmet.append(Unmet(f"report.{dotted}", _describe(spec), f"no such field in report.json ({value})"))
        elif not _matches(spec, value):
            unmet.append(Unmet(f"report.{dotted}", _describe(spec), _show(value)))
    return unmet


def _responses(expect: Expect, seen: Observed) -> list[Unmet]:
    n = (seen.report.get("counts") or {}).get("responses")
    if expect.responses is None or (isinstance(n, int) and expect.responses.holds(n)):
        return []
    return [Unmet("responses", str(expect.responses), f"{n} responses asked for")]


def _collisions(expect: Expect, seen: Observed) -> list[Unmet]:
    n = (seen.report.get("counts") or {}).get("collisions")
    if n == expect.collisions:
        return []
    return [Unmet("collisions", str(expect.collisions), f"{n} (responses refused because one was in progress)")]


def _budgets(expect: Expect, seen: Observed) -> list[Unmet]:
    budgets: Budgets | None = expect.budgets
    if budgets is None:
        return []
    unmet = []
    if budgets.dead_air is not None:
        gaps = seen.silences()
        worst = max(gaps, key=lambda g: g[1] - g[0], default=None)
        if worst is not None and worst[1] - worst[0] > budgets.dead_air + 1e-9:
            unmet.append(Unmet("budgets.dead_air", f"at most {_s(budgets.dead_air)}",
                               f"{_s(worst[1] - worst[0])} of silence from {worst[0]:.2f} s to {worst[1]:.2f} s"))
    if budgets.answer_to_reply is not None:
        replies = seen.replies()
        worst = max(replies, key=lambda r: r[1] - r[0], default=None)
        if worst is not None and worst[1] - worst[0] > budgets.answer_to_reply + 1e-9:
            n = replies.index(worst) + 1
            unmet.append(Unmet("budgets.answer_to_reply", f"at most {_s(budgets.answer_to_reply)}",
                               f"{_s(worst[1] - worst[0])} after answer {n} (its turn ended at {worst[0]:.2f} s, the "
                               f"reply was heard from {worst[1]:.2f} s)"))
    length = seen.report.get("duration_s")
    if budgets.session is not None and isinstance(length, (int, float)) and length > budgets.session + 1e-9:
        unmet.append(Unmet("budgets.session", f"at most {_s(budgets.session)}", f"{_s(length)}"))
    return unmet


_CHECKS = {
    "path": _path, "visited": _visited, "not_visited": _not_visited, "tool_calls": _tool_calls,
    "transcript": _transcript, "final_state": _final_state, "outcome": _outcome, "outputs": _outputs,
    "report": _report, "responses": _responses, "collisions": _collisions, "budgets": _budgets,
}  # fmt: skip
assert set(_CHECKS) == set(Expect.model_fields), "every expectation has its check"


# Matching ---------------------------------------------------------------------------------------------


def _fits(want: list[str], got: list[str]) -> bool:
    """`got` is `want` with each `...` standing for any states (none or more)."""
    reach = [True] + [False] * len(got)  # reach[j]: want[:i] fits got[:j]
    for name in want:
        if name == WILDCARD:
            for j in range(1, len(got) + 1):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [reach[j] and got[j] == name for j in range(len(got))]
    return reach[-1]


def _divergence(want: list[str], got: list[str]) -> tuple[int, str | None]:
    """How many states of `got` follow `want` before it leaves it, and (if all of them do) the
    first state `want` still expects."""

    def closed(positions: set[int]) -> set[int]:  # a wildcard also matches no state
        out, todo = set(positions), list(positions)
        while todo:
            i = todo.pop()
            if i < len(want) and want[i] == WILDCARD and i + 1 not in out:
                out.add(i + 1)
                todo.append(i + 1)
        return out

    live = closed({0})  # positions in `want` that got[:j] can have reached
    for j, state in enumerate(got):
        step = {i for i in live if i < len(want) and want[i] == WILDCARD}
        step |= {i + 1 for i in live if i < len(want) and want[i] == state}
        if not step:
            return j, None
        live = closed(step)
    expected = sorted(i for i in live if i < len(want) and want[i] != WILDCARD)
    return len(got), want[expected[0]] if expected else None


def _matches(spec: Any, value: Any) -> bool:
    if spec == ANY:
        return True
    if isinstance(spec, list):
        return any(_equal(option, value) for option in spec)
    if is_range(spec):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return False
        return bool(spec.get("min", -math.inf) <= value <= spec.get("max", math.inf))
    return _equal(spec, value)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _arguments_match(call: ExpectedCall, args: Any) -> bool:
    if not isinstance(args, dict):
        return not call.arguments
    return all(name in args and _matches(spec, args[name]) for name, spec in call.arguments.items())


def _says(line: str, text: str) -> bool:
    return bool(pattern(line).search(text)) if is_pattern(line) else line in text


def _field(report: Any, dotted: str) -> tuple[bool, Any]:
    """(True, the value) at a dotted path; else (False, what is there instead)."""
    value = report
    walked: list[str] = []
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            at = ".".join(walked) or "the report"
            if isinstance(value, dict):
                return False, f"{at} has {', '.join(map(str, value)) or 'no fields'}"
            return False, f"{at} is {_show(value)}"
        walked.append(part)
    return True, value


def _arguments(raw: Any) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


# Words ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(spec: Any) -> str:
    if spec == ANY:
        return "any value"
    if isinstance(spec, list):
        return f"one of {_show(spec)}"
    if is_range(spec):
        low, high = spec.get("min"), spec.get("max")
        return f"at least {low}" if high is None else f"at most {high}" if low is None else f"{low} to {high}"
    return _show(spec)


def _one_of(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def _arrows(states: list[str]) -> str:
    return " -> ".join(states)


def _times(count: Count) -> str:
    if (count.min, count.max) == (1, None):
        return "at least one call of"
    return "no call of" if count.max == 0 else f"{count} calls of"


def _call(call: ExpectedCall) -> str:
    args = ", ".join(f"{name}={_describe(spec)}" for name, spec in call.arguments.items())
    return f"{call.name}({args})"


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"
