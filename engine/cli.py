"""The `engine` console script: run, check, sim, replay, coverage, schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from . import flow as flowmod
from .errors import FlowError
from .source import Unreadable

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="Voice interviews written as YAML state machines.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an interview (against the local simulator unless OPENAI_API_KEY is set)")
    run.add_argument("flow", type=Path)
    run.add_argument("--realtime-url", help="ws://host:port/v1/realtime of a Realtime-compatible server")
    run.add_argument("--model", default="gpt-realtime")
    run.add_argument("--persona", type=Path, help="candidate persona for the simulator (flows/personas/*.yaml)")
    run.add_argument("--out", type=Path, default=Path("runs"))
    run.add_argument("--audio", choices=["auto", "device", "wav", "none"], default="auto")
    run.add_argument("--speed", type=float, default=1.0, help="run simulated time X times faster")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--faults", default="", help="simulator faults, e.g. shuffle_done,duplicate")
    run.add_argument("--no-ui", action="store_true", help="plain log lines instead of the live view")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate flow files; exit 1 with path:line:col: message lines")
    check.add_argument("flows", nargs="+", type=Path)
    check.add_argument("--explore", action="store_true", help="also explore every order of events (bounded)")
    check.add_argument("--answers", type=int, default=1, help="--explore: candidate answers per path (default 1)")
    check.add_argument("--depth", type=int, default=400, help="--explore: inputs per path (default 400)")
    check.add_argument("--budget", type=float, default=60.0, help="--explore: seconds to spend per flow (default 60)")
    check.add_argument("--faults", type=int, default=0, help="--explore: faults per path (default 0)")
    check.add_argument("--out", type=Path, default=Path("runs/explore"), help="--explore: where counterexample "
                       "traces go (default runs/explore)")
    check.set_defaults(func=_check)

    sim = sub.add_parser("sim", help="serve the local Realtime simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--persona", type=Path)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--faults", default="")
    sim.add_argument("--speed", type=float, default=1.0)
    sim.set_defaults(func=_sim)

    replay = sub.add_parser("replay", help="re-run a recorded trace through the core; exit 1 on divergence")
    replay.add_argument("trace", type=Path)
    replay.add_argument("--flow", type=Path, help="the flow to replay against (default: the one recorded)")
    replay.set_defaults(func=_replay)

    coverage = sub.add_parser("coverage", help="states and transitions that recorded sessions exercised")
    coverage.add_argument("traces", nargs="+", type=Path)
    coverage.add_argument("--flow", type=Path)
    coverage.set_defaults(func=_coverage)

    schema = sub.add_parser("schema", help="print the JSON Schema of the flow format")
    schema.set_defaults(func=_schema)
    return parser


def _check(args: argparse.Namespace) -> int:
    if args.explore:
        from .explore import check_main

        return check_main(args)
    status = 0
    for path in args.flows:
        try:
            problems = flowmod.check(path)
        except Unreadable as exc:
            print(exc, file=sys.stderr)
            status = max(status, 2)
            continue
        for problem in problems:
            print(problem)
        if any(not p.warning for p in problems):
            status = max(status, 1)
        elif not problems:
            print(f"{path}: ok")
    return status


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema(), indent=2))
    return 0


def schema() -> dict:
    """JSON Schema of the flow format, for editors (yaml-language-server modeline)."""
    out = flowmod.Flow.model_json_schema(by_alias=True)
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "engine flow"
    return out


def load_flow_or_report(path: Path) -> flowmod.Flow | None:
    """The flow, or None after printing why it cannot be used (every problem, or unreadable)."""
    try:
        return flowmod.load(path)
    except FlowError as exc:
        print(exc, file=sys.stderr)
    except Unreadable as exc:
        print(exc, file=sys.stderr)
    return None


def _run(args: argparse.Namespace) -> int:
    from .runner import run_session

    flow = load_flow_or_report(args.flow)
    if flow is None:
        return 2
    return asyncio.run(run_session(flow, args))


def _sim(args: argparse.Namespace) -> int:
    from .simulator import run_forever

    try:
        asyncio.run(run_forever(args.host, args.port, persona=args.persona, seed=args.seed,
                                faults=args.faults, speed=args.speed))
    except ValueError as exc:
        print(f"engine sim: {exc}", file=sys.stderr)
        return 2
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .replay import replay_main

    return replay_main(args)


def _coverage(args: argparse.Namespace) -> int:
    from .replay import coverage_main

    return coverage_main(args)
