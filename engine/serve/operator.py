"""The operator's view: every session of the sessions database, live while they run.

    GET /sessions?key=K           sets the operator cookie from the key `engine serve` printed
    GET /sessions                 the list: state, outcome, started, duration, band
    GET /sessions/live            server-sent events: a changed row as JSON, as it changes
    GET /sessions/stats[?window=S] this process: sessions running, event-loop lag, relay counters (per
                                  running session, and totals since the start)
    GET /sessions/{id}            one session: its timeline, transcript and report
    GET /sessions/{id}/report.json | transcript.md | timeline.svg

Access needs the operator key: the `engine_operator` cookie (set by the link printed at start) or
`Authorization: Bearer K`. The key is random per start unless ENGINE_OPERATOR_TOKEN sets it, which
processes behind one proxy share. Everything shown comes from the database, so any process shows
every session; a row changed by this process is pushed at once, others' within 2 s.
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..trace import read

if TYPE_CHECKING:
    from .app import Server

__all__ = ["routes", "timeline_svg", "COOKIE"]

COOKIE = "engine_operator"
POLL_S = 2.0  # rows changed by other processes reach the live view within this
RENDER_FLOW = Path(__file__).resolve().parents[2] / "tools" / "render_flow.py"


def routes(server: Server) -> list[Route]:
    def guarded(handler: Callable[[Server, Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not _authorized(server, request):
                return _login(server, request)
            response: Response = await handler(server, request)
            response.headers["Cache-Control"] = "no-store"
            return response

        return endpoint

    return [
        Route("/sessions", guarded(_list)),
        Route("/sessions/live", guarded(_live)),
        Route("/sessions/stats", guarded(_stats)),
        Route("/sessions/{id}", guarded(_detail)),
        Route("/sessions/{id}/{doc:str}", guarded(_document)),
    ]


def _authorized(server: Server, request: Request) -> bool:
    token = server.config.operator_token
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
    return bool(given) and secrets.compare_digest(given.encode(), token.encode())


def _login(server: Server, request: Request) -> Response:
    key = request.query_params.get("key", "")
    if key and secrets.compare_digest(key.encode(), server.config.operator_token.encode()):
        # Trade the key in the address for a cookie, and drop it from the address bar.
        response = RedirectResponse(request.url.path, status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/sessions",
                            secure=request.url.scheme == "https")
        return response
    body = _page("Operator key needed", "<p>Open the operator link that <code>engine serve</code> printed when it "
                                         "started (it ends in <code>/sessions?key=…</code>).</p>")
    return HTMLResponse(body, status_code=401)


# Pages.

_COLUMNS = (("id", "Session"), ("state", "State"), ("outcome", "Outcome"), ("started", "Started"),
            ("duration_s", "Duration"), ("band", "Band"))


async def _list(server: Server, request: Request) -> Response:
    rows = await asyncio.to_thread(server.store.sessions)
    head = "".join(f"<th>{title}</th>" for _, title in _COLUMNS)
    body = "".join(_row(r) for r in rows) or ""
    empty = "" if rows else '<p id="empty">No sessions yet. Make an invite link with <code>engine invite</code>.</p>'
    content = (f"<p>{len(rows)} session(s) in {html.escape(server.store.label)}; this process runs "
               f"{len(server.links)} of at most {server.config.max_sessions}.</p>{empty}"
               f'<table id="sessions"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    return HTMLResponse(_page(f"Sessions: {server.config.flow.name}", content, live=True))


def _row(r: dict[str, Any]) -> str:
    cells = []
    for key, _ in _COLUMNS:
        value = _cell(key, r)
        if key == "id":
            value = f'<a href="/sessions/{html.escape(str(r["id"]), quote=True)}">{value}</a>'
        cells.append(f'<td data-key="{key}">{value}</td>')
    return f'<tr data-id="{html.escape(str(r["id"]), quote=True)}">{"".join(cells)}</tr>'


def _text(key: str, r: dict[str, Any]) -> str:
    """What a cell shows, as plain text."""
    value = r.get(key)
    if key == "outcome" and value is None:
        value = "running"
    if key == "duration_s" and isinstance(value, int | float):
        value = f"{value:.0f} s"
    return "" if value is None else str(value)


def _cell(key: str, r: dict[str, Any]) -> str:
    return html.escape(_text(key, r))


async def _detail(server: Server, request: Request) -> Response:
    sid = request.path_params["id"]
    r = await asyncio.to_thread(server.store.session, sid)
    if r is None:
        return HTMLResponse(_page("No such session", f"<p>No session {html.escape(sid)}.</p>"), status_code=404)
    esc = html.escape
    facts = "".join(f'<dt>{title}</dt><dd data-key="{key}">{_cell(key, r)}</dd>' for key, title in _COLUMNS[1:])
    facts += f"<dt>Reason</dt><dd>{esc(r.get('reason') or '')}</dd><dt>Process</dt><dd>{esc(r.get('host') or '')}</dd>"
    base = f"/sessions/{esc(sid, quote=True)}"
    parts = [f'<p><a href="/sessions">All sessions</a></p><dl data-id="{esc(sid, quote=True)}">{facts}</dl>']
    if r.get("timeline"):
        parts.append(f'<h2>Timeline</h2><img class="timeline" src="{base}/timeline.svg" alt="timeline of the session">')
    if r.get("transcript"):
        parts.append(f'<h2>Transcript</h2><p><a href="{base}/transcript.md">transcript.md</a></p>'
                     f"<pre>{esc(r['transcript'])}</pre>")
    if r.get("report"):
        parts.append(f'<h2>Report</h2><p><a href="{base}/report.json">report.json</a></p><pre>{esc(r["report"])}</pre>')
    if r.get("outcome") is None:
        parts.append("<p>The session is running: its report, transcript and timeline appear here when it ends.</p>")
    return HTMLResponse(_page(f"Session {sid}", "".join(parts), live=True))


_DOCUMENTS = {"report.json": ("report", "application/json"), "transcript.md": ("transcript", "text/markdown"),
              "timeline.svg": ("timeline", "image/svg+xml")}


async def _document(server: Server, request: Request) -> Response:
    doc = _DOCUMENTS.get(request.path_params["doc"])
    r = await asyncio.to_thread(server.store.session, request.path_params["id"]) if doc else None
    if doc is None or r is None or not r.get(doc[0]):
        return Response("not found\n", status_code=404, media_type="text/plain")
    # An SVG opened on its own could run script: forbid it (the timeline has none).
    headers = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    return Response(r[doc[0]], media_type=f"{doc[1]}; charset=utf-8", headers=headers)


async def _stats(server: Server, request: Request) -> Response:
    try:
        window = min(60.0, max(0.1, float(request.query_params.get("window", 60))))
    except ValueError:
        window = 60.0
    links = {sid: dict(link.stats) for sid, link in server.links.items()}
    totals = Counter(server.relayed)
    for counters in links.values():
        totals.update(counters)
    return JSONResponse({"sessions": len(server.links), "max_sessions": server.config.max_sessions,
                         "draining": server.draining, "loop_lag": server.lag.summary(window), "links": links,
                         "totals": dict(totals)})


async def _live(server: Server, request: Request) -> Response:
    async def stream() -> AsyncIterator[str]:
        sent: dict[str, float] = {}  # id -> `updated` of the row last sent
        since = time.time() - 5  # the page was drawn from the database just now
        yield "retry: 2000\n\n"
        while not server.closing.is_set():
            rows = await asyncio.to_thread(server.store.sessions, since=since)
            for r in reversed(rows):
                if sent.get(r["id"]) != r["updated"]:
                    sent[r["id"]] = r["updated"]
                    cells = {key: _text(key, r) for key, _ in _COLUMNS}
                    yield f"event: session\ndata: {json.dumps({'id': r['id'], 'cells': cells})}\n\n"
            if rows:  # other machines' clocks may lag a little: look back a few seconds
                since = max(since, max(r["updated"] for r in rows) - 5)
            await server.next_change(POLL_S)
            if await request.is_disconnected():
                return

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


def _page(title: str, content: str, *, live: bool = False) -> str:
    script = '<script src="/static/operator.js" defer></script>' if live else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="/static/operator.css">{script}</head>'
            f"<body><h1>{html.escape(title)}</h1>{content}</body></html>")


# The timeline: drawn by tools/render_flow.py, the same drawing as `render_flow --timeline`.


@cache
def _render_flow() -> ModuleType | None:
    if not RENDER_FLOW.is_file():
        return None
    name = "_engine_render_flow"
    spec = importlib.util.spec_from_file_location(name, RENDER_FLOW)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        return None
    return module


def timeline_svg(trace: Path) -> str | None:
    """The session's timeline as SVG, or None (no trace, or tools/ not installed with the package)."""
    render = _render_flow()
    if render is None or not trace.is_file():
        return None
    try:
        return str(render.timeline(read(trace)))
    except Exception:  # a drawing problem must not lose the session's row
        return None
