"""Shared by the `engine serve` tests: a server with the simulator on 127.0.0.1, HTTP requests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from helpers import ROOT, load_flow

from engine.flow import Flow
from engine.realtime import Endpoint
from engine.serve.app import ServeConfig, Server, running
from engine.simulator import simulator
from engine.store import Store

FLOW = load_flow("assessment.yaml")
SECRET = "sk-test-serve-never-on-a-page-0123456789"
OPERATOR = "operator-key-for-tests"


@contextlib.asynccontextmanager
async def serving(tmp: Path, *, speed: float = 30.0, persona: Any = None, faults: str = "", flow: Flow = FLOW,
                  db: str | None = None, voices: bool = False, sim_options: dict[str, Any] | None = None,
                  sims: list[Any] | None = None, **config: Any) -> AsyncIterator[tuple[Server, str, Store]]:
    """`engine serve` in this process: the simulator at `speed`, a server on a free port.
    `sims`, if given, receives the simulator (for its statistics)."""
    store = Store.open(db or str(tmp / "serve.sqlite"))
    async with simulator(persona=persona, faults=faults, speed=speed, voices=voices, **(sim_options or {})) as sim:
        if sims is not None:
            sims.append(sim)
        cfg = ServeConfig(flow=flow, endpoint=Endpoint(sim.url, api_key=SECRET, simulated=True), store=store,
                          out=tmp / "runs", speed=speed, operator_token=OPERATOR, **config)
        async with running(cfg) as (server, url):
            yield server, url, store


async def http(url: str, *, headers: dict[str, str] | None = None,
               limit: float = 10.0) -> tuple[int, dict[str, str], str]:
    """GET `url` (HTTP/1.1, Connection: close): (status, lower-cased headers, body)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), limit)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
        writer.write("\r\n".join(lines).encode())
        raw = await asyncio.wait_for(reader.read(), limit)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
    if found.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), found, body.decode("utf-8", "replace")


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def postgres_url() -> tuple[str | None, str]:
    """A PostgreSQL server for the tests: ENGINE_TEST_POSTGRES, or one .ci/postgres-setup.sh starts
    (it installs Debian's postgresql when needed). (None, why) when there is none."""
    url = os.environ.get("ENGINE_TEST_POSTGRES")
    if url:
        return url, ""
    if shutil.which("bash") is None:
        return None, "no bash to run .ci/postgres-setup.sh"
    try:
        run = subprocess.run(["bash", str(ROOT / ".ci" / "postgres-setup.sh")], capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired:
        return None, ".ci/postgres-setup.sh took more than 300 s"
    url = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    if not url.startswith("postgresql://"):
        return None, f"no PostgreSQL server could be started: {run.stderr.strip() or 'no reason given'}"
    os.environ["ENGINE_TEST_POSTGRES"] = url
    return url, ""


def make_persona(*, questions: list[str] | None = None, answers: list[str] | None = None,
                 tool_after: int | None = None, barge_in: tuple[int, float] | None = None,
                 reaction_s: tuple[float, float] | None = None, interviewer_wpm: int | None = None) -> Any:
    """The default persona with changes, in the simulator's persona format (engine.sim's nested
    `candidate`/`interviewer` one, or the older flat one). `barge_in`: (answer index, seconds into
    that question's audio)."""
    from engine import simulator as sim

    base = sim.load_persona()
    data = base.model_dump(mode="json")
    if "candidate" in data:  # docs/personas.md
        candidate, interviewer = data["candidate"], data["interviewer"]
        if tool_after is not None:
            interviewer["tool_calls"][0]["after_answers"] = tool_after
    else:
        candidate = interviewer = data
        if tool_after is not None:
            data["questions_before_assessment"] = tool_after
        interviewer = data["interviewer"]
    if answers is not None:
        candidate["answers"] = list(answers)
    if reaction_s is not None:
        candidate["reaction_s"] = list(reaction_s)
    if questions is not None:
        interviewer["questions"] = list(questions)
    if interviewer_wpm is not None:
        interviewer["words_per_minute"] = interviewer_wpm
    if barge_in is not None:
        n, after = barge_in
        if "candidate" in data:
            text = candidate["answers"][n]
            candidate["answers"][n] = {"text": text if isinstance(text, str) else text["text"], "barge_in_s": after}
        else:
            data["barge_in"] = {"question": n + 1, "after_s": after}
    return type(base).model_validate(data)
