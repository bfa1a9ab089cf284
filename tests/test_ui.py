"""The views show what they are given as text and never end a session."""

import asyncio
import io

from rich.console import Console

from engine import vloop
from engine.effects import End, Fired
from engine.events import Event
from engine.ui import LiveView, PlainView

ODD = "I said [inaudible] and [bold]this[/bold] \ud800 too"


def events():
    return [Event("input.transcript", data={"transcript": ODD}),
            Event("response.output_audio_transcript.delta", data={"delta": "so [inaud"}),
            Event("response.output_audio_transcript.delta", data={"delta": "ible] then"})]


def test_the_live_view_shows_markup_as_text_and_replaces_what_cannot_be_encoded():
    out = io.StringIO()
    view = LiveView(console=Console(file=out, force_terminal=True, width=200, color_system=None))

    async def main():
        view.start("[title] session", lambda: 1.0)
        for event in events():
            view.event(1.0, event)
        view.fired(1.0, Fired("initial", None, "[state]", "start"), 5.0)
        view.log(1.0, "warning", "odd [yellow]warning[/]")
        view.finishing(2.0, End("reached final state 'done'", "completed"))
        view.stop()

    asyncio.run(main())
    text = out.getvalue()
    assert "I said [inaudible] and [bold]this[/bold] ? too" in text
    assert "so [inaudible] then" in text  # the partial line, split in the middle of a bracket
    assert "[state]" in text and "odd [yellow]warning[/]" in text and "[title] session" in text
    assert view._plain is None  # no fallback was needed


class Broken(io.StringIO):
    encoding = "utf-8"

    def __init__(self, fail_after: int):
        super().__init__()
        self.writes, self.fail_after = 0, fail_after

    def write(self, text):
        self.writes += 1
        if self.writes == self.fail_after:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return super().write(text)


def test_a_live_view_that_fails_goes_on_as_plain_lines():
    out = Broken(fail_after=3)
    view = LiveView(console=Console(file=out, force_terminal=True, width=120, color_system=None))

    async def main():
        view.start("title", lambda: 0.0)
        for i in range(30):  # the view refreshes itself between these (virtual time)
            view.event(0.1 * i, Event("input.transcript", data={"transcript": f"answer {i}"}))
            await asyncio.sleep(0.05)
        view.stop()

    vloop.run(main())
    assert view._plain is not None
    text = out.getvalue()
    assert "live view failed (UnicodeEncodeError" in text and "plain lines from now on" in text
    assert "candidate:   answer 29" in text


def test_plain_lines_replace_what_the_terminal_cannot_encode_and_survive_a_closed_pipe():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    view = PlainView(stream)
    view.event(1.0, events()[0])
    stream.flush()
    printed = raw.getvalue().decode("ascii").strip()
    assert printed == "1.00s  candidate:   I said [inaudible] and [bold]this[/bold] ? too"

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    quiet = PlainView(ClosedPipe())
    quiet.log(1.0, "warning", "nobody reads this")  # no exception: the session goes on
    quiet.log(2.0, "warning", "nor this")


def test_plain_lines_redact_secrets():
    out = io.StringIO()
    PlainView(out, secrets=("sk-abc-123",)).log(0.0, "warning", "server said sk-abc-123")
    assert "sk-abc-123" not in out.getvalue() and "***" in out.getvalue()
