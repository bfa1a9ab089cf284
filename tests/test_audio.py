"""Players: exact timing on the virtual player under a fake clock, and the real PortAudio path
when a paced device exists (.ci/audio-setup.sh sets up a PulseAudio null sink)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import wave

import numpy as np
import pytest

from engine.audio import (
    RATE,
    AudioUnavailable,
    DevicePlayer,
    VirtualPlayer,
    _Resampler,
    open_microphone,
    open_player,
    pcm_ms,
)
from engine.events import Event


class FakeClock:
    """loop.time / loop.call_at stand-ins: timers fire in (time, order) as advance() passes them."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when, fn) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), fn))

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self._timers and self._timers[0][0] <= end:
            when, _, fn = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            fn()
        self.now = end


def pcm(ms: float) -> bytes:
    return bytes(round(ms * 48))


def player(**kw):
    clock, log = FakeClock(), []

    def emit(event):  # (when, event); times rounded to the µs to hide float noise
        log.append((round(clock.now, 6), event))

    p = VirtualPlayer(emit, clock=clock.time, call_at=clock.call_at, **kw)
    return p, clock, log


def kinds(log):
    return [(t, e.type, e.response_id) for t, e in log]


def test_pcm_ms():
    assert pcm_ms(48_000) == 1000


def test_started_at_first_sample_done_at_true_end():
    p, clock, log = player(latency=0.05)
    clock.advance(1.0)
    p.feed("r1", "i1", pcm(500))
    p.feed("r1", "i1", pcm(500))
    p.end("r1")
    clock.advance(5)
    assert kinds(log) == [(1.05, "playback.started", "r1"), (2.05, "playback.done", "r1")]
    assert log[1][1] == Event("playback.done", response_id="r1", item_id="i1")
    assert log[1][1].data == {"played_ms": 1000}


def test_gaps_in_feeding_are_gaps_in_sound():
    # 40 ms chunks every 50 ms, like Realtime deltas arriving at about real time.
    p, clock, log = player()
    for i in range(25):
        clock.advance(0.05 if i else 0)
        p.feed("r1", "i1", pcm(40))
    p.end("r1")
    clock.advance(1)
    assert kinds(log) == [(0.0, "playback.started", "r1"), (1.24, "playback.done", "r1")]
    assert p.played_ms("i1") == 1000


def test_done_waits_for_end_even_when_drained():
    p, clock, log = player()
    p.feed("r1", "i1", pcm(100))
    clock.advance(1)
    assert kinds(log) == [(0.0, "playback.started", "r1")]
    p.end("r1")  # late end: done as soon as the loop runs
    clock.advance(0)
    assert kinds(log)[-1] == (1.0, "playback.done", "r1")


def test_speed_scales_clock_time():
    p, clock, log = player(speed=10)
    p.feed("r1", "i1", pcm(1000))
    p.end("r1")
    clock.advance(0.05)
    assert p.played_ms("i1") == 500
    clock.advance(1)
    assert kinds(log)[-1] == (0.1, "playback.done", "r1")
    assert log[-1][1].data["played_ms"] == 1000


def test_responses_play_in_order_never_overlapping():
    p, clock, log = player()
    p.feed("r1", "a", pcm(300))
    p.feed("r2", "b", pcm(200))  # r2 waits for r1, even though r1 has not ended yet
    clock.advance(0.5)
    p.feed("r1", "a", pcm(100))  # r1 resumes after a gap; r2 still waits
    p.end("r2")
    clock.advance(0.1)
    p.end("r1")
    clock.advance(2)
    assert kinds(log) == [
        (0.0, "playback.started", "r1"),
        (0.6, "playback.done", "r1"),
        (0.6, "playback.started", "r2"),
        (0.8, "playback.done", "r2"),
    ]


def test_back_to_back_second_starts_when_first_ends():
    p, clock, log = player(latency=0.05)
    p.feed("r1", "a", pcm(1000))
    p.end("r1")
    p.feed("r2", "b", pcm(500))
    p.end("r2")
    clock.advance(3)
    assert kinds(log) == [
        (0.05, "playback.started", "r1"),
        (1.05, "playback.done", "r1"),
        (1.05, "playback.started", "r2"),
        (1.55, "playback.done", "r2"),
    ]


def test_end_without_audio_is_done_promptly_and_in_order():
    p, clock, log = player()
    p.end("tool_only")
    assert log == []  # never from inside end(): the runner may call the core from emit
    clock.advance(0)
    assert kinds(log) == [(0.0, "playback.done", "tool_only")]
    assert log[0][1].data == {"played_ms": 0}
    # Behind a speaking response it is done right after that one, not before.
    p.feed("r1", "a", pcm(400))
    p.end("r1")
    p.end("tool_only_2")
    clock.advance(1)
    assert kinds(log)[1:] == [
        (0.0, "playback.started", "r1"),
        (0.4, "playback.done", "r1"),
        (0.4, "playback.done", "tool_only_2"),
    ]


