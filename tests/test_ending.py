"""One ending path: every way a session can end reaches the same finish, which writes report.json,
report.md, transcript.md and the SQLite row (checked to agree) and says in one line why it ended."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import websockets
from driver import FLOW, SECRET, URL, Watch, outputs_agree, run, serving, trace_of
from helpers import FLOWS, ROOT
from websockets.asyncio.server import serve

from engine.realtime import Endpoint, Transport
from engine.runner import Result, Session, exit_code

# The network ends the connection after this many server frames: mid-interview (the third question).
MID = 250


@pytest.mark.parametrize(("how", "reason"), [
    ("close1000", "the server closed the connection (1000)"),
    ("close1011", "the server closed the connection (1011: simulated server error)"),
    ("abort", "the connection dropped without a close frame"),
    ("freeze", "the engine closed the connection (1011: keepalive ping timeout)"),
    ("bad_utf8", "the engine closed the connection (1007: invalid start byte at position 0)"),
    ("expire", "Your session hit the maximum duration of 60 minutes."),
])
def test_each_way_a_connection_ends_saves_everything(tmp_path, how, reason):
    result, _, _ = run(tmp_path, ending=(how, MID))
    assert result.outcome == "not_completed" and not result.ok and exit_code(result) == 1
    report = outputs_agree(result.folder, outcome="not_completed")
    assert [t["role"] for t in report["turns"]][:2] == ["interviewer", "candidate"]  # what was said is kept
    closed = [line["in"]["engine"] for line in trace_of(result)
              if line.get("in", {}).get("engine", {}).get("type") == "session.closed"]
    if how != "expire":
        assert result.reason.startswith("connection closed in state '") and result.reason.endswith(reason)
        assert len(closed) == 1 and closed[0]["data"]["reason"] == reason
    else:  # the session ends on the error itself, before the close that follows it
        assert result.reason.startswith("the server expired the session in state '")
        assert result.reason.endswith(reason) and closed == []
        errors = [line["in"]["server"]["error"]["code"] for line in trace_of(result)
                  if line.get("in", {}).get("server", {}).get("type") == "error"]
        assert errors == ["session_expired"] and report["counts"]["server_errors"] == 1


def test_a_frozen_server_is_left_after_the_keepalive_bounds(tmp_path):
    """The keepalive ends the session after ping_interval + ping_timeout + close_timeout at most."""
    result, _, _ = run(tmp_path, ending=("freeze", MID), keepalive=(5.0, 5.0, 2.0), jobs={})
    report = json.loads((result.folder / "report.json").read_text())
    frozen_at = max(line["t"] for line in trace_of(result) if "in" in line and "server" in line["in"])
    closed_at = next(line["t"] for line in trace_of(result)
                     if line.get("in", {}).get("engine", {}).get("type") == "session.closed")
    assert 5.0 <= closed_at - frozen_at <= 12.0 + 1e-6
    assert report["outcome"] == "not_completed"


def test_the_real_transport_reports_how_a_real_socket_ended():
    """Over 127.0.0.1 (not loopback): a normal close, an invalid UTF-8 frame, a frozen server."""
    async def closes(ws):
        await ws.close(1000)

    async def bad_utf8(ws):
        await ws.send(b"\xff", text=True)
        await ws.wait_closed()

    async def freezes(ws):
        ws.transport.pause_reading()
        await asyncio.Event().wait()  # cancelled below: a frozen server never learns the client left

    async def ending(handler):
        handlers = []

        async def serving(ws):
            handlers.append(asyncio.current_task())
            await handler(ws)

        async with serve(serving, "127.0.0.1", 0, ping_interval=None, close_timeout=0.1) as server:
            port = server.sockets[0].getsockname()[1]
            transport = await Transport.connect(Endpoint(f"ws://127.0.0.1:{port}/v1/realtime"),
                                                ping_interval=0.05, ping_timeout=0.05, close_timeout=0.05)
            events = []
            await asyncio.wait_for(transport.reader(events.append, lambda note: None), 10)
            await transport.close(0.1)
            for task in handlers:
                task.cancel()
            return events[-1].data["reason"]

    assert asyncio.run(ending(closes)) == "the server closed the connection (1000)"
    assert asyncio.run(ending(bad_utf8)) == "the engine closed the connection (1007: invalid start byte at position 0)"
    assert asyncio.run(ending(freezes)) == "the engine closed the connection (1011: keepalive ping timeout)"


class Breaking(Transport):
    """A transport whose reader fails after some frames, like the close_rcvd AttributeError did."""

    def __init__(self, inner: Transport, after: int, message: str):
        super().__init__(inner._ws, inner._secrets, peer=inner._peer)
        self.after, self.message = after, message

    async def reader(self, put, note):
        count = 0

        def counting(event):
            nonlocal count
            count += 1
            if count > self.after:
                raise AttributeError(self.message)
            put(event)

        await super().reader(counting, note)


def test_a_bug_in_a_task_ends_the_session_as_an_internal_error_with_everything_saved(tmp_path, capsys):
    from engine import vloop
    from engine.realtime import in_process
    from engine.simulator import Simulator

    async def main():
        sim = Simulator(seed=1)
        inner = in_process(serving(sim))

        async def connect(endpoint):
            message = f"'ClientConnection' object has no attribute 'close_rcvd' {SECRET}"
            return Breaking(await inner(endpoint), 200, message)

        session = Session(FLOW, Endpoint(URL, api_key=SECRET, simulated=True), out=tmp_path, view=Watch(),
                          connect=connect)
        return await session.run()

    result = vloop.run(main())
    assert result.outcome == "error" and not result.ok and exit_code(result) == 1
    assert result.reason == ("internal error: AttributeError: "
                             "'ClientConnection' object has no attribute 'close_rcvd' ***")
    report = outputs_agree(result.folder, outcome="error")
    assert report["turns"]  # nothing gathered was lost
    notes = [line["note"] for line in trace_of(result) if "note" in line]
    assert any("Traceback (most recent call last)" in n and "AttributeError" in n for n in notes)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal error: AttributeError" in err
    assert SECRET not in err and all(SECRET not in n for n in notes)


class Exploding:
    """The core, failing on its n-th event (until the core turns its own failures into End)."""

    def __init__(self, iv, after: int):
        self._iv, self._n, self._after = iv, 0, after

    def __getattr__(self, name):
        return getattr(self._iv, name)

    def receive(self, event, now):
        self._n += 1
        if self._n == self._after:
            raise KeyError("a bug in the core")
        return self._iv.receive(event, now)


def test_a_bug_in_the_core_ends_the_session_as_an_internal_error(tmp_path):
    from engine import vloop
    from engine.realtime import in_process
    from engine.simulator import Simulator

    async def main():
        sim = Simulator(seed=1)
        session = Session(FLOW, Endpoint(URL, simulated=True), out=tmp_path, view=Watch(),
                          connect=in_process(serving(sim)))
        session.iv = Exploding(session.iv, 300)
        return await session.run()

    result = vloop.run(main())
    assert result.outcome == "error" and result.reason.startswith("internal error: KeyError")
    outputs_agree(result.folder, outcome="error")


def test_exit_codes():
    def result(outcome, signal_name=None):
        return Result(outcome in ("completed", "completed_degraded"), "", Path("."), "s", outcome=outcome,
                      signal=signal_name)

    assert [exit_code(result(o)) for o in ("completed", "completed_degraded", "not_completed", "error")] == [0, 0, 1, 1]
    assert exit_code(result("interrupted", "SIGINT")) == 130
    assert exit_code(result("interrupted", "SIGTERM")) == 143
    assert exit_code(result("interrupted", "SIGHUP")) == 129


def test_interrupt_ends_the_interview_and_a_second_one_skips_outputs_not_yet_begun(tmp_path):
    """interrupt() is what a signal does. The second call comes while the first output is being
    written: that one is finished, the ones after it are skipped and named."""
    started, release = threading.Event(), threading.Event()

    def slow(record, folder):  # the first output: writing, and slow
        if record["outcome"] != "in_progress":
            started.set()
            assert release.wait(30)
        return folder / "slow"

    holder = {}

    class Interrupting(Watch):
        def fired(self, t, fired, deadline):
            super().fired(t, fired, deadline)
            if fired.target == "asking" and "done" not in holder:
                holder["done"] = True
                holder["session"].interrupt("SIGTERM")

        def finishing(self, t, end):
            super().finishing(t, end)

            def second():  # the second signal, once the slow output has begun
                assert started.wait(30)
                holder["loop"].call_soon_threadsafe(holder["session"].interrupt, "SIGTERM")
                assert holder["session"]._hurry.wait(30)  # the loop has taken the second signal
                release.set()
            threading.Thread(target=second, daemon=True).start()

    from engine import vloop
    from engine.realtime import in_process
    from engine.simulator import Simulator
    from engine.sinks import SINKS

    async def main():
        holder["loop"] = asyncio.get_running_loop()
        sim = Simulator(seed=1)
        session = holder["session"] = Session(FLOW, Endpoint(URL, simulated=True), out=tmp_path, view=Interrupting(),
                                              connect=in_process(serving(sim)), sinks=(slow, *SINKS))
        return await session.run()

    result = vloop.run(main())
    assert result.outcome == "interrupted" and result.signal == "SIGTERM" and exit_code(result) == 143
    assert result.reason == "interrupted by SIGTERM in state 'asking'"
    skipped = [f for f in result.failures if "not written: stopped waiting" in f]
    assert [f.split()[1] for f in skipped] == ["report_json", "write_transcript", "write_report_md", "write_sqlite"]
    assert not (result.folder / "report.json").exists() or \
        json.loads((result.folder / "report.json").read_text())["outcome"] == "in_progress"


def test_an_interrupt_whose_cancel_a_library_drops_still_ends_the_session_interrupted(tmp_path):
    """Python 3.11's asyncio.wait_for drops a cancel that lands as the awaited thing completes (seen:
    SIGTERM as the WebSocket opened, and the interview ran to its end). Whatever drops the cancel,
    the interrupt's End stands and nothing more is driven."""
    from engine import vloop
    from engine.realtime import in_process
    from engine.simulator import Simulator

    holder = {}
    real = in_process(serving(Simulator(seed=1)))

    async def connect_dropping_the_cancel(endpoint):
        holder["session"].interrupt("SIGTERM")  # the signal arrives while connecting...
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # ...and the library swallows it, completing the connection
        return await real(endpoint)

    async def main():
        session = holder["session"] = Session(FLOW, Endpoint(URL, simulated=True), out=tmp_path, view=Watch(None),
                                              connect=connect_dropping_the_cancel)
        return await session.run()

    result = vloop.run(main())
    assert result.outcome == "interrupted" and exit_code(result) == 143
    assert result.reason.startswith("interrupted by SIGTERM in state ")
    report = outputs_agree(result.folder, outcome="interrupted")
    assert report["counts"]["responses"] == 0  # the flow was not driven after the interrupt


