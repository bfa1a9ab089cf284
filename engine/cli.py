"""The `engine` console script: run, chat, check, test, init, sim, replay, coverage, schema, serve,
invite, completion.

Each command imports what it needs when it runs, so `engine --help` starts at once.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # each command imports what it uses, so `engine --help` and `engine check` start fast
    from . import flow as flowmod
    from .runner import Participant

__all__ = ["main", "SCHEMAS"]

# `engine schema [--KIND]`: the JSON Schema of each file format, as "module:function" (imported only
# when asked for). The simulator's persona format and the conversation-test format plug in here.
SCHEMAS: dict[str, str] = {
    "flow": "engine.flow:json_schema",
    "persona": "engine.sim.scenario:persona_schema",
    "test": "engine.testing.format:json_schema",
}

# `engine check FILE`: which format a file is in, by its name (predictable, and what editors see):
# `*.persona.yaml` or a file in a `personas/` folder is a persona, anything else a flow.
CHECKERS: dict[str, str] = {
    "flow": "engine.flow:check",
    "persona": "engine.sim.scenario:check_persona",
    "test": "engine.testing.format:check",
}


def file_kind(path: Path) -> str:
    """The format of a file `engine check` is given, from its name."""
    name = path.name
    if name.endswith((".persona.yaml", ".persona.yml")) or path.parent.name == "personas":
        return "persona"
    if name.endswith((".test.yaml", ".test.yml")):
        return "test"
    return "flow"


def _import(target: str) -> Any:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


class _Signalled(BaseException):
    """SIGTERM or SIGHUP before a command has its own handlers (like KeyboardInterrupt for SIGINT)."""

    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


def _raise_signalled(number: int, frame: Any) -> None:
    raise _Signalled(number)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except KeyboardInterrupt:
        print("engine: interrupted by SIGINT", file=sys.stderr, flush=True)
        return 130
    except _Signalled as exc:
        print(f"engine: interrupted by {signal.Signals(exc.number).name}", file=sys.stderr, flush=True)
        return 128 + exc.number
    except BrokenPipeError:  # `engine schema | head`: the reader left; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


class _Version(argparse.Action):
    """`--version`: the installed engine's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the engine's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from .trace import engine_version

        print(f"engine {engine_version()}")
        parser.exit()


