"""`engine serve` with scripted pages (engine/serve/fake_page.py) over real WebSockets on 127.0.0.1.

The page's protocol, the relay, admission (tokens, Origin, --max-sessions), reconnects, the
operator's view and shutdown, at simulated speed. The real browser is in test_serve_browser.py.
"""

import asyncio
import json
import sqlite3
import time

import pytest
from serve_helpers import FLOW, OPERATOR, SECRET, http, make_persona, postgres_url, serving

from engine.events import Event
from engine.serve.app import REFUSED
from engine.serve.fake_page import FakePage
from engine.serve.player import BrowserPlayer
from engine.store import REFUSALS, Store, hash_token
from engine.trace import read

SPEED = 30.0
LIMIT = 60.0  # seconds any one interview may take here


def engine_events(result, kind):
    return [(line["t"], line["in"]["engine"]) for line in read(result.folder / "trace.jsonl")
            if line.get("in", {}).get("engine", {}).get("type") == kind]


def sent(result, kind):
    return [line["out"]["event"] for line in read(result.folder / "trace.jsonl")
            if line.get("out", {}).get("effect") == "Send" and line["out"]["event"]["type"] == kind]


async def gone(server, session_id):
    """Until the session has ended (its finish has run), in this process."""
    while session_id in server.links:
        await asyncio.wait_for(server.next_change(1.0), 20)


async def one_interview(tmp, page_options=None, **options):
    async with serving(tmp, **options) as (server, url, store):
        page = FakePage(url, store.create_invite(FLOW.name, 600), speed=options.get("speed", SPEED),
                        **(page_options or {}))
        outcome = await asyncio.wait_for(page.run(), LIMIT)
        return outcome, page, server.results[outcome.session], store


# A whole interview through a page.


def test_an_interview_through_a_page_completes_with_the_same_outputs_as_engine_run(tmp_path):
    outcome, page, result, store = asyncio.run(one_interview(tmp_path))
    assert outcome.kind == "ended" and outcome.outcome == "completed" and outcome.code == 1000
    assert "over" in outcome.message and result.ok and result.state == "done"
    for name in ("report.json", "report.md", "transcript.md", "trace.jsonl"):
        assert (result.folder / name).stat().st_size > 0, name
    with sqlite3.connect(tmp_path / "runs" / "sessions.sqlite") as db:  # engine run's own row
        assert db.execute("select ok, final_state from sessions where id = ?", (outcome.session,)).fetchone() == \
            (1, "done")
    row = store.session(outcome.session)
    assert row["outcome"] == "completed" and row["state"] == "done" and row["band"] in ("B1", "B2")
    assert json.loads(row["report"])["session"] == outcome.session
    assert row["transcript"].startswith("# Transcript") and row["timeline"].startswith("<svg")
    # The page saw the interview: transcripts both ways, and the engine's listening/thinking.
    roles = {role for role, _ in page.transcripts}
    assert roles == {"interviewer", "candidate"} and page.received["status"] >= 4
    assert page.received["pcm"] > 0 and page.audio_bytes % 2 == 0


def test_every_response_is_reported_by_the_page_when_heard_not_when_it_arrived(tmp_path):
    outcome, page, result, _ = asyncio.run(one_interview(tmp_path, speed=10.0))
    assert {e["response_id"] for _, e in engine_events(result, "playback.started")} <= \
        {r["response"] for r in page.reports if r["type"] == "started"}
    done = {e["response_id"]: (t, e["data"]["played_ms"]) for t, e in engine_events(result, "playback.done")}
    # Every response the page played was reported done, once, with the length of its audio.
    page_done = {r["response"]: r["played_ms"] for r in page.reports if r["type"] == "done"}
    assert page_done and set(done) == set(page_done)
    assert {rid: ms for rid, (_, ms) in done.items()} == page_done
    audio = {}
    for line in read(result.folder / "trace.jsonl"):
        raw = line.get("in", {}).get("server", {})
        if raw.get("type") == "response.output_audio.delta":
            audio.setdefault(raw["response_id"], []).append(line["t"])
    for rid, (t_done, ms) in done.items():
        if ms == 0:
            continue
        # Heard: done comes at least one audio length after its first audio arrived (session time)...
        assert t_done - audio[rid][0] >= ms / 1000 * 0.95, rid
        # ...which is well after the last of it arrived (the server sends 4x faster than real time).
        assert t_done > audio[rid][-1] + ms / 1000 * 0.5, rid


