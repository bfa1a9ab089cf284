"""The simulator's server: `Simulator` accepts connections (a real WebSocket server on 127.0.0.1, or
any connection handed to `handle`) and runs one `Session` per connection.
"""

from __future__ import annotations

import asyncio
import math
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from .. import tts
from .faults import Faults
from .scenario import Persona, load_persona
from .session import Connection, Session, SimStats

__all__ = ["Simulator", "simulator", "run_forever", "MAX_SPEED"]

MAX_SPEED = 1_000_000.0  # beyond this every delay is below the loop's resolution anyway
BYTES_PER_MS = 48


def _speaking_seconds(text: str, wpm: int) -> float:
    return max(len(text.split()), 1) * 60.0 / wpm


class _Voices:
    """Audio for the interviewer: espeak-ng when asked for and installed, else a soft tone of the right length."""

    def __init__(self, speak: bool):
        self._speak = speak and tts.available()
        self._cache: dict[tuple[str, str, int], bytes] = {}
        self._tone = b""  # made on first use: it needs numpy, which the start-up should not wait for

    async def speech(self, text: str, voice: str, wpm: int) -> bytes:
        if self._speak:
            key = (text, voice, wpm)
            if key not in self._cache:
                audio = await asyncio.to_thread(tts.synthesize, text, voice, wpm)
                self._cache[key] = audio or self.tone(_speaking_seconds(text, wpm))
            return self._cache[key]
        return self.tone(_speaking_seconds(text, wpm))

    def tone(self, seconds: float) -> bytes:
        """A hum with a syllable-rate envelope: it sounds like speech from afar and costs one slice."""
        if not self._tone:
            self._tone = _hum(2.0)
        size = round(seconds * 1000) * BYTES_PER_MS
        repeats = -(-size // len(self._tone))
        return (self._tone * repeats)[:size] if repeats > 1 else self._tone[:size]


def _hum(seconds: float) -> bytes:
    """`seconds` of hum; periodic every 0.25 s but for the noise, so it tiles without a click."""
    import numpy as np

    t = np.arange(int(seconds * tts.RATE)) / tts.RATE
    voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t) + 0.25 * np.sin(2 * np.pi * 420 * t)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)  # four syllables a second
    noise = np.random.default_rng(0).normal(0, 0.05, t.size)
    return np.round(2500 * syllables * (voice + noise)).astype("<i2").tobytes()


class Simulator:
    """A Realtime-protocol server that plays the model and a scripted candidate; one `Session` per connection.

    ``async with simulator(speed=50) as sim: ... sim.url ...`` starts a WebSocket server on `host`
    (then `url` is set); leaving closes every connection and stops it. Without starting a server,
    `handle(connection)` serves one connection given by the caller (engine.loopback's server end).

    Args:
        port: 0 picks a free port.
        persona: a `Persona` (scenario), a persona file or bundled name, or None for the default persona.
        seed: every random choice follows from it.
        faults: a `Faults` or its spec string; `Faults.parse` explains bad specs.
        speed: divides every simulated delay (50 runs a 5-minute interview in 6 seconds).
        voices: speak with espeak-ng when it is installed (slower; off keeps tests fast).
        scripted_candidate: False: nobody answers on the scenario's behalf; the candidate is whoever
            sends audio (a browser, a microphone) or text messages (a typing author).

    Raises:
        ValueError: bad faults spec, bad persona (`PersonaError`), or a speed that is not in (0, MAX_SPEED].
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        persona: Persona | str | Path | None = None,
        seed: int = 0,
        faults: Faults | str = "",
        speed: float = 1.0,
        voices: bool = False,
        scripted_candidate: bool = True,
    ):
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and 0 < speed <= MAX_SPEED):
            raise ValueError(f"speed must be a number in (0, {MAX_SPEED:g}], got {speed}")
        self.host, self.port = host, port
        self.persona = persona if isinstance(persona, Persona) else load_persona(persona)
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self.seed, self.speed = seed, speed
        self.scripted_candidate = scripted_candidate
        self.stats = SimStats()
        self.voices = _Voices(voices)
        self.closing = asyncio.Event()  # set when the simulator stops: frozen connections are dropped
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/realtime``; the SDK wants the part before ``/realtime`` as websocket_base_url."""
        if self._server is None:
            raise RuntimeError("the simulator is not started: use `async with simulator(...) as sim`")
        host, port = self._server.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{port}/v1/realtime"

    async def __aenter__(self) -> Simulator:
        self._server = await serve(
            self._serve,
            self.host,
            self.port,
            process_request=_only_realtime_path,
            max_size=16 * 2**20,  # an input_audio_buffer.append may carry up to 15 MiB
            compression=None,  # audio frames are base64 noise; deflate would only cost CPU
            ping_interval=None,  # the client keeps the connection alive; a frozen server must not ping
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def handle(self, connection: Connection) -> None:
        """Serve one connection until it closes (or a fault ends it).

        `connection` is a websockets `ServerConnection` or anything with the same subset: ``send(str |
        bytes, text=...)``, async iteration over incoming frames, ``close(code, reason)``, ``request.path``
        and ``request.headers``, and ``transport.abort()`` / ``transport.pause_reading()`` (used only by the
        abort and freeze faults). All timing goes through the running loop's clock.
        """
        self.stats.sessions += 1
        await Session(self, connection, self.stats.sessions).run()

    async def _serve(self, ws: ServerConnection) -> None:
        await self.handle(ws)


def _only_realtime_path(connection: ServerConnection, request: Any) -> Any:
    if urlsplit(request.path).path.rstrip("/") != "/v1/realtime":
        return connection.respond(HTTPStatus.NOT_FOUND, "The simulator serves only /v1/realtime\n")
    return None  # any query string and any Authorization header are fine


simulator = Simulator  # the factory the rest of the engine calls: simulator(...) -> Simulator


async def run_forever(host: str = "127.0.0.1", port: int = 8765, *, voices: bool = True, **options: Any) -> None:
    """Serve until cancelled (`engine sim`); print one line that ends with the URL.

    Args:
        options: ``persona``, ``seed``, ``faults``, ``speed``, ``scripted_candidate``, as for `Simulator`.
    """
    async with Simulator(host, port, voices=voices, **options) as sim:
        print(f"Realtime simulator listening on {sim.url}", flush=True)
        await asyncio.Future()
