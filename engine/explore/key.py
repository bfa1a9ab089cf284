"""The explorer's state key: what of a (core, world) pair decides everything that can follow.

Two states with equal keys have the same futures (up to the names of ids and the texts of logs),
so the search explores one of them. The key is read from `Interview.snapshot()` by its layout
(interview.py `snapshot`: the `Model` fields in order, then the gate's, the playback's, the facts'
and the recent-ids' snapshots) and from the world:

1. Times are made relative to `now` (every deadline, timer and bound); absolute session time only
   matters through `max_duration`, which the explorer never lets arrive (see search.py).
2. Ids are renamed by their first appearance (responses, items, calls, request tags), and ids the
   world will never name again (finished responses past their late events) are dropped from the
   sets that are only looked up by id (`finished`, `answers`, `ended`, ...).
3. Non-behavioural data is dropped: turn texts and timestamps, stale records, event-id counters,
   counts, log-once sets, rendered instructions. What remains of the facts is what a guard or a
   template can see: the answer count (capped at the flow's highest guard threshold), whether
   each template name resolves, which candidate turns still await a transcript.
4. The world's budgets (faults and answers left, whether time may still pass half way, and what a
   fault may still be injected into) are not in the key but beside it (`budgets`): a state with
   more left can do all the other can, so it stands for it (search.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..conversation import Model
from ..facts import thaw
from ..flow import Flow, template_names
from .world import Shape, World, _flow_texts, response_bound

__all__ = ["Keyer"]

_M = {f.name: i for i, f in enumerate(dataclasses.fields(Model))}
_STATE, _ASKING, _SEEN, _ASKED, _HELD, _DEADLINES, _JOBS, _HOLDS = (
    _M[n] for n in ("state", "asking", "seen", "asked", "held", "deadlines", "jobs", "holds"))


class Keyer:
    """Computes keys for one flow (its guard thresholds and template names, computed once)."""

    def __init__(self, flow: Flow, shape: Shape):
        points: set[int] = set()
        for g in flow.guards.values():
            if g.min_answers is not None:
                points.add(g.min_answers)
            if g.max_answers is not None:
                points.add(g.max_answers + 1)
        # Answers beyond the highest threshold are all alike; below it each count differs (in how
        # many more answers reach the threshold).
        self._cap = max(points, default=0)
        self._names = sorted({tuple(n.split(".")) for text in _flow_texts(flow) for n in template_names(text)})
        self._resolves: dict[tuple[Any, Any], tuple[bool, ...]] = {}
        self._shape = shape

    def key(self, snap: tuple[Any, ...], world: World) -> tuple[Any, ...]:
        if world.over is not None:
            return ("over", world.over)
        _, model, gate, playback, facts, _recent = snap
        now = world.now
        names: dict[str, int] = {}
        w = self._world_key(world, names)
        live = dict(names)  # everything the world may still name
        g = self._gate_key(gate, now, names, live)
        m = self._model_key(model, now, names, live)  # after the gate: the request tags are named
        return (w, m, g, self._playback_key(playback, now, names, live), self._facts_key(facts, world, names, live))

    # The world.

    def _world_key(self, w: World, names: dict[str, int]) -> tuple[Any, ...]:
        now = w.now
        nm = names.setdefault
        # A response's two time bases (its last event, its audio) only act through its bound.
        responses = []
        for r in w.responses:
            rid, item = nm(r.rid, len(names)), nm(r.item, len(names))
            tag = None if r.tag is None else nm(r.tag, len(names))
            responses.append((rid, item, tag, r.state, r.tools, r.phase, tuple(sorted(r.sent)),
                              round(response_bound(r) - now, 6), r.tagged, r.cancel, _call(r, names), r.auto))
        creates = tuple((nm(c.tag, len(names)), c.state, round(c.sent - now, 6), c.tools) for c in w.creates)
        # Only the head's report bound is a time that matters; the entries behind start when their
        # turn comes (their ended times are all in the past by then).
        playq = tuple((nm(rid, len(names)), seconds, ended is not None) for rid, _, seconds, ended in w.playq)
        heard_by = w.heard_by()
        stops = tuple((None if e.response_id is None else nm(e.response_id, len(names)), e.data.get("played_ms"),
                       tuple(nm(r, len(names)) for r in e.data.get("dropped", ()))) for e in w.stops)
        cand = (w.cand, None if w.item is None else nm(w.item, len(names)),
                None if w.pending_tx is None else nm(w.pending_tx, len(names)))
        owed = tuple((nm(c, len(names)), st) for c, st in w.owed)
        muted = tuple(sorted(nm(r, len(names)) for r in w.muted if r in _names_of(w))) if w.muted else ()
        heard = tuple(sorted(nm(r, len(names)) for r in w.heard)) if w.heard else ()
        # The budgets (faults and answers left) are not in the key: a state with more of both left
        # covers the same state with less (search.py keeps the largest seen per key).
        refusals = tuple((nm(e, len(names)), round(t - now, 6)) for e, t in w.refusals)
        return (tuple(responses), creates, playq, None if heard_by is None else round(heard_by - now, 6), stops,
                muted, cand, tuple(sorted(w.jobs)), owed, w.closed, heard, w.fallback, refusals)

    def budgets(self, world: World, key: tuple[Any, ...]) -> tuple[int, int, bool, Any]:
        """What the world may still do beside its key: faults left, answers given, whether time
        already passed half way in this interval, and what the faults may still be injected into
        (the last finished response, what the last move started). A state covers another with its
        key if it has at least as many faults left, at most as many answers given, may pass if the
        other may, and (when the other has a fault left) the same fault context."""
        if world.faults <= 0 or key[0] == "over":
            return world.faults, world.given, world.passed, None
        names: dict[str, int] = {}
        self._world_key(world, names)  # the same names as the key's

        def ren(x: str) -> int:
            return names.setdefault(x, len(names))

        kinds = self._shape.kinds
        late = None
        r = world.recent
        if (r is not None and "late" in kinds and r.tag is not None and "audio" in r.sent
                and "transcript.done" not in r.sent):
            late = (ren(r.rid), ren(r.item), ren(r.tag))  # its transcript.done may still come, late
        # What the last move started, as far as an enabled fault can use it (the no-op late events
        # after a done are only recorded by the core, so they need no context).
        just = []
        for x in world.just:
            if x == "sent" and world.creates and kinds & {"lost-created", "collision", "stray"}:
                just.append("sent")
            elif x.startswith("open ") and "rate-limited" in kinds:
                just.append(f"open {ren(x[5:])}")
            elif x == "done" and "own-response" in kinds and not world.busy():
                just.append("done")
        return world.faults, world.given, world.passed, (late, tuple(sorted(just)))


    # The core, by the snapshot's layout.

    def _model_key(self, model: tuple[Any, ...], now: float, named: dict[str, int],
                   live: dict[str, int]) -> tuple[Any, ...]:
        # A tag the gate and the world no longer know answers nothing that can still arrive.
        asked = tuple(sorted(named[t[1]] for t in model[_ASKED][1] if t[1] in named))
        held = tuple(sorted((live[rid], events) for rid, events in model[_HELD][1] if rid in live))
        deadlines = tuple(sorted((round(d[1][0][1] - now, 6), d[1][1][1]) for d in model[_DEADLINES][1]))
        jobs = tuple(sorted((name, round(t[1] - now, 6)) for name, t in model[_JOBS][1]))
        holds = tuple(sorted((name, round(t[1] - now, 6)) for name, t in model[_HOLDS][1]))
        # `timeouts` is left out: it only turns the final outcome `completed` into
        # `completed_degraded`, which no property reads.
        return (model[_STATE][1], model[_ASKING][1], model[_SEEN], asked, held, deadlines, jobs, holds)

    def _gate_key(self, gate: tuple[Any, ...], now: float, names: dict[str, int],
                  live: dict[str, int]) -> tuple[Any, ...]:
        state, requests, queue, pending, progress, unknown, answers, finished, superseded, probes = gate
        nm = names.setdefault
        reqs = tuple((nm(tag, len(names)), asker, dict(body).get("tool_choice") if body else None, collisions,
                      rate_limits, max(0.0, round(not_before - now, 6)) if not_before else 0.0, wanted)
                     for tag, asker, body, collisions, rate_limits, not_before, wanted in requests)
        return (state, reqs, tuple(nm(t, len(names)) for t in queue),
                None if pending is None else (nm(pending[0], len(names)), round(pending[2] - now, 6)),
                tuple(sorted((nm(rid, len(names)), round(t - now, 6)) for rid, t in progress)),
                None if unknown is None else round(unknown - now, 6),
                tuple(sorted((live[rid], nm(tag, len(names))) for rid, tag in answers if rid in live)),
                tuple(sorted(live[r] for r in finished if r in live)),
                tuple(sorted(live[r] for r in superseded if r in live)),
                tuple(sorted((nm(eid, len(names)), nm(rid, len(names))) for eid, rid in probes)))

    def _playback_key(self, pb: tuple[Any, ...], now: float, names: dict[str, int],
                      live: dict[str, int]) -> tuple[Any, ...]:
        items, responses, heard, ended, playing, silenced, hangup, hangup_at = pb
        nm = names.setdefault
        return (tuple(sorted((live[i], b) for i, b in items if i in live)),
                tuple(sorted((nm(r, len(names)), b) for r, b in responses if r in live or r in playing)),
                tuple(sorted((live[i], ms) for i, ms in heard if i in live)),
                tuple(sorted(live[r] for r in ended if r in live)),
                tuple(sorted(nm(r, len(names)) for r in playing)),
                tuple(sorted(live[r] for r in silenced if r in live)),
                hangup, round(hangup_at - now, 6) if hangup_at != _INF else None)

    def _facts_key(self, facts: tuple[Any, ...], world: World, names: dict[str, int],
                   live: dict[str, int]) -> tuple[Any, ...]:
        turns, results, args, call_id, answers, candidate, ended, _speech, _names, handled = facts
        resolves = self._resolves.get((results, args))
        if resolves is None:
            resolves = self._resolves[(results, args)] = self._resolve(thaw(results), thaw(args))
        ended_set = set(ended)
        awaiting = False
        if ended_set:
            for turn in turns[1]:
                t = dict(turn[1])
                if (t["role"][1] == "candidate" and t["item_id"][1] in ended_set and not t["transcribed"][1]
                        and "transcript_failed" not in t):
                    awaiting = True
                    break
        mine = []
        if world.item is not None or world.pending_tx is not None:
            index = dict(candidate)
            for item in (world.item, world.pending_tx):
                if item is None:
                    continue
                turn = dict(turns[1][index[item]][1]) if item in index else None
                mine.append((names.setdefault(item, len(names)), item in ended_set,
                             turn is not None and turn["transcribed"][1],
                             turn is not None and "transcript_failed" in turn))
        # "Recorded once" marks matter only for what can still arrive: the responses in progress
        # (and the last finished one, while a late event of it may come).
        open_ids = self._open_ids(world)
        marks = tuple(sorted((kind, live[x]) for kind, x in handled if x in open_ids and x in live))
        return (min(answers, self._cap), resolves, awaiting, tuple(mine), marks,
                None if call_id is None else live.get(call_id, -1))

    def _open_ids(self, world: World) -> set[str]:
        ids: set[str] = set()
        rs = list(world.responses)
        if world.recent is not None and world.faults > 0 and "late" in self._shape.kinds:
            rs.append(world.recent)
        for r in rs:
            ids.update((r.rid, r.item))
            if r.call is not None:
                ids.add(r.call[0])
        return ids

    def _resolve(self, results: dict[str, Any], args: dict[str, Any]) -> tuple[bool, ...]:
        context: dict[str, Any] = {"answers": 0, "last_answer": "", "tool": args, **results}
        out = []
        for parts in self._names:
            found: Any = context
            for part in parts:
                if not (isinstance(found, dict) and part in found):
                    found = _MISSING
                    break
                found = found[part]
            out.append(found is not _MISSING)
        return tuple(out)


_MISSING = object()
_INF = float("inf")


def _call(r: Any, names: dict[str, int]) -> Any:
    """A response's tool call: its arguments matter only while the core has not seen the call
    (its event was lost: response.done will list it)."""
    if r.call is None:
        return None
    call = names.setdefault(r.call[0], len(names))
    return (call, r.call[1], r.call[2]) if "tool lost" in r.sent else call


def _names_of(w: World) -> set[str]:
    """Response ids the world may still name (in progress, last finished, queued for playback)."""
    ids = {r.rid for r in w.responses} | {rid for rid, _, _, _ in w.playq}
    if w.recent is not None:
        ids.add(w.recent.rid)
    return ids
