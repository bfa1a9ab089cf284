"""`engine chat FLOW`: the author plays the candidate by typing, like `rasa shell`.

The session is an ordinary `runner.Session` (the same core, flow, finish, outputs and exit codes as
`engine run`), against the simulator with no scripted candidate, or the real service with a key.
Each typed line is one candidate turn: it goes to the server as a user text message
(`conversation.item.create`, `input_text`, under an item id of ours), and the core is handed what a
server with turn detection sends for speech: speech started and stopped, the commit, then the
transcript. The real service sends no such events for text, so a chat behaves the same against it.

Audio is off: the interviewer's audio plays on a virtual speaker, so `playback.done` still comes
when it would have been heard, and the interviewer's words are printed as their transcript arrives.
A line typed while the interviewer is speaking waits until it has been heard out (talking over it
is `/barge`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import math
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from . import audio as audiomod
from .effects import End, Fired
from .events import Event, normalise
from .runner import Session
from .ui import PlainView

__all__ = ["Chat", "ChatView", "COMMANDS", "interactive"]

MAX_LINE = 4000  # characters in one typed turn: more is a paste gone wrong, not an answer
MAX_SILENCE = 3600.0  # seconds of /silence
COMMANDS = {
    "/silence S": "say nothing for S seconds of session time (what you type meanwhile waits)",
    "/barge": "start speaking over the interviewer now; your next line is what you say",
    "/quit": "leave the interview (it ends as interrupted, saved; exit 1)",
    "/help": "this list",
}


class ChatView(PlainView):
    """What the author sees: the interviewer's words, state changes, warnings, the ending.

    The candidate's own lines are not echoed back: they are on the screen already."""

    def __init__(self, stream: TextIO | None = None, secrets: tuple[str, ...] = ()):
        super().__init__(stream, secrets)
        self.connected = asyncio.Event()  # the server has said something: typed turns can go out

    def event(self, t: float, event: Event) -> None:
        self.connected.set()
        if event.type == "response.output_audio_transcript.done":
            self._line(f"interviewer: {event.data.get('transcript', '')}")
        elif event.type.startswith("job.") and event.type.endswith((".done", ".failed")):
            self._line(f"{t:7.2f}s  {event.type}")

    def fired(self, t: float, fired: Fired, deadline: float | None) -> None:
        if fired.target is not None and fired.target != fired.source:
            self._line(f"{t:7.2f}s  -> {fired.target}  (on {fired.event})")

    def finishing(self, t: float, end: End) -> None:
        self._line(f"{t:7.2f}s  ending ({end.outcome}): {end.reason}; saving outputs")

    def say(self, text: str) -> None:
        """A line from the chat itself (help, notes)."""
        self._line(f"  ({text})")


class _Speaker:
    """The chat's virtual speaker (an audio.Player): a VirtualPlayer that also knows whether the
    interviewer is still being heard, so that typed lines wait for the end of its turn.

    Exactly the audio the core plays counts: a response is heard out at its playback.done, or when
    a playback.stopped drops it (a barge-in)."""

    def __init__(self, emit: audiomod.Emit, loop: asyncio.AbstractEventLoop, speed: float):
        self._emit = emit
        self._virtual = audiomod.VirtualPlayer(self._heard, clock=loop.time, call_at=loop.call_at, speed=speed)
        self._unheard: set[str] = set()
        self.quiet = asyncio.Event()
        self.quiet.set()

    def feed(self, response_id: str, item_id: str | None, pcm: bytes) -> None:
        self._playing(response_id)
        self._virtual.feed(response_id, item_id, pcm)

    def feed_base64(self, response_id: str, item_id: str | None, audio: str) -> None:
        self._playing(response_id)
        self._virtual.feed_base64(response_id, item_id, audio)

    def end(self, response_id: str) -> None:
        self._virtual.end(response_id)

    def stop(self) -> None:
        self._virtual.stop()

    def played_ms(self, item_id: str) -> int:
        return self._virtual.played_ms(item_id)

    def record_input(self, pcm: bytes) -> None:
        self._virtual.record_input(pcm)

    async def aclose(self) -> None:
        await self._virtual.aclose()
        self.quiet.set()

    def _playing(self, response_id: str) -> None:
        self._unheard.add(response_id)
        self.quiet.clear()

    def _heard(self, event: Event) -> None:
        if event.type == "playback.done":
            self._unheard.discard(event.response_id or "")
        elif event.type == "playback.stopped":
            self._unheard.difference_update([event.response_id or "", *event.data.get("dropped", [])])
        if not self._unheard:
            self.quiet.set()
        self._emit(event)