def test_stop_mid_response():
    p, clock, log = player()
    p.feed("r1", "a", pcm(1000))
    p.end("r1")
    p.feed("r2", "b", pcm(500))
    clock.advance(0.3)
    p.stop()
    clock.advance(0)
    t, stopped = log[-1]
    assert (t, stopped.type, stopped.response_id, stopped.item_id) == (0.3, "playback.stopped", "r1", "a")
    assert stopped.data == {"played_ms": 300, "dropped": ["r1", "r2"]}
    assert p.played_ms("a") == 300
    p.feed("r1", "a", pcm(100))  # late deltas of dropped responses are ignored
    p.end("r2")
    clock.advance(5)
    assert [e.type for _, e in log] == ["playback.started", "playback.stopped"]
    assert p.played_ms("a") == 300
    p.feed("r3", "c", pcm(100))  # a new response plays at once
    p.end("r3")
    clock.advance(1)
    assert kinds(log)[-2:] == [(5.3, "playback.started", "r3"), (5.4, "playback.done", "r3")]


def test_stop_in_a_gap_and_when_idle():
    p, clock, log = player()
    p.feed("r1", "a", pcm(100))
    clock.advance(0.5)  # r1 is not ended: it is still the playing response
    p.stop()
    p.stop()  # nothing playing: still exactly one answer per stop
    clock.advance(0)
    assert [(e.type, e.response_id, e.data) for _, e in log[1:]] == [
        ("playback.stopped", "r1", {"played_ms": 100, "dropped": ["r1"]}),
        ("playback.stopped", None, {"played_ms": 0, "dropped": []}),
    ]


def test_wav_holds_what_was_heard(tmp_path):
    path = tmp_path / "out.wav"
    p, clock, log = player(wav_path=path)
    p.feed("r1", "a", pcm(500))
    p.end("r1")
    clock.advance(1.0)  # 0.5 s of silence after it
    p.feed("r2", "b", pcm(1000))
    clock.advance(0.25)
    p.stop()  # only 0.25 s of r2 was heard
    asyncio.run(p.aclose())
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        assert w.getnframes() == int(1.25 * RATE)


def test_wav_both_sides(tmp_path):
    # record_input() adds the captured side as the right channel on the same timeline.
    path = tmp_path / "both.wav"
    p, clock, log = player(wav_path=path, speed=2)
    p.feed("r1", "a", b"\x01\x00" * 2400)  # 100 ms, heard 0-100 ms
    clock.advance(0.5)  # = 1 s of audio time at speed 2
    p.record_input(b"\x02\x00" * 4800)  # 200 ms captured up to 1 s
    asyncio.run(p.aclose())
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getnframes() == RATE
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert (frames[:2400, 0] == 1).all() and (frames[2400:, 0] == 0).all()
    assert (frames[:19200, 1] == 0).all() and (frames[19200:, 1] == 2).all()


def test_virtual_player_on_a_real_loop():
    # The production wiring (loop.time / loop.call_at, early timer + re-arm) on 0.1 s of audio.
    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        times = {}

        def emit(e):
            times[e.type] = loop.time()
            if e.type == "playback.done":
                done.set()

        p, why = open_player("none", emit, loop=loop)
        assert isinstance(p, VirtualPlayer) and why is None
        start = loop.time()
        p.feed("r1", "a", pcm(100))
        p.end("r1")
        await asyncio.wait_for(done.wait(), 2)
        await p.aclose()
        return times["playback.done"] - start

    late = asyncio.run(main()) - 0.1
    assert 0 <= late < 0.01


# -- choosing a player -----------------------------------------------------------------------
def _no_portaudio():
    raise OSError("PortAudio library not found")


def test_auto_falls_back_without_portaudio(tmp_path):
    loop = asyncio.new_event_loop()
    try:
        p, why = open_player("auto", lambda e: None, loop=loop, sounddevice_loader=_no_portaudio)
        assert isinstance(p, VirtualPlayer)
        assert "PortAudio not found" in why and "libportaudio2" in why and "\n" not in why
        p, why = open_player("auto", lambda e: None, loop=loop, speed=4)
        assert isinstance(p, VirtualPlayer) and "speed 4" in why
        with pytest.raises(AudioUnavailable, match="PortAudio not found"):
            open_player("device", lambda e: None, loop=loop, sounddevice_loader=_no_portaudio)
        with pytest.raises(ValueError):
            open_player("wav", lambda e: None, loop=loop)
        mic, why = open_microphone(loop, sounddevice_loader=_no_portaudio)
        assert mic is None and "PortAudio not found" in why
    finally:
        loop.close()


