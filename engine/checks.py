"""Stage 3 of `engine.flow`: names, the graph, the no-stall rule, and what templates can use.

Rules of this module:
1. Each check reports at the value it is about, in the author's words, with "did you mean" where
   a name is close.
2. Parts that stage 2 removed (`Damage`) are neither trusted nor echoed: a damaged state may reach
   a final state and may wait for events, the targets written in it still count, and the facts
   its transitions carry are unknown (assumed present).
3. Linear passes over the graph (one fixpoint for the data flow, one search per missing value for
   an example path) and a budget for "did you mean": a flow at the size limit stays fast.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from .events import ENGINE_EVENTS, HIGH_RATE, SERVER_EVENTS
from .flow import (
    BUILTIN_GUARDS,
    TEMPLATE_ROOTS,
    Damage,
    Flow,
    Loc,
    Respond,
    State,
    ToolResult,
    Transition,
    _Action,
    suggest,
    template_names,
)
from .source import Document

__all__ = ["run"]

T = TypeVar("T")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
_SCHEMA_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_SUGGEST_BUDGET = 2_000_000  # characters compared for "did you mean", per flow
_PATH_HOPS = 8  # an example path longer than this is shortened in the middle
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def run(flow: Flow, src: Document, jobs: Iterable[str], damage: Damage) -> None:
    """Check `flow` (parsed from `src`); findings go to `src.problems`."""
    _Checker(flow, src, jobs, damage).run()


@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    target: str
    events: tuple[str, ...]  # () for a timeout
    label: str  # as the author wrote it: input.transcript, all(a, b), after 40s
    certain: bool = True  # False: read from a damaged part, its events unknown


@dataclass(frozen=True, slots=True)
class _Use:
    """A template name an action renders, and when: on entering `state`, or on one of its edges."""

    name: str
    fact: str  # what must have happened before: transcript, job:<name>, arg:<name>
    state: str
    loc: Loc
    when: str  # enter, exit, transition, after
    transition: Transition | None = None


def _present(items: list[T]) -> Iterator[tuple[int, T]]:
    """Items with their index in the file, skipping holes left by removed broken items."""
    for i, item in enumerate(items):
        if item is not None:
            yield i, item


class _Checker:
    def __init__(self, flow: Flow, src: Document, jobs: Iterable[str], damage: Damage):
        self.flow, self.src, self.jobs, self.damage = flow, src, jobs, damage
        self.budget = _SUGGEST_BUDGET
        self.tools = _written_tool_names(src.data)  # broken tools too: their events are not unknown
        self.events = set(SERVER_EVENTS - HIGH_RATE) | set(ENGINE_EVENTS)
        self.events |= {f"tool.{t}" for t in self.tools}
        self.events |= {f"job.{j}.{end}" for j in flow.jobs for end in ("done", "failed")}
        self.uses: list[_Use] = []
        self.damaged: dict[str, list[Loc]] = defaultdict(list)  # state -> its removed parts
        for loc in damage.locs:
            if len(loc) >= 2 and loc[0] == "states" and loc[1] in flow.states:
                self.damaged[loc[1]].append(loc)
        self.uncertain = set(self.damaged)
        # States whose `final:` is unknown: removed whole, `final` broken, or an unknown key (`finl:`).
        self.maybe_final = {name for name, locs in self.damaged.items()
                            if any(len(loc) == 2 or loc[2] == "final" or loc[2] not in State.model_fields
                                   for loc in locs)}

    def run(self) -> None:
        flow = self.flow
        for name in flow.jobs:
            if name not in self.jobs:
                self.src.at(("jobs", name), f"unknown job '{name}'{self.suggest(name, self.jobs)}", key=True)
        if not self.damage.within(("initial",)) and flow.initial not in flow.states \
                and not self.damage.removed(("states",)):
            self.src.at(("initial",), f"unknown initial state '{flow.initial}'"
                                      f"{self.suggest(flow.initial, flow.states)}")
        if not any(s.final for s in flow.states.values()) and not self.maybe_final \
                and not self.damage.removed(("states",)):
            self.src.at(("states",), "no final state: mark the state that ends the interview with `final: true`")
        self._check_session()
        for name, state in flow.states.items():
            self._check_state(name, state)
        _Graph(self).run()

    def suggest(self, word: str, choices: Iterable[str]) -> str:
        choices = list(choices) if not isinstance(choices, list) else choices
        self.budget -= len(choices) * (len(word) + 8)
        return suggest(word, choices) if self.budget > 0 else ""

    # Session.

    def _check_session(self) -> None:
        session, here = self.flow.session, ("session",)
        td = session.turn_detection
        if td is not None and td.get("create_response") is True:
            self.src.at(here + ("turn_detection", "create_response"),
                        "create_response: true lets the server answer on its own and collide with the flow's "
                        "responses", warning=True)
        if td is None and session.turn_end == "speech_stopped" and not self.damage.within(here):
            self.src.at(here + ("turn_end",), "turn_end: speech_stopped needs turn detection; with "
                                             "turn_detection: null no speech.stopped ever arrives", warning=True)
        if session.voice not in VOICES:
            self.src.at(here + ("voice",), f"unknown voice '{session.voice}'{self.suggest(session.voice, VOICES)} "
                                           f"(voices: {', '.join(VOICES)})", warning=True)
        seen: set[str] = set()
        for i, tool in _present(session.tools):
            loc = here + ("tools", i)
            if tool.name in seen:
                self.src.at(loc + ("name",), f"tool '{tool.name}' is declared twice")
            seen.add(tool.name)
            self._check_parameters(tool.name, tool.parameters, loc + ("parameters",))

    def _check_parameters(self, name: str, parameters: dict[str, Any], loc: Loc) -> None:
        if parameters.get("type") != "object":
            self.src.at(loc, f"tool '{name}': `parameters` is the JSON Schema of the arguments, with `type: object`")
        if _plainly_valid(parameters):
            return  # valid, so jsonschema need not be imported (see _plainly_valid)
        for n, err in enumerate(_meta_schema().iter_errors(parameters)):
            if n == 20:
                break
            where = loc + tuple(err.absolute_path)
            if err.absolute_path and err.absolute_path[-1] == "type" and isinstance(err.instance, str):
                text = f"'{err.instance}' is not a JSON Schema type{self.suggest(err.instance, _SCHEMA_TYPES)}"
            else:
                text = err.message if len(err.message) <= 160 else err.message[:157] + "..."
            self.src.at(where, f"tool '{name}' parameters: {text}")

    # States.

    def _check_state(self, name: str, state: State) -> None:
        here = ("states", name)
        if state.final and (state.transitions or state.after):
            self.src.at(here, f"final state '{name}' has transitions; a final state ends the session")
        if not state.final and not state.after and name not in self.uncertain:
            if state.wait == "forever":
                self.src.at(here, f"state '{name}' may wait forever (wait: forever)", key=True, warning=True)
            else:
                self.src.at(here, f"state '{name}' has no `after:` timeout, so it can stall "
                            f"(add one, or `wait: forever` to accept that)", key=True)
        for key in ("enter", "exit"):
            for i, action in _present(getattr(state, key)):
                self._check_action(name, action, here + (key, i), key)
        for i, tr in _present(state.transitions):
            loc = here + ("transitions", i)
            for j, event in enumerate(tr.events):
                self._check_event(event, loc + (("event",) if tr.event else ("all", j)))
            for j, guard in enumerate(tr.guard):
                self._check_guard(guard, loc + ("guard", j))
            if tr.target is not None:
                self._check_target(tr.target, loc + ("target",))
            for j, action in _present(tr.actions):
                self._check_action(name, action, loc + ("actions", j), "transition", tr)
        for i, timeout in _present(state.after):
            loc = here + ("after", i)
            self._check_target(timeout.target, loc + ("target",))
            if timeout.delay >= self.flow.max_duration:
                self.src.at(loc + ("delay",), f"this timeout never fires: the session ends at max_duration "
                                              f"({_seconds(self.flow.max_duration)}) first", warning=True)
            for j, action in _present(timeout.actions):
                self._check_action(name, action, loc + ("actions", j), "after")

    def _check_event(self, event: str, loc: Loc) -> None:
        known = self.events
        if event == "input.transcript" and self.flow.session.transcription is None \
                and not self.damage.within(("session",)):
            self.src.at(loc, "no input.transcript ever arrives: session.transcription is null", warning=True)
        if event in known:
            return
        if event in HIGH_RATE:
            self.src.at(loc, f"'{event}' streams many times a second and cannot drive a transition")
        elif event.startswith("tool."):
            tool = event.removeprefix("tool.")
            self.src.at(loc, f"unknown tool '{tool}'{self.suggest(event, known)}; tools are declared under "
                        f"session.tools")
        elif event.startswith("job."):
            self.src.at(loc, f"unknown job event '{event}' (jobs: {', '.join(self.flow.jobs) or 'none'})"
                        f"{self.suggest(event, known)}")
        else:
            self.src.at(loc, f"unknown event '{event}'{self.suggest(event, known)}")

    def _check_guard(self, guard: str, loc: Loc) -> None:
        name = guard.removeprefix("not ").strip()
        known = set(BUILTIN_GUARDS) | set(self.flow.guards)
        if name not in known:
            self.src.at(loc, f"unknown guard '{name}'{self.suggest(name, known)}")

    def _check_target(self, target: str, loc: Loc) -> None:
        if target not in self.flow.states:
            self.src.at(loc, f"unknown target state '{target}'{self.suggest(target, self.flow.states)}")

    def _check_action(self, state: str, action: _Action, loc: Loc, when: str, tr: Transition | None = None) -> None:
        loc = loc + (action.name,)
        if action.name in ("start", "cancel") and action.arg not in self.flow.jobs:
            self.src.at(loc, f"unknown job '{action.arg}'{self.suggest(action.arg, self.flow.jobs)}; jobs are "
                        f"declared under `jobs:`")
        for text, where in _templates(action):
            for name in dict.fromkeys(template_names(text)):
                fact = self._check_template(name, loc + where)
                if fact:
                    self.uses.append(_Use(name, fact, state, loc + where, when, tr))

    def _check_template(self, name: str, loc: Loc) -> str | None:
        """Report a template name nothing can provide; else what must have happened for it."""
        parts = name.split(".")
        if not _NAME.fullmatch(name):
            self.src.at(loc, f"template '{{{name}}}' is not a name (write {{assessment.summary}})")
            return None
        root = parts[0]
        known = set(TEMPLATE_ROOTS) | set(self.flow.jobs)
        if root not in known:
            self.src.at(loc, f"unknown template name '{{{name}}}'{self.suggest(root, known)}")
            return None
        if root == "last_answer":
            return "transcript"
        if root == "tool":
            return f"arg:{parts[1]}" if len(parts) > 1 else None
        if root in self.flow.jobs and root not in TEMPLATE_ROOTS:
            return f"job:{root}"
        return None


def _plainly_valid(schema: Any, depth: int = 0) -> bool:
    """True when `schema` uses only the keywords of _PLAIN, each with the value the draft 2020-12
    meta-schema requires of it: then it is a valid JSON Schema. Tools' parameters are almost always
    such schemas, and importing jsonschema takes 70 ms of `engine run`'s start. False only means
    "not this simple": jsonschema decides (and explains what is wrong)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or depth > 32:
        return False
    return all(key in _PLAIN and _PLAIN[key](value, depth) for key, value in schema.items())


