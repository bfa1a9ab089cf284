"""The sessions database of `engine serve`: one-time invite links and one row per session.

    Store.open("runs/sessions.sqlite")                  SQLite (a path, or sqlite:///path): the default
    Store.open("postgresql://user@host/db")             PostgreSQL (psycopg 3), shared by many processes

Every `engine serve` process behind one reverse proxy opens the same database: an invite made by
`engine invite` works on any of them, is used once whichever claims it first (one conditional
UPDATE, atomic on both backends), and the operator's view of any process lists every session.
The token itself is never stored, only its SHA-256: a copy of the database opens no interview.

Rows hold what the operator's view shows, so it works from any process: the live state while a
session runs, then its outcome, report.json, transcript.md and timeline SVG. The session's files
on disk (OUT/<session>/, the same as `engine run` writes) stay where the session ran.

The methods are plain blocking calls (sqlite3, psycopg); the server runs them in a thread.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Store", "Claim", "REFUSALS", "hash_token", "redact_url"]

TOKEN_BYTES = 24  # secrets.token_urlsafe(24): 32 characters, 192 bits

# What the candidate's page says for each refused link (the codes are part of the page protocol).
REFUSALS = {
    "unknown": "This interview link is not valid. Please check that you opened the whole link.",
    "used": "This interview link has already been used. Each link opens one interview.",
    "expired": "This interview link has expired. Please ask for a new one.",
    "other_flow": "This interview link is for a different interview than the one this server runs.",
}

_SCHEMA = (
    """create table if not exists serve_invites (
        token_hash text primary key, flow text not null, created double precision not null,
        expires double precision not null, used double precision, session_id text)""",
    """create table if not exists serve_sessions (
        id text primary key, flow text not null, state text, outcome text, reason text,
        started text, ended text, duration_s double precision, band text, host text,
        updated double precision not null, report text, transcript text, timeline text)""",
)
_COLUMNS = ("id", "flow", "state", "outcome", "reason", "started", "ended", "duration_s", "band", "host",
            "updated", "report", "transcript", "timeline")
_LIST_COLUMNS = _COLUMNS[:11]  # the list view needs no documents


@dataclass(frozen=True)
class Claim:
    """The answer to `Store.claim`: ok, or the refusal code (a key of REFUSALS)."""

    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None

    @property
    def message(self) -> str:
        return REFUSALS.get(self.refusal or "", "")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def redact_url(url: str) -> str:
    """The database URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Store:
    """Invites and session rows in SQLite or PostgreSQL. Open with `Store.open(url)`."""

    def __init__(self, url: str):
        self.url = url
        parts = urlsplit(url)
        self.postgres = parts.scheme in ("postgres", "postgresql")
        if self.postgres:
            import psycopg  # only needed for PostgreSQL

            self._psycopg = psycopg
            self._path: Path | None = None
        elif parts.scheme in ("", "sqlite"):
            # sqlite:///rel/path and sqlite:////abs/path, as SQLAlchemy spells them; or a bare path.
            self._path = Path(url[len("sqlite:///"):] if parts.scheme else url)
        else:
            raise ValueError(f"--db {redact_url(url)}: use a file path, sqlite:///PATH or postgresql://...")

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect once and create the tables if needed. Raises ValueError with one line if it cannot."""
        store = cls(url)
        try:
            if store._path is not None:
                store._path.parent.mkdir(parents=True, exist_ok=True)
            with store._cursor() as cur:
                for statement in _SCHEMA:
                    cur.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise ValueError(f"cannot open the sessions database {redact_url(url)}: {exc}") from None
        except Exception as exc:
            if store.postgres and isinstance(exc, store._psycopg.Error):
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"cannot open the sessions database {redact_url(url)}: {text}") from None
            raise
        return store

    @property
    def label(self) -> str:
        return redact_url(self.url)

    # Invites.

    def create_invite(self, flow: str, ttl_s: float, *, now: float | None = None) -> str:
        """A new one-time token for `flow`, valid for `ttl_s` seconds. Only its hash is stored."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._cursor() as cur:
            cur.execute("insert into serve_invites (token_hash, flow, created, expires) values (?, ?, ?, ?)",
                        (hash_token(token), flow, now, now + ttl_s))
        return token

    def check(self, token: str, flow: str, *, now: float | None = None) -> Claim:
        """Would `claim` accept this token now? (Nothing is changed.)"""
        with self._cursor() as cur:
            return self._check(cur, hash_token(token), flow, time.time() if now is None else now)

    def claim(self, token: str, flow: str, session_id: str, *, now: float | None = None) -> Claim:
        """Use the token for `session_id`, once: of two processes claiming it, one wins."""
        now = time.time() if now is None else now
        key = hash_token(token)
        with self._cursor() as cur:
            refused = self._check(cur, key, flow, now)
            if not refused.ok:
                return refused
            cur.execute("update serve_invites set used = ?, session_id = ? "
                        "where token_hash = ? and used is null and expires > ?", (now, session_id, key, now))
            return Claim() if cur.rowcount == 1 else Claim("used")

    def release(self, token: str, session_id: str) -> None:
        """Undo a claim by `session_id` that never became a session (the server began shutting down)."""
        with self._cursor() as cur:
            cur.execute("update serve_invites set used = null, session_id = null "
                        "where token_hash = ? and session_id = ?", (hash_token(token), session_id))

    @staticmethod
    def _check(cur: _Cursor, key: str, flow: str, now: float) -> Claim:
        cur.execute("select flow, expires, used from serve_invites where token_hash = ?", (key,))
        row = cur.fetchone()
        if row is None:
            return Claim("unknown")
        if row[2] is not None:
            return Claim("used")
        if row[1] <= now:
            return Claim("expired")
        if row[0] != flow:
            return Claim("other_flow")
        return Claim()

    # Sessions.

    def save_session(self, row: Mapping[str, Any]) -> None:
        """Insert or update one session row; only the columns given change (`id` and `flow` needed)."""
        values = {k: row[k] for k in _COLUMNS if k in row}
        values["updated"] = time.time()
        names = list(values)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "id")
        sql = (f"insert into serve_sessions ({', '.join(names)}) values ({', '.join('?' * len(names))}) "
               f"on conflict (id) do update set {updates}")
        with self._cursor() as cur:
            cur.execute(sql, [values[n] for n in names])

    def sessions(self, *, limit: int = 500, since: float | None = None) -> list[dict[str, Any]]:
        """Session rows without their documents, newest first; `since`: only rows updated after it."""
        where, params = ("where updated > ?", [since]) if since is not None else ("", [])
        with self._cursor() as cur:
            cur.execute(f"select {', '.join(_LIST_COLUMNS)} from serve_sessions {where} "
                        f"order by started desc, id desc limit {int(limit)}", params)
            return [dict(zip(_LIST_COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def session(self, session_id: str) -> dict[str, Any] | None:
        with self._cursor() as cur:
            cur.execute(f"select {', '.join(_COLUMNS)} from serve_sessions where id = ?", (session_id,))
            row = cur.fetchone()
        return None if row is None else dict(zip(_COLUMNS, row, strict=True))

    # Connections: one per call, so any thread may call, and a restarted server is no problem.

    @contextmanager
    def _cursor(self) -> Iterator[_Cursor]:
        if self._path is not None:
            conn = sqlite3.connect(self._path, timeout=10)
            try:
                conn.execute("pragma journal_mode = wal")  # readers never block the writer
                with conn, closing(conn.cursor()) as cur:  # the with-block commits or rolls back
                    yield cur
            finally:
                conn.close()
        else:
            with self._psycopg.connect(self.url, connect_timeout=10) as pg, pg.cursor() as cur:
                yield _Postgres(cur)  # commits on leaving the with-block


class _Postgres:
    """A psycopg cursor that takes sqlite's `?` placeholders (the SQL here never holds a literal ?)."""

    def __init__(self, cur: Any):
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql.replace("?", "%s"), params)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())