def test_resampler_keeps_time_across_blocks():
    # The filter holds back a few ms (live-stream latency, bounded): output never runs ahead of input.
    x = (np.arange(4800) % 100).astype("<i2").tobytes()  # 100 ms at 48 kHz
    r48 = _Resampler(48_000)
    n48 = sum(len(r48(x[i : i + 1918])) for i in range(0, len(x), 1918)) // 2
    assert 2400 - 0.035 * RATE <= n48 <= 2400
    r44 = _Resampler(44_100)
    out = b"".join(r44(bytes(882 * 2)) for _ in range(50))  # 1 s at 44.1 kHz, 20 ms blocks
    assert RATE - 0.035 * RATE <= len(out) // 2 <= RATE
    more = b"".join(r44(bytes(882 * 2)) for _ in range(50))  # the held part does not grow
    assert abs(len(more) // 2 - RATE) <= 0.035 * RATE


# -- the real PortAudio path -----------------------------------------------------------------
def _paced_device() -> str | None:
    """None when a paced output device is usable, else why not (the skip reason)."""
    try:
        import sounddevice as sd
    except OSError as exc:
        return f"PortAudio not installed ({exc}); run .ci/audio-setup.sh"
    try:
        sd.query_devices(kind="output")
    except sd.PortAudioError:
        return "no audio output device; run .ci/audio-setup.sh (PulseAudio null sink)"
    return None


def _tone(seconds: float) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


@pytest.fixture
def device():
    why = _paced_device()
    if why:
        pytest.skip(why)

    async def run(body):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        p, why = open_player("auto", lambda e: events.put_nowait((loop.time(), e)), loop=loop)
        if not isinstance(p, DevicePlayer):
            pytest.skip(why)

        async def until(kind):
            while True:
                t, e = await asyncio.wait_for(events.get(), 5)
                if e.type == kind:
                    return t, e

        try:
            await body(p, loop, until)
        finally:
            await p.aclose()

    return lambda body: asyncio.run(run(body))


def test_device_done_at_the_true_end(device):
    async def body(p, loop, until):
        audio = _tone(1.0)
        fed = loop.time()
        for i in range(0, len(audio), 1920):  # 40 ms deltas, all at once
            p.feed("r1", "a", audio[i : i + 1920])
        p.end("r1")
        started, _ = await until("playback.started")
        done, event = await until("playback.done")
        # Heard no earlier than fed + duration, and no later than one block + the output latency
        # (+ 100 ms for a busy machine that runs the audio thread or the loop late: the test checks
        # that done comes at the end of the sound, not how fast a loaded CI machine is).
        late = done - fed - 1.0
        assert 0 <= late <= 0.020 + p.max_delay + 0.100, (late, p.max_delay)
        assert abs(done - started - 1.0) < 0.010
        assert event.data == {"played_ms": 1000}

    device(body)


def test_device_stop(device):
    async def body(p, loop, until):
        audio = _tone(1.0)
        for i in range(0, len(audio), 1920):
            p.feed("r1", "a", audio[i : i + 1920])
        p.end("r1")
        p.feed("r2", "b", audio)
        started, _ = await until("playback.started")
        await asyncio.sleep(0.3)  # a real device: let real time pass
        asked = loop.time()
        p.stop()
        t, stopped = await until("playback.stopped")
        assert t - asked < 0.100  # at the next turn of the loop (with room for a loaded machine)
        assert (stopped.response_id, stopped.item_id) == ("r1", "a")
        assert stopped.data["dropped"] == ["r1", "r2"]
        # Audio handed to PortAudio still plays (<= one block + the DAC delay): it counts as played.
        heard = 1000 * (asked - started)
        assert heard - 5 <= stopped.data["played_ms"] <= heard + 1000 * (0.020 + p.max_delay + 0.100)
        p.feed("r1", "a", audio)  # ignored
        p.feed("r3", "c", _tone(0.1))
        p.end("r3")
        _, done = await until("playback.done")
        assert done.response_id == "r3"  # no done for r1 or r2 came before it
        assert p.played_ms("a") == stopped.data["played_ms"]

    device(body)


def test_device_stop_while_the_tail_plays(device):
    # 40 ms is inside PortAudio in full by the time its first sample is heard: stop() cannot
    # silence it, but its playback.done is still withheld, as the core was told it was dropped.
    async def body(p, loop, until):
        p.feed("r1", "a", _tone(0.04))
        p.end("r1")
        await until("playback.started")
        p.stop()
        _, stopped = await until("playback.stopped")
        assert stopped.response_id == "r1" and stopped.data == {"played_ms": 40, "dropped": ["r1"]}
        p.end("r2")
        _, done = await until("playback.done")
        assert done.response_id == "r2"

    device(body)


def test_microphone_chunks(device):
    async def body(p, loop, until):
        mic, why = open_microphone(loop)
        if mic is None:
            pytest.skip(why)
        try:
            chunks = mic.chunks()
            sizes = [len(await asyncio.wait_for(anext(chunks), 2)) for _ in range(5)]
            assert sizes == [960] * 5  # 20 ms of 24 kHz pcm16
        finally:
            await mic.aclose()

    device(body)