def test_barge_in_stops_the_page_and_truncates_at_the_pages_played_ms(tmp_path):
    persona = make_persona(barge_in=(1, 1.5))  # over the second question
    outcome, page, result, _ = asyncio.run(one_interview(tmp_path, persona=persona, speed=10.0))
    assert outcome.outcome == "completed" and page.received["stop"] == 1
    stopped = [r for r in page.reports if r["type"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["played_ms"] > 0
    [(_, event)] = engine_events(result, "playback.stopped")
    assert event["data"]["played_ms"] == stopped[0]["played_ms"] and event["item_id"] == stopped[0]["item"]
    [truncate] = sent(result, "conversation.item.truncate")
    assert truncate["item_id"] == stopped[0]["item"] and truncate["audio_end_ms"] == stopped[0]["played_ms"]
    assert 1000 <= truncate["audio_end_ms"] <= 2000  # ~1.5 s after its first audio, give or take the loop


# Who may connect.


async def refused(url, token, **page):
    outcome = await asyncio.wait_for(FakePage(url, token, mic=None, **page).run(), 20)
    assert outcome.kind == "refused", outcome
    return outcome


def test_missing_unknown_used_expired_and_foreign_tokens_are_refused_with_a_message(tmp_path):
    async def main():
        async with serving(tmp_path, resume_window=0.2) as (server, url, store):
            seen = {}
            seen["missing"] = await refused(url, None)
            seen["unknown"] = await refused(url, "not-a-token")
            seen["expired"] = await refused(url, store.create_invite(FLOW.name, -1))
            seen["other_flow"] = await refused(url, store.create_invite("another-flow", 600))
            token = store.create_invite(FLOW.name, 600)
            first = FakePage(url, token, speed=SPEED)
            running = asyncio.create_task(first.run())
            await first.wait_for("welcome")
            seen["used"] = await refused(url, token)
            await first.drop()  # and never comes back: its resume key dies with the session
            first.reconnect = False
            await asyncio.wait_for(running, 20)
            await gone(server, first.session)
            seen["resume"] = await refused(url, None, resume=first.resume)
            return seen

    seen = asyncio.run(main())
    for reason, outcome in seen.items():
        assert outcome.reason == reason and outcome.code == REFUSED[reason][0]
        assert outcome.message == (REFUSALS.get(reason) or REFUSED[reason][1]) and outcome.message


def test_a_page_from_a_foreign_origin_or_without_one_is_refused(tmp_path):
    async def main():
        async with serving(tmp_path) as (server, url, store):
            token = store.create_invite(FLOW.name, 600)
            foreign = await refused(url, token, origin="http://evil.example")
            absent = await refused(url, token, origin=None)
            assert store.check(token, FLOW.name).ok  # a refused page does not use up the link
            return foreign, absent

    for outcome in asyncio.run(main()):
        assert outcome.reason == "origin" and outcome.code == 4403 and "address" in outcome.message


def test_an_allowed_origin_and_the_base_url_origin_are_accepted(tmp_path):
    async def main():
        async with serving(tmp_path, base_url="https://interview.example/", allowed_origins=("https://cdn.example",)) \
                as (server, url, store):
            results = []
            for origin in ("https://interview.example", "https://cdn.example"):
                page = FakePage(url, store.create_invite(FLOW.name, 600), origin=origin, speed=SPEED)
                task = asyncio.create_task(page.run())
                await page.wait_for("welcome")
                results.append(page.session)
                task.cancel()
            return results

    assert all(asyncio.run(main()))


def test_max_sessions_refuses_the_next_page_and_keeps_its_link(tmp_path):
    async def main():
        async with serving(tmp_path, max_sessions=1) as (server, url, store):
            first = FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED)
            running = asyncio.create_task(first.run())
            await first.wait_for("welcome")
            token = store.create_invite(FLOW.name, 600)
            full = await refused(url, token)
            assert (await asyncio.wait_for(running, LIMIT)).outcome == "completed"
            # The place is free again and the refused link still works.
            second = await asyncio.wait_for(FakePage(url, token, speed=SPEED).run(), LIMIT)
            return full, second

    full, second = asyncio.run(main())
    assert full.reason == "full" and full.code == 4429 and "try again" in full.message
    assert second.kind == "ended" and second.outcome == "completed"


# Connections that drop.


def test_a_page_that_disconnects_mid_interview_ends_the_session_saved(tmp_path):
    async def main():
        async with serving(tmp_path, resume_window=0.3) as (server, url, store):
            page = FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED, reconnect=False)
            running = asyncio.create_task(page.run())
            await page.wait_for("transcript")
            await page.drop()
            outcome = await asyncio.wait_for(running, 20)
            await gone(server, outcome.session)
            return outcome, server.results[outcome.session], store.session(outcome.session)

    outcome, result, row = asyncio.run(main())
    assert outcome.kind == "closed" and outcome.code is None
    assert not result.ok and "the candidate's page disconnected" in result.reason
    report = json.loads((result.folder / "report.json").read_text())
    assert report["ok"] is False and report["turns"]
    assert (result.folder / "transcript.md").exists() and (result.folder / "trace.jsonl").exists()
    assert row["outcome"] == "not_completed" and "disconnected" in row["reason"] and row["report"]


