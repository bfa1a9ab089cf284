"""The Realtime simulator's public names, where the rest of the engine imports them from.

The implementation is the package engine.sim (see its docstring).
"""

from .sim import *  # noqa: F403
from .sim import __all__ as __all__
