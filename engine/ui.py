"""What the person at the terminal sees: plain log lines, or a live view with `rich`.

Both views only display what the runner hands them; neither decides anything, and neither may
end a session: text is escaped (rich markup such as `[inaudible]` shows as written), characters
the terminal cannot encode are replaced, and a live view that fails turns into plain lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from .effects import End, Fired
from .events import Event
from .trace import redact

__all__ = ["PlainView", "LiveView", "make_view"]


def _encodable(text: str, stream: Any) -> str:
    """`text` as the stream can write it: unencodable characters (a lone surrogate) become '?'."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, "replace").decode(encoding)
    except LookupError:
        pass
    return text


class PlainView:
    """One line per thing worth knowing: state changes, finished turns, warnings."""

    def __init__(self, stream: TextIO | None = None, secrets: Iterable[str] = ()):
        self.stream = stream or sys.stdout
        self.secrets = tuple(secrets)
        self._broken = False

    def start(self, title: str, clock: Callable[[], float]) -> None:
        self._line(title)

    def event(self, t: float, event: Event) -> None:
        if event.type == "response.output_audio_transcript.done":
            self._line(f"{t:7.2f}s  interviewer: {event.data.get('transcript', '')}")
        elif event.type == "input.transcript":
            self._line(f"{t:7.2f}s  candidate:   {event.data.get('transcript', '')}")
        elif event.type.startswith("job.") and event.type.endswith((".done", ".failed")):
            self._line(f"{t:7.2f}s  {event.type}")

    def fired(self, t: float, fired: Fired, deadline: float | None) -> None:
        if fired.target is not None and fired.target != fired.source:
            self._line(f"{t:7.2f}s  -> {fired.target}  (on {fired.event})")

    def log(self, t: float, level: str, message: str) -> None:
        if level != "info":
            self._line(f"{t:7.2f}s  {level}: {message}")

    def finishing(self, t: float, end: End) -> None:
        """The interview is over; outputs are being written."""
        self._line(f"{t:7.2f}s  ending ({end.outcome}): {end.reason}; saving outputs")

    def stop(self) -> None:
        pass

    def _line(self, text: str) -> None:
        if self._broken:
            return
        text = _encodable(redact(str(text), self.secrets), self.stream)
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # the terminal went away (a closed pipe): the session goes on
            self._broken = True


class LiveView(PlainView):
    """A rich live panel: state, next timeout, jobs and the transcript as it streams.

    Refreshed from the event loop (no thread of its own). Any error inside rich ends the live
    panel and the view goes on as plain lines."""

    REFRESH_S = 0.125

    def __init__(self, secrets: Iterable[str] = (), console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.markup import escape

        super().__init__(secrets=secrets)
        self._escape = escape
        self.console = console or Console()
        self.state = "-"
        self.deadline: float | None = None
        self.jobs: dict[str, str] = {}
        self.lines: list[str] = []
        self.partial = ""
        self.title = ""
        self.clock: Callable[[], float] = lambda: 0.0
        self._plain: PlainView | None = None  # once the live panel failed
        self._timer: asyncio.TimerHandle | None = None
        self._live = Live(get_renderable=self._render, console=self.console, auto_refresh=False)

    # The runner's calls: each guarded, so a failure in rich never reaches the session.

    def start(self, title: str, clock: Callable[[], float]) -> None:
        self.title, self.clock = self._clean(title), clock
        self._guard(self._live.start)
        self._schedule()

    def event(self, t: float, event: Event) -> None:
        if self._plain is not None:
            return self._plain.event(t, event)
        kind = event.type
        if kind == "response.output_audio_transcript.delta":
            self.partial += str(event.data.get("delta", ""))  # escaped whole when shown
        elif kind == "response.output_audio_transcript.done":
            self.partial = ""
            self.lines.append(f"[bold cyan]interviewer[/] {self._clean(event.data.get('transcript', ''))}")
        elif kind == "input.transcript":
            self.lines.append(f"[bold green]candidate[/]   {self._clean(event.data.get('transcript', ''))}")
        elif kind.startswith("job."):
            _, name, outcome = kind.split(".", 2)
            self.jobs[self._clean(name)] = self._clean(outcome)
        del self.lines[:-50]  # only the last lines are shown

    def fired(self, t: float, fired: Fired, deadline: float | None) -> None:
        if self._plain is not None:
            return self._plain.fired(t, fired, deadline)
        if fired.target:
            self.state = self._clean(fired.target)
        self.deadline = deadline

    def log(self, t: float, level: str, message: str) -> None:
        if self._plain is not None:
            return self._plain.log(t, level, message)
        if level != "info":
            self.lines.append(f"[yellow]{self._clean(level)}[/] {self._clean(message)}")

    def finishing(self, t: float, end: End) -> None:
        if self._plain is not None:
            return self._plain.finishing(t, end)
        self.lines.append(f"[bold]ending ({self._clean(end.outcome)})[/] {self._clean(end.reason)}; saving outputs")
        self._refresh()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._plain is None:
            self._guard(self._live.refresh)
            self._guard(self._live.stop)

    # Inside.

    def _clean(self, value: Any) -> str:
        return self._escape(_encodable(redact(str(value), self.secrets), self.console.file))

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.REFRESH_S, self._tick)

    def _tick(self) -> None:
        self._refresh()
        if self._plain is None:
            self._schedule()

    def _refresh(self) -> None:
        if self._plain is None:
            self._guard(self._live.refresh)

    def _guard(self, call: Callable[[], Any]) -> None:
        if self._plain is not None:
            return
        try:
            call()
        except Exception as exc:
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        self._plain = PlainView(self.console.file, self.secrets)  # type: ignore[arg-type]  # a text stream
        with contextlib.suppress(Exception):
            self._live.stop()
        self._plain._line(f"live view failed ({type(exc).__name__}: {exc}); plain lines from now on")

    def _render(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        head = Table.grid(padding=(0, 2))
        now = self.clock()
        timer = f"timeout in {max(0.0, self.deadline - now):4.1f}s" if self.deadline is not None else ""
        jobs = ", ".join(f"{k}: {v}" for k, v in self.jobs.items()) or "none"
        head.add_row(f"[bold]state[/] {self.state}", f"[bold]t[/] {now:6.1f}s", timer, f"[bold]jobs[/] {jobs}")
        partial = [f"[dim cyan]interviewer[/] [dim]{self._clean(self.partial)}[/]"] if self.partial else []
        body = "\n".join(self.lines[-14:] + partial)
        grid = Table.grid()
        grid.add_row(head)
        grid.add_row(body)
        return Panel(grid, title=self.title, border_style="blue")


def make_view(no_ui: bool, secrets: Iterable[str] = ()) -> PlainView:
    """The live view on a terminal unless --no-ui; plain lines otherwise (pipes, CI)."""
    if not no_ui and sys.stdout.isatty():
        try:
            return LiveView(secrets)
        except Exception:  # rich missing or broken: plain lines do the job
            pass
    return PlainView(secrets=secrets)