def _is_text(value: Any, depth: int) -> bool:
    return isinstance(value, str)


def _is_count(value: Any, depth: int) -> bool:  # the meta-schema's nonNegativeInteger, in its plainest form
    return type(value) is int and value >= 0


def _is_number(value: Any, depth: int) -> bool:
    return type(value) in (int, float)


def _is_type(value: Any, depth: int) -> bool:
    if isinstance(value, list):
        return bool(value) and all(t in _SCHEMA_TYPES for t in value) and len(set(value)) == len(value)
    return value in _SCHEMA_TYPES


def _are_names(value: Any, depth: int) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value) and len(set(value)) == len(value)


_PLAIN: dict[str, Any] = {
    "type": _is_type,
    "properties": lambda v, d: isinstance(v, dict) and all(
        isinstance(k, str) and _plainly_valid(s, d + 1) for k, s in v.items()),
    "items": lambda v, d: _plainly_valid(v, d + 1),
    "additionalProperties": lambda v, d: _plainly_valid(v, d + 1),
    "required": _are_names,
    "enum": lambda v, d: isinstance(v, list), "examples": lambda v, d: isinstance(v, list),
    "const": lambda v, d: True, "default": lambda v, d: True,
    "title": _is_text, "description": _is_text, "format": _is_text, "pattern": _is_text,
    "uniqueItems": lambda v, d: isinstance(v, bool),
    "minimum": _is_number, "maximum": _is_number, "exclusiveMinimum": _is_number, "exclusiveMaximum": _is_number,
    "minLength": _is_count, "maxLength": _is_count, "minItems": _is_count, "maxItems": _is_count,
}


