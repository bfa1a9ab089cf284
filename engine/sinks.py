"""Session outputs: report.json, transcript.md, report.md and a row in OUT/sessions.sqlite.

Each sink is a plain function `(record, session_dir) -> Path`. `save_all` runs them in parallel
threads inside one TaskGroup; a sink that raises is reported and never stops the others. Files are
written atomically (temp file + rename), so a reader never sees half a report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Record", "Sink", "SINKS", "save_all", "atomic_write", "transcript_md", "report_md"]

Record = Mapping[str, Any]
Sink = Callable[[Record, Path], Path]


def atomic_write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_json(record: Record, folder: Path) -> Path:
    return atomic_write(folder / "report.json", json.dumps(record, indent=2, default=str) + "\n")


def transcript_md(record: Record) -> str:
    lines = [f"# Transcript: {record['flow']} ({record['session']})", ""]
    names = {"interviewer": "**Interviewer**", "candidate": "**Candidate**", "tool": "*tool call*"}
    for turn in record["turns"]:
        note = f" *(interrupted after {turn['heard_ms'] / 1000:.1f} s)*" if "heard_ms" in turn else ""
        lines.append(f"`{turn['t']:7.2f}s` {names.get(turn['role'], turn['role'])}: {turn['text']}{note}")
        lines.append("")
    return "\n".join(lines)


def write_transcript(record: Record, folder: Path) -> Path:
    return atomic_write(folder / "transcript.md", transcript_md(record))


def report_md(record: Record) -> str:
    outcome = "completed" if record["ok"] else "did not complete"
    lines = [
        f"# Interview report: {record['flow']}",
        "",
        f"- Session: `{record['session']}`, started {record['started']}, {record['duration_s']:.1f} s",
        f"- Outcome: {outcome} — {record['reason']}",
        f"- Final state: `{record['final_state']}`; server: {record['endpoint']}",
        f"- Candidate answers: {sum(1 for t in record['turns'] if t['role'] == 'candidate')}",
        "",
    ]
    assessment = (record.get("results") or {}).get("assessment")
    if assessment:
        from .assessment import render_markdown

        lines += [render_markdown(assessment), ""]
    else:
        lines += ["## Assessment", "", "No assessment was produced in this session.", ""]
    lines += ["## Transcript", "", transcript_md(record).split("\n", 2)[2]]
    return "\n".join(lines)


def write_report_md(record: Record, folder: Path) -> Path:
    return atomic_write(folder / "report.md", report_md(record))


_SCHEMA = """
create table if not exists sessions (
    id text primary key, flow text, started text, duration_s real, ok integer, final_state text,
    reason text, endpoint text, overall_band text, report_path text);
create table if not exists turns (
    session_id text references sessions(id), seq integer, t real, role text, text text,
    primary key (session_id, seq));
"""


def write_sqlite(record: Record, folder: Path) -> Path:
    db = folder.parent / "sessions.sqlite"
    overall = ((record.get("results") or {}).get("assessment") or {}).get("overall") or {}
    with sqlite3.connect(db, timeout=10) as conn:  # the with-block commits (one transaction)
        conn.executescript(_SCHEMA)
        conn.execute("insert or replace into sessions values (?,?,?,?,?,?,?,?,?,?)", (
            record["session"], record["flow"], record["started"], record["duration_s"], int(record["ok"]),
            record["final_state"], record["reason"], record["endpoint"], overall.get("band"),
            str(folder / "report.json")))
        conn.execute("delete from turns where session_id = ?", (record["session"],))
        conn.executemany("insert into turns values (?,?,?,?,?)", [
            (record["session"], i, t["t"], t["role"], t["text"]) for i, t in enumerate(record["turns"])])
    conn.close()
    return db


SINKS: tuple[Sink, ...] = (report_json, write_transcript, write_report_md, write_sqlite)


async def save_all(record: Record, folder: Path, sinks: tuple[Sink, ...] = SINKS) -> tuple[list[Path], list[str]]:
    """Run every sink in parallel. Returns (paths written, one line per failed sink)."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[str] = []

    async def isolated(sink: Sink) -> None:
        try:
            written.append(await asyncio.to_thread(sink, record, folder))
        except Exception as exc:  # one sink's failure must not lose the others' output
            failed.append(f"output {getattr(sink, '__name__', sink)} failed: {type(exc).__name__}: {exc}")

    async with asyncio.TaskGroup() as group:
        for sink in sinks:
            group.create_task(isolated(sink))
    return written, failed