def test_a_page_that_comes_back_within_the_window_finishes_its_interview(tmp_path):
    async def main():
        async with serving(tmp_path, resume_window=10) as (server, url, store):
            page = FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED)
            running = asyncio.create_task(page.run())
            await page.wait_for("transcript")
            await page.drop()  # run() rejoins once with the resume key, as the page does
            outcome = await asyncio.wait_for(running, LIMIT)
            return outcome, page, server.results[outcome.session]

    outcome, page, result = asyncio.run(main())
    assert outcome.kind == "ended" and outcome.outcome == "completed" and result.ok
    assert page.received["welcome"] == 2


# Nothing leaks between candidates.


def test_no_key_token_or_audio_of_one_candidate_reaches_another_page(tmp_path):
    marker = bytes(range(1, 241)) * 8  # 1,920 bytes no interviewer audio contains

    async def main():
        async with serving(tmp_path) as (server, url, store):
            tokens = [store.create_invite(FLOW.name, 600) for _ in range(2)]
            a = FakePage(url, tokens[0], speed=SPEED, mic=marker, keep=True)
            b = FakePage(url, tokens[1], speed=SPEED, keep=True)
            outcomes = await asyncio.wait_for(asyncio.gather(a.run(), b.run()), LIMIT)
            return a, b, outcomes, tokens

    a, b, outcomes, tokens = asyncio.run(main())
    # (A's "microphone" is loud noise: a simulator that listens may hear it as extra turns.)
    assert all(o.outcome in ("completed", "completed_degraded") for o in outcomes), outcomes
    for page, other, token in ((a, b, tokens[1]), (b, a, tokens[0])):
        text = "".join(f for f in page.frames if isinstance(f, str))
        audio = b"".join(f for f in page.frames if isinstance(f, bytes))
        assert SECRET not in text and token not in text
        assert other.session not in text and other.resume not in text
        assert marker[:480] not in audio
    assert a.session != b.session


# The browser's player, alone.


def test_the_browser_player_accepts_only_reports_about_what_it_sent():
    frames, events = [], []
    player = BrowserPlayer(frames.append, events.append)
    player.feed("r1", "i1", b"\x01\x00" * 24_000)  # 1 s
    player.end("r1")
    player.report({"type": "done", "response": "r-unknown", "item": "i1", "played_ms": 10})
    player.report({"type": "progress", "item": "i1", "played_ms": 99_999})
    assert events == [] and player.played_ms("i1") == 1000  # capped at what was sent
    player.report({"type": "done", "response": "r1", "item": "i1", "played_ms": 1000})
    player.report({"type": "done", "response": "r1", "item": "i1", "played_ms": 1000})
    assert events == [Event("playback.done", response_id="r1", item_id="i1", data={"played_ms": 1000})]
    assert len(events) == 1 and events[0].data == {"played_ms": 1000}
    player.feed("r2", "i2", b"\x00\x00" * 4800)
    player.stop()
    player.feed("r2", "i2", b"\x00\x00" * 4800)  # after stop: ignored, not sent
    player.report({"type": "stopped", "response": "r2", "item": "i2", "played_ms": 5000,
                   "dropped": ["r2", "r1", "forged"]})
    stopped = events[-1]
    assert stopped.type == "playback.stopped" and stopped.item_id == "i2"
    assert stopped.data == {"played_ms": 200, "dropped": ["r2"]}  # 200 ms sent; r1 was done already
    assert [json.loads(f)["type"] for f in frames if isinstance(f, str)] == ["audio", "end", "audio", "stop"]
    assert sum(len(f) for f in frames if isinstance(f, bytes)) == 48_000 + 9_600
    for bad in ({"type": "done"}, {"type": "done", "response": "r1", "played_ms": "x"}, {"type": "stopped",
                "played_ms": -1, "dropped": "r2"}, {"type": "zap"}):
        player.report(bad)  # never raises


