"""`engine test`: conversation tests (`*.test.yaml`) run offline, on virtual time, in parallel.

Every test file is loaded and checked first; one bad file stops everything (exit 2, its problems
as `path:line:col: message`). Each test is then one offline session (`engine.testing.offline`) in
a worker process, its outputs in `OUT/<test file>/<test>/session/`; one line is printed per test,
in file order, and for a failure the first unmet expectation, what happened instead and the
session folder. Virtual time makes every result the same at any machine load or `-j`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import os
import shutil
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..source import Unreadable, clean
from .expect import Observed, check
from .format import ConversationTest, TestFileError, load

__all__ = ["CaseResult", "discover", "run_test", "main", "write_junit", "SESSION"]

SESSION = "session"  # the session id of every test: its folder is OUT/<file>/<test>/session
_SKIPPED = {"runs", "node_modules", "__pycache__", "site-packages", "build", "dist"}
_SUFFIXES = (".test.yaml", ".test.yml")


@dataclass
class CaseResult:
    """How one test went (plain data: it comes back from a worker process)."""

    file: str
    name: str
    flow: str  # the flow file's path
    passed: bool
    unmet: list[str] = field(default_factory=list)  # every unmet expectation, in the order written
    folder: str = ""  # the session's outputs
    seconds: float = 0.0  # wall time of the run
    error: str | None = None  # the test could not run to the end (a bug): one line


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """The test files named or found under `paths` (folders: `*.test.yaml` below them, skipping
    hidden folders, runs/, virtualenvs, node_modules), sorted; and one line per unusable path."""
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            files += _walk(path)
        elif not path.exists():
            problems.append(f"{clean(str(path))}: no such file or folder")
        elif not path.name.endswith(_SUFFIXES):
            problems.append(f"{clean(str(path))}: not a conversation test (their names end in .test.yaml)")
        else:
            files.append(path)
    return sorted(dict.fromkeys(files)), problems


def run_test(test: ConversationTest, out: Path) -> CaseResult:
    """Run one test as an offline session under `out` and check its expectations."""
    from .offline import run_offline  # the runner, the simulator: only where a test runs

    result = CaseResult(str(test.file), test.name, test.flow.path, passed=False)
    out = _test_folder(test, out)
    shutil.rmtree(out, ignore_errors=True)  # the last run of this test only
    started = time.perf_counter()
    try:
        ran = run_offline(test.flow, out, persona=test.persona, seed=test.case.seed, faults=test.faults,
                          job_faults=test.case.jobs, session_id=SESSION)
    except Exception as exc:  # a bug in the engine: this test fails, the others run
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        result.unmet = [f"the session did not finish: {result.error}", *traceback.format_exc().splitlines()[-3:]]
        result.folder = str(out / SESSION)
        return result
    result.seconds = time.perf_counter() - started
    result.folder = str(ran.folder)
    unmet = check(test.case.expect, test.order, Observed.of(ran.folder))
    result.unmet = [str(u) for u in unmet]
    result.passed = not unmet
    return result


def main(args: argparse.Namespace) -> int:
    """`engine test`: exit 0 all passed, 1 a test failed, 2 a test file is bad (nothing ran)."""
    started = time.perf_counter()
    files, problems = discover(args.paths or [Path(".")])
    tests: list[ConversationTest] = []
    for path in files:
        try:
            tests += load(path)
        except TestFileError as exc:
            problems += [str(p) for p in exc.problems]
        except Unreadable as exc:
            problems.append(str(exc))
    if args.select:
        tests = [t for t in tests if any(k.lower() in t.name.lower() for k in args.select)]
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"engine test: {len(problems)} problem(s) in the test files; no test was run", file=sys.stderr)
        return 2
    if not tests:
        where = ", ".join(clean(str(p)) for p in args.paths) if args.paths else "the current folder"
        named = f" named like {' or '.join(map(repr, args.select))}" if args.select else ""
        print(f"engine test: no conversation tests (*.test.yaml){named} under {where}", file=sys.stderr)
        return 2
    jobs = min(args.jobs or os.cpu_count() or 1, len(tests))
    results = []
    for result in _run_all(tests, args.out, jobs):
        _print(result)
        results.append(result)
    failed = [r for r in results if not r.passed]
    took = time.perf_counter() - started
    summary = f"{len(results) - len(failed)} passed, {len(failed)} failed in {took:.1f} s"
    print(summary + (f" ({jobs} workers)" if jobs > 1 else ""))
    if failed:
        first = failed[0]
        print(f"draw the first failure: python tools/render_flow.py {first.flow} --trace "
              f"{Path(first.folder) / 'trace.jsonl'}")
    if args.junit is not None:
        write_junit(results, args.junit, took)
    return 1 if failed else 0


def write_junit(results: list[CaseResult], path: Path, seconds: float) -> None:
    """JUnit XML for CI: one <testsuite> per test file, one <testcase> per test."""
    root = ET.Element("testsuites", name="engine test", tests=str(len(results)),
                      failures=str(sum(not r.passed and r.error is None for r in results)),
                      errors=str(sum(r.error is not None for r in results)), time=f"{seconds:.3f}")
    for file in dict.fromkeys(r.file for r in results):
        mine = [r for r in results if r.file == file]
        suite = ET.SubElement(root, "testsuite", name=file, tests=str(len(mine)),
                              failures=str(sum(not r.passed and r.error is None for r in mine)),
                              errors=str(sum(r.error is not None for r in mine)),
                              time=f"{sum(r.seconds for r in mine):.3f}")
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=file, name=r.name, time=f"{r.seconds:.3f}")
            if not r.passed:
                kind = "error" if r.error is not None else "failure"
                problem = ET.SubElement(case, kind, message=r.unmet[0] if r.unmet else "failed",
                                        type="error" if r.error is not None else "expectation")
                problem.text = "\n".join([*r.unmet, f"session: {r.folder}"])
            ET.SubElement(case, "system-out").text = f"session: {r.folder}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# Private ----------------------------------------------------------------------------------------------


def _walk(folder: Path) -> list[Path]:
    found = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _skipped(Path(here) / d))
        found += [Path(here) / n for n in names if n.endswith(_SUFFIXES)]
    return found


def _skipped(folder: Path) -> bool:
    name = folder.name
    return name.startswith(".") or name in _SKIPPED or (folder / "pyvenv.cfg").exists()


def _test_folder(test: ConversationTest, out: Path) -> Path:
    """OUT/<the test file's folder, relative to here>/<its stem>/<the test's slug>."""
    file = test.file.resolve()
    try:
        relative = file.parent.relative_to(Path.cwd().resolve())
    except ValueError:
        relative = Path()
    stem = file.name.removesuffix(".yaml").removesuffix(".yml").removesuffix(".test")
    return out / relative / stem / test.slug


def _run_all(tests: list[ConversationTest], out: Path, jobs: int) -> Iterator[CaseResult]:
    """The results in the tests' order, each as soon as it and those before it are done."""
    if jobs <= 1:
        for test in tests:
            yield run_test(test, out)
        return
    # spawn: a fresh interpreter per worker (forking a process with threads is unsafe).
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(_work, str(t.file), t.index, str(out)) for t in tests]
        for test, future in zip(tests, futures, strict=True):
            try:
                yield future.result()
            except Exception as exc:  # the worker died (killed, out of memory)
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                yield CaseResult(str(test.file), test.name, test.flow.path, False,
                                 [f"the test's worker failed: {error}"], error=error)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _work(file: str, index: int, out: str) -> CaseResult:
    """In a worker process: load the test (each file once per worker) and run it."""
    return run_test(next(t for t in _loaded(file) if t.index == index), Path(out))


@functools.cache
def _loaded(file: str) -> list[ConversationTest]:
    return load(file)


def _print(r: CaseResult) -> None:
    print(f"{'PASS' if r.passed else 'FAIL'} {r.name} ({Path(r.flow).name}, {r.seconds:.1f} s)", flush=True)
    if r.passed:
        return
    print(f"     {r.unmet[0] if r.unmet else 'failed'}")
    if len(r.unmet) > 1 and r.error is None:
        others = ", ".join(u.split(":", 1)[0] for u in r.unmet[1:])
        print(f"     (and {len(r.unmet) - 1} more unmet: {others})")
    print(f"     session: {r.folder}", flush=True)
