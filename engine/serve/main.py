"""`engine serve` and `engine invite`: the command-line side of serving interviews to browsers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import re
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a command runs: `engine --help` stays quick
    from ..store import Store

__all__ = ["serve_main", "invite_main", "parse_duration", "add_serve_arguments", "add_invite_arguments"]

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
    p.add_argument("flow", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", type=Path, default=Path("runs"), help="session folders, as for engine run")
    p.add_argument("--max-sessions", type=int, default=20, help="interviews at once in this process")
    p.add_argument("--db", help="sessions database: a path, sqlite:///PATH or postgresql://... "
                                "(default OUT/sessions.sqlite)")
    p.add_argument("--realtime-url", help="ws://host:port/v1/realtime of a Realtime-compatible server")
    p.add_argument("--model", default="gpt-realtime")
    p.add_argument("--grace", default="30s", help="after SIGTERM, how long running interviews may go on")
    p.add_argument("--base-url", help="the address candidates use, if not this server's own (a proxy's)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="another origin the page may be served from (repeatable)")
    p.add_argument("--persona", type=Path, help="the simulator's persona (no key and no --realtime-url)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)  # scripted pages in tests


def add_invite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", type=Path)
    p.add_argument("--db", help="sessions database, as for engine serve (default OUT/sessions.sqlite)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="where engine serve keeps sessions")
    p.add_argument("--expires", default="24h", help="how long the link stays valid (default 24h)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server's address for candidates")
    p.add_argument("--count", type=int, default=1, help="how many links (one per candidate)")


def _fail(command: str, message: str) -> int:
    print(f"engine {command}: {message}", file=sys.stderr)
    return 2


def _open_store(command: str, db: str | None, out: Path) -> Store | None:
    from ..store import Store

    try:
        return Store.open(db or str(out / "sessions.sqlite"))
    except ValueError as exc:
        _fail(command, str(exc))
        return None


def invite_main(args: argparse.Namespace) -> int:
    from ..cli import load_flow_or_report

    flow = load_flow_or_report(args.flow)
    if flow is None:
        return 2
    try:
        ttl = parse_duration(args.expires, low=60)
    except ValueError as exc:
        return _fail("invite", f"--expires {exc}")
    if not 1 <= args.count <= 1000:
        return _fail("invite", "--count must be 1 to 1000")
    store = _open_store("invite", args.db, args.out)
    if store is None:
        return 2
    base = args.base_url.rstrip("/")
    try:
        for _ in range(args.count):
            print(f"{base}/interview#{store.create_invite(flow.name, ttl)}")
    except Exception as exc:
        return _fail("invite", f"cannot store the invite in {store.label}: {type(exc).__name__}: {exc}")
    until = datetime.datetime.now().astimezone() + datetime.timedelta(seconds=ttl)
    print(f"{args.count} one-time link(s) for {flow.name}, valid until {until:%Y-%m-%d %H:%M %Z} "
          f"(database {store.label})", file=sys.stderr)
    return 0


def serve_main(args: argparse.Namespace) -> int:
    from ..cli import load_flow_or_report

    flow = load_flow_or_report(args.flow)
    if flow is None:
        return 2
    try:
        grace = parse_duration(args.grace, high=24 * 3600)
    except ValueError as exc:
        return _fail("serve", f"--grace {exc}")
    if args.max_sessions < 1:
        return _fail("serve", "--max-sessions must be at least 1")
    if not (math.isfinite(args.speed) and 0 < args.speed <= 1000):
        return _fail("serve", "--speed must be in (0, 1000]")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        return _fail("serve", f"--out {args.out}: {exc.strerror or exc}")
    store = _open_store("serve", args.db, args.out)
    if store is None:
        return 2
    from .app import bind

    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        return _fail("serve", f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    try:
        return asyncio.run(_serve(flow, args, store, sock, grace))
    finally:
        sock.close()


async def _serve(flow: object, args: argparse.Namespace, store: Store, sock: socket.socket, grace: float) -> int:
    from ..flow import Flow
    from ..realtime import Endpoint, choose_endpoint
    from .app import ServeConfig, running

    assert isinstance(flow, Flow)
    endpoint = choose_endpoint(args.realtime_url, args.model)
    async with contextlib.AsyncExitStack() as stack:
        server_note = endpoint.kind
        if endpoint.url is None:
            from ..simulator import simulator

            options, note = simulator_options()
            try:
                sim = await stack.enter_async_context(simulator(persona=args.persona, seed=args.seed,
                                                                speed=args.speed, voices=True, **options))
            except (ValueError, OSError) as exc:
                return _fail("serve", str(exc))
            endpoint = Endpoint(f"{sim.url}?model={args.model}", simulated=True)
            server_note = f"the embedded simulator ({note})"
        config = ServeConfig(flow=flow, endpoint=endpoint, store=store, out=args.out, max_sessions=args.max_sessions,
                             grace=grace, base_url=args.base_url, allowed_origins=tuple(args.allow_origin),
                             speed=args.speed,
                             operator_token=os.environ.get("ENGINE_OPERATOR_TOKEN") or secrets.token_urlsafe(18))
        stop = asyncio.Event()
        async with running(config, sock=sock) as (server, url):
            loop = asyncio.get_running_loop()

            def on_signal(signum: int) -> None:
                if stop.is_set():
                    print("second signal: ending the running interviews now", flush=True)
                    server.force.set()
                stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, on_signal, sig)
            base = (args.base_url or url).rstrip("/")
            print(f"engine serve: {flow.name} on {url}, interviewer: {server_note}; up to {args.max_sessions} "
                  f"interviews at once; database {store.label}", flush=True)
            print(f"  candidates: engine invite {args.flow} --base-url {base}"
                  + (f" --db {store.label}" if args.db else f" --out {args.out}"), flush=True)
            print(f"  operator:   {base}/sessions?key={config.operator_token}", flush=True)
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                print("  note: browsers allow the microphone only on https:// or localhost pages; put a TLS "
                      "proxy in front (docs/serve.md)", flush=True)
            await stop.wait()
            print(f"stopping: no new interviews; running ones have {grace:g} s", flush=True)
    print("stopped", flush=True)
    return 0


def simulator_options() -> tuple[dict[str, Any], str]:
    """How the embedded simulator plays the candidate for `engine serve`: the candidate is the
    page's microphone (the simulator detects speech in the appended audio), when it can."""
    import inspect

    from ..simulator import Simulator

    if "scripted_candidate" in inspect.signature(Simulator).parameters:
        return {"scripted_candidate": False}, "the candidate is your microphone"
    return {}, "its candidate is scripted: this simulator does not listen to the microphone"
