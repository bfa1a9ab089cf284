"""Session outputs: report.json, transcript.md, report.md and a row in OUT/sessions.sqlite.

Each sink is a plain function `(record, session_dir) -> Path`. `save_all` runs the sinks of one
save one after another in a single worker thread (one thread hop per save, not one per file); a
sink that raises is reported and never stops the others. Files are written atomically (temp file
+ rename), so a reader never sees half a report, and all get the same mode (0666 minus the umask,
like the trace). Text that cannot be encoded (a lone surrogate in a transcript) is written
escaped, never lost.

The record (report.json, the SQLite row) is described by engine/schemas/report.schema.json.
The SQLite file carries its schema version in `PRAGMA user_version`; older files are migrated.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3  # imported where it is used, in the outputs' thread: not on the start-up path

__all__ = ["Record", "Sink", "SINKS", "save_all", "atomic_write", "transcript_md", "report_md", "SCHEMA_VERSION",
           "migrate"]

Record = Mapping[str, Any]
Sink = Callable[[Record, Path], Path]
SCHEMA_VERSION = 2  # of sessions.sqlite; 1 is the unversioned schema of engine 0.1 (user_version 0)


def _umask() -> int:
    mask = os.umask(0o022)  # read it once, at import (the only race-free moment)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; outputs are as readable as the trace
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_json(record: Record, folder: Path) -> Path:
    # ensure_ascii (the default) escapes everything outside ASCII, lone surrogates included.
    return atomic_write(folder / "report.json", json.dumps(record, indent=2, default=str) + "\n")


_NAMES = {"interviewer": "**Interviewer**", "candidate": "**Candidate**", "tool": "*tool call*"}


def _transcript_lines(record: Record) -> list[str]:
    lines = []
    for turn in record["turns"]:
        note = f" *(interrupted after {turn['heard_ms'] / 1000:.1f} s)*" if "heard_ms" in turn else ""
        text = turn.get("text")
        if text is None:
            text = "*(not transcribed)*"
        lines.append(f"`{turn.get('t', 0.0):7.2f}s` {_NAMES.get(turn['role'], turn['role'])}: {text}{note}")
        lines.append("")
    return lines or ["*(no turns)*", ""]


def transcript_md(record: Record) -> str:
    return "\n".join([f"# Transcript: {record['flow']} ({record['session']})", "", *_transcript_lines(record)])


def write_transcript(record: Record, folder: Path) -> Path:
    return atomic_write(folder / "transcript.md", transcript_md(record))


_OUTCOMES = {"completed": "completed", "completed_degraded": "completed (a timeout fallback carried it)",
             "not_completed": "did not complete", "interrupted": "interrupted", "error": "failed (internal error)"}


def report_md(record: Record) -> str:
    outcome = record.get("outcome") or ("completed" if record["ok"] else "not_completed")
    counts = record.get("counts") or {}
    answers = counts.get("answers", sum(1 for t in record["turns"] if t["role"] == "candidate"))
    lines = [
        f"# Interview report: {record['flow']}",
        "",
        f"- Session: `{record['session']}`, started {record['started']}, {record['duration_s']:.1f} s",
        f"- Outcome: {_OUTCOMES.get(outcome, outcome)} — {record['reason']}",
        f"- Final state: `{record['final_state']}`; server: {record['endpoint']}",
        f"- Candidate answers: {answers}",
    ]
    if counts:
        lines.append("- Counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append("")
    assessment = (record.get("results") or {}).get("assessment")
    if assessment:
        lines += [_assessment_md(assessment), ""]
    else:
        lines += ["## Assessment", "", "No assessment was produced in this session.", ""]
    lines += ["## Transcript", "", *_transcript_lines(record)]
    return "\n".join(lines)


def _assessment_md(assessment: Any) -> str:
    from .assessment import render_markdown

    try:
        return render_markdown(assessment)
    except Exception as exc:  # a result of another shape must not cost the whole report
        raw = json.dumps(assessment, indent=2, default=str)
        return f"## Assessment\n\nCould not be rendered ({type(exc).__name__}); as recorded:\n\n```json\n{raw}\n```"


def write_report_md(record: Record, folder: Path) -> Path:
    return atomic_write(folder / "report.md", report_md(record))


# SQLite ------------------------------------------------------------------------------------------

_COUNTS = ("responses", "answers", "timeouts", "stale", "skipped", "collisions", "server_errors", "events")
_SESSION_COLUMNS = ("id", "flow", "flow_path", "started", "ended", "duration_s", "outcome", "ok", "final_state",
                    "reason", "endpoint", "overall_band", "report_path", *_COUNTS)
_TURN_COLUMNS = ("session_id", "seq", "t", "role", "text", "transcribed")

_CREATE = """
create table sessions (
    id text primary key, flow text, flow_path text, started text, ended text, duration_s real,
    outcome text, ok integer, final_state text, reason text, endpoint text, overall_band text,
    report_path text, responses integer, answers integer, timeouts integer, stale integer,
    skipped integer, collisions integer, server_errors integer, events integer);
create table turns (
    session_id text references sessions(id), seq integer, t real, role text, text text,
    transcribed integer, primary key (session_id, seq));
