"""Breadth-first exploration of a flow through the real core, and the properties read off it.

Rules of this module:
1. The core is driven only through its public API: `start`, `receive`, `advance`,
   `next_deadline`, `snapshot` and `Interview.restore` (every branch forks a snapshot). The key
   (key.py) reads the snapshot by its documented layout.
2. Breadth-first, so the first time a property fails it fails on a shortest input sequence; each
   (property, state) is reported once. States with equal keys are merged.
3. The only clock read is the wall-clock budget (`Bounds.budget`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..conversation import Model
from ..effects import Effect
from ..flow import Flow
from ..gate import SILENCE_RELEASE, UNKNOWN_ACTIVE_WAIT
from ..interview import Interview
from ..replay import edges
from .key import Keyer
from .world import CANDIDATE, FAULTS, Finding, Move, Shape, World

__all__ = ["Bounds", "Result", "Violation", "Warning_", "explore", "rerun", "reach", "Step"]

_M = {f.name: i for i, f in enumerate(dataclasses.fields(Model))}
_SEEN, _STARTED, _DEADLINES, _JOBS, _HOLDS = (_M[n] for n in ("seen", "started", "deadlines", "jobs", "holds"))
_CHECK_EVERY = 256  # children between two looks at the wall clock


@dataclass(frozen=True)
class Bounds:
    answers: int = 1  # candidate turns per path
    depth: int = 400  # moves per path
    budget: float = 60.0  # seconds of wall-clock time
    faults: int = 0  # faults per path (lost or duplicated events, strays, collisions, ...)
    kinds: frozenset[str] = frozenset(FAULTS)  # the kinds of fault explored (world.FAULTS)


@dataclass
class Violation:
    finding: Finding
    node: int  # where it shows (the node reached by the last move)
    labels: list[str]  # the moves from the start, by label
    key: int = 0  # hash of the key of that node (a livelock's trace comes back to it)
    entry: int = -1  # a livelock: how many moves lead to the cycle (the rest go round it)


@dataclass
class Warning_:
    kind: str  # "unreachable-transition" | "unreachable-state" | "timeout-only-join"
    state: str
    via: str | None
    message: str


@dataclass
class Result:
    flow: Flow
    bounds: Bounds
    answers: int
    explored: int = 0  # states expanded
    distinct: int = 0  # distinct keys
    transitions: int = 0  # edges computed between states
    fired: set[str] = field(default_factory=set)  # vias of the flow taken on some path
    violations: list[Violation] = field(default_factory=list)
    warnings: list[Warning_] = field(default_factory=list)
    complete: bool = True  # False: the depth or the budget cut the search
    cut: str = ""  # what cut it
    seconds: float = 0.0
    visited: dict[str, int] = field(default_factory=dict)  # moves taken, by kind (their label)
    tree: list[tuple[int, str, str]] = field(default_factory=list)  # per state: (parent, move label, flow state)
    edges: list[tuple[int, str, int]] = field(default_factory=list)  # (from, move label, to) if asked for
    keys: list[int] = field(default_factory=list)  # per state: the hash of its key (budgets aside)

    def path(self, node: int) -> list[str]:
        """The labels of the moves that first reached `node`."""
        out = []
        while node > 0:
            parent, label, _ = self.tree[node]
            out.append(label)
            node = parent
        return out[::-1]

    @property
    def flow_transitions(self) -> int:
        return sum(1 for e in edges(self.flow) if e.via != "initial")

    @property
    def covered(self) -> int:
        return sum(1 for e in edges(self.flow) if e.via != "initial" and e.via in self.fired)


@dataclass
class _Node:
    parent: int
    label: str
    depth: int
    state: str
    closed: bool = False  # the connection is gone: what follows is no matter of the flow's liveness
    key: int = 0  # hash of its key (a rerun checks it arrives at the same state)


@dataclass(frozen=True)
class Step:
    """One move of a rerun: its inputs and, after each, the effects the core produced."""

    move: Move
    outputs: list[tuple[float, Any, list[Effect]]]  # (t, event or None, effects)
    findings: list[Finding]
    key: int = 0  # hash of the state's key after the move


def _deadline(iv: Interview, snap: tuple[Any, ...], shape: Shape) -> tuple[float | None, float | None, int]:
    """The core's next deadline, unless it is only the max_duration limit (never let arrive: a
    session that only that limit would end is a livelock or a stall, reported as such); and the
    earliest of the flow's own timers, read from the snapshot (state timeouts, jobs, holds, the
    hang-up wait)."""
    d = iv.next_deadline()
    model = snap[1]
    started = model[_STARTED][1]
    if d is None or (started is not None and d >= started + shape.max_duration):
        d = None
    timers = [t[1][0][1] for t in model[_DEADLINES][1]]
    timers += [t[1] for _, t in model[_JOBS][1]] + [t[1] for _, t in model[_HOLDS][1]]
    hangup_at = snap[3][7]
    if hangup_at != float("inf"):
        timers.append(hangup_at)
    return d, min(timers, default=None), len(snap[2][2])  # and the gate's queue (its layout: gate.snapshot)


def _feed(iv: Interview, world: World, move: Move, shape: Shape, fired: set[str],
          findings: list[Finding], outputs: list[tuple[float, Any, list[Effect]]] | None = None) -> None:
    world.step(move)
    for t, event in move.inputs:
        world.now = t
        effects = iv.advance(t) if event is None else iv.receive(event, t)
        if outputs is not None:
            outputs.append((t, event, effects))
        world.apply(effects, shape, fired, findings, iv.state)


def explore(flow: Flow, bounds: Bounds = Bounds(), *, edges: bool = False) -> Result:
    """Every order of events the world can produce for `flow`, within `bounds`. With `edges`,
    `Result.edges` lists every transition taken, merged ones too (for tests of the model)."""
    shape = Shape.of(flow, bounds.answers, bounds.faults, bounds.kinds)
    keyer = Keyer(flow, shape)
    result = Result(flow, bounds, shape.answers)  # 0 if the flow never listens to the candidate
    t0 = time.monotonic()

    iv = Interview(flow)
    world = World(faults=bounds.faults)
    findings: list[Finding] = []
    world.apply(iv.start(0.0), shape, result.fired, findings, iv.state)
    snap = iv.snapshot()
    nodes = [_Node(-1, "start", 0, iv.state, key=hash(keyer.key(snap, world)))]
    # key -> the nodes with that key and their budgets (faults, answers left); a new state whose
    # budgets are both at most those of a node with its key is that node.
    root_key = keyer.key(snap, world)
    keys: dict[tuple[Any, ...], list[tuple[int, tuple[int, int, bool, Any]]]] = {
        root_key: [(0, keyer.budgets(world, root_key))]}
    succ: list[list[int]] = [[]]
    tsucc: list[list[tuple[int, str]]] = [[]]  # time edges: (child, label)
    terminal: dict[int, str] = {}
    expanded: set[int] = set()
    reported: set[tuple[str, str]] = set()

    stuck: set[int] = set()  # nodes where a stall or a livelock was found

    def report(fs: list[Finding], node: int, labels: list[str], entry: int = -1) -> None:
        for f in fs:
            if f.prop in ("stall", "livelock"):
                stuck.add(node)
            if (f.prop, f.state) not in reported:
                reported.add((f.prop, f.state))
                result.violations.append(Violation(f, node, labels, nodes[node].key, entry))

    def labels_to(node: int) -> list[str]:
        out = []
        while node > 0:
            out.append(nodes[node].label)
            node = nodes[node].parent
        return out[::-1]

    report(findings, 0, [])
    # (node, its snapshot, its world, its deadlines, its live interview if no branch has taken it)
    frontier: deque[tuple[int, tuple[Any, ...], World, tuple[float | None, float | None, int], Interview | None]]
    frontier = deque([(0, snap, world, _deadline(iv, snap, shape), iv)])
    count, out_of_time = 0, False
    while frontier and not out_of_time:
        n, snap, world, times, live = frontier.popleft()
        node = nodes[n]
        if node.depth >= bounds.depth:
            result.complete, result.cut = False, f"depth {bounds.depth}"
            continue
        deadline, timer, queued = times
        moves = world.moves(shape, deadline, timer, queued, node.state)
        _check_stall(world, shape, deadline, node.state, n, report, labels_to)
        _check_stuck(world, snap, deadline, n, report, labels_to)
        children: list[tuple[int, Move]] = []
        last = len(moves) - 1
        for i, move in enumerate(moves):
            count += 1
            if count % _CHECK_EVERY == 0 and time.monotonic() - t0 > bounds.budget:
                out_of_time = True
                break
            w = world.copy()
            fs: list[Finding] = []
            if move.inputs:
                # Fork the node's snapshot; its last move takes the node's own live interview.
                child_iv: Interview | None = live if i == last and live is not None else Interview.restore(flow, snap)
                assert child_iv is not None
                _feed(child_iv, w, move, shape, result.fired, fs)
            else:  # only the world moved (a lost response.created): the core is as it was
                child_iv = None
                w.step(move)
            result.transitions += 1
            result.visited[move.label] = result.visited.get(move.label, 0) + 1
            if w.over is not None:  # the session ended: nothing of its state matters any more
                csnap: tuple[Any, ...] = ()
                key: tuple[Any, ...] = ("over", w.over)
            else:
                csnap = child_iv.snapshot() if child_iv is not None else snap
                if move.op in ("tool", "finish"):
                    w.took_tool_call(s[1] for s in csnap[1][_SEEN][1])
                key = keyer.key(csnap, w)
            same = keys.setdefault(key, [])
            budgets = keyer.budgets(w, key)
            c = next((j for j, b in same if _covers(b, budgets)), None)
            if c is None:
                c = len(nodes)
                same.append((c, budgets))
                nodes.append(_Node(n, move.label, node.depth + 1, child_iv.state if child_iv else node.state,
                                   w.closed, hash(key)))
                succ.append([])
                tsucc.append([])
                if w.over is not None:
                    terminal[c] = w.over
                elif any(f.prop == "double-create" for f in fs):
                    terminal[c] = "violation"  # the world is inconsistent past a collision
                elif child_iv is None:
                    frontier.append((c, csnap, w, times, None))
                else:
                    frontier.append((c, csnap, w, _deadline(child_iv, csnap, shape), child_iv))
            if fs:
                report(fs, c, labels_to(n) + [move.label])
            children.append((c, move))
            if edges:
                result.edges.append((n, move.label, c))
        if out_of_time:  # a node half expanded counts as not expanded
            frontier.appendleft((n, snap, world, times, None))
            break
        expanded.add(n)
        result.explored += 1
        succ[n] = [c for c, _ in children]
        tsucc[n] = [(c, m.label) for c, m in children if m.time]
    if frontier:
        result.complete = False
        result.cut = f"budget {bounds.budget:g}s" if out_of_time else result.cut or f"depth {bounds.depth}"
    result.distinct = len(nodes)
    result.tree = [(x.parent, x.label, x.state) for x in nodes]
    result.keys = [x.key for x in nodes]
    unexpanded = {i for i in range(len(nodes)) if i not in expanded and i not in terminal}
    stuck |= _check_livelock(nodes, tsucc, expanded, report, labels_to)
    _check_final(nodes, succ, terminal, unexpanded | stuck, expanded, report, labels_to)
    result.warnings = _coverage_warnings(flow, result, nodes)
    result.seconds = time.monotonic() - t0
    return result


def _covers(a: tuple[int, int, bool, Any], b: tuple[int, int, bool, Any]) -> bool:
    """A state with budgets `a` can do all that one with budgets `b` (and the same key) can."""
    return a[0] >= b[0] and a[1] <= b[1] and (b[2] or not a[2]) and (b[0] <= 0 or a[3] == b[3])


def _check_stall(world: World, shape: Shape, deadline: float | None, state: str, n: int, report: Any,
                 labels_to: Any) -> None:
    """Nothing can happen: no deadline, nothing the world has started, no event the state awaits
    that may still come (the candidate may always speak; a running job may report)."""
    if deadline is not None or not world.quiet() or world.over is not None:
        return
    triggers = shape.triggers.get(state, frozenset())
    possible = {f"job.{j}.{end}" for j in world.jobs for end in ("done", "failed")}
    if not world.closed:
        possible |= CANDIDATE
    if triggers & possible:
        return
    waits = ", ".join(sorted(triggers)) or "nothing"
    report([Finding("stall", state, f"no deadline is pending and none of the events it waits for ({waits}) "
                                    f"can come")], n, labels_to(n))


def _check_stuck(world: World, snap: tuple[Any, ...], deadline: float | None, n: int, report: Any,
                 labels_to: Any) -> None:
    """The server is free, a request of the flow waits in the gate (no backoff holds it), and the
    core means to wait longer than the gate's own release bound: the request is stuck."""
    if world.busy() or world.closed or world.over is not None or not snap:
        return
    _, requests, queue, *_ = snap[2]  # gate.snapshot: state, requests, queue, ...
    if not queue:
        return
    waiting = {r[0]: r for r in requests}
    head = waiting.get(queue[0])
    if head is None or head[5] > world.now:  # not_before: a backoff holds it
        return
    if deadline is None or deadline > world.now + SILENCE_RELEASE + UNKNOWN_ACTIVE_WAIT:
        report([Finding("stuck-request", head[1], f"its request {head[0]} waits while the server is free, and "
                                                  f"nothing is due to send it")], n, labels_to(n))


