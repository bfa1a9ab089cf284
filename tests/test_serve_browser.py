"""`engine serve` in a real browser: Debian's headless Chromium, driven by Playwright, opens an invite
link on 127.0.0.1 and takes a whole interview (flows/assessment.yaml) against the simulator.

Its microphone is a WAV file of the candidate's answers spoken by espeak-ng with pauses (Chromium's
fake capture device); its speaker is the page's playback AudioWorklet, whose reports are the
session's playback.done / playback.stopped. Real time: each test takes about a minute.
"""

import asyncio
import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import FLOW, SECRET, make_persona, serving

from engine.serve.main import simulator_options
from engine.trace import read

playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None,
                       reason="espeak-ng is not installed (apt-get install espeak-ng)"),
]
LIMIT_S = 240  # one interview, in real time, on a loaded machine

# A short interview: two questions, then the assessment, its summary and goodbye.
# The first question is long, so that the candidate's first words land in it (a barge-in).
QUESTIONS = ["Could you tell me a little about yourself: where you live, what you do, and why you are learning "
             "English?", "What do you do at the weekend?", "What are your plans?"]
ANSWERS = ["I live in Lyon with my girlfriend, and I work for a small company that sells bicycles.",
           "At the weekend I cook Italian food, and I play board games with my friends."]


def persona(**changes):
    return make_persona(questions=QUESTIONS, answers=ANSWERS, reaction_s=(0.3, 0.5), tool_after=2,
                        interviewer_wpm=180, **changes)


def speech_wav(path: Path, script: list[tuple[float, str]]) -> Path:
    """A mono 16-bit WAV: for each (pause in seconds, text), silence then espeak-ng saying the text."""
    rate, parts = 22_050, []
    for n, (pause, text) in enumerate(script):
        parts.append(np.zeros(int(pause * rate), "<i2"))
        if text:
            one = path.with_name(f"part{n}.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(one), text], check=True, timeout=30)
            with wave.open(str(one)) as w:
                rate = w.getframerate()
                parts.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.concatenate(parts).tobytes())
    return path


async def take_interview(tmp_path: Path, wav: Path, drop_once: bool = False, **serve_options):
    """Open an invite link in Chromium, press Start, wait for the end. Returns what happened.
    `drop_once`: the server closes the page's WebSocket once, while the candidate talks."""
    from playwright.async_api import async_playwright

    sims: list = []
    async with serving(tmp_path, speed=1.0, voices=True, sims=sims, **serve_options) as (server, url, store):
        link = f"{url}/interview#{store.create_invite(FLOW.name, 600)}"
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop"])
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                received: list[str] = []
                page.on("websocket", lambda ws: ws.on("framereceived", lambda f: received.append(
                    f if isinstance(f, str) else "")))
                await page.goto(link)
                assert await page.inner_text("#state") == "Not started"
                await page.click("#start")
                await page.wait_for_selector("#state[data-state='speaking']", timeout=30_000)
                if drop_once:  # once the candidate has talked over the question: nothing plays meanwhile
                    await page.wait_for_selector("#state[data-state='listening']", timeout=60_000)
                    [link] = server.links.values()
                    await link._ws.close(1012, "the test drops the connection")  # type: ignore[union-attr]
                await page.wait_for_selector("#state[data-state='over'], #state[data-state='failed']",
                                             timeout=LIMIT_S * 1000)
                shot = tmp_path / "interview.png"
                await page.screenshot(path=str(shot), full_page=True)
                state, message = await page.inner_text("#state"), await page.inner_text("#message")
                lines = await page.locator("#transcript p").all_inner_texts()
            finally:
                await browser.close()
        [result] = server.results.values()
        assert server.relayed["reconnects"] == int(drop_once)
        return state, message, lines, result, sims[0].stats, errors, received, shot


def heard(result):
    """Per response: (first audio arrival, playback.started, playback.done or None, played ms)."""
    seen: dict[str, dict] = {}
    for line in read(result.folder / "trace.jsonl"):
        raw, engine = line.get("in", {}).get("server", {}), line.get("in", {}).get("engine", {})
        if raw.get("type") == "response.output_audio.delta":
            seen.setdefault(raw["response_id"], {}).setdefault("first", line["t"])
        elif engine.get("type") in ("playback.started", "playback.done"):
            seen.setdefault(engine["response_id"], {})[engine["type"].split(".")[1]] = (line["t"], engine)
        elif engine.get("type") == "playback.stopped":
            for rid in engine["data"]["dropped"]:
                seen.setdefault(rid, {})["stopped"] = (line["t"], engine)
    return seen