"""

# From version N to N + 1. Timestamps of rows written before version 2 keep their unknown zone.
_MIGRATIONS = {
    1: [*(f"alter table sessions add column {c} text" for c in ("flow_path", "ended", "outcome")),
        *(f"alter table sessions add column {c} integer" for c in _COUNTS),
        "alter table turns add column transcribed integer",
        "update sessions set outcome = case when ok then 'completed' else 'not_completed' end"],
}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an open sessions database to SCHEMA_VERSION (inside the caller's transaction)."""
    version = conn.execute("pragma user_version").fetchone()[0]
    if version == 0:
        exists = conn.execute("select 1 from sqlite_master where type = 'table' and name = 'sessions'").fetchone()
        if not exists:
            for statement in _CREATE.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
            return
        version = 1
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"sessions.sqlite has schema version {version}, newer than this engine's {SCHEMA_VERSION}")
    while version < SCHEMA_VERSION:
        for statement in _MIGRATIONS[version]:
            conn.execute(statement)
        version += 1
    conn.execute(f"pragma user_version = {SCHEMA_VERSION}")


def _text(value: Any) -> Any:
    """SQLite stores UTF-8: escape what cannot be encoded (a lone surrogate) instead of failing."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def write_sqlite(record: Record, folder: Path) -> Path:
    import sqlite3

    db = folder.parent / "sessions.sqlite"
    overall = ((record.get("results") or {}).get("assessment") or {}).get("overall") or {}
    counts = record.get("counts") or {}
    row = {"id": record["session"], "flow": record["flow"], "flow_path": record.get("flow_path"),
           "started": record["started"], "ended": record.get("ended"), "duration_s": record["duration_s"],
           "outcome": record.get("outcome"), "ok": int(bool(record["ok"])), "final_state": record["final_state"],
           "reason": record["reason"], "endpoint": record["endpoint"], "overall_band": overall.get("band"),
           "report_path": str(folder / "report.json"), **{c: counts.get(c) for c in _COUNTS}}
    turns = [(record["session"], i, t.get("t"), t["role"], t.get("text"),
              None if "transcribed" not in t else int(bool(t["transcribed"])))
             for i, t in enumerate(record["turns"])]
    new = not db.exists()
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)  # transactions by hand, below
    try:
        if new:
            os.chmod(db, FILE_MODE)
        if conn.execute("pragma user_version").fetchone()[0] != SCHEMA_VERSION:
            # Once per file (it stays set): readers, such as an operator's view, never block a session.
            conn.execute("pragma journal_mode = wal")
        conn.execute("pragma synchronous = normal")
        conn.execute("begin immediate")  # take the write lock first: migrate and write as one
        try:
            migrate(conn)
            names = ", ".join(_SESSION_COLUMNS)
            marks = ", ".join("?" * len(_SESSION_COLUMNS))
            conn.execute(f"insert or replace into sessions ({names}) values ({marks})",
                         [_text(row[c]) for c in _SESSION_COLUMNS])
            conn.execute("delete from turns where session_id = ?", (record["session"],))
            conn.executemany(f"insert into turns ({', '.join(_TURN_COLUMNS)}) values (?, ?, ?, ?, ?, ?)",
                             [tuple(_text(v) for v in turn) for turn in turns])
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
    finally:
        conn.close()
    return db


SINKS: tuple[Sink, ...] = (report_json, write_transcript, write_report_md, write_sqlite)


class _Writers(concurrent.futures.Executor):
    """A few daemon threads that write outputs, shared by every session of the process: a bounded
    number of threads competes with the event loop for the GIL however many sessions save at once,
    and a writer stuck on a dead disk never keeps the process from exiting."""

    def __init__(self, threads: int):
        self._threads = threads
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, lambda: fn(*args, **kwargs)))
        with self._lock:
            if self._started < self._threads:  # threads start as they are first needed
                self._started += 1
                threading.Thread(target=self._work, name="engine outputs", daemon=True).start()
        return future

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)


_WORKERS = _Writers(threads=2)


def _run_sinks(record: Record, folder: Path, sinks: tuple[Sink, ...],
               hurry: threading.Event | None) -> tuple[list[Path], list[str]]:
    written: list[Path] = []
    failed: list[str] = []
    for sink in sinks:
        name = getattr(sink, "__name__", repr(sink))
        if hurry is not None and hurry.is_set():
            failed.append(f"output {name} not written: stopped waiting (interrupted again)")
            continue
        try:
            written.append(sink(record, folder))
        except Exception as exc:  # one sink's failure must not lose the others' output
            failed.append(f"output {name} failed: {type(exc).__name__}: {exc}")
    return written, failed


async def save_all(record: Record, folder: Path, sinks: tuple[Sink, ...] = SINKS, *,
                   hurry: threading.Event | None = None, timeout: float | None = None,
                   ) -> tuple[list[Path], list[str]]:
    """Run every sink, in order, in one worker thread. Returns (paths written, one line per failed
    sink). Once `hurry` is set the sinks not yet begun are skipped (the one writing finishes);
    after `timeout` seconds the rest are given up (the thread finishes on its own)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [], [f"outputs not written: {folder}: {exc.strerror or exc}"]
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(_WORKERS, _run_sinks, record, folder, sinks, hurry)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(work)
    except TimeoutError:
        return [], [f"outputs not finished within {timeout:g} s (still writing in the background)"]
