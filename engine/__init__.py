"""An explicit state machine that interviews by voice over the OpenAI Realtime API.

The core is sans-I/O: events and time in, effects out (`Interview`); drivers own sockets, sound,
threads and files.
"""

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