# The operator's view.


def test_the_operator_view_needs_its_key_and_shows_sessions_live(tmp_path):
    async def main():
        async with serving(tmp_path) as (server, url, store):
            assert (await http(f"{url}/sessions"))[0] == 401
            assert (await http(f"{url}/sessions?key=wrong"))[0] == 401
            status, headers, _ = await http(f"{url}/sessions?key={OPERATOR}")
            assert status == 303 and headers["location"] == "/sessions"
            cookie = headers["set-cookie"].split(";")[0]
            assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
            auth = {"Cookie": cookie}
            live = asyncio.create_task(_first_events(f"{url}/sessions/live", auth, n=2))
            page = FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED)
            outcome = await asyncio.wait_for(page.run(), LIMIT)
            events = await asyncio.wait_for(live, 10)
            listing = await http(f"{url}/sessions", headers=auth)
            detail = await http(f"{url}/sessions/{outcome.session}", headers={"Authorization": f"Bearer {OPERATOR}"})
            svg = await http(f"{url}/sessions/{outcome.session}/timeline.svg", headers=auth)
            report = await http(f"{url}/sessions/{outcome.session}/report.json", headers=auth)
            stats = await http(f"{url}/sessions/stats", headers=auth)
            return outcome, events, listing, detail, svg, report, stats

    outcome, events, listing, detail, svg, report, stats = asyncio.run(main())
    assert all(e["id"] == outcome.session for e in events) and events[0]["cells"]["outcome"] == "running"
    assert listing[0] == 200 and outcome.session in listing[2] and "completed" in listing[2]
    assert listing[1]["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in listing[1]["content-security-policy"]
    assert detail[0] == 200 and "Transcript" in detail[2] and "timeline.svg" in detail[2]
    assert svg[0] == 200 and svg[1]["content-type"].startswith("image/svg+xml") and svg[2].startswith("<svg")
    assert json.loads(report[2])["final_state"] == "done"
    assert json.loads(stats[2])["loop_lag"]["samples"] > 0
    for response in (listing, detail, svg, report):
        assert SECRET not in response[2]


async def _first_events(url, headers, n):
    """The first `n` `session` events of a server-sent event stream."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items()),
               "", ""]
    writer.write("\r\n".join(request).encode())
    events = []
    try:
        while len(events) < n:
            line = (await reader.readline()).decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    finally:
        writer.close()
    return events


def test_the_candidate_page_and_its_scripts_are_served_with_a_strict_policy(tmp_path):
    async def main():
        async with serving(tmp_path) as (server, url, store):
            return [await http(f"{url}{path}") for path in (
                "/interview", "/static/page.js", "/static/capture-worklet.js", "/static/playback-worklet.js",
                "/health")]

    page, script, capture, playback, health = asyncio.run(main())
    assert page[0] == 200 and 'id="start"' in page[2] and "script-src" not in page[1]["content-security-policy"]
    assert "default-src 'self'" in page[1]["content-security-policy"] and page[1]["referrer-policy"] == "no-referrer"
    assert script[0] == capture[0] == playback[0] == 200 and "registerProcessor" in playback[2]
    assert json.loads(health[2]) == {"ok": True, "draining": False, "sessions": 0, "max_sessions": 20}


# Shutdown (the signal itself is in test_serve_signals.py).


def test_shutdown_lets_a_running_interview_finish_within_the_grace(tmp_path):
    async def main():
        async with serving(tmp_path, grace=LIMIT) as (server, url, store):
            page = FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED)
            running = asyncio.create_task(page.run())
            await page.wait_for("transcript")
            started = time.monotonic()
            stopping = asyncio.create_task(server.shutdown())
            await asyncio.sleep(0)
            late = await refused(url, store.create_invite(FLOW.name, 600))
            health = await http(f"{url}/health")
            await asyncio.wait_for(stopping, LIMIT)
            return await running, late, health, time.monotonic() - started

    outcome, late, health, took = asyncio.run(main())
    assert outcome.outcome == "completed" and took < LIMIT
    assert late.reason == "shutting_down" and "restarting" in late.message
    assert health[0] == 503 and json.loads(health[2])["draining"] is True


# The sessions database.


def test_invite_tokens_are_stored_hashed_and_used_once(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/s.sqlite")
    token = store.create_invite("flow", 60)
    assert store.claim(token, "flow", "s1").ok and store.claim(token, "flow", "s2").refusal == "used"
    raw = (tmp_path / "s.sqlite").read_bytes()
    assert token.encode() not in raw and hash_token(token).encode() in raw


def test_postgresql_store_claims_each_invite_once_across_processes_and_serves_an_interview(tmp_path):
    url, why = postgres_url()
    if url is None:
        pytest.skip(why)
    first, second = Store.open(url), Store.open(url)  # two processes' stores on one database
    tokens = [first.create_invite(FLOW.name, 600) for _ in range(20)]

    async def race():
        claims = [asyncio.to_thread(store.claim, t, FLOW.name, f"s-{i}-{n}")
                  for n, t in enumerate(tokens) for i, store in enumerate((first, second))]
        return await asyncio.gather(*claims)

    claims = asyncio.run(race())
    assert sum(c.ok for c in claims) == len(tokens)  # each token won by exactly one of the two
    assert second.check(first.create_invite(FLOW.name, -1), FLOW.name).refusal == "expired"

    outcome, page, result, store = asyncio.run(one_interview(tmp_path, db=url))
    assert outcome.outcome == "completed"
    row = second.session(outcome.session)  # written by the server, read through another store
    assert row["outcome"] == "completed" and row["timeline"].startswith("<svg")
    assert any(r["id"] == outcome.session for r in second.sessions())


def test_engine_invite_prints_one_time_links(tmp_path, capsys):
    from engine.cli import main

    db = tmp_path / "db.sqlite"
    assert main(["invite", str(FLOW.path), "--db", str(db), "--count", "2", "--base-url", "https://x.example/"]) == 0
    out, err = capsys.readouterr()
    links = out.split()
    assert len(links) == 2 and all(link.startswith("https://x.example/interview#") for link in links)
    assert "valid until" in err and "2 one-time link(s)" in err
    store = Store.open(str(db))
    assert all(store.check(link.split("#")[1], FLOW.name).ok for link in links)
    assert main(["invite", str(FLOW.path), "--db", str(db), "--expires", "soon"]) == 2
    assert "--expires 'soon' is not a duration" in capsys.readouterr().err


def test_the_interviewer_connection_dropping_while_the_page_talks_ends_the_session_saved(tmp_path):
    """The Realtime connection closes while a job runs and the page still streams its microphone:
    the relay must not turn the dead socket into a crash; the flow ends the session, saved."""
    async def main():
        sims, started = [], asyncio.Event()

        async def hangs(inputs):
            started.set()
            await asyncio.Event().wait()

        async with serving(tmp_path, sims=sims, jobs={"assessment": hangs}) as (server, url, store):
            page = FakePage(url, store.create_invite(FLOW.name, 600), speed=SPEED)
            running = asyncio.create_task(page.run())
            await asyncio.wait_for(started.wait(), LIMIT)
            await sims[0].__aexit__(None, None, None)  # closes every connection of the simulator
            outcome = await asyncio.wait_for(running, LIMIT)
            return outcome, server.results[outcome.session], store.session(outcome.session)

    outcome, result, row = asyncio.run(main())
    assert outcome.kind == "ended" and outcome.outcome == "not_completed" and "saved" in outcome.message
    assert not result.ok and result.reason.startswith("connection closed in state 'ack'")
    for name in ("report.json", "report.md", "transcript.md", "trace.jsonl"):
        assert (result.folder / name).exists(), name
    assert row["outcome"] == "not_completed" and row["report"]


def test_engine_serve_says_in_one_line_why_it_cannot_start(tmp_path, capsys):
    import socket

    from engine.cli import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = {
        ("--grace", "forever"): "--grace 'forever' is not a duration",
        ("--max-sessions", "0"): "--max-sessions must be at least 1",
        ("--db", "mysql://x/y"): "use a file path, sqlite:///PATH or postgresql://",
        ("--port", str(port)): f"cannot listen on 127.0.0.1:{port}",
    }
    try:
        for args, message in cases.items():
            assert main(["serve", str(FLOW.path), "--out", str(tmp_path / "runs"), *args]) == 2
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1, err
    finally:
        busy.close()
    assert main(["serve", str(tmp_path / "missing.yaml")]) == 2