PERSONA_HELP = "the simulated candidate: a bundled persona by name (default, a2_hesitant, c1_fluent) or a file"
SPEED_HELP = "run session time X times faster (the simulator, virtual audio, the flow's timeouts; default 1)"
MODEL_HELP = "the Realtime model (default gpt-realtime)"
URL_HELP = "ws://host:port/v1/realtime of a Realtime-compatible server (default: OPENAI_API_KEY's service, else " \
           "the local simulator)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="Voice interviews written as YAML state machines.",
                                     epilog="exit codes: 0 completed, 1 not completed (or errors found), 2 unusable "
                                            "input, 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an interview (against the local simulator unless OPENAI_API_KEY is set)",
                         description="Run an interview. Without --realtime-url or OPENAI_API_KEY the embedded "
                                     "simulator plays the model and a scripted candidate.")
    run.add_argument("flow", type=Path, metavar="FLOW", help="the flow file (YAML)")
    run.add_argument("--realtime-url", metavar="URL", help=URL_HELP)
    run.add_argument("--model", default="gpt-realtime", metavar="NAME", help=MODEL_HELP)
    run.add_argument("--persona", type=Path, metavar="NAME|FILE", help=PERSONA_HELP)
    run.add_argument("--out", type=Path, default=Path("runs"), metavar="DIR",
                     help="where sessions are saved: DIR/<session>/ and DIR/sessions.sqlite (default runs)")
    run.add_argument("--audio", choices=["auto", "device", "wav", "none"], default="auto",
                     help="auto: the sound device if one is usable, else silent; device: the sound device or exit 2; "
                          "wav: silent, writing session.wav; none: silent (default auto)")
    run.add_argument("--speed", type=float, default=1.0, metavar="X", help=SPEED_HELP)
    run.add_argument("--seed", type=int, default=0, metavar="N", help="the simulator's random seed (default 0)")
    run.add_argument("--faults", default="", metavar="SPEC",
                     help="simulator faults, comma-separated, e.g. shuffle_done,duplicate,close_after=40")
    run.add_argument("--no-ui", action="store_true", help="plain log lines instead of the live view")
    run.add_argument("--ping-interval", type=float, default=20.0, metavar="S",
                     help="seconds between keepalive pings to the server (0: none; default 20)")
    run.add_argument("--ping-timeout", type=float, default=20.0, metavar="S",
                     help="seconds the server has to answer a ping before the session ends (0: forever; default 20)")
    run.add_argument("--trace-max-mb", type=float, default=64.0, metavar="MB",
                     help="size cap of trace.jsonl; past it the trace stops with a final note (default 64)")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate flows, personas and conversation tests; exit 1 with "
                                         "path:line:col: message lines, 2 if a file cannot be read")
    check.add_argument("flows", nargs="+", type=Path, metavar="FILE",
                       help="a flow; *.persona.yaml or personas/*.yaml: a persona; *.test.yaml: a conversation test")
    check.add_argument("--explore", action="store_true",
                       help="also explore every order of events of each valid flow (bounded by the options below)")
    check.add_argument("--answers", type=_count, default=1, metavar="N",
                       help="--explore: candidate answers per path (default 1)")
    check.add_argument("--depth", type=_count, default=400, metavar="N",
                       help="--explore: inputs per path (default 400)")
    check.add_argument("--budget", type=_seconds, default=60.0, metavar="S",
                       help="--explore: seconds to spend per flow (default 60)")
    check.add_argument("--faults", type=_count, default=0, metavar="N", help="--explore: faults per path (default 0)")
    check.add_argument("--out", type=Path, default=Path("runs/explore"), metavar="DIR",
                       help="--explore: where counterexample traces go (default runs/explore)")
    check.set_defaults(func=_check)

    sim = sub.add_parser("sim", help="serve the local Realtime simulator")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free one; default 8765)")
    sim.add_argument("--persona", type=Path, metavar="NAME|FILE", help=PERSONA_HELP)
    sim.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    sim.add_argument("--faults", default="", metavar="SPEC",
                     help="faults to inject, comma-separated, e.g. shuffle_done,duplicate,close_after=40")
    sim.add_argument("--speed", type=float, default=1.0, metavar="X", help="run simulated time X times faster")
    sim.set_defaults(func=_sim)

    replay = sub.add_parser("replay", help="re-run a recorded trace through the core; exit 1 on divergence")
    replay.add_argument("trace", type=Path, metavar="TRACE", help="a session's trace.jsonl")
    replay.add_argument("--flow", type=Path, metavar="FLOW",
                        help="the flow to replay against (default: the one recorded)")
    replay.set_defaults(func=_replay)

    coverage = sub.add_parser("coverage", help="states and transitions that recorded sessions exercised")
    coverage.add_argument("traces", nargs="+", type=Path, metavar="TRACE", help="sessions' trace.jsonl files")
    coverage.add_argument("--flow", type=Path, metavar="FLOW",
                          help="the flow to measure (default: the one the traces recorded)")
    coverage.set_defaults(func=_coverage)

    test = sub.add_parser("test", help="run conversation tests (*.test.yaml) offline on virtual time; exit 1 if one "
                                       "fails, 2 if a test file is bad")
    test.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                      help="test files, or folders to search for *.test.yaml (default: the current folder)")
    test.add_argument("-k", dest="select", action="append", default=[], metavar="TEXT",
                      help="run only the tests whose name contains TEXT (any case; repeat for more)")
    test.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML")
    test.add_argument("-j", "--jobs", type=_positive, metavar="N", help="worker processes (default: one per CPU)")
    test.add_argument("--out", type=Path, default=Path("runs/test"), metavar="DIR",
                      help="where the sessions are written (default: runs/test)")
    test.set_defaults(func=_test)

    schema = sub.add_parser("schema", help="print the JSON Schema of the flow format (or of another file format)")
    kinds = schema.add_mutually_exclusive_group()
    kinds.add_argument("--persona", dest="kind", action="store_const", const="persona",
                       help="the persona and scenario format of the simulator")
    kinds.add_argument("--test", dest="kind", action="store_const", const="test",
                       help="the conversation test format of `engine test`")
    schema.set_defaults(func=_schema, kind="flow")

    chat = sub.add_parser("chat", help="play the candidate yourself, by typing",
                          description="Run an interview in which you are the candidate: each line you type is "
                                      "one answer. /silence S says nothing for S seconds, /barge starts speaking "
                                      "over the interviewer (your next line is what you say), /quit leaves. The "
                                      "session is saved like any other.")
    chat.add_argument("flow", type=Path, metavar="FLOW", help="the flow file (YAML)")
    chat.add_argument("--persona", type=Path, metavar="NAME|FILE",
                      help="the scenario the simulated model follows (its questions, tool calls): a bundled "
                           "persona by name or a file; its candidate part is not played")
    chat.add_argument("--realtime-url", metavar="URL", help=URL_HELP)
    chat.add_argument("--model", default="gpt-realtime", metavar="NAME", help=MODEL_HELP)
    chat.add_argument("--speed", type=float, default=1.0, metavar="X", help=SPEED_HELP)
    chat.add_argument("--out", type=Path, default=Path("runs"), metavar="DIR",
                      help="where the session is saved (default runs)")
    chat.add_argument("--seed", type=int, default=0, metavar="N", help="the simulator's random seed (default 0)")
    chat.set_defaults(func=_chat, audio="none", faults="", no_ui=True, ping_interval=20.0, ping_timeout=20.0,
                      trace_max_mb=64.0)

    init = sub.add_parser("init", help="write a small working flow, its persona and test, to start from",
                          description="Write a starter flow (states, its own tool, timeouts, a barge-in), its "
                                      "interviewer instructions, a persona, a conversation test and the JSON "
                                      "Schemas their modelines name. Existing files are never overwritten "
                                      "without --force.")
    init.add_argument("dir", type=Path, nargs="?", default=Path("."), metavar="DIR",
                      help="the folder to write into (created if needed; default: the current folder)")
    init.add_argument("--example", action="store_true",
                      help="write the example interview (assessment.yaml, interviewer.md) instead")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(func=_init)

    from .serve.options import add_invite_arguments, add_serve_arguments

    serve = sub.add_parser("serve", help="serve interviews to candidates' browsers (invite links; /sessions view)")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)

    invite = sub.add_parser("invite", help="print one-time interview links for engine serve")
    add_invite_arguments(invite)
    invite.set_defaults(func=_invite)

    completion = sub.add_parser("completion", help="print a shell completion script",
                                description="Print a completion script generated from this command line, e.g. "
                                            "`engine completion bash > ~/.local/share/bash-completion/completions/"
                                            "engine` or `source <(engine completion bash)`.")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete in")
    completion.set_defaults(func=_completion)
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _test(args: argparse.Namespace) -> int:
    from .testing.runner import main as test_main

    _printable(sys.stdout, sys.stderr)
    return test_main(args)


