"""An explicit state machine that interviews by voice over the OpenAI Realtime API.

The core is sans-I/O: events and time in, effects out (`Interview`); drivers own sockets, sound,
threads and files.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import EngineError, FlowError, LocalProtocolError, ProtocolError, RemoteProtocolError, TemplateError

if TYPE_CHECKING:
    from .events import Event
    from .flow import Flow, load
    from .interview import Interview

__all__ = [
    "EngineError",
    "Event",
    "Flow",
    "FlowError",
    "Interview",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "TemplateError",
    "load",
]

# Imported on first use: `engine --help` and `engine check` need neither the core nor pydantic's
# model building of modules they do not use (PEP 562).
_LAZY = {"Event": "events", "Flow": "flow", "load": "flow", "Interview": "interview"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
