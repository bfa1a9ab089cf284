"""`engine serve`: candidates take the interview in their browser; one Session per candidate.

The server only admits pages and moves data. Each admitted page gets the same `Session` as
`engine run` (same core, same outputs in OUT/<session>/ and OUT/sessions.sqlite), with the page as
its microphone (`audio_input`) and its speaker (`BrowserPlayer`). Sessions are independent: many
run in one process, and many processes can share one sessions database (docs/serve.md).

Routes:
    GET  /interview, /            the candidate's page (the invite token is in the URL fragment)
    GET  /static/...              its script, worklets and style
    WS   /ws                      the page's one WebSocket (protocol in link.py)
    GET  /health                  200 {"ok": true, ...}, or 503 while shutting down (for a proxy)
    GET  /sessions...             the operator's view (operator.py), behind the operator key
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import math
import os
import secrets
import socket
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..effects import Fired
from ..events import Event
from ..flow import Flow
from ..jobs import JobFn
from ..realtime import Endpoint
from ..runner import Result, Session
from ..sinks import SINKS, Sink
from ..store import Claim, Store
from ..ui import PlainView
from . import operator
from .link import PageLink, closed_event

__all__ = ["ServeConfig", "Server", "running", "REFUSED"]

STATIC = Path(__file__).resolve().parent / "static"
HELLO_TIMEOUT = 10.0  # seconds a new WebSocket has to say who it is

# Close codes and messages for pages that are turned away (the page shows the message).
REFUSED: dict[str, tuple[int, str]] = {
    "origin": (4403, "This page was not opened from the interview server's own address, so it cannot connect. "
                     "Please open the interview link exactly as you received it."),
    "hello": (4400, "The page did not introduce itself. Please reload the interview link."),
    "missing": (4401, "This page needs your personal interview link. Please open the link you received."),
    "unknown": (4403, ""), "used": (4403, ""), "expired": (4403, ""), "other_flow": (4403, ""),  # store.REFUSALS
    "resume": (4404, "This interview can no longer be resumed. If it was interrupted, please ask for a new link."),
    "full": (4429, "All interview places are taken right now. Please try again in a few minutes; "
                   "your link stays valid until then."),
    "shutting_down": (4503, "The interview server is restarting. Please try again in a minute; your link stays valid."),
    "unavailable": (4500, "The interview server cannot check your link right now. Please try again in a minute."),
}

END_MESSAGES = {
    "completed": "The interview is over. Thank you! You can close this page now.",
    "completed_degraded": "The interview is over. Thank you! You can close this page now.",
    "interrupted": "The interview was stopped because the server is shutting down. What you said so far has been "
                   "saved.",
    "not_completed": "The interview ended before it was finished. What you said so far has been saved.",
    "error": "The interview failed because of a problem on the server. What you said so far has been saved.",
}


@dataclass
class ServeConfig:
    flow: Flow
    endpoint: Endpoint  # resolved: the embedded simulator's URL is filled in
    store: Store
    out: Path = Path("runs")
    max_sessions: int = 20
    grace: float = 30.0  # seconds running sessions get to finish after SIGTERM
    operator_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    base_url: str | None = None  # how candidates reach this server (its origin is allowed)
    allowed_origins: tuple[str, ...] = ()  # more page origins to accept (a proxy's)
    speed: float = 1.0  # simulated time, for tests with scripted pages; a browser plays at 1
    resume_window: float = 15.0  # seconds a dropped page has to reconnect
    jobs: Mapping[str, JobFn] | None = None
    sinks: tuple[Sink, ...] = SINKS
    host_label: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


class Server:
    """The sessions of one `engine serve` process, and its Starlette app (`self.app`)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.store = config.store
        self.draining = False
        self.links: dict[str, PageLink] = {}  # running sessions by id
        self.sessions: dict[str, Session] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.results: dict[str, Result] = {}  # finished in this process (tests read them)
        self.relayed: Counter[str] = Counter()  # the relay counters of finished sessions
        self._resume: dict[str, str] = {}  # resume key -> session id
        self._slots = 0  # admitted or being admitted: what --max-sessions counts
        self._change = asyncio.Event()
        self.closing = asyncio.Event()  # the process is stopping: live streams end
        self.force = asyncio.Event()  # a second signal: stop waiting for running sessions
        self.lag = LagMonitor()
        self.app = Starlette(routes=[
            Route("/", self.page), Route("/interview", self.page), Route("/health", self.health),
            WebSocketRoute("/ws", self.candidate),
            *operator.routes(self),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ])

    # Candidates.

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        body = {"ok": not self.draining, "draining": self.draining, "sessions": len(self.links),
                "max_sessions": self.config.max_sessions}
        return JSONResponse(body, status_code=503 if self.draining else 200)

    async def candidate(self, ws: WebSocket) -> None:
        await ws.accept()
        if not self._origin_ok(ws):
            return await self._refuse(ws, "origin")
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = json.loads(await ws.receive_text())
        except Exception:
            return await self._refuse(ws, "hello")
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            return await self._refuse(ws, "hello")
        resume = hello.get("resume")
        if isinstance(resume, str) and resume:
            link = self.links.get(self._resume.get(resume, ""))
            if link is None or link.ended:
                return await self._refuse(ws, "resume")
            return await link.attach(ws)
        token = hello.get("token")
        if not isinstance(token, str) or not token or len(token) > 200:
            return await self._refuse(ws, "missing")
        if self.draining:
            return await self._refuse(ws, "shutting_down")
        if self._slots >= self.config.max_sessions:
            return await self._refuse(ws, "full")
        self._slots += 1  # held from here, so two pages cannot take the last place
        admitted = False
        try:
            session_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)
            try:
                claim = await asyncio.to_thread(self.store.claim, token, self.config.flow.name, session_id)
            except Exception as exc:
                self._warn(f"sessions database: {type(exc).__name__}: {exc}")
                claim = Claim("unavailable")
            if self.draining and claim.ok:  # the signal came while the link was being claimed
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.release, token, session_id)
                claim = Claim("shutting_down")
            if not claim.ok:
                return await self._refuse(ws, claim.refusal or "unknown", claim.message)
            link = self._start(session_id)
            admitted = True
        finally:
            if not admitted:
                self._slots -= 1
        await link.attach(ws)

    def _origin_ok(self, ws: WebSocket) -> bool:
        """The page must come from this server: Origin's host is the Host it connected to, or allowed."""
        origin = ws.headers.get("origin", "")
        if not origin:
            return False
        allowed = {o.rstrip("/").lower() for o in self.config.allowed_origins}
        if self.config.base_url:
            base = urlsplit(self.config.base_url)
            allowed.add(f"{base.scheme}://{base.netloc}".lower())
        if origin.rstrip("/").lower() in allowed:
            return True
        return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()

    async def _refuse(self, ws: WebSocket, reason: str, message: str = "") -> None:
        code, text = REFUSED.get(reason, (4403, ""))
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"type": "refused", "reason": reason, "message": message or text}))
            await ws.close(code, reason)

    # Sessions.

    def _start(self, session_id: str) -> PageLink:
        config = self.config
        link = PageLink(session_id, resume_window=config.resume_window, on_gone=self._page_gone)
        row = _Row(self, {"id": session_id, "flow": config.flow.name, "state": "starting", "host": config.host_label,
                          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
        session = Session(config.flow, config.endpoint, out=config.out, audio="none", speed=config.speed,
                          view=PageView(link, row), sinks=config.sinks, jobs=config.jobs, session_id=session_id,
                          player=link.player, audio_input=link.microphone())
        link.player.emit = session.deliver
        self.links[session_id] = link
        self.sessions[session_id] = session
        self._resume[link.resume_key] = session_id
        self.tasks[session_id] = asyncio.create_task(self._run(session, link, row), name=f"session {session_id}")
        self._log(f"session {session_id} started ({len(self.links)} running)")
        return link

    async def _run(self, session: Session, link: PageLink, row: _Row) -> None:
        sid = session.id
        result: Result | None = None
        try:
            result = await session.run()
        except (Exception, asyncio.CancelledError) as exc:  # a bug: the page still hears that it is over
            self._warn(f"session {sid} failed: {_describe(exc)}")
        outcome = "error"
        try:
            outcome = await self._record(session, result, row)
        except Exception as exc:
            self._warn(f"session {sid}: cannot record its outcome: {type(exc).__name__}: {exc}")
        try:
            await link.finish(outcome, END_MESSAGES.get(outcome, END_MESSAGES["not_completed"]))
        finally:
            self.links.pop(sid, None)
            self.sessions.pop(sid, None)
            self.tasks.pop(sid, None)
            self._resume.pop(link.resume_key, None)
            self._slots -= 1
            self.relayed.update(link.stats)
            if result is not None:
                self.results[sid] = result
            reason = result.reason if result is not None else "the session failed"
            self._log(f"session {sid} ended: {outcome}: {reason} ({len(self.links)} running)")

    async def _record(self, session: Session, result: Result | None, row: _Row) -> str:
        """The session's final row: outcome and the documents the operator's view shows."""
        folder = session.folder
        report = _read_json(folder / "report.json")
        outcome = _outcome(report, result)
        band = (((report.get("results") or {}).get("assessment") or {}).get("overall") or {}).get("band")
        timeline = await asyncio.to_thread(operator.timeline_svg, folder / "trace.jsonl")
        row.update(state=report.get("final_state") or session.iv.state, outcome=outcome,
                   reason=result.reason if result else report.get("reason"), band=band,
                   ended=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   duration_s=report.get("duration_s"), report=json.dumps(report, indent=2) if report else None,
                   transcript=_read_text(folder / "transcript.md"), timeline=timeline)
        await row.flushed()
        return outcome

    def _page_gone(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            self._log(f"session {session_id}: the page did not come back within {self.config.resume_window:g} s")
            session.deliver(closed_event())

    async def shutdown(self) -> None:
        """SIGTERM: take no new sessions; give running ones `grace` seconds (or until `force` is
        set, by a second signal); then end the rest as interrupted, through the runner's one finish."""
        self.draining = True
        running = list(self.tasks.values())
        if running:
            self._log(f"shutting down: waiting up to {self.config.grace:g} s for {len(running)} session(s)")
            finished = asyncio.ensure_future(asyncio.wait(running))  # cancelling this cancels no session
            forced = asyncio.ensure_future(self.force.wait())
            await asyncio.wait([finished, forced], timeout=self.config.grace, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            forced.cancel()
        left = [t for t in self.tasks.values() if not t.done()]
        for sid, task in list(self.tasks.items()):
            if not task.done():
                self._log(f"session {sid}: interrupted by the shutdown in state '{self.sessions[sid].iv.state}'")
                task.cancel()  # the runner's finish saves everything, outcome interrupted
        if left:
            await asyncio.wait(left, timeout=60)  # the finish is bounded itself; this is a backstop
        self.closing.set()
        self._notify()

    # The operator's live view.

    def _notify(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def next_change(self, timeout: float) -> None:
        """Wait until a session row of this process changes, the process stops, or `timeout`."""
        change = self._change
        closing = asyncio.ensure_future(self.closing.wait())
        changed = asyncio.ensure_future(change.wait())
        try:
            await asyncio.wait([closing, changed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            changed.cancel()

    # Messages.

    def _log(self, text: str) -> None:
        print(f"{datetime.datetime.now():%H:%M:%S} {text}", flush=True)

    def _warn(self, text: str) -> None:
        print(f"{datetime.datetime.now():%H:%M:%S} warning: {text}", file=sys.stderr, flush=True)


class PageView(PlainView):
    """The runner's view for a served session: what the candidate sees, and the live row.

    It shows the page the transcript and whether the engine is listening or thinking (the page
    itself knows when it is speaking), and keeps the session's state in its database row."""

    def __init__(self, link: PageLink, row: _Row):
        super().__init__(io.StringIO())  # it prints nothing: the server logs one line per session
        self._link, self._row = link, row
        self._status = ""

    def start(self, title: str, clock: Callable[[], float]) -> None:
        self._status_to("listening")

    def event(self, t: float, event: Event) -> None:
        kind = event.type
        if kind == "response.output_audio_transcript.done":
            self._link.send_json({"type": "transcript", "role": "interviewer", "response": event.response_id,
                                  "text": str(event.data.get("transcript") or "")})
        elif kind == "input.transcript":
            self._link.send_json({"type": "transcript", "role": "candidate",
                                  "text": str(event.data.get("transcript") or "")})
        elif kind in ("response.created", "input.committed", "speech.stopped"):
            self._status_to("thinking")
        elif kind in ("response.done", "speech.started"):
            self._status_to("listening")

    def fired(self, t: float, fired: Fired, deadline: float | None) -> None:
        if fired.target is not None:
            self._row.update(state=fired.target, duration_s=round(t, 1))

    def log(self, t: float, level: str, message: str) -> None:
        pass  # in the trace already; the page is no place for engine warnings

    def stop(self) -> None:
        pass

    def _status_to(self, state: str) -> None:
        if state != self._status:
            self._status = state
            self._link.send_json({"type": "status", "state": state})


class _Row:
    """A session's database row, written in the background; writes coalesce, a failure warns."""

    def __init__(self, server: Server, values: dict[str, Any]):
        self._server, self.values = server, values
        self._dirty = True
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._flush())
        self._warned = False

    def update(self, **values: Any) -> None:
        self.values.update(values)
        self._dirty = True
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    async def flushed(self) -> None:
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _flush(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                try:
                    await asyncio.to_thread(self._server.store.save_session, dict(self.values))
                except Exception as exc:
                    if not self._warned:
                        self._warned = True
                        self._server._warn(f"sessions database: cannot save session {self.values['id']}: "
                                           f"{type(exc).__name__}: {exc}")
                self._server._notify()
        finally:
            self._task = None


class LagMonitor:
    """How late the event loop wakes up: a 50 ms ticker; the last minute of samples."""

    PERIOD = 0.05

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=1200)  # (when, lag) in loop seconds

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.PERIOD
            await asyncio.sleep(self.PERIOD)
            now = loop.time()
            self.samples.append((now, max(0.0, now - due)))

    def summary(self, window: float = 60.0) -> dict[str, float]:
        """p50, p99 and max lag (ms) over the last `window` seconds."""
        since = asyncio.get_running_loop().time() - window
        lags = sorted(lag for when, lag in self.samples if when >= since)
        if not lags:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "samples": 0}

        def pick(q: float) -> float:
            return round(lags[min(len(lags) - 1, math.ceil(q * len(lags)) - 1)] * 1000, 2)

        return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(lags[-1] * 1000, 2), "samples": len(lags)}


class SecurityHeaders:
    """Headers on every HTTP response: no framing, no referrer, scripts only from this server."""

    HEADERS = [
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
        (b"permissions-policy", b"microphone=(self)"),
    ]

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


@contextlib.asynccontextmanager
async def running(config: ServeConfig, host: str = "127.0.0.1", port: int = 0,
                  sock: socket.socket | None = None) -> AsyncIterator[tuple[Server, str]]:
    """Serve on host:port (0: a free port) until the block ends; yields (server, base URL).

    Leaving the block shuts down as SIGTERM does, with `config.grace` for running sessions."""
    server = Server(config)
    if sock is None:
        sock = bind(host, port)
    uv = _Uvicorn(uvicorn.Config(SecurityHeaders(server.app), log_level="warning", access_log=False,
                                 ws_max_size=1024 * 1024, ws_ping_interval=10, ws_ping_timeout=10,
                                 ws_per_message_deflate=False,  # audio does not compress: it would only cost CPU
                                 timeout_graceful_shutdown=5, lifespan="off"))
    serving = asyncio.create_task(uv.serve(sockets=[sock]))
    lag = asyncio.create_task(server.lag.run())
    try:
        async with asyncio.timeout(30):
            while not uv.started:  # uvicorn has no started event; it starts in a few ms
                if serving.done():
                    await serving  # raises why it could not start
                    raise RuntimeError("the web server stopped while starting")
                await asyncio.sleep(0.01)
        name, number = sock.getsockname()[:2]
        yield server, f"http://{name}:{number}"
    finally:
        await server.shutdown()
        uv.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        lag.cancel()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (a busy port fails at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: `engine serve` drains sessions itself first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _describe(exc: BaseException) -> str:
    """One line for an exception; for a group, its first leaf (what actually went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _outcome(report: Mapping[str, Any], result: Result | None) -> str:
    if isinstance(report.get("outcome"), str):
        return str(report["outcome"])
    if result is None:
        return "error"
    if result.ok:
        return "completed"
    return "interrupted" if result.reason.startswith("interrupted") else "not_completed"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None