@cache
def _meta_schema() -> Any:
    """A validator of JSON Schemas themselves (draft 2020-12, as the Realtime API's tools and our schema)."""
    from jsonschema import Draft202012Validator  # only for flows with tools: it takes 70 ms to import

    return Draft202012Validator(Draft202012Validator.META_SCHEMA)


def _templates(action: _Action) -> Iterator[tuple[str, Loc]]:
    arg = action.arg
    if isinstance(arg, Respond):
        yield from ((getattr(arg, k), (k,)) for k in ("instructions", "input") if getattr(arg, k))
    elif isinstance(arg, ToolResult):
        yield from _strings(arg.output, ("output",))
    elif action.name == "log":
        yield arg, ()


def _strings(value: Any, loc: Loc) -> Iterator[tuple[str, Loc]]:
    """Every string inside a nested value, with its location (templates may stand in any)."""
    if isinstance(value, str):
        yield value, loc
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, loc + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, loc + (i,))


def _seconds(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}min"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _responds(actions: Iterable[_Action | None]) -> list[_Action]:
    return [a for a in actions if a is not None and a.name == "respond"]


class _Graph:
    """The checks that need the whole graph: reachability, a way to a final state, livelocks, the
    data flow of template values, and replies that wait for a transcript."""

    def __init__(self, checker: _Checker):
        self.c = checker
        self.flow, self.src, self.damage = checker.flow, checker.src, checker.damage
        self.states = self.flow.states
        self.holes: set[str] = set()  # states with a target that names no state, not even closely
        self.out: dict[str, list[_Edge]] = {name: [] for name in self.states}
        self.initial = self.flow.initial if self.flow.initial in self.states else None
        for name, state in self.states.items():
            self._edges(name, state)

    def run(self) -> None:
        reachable = self._reachable()
        self._unreachable(reachable)
        self._finals(reachable)
        self._livelocks()
        self._data_flow()
        self._transcript_waits()

    # The graph.

    def _edges(self, name: str, state: State) -> None:
        for _, tr in _present(state.transitions):
            if tr.target is not None:
                label = tr.event or f"all({', '.join(tr.all_ or [])})"
                self._edge(name, tr.target, tr.events, label, True)
        for _, timeout in _present(state.after):
            self._edge(name, timeout.target, (), f"after {_seconds(timeout.delay)}", True)
        if name in self.c.uncertain:
            targets: list[str] = []
            if not _targets(_at(self.src.data, ("states", name)), targets):
                self.holes.add(name)  # a target written as something else: where it leads is unknown
            for target in targets:
                self._edge(name, target, (), "?", False)

    def _edge(self, source: str, target: str, events: tuple[str, ...], label: str, certain: bool) -> None:
        resolved = target if target in self.states else None
        if resolved is None:  # misspelt (already reported): follow the state it most likely means
            close = difflib.get_close_matches(target, list(self.states), n=1, cutoff=0.6) \
                if len(self.states) <= 2000 else []
            resolved = close[0] if close else None
        if resolved is None:
            self.holes.add(source)
            return
        self.out[source].append(_Edge(source, resolved, events, label, certain))

    def _reachable(self) -> set[str]:
        if self.initial is None:
            return set(self.states)
        seen, todo = {self.initial}, [self.initial]
        while todo:
            for edge in self.out[todo.pop()]:
                if edge.target not in seen:
                    seen.add(edge.target)
                    todo.append(edge.target)
        return seen

    # Checks.

    def _unreachable(self, reachable: set[str]) -> None:
        if self.initial is None or self.holes:
            return  # a target that names nothing may be the way in; reporting would only echo it
        for name in self.states:
            if name not in reachable:
                self.src.at(("states", name), f"state '{name}' is unreachable from '{self.initial}'", key=True)

    def _finals(self, reachable: set[str]) -> None:
        """Every state the interview can reach can still reach a final state."""
        ends = {n for n, s in self.states.items() if s.final} | self.c.maybe_final | self.holes
        if not ends:
            return  # "no final state" says it already
        into: dict[str, list[str]] = {name: [] for name in self.states}
        for edges in self.out.values():
            for edge in edges:
                into[edge.target].append(edge.source)
        seen, todo = set(ends), list(ends)
        while todo:
            for source in into[todo.pop()]:
                if source not in seen:
                    seen.add(source)
                    todo.append(source)
        for name in self.states:
            if name in reachable and name not in seen:
                self.src.at(("states", name), f"state '{name}' cannot reach a final state", key=True)

    def _livelocks(self) -> None:
        """Cycles of states that only pass time: each leaves by its own `after:`, none waits."""
        nxt: dict[str, str] = {}
        for name, state in self.states.items():
            if state.final or name in self.c.uncertain or name in self.holes or not any(_present(state.after)):
                continue
            transitions = [tr for _, tr in _present(state.transitions)]
            actions = [a for _, a in _present(state.enter)] + [a for tr in transitions for _, a in _present(tr.actions)]
            actions += [a for _, t in _present(state.after) for _, a in _present(t.actions)]
            if any(tr.target is not None for tr in transitions) or any(a.name == "end" for a in actions):
                continue
            first = min((t for _, t in _present(state.after)), key=lambda t: t.delay)  # the one that fires
            if first.target in self.states:
                nxt[name] = first.target
        order = {name: i for i, name in enumerate(self.states)}
        done: set[str] = set()
        for start in self.states:
            path: dict[str, int] = {}  # state -> its place on this walk
            at: str | None = start
            while at is not None and at in nxt and at not in done and at not in path:
                path[at] = len(path)
                at = nxt[at]
            done.update(path)
            if at is not None and at in path:
                cycle = list(path)[path[at]:]
                names = " -> ".join(f"'{n}'" for n in [*cycle, cycle[0]])
                first_state = min(cycle, key=order.__getitem__)
                what = (f"state '{cycle[0]}' leaves only by its own `after:` back into itself"
                        if len(cycle) == 1 else f"states {names} leave only by `after:` timeouts")
                self.src.at(("states", first_state), f"{what} and none waits for an event: the session loops "
                            f"until max_duration (a livelock); give one of them a transition on an event",
                            key=True)

    # Template values: a must-happen data flow over the graph.

    def _data_flow(self) -> None:
        if not self.c.uses or self.initial is None:
            return
        facts = self._facts()
        witnesses: dict[str, dict[tuple[str, bool], tuple[str, bool, _Edge] | None]] = {}
        reported: set[tuple[Loc, str]] = set()
        for use in self.c.uses:
            entry = facts.get(use.state)
            if entry is None:
                continue  # unreachable, or reached only through a damaged part
            if use.when == "transition":
                assert use.transition is not None
                present = use.fact in _gen(entry, use.transition.events, self._props)
            elif use.when == "exit":
                exits = [e for e in self.out[use.state] if e.certain]
                present = all(use.fact in _gen(entry, e.events, self._props) for e in exits) if exits \
                    else use.fact in entry
            else:
                present = use.fact in entry
            if present or (use.loc, use.name) in reported:
                continue
            reported.add((use.loc, use.name))
            self._report_missing(use, witnesses)

    def _props(self, tool: str) -> frozenset[str]:
        for _, t in _present(self.flow.session.tools):
            if t.name == tool:
                props = t.parameters.get("properties")
                return frozenset(props) if isinstance(props, dict) else frozenset()
        return frozenset()

    def _facts(self) -> dict[str, frozenset[str]]:
        """For each state, what has happened on every path into it (None: not reached yet)."""
        assert self.initial is not None
        facts: dict[str, frozenset[str] | None] = dict.fromkeys(self.states)
        facts[self.initial] = frozenset()
        todo = deque([self.initial])
        while todo:
            name = todo.popleft()
            here = facts[name]
            assert here is not None
            for edge in self.out[name]:
                if not edge.certain:
                    continue  # unknown events: assume they bring everything (no echo downstream)
                new = _gen(here, edge.events, self._props)
                old = facts[edge.target]
                merged = new if old is None else old & new
                if merged != old:
                    facts[edge.target] = merged
                    todo.append(edge.target)
        return {k: v for k, v in facts.items() if v is not None}

    def _report_missing(self, use: _Use, witnesses: dict[str, Any]) -> None:
        kind, _, what = use.fact.partition(":")
        head = f"template {{{use.name}}} in state '{use.state}'"
        if kind == "arg" and not any(what in self._props(t.name) for _, t in _present(self.flow.session.tools)):
            self.src.at(use.loc, f"{head}: no tool declares a parameter '{what}' (under parameters.properties)")
            return
        if use.fact not in witnesses:
            witnesses[use.fact] = self._search(use.fact)
        parent = witnesses[use.fact]
        needed = {"transcript": "an input.transcript (the candidate's words)",
                  "job": f"job.{what}.done", "arg": self._tool_calls(what)}[kind]
        if (use.state, False) not in parent:  # present on entry; an event of this step replaced the arguments
            self.src.at(use.loc, f"{head} may have no value: {self._step(use)} brings other tool arguments, "
                                 f"without '{what}'")
            return
        self.src.at(use.loc, f"{head} may have no value: {self._path(parent, use.state)} without {needed}, "
                             f"and the session would end there")

    def _step(self, use: _Use) -> str:
        if use.transition is not None:
            return use.transition.event or f"all({', '.join(use.transition.all_ or [])})"
        return "leaving the state by " + " or ".join(e.label for e in self.out[use.state] if e.certain)

    def _tool_calls(self, arg: str) -> str:
        tools = [t.name for _, t in _present(self.flow.session.tools) if arg in self._props(t.name)]
        return " or ".join(f"tool.{t}" for t in tools) + " (a tool call with that argument)"

    def _search(self, fact: str) -> dict[tuple[str, bool], tuple[str, bool, _Edge] | None]:
        """Breadth-first over (state, fact present): the shortest way to each state without it."""
        assert self.initial is not None
        start = (self.initial, False)
        parent: dict[tuple[str, bool], tuple[str, bool, _Edge] | None] = {start: None}
        todo = deque([start])
        while todo:
            name, has = todo.popleft()
            for edge in self.out[name]:
                after = True if not edge.certain else fact in _gen(frozenset([fact] if has else []),
                                                                    edge.events, self._props)
                node = (edge.target, after)
                if node not in parent:
                    parent[node] = (name, has, edge)
                    todo.append(node)
        return parent

    def _path(self, parent: dict[tuple[str, bool], tuple[str, bool, _Edge] | None], state: str) -> str:
        hops: list[str] = []
        node: tuple[str, bool] | None = (state, False)
        while node is not None and parent.get(node) is not None:
            name, has, edge = parent[node]  # type: ignore[misc]
            hops.append(f" -[{edge.label}]-> {edge.target}")
            node = (name, has)
        hops.reverse()
        if len(hops) > _PATH_HOPS:
            hops = hops[: _PATH_HOPS // 2] + [" ..."] + hops[-_PATH_HOPS // 2:]
        if not hops:
            return f"the interview starts in '{state}'"
        return f"the path {self.initial}{''.join(hops)} reaches it"

    # Replies that wait for the transcript.

    def _transcript_waits(self) -> None:
        for name, state in self.states.items():
            for i, tr in _present(state.transitions):
                if "input.transcript" not in tr.events:
                    continue
                replies = _responds(a for _, a in _present(tr.actions))
                if tr.target is not None and tr.target in self.states:
                    replies += _responds(a for _, a in _present(state.exit))
                    replies += _responds(a for _, a in _present(self.states[tr.target].enter))
                if not replies:
                    continue
                loc = ("states", name, "transitions", i, "event" if tr.event else "all")
                words = any("last_answer" in n.split(".")[0] for a in replies for text, _ in _templates(a)
                            for n in template_names(text))
                if words:
                    self.src.at(loc, "this reply waits for the candidate's transcript (the transcription delay, "
                                     "often 0.3-1.5 s) since it uses {last_answer}", warning=True)
                else:
                    self.src.at(loc, "this reply waits for the candidate's transcript (the transcription delay, "
                                     "often 0.3-1.5 s); move on `input.committed` to reply as soon as the turn "
                                     "ends", warning=True)


def _gen(facts: frozenset[str], events: Iterable[str], props: Any) -> frozenset[str]:
    """What has happened once `events` happened too (a tool call replaces the last one's args)."""
    out = set(facts)
    args: frozenset[str] | None = None
    for event in events:
        if event == "input.transcript":
            out.add("transcript")
        elif event.startswith("job.") and event.endswith(".done"):
            out.add(f"job:{event[4:-5]}")
        elif event.startswith("tool."):
            mine = props(event[5:])
            args = mine if args is None else args & mine  # a join of two calls: either may be last
    if args is not None:
        out = {f for f in out if not f.startswith("arg:")} | {f"arg:{a}" for a in args}
    return frozenset(out)


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _written_tool_names(data: Any) -> set[str]:
    tools = _at(data, ("session", "tools"))
    if not isinstance(tools, list):
        return set()
    return {t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)}


def _targets(value: Any, out: list[str]) -> bool:
    """Collect every `target:` written in `value`; False if one is not a name (or a list of them)."""
    ok = True
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "target" and isinstance(item, str):
                out.append(item)
            elif key == "target":
                names = item if isinstance(item, list) else [item]
                out.extend(n for n in names if isinstance(n, str))
                ok = ok and all(isinstance(n, str) for n in names)
            else:
                ok = _targets(item, out) and ok
    elif isinstance(value, list):
        for item in value:
            ok = _targets(item, out) and ok
    return ok
