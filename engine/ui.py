"""What the person at the terminal sees: plain log lines, or a live view with `rich`.

Both views only display what the runner hands them; neither decides anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from .effects import Fired
from .events import Event

__all__ = ["PlainView", "LiveView", "make_view"]


class PlainView:
    """One line per thing worth knowing: state changes, finished turns, warnings."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

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

    def stop(self) -> None:
        pass

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class LiveView(PlainView):
    """A rich live panel: state, next timeout, jobs and the transcript as it streams."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__()
        self.console = Console()
        self.state = "-"
        self.deadline: float | None = None
        self.jobs: dict[str, str] = {}
        self.lines: list[str] = []
        self.partial = ""
        self.title = ""
        self.clock: Callable[[], float] = lambda: 0.0
        # Rendered afresh on every refresh, so the clock and the timeout count down between events.
        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=8)

    def start(self, title: str, clock: Callable[[], float]) -> None:
        self.title, self.clock = title, clock
        self._live.start()

    def event(self, t: float, event: Event) -> None:
        kind = event.type
        if kind == "response.output_audio_transcript.delta":
            self.partial += str(event.data.get("delta", ""))
        elif kind == "response.output_audio_transcript.done":
            self.partial = ""
            self.lines.append(f"[bold cyan]interviewer[/] {event.data.get('transcript', '')}")
        elif kind == "input.transcript":
            self.lines.append(f"[bold green]candidate[/]   {event.data.get('transcript', '')}")
        elif kind.startswith("job."):
            _, name, outcome = kind.split(".", 2)
            self.jobs[name] = outcome

    def fired(self, t: float, fired: Fired, deadline: float | None) -> None:
        if fired.target:
            self.state = fired.target
        self.deadline = deadline

    def log(self, t: float, level: str, message: str) -> None:
        if level != "info":
            self.lines.append(f"[yellow]{level}[/] {message}")

    def stop(self) -> None:
        self._live.refresh()
        self._live.stop()

    def _render(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        head = Table.grid(padding=(0, 2))
        now = self.clock()
        timer = f"timeout in {max(0.0, self.deadline - now):4.1f}s" if self.deadline is not None else ""
        jobs = ", ".join(f"{k}: {v}" for k, v in self.jobs.items()) or "none"
        head.add_row(f"[bold]state[/] {self.state}", f"[bold]t[/] {now:6.1f}s", timer, f"[bold]jobs[/] {jobs}")
        body = "\n".join(self.lines[-14:] + ([f"[dim cyan]interviewer[/] [dim]{self.partial}[/]"] if self.partial else []))
        grid = Table.grid()
        grid.add_row(head)
        grid.add_row(body)
        return Panel(grid, title=self.title, border_style="blue")


def make_view(no_ui: bool) -> PlainView:
    """The live view on a terminal unless --no-ui; plain lines otherwise (pipes, CI)."""
    if not no_ui and sys.stdout.isatty():
        return LiveView()
    return PlainView()

