"""Misbehaviour the simulator can inject (`--faults`), parsed and bounded.

Frame counts (the `*_after` faults) count every frame the server sent, session.created included.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Faults", "MAX_COUNT", "MAX_SECONDS"]

MAX_COUNT = 1_000_000  # no session sends or receives more frames than this in a test
MAX_SECONDS = 3600.0  # one hour of simulated delay is already far past any flow's timeout


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject, from a spec such as ``"shuffle_done,slow_done=2,collision=2"``.

    Flags take no value; numbers must be positive, finite and at most MAX_COUNT (counts) or
    MAX_SECONDS (seconds). 0 means off for the numeric ones.
    """

    shuffle_done: bool = False  # shuffle the done group of a spoken item; sometimes transcript.done after response.done
    drop_transcript_done: bool = False  # never send response.output_audio_transcript.done
    duplicate: bool = False  # send some frames twice with the same event_id, every other response.done among them
    unknown_events: bool = False  # interleave events of types no client knows
    garbage: bool = False  # interleave frames that are not JSON objects
    slow_done: float = 0.0  # delay response.done by this many simulated seconds
    collision: int = 0  # on the K-th response.create the model starts speaking on its own first
    rate_limit: int = 0  # the K-th response.create fails with rate_limit_exceeded
    disconnect_after: int = 0  # after N frames: close with 1011 (an internal error)
    close_after: int = 0  # after N frames: a normal close, 1000
    abort_after: int = 0  # after N frames: drop the TCP connection, no close frame
    freeze_after: int = 0  # after N frames: send nothing more and stop reading (pings go unanswered)
    bad_utf8_after: int = 0  # after N frames: one text frame that is not UTF-8 (the client must close, 1007)
    expire_after: int = 0  # after N frames: error session_expired, then close 1001

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Parse a comma-separated spec; raise ValueError (one line, naming the fault) if it is bad."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            name, has_value, raw = (s.strip() for s in entry.partition("="))
            if name not in kinds:
                close = difflib.get_close_matches(name, kinds, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known faults: {', '.join(kinds)}"
                raise ValueError(f"unknown fault {name!r}{hint}")
            if name in values:
                raise ValueError(f"fault {name!r} given twice")
            values[name] = _value(name, str(kinds[name]), raw if has_value else None)
        return cls(**values)

    @property
    def ends_connection(self) -> bool:
        return any((self.disconnect_after, self.close_after, self.abort_after, self.freeze_after, self.expire_after))

    def __str__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is True:
                parts.append(f.name)
            elif value:
                parts.append(f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
        return ",".join(parts)


def _value(name: str, kind: str, raw: str | None) -> bool | int | float:
    if kind == "bool":
        if raw is not None:
            raise ValueError(f"fault {name!r} takes no value, got {name}={raw[:40]}")
        return True
    seconds = kind == "float"
    what = f"a number of seconds, 0 < x <= {MAX_SECONDS:g}" if seconds else f"a whole number, 1 to {MAX_COUNT}"
    if raw is None:
        raise ValueError(f"fault {name!r} needs a value: {name}=<{what}>")
    shown = raw if len(raw) <= 40 else raw[:37] + "..."
    value: float | int | None
    try:
        value = float(raw) if seconds else int(raw) if len(raw) <= 20 else None
    except ValueError:
        value = None
    limit = MAX_SECONDS if seconds else MAX_COUNT
    if value is None or not math.isfinite(value) or not 0 < value <= limit:
        raise ValueError(f"fault {name!r} needs {what}, got {shown!r}")
    return value
