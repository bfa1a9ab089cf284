"""Exceptions, factored out so every module can raise them without import loops.

    EngineError
    ├── FlowError            the author's mistake: a flow file that cannot run (carries positions)
    ├── ProtocolError        abstract
    │   ├── LocalProtocolError   we tried an illegal move (a bug in the engine)
    │   └── RemoteProtocolError  the server sent something we cannot use
    └── TemplateError        an instruction template named something the session does not have
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EngineError",
    "FlowError",
    "Problem",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "TemplateError",
]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a flow file, printed as ``path:line:col: message``."""

    path: str
    line: int
    col: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.path}:{self.line}:{self.col}: {kind}{self.message}"


class FlowError(EngineError):
    """A flow file is invalid. ``problems`` holds every error found, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProtocolError(EngineError):
    """Abstract: somebody broke the Realtime protocol. Raise a subclass."""

    def __init__(self, *args: object):
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        super().__init__(*args)


class LocalProtocolError(ProtocolError):
    """The engine tried a move the protocol forbids in its current state."""


class RemoteProtocolError(ProtocolError):
    """The server sent an event that is malformed or impossible here; it is logged and skipped."""


class TemplateError(EngineError):
    """A template in a flow named a value the session does not have (yet)."""
