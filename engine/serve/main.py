"""`engine serve` and `engine invite`: the command-line side of serving interviews to browsers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import eventloop
from .options import parse_duration

if TYPE_CHECKING:  # imported when a command runs: `engine --help` stays quick
    from ..store import Store

__all__ = ["serve_main", "invite_main"]

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
        return eventloop.run(_serve(flow, args, store, sock, grace))
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