def _check(args: argparse.Namespace) -> int:
    """Exit 0: no errors (warnings allowed); 1: a file has errors (or, explored, a violation); 2: a
    file cannot be read."""
    from .source import Unreadable, clean

    _printable(sys.stdout, sys.stderr)
    status = 0
    for path in args.flows:
        kind = file_kind(path)
        if kind not in CHECKERS:
            print(f"{clean(str(path))}: cannot check a {kind} file yet", file=sys.stderr)
            status = max(status, 2)
            continue
        try:
            problems = _import(CHECKERS[kind])(path)
        except Unreadable as exc:
            print(clean(str(exc)), file=sys.stderr)
            status = max(status, 2)
            continue
        except (RecursionError, MemoryError) as exc:  # bounded by engine.source; never a traceback anyway
            print(f"{clean(str(path))}: too large or too deep to check ({type(exc).__name__})", file=sys.stderr)
            status = max(status, 2)
            continue
        for problem in problems:
            print(problem)
        if any(not p.warning for p in problems):
            status = max(status, 1)
            continue
        if not problems:
            print(f"{clean(str(path))}: ok")
        if args.explore and kind == "flow":
            from .explore import Bounds, explore_file

            bounds = Bounds(answers=args.answers, depth=args.depth, budget=args.budget, faults=args.faults)
            status = max(status, explore_file(path, bounds, args.out))
    return status


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a number of seconds above 0")
    return value