class Chat:
    """The typist: reads lines from `fd` and plays them as the candidate (a runner.Participant).

    Args:
        fd: where the lines come from (standard input).
        stream: where the chat writes (standard output).
        interactive: end of input is /quit (Ctrl-D at a terminal); otherwise (a pipe or a file) the
            candidate merely says nothing more and the flow ends on its own.
    """

    def __init__(self, fd: int, stream: TextIO | None = None, *, interactive: bool = False):
        self._fd = fd
        self._stream = stream or sys.stdout
        self._interactive = interactive
        self._view: ChatView | None = None
        self._speaker: _Speaker | None = None
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._turns = 0
        self._barging: str | None = None  # the item of a turn begun by /barge

    # runner.Participant

    def view(self, secrets: tuple[str, ...]) -> PlainView:
        self._view = ChatView(self._stream, secrets)
        return self._view

    def player(self, emit: audiomod.Emit, loop: asyncio.AbstractEventLoop, speed: float) -> audiomod.Player:
        self._speaker = _Speaker(emit, loop, speed)
        return self._speaker

    async def play(self, session: Session) -> None:
        """Type until the session ends (this task is cancelled then) or the author leaves."""
        self._reader(asyncio.get_running_loop())
        self._say("you are the candidate: type each answer and press Enter; /help lists the commands")
        try:
            while (line := await self._lines.get()) is not None:
                if not await self._handle(session, line.strip()):
                    return
            if self._interactive:
                session.interrupt("/quit (end of input)")
            else:
                self._say("end of input: the candidate says nothing more")
        except Exception as exc:  # a bug in the chat: the session still ends through its finish, saved
            print(f"engine chat: internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            session.interrupt("an internal error in engine chat")

    # Inside.

    async def _handle(self, session: Session, line: str) -> bool:
        """One typed line; False once the author has left."""
        if not line:
            return True
        command, _, rest = line.partition(" ")
        if command in ("/quit", "/exit"):
            session.interrupt("/quit")
            return False
        if command == "/help":
            for name, what in COMMANDS.items():
                self._say(f"{name}: {what}")
        elif command == "/silence":
            seconds = _seconds(rest)
            if seconds is None:
                self._say(f"/silence takes a number of seconds, at most {MAX_SILENCE:g}: /silence 30")
            else:
                await asyncio.sleep(seconds / session.speed)  # session time passing is what is asked for
        elif command == "/barge":
            self._barge(session)
        elif command.startswith("/") and not command.startswith("//"):
            self._say(f"unknown command {command}: /help lists them; //text says /text")
        elif len(line) > MAX_LINE:
            self._say(f"not sent: {len(line)} characters in one turn (at most {MAX_LINE})")
        else:
            return await self._say_line(session, line[1:] if line.startswith("//") else line)
        return True

    def _barge(self, session: Session) -> None:
        if self._barging is not None:
            return self._say("you are speaking already: type what you say")
        if session.flow.session.turn_detection is None:
            return self._say("this flow turns turn detection off: the server would not notice you speaking")
        self._barging = self._next_item()
        self._deliver(session, "input_audio_buffer.speech_started",
                      audio_start_ms=round(session.now() * 1000), item_id=self._barging)

    async def _say_line(self, session: Session, text: str) -> bool:
        """Send one turn, the way a server with turn detection reports speech. False: the
        connection is gone."""
        item, self._barging = self._barging, None
        if self._view is not None:
            await self._view.connected.wait()  # (if it never connects, the session ends and cancels this)
        if item is None and self._speaker is not None:
            await self._speaker.quiet.wait()  # the candidate answers once the interviewer has been heard
        if session.transport is None:
            return True  # cannot happen once the server has spoken; nothing to send it over
        vad = session.flow.session.turn_detection is not None
        if item is None:
            item = self._next_item()
            if vad:
                self._deliver(session, "input_audio_buffer.speech_started",
                              audio_start_ms=round(session.now() * 1000), item_id=item)
        message = {"type": "conversation.item.create", "event_id": f"chat_event_{self._turns}",
                   "item": {"id": item, "type": "message", "role": "user",
                            "content": [{"type": "input_text", "text": text}]}}
        # Sent before the turn ends, so that the server has it before the flow's reply is asked for.
        if not await session.transport.send(message):
            return False
        if vad:
            self._deliver(session, "input_audio_buffer.speech_stopped",
                          audio_end_ms=round(session.now() * 1000), item_id=item)
        self._deliver(session, "input_audio_buffer.committed", item_id=item, previous_item_id=None)
        if session.flow.session.transcription is not None:
            self._deliver(session, "conversation.item.input_audio_transcription.completed",
                          item_id=item, content_index=0, transcript=text)
        return True

    def _next_item(self) -> str:
        self._turns += 1
        return f"chat_item_{self._turns}"

    def _deliver(self, session: Session, kind: str, **fields: Any) -> None:
        session.deliver(normalise({"type": kind, **fields}))

    def _say(self, text: str) -> None:
        if self._view is not None:
            self._view.say(text)

    def _reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read lines in a daemon thread (a blocked read must not keep the process alive at exit),
        straight from the file descriptor, so no lock of sys.stdin is held at interpreter shutdown."""

        def put(line: str | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads any more
                loop.call_soon_threadsafe(self._lines.put_nowait, line)

        threading.Thread(target=_read_lines, args=(self._fd, put), name="engine chat input", daemon=True).start()


def _read_lines(fd: int, put: Callable[[str | None], None]) -> None:
    """Every line of `fd` (UTF-8, undecodable bytes replaced), then None at the end of input."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        pending += decoder.decode(data, final=not data)
        *lines, pending = pending.split("\n")
        if len(pending) > 4 * MAX_LINE:  # no newline in sight: hand it over (it will be refused as too long)
            lines.append(pending)
            pending = ""
        for line in lines:
            put(line.removesuffix("\r"))
        if not data:
            if pending:
                put(pending)
            put(None)
            return


def _seconds(text: str) -> float | None:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 < value <= MAX_SILENCE else None


def interactive(stream: Any) -> bool:
    """Whether end of input means the person left (a terminal), not that a script ran out."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
