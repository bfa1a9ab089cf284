"""Sound for the engine: play the interviewer, capture the candidate, report what was *heard*.

The core emits `Play` / `EndAudio` / `StopPlayback`; the runner calls a `Player`, and the player
reports back, on the event loop, as `Event`s:

    playback.started  (response_id, item_id)            the response's first sample is heard
    playback.done     (response_id, item_id, played_ms) its last sample is heard, after end()
    playback.stopped  (response_id, item_id, played_ms, dropped)   the answer to stop()

`playback.stopped` names the response that was playing (or None) and the item whose `played_ms`
it gives (for `conversation.item.truncate`); `dropped` lists every response that will get no
playback.done: the playing one and all queued ones. Later feeds of those ids are ignored.

Responses play strictly one after another, in the order they were first fed or ended. Events are
always delivered from a loop callback, never from inside feed/end/stop, so the runner may call the
core from `emit` without re-entering it.

Two players, same surface:
- `DevicePlayer`: one long-lived PortAudio stream (sounddevice); done = the DAC time of the last
  sample (research/audio.md §3, accurate to ~1-5 ms on PulseAudio and JACK).
- `VirtualPlayer`: no device; a model of a speaker clocked by an injected clock, optionally at
  `speed` X and writing what was heard to a WAV file (audio.md §4). Tests and simulated runs use it.

`open_player(mode, ...)` picks one. Importing this module never needs PortAudio: sounddevice is
imported lazily and a missing library (`OSError`, not ImportError) becomes a fallback reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import math
import threading
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import EngineError
from .events import Event

__all__ = [
    "RATE",
    "BLOCK",
    "Emit",
    "Player",
    "VirtualPlayer",
    "DevicePlayer",
    "AudioUnavailable",
    "open_player",
    "Microphone",
    "open_microphone",
    "pcm_ms",
    "base64_len",
]

RATE = 24_000  # Realtime API pcm16: 24 kHz, mono, little-endian
BYTES_PER_S = RATE * 2
BLOCK = 480  # 20 ms PortAudio blocks; blocksize=0 or latency='low' underruns on pulse (audio.md §2)
UNPACED = 5.0  # frames consumed / real time above this = not a real clock (ALSA null: ~3700)

Emit = Callable[[Event], None]  # called on the event-loop thread only


def pcm_ms(n_bytes: int) -> float:
    """Duration of `n_bytes` of 24 kHz mono pcm16 (48 bytes per ms)."""
    return n_bytes / 48


def base64_len(audio: str) -> int:
    """Bytes that `audio` (base64) decodes to, without decoding it."""
    n = len(audio)
    if n % 4:  # not canonical base64: let the decoder say what it makes of it
        return len(base64.b64decode(audio))
    return n // 4 * 3 - (2 if audio.endswith("==") else 1 if audio.endswith("=") else 0)


class AudioUnavailable(EngineError):
    """`--audio device` was asked for, and there is no usable sound device (the message says why)."""


class Player(Protocol):
    def feed(self, response_id: str, item_id: str | None, pcm: bytes) -> None: ...
    def feed_base64(self, response_id: str, item_id: str | None, audio: str) -> None:
        """`feed` for audio as the server sends it (base64): a player that only needs its
        length (the virtual speaker) never decodes it."""
        ...

    def end(self, response_id: str) -> None: ...
    def stop(self) -> None: ...
    def played_ms(self, item_id: str) -> int: ...
    def record_input(self, pcm: bytes) -> None: ...
    async def aclose(self) -> None: ...


def _load_sounddevice() -> Any:
    """Import sounddevice (~90 ms: it runs ldconfig). Raises OSError when PortAudio is missing."""
    import sounddevice

    return sounddevice


@dataclass(eq=False)
class _Response:
    id: str
    # (item_id, pcm, or its length when only that is known) not yet scheduled / handed over
    chunks: deque[tuple[str | None, Any]] = field(default_factory=deque)
    ended: bool = False
    bytes: int = 0  # audio scheduled (virtual) or handed to PortAudio (device) so far
    item_id: str | None = None  # item of its latest audio
    done_at: float = math.inf  # when its last sample is heard; set once it is ended and drained

    def done_event(self) -> Event:
        played = round(pcm_ms(self.bytes))
        return Event("playback.done", response_id=self.id, item_id=self.item_id,
                     data={"played_ms": played})


def _stopped(playing: tuple[str, str | None] | None, played_ms: int, dropped: list[str]) -> Event:
    rid, item = playing or (None, None)
    data = {"played_ms": played_ms, "dropped": dropped}
    return Event("playback.stopped", response_id=rid, item_id=item, data=data)


class _Notes:
    """Events due at given times, emitted in time order (ties: in the order noted) from one timer.

    One timer instead of one per event keeps ties ordered (asyncio's timer heap does not promise
    FIFO for equal times) and puts the early-arming in one place. `_cut[rid] = t`: stop() dropped
    that response; its playback.done never comes, nor its other events due after t.
    """

    def __init__(self, emit: Emit, clock: Callable[[], float], call_at: Callable[..., Any],
                 early: float):
        self._emit, self._clock, self._call_at, self._early = emit, clock, call_at, early
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self._armed = math.inf  # due time the live timer serves
        self._token: object = None  # identifies the live timer; older ones fire and do nothing
        self._cut: dict[str, float] = {}
        self._closed = False

    def _note(self, when: float, event: Event) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), event))
        self._arm()

    def _arm(self) -> None:
        if self._closed or not self._heap or self._armed <= self._heap[0][0]:
            return
        when = self._armed = self._heap[0][0]
        token = self._token = object()
        # Linux pads a timer by 0.1% of its length (audio.md §4): arm early, then re-arm exactly.
        # (Compared as the sum, not the difference: `when - early` may round to now, and a timer
        # armed for now would fire at once, forever, on a clock that does not move by itself.)
        at = when - self._early
        if at <= self._clock():
            at = when
        self._call_at(at, lambda: self._fire(token))

    def _fire(self, token: object) -> None:
        if token is not self._token or self._closed:
            return
        self._armed = math.inf
        now = self._clock()
        try:
            while self._heap and self._heap[0][0] <= now:
                when, _, event = heapq.heappop(self._heap)
                cut = self._cut.get(event.response_id)  # type: ignore[arg-type]
                if cut is None or (when <= cut and event.type != "playback.done"):
                    self._emit(event)
        finally:
            self._arm()  # even if emit raised, later events must still come

    # What both players do alike: the microphone side of the WAV, and closing.
    _rec: _Recording | None = None

    def record_input(self, pcm: bytes) -> None:
        if self._rec and not self._closed:
            self._rec.add_input(self._clock(), pcm)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_output()
        if self._rec:
            await asyncio.to_thread(self._rec.write)

    async def _stop_output(self) -> None:
        """Let the sound end (player-specific)."""


class _Recording:
    """What was heard (channel 0) and, once `record_input` was used, what was captured (channel 1),
    on one timeline: sample 0 is when the player was created; gaps are silence. Mono when nothing
    was captured. Kept in memory (~170 MB per hour per side) and written at close."""

    def __init__(self, path: Path, t0: float, speed: float):
        self.path, self.t0, self.speed = Path(path), t0, speed
        self.tracks: tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]] = ([], [])  # (start, pcm) per channel
        self.in_cursor = 0

    def sample(self, t: float) -> int:
        return round((t - self.t0) * self.speed * RATE)

    def add(self, t: float, pcm: bytes) -> None:
        self.tracks[0].append((self.sample(t), bytes(pcm)))

    def add_input(self, t: float, pcm: bytes) -> None:
        # A captured chunk ends when it is handed over; bursts are laid end to end.
        start = max(self.sample(t) - len(pcm) // 2, self.in_cursor)
        self.in_cursor = start + len(pcm) // 2
        self.tracks[1].append((start, bytes(pcm)))

    def cut(self, t: float) -> None:
        """Drop engine audio that was scheduled but not heard by t (stop, close)."""
        end, out = self.sample(t), self.tracks[0]
        while out and out[-1][0] >= end:
            out.pop()
        if out and out[-1][0] + len(out[-1][1]) // 2 > end:
            start, pcm = out[-1]
            out[-1] = (start, pcm[: (end - start) * 2])

    def write(self) -> None:
        import numpy as np

        channels = 2 if self.tracks[1] else 1
        n = max((s + len(p) // 2 for track in self.tracks for s, p in track), default=0)
        frames = np.zeros((n, channels), "<i2")
        for ch in range(channels):
            for start, pcm in self.tracks[ch]:
                a = np.frombuffer(pcm, "<i2")
                frames[start : start + len(a), ch] = a
        tmp = self.path.with_name(self.path.name + ".tmp")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(frames.tobytes())
        tmp.replace(self.path)


def _is_real_clock(clock: Callable[[], float]) -> bool:
    return isinstance(getattr(clock, "__self__", None), asyncio.AbstractEventLoop) or clock in (
        time.monotonic,
        time.perf_counter,
    )


class VirtualPlayer(_Notes):
    """A speaker modelled on a clock (audio.md §4). No thread, no device.

    Each chunk starts at max(now + latency, end of the previous chunk) and lasts len/48 ms / speed,
    so gaps in feeding are gaps in sound; audio counts as played once its start time has passed
    (partial chunks count per sample). Exact under a fake clock.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        clock: Callable[[], float],
        call_at: Callable[[float, Callable[[], None]], Any],
        speed: float = 1.0,
        latency: float = 0.0,
        wav_path: Path | None = None,
    ):
        if speed <= 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        super().__init__(emit, clock, call_at, early=0.02 if _is_real_clock(clock) else 0.0)
        self._speed, self._latency = speed, latency
        self._queue: deque[_Response] = deque()  # not yet ended-and-scheduled, in play order
        self._index: dict[str, _Response] = {}  # the same, by id
        self._sounding: deque[_Response] = deque()  # scheduled in full; done_at may lie ahead
        self._gone: set[str] = set()  # finished or dropped: later feeds and ends are ignored
        self._cursor = -math.inf  # when the last scheduled sample ends
        self._segs: deque[tuple[float, float, str, str | None, int]] = deque()  # not fully heard
        self._heard: dict[str | None, int] = {}  # bytes per item whose chunks are fully heard
        self._last: tuple[str, str | None] | None = None  # (response, item) of the last heard chunk
        self._rec = _Recording(wav_path, clock(), speed) if wav_path else None

    # -- the runner's calls -------------------------------------------------------------------
    def feed(self, response_id: str, item_id: str | None, pcm: bytes) -> None:
        r = self._get(response_id)
        if r is None or r.ended:
            return
        pcm = pcm[: len(pcm) // 2 * 2]
        if pcm:
            r.chunks.append((item_id, pcm))
        self._pump()

    def feed_base64(self, response_id: str, item_id: str | None, audio: str) -> None:
        if self._rec is not None:  # the WAV needs the samples
            return self.feed(response_id, item_id, base64.b64decode(audio))
        r = self._get(response_id)
        if r is None or r.ended:
            return
        n = base64_len(audio) // 2 * 2  # a model of a speaker needs only how long it sounds
        if n:
            r.chunks.append((item_id, n))
        self._pump()

    def end(self, response_id: str) -> None:
        r = self._get(response_id)
        if r is not None:
            r.ended = True
            self._pump()

    def stop(self) -> None:
        now = self._clock()
        self._settle(now)
        pending = [r for r in self._sounding if r.done_at > now] + list(self._queue)
        dropped = [r.id for r in pending]
        playing: tuple[str, str | None] | None = None
        if self._segs and self._segs[0][0] < now:  # cut mid-chunk
            start, _, rid, item, _ = self._segs[0]
            self._heard[item] = self._heard.get(item, 0) + self._bytes_between(start, now)
            playing = rid, item
        elif self._last and self._last[0] in dropped:  # in a gap between chunks of a response
            playing = self._last
        played = round(pcm_ms(self._heard.get(playing[1], 0))) if playing else 0
        self._segs.clear()
        self._cursor = now
        if self._rec:
            self._rec.cut(now)
        for rid in dropped:
            self._cut[rid] = now
        self._gone.update(dropped)
        self._queue.clear()
        self._index.clear()
        self._sounding.clear()
        self._note(now, _stopped(playing, played, dropped))

    def played_ms(self, item_id: str) -> int:
        now = self._clock()
        self._settle(now)
        n = self._heard.get(item_id, 0)
        if self._segs and self._segs[0][3] == item_id and self._segs[0][0] < now:
            n += self._bytes_between(self._segs[0][0], now)
        return round(pcm_ms(n))

    async def _stop_output(self) -> None:
        if self._rec:
            self._rec.cut(self._clock())

    # -- inside -------------------------------------------------------------------------------
    def _get(self, rid: str) -> _Response | None:
        if rid in self._gone or self._closed:
            return None
        r = self._index.get(rid)
        if r is None:
            r = self._index[rid] = _Response(rid)
            self._queue.append(r)
        return r

    def _pump(self) -> None:
        """Schedule the head response's audio; retire it once ended, then go on to the next."""
        now = self._clock()
        while self._sounding and self._sounding[0].done_at <= now:
            self._sounding.popleft()
        while self._queue:
            r = self._queue[0]
            while r.chunks:
                item, pcm = r.chunks.popleft()
                n = pcm if isinstance(pcm, int) else len(pcm)  # int: only the length was fed
                start = max(now + self._latency, self._cursor)
                self._cursor = start + n / (BYTES_PER_S * self._speed)
                last = self._segs[-1] if self._segs else None
                if last is not None and last[1] == start and last[2] == r.id and last[3] == item:
                    # Back to back with the chunk before: one segment (a response is ~100 deltas).
                    self._segs[-1] = (last[0], self._cursor, r.id, item, last[4] + n)
                else:
                    self._segs.append((start, self._cursor, r.id, item, n))
                if self._rec and not isinstance(pcm, int):
                    self._rec.add(start, pcm)
                if not r.bytes:
                    self._note(start, Event("playback.started", response_id=r.id, item_id=item))
                r.bytes += n
                r.item_id = item
            if not r.ended:
                return
            self._queue.popleft()
            del self._index[r.id]
            self._gone.add(r.id)
            r.done_at = max(now, self._cursor)  # no audio: done now, or when the one before is
            self._sounding.append(r)
            self._note(r.done_at, r.done_event())

    def _settle(self, now: float) -> None:
        """Move chunks heard in full out of the timeline into per-item totals."""
        while self._segs and self._segs[0][1] <= now:
            _, _, rid, item, n = self._segs.popleft()
            self._heard[item] = self._heard.get(item, 0) + n
            self._last = rid, item

    def _bytes_between(self, start: float, now: float) -> int:
        return 2 * round((now - start) * self._speed * RATE)


class _Pace:
    """Counts the frames a stream's callback moves, to tell a real-time device from one that runs
    as fast as the CPU allows (ALSA null/file: ~3700x, audio.md §2)."""

    def __init__(self, rate: int):
        self.rate, self.frames, self._goal = rate, 0, math.inf
        self._hit = threading.Event()

    def tick(self, frames: int) -> None:  # audio thread
        self.frames += frames
        if self.frames >= self._goal:
            self._hit.set()

    def ratio(self, wait: float = 0.2) -> float:
        """Frames moved per real-time frame over `wait` s (returns as soon as 0.5 s of audio moved)."""
        f0, t0 = self.frames, time.monotonic()
        self._goal = f0 + self.rate // 2
        self._hit.wait(wait)
        return (self.frames - f0) / (max(time.monotonic() - t0, 1e-6) * self.rate)


class DevicePlayer(_Notes):
    """Plays through one long-lived sounddevice RawOutputStream (audio.md §3).

    The stream runs for the whole session and outputs silence when idle, which avoids start-up
    cost and PulseAudio's idle-sink stall. feed() appends under a lock; the callback copies at most
    one block, records when each sample will be heard (monotonic now + outputBufferDacTime -
    currentTime) and posts started/done events to the loop with call_soon_threadsafe; the loop
    then emits them with call_at at that time (loop.time() is the monotonic clock: asyncio's exactly,
    uvloop's in whole milliseconds read once per pass, so at most a millisecond behind).
    `played_ms` and `stop()` count audio handed to PortAudio: that part (<= one latency, 40-60 ms)
    can no longer be silenced and will be heard, so it is what `conversation.item.truncate` needs.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        loop: asyncio.AbstractEventLoop,
        wav_path: Path | None = None,
        device: int | str | None = None,
        extra_latency: float = 0.0,  # for sinks that under-report latency (Bluetooth)
        sounddevice: Any = None,
    ):
        sd = sounddevice or _load_sounddevice()
        super().__init__(emit, loop.time, loop.call_at, early=0.0)  # call_at is <= one latency ahead
        self._loop, self._extra = loop, extra_latency
        self._lock = threading.Lock()  # guards everything the callback touches
        self._queue: deque[_Response] = deque()
        self._index: dict[str, _Response] = {}
        self._gone: set[str] = set()
        self._item_bytes: dict[str | None, int] = {}  # handed to PortAudio, per item
        self._last: tuple[_Response, str | None] | None = None  # owner of the latest handed audio
        self._heard_end = -math.inf  # when the latest handed sample is heard
        self._outbox: list[tuple[float, Event]] = []  # made on the audio thread, emitted by the loop
        self._zeros = bytes(BLOCK * 2)
        self._pace = _Pace(RATE)
        self.xruns = 0  # callbacks that reported an underflow
        self.max_delay = 0.0  # longest DAC delay seen (s): what stop() cannot silence, minus a block
        self._rec = _Recording(wav_path, time.monotonic(), 1.0) if wav_path else None
        self._stream = sd.RawOutputStream(
            samplerate=RATE, blocksize=BLOCK, channels=1, dtype="int16", device=device,
            callback=self._callback,
        )
        self._latency = float(self._stream.latency)
        try:
            self._stream.start()
        except BaseException:
            self._stream.close()
            raise

    # -- the runner's calls (event-loop thread) -----------------------------------------------
    def feed(self, response_id: str, item_id: str | None, pcm: bytes) -> None:
        pcm = pcm[: len(pcm) // 2 * 2]
        with self._lock:
            r = self._get(response_id)
            if r is not None and not r.ended and pcm:
                r.chunks.append((item_id, memoryview(pcm)))

    def feed_base64(self, response_id: str, item_id: str | None, audio: str) -> None:
        self.feed(response_id, item_id, base64.b64decode(audio))

    def end(self, response_id: str) -> None:
        with self._lock:
            r = self._get(response_id)
            if r is None:
                return
            r.ended = True
            self._retire(time.monotonic())  # already drained (or never fed): done without a callback
        self._flush()

    def stop(self) -> None:
        with self._lock:
            now = time.monotonic()
            dropped = [r.id for r in self._queue]
            # The owner of the latest handed audio is playing unless it has been heard in full
            # (done_at is inf while it is queued). Handed audio still plays; its done is dropped.
            playing = self._last if self._last and self._last[0].done_at > now else None
            played = round(pcm_ms(self._item_bytes.get(playing[1], 0))) if playing else 0
            if playing and playing[0].id not in dropped:
                dropped.insert(0, playing[0].id)
            for rid in dropped:  # playback.started of handed audio may still come: it is heard
                self._cut[rid] = max(now, self._heard_end)
            self._gone.update(dropped)
            self._queue.clear()
            self._index.clear()
        self._flush()  # due events first, so the order on the loop stays the order of sound
        self._note(now, _stopped(playing and (playing[0].id, playing[1]), played, dropped))

    def played_ms(self, item_id: str) -> int:
        with self._lock:
            return round(pcm_ms(self._item_bytes.get(item_id, 0)))

    async def _stop_output(self) -> None:
        await asyncio.to_thread(self._close_stream)

    # -- inside -------------------------------------------------------------------------------
    def _close_stream(self) -> None:
        try:
            self._stream.stop()  # lets the last handed blocks play
        finally:
            self._stream.close()

    def _get(self, rid: str) -> _Response | None:
        if rid in self._gone or self._closed:
            return None
        r = self._index.get(rid)
        if r is None:
            r = self._index[rid] = _Response(rid)
            self._queue.append(r)
        return r

    def _retire(self, now: float) -> None:
        """Under the lock: finish head responses that are ended and have nothing left to hand over."""
        while self._queue and self._queue[0].ended and not self._queue[0].chunks:
            r = self._queue.popleft()
            del self._index[r.id]
            self._gone.add(r.id)
            r.done_at = max(now, self._heard_end)
            self._outbox.append((r.done_at, r.done_event()))

    def _flush(self) -> None:
        """On the loop: schedule what the audio thread noted."""
        with self._lock:
            notes, self._outbox = self._outbox, []
        for when, event in notes:
            self._note(when, event)

    def _callback(self, outdata: Any, frames: int, t: Any, status: Any) -> None:  # audio thread
        now = time.monotonic()
        delay = t.outputBufferDacTime - t.currentTime
        if delay <= 0:  # 0.0 on ALSA's priming callbacks (audio.md §2)
            delay = self._latency
        heard = now + delay + self._extra  # when this block's first sample is heard
        need, pos = frames * 2, 0
        with self._lock:
            self.xruns += bool(status)
            self.max_delay = max(self.max_delay, delay)
            while True:
                self._retire(now)
                if pos == need or not self._queue or not self._queue[0].chunks:
                    break
                r = self._queue[0]
                item, pcm = r.chunks[0]
                n = min(len(pcm), need - pos)
                outdata[pos : pos + n] = pcm[:n]
                if n == len(pcm):
                    r.chunks.popleft()
                else:
                    r.chunks[0] = (item, pcm[n:])
                at = heard + pos / BYTES_PER_S
                if not r.bytes:
                    self._outbox.append((at, Event("playback.started", response_id=r.id, item_id=item)))
                if self._rec:
                    self._rec.add(at, pcm[:n])
                r.bytes += n
                r.item_id = item
                self._item_bytes[item] = self._item_bytes.get(item, 0) + n
                pos += n
                self._heard_end = heard + pos / BYTES_PER_S
                self._last = r, item
            post = bool(self._outbox)
        if pos < need:
            pad = need - pos
            outdata[pos:need] = self._zeros[:pad] if pad <= len(self._zeros) else bytes(pad)
        self._pace.tick(frames)
        if post:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                self._loop.call_soon_threadsafe(self._flush)

    def _close_now(self) -> None:
        self._closed = True
        self._stream.abort()
        self._stream.close()


def open_player(
    mode: str,
    emit: Emit,
    *,
    loop: asyncio.AbstractEventLoop,
    speed: float = 1.0,
    wav_path: Path | None = None,
    sounddevice_loader: Callable[[], Any] = _load_sounddevice,
) -> tuple[Player, str | None]:
    """The player for `--audio MODE`, and one line saying why a fallback was taken (else None).

    none: virtual, silent.  wav: virtual, writing `wav_path`.  device: the sound device or
    AudioUnavailable.  auto: the device when PortAudio loads, a default output exists, it is paced
    in real time and speed == 1; otherwise virtual (writing `wav_path` if given).
    Blocks up to ~0.2 s for the pacing check of a device.
    """

    def virtual(path: Path | None) -> VirtualPlayer:
        return VirtualPlayer(emit, clock=loop.time, call_at=loop.call_at, speed=speed, wav_path=path)

    if mode == "none":
        return virtual(None), None
    if mode == "wav":
        if wav_path is None:
            raise ValueError("--audio wav needs a WAV path")
        return virtual(wav_path), None
    if mode not in ("auto", "device"):
        raise ValueError(f"unknown audio mode {mode!r} (auto, device, wav, none)")
    player, why = _open_device(emit, loop, speed, wav_path, sounddevice_loader)
    if player is not None:
        return player, None
    if mode == "device":
        raise AudioUnavailable(f"no sound device: {why}")
    return virtual(wav_path), f"{why}; playing on a virtual clock instead (no sound)"


def _open_device(
    emit: Emit,
    loop: asyncio.AbstractEventLoop,
    speed: float,
    wav_path: Path | None,
    loader: Callable[[], Any],
) -> tuple[DevicePlayer | None, str]:
    if speed != 1.0:
        return None, f"speed {speed:g} needs simulated time, and a sound device plays in real time only"
    sd, why = _sounddevice(loader)
    if sd is None:
        return None, why
    try:
        name = sd.query_devices(kind="output")["name"]
    except (sd.PortAudioError, ValueError):
        return None, "no audio output device (PortAudio lists none)"
    try:
        player = DevicePlayer(emit, loop=loop, wav_path=wav_path, sounddevice=sd)
    except (sd.PortAudioError, ValueError) as exc:
        return None, f"cannot open audio output {name!r}: {exc}"
    ratio = player._pace.ratio()
    if ratio > UNPACED:
        player._close_now()
        return None, f"audio output {name!r} is not clocked in real time ({_fast(ratio)})"
    return player, ""


def _sounddevice(loader: Callable[[], Any]) -> tuple[Any, str]:
    try:
        return loader(), ""
    except OSError as exc:  # sounddevice raises OSError, not ImportError, without libportaudio
        return None, f"PortAudio not found ({exc}; install: sudo apt-get install libportaudio2)"
    except ImportError as exc:
        return None, f"sounddevice is not installed ({exc})"


def _fast(ratio: float) -> str:
    return f"runs {ratio:.0f}x too fast, like ALSA's null device"


class _Resampler:
    """int16 mono at `rate` -> 24 kHz, carrying the filter's state across blocks.

    soxr's high-quality low-pass (its "HQ" recipe) keeps what lies above 12 kHz out of the band: a
    15 kHz tone captured at 44.1 kHz comes out at -119 dB (linear interpolation let it through as a
    9 kHz tone at -3 dB), and speech below 10 kHz is untouched (< 0.01 dB). The filter holds back
    10-35 ms of audio (the latency of a live stream, not lost); ~40 us per 20 ms block."""

    def __init__(self, rate: int):
        self.rate = rate
        self._stream: Any = None
        if rate != RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, RATE, 1, dtype="int16", quality="HQ")

    def __call__(self, pcm: bytes) -> bytes:
        if self._stream is None:
            return pcm
        import numpy as np

        out: bytes = self._stream.resample_chunk(np.frombuffer(pcm, "<i2")).tobytes()
        return out


class Microphone:
    """Live capture: RawInputStream at 24 kHz int16 mono (or the device's own rate, resampled),
    20 ms blocks. Chunks captured before `chunks()` is first iterated are discarded."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        device: int | str | None = None,
        block_ms: int = 20,
        sounddevice: Any = None,
    ):
        sd = sounddevice or _load_sounddevice()
        self._loop = loop
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._live = False
        try:
            sd.check_input_settings(device=device, samplerate=RATE, channels=1, dtype="int16")
            self.rate = RATE
        except (sd.PortAudioError, ValueError):  # e.g. JACK at 48 kHz accepts only its own rate
            self.rate = int(sd.query_devices(device, kind="input")["default_samplerate"])
        self._resample = _Resampler(self.rate)
        self._pace = _Pace(self.rate)
        self._stream = sd.RawInputStream(
            samplerate=self.rate,
            blocksize=self.rate * block_ms // 1000,
            channels=1,
            dtype="int16",
            device=device,
            callback=self._callback,
        )
        try:
            self._stream.start()
        except BaseException:
            self._stream.close()
            raise

    def _callback(self, indata: Any, frames: int, t: Any, status: Any) -> None:  # audio thread
        self._pace.tick(frames)
        if self._live:
            with contextlib.suppress(RuntimeError):  # the loop is closed; bytes() copies: PortAudio reuses the buffer
                self._loop.call_soon_threadsafe(self._queue.put_nowait, bytes(indata))

    async def chunks(self) -> AsyncIterator[bytes]:
        """24 kHz pcm16 mono chunks as captured, until aclose()."""
        self._live = True
        while (pcm := await self._queue.get()) is not None:
            yield self._resample(pcm)

    async def aclose(self) -> None:
        self._live = False
        await asyncio.to_thread(self._stream.close)
        self._queue.put_nowait(None)


def open_microphone(
    loop: asyncio.AbstractEventLoop, *, sounddevice_loader: Callable[[], Any] = _load_sounddevice
) -> tuple[Microphone | None, str | None]:
    """The default input device, or None and one line saying why not. Blocks up to ~0.2 s."""
    sd, why = _sounddevice(sounddevice_loader)
    if sd is None:
        return None, why
    try:
        name = sd.query_devices(kind="input")["name"]
    except (sd.PortAudioError, ValueError):
        return None, "no audio input device (PortAudio lists none)"
    try:
        mic = Microphone(loop, sounddevice=sd)
    except (sd.PortAudioError, ValueError) as exc:
        return None, f"cannot open audio input {name!r}: {exc}"
    ratio = mic._pace.ratio()
    if ratio > UNPACED:
        mic._stream.abort()
        mic._stream.close()
        return None, f"audio input {name!r} is not clocked in real time ({_fast(ratio)})"
    return mic, None
