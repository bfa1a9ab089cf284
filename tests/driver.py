"""Helpers of the driver tests: offline sessions against the simulator (in this process, loopback
connections on the virtual-time loop), and one check that a session's outputs exist and agree."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
from helpers import load_flow
from websockets.exceptions import ConnectionClosed

from engine.effects import Fired
from engine.realtime import Endpoint
from engine.runner import Session
from engine.simulator import Simulator
from engine.testing.offline import run_offline
from engine.trace import read
from engine.ui import PlainView

SECRET = "sk-test-never-printed-0123456789"  # sent as the Authorization header to the simulator
FLOW = load_flow("assessment.yaml")
URL = "ws://simulator.invalid/v1/realtime?model=gpt-realtime"
SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "engine" / "schemas" / "report.schema.json").read_text())


class Watch(PlainView):
    """A quiet view that can tell a test when the flow enters a given state."""

    def __init__(self, state: str | None = None, stream: Any = None):
        super().__init__(stream if stream is not None else io.StringIO())
        self.state, self.seen = state, asyncio.Event()

    def fired(self, t, fired: Fired, deadline) -> None:
        super().fired(t, fired, deadline)
        if fired.target == self.state:
            self.seen.set()


class Faulty:
    """The simulator's end of a connection, ended by the network after `after` frames:
    `how` is close1000, close1011, abort, freeze, bad_utf8 or expire (a session_expired error,
    then close 1000). Everything else is the loopback end's own behaviour."""

    def __init__(self, ws, how: str, after: int):
        self._ws, self.how, self.after, self.sent = ws, how, after, 0
        self.request = ws.request
        self._frozen = False

    def __aiter__(self):
        return self._ws.__aiter__()

    async def close(self, *args, **kwargs):
        await self._ws.close(*args, **kwargs)

    async def send(self, message, text=None):
        if self._frozen:
            return  # a frozen server says nothing more
        await self._ws.send(message, text)
        self.sent += 1
        if self.sent != self.after:
            return
        ws = self._ws
        if self.how == "close1000":
            await ws.close(1000)
        elif self.how == "close1011":
            await ws.close(1011, "simulated server error")
        elif self.how == "abort":
            ws.transport.abort()
        elif self.how == "freeze":
            self._frozen = True
            ws.transport.pause_reading()  # no pongs, no answer to a Close
        elif self.how == "bad_utf8":
            await ws.send(b"\xff\xfe not utf-8", text=True)
        elif self.how == "expire":
            await ws.send(json.dumps({"type": "error", "event_id": "event_expired", "error": {
                "type": "invalid_request_error", "code": "session_expired",
                "message": "Your session hit the maximum duration of 60 minutes.", "param": None, "event_id": None}}))
            await ws.close(1000)
        else:
            raise ValueError(self.how)
        if self.how != "freeze":
            raise ConnectionClosed(ws.close_rcvd, ws.close_sent)


def serving(sim: Simulator, ending: tuple[str, int] | None = None):
    """`sim`'s connection handler, optionally ended by the network (see Faulty)."""
    async def serve(ws):
        await sim.handle(Faulty(ws, *ending) if ending else ws)

    return serve


def run(out: Path, *, flow=FLOW, faults: str = "", persona=None, seed: int = 1,
        ending: tuple[str, int] | None = None, watch: str | None = None, endpoint: Endpoint | None = None,
        keepalive: tuple[float, float, float] = (20.0, 20.0, 10.0), **options: Any):
    """One offline session against the simulator (`engine.testing.offline.run_offline`: in this
    process, loopback connection, virtual time). `watch`: cancel the session when the flow enters
    that state (what Ctrl-C does to the task). Returns (Result, the simulator's stats, the Session)."""
    view = options.pop("view", None) or Watch(watch)
    ping_interval, ping_timeout, close_timeout = keepalive

    async def cancel_on_watch(session: Session, task: asyncio.Task) -> None:
        await view.seen.wait()
        task.cancel()

    ran = run_offline(flow, out, persona=persona, seed=seed, faults=faults,
                      endpoint=endpoint or Endpoint(URL, api_key=SECRET, simulated=True),
                      wrap=(lambda ws: Faulty(ws, *ending)) if ending else None,
                      control=cancel_on_watch if watch is not None else None, ping_interval=ping_interval,
                      ping_timeout=ping_timeout, close_timeout=close_timeout, view=view, **options)
    return ran.result, ran.sim, ran.session


def trace_of(result) -> list[dict]:
    return list(read(result.folder / "trace.jsonl"))


def fired_path(lines) -> list[str]:
    return [line["out"]["target"] for line in lines if "out" in line and line["out"]["effect"] == "Fired"]


def sent_events(lines) -> list[dict]:
    return [line["out"]["event"] for line in lines if line.get("out", {}).get("effect") == "Send"]


def shown(text: str) -> str:
    """How a turn's text appears in the Markdown outputs (unencodable characters escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def outputs_agree(folder: Path, *, outcome: str | None = None) -> dict:
    """report.json, report.md, transcript.md and the SQLite row exist, are valid and say the same.
    Returns the report."""
    report = json.loads((folder / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    if outcome is not None:
        assert report["outcome"] == outcome, report["reason"]
    assert report["ok"] == (report["outcome"] in ("completed", "completed_degraded"))
    for stamp in (report["started"], report["ended"]):
        assert datetime.datetime.fromisoformat(stamp).tzinfo is not None
    transcript = (folder / "transcript.md").read_text()
    md = (folder / "report.md").read_text()
    for turn in report["turns"]:
        if turn.get("text"):
            assert shown(turn["text"]) in transcript and shown(turn["text"]) in md
    assert shown(report["reason"]) in md
    with sqlite3.connect(folder.parent / "sessions.sqlite") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("select * from sessions where id = ?", (report["session"],)).fetchone()
        turns = db.execute("select role, text from turns where session_id = ? order by seq",
                           (report["session"],)).fetchall()
        version = db.execute("pragma user_version").fetchone()[0]
    db.close()
    assert version == 2
    assert row is not None
    for key in ("outcome", "final_state", "reason", "flow", "started", "ended"):
        assert row[key] == shown(report[key]), key
    assert row["ok"] == int(report["ok"]) and row["answers"] == report["counts"]["answers"]
    assert [(t["role"], t["text"]) for t in turns] == [(t["role"], None if t.get("text") is None else shown(t["text"]))
                                                        for t in report["turns"]]
    modes = {(folder / name).stat().st_mode & 0o777 for name in ("report.json", "report.md", "transcript.md")}
    if (folder / "trace.jsonl").exists():
        modes.add((folder / "trace.jsonl").stat().st_mode & 0o777)
    modes.add((folder.parent / "sessions.sqlite").stat().st_mode & 0o777)
    assert len(modes) == 1, f"outputs have different modes: {sorted(map(oct, modes))}"
    return report
