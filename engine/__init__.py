"""An explicit state machine that interviews by voice over the OpenAI Realtime API.

The core is sans-I/O: events and time in, effects out (`Interview`); drivers own sockets, sound,
threads and files.

The names below are imported on first use, so `engine --help` and other light commands do not
pay for pydantic and transitions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import EngineError, FlowError, LocalProtocolError, ProtocolError, RemoteProtocolError, TemplateError
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

_WHERE = {
    "EngineError": "errors", "FlowError": "errors", "LocalProtocolError": "errors", "ProtocolError": "errors",
    "RemoteProtocolError": "errors", "TemplateError": "errors", "Event": "events", "Flow": "flow", "load": "flow",
    "Interview": "interview",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