# Signals, for real: `engine run` in a subprocess against its embedded simulator --------------------


def engine_run(out: Path, *extra: str, speed: str = "10") -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "engine", "run", str(FLOWS / "assessment.yaml"), "--no-ui",
                             "--audio", "none", "--speed", speed, "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, marks: list[tuple[str, int]]) -> list[str]:
    """Send each signal once its line has appeared on stdout; the whole output."""
    lines = []
    pending = list(marks)
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when the process closes stdout (it exits)
        lines.append(line)
        while pending and pending[0][0] in line:
            proc.send_signal(pending.pop(0)[1])
    proc.wait(30)
    return lines


# Each scenario: the lines that trigger the signals, in order. They run side by side (a process
# each) to keep the suite short; each is checked on its own.
# At --speed 10 the interview lasts ~5 s, long after the last mark (1.3 s): the signal always
# finds it running, however slow the machine is.
SIGNAL_SCENARIOS = {
    "SIGTERM on the first line, before the connection is open": [("— session", signal.SIGTERM)],
    "SIGHUP as the greeting starts": [("-> greeting", signal.SIGHUP)],
    "SIGINT (Ctrl-C) while waiting for the first answer": [("-> listening", signal.SIGINT)],
    "SIGTERM mid-greeting, then again during the finish": [("interviewer:", signal.SIGTERM),
                                                           ("ending (interrupted)", signal.SIGTERM)],
}


