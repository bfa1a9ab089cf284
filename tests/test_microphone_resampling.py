"""Microphone input at the device's rate becomes 24 kHz through a real low-pass resampler (soxr).

A 15 kHz tone captured at 44.1 kHz lies above the 12 kHz Nyquist limit of 24 kHz audio; a resampler
without a proper anti-aliasing filter folds it back into the band as a 9 kHz tone (linear
interpolation: -3 dB). Levels are measured by a least-squares fit of a sine at the known
frequency, so the result does not depend on FFT bin alignment.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import RATE, _Resampler


def _tone(frequency: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()


def _through(rate: int, pcm: bytes, block_ms: int = 20) -> np.ndarray:
    """Resampled as the microphone does it: one PortAudio block at a time."""
    resample = _Resampler(rate)
    step = rate * block_ms // 1000 * 2
    out = b"".join(resample(pcm[i : i + step]) for i in range(0, len(pcm), step))
    return np.frombuffer(out, "<i2").astype(float)[RATE // 10 :]  # past the filter's start-up


def _level_db(y: np.ndarray, frequency: float, amplitude: float = 0.5) -> float:
    """Level of the `frequency` component of `y` (24 kHz), in dB relative to a tone of `amplitude`."""
    t = np.arange(len(y)) / RATE
    basis = np.stack([np.sin(2 * np.pi * frequency * t), np.cos(2 * np.pi * frequency * t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(20 * np.log10(max(np.hypot(a, b), 1e-9) / (amplitude * 32767)))


def test_a_15khz_tone_from_44k1_does_not_alias_into_the_band() -> None:
    y = _through(44_100, _tone(15_000, 44_100))
    alias = _level_db(y, 24_000 - 15_000)  # where it would fold to
    assert alias < -50, f"15 kHz comes through as 9 kHz at {alias:.1f} dB"
    assert np.sqrt(np.mean(y**2)) < 0.5 * 32767 * 10 ** (-50 / 20)  # nothing else of it either


@pytest.mark.parametrize("rate", [44_100, 48_000, 16_000])
@pytest.mark.parametrize("frequency", [300, 1_000, 6_000])
def test_speech_band_tones_keep_their_level(rate: int, frequency: int) -> None:
    y = _through(rate, _tone(frequency, rate))
    assert abs(_level_db(y, frequency)) < 0.1


def test_the_device_rate_passes_through_untouched() -> None:
    pcm = _tone(1_000, RATE, 0.1)
    assert _Resampler(RATE)(pcm) == pcm
