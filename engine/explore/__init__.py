"""`engine check --explore`: every order of events a flow can meet, through the real core.

    result = explore(flow, Bounds(answers=1, depth=400, budget=60, faults=0))
    result.violations, result.warnings, result.explored, result.distinct

The world (world.py) plays the Realtime server, the candidate, the player, the jobs and the
connection; the search (search.py) forks the core's snapshots breadth-first and merges states by
their key (key.py); report.py prints the findings and writes each counterexample as a trace that
`engine replay` reproduces.
"""

from .report import explore_file
from .search import Bounds, Result, Violation, Warning_, explore, rerun
from .world import PROPERTIES, Finding

__all__ = ["explore", "Bounds", "Result", "Violation", "Warning_", "Finding", "PROPERTIES", "explore_file",
           "rerun"]
