"""`engine serve` as a process: SIGTERM with interviews running (the shutdown of issue 14, item 6)."""

import asyncio
import json
import os
import re
import signal
import sys
import time

from serve_helpers import FLOW, http

from engine.serve.fake_page import FakePage
from engine.store import Store

SPEED = 5.0  # slow enough that the interviews are still running when the signal comes


async def start_server(tmp_path, *args):
    env = {**os.environ, "ENGINE_OPERATOR_TOKEN": "signal-test-key"}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "serve", str(FLOW.path), "--port", "0", "--out", str(tmp_path / "runs"),
        "--speed", str(SPEED), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    lines = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, f"engine serve exited: {lines} {(await proc.stderr.read()).decode()}"
        lines.append(line)
        if match := re.search(r" on (http://\S+?),", line):
            return proc, match[1], lines


async def until_line(proc, pattern, lines, limit=30):
    while not any(re.search(pattern, line) for line in lines):
        line = (await asyncio.wait_for(proc.stdout.readline(), limit)).decode()
        assert line, f"engine serve exited before printing {pattern!r}: {lines}"
        lines.append(line)


async def two_running_interviews(tmp_path, url):
    store = Store.open(str(tmp_path / "runs" / "sessions.sqlite"))
    pages = [FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED) for _ in range(2)]
    tasks = [asyncio.create_task(page.run()) for page in pages]
    for page in pages:
        await page.wait_for("transcript")  # under way: the greeting was spoken
    return store, pages, tasks


def test_sigterm_takes_no_new_interviews_and_ends_running_ones_after_the_grace_saved(tmp_path):
    async def main():
        proc, url, lines = await start_server(tmp_path, "--grace", "1s")
        try:
            store, pages, tasks = await two_running_interviews(tmp_path, url)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await until_line(proc, r"^stopping: no new interviews", lines)
            late = await asyncio.wait_for(FakePage(url, store.create_invite(FLOW.name, 600), mic=None).run(), 20)
            health = await http(f"{url}/health")
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            code = await asyncio.wait_for(proc.wait(), 60)
            took = time.monotonic() - signalled
        finally:
            if proc.returncode is None:
                proc.kill()
        rest = (await proc.stdout.read()).decode()
        return store, pages, outcomes, late, health, code, took, "".join(lines) + rest

    store, pages, outcomes, late, health, code, took, output = asyncio.run(main())
    assert code == 0 and "stopped" in output.splitlines()[-1]
    assert late.kind == "refused" and late.reason == "shutting_down"
    assert health[0] == 503
    assert took < 30  # the grace (1 s), then the finish of each session
    for page, outcome in zip(pages, outcomes, strict=True):
        assert outcome.kind == "ended" and outcome.outcome == "interrupted"
        assert "shutting down" in outcome.message
        row = store.session(page.session)
        assert row["outcome"] == "interrupted" and row["report"] and row["transcript"]
        folder = tmp_path / "runs" / page.session
        report = json.loads((folder / "report.json").read_text())
        assert report["ok"] is False and report["reason"].startswith("interrupted") and report["turns"]
        assert (folder / "transcript.md").exists() and (folder / "trace.jsonl").exists()
        assert f"session {page.session}: interrupted by the shutdown" in output


def test_a_second_signal_ends_running_interviews_without_waiting_for_the_grace(tmp_path):
    async def main():
        proc, url, lines = await start_server(tmp_path, "--grace", "10min")
        try:
            store, pages, tasks = await two_running_interviews(tmp_path, url)
            proc.send_signal(signal.SIGTERM)
            await until_line(proc, r"^stopping: no new interviews", lines)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            code = await asyncio.wait_for(proc.wait(), 60)
            return outcomes, code, time.monotonic() - signalled
        finally:
            if proc.returncode is None:
                proc.kill()

    outcomes, code, took = asyncio.run(main())
    assert code == 0 and took < 30
    assert [o.outcome for o in outcomes] == ["interrupted", "interrupted"]