def _check_livelock(nodes: list[_Node], tsucc: list[list[tuple[int, str]]], expanded: set[int], report: Any,
                    labels_to: Any) -> set[int]:
    """Cycles of time moves alone: timeouts bouncing with no event from outside. Returns the
    nodes on them."""
    cycling: set[int] = set()
    for component in _cycles(tsucc, expanded):
        entry = min(component, key=lambda i: nodes[i].depth)
        cycle = _cycle_labels(entry, component, tsucc)
        states = sorted({nodes[i].state for i in component})
        cycling |= component
        path = labels_to(entry)
        report([Finding("livelock", nodes[entry].state,
                        f"timeouts alone cycle through {', '.join(repr(s) for s in states)} and never end the "
                        f"session")], entry, path + cycle, len(path))
    return cycling


def _cycles(tsucc: list[list[tuple[int, str]]], expanded: set[int]) -> Iterator[set[int]]:
    """Strongly connected components of the time-edge graph that contain a cycle (Tarjan, iterative)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on: set[int] = set()
    stack: list[int] = []
    counter = 0
    for root in sorted(i for i in expanded if tsucc[i]):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            recurse = False
            children = tsucc[v]
            while i < len(children):
                w = children[i][0]
                i += 1
                if w not in index:
                    work.append((v, i))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1 or any(c == v for c, _ in tsucc[v]):
                    yield comp
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])


def _cycle_labels(entry: int, component: set[int], tsucc: list[list[tuple[int, str]]]) -> list[str]:
    """The moves once around a cycle from `entry` back to it (breadth-first inside the component)."""
    back: dict[int, tuple[int, str]] = {}
    queue = deque([entry])
    seen = {entry}
    while queue:
        v = queue.popleft()
        for w, label in tsucc[v]:
            if w == entry:
                path = [label]
                while v != entry:
                    v, lab = back[v]
                    path.append(lab)
                return path[::-1]
            if w in component and w not in seen:
                seen.add(w)
                back[w] = (v, label)
                queue.append(w)
    return []


def _check_final(nodes: list[_Node], succ: list[list[int]], terminal: dict[int, str], unexpanded: set[int],
                 expanded: set[int], report: Any, labels_to: Any) -> None:
    """States from which no order of events reaches the end of the session. States the bounds left
    unexplored count as reaching it, and so do those where a stall or livelock was reported (the
    same fault, said once)."""
    pred: list[list[int]] = [[] for _ in nodes]
    for v, children in enumerate(succ):
        for w in children:
            pred[w].append(v)
    good = [i for i, kind in terminal.items() if kind != "closed"] + list(unexpanded)
    reach = set(good)
    queue = deque(good)
    while queue:
        w = queue.popleft()
        for v in pred[w]:
            if v not in reach:
                reach.add(v)
                queue.append(v)
    bad = sorted((i for i in expanded if i not in reach and not nodes[i].closed), key=lambda i: nodes[i].depth)
    for i in bad:
        report([Finding("no-final", nodes[i].state, "no order of events from here reaches a final state (only "
                                                    "a closed connection ends the session)")], i, labels_to(i))


def _coverage_warnings(flow: Flow, result: Result, nodes: list[_Node]) -> list[Warning_]:
    b = result.bounds
    bounded = f" (explored: answers {result.answers}, faults {b.faults}" + ("" if result.complete else
                                                                          f", cut by the {result.cut}") + ")"
    entered = {flow.initial} | {n.state for n in nodes}
    out: list[Warning_] = []
    for name in flow.states:
        if name not in entered:
            out.append(Warning_("unreachable-state", name, None, f"state '{name}' is never reached by any order of "
                                                                f"events{bounded}"))
    for name, state in flow.states.items():
        if name not in entered:
            continue
        joins = [i for i, tr in enumerate(state.transitions) if len(tr.events) > 1]
        taken = {e.via for e in edges(flow) if e.source == name and e.via in result.fired}
        only_timeouts = bool(taken) and all(".after[" in v for v in taken)
        for i, tr in enumerate(state.transitions):
            via = f"states.{name}.transitions[{i}]"
            if via in result.fired:
                continue
            what = f"all({', '.join(tr.events)})" if len(tr.events) > 1 else tr.events[0]
            if i in joins and only_timeouts:
                out.append(Warning_("timeout-only-join", name, via, f"state '{name}': the join {what} never "
                                    f"completes; the state is only ever left by its timeout{bounded}"))
            else:
                out.append(Warning_("unreachable-transition", name, via, f"{via} ({name} on {what}) is never "
                                    f"taken by any order of events{bounded}"))
        for i, timeout in enumerate(state.after):
            via = f"states.{name}.after[{i}]"
            if via not in result.fired:
                out.append(Warning_("unreachable-transition", name, via, f"{via} ({name} after "
                                    f"{timeout.delay:g}s) never fires: every order of events leaves '{name}' "
                                    f"earlier, so it only guards against a server or player slower than the core "
                                    f"assumes{bounded}"))
    return out


def rerun(flow: Flow, bounds: Bounds, answers: int, labels: list[str]) -> list[Step]:
    """Play a path again from a fresh core, choosing each move by its label (labels carry only
    relative times and the world's own names, so a path through merged states plays too). Each
    step has the findings of its move and, after the last, those of the state it reached."""
    return _rerun(flow, bounds, answers, labels)[0]


def reach(flow: Flow, bounds: Bounds, answers: int, labels: list[str]) -> tuple[Interview, World]:
    """The core and the world a path of moves (by label) ends in, from a fresh start."""
    _, iv, world = _rerun(flow, bounds, answers, labels)
    return iv, world


def _rerun(flow: Flow, bounds: Bounds, answers: int, labels: list[str]) -> tuple[list[Step], Interview, World]:
    shape = Shape.of(flow, answers, bounds.faults, bounds.kinds)
    keyer = Keyer(flow, shape)
    iv = Interview(flow)
    world = World(faults=bounds.faults)  # as explore() starts it
    findings: list[Finding] = []
    fired: set[str] = set()
    start = iv.start(0.0)
    world.apply(start, shape, fired, findings, iv.state)
    snap = iv.snapshot()
    steps = [Step(Move("start", "", None, ()), [(0.0, "start", start)], findings, hash(keyer.key(snap, world)))]
    for label in labels:
        move = next((m for m in world.moves(shape, *_deadline(iv, snap, shape), iv.state) if m.label == label), None)
        if move is None:
            raise LookupError(f"no move '{label}' in the rerun")
        fs: list[Finding] = []
        outputs: list[tuple[float, Any, list[Effect]]] = []
        _feed(iv, world, move, shape, fired, fs, outputs)
        snap = iv.snapshot()
        if move.op in ("tool", "finish"):
            world.took_tool_call(s[1] for s in snap[1][_SEEN][1])
        steps.append(Step(move, outputs, fs, hash(keyer.key(snap, world))))
    deadline, timer, queued = _deadline(iv, snap, shape)
    notes: list[Finding] = []

    def note(fs: list[Finding], *_: Any) -> None:
        notes.extend(fs)

    _check_stall(world, shape, deadline, iv.state, 0, note, lambda n: [])
    _check_stuck(world, snap, deadline, 0, note, lambda n: [])
    steps[-1].findings.extend(notes)
    return steps, iv, world
