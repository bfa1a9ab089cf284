"""`engine chat` driven through its input stream, as a person at a terminal would: a subprocess with
pipes; each test waits for the interviewer's line, then types. Sessions run against the simulator
(no scripted candidate) on the starter flow of `engine init`, at --speed 20 (bounded waits).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.cli import main

WAIT = 60.0  # seconds any one expected line may take on a loaded machine


class Chat:
    """`engine chat` in a subprocess: `expect` a line, `type` one."""

    def __init__(self, flow: Path, out: Path, *args: str, speed: float = 20):
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "chat", str(flow), "--speed", str(speed), "--out", str(out), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env,
            cwd=flow.parent,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, text: str) -> str:
        """The next line that contains `text` (earlier lines are kept in `lines`)."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no line with {text!r} within {WAIT:g} s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"output ended before a line with {text!r}:\n" + "\n".join(self.lines)
                                     + f"\nstderr: {self.proc.stderr.read() if self.proc.stderr else ''}")
            self.lines.append(line)
            if text in line:
                return line

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def finish(self) -> tuple[int, str]:
        """Exit code and stderr once the session has ended."""
        try:
            while (line := self._queue.get(timeout=WAIT)) is not None:
                self.lines.append(line)
            code = self.proc.wait(WAIT)
        except (queue.Empty, subprocess.TimeoutExpired):
            self.proc.kill()
            raise AssertionError("engine chat did not end:\n" + "\n".join(self.lines)) from None
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def path(self) -> list[str]:
        """The states the session went through, from its `-> state (on event)` lines."""
        return [line.split("  -> ")[1].split()[0] for line in self.lines if "  -> " in line]


@pytest.fixture
def starter(tmp_path: Path) -> Path:
    assert main(["init", str(tmp_path / "flow")]) == 0
    return tmp_path / "flow"


def _session(out: Path) -> tuple[dict, str]:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((folder / "report.json").read_text()), (folder / "transcript.md").read_text()


