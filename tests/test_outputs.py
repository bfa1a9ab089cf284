"""What a session leaves on disk: when the disk says no (read-only, full), how big the trace may
grow, the SQLite schema and its migration, the report's JSON Schema, and that no output, line of
output or error ever shows the key."""

import errno
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from driver import FLOW, SCHEMA, SECRET, outputs_agree, run, shown, trace_of
from helpers import FLOWS, ROOT, load_flow

from engine.events import Event
from engine.realtime import Endpoint
from engine.replay import replay
from engine.runner import check_out
from engine.sinks import SCHEMA_VERSION, write_sqlite
from engine.trace import FORMAT, TraceWriter, read

# Disk ---------------------------------------------------------------------------------------------


def readonly_run(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`engine run --out OUT` where OUT cannot be written: a 0555 folder, or, as root (who may
    write there anyway), a read-only tmpfs mounted in a private mount namespace."""
    command = [sys.executable, "-m", "engine", "run", str(FLOWS / "assessment.yaml"), "--no-ui", "--out", str(out),
               *args]
    if os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o555)
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a read-only folder")
    out.mkdir()
    script = 'mount -t tmpfs -o ro,size=64k tmpfs "$0" && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(out), *command],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    if "mount:" in proc.stderr or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a read-only tmpfs here: {proc.stderr.strip()}")
    return proc


def test_a_read_only_out_is_one_line_and_exit_2(tmp_path):
    proc = readonly_run(tmp_path / "runs")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"engine run: {tmp_path / 'runs'}")
    assert lines[0].endswith(("Read-only file system", "Permission denied")), lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    assert check_out(tmp_path / "runs") == f"{tmp_path / 'runs'}: File exists"
    assert check_out(tmp_path / "runs" / "below") == f"{tmp_path / 'runs' / 'below'}: Not a directory"
    assert check_out(tmp_path / "fine") is None and (tmp_path / "fine").is_dir()
    assert list((tmp_path / "fine").iterdir()) == []  # the probe file is gone


class FullDisk(io.StringIO):
    """A trace file on a disk that fills up after `room` characters."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(text)


def test_a_full_disk_stops_the_trace_with_one_warning_and_the_interview_goes_on(tmp_path):
    view_lines = io.StringIO()
    from driver import Watch

    result, _, _ = run(tmp_path, open_trace=lambda path: FullDisk(100_000), view=Watch(stream=view_lines))
    assert result.ok and result.outcome == "completed", result.reason  # the interview went on
    assert result.failures == ["trace stopped: No space left on device (the session goes on)"]
    assert view_lines.getvalue().count("No space left on device") == 1  # one warning
    outputs_agree(result.folder, outcome="completed")  # every other output was still written
    assert not (result.folder / "trace.jsonl").exists() and not (result.folder / "trace.jsonl.part").exists()


# An offline session (virtual time: the same path however loaded the machine is), in a process of its
# own so that its folder can be a private tmpfs.
OFFLINE_SESSION = """
import sys
from pathlib import Path
from engine.flow import load
from engine.testing.offline import run_offline
ran = run_offline(load(sys.argv[1]), Path(sys.argv[2]), persona=sys.argv[3], session_id="session")
print(ran.result.outcome, *(f"warning: {line}" for line in ran.result.failures), sep="\\n")
sys.exit(0 if ran.result.ok else 1)
"""


def test_a_full_tmpfs_leaves_room_for_the_reports(tmp_path):
    """For real: a session on a 2.1 MB tmpfs (a private mount, as root). The trace stops when the
    disk is nearly full; the reports are written."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs")
    out = tmp_path / "small"
    out.mkdir()
    copy = tmp_path / "copy"  # the reports are copied out before the mount goes away
    script = ('mount -t tmpfs -o size=2150k tmpfs "$0" && "$@"; status=$?; cp -r "$0" "$COPY"; exit $status')
    command = [sys.executable, "-c", OFFLINE_SESSION, str(FLOWS / "assessment.yaml"), str(out),
               str(ROOT / "benchmarks" / "personas" / "short.yaml")]
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(out), *command],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COPY": str(copy)})
    if "mount:" in proc.stderr or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: trace stopped: the disk is nearly full" in proc.stdout
    folder = next(p for p in copy.iterdir() if p.is_dir())
    outputs_agree(folder, outcome="completed")


# The trace ----------------------------------------------------------------------------------------


def test_the_trace_is_capped_with_a_final_note(tmp_path):
    result, _, _ = run(tmp_path, trace_max_bytes=40_000)
    assert result.ok  # the session does not care
    trace = result.folder / "trace.jsonl"
    assert trace.stat().st_size <= 40_000
    lines = list(read(trace))
    assert lines[-1]["note"].startswith("trace stopped at 40000 bytes (the cap): ")
    assert result.failures == ["trace reached its cap of 40000 bytes; later lines are not written"]
    outputs_agree(result.folder, outcome="completed")


def test_noise_beyond_a_count_is_summarised_and_the_trace_still_replays(tmp_path):
    """Effect-less high-rate and unknown events past the count are only counted; replay needs
    nothing of them."""
    from engine.interview import Interview

    flow = load_flow("assessment.yaml")
    iv = Interview(flow)
    trace = TraceWriter(tmp_path / "trace.jsonl", {"flow": flow.path}, summarise_after=5)
    trace.start(0.0)
    trace.effects(0.0, iv.start(0.0))
    for i in range(40):
        for event in (Event("sim.future_feature", data={"type": "sim.future_feature", "n": i}),
                      Event("rate_limits.updated", data={"type": "rate_limits.updated", "rate_limits": []})):
            trace.event(0.1 * i, event)
            trace.effects(0.1 * i, iv.receive(event, 0.1 * i))
    trace.close()
    lines = list(read(tmp_path / "trace.jsonl"))
    assert lines[0]["meta"]["format"] == FORMAT and lines[0]["meta"]["engine"]
    kinds = [line["in"]["server"]["type"] for line in lines if "in" in line]
    assert kinds.count("sim.future_feature") == 5 and kinds.count("rate_limits.updated") == 5
    assert lines[-1]["summary"] == {"sim.future_feature": 35, "rate_limits.updated": 35}
    assert replay(lines, flow) is None


def test_old_and_new_traces_replay(tmp_path):
    result, _, _ = run(tmp_path, faults="duplicate,unknown_events")
    lines = trace_of(result)
    assert lines[0]["meta"]["format"] == FORMAT
    assert replay(lines, FLOW) is None
    old = [{"meta": {k: v for k, v in lines[0]["meta"].items() if k not in ("format", "engine")}}, *lines[1:]]
    assert replay(old, FLOW) is None  # a format-1 trace: no format, no version


# SQLite -------------------------------------------------------------------------------------------


OLD_SCHEMA = """
create table sessions (
    id text primary key, flow text, started text, duration_s real, ok integer, final_state text,
    reason text, endpoint text, overall_band text, report_path text);
create table turns (
    session_id text references sessions(id), seq integer, t real, role text, text text,
    primary key (session_id, seq));
"""


def test_an_old_sessions_database_is_migrated(tmp_path):
    db = tmp_path / "sessions.sqlite"
    with sqlite3.connect(db) as conn:  # as engine 0.1 left it
        conn.executescript(OLD_SCHEMA)
        conn.execute("insert into sessions values (?,?,?,?,?,?,?,?,?,?)",
                     ("old-1", "english-assessment", "2026-11-30T10:00:00", 42.0, 1, "done",
                      "reached final state 'done'", "simulator", "B1", "x/report.json"))
        conn.execute("insert into turns values ('old-1', 0, 1.0, 'interviewer', 'Hello')")
    conn.close()
    result, _, _ = run(tmp_path)
    outputs_agree(result.folder, outcome="completed")
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION
        old = conn.execute("select outcome, ok, overall_band, ended from sessions where id = 'old-1'").fetchone()
        assert old == ("completed", 1, "B1", None)
        assert conn.execute("select text, transcribed from turns where session_id = 'old-1'").fetchall() == [
            ("Hello", None)]
        assert conn.execute("select count(*) from sessions").fetchone()[0] == 2
    conn.close()


def test_a_newer_database_is_refused_by_the_sink_alone(tmp_path):
    with sqlite3.connect(tmp_path / "sessions.sqlite") as conn:
        conn.execute(f"pragma user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    result, _, _ = run(tmp_path)
    assert result.ok
    assert any("newer than this engine's" in f for f in result.failures)
    assert (result.folder / "report.json").exists() and (result.folder / "report.md").exists()


def test_sqlite_rows_are_written_with_named_columns(tmp_path):
    """A database whose columns are in another order (added by hand) still gets each value right."""
    db = tmp_path / "sessions.sqlite"
    record = json.loads(json.dumps({
        "session": "s1", "flow": "f", "flow_path": "f.yaml", "started": "2026-12-01T10:00:00+01:00",
        "ended": "2026-12-01T10:01:00+01:00", "duration_s": 60.0, "endpoint": "simulator", "final_state": "done",
        "outcome": "completed", "ok": True, "reason": "reached final state 'done'",
        "counts": dict.fromkeys(("responses", "answers", "timeouts", "stale", "skipped", "collisions",
                                 "server_errors", "events"), 1),
        "turns": [{"role": "candidate", "text": None, "t": 1.0, "transcribed": False}], "results": {}}))
    jsonschema.validate(record, SCHEMA)
    (tmp_path / "s1").mkdir()
    write_sqlite(record, tmp_path / "s1")
    with sqlite3.connect(db) as conn:
        conn.execute("alter table sessions add column note text")
    conn.close()
    write_sqlite({**record, "reason": "again"}, tmp_path / "s1")
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("select * from sessions").fetchone())
        turn = dict(conn.execute("select * from turns").fetchone())
    conn.close()
    assert row["reason"] == "again" and row["ended"] == "2026-12-01T10:01:00+01:00" and row["note"] is None
    assert row["outcome"] == "completed" and row["answers"] == 1
    assert turn["text"] is None and turn["transcribed"] == 0


# Secrets ------------------------------------------------------------------------------------------


def test_the_key_is_nowhere_after_a_session(tmp_path, capsys):
    """The key as the Authorization header, in the URL's userinfo and in its query string: not in
    any file, any line printed, any row."""
    key, token = SECRET, "qtok-0123456789abcdef"
    endpoint = Endpoint(f"ws://reader:{key}@simulator.invalid/v1/realtime?model=gpt-realtime&api_key={token}",
                        api_key=key, simulated=True)
    view_lines = io.StringIO()
    from driver import Watch

    result, _, _ = run(tmp_path, endpoint=endpoint, view=Watch(stream=view_lines), faults="garbage")
    assert result.ok
    captured = capsys.readouterr()
    texts = [view_lines.getvalue(), captured.out, captured.err, repr(result), repr(endpoint)]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".sqlite"]
    with sqlite3.connect(tmp_path / "sessions.sqlite") as db:
        texts += [repr(db.execute(f"select * from {table}").fetchall()) for table in ("sessions", "turns")]
    db.close()
    for secret in endpoint.secrets:
        assert not any(secret in text for text in texts), secret
    assert {key, token} <= set(endpoint.secrets)
    assert endpoint.display_url == "ws://***@simulator.invalid/v1/realtime?model=gpt-realtime&api_key=***"


# Text that does not encode ------------------------------------------------------------------------


def test_a_surrogate_and_markup_in_a_transcript(tmp_path):
    """A lone surrogate (valid JSON, not UTF-8) and rich markup in the candidate's words: the
    session completes, every output is written and they agree."""
    from driver import Watch

    from engine.simulator import load_persona

    persona = load_persona(FLOWS / "personas" / "default.yaml")
    from engine.sim.scenario import Answer

    # No persona file can hold a lone surrogate (it would not be UTF-8), but a server can send one
    # (JSON "\ud800"): build the answer without validation so the simulator transcribes it as is.
    odd = ["I am [inaudible] from Lyon \ud800 and I like it."]
    answers = [Answer.model_construct(text=odd[0]), *persona.candidate.answers[1:]]
    persona = persona.model_copy(update={"candidate": persona.candidate.model_copy(update={"answers": answers})})
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # a terminal that must encode
    result, _, _ = run(tmp_path, persona=persona, view=Watch(stream=stream))
    assert result.ok, result.reason
    assert not result.failures
    report = outputs_agree(result.folder, outcome="completed")
    assert report["turns"][1]["text"] == odd[0]
    assert shown(odd[0]) in (result.folder / "transcript.md").read_text()
    stream.flush()
    printed = stream.buffer.getvalue().decode("utf-8")
    assert "I am [inaudible] from Lyon ? and I like it." in printed