def check_playback_and_barge_in(result):
    """Every response with audio was reported by the browser: done when heard, or stopped by the
    barge-in, whose truncate used the browser's played ms."""
    responses = {rid: r for rid, r in heard(result).items() if "first" in r}
    assert responses
    for rid, r in responses.items():
        assert "started" in r and ("done" in r or "stopped" in r), (rid, r)
        if "done" in r:
            t_done, done = r["done"]
            ms = done["data"]["played_ms"]
            # Heard-time: done comes when the last sample has played, one audio length after the
            # first, and at least that long after the audio began to arrive.
            assert abs((t_done - r["started"][0]) - ms / 1000) < 0.25, (rid, t_done, r["started"], ms)
            assert t_done - r["first"] >= ms / 1000 - 0.05, rid
    stops = [(line["t"], line["in"]["engine"]) for line in read(result.folder / "trace.jsonl")
             if line.get("in", {}).get("engine", {}).get("type") == "playback.stopped"]
    truncates = [line["out"]["event"] for line in read(result.folder / "trace.jsonl")
                 if line.get("out", {}).get("effect") == "Send" and line["out"]["event"]["type"] ==
                 "conversation.item.truncate"]
    assert stops and truncates
    t_stop, stop = stops[0]
    assert truncates[0]["item_id"] == stop["item_id"] and truncates[0]["audio_end_ms"] == stop["data"]["played_ms"]
    # The browser's played ms is what it had played by then (heard-time), give or take a render quantum.
    t_start = responses[stop["response_id"]]["started"][0]
    assert abs((t_stop - t_start) * 1000 - stop["data"]["played_ms"]) < 250
    return stop["data"]["played_ms"]


def test_a_browser_takes_the_interview_with_a_scripted_candidate(tmp_path):
    """Runs whatever the simulator can do: its scripted candidate answers (and talks over the first
    question); the browser's microphone is relayed all along; its WebSocket drops once and the page
    reconnects."""
    wav = speech_wav(tmp_path / "mic.wav", [(1.0, "Hello, can you hear me?"), (30.0, "")])
    state, message, lines, result, stats, errors, received, shot = asyncio.run(take_interview(
        tmp_path, wav, drop_once=True, persona=persona(barge_in=(0, 1.5))))
    assert errors == []
    assert state == "Interview over" and "Thank you" in message, (state, message)
    assert result.ok and result.state == "done"
    assert any(line.startswith("Interviewer:") for line in lines) and any(line.startswith("You:") for line in lines)
    played = check_playback_and_barge_in(result)
    assert 1000 <= played <= 2500  # the candidate started talking ~1.5 s into the question
    # The capture worklet resampled to 24 kHz: its 40 ms frames (960 samples, one append each)
    # came at real time for as long as the session ran (at 44.1 or 48 kHz unresampled, ~2x as many).
    appended = stats.client_events["input_audio_buffer.append"]
    duration = json.loads((result.folder / "report.json").read_text())["duration_s"]
    assert 0.75 <= appended * 0.040 / duration <= 1.05, (appended, duration)
    assert all(SECRET not in frame for frame in received)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_browser_takes_the_interview_with_its_microphone(tmp_path):
    """The candidate is the WAV: the simulator hears the browser's audio (energy-based speech
    detection), answers come from it, and the first answer talks over the greeting."""
    options, note = simulator_options()
    if not options:
        pytest.skip(f"the simulator cannot take the candidate from the microphone yet: {note}")
    wav = speech_wav(tmp_path / "mic.wav", [(3.5, ANSWERS[0]), (10.0, ANSWERS[1]), (60.0, "")])
    state, message, lines, result, stats, errors, received, shot = asyncio.run(take_interview(
        tmp_path, wav, persona=persona(), sim_options=options))
    assert errors == []
    assert state == "Interview over" and "Thank you" in message, (state, message)
    assert result.ok and result.state == "done"
    report_turns = [line for line in lines if line.startswith("You:")]
    assert len(report_turns) >= 2  # the browser's speech made the candidate's turns
    check_playback_and_barge_in(result)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_says_clearly_why_it_cannot_start(tmp_path):
    from playwright.async_api import async_playwright

    async def main():
        async with serving(tmp_path) as (server, url, store):
            used = store.create_invite(FLOW.name, 600)
            assert store.claim(used, FLOW.name, "someone-else").ok
            expired = store.create_invite(FLOW.name, -1)
            links = {"used": f"{url}/interview#{used}", "expired": f"{url}/interview#{expired}",
                     "unknown": f"{url}/interview#not-a-real-token", "missing": f"{url}/interview"}
            shown = {}
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
                try:
                    for name, link in links.items():
                        page = await browser.new_page()
                        await page.goto(link)
                        await page.click("#start")
                        await page.wait_for_selector("#state[data-state='refused']", timeout=20_000)
                        shown[name] = await page.inner_text("#message")
                        assert await page.inner_text("#state") == "Cannot start"
                        if name == "used":
                            await page.screenshot(path=str(tmp_path / "refused.png"))
                        await page.close()
                finally:
                    await browser.close()
            return shown

    shown = asyncio.run(main())
    assert "already been used" in shown["used"]
    assert "expired" in shown["expired"]
    assert "not valid" in shown["unknown"]
    assert "needs your personal interview link" in shown["missing"]