def _schema(args: argparse.Namespace) -> int:
    target = SCHEMAS.get(args.kind)
    if target is None:
        print(f"engine schema: the {args.kind} schema is not available yet", file=sys.stderr)
        return 2
    make: Callable[[], dict[str, Any]] = _import(target)
    print(json.dumps(make(), indent=2))
    return 0


def _printable(*streams: Any) -> None:
    """Never fail on a character the terminal cannot show (a file name that is not UTF-8)."""
    for stream in streams:
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def load_flow_or_report(path: Path) -> flowmod.Flow | None:
    """The flow, or None after printing why it cannot be used (every problem, or unreadable)."""
    from . import flow as flowmod
    from .errors import FlowError
    from .source import Unreadable

    try:
        return flowmod.load(path)
    except FlowError as exc:
        print(exc, file=sys.stderr)
    except Unreadable as exc:
        print(exc, file=sys.stderr)
    return None


def _run(args: argparse.Namespace) -> int:
    return _session(args)


def _session(args: argparse.Namespace, participant: Participant | None = None) -> int:
    """`engine run` and `engine chat`: one session of the flow, through the runner's one ending path."""
    # Until the session installs its own handlers, SIGTERM and SIGHUP stop with one line too.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _raise_signalled)
    # No collections while the session's modules and flow load: ~70 young collections that free
    # almost nothing would cost ~35 ms before the first response.create.
    gc.disable()
    try:
        from . import eventloop
        from .runner import run_session

        flow = load_flow_or_report(args.flow)
    finally:
        gc.enable()
    if flow is None:
        return 2
    status: int = eventloop.run(run_session(flow, args, participant))
    return status


def _sim(args: argparse.Namespace) -> int:
    import asyncio

    from .simulator import run_forever

    try:
        # asyncio's own loop, not engine.eventloop's: the simulator stands in for a remote service, and
        # uvloop rounds every timer to the millisecond and fires all that fall in one together, which
        # sends every connection's frames in step (bursts no real service sends; benchmarks/RESULTS.md §5b).
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


def _serve(args: argparse.Namespace) -> int:
    from .serve.main import serve_main

    return serve_main(args)


def _invite(args: argparse.Namespace) -> int:
    from .serve.main import invite_main

    return invite_main(args)


def _chat(args: argparse.Namespace) -> int:
    from .chat import Chat, interactive

    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no standard input at all (closed): nothing will be typed
        fd = -1
    return _session(args, Chat(fd, sys.stdout, interactive=interactive(sys.stdin)))


def _init(args: argparse.Namespace) -> int:
    from .scaffold import init_main

    schemas = {kind: _lazy_schema(target) for kind, target in SCHEMAS.items()}
    return init_main(args.dir, example=args.example, force=args.force, schemas=schemas, tests="test" in CHECKERS)


def _lazy_schema(target: str) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        schema: dict[str, Any] = _import(target)()
        return schema

    return make


def _completion(args: argparse.Namespace) -> int:
    import shtab

    parser = _parser()
    for action in _actions(parser):  # what to complete follows from each argument's type
        if action.type is Path:
            action.complete = shtab.DIRECTORY if action.metavar == "DIR" else shtab.FILE  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument of `parser` and of its subcommands."""
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _actions(child)
    return found
