"""The flow's state machine, compiled once per Flow and shared by every Interview of it.

Rules of this module:
1. One `transitions.Machine` per Flow: `compiled(flow)` builds it on first use and hands the same
   one to every session of that Flow object. The machine holds no session. Each trigger is passed
   the session's plain model (its `state` is what the machine moves) and the runner (the
   Interview) that evaluates guards and carries out actions.
2. Callbacks and conditions are the three module functions below, never closures. What a
   transition does is its `Step`, plain data attached to the transition: the table is the code.
3. Everything a session derives from the flow alone (triggers per state, timeouts, the
   session.update body, the turn-end event) is computed here, once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from transitions import EventData, Machine, Transition

from .flow import Flow

__all__ = ["Step", "CompiledFlow", "Runner", "compiled", "TURN_END"]

# The engine event that ends the candidate's turn, by `session.turn_end`.
TURN_END = {"committed": "input.committed", "speech_stopped": "speech.stopped"}


@dataclass(frozen=True, slots=True)
class Step:
    """One transition of the flow, as the machine runs it."""

    via: str  # `states.<source>.transitions[<i>]` or `states.<source>.after[<i>]`
    source: str
    target: str | None  # None: internal (no exit, no enter)
    events: tuple[str, ...]  # it fires once all of them happened in the state (a join if more than one)
    guards: tuple[str, ...]
    actions: tuple[Any, ...]
    timeout: bool = False


class Runner(Protocol):
    """What the machine calls back into, passed with each trigger (the Interview)."""

    def step_holds(self, step: Step) -> bool: ...

    def step_fires(self, step: Step, trigger: str) -> None: ...

    def state_entered(self, state: str) -> None: ...


def _runner(ev: EventData) -> Runner:
    return cast(Runner, cast(tuple[Any, ...], ev.args)[0])


def _step(ev: EventData) -> Step:
    step = cast(_StepTransition, ev.transition).step
    assert step is not None
    return step


def _holds(ev: EventData) -> bool:
    return _runner(ev).step_holds(_step(ev))


def _fire(ev: EventData) -> None:
    assert ev.event is not None
    _runner(ev).step_fires(_step(ev), ev.event.name)


def _entered(ev: EventData) -> None:
    _runner(ev).state_entered(cast(Any, ev.model).state)


class _StepTransition(Transition):
    """A `transitions` Transition that carries its Step."""

    def __init__(self, source: str, dest: str | None, conditions: Any = None, unless: Any = None, before: Any = None,
                 after: Any = None, prepare: Any = None, step: Step | None = None) -> None:
        # dest None is an internal transition (no exit, no enter); the stubs do not say so.
        super().__init__(source, cast(str, dest), conditions, unless, before, after, prepare)
        self.step = step


class _FlowMachine(Machine):
    transition_cls = _StepTransition


class CompiledFlow:
    """A Flow made ready to run: its machine and everything else a session reads from it."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.machine = _FlowMachine(model=None, states=list(flow.states), initial=flow.initial,
                                    auto_transitions=False, send_event=True, ignore_invalid_triggers=False)
        triggers: dict[str, set[str]] = {name: set() for name in flow.states}
        self.timeouts: dict[str, tuple[tuple[float, str], ...]] = {}
        for name, state in flow.states.items():
            for i, tr in enumerate(state.transitions):
                step = Step(f"states.{name}.transitions[{i}]", name, tr.target, tr.events, tuple(tr.guard),
                            tuple(tr.actions))
                for event in tr.events:
                    triggers[name].add(event)
                    self._add(event, step, conditions=[_holds])
            for i, timeout in enumerate(state.after):
                step = Step(f"states.{name}.after[{i}]", name, timeout.target, (), (), tuple(timeout.actions), True)
                self._add(f"after.{i}", step)
            self.timeouts[name] = tuple((t.delay, f"after.{i}") for i, t in enumerate(state.after))
            self.machine.get_state(name).on_enter.append(_entered)
        self.triggers = {name: frozenset(events) for name, events in triggers.items()}
        self._events = self.machine.events
        self.turn_end = TURN_END[getattr(flow.session, "turn_end", "committed")]
        self.max_duration = float(getattr(flow, "max_duration", 3600.0))
        self.session = _session_body(flow)

    def trigger(self, name: str, model: Any, runner: Runner) -> bool:
        """Fire `name` for this session: True if a transition was taken."""
        return bool(self._events[name].trigger(model, runner))

    def _add(self, trigger: str, step: Step, conditions: Sequence[Callable[[EventData], bool]] = ()) -> None:
        self.machine.add_transition(trigger, step.source, step.target, conditions=list(conditions), before=[_fire],
                                    step=step)


# Flow object -> its CompiledFlow. Keyed by identity (a Flow holds dicts, so it does not hash) and
# emptied by a weak reference when the Flow goes.
_CACHE: dict[int, tuple[weakref.ref[Flow], CompiledFlow]] = {}


def compiled(flow: Flow) -> CompiledFlow:
    """The CompiledFlow of `flow`, built on first use."""
    key = id(flow)
    entry = _CACHE.get(key)
    if entry is not None and entry[0]() is flow:
        return entry[1]
    result = CompiledFlow(flow)
    _CACHE[key] = (weakref.ref(flow, _evict(key)), result)
    return result


def _evict(key: int, cache: dict[int, Any] = _CACHE) -> Callable[[weakref.ref[Flow]], None]:
    # `cache` is bound now: at interpreter exit the module global may already be gone.
    def evict(_: weakref.ref[Flow]) -> None:
        cache.pop(key, None)
    return evict


def _session_body(flow: Flow) -> dict[str, Any]:
    """The `session` of the flow's session.update (GA shape, realtime.md §6)."""
    s = flow.session
    audio_in: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": s.turn_detection}
    if s.transcription is not None:
        audio_in["transcription"] = s.transcription
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": s.voice}},
        "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
                  for t in s.tools],
        "tool_choice": "auto",
    }
    if s.instructions is not None:
        session["instructions"] = s.instructions
    return session