def test_signals_end_engine_run_with_everything_saved(tmp_path):
    runs = {}

    def scenario(name, marks, out):
        proc = engine_run(out)
        runs[name] = (proc, out, marks, signal_when(proc, marks), proc.stderr.read())

    threads = [threading.Thread(target=scenario, args=(name, marks, tmp_path / f"run{i}"))
               for i, (name, marks) in enumerate(SIGNAL_SCENARIOS.items())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name, (proc, out, marks, lines, err) in runs.items():
        number = marks[0][1]
        signal_name = signal.Signals(number).name
        assert proc.returncode == 128 + number, (name, "".join(lines) + err)
        assert "Traceback" not in err, name
        last = [line for line in lines if line.startswith("stopped: ")]
        assert len(last) == 1 and last[0].startswith(f"stopped: interrupted by {signal_name} in state '"), name
        folder = next(p for p in out.iterdir() if p.is_dir())
        assert not list(folder.glob(".*.tmp")), name  # nothing half-written
        if len(marks) == 1:
            report = outputs_agree(folder, outcome="interrupted")
            assert report["reason"] == last[0].removeprefix("stopped: ").strip(), name
            assert (folder / "trace.jsonl").exists(), name
        else:  # the second signal: outputs not yet begun may be skipped, and say so
            text = "".join(lines)
            for file, sink in (("report.json", "report_json"), ("transcript.md", "write_transcript"),
                               ("report.md", "write_report_md")):
                assert (folder / file).exists() or f"output {sink} not written" in text, (name, file)


def test_ctrl_c_before_the_session_folder_exists_prints_a_line(tmp_path):
    """SIGINT while the flow is still being loaded (the point is made exact by the wrapper)."""
    code = ("import os, signal, sys; import engine.cli as cli; real = cli.load_flow_or_report\n"
            "def loading(path):\n    os.kill(os.getpid(), signal.SIGINT); return real(path)\n"
            "cli.load_flow_or_report = loading\nsys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(FLOWS / "assessment.yaml"), "--no-ui",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines() == ["engine: interrupted by SIGINT"]
    assert not any(tmp_path.iterdir())


def test_sigterm_while_the_simulator_starts_prints_a_line(tmp_path):
    code = ("import os, signal, sys; import engine.simulator as s; real = s.Simulator.__aenter__\n"
            "async def starting(self):\n    os.kill(os.getpid(), signal.SIGTERM); return await real(self)\n"
            "s.Simulator.__aenter__ = starting\nimport engine.cli as cli\nsys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(FLOWS / "assessment.yaml"), "--no-ui",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "stopped: interrupted by SIGTERM before the session started"
    assert "Traceback" not in proc.stderr


def test_a_key_in_the_url_never_shows_when_the_connection_fails(tmp_path):
    key, other = "sk-live-in-the-environment-0042", "tok-in-the-query-0043"
    env = {**os.environ, "OPENAI_API_KEY": key}
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(FLOWS / "assessment.yaml"), "--no-ui",
                           "--realtime-url", f"ws://user:{key}@127.0.0.1:9/v1/realtime?api_key={other}&model=m",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "not completed: cannot connect to ws://***@127.0.0.1:9/v1/realtime?api_key=***&model=m" in proc.stdout
    everything = proc.stdout + proc.stderr + "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".sqlite")
    with __import__("sqlite3").connect(tmp_path / "sessions.sqlite") as db:
        everything += repr(db.execute("select * from sessions").fetchall())
    assert key not in everything and other not in everything
    outputs_agree(next(p for p in tmp_path.iterdir() if p.is_dir()), outcome="not_completed")


def test_websockets_close_api_is_public():
    """The transport reads only the exception's rcvd/sent: the attributes websockets documents."""
    exc = websockets.exceptions.ConnectionClosedError(None, None)
    assert exc.rcvd is None and exc.sent is None


def test_frames_that_are_not_events_are_skipped_and_counted():
    """Not JSON, not an object, nested too deep for the parser: each noted once, the reader goes on."""
    from engine import loopback, vloop

    async def main():
        client, server = loopback.pair()
        transport = Transport(client)
        for frame in ("{not json", "[1, 2]", "[" * 100_000 + "]" * 100_000, '{"type": "session.created"}'):
            await server.send(frame)
        await server.close()
        events, notes = [], []
        await transport.reader(events.append, notes.append)
        return [e.type for e in events], notes, transport.skipped

    types, notes, skipped = vloop.run(main())
    assert types == ["session.created", "session.closed"] and skipped == 3
    assert notes[-1] == "skipped a bad frame: JSON nested too deep"
