"""The options of `engine serve` and `engine invite`, apart from the commands: `engine --help` builds
the parser without importing the server (asyncio, starlette, uvicorn)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

__all__ = ["parse_duration", "add_serve_arguments", "add_invite_arguments"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, low: float = 0.0, high: float = 366 * 86400) -> float:
    """'30s', '90m', '24h', '7d', '1.5h' or plain seconds -> seconds, within [low, high]."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*", text or "")
    if not match:
        raise ValueError(f"{text!r} is not a duration (say 30s, 90m, 24h or 7d)")
    value = float(match[1]) * _UNITS[match[2] or "s"]
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{text!r} is out of range ({low:g} s to {high / 86400:g} days)")
    return value


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", type=Path, metavar="FLOW", help="the flow file (YAML) every interview follows")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="session folders, as for engine run")
    p.add_argument("--max-sessions", type=int, default=20, help="interviews at once in this process")
    p.add_argument("--db", help="sessions database: a path, sqlite:///PATH or postgresql://... "
                                "(default OUT/sessions.sqlite)")
    p.add_argument("--realtime-url", help="ws://host:port/v1/realtime of a Realtime-compatible server")
    p.add_argument("--model", default="gpt-realtime", metavar="NAME", help="the Realtime model (default gpt-realtime)")
    p.add_argument("--grace", default="30s", help="after SIGTERM, how long running interviews may go on")
    p.add_argument("--base-url", help="the address candidates use, if not this server's own (a proxy's)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="another origin the page may be served from (repeatable)")
    p.add_argument("--persona", type=Path, help="the simulator's persona (no key and no --realtime-url)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="the simulator's random seed (default 0)")
    p.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)  # scripted pages in tests


def add_invite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", type=Path, metavar="FLOW", help="the flow the invited candidates are interviewed with")
    p.add_argument("--db", help="sessions database, as for engine serve (default OUT/sessions.sqlite)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="where engine serve keeps sessions")
    p.add_argument("--expires", default="24h", help="how long the link stays valid (default 24h)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server's address for candidates")
    p.add_argument("--count", type=int, default=1, help="how many links (one per candidate)")