def test_typing_the_answers_takes_the_flow_to_its_final_state(starter: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    chat = Chat(starter / "interview.yaml", out, "--persona", "candidate.persona.yaml")
    answers = ["I'm Alex, I repair bicycles in a small shop.", "I'd like to open a second shop."]
    first = chat.expect("interviewer:")
    assert "Hello, I'm Sam. Could you tell me a little about yourself and your work?" in first
    chat.type(answers[0])  # typed while the question is still being heard: it waits for the end of it
    assert "Where would you like to be in two years?" in chat.expect("interviewer:")
    chat.type(answers[1])
    assert "Let me record." in chat.expect("interviewer:")  # the flow's own tool, called as it asked
    chat.expect("We will be in touch within a week.")
    code, err = chat.finish()

    assert code == 0, "\n".join(chat.lines) + err
    assert "completed: reached final state 'done'" in chat.lines
    assert chat.path() == ["greet", "listen", "ask", "listen", "decide", "wrap_up", "done"]
    assert not any(answer in line for answer in answers for line in chat.lines)  # typed lines are not echoed
    assert "Traceback" not in err

    report, transcript = _session(out)
    assert (report["final_state"], report["outcome"], report["ok"]) == ("done", "completed", True)
    candidate = [t for t in report["turns"] if t["role"] == "candidate"]
    assert [(t["item_id"], t["text"], t["transcribed"]) for t in candidate] == [
        ("chat_item_1", answers[0], True), ("chat_item_2", answers[1], True)]
    assert all(t["start"] <= t["end"] <= t["committed"] for t in candidate)  # speech, then its commit
    assert report["counts"]["answers"] == 2 and report["counts"]["timeouts"] == 0
    tools = [t["text"] for t in report["turns"] if t["role"] == "tool"]
    assert tools == ['record_verdict({"verdict": "next_round", "confidence": 3})']
    for answer in answers:
        assert f"**Candidate**: {answer}" in transcript
    with sqlite3.connect(out / "sessions.sqlite") as db:
        assert db.execute("SELECT final_state, outcome FROM sessions").fetchall() == [("done", "completed")]


LONG_QUESTION = ("Before we start, I would like to explain how this conversation will work, what kind of questions "
                 "I am going to ask you today and how long it will take, so please listen until I have finished, "
                 "and then tell me about yourself.")


def test_barge_silence_and_quit(starter: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "long.persona.yaml"
    scenario.write_text(f"interviewer:\n  questions: [{json.dumps(LONG_QUESTION)}, Where would you like to be?]\n"
                        "  tool_calls: []\n")
    out = tmp_path / "runs"
    chat = Chat(starter / "interview.yaml", out, "--persona", str(scenario), speed=10)
    chat.expect("interviewer: Hello, I'm Sam. Before we start")  # ~13 s of audio: 1.3 s to talk over it
    chat.type("/barge")
    chat.type("Sorry, could you say that again?")
    assert "-> listen  (on speech.started)" in chat.expect("-> listen")  # the flow's barge-in transition
    chat.expect("interviewer: Where would you like to be?")
    chat.type("/nonsense")
    chat.type("/silence soon")
    chat.type("/silence 35")  # longer than the flow's 30 s in `listen`
    assert "unknown command /nonsense" in chat.expect("/nonsense")
    assert "/silence takes a number of seconds" in chat.expect("/silence")
    assert "(on after.0)" in chat.expect("-> nudge")
    chat.expect("interviewer: Take your time. Whenever you are ready.")
    chat.type("/quit")
    code, err = chat.finish()

    assert code == 1, "\n".join(chat.lines) + err  # left before the end: not completed
    assert "stopped: interrupted by /quit in state 'nudge'" in chat.lines
    report, transcript = _session(out)
    assert (report["final_state"], report["outcome"]) == ("nudge", "interrupted")
    greeting = report["turns"][0]
    assert greeting["role"] == "interviewer" and 0 < greeting["heard_ms"] < 13_000  # truncated where it was cut
    (answer,) = [t for t in report["turns"] if t["role"] == "candidate"]
    # A typed turn takes no speaking time: its start and end may come in one pass of the loop.
    assert answer["text"] == "Sorry, could you say that again?" and answer["start"] <= answer["end"]
    trace = (next(p for p in out.iterdir() if p.is_dir()) / "trace.jsonl").read_text()
    assert '"type":"conversation.item.truncate"' in trace


def test_end_of_piped_input_leaves_the_flow_to_end_on_its_own(starter: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    chat = Chat(starter / "interview.yaml", out)
    chat.expect("interviewer:")
    chat.close_input()  # a script that ran out: the candidate says nothing more
    chat.expect("end of input")
    code, err = chat.finish()
    assert code == 0, "\n".join(chat.lines) + err  # the flow's timeouts carried it to its final state
    assert chat.path() == ["greet", "listen", "nudge", "goodbye", "done"]
    report, _ = _session(out)
    assert (report["final_state"], report["outcome"]) == ("done", "completed_degraded")


def test_a_flow_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("states: {}\n")
    proc = subprocess.run([sys.executable, "-m", "engine", "chat", str(bad), "--out", str(tmp_path / "runs")],
                          input="", capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() and all(line.startswith(str(bad)) for line in proc.stderr.strip().splitlines())


def test_ctrl_c_ends_a_chat_like_any_session(starter: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    chat = Chat(starter / "interview.yaml", out)
    chat.expect("interviewer:")
    chat.proc.send_signal(signal.SIGINT)
    code, err = chat.finish()
    assert code == 130, "\n".join(chat.lines) + err
    assert any(line.startswith("stopped: interrupted by SIGINT in state") for line in chat.lines)
    report, _ = _session(out)
    assert report["outcome"] == "interrupted" and "Traceback" not in err
