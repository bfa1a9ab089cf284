"""Speech for the simulator's voices: pcm16, 24 kHz, mono (the Realtime API's audio format).

`synthesize` calls the `espeak-ng` command line tool when it is on PATH and returns None otherwise,
so callers fall back to a tone of the same length. espeak-ng always writes 22050 Hz; we resample to
24 kHz with `numpy.interp`, which is plenty for a synthetic voice (research/audio.md section 6).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np  # imported where it is used: the simulator needs it only once it speaks

__all__ = ["RATE", "available", "synthesize", "resample"]

RATE = 24_000  # Hz; 48 bytes per millisecond of pcm16 mono

logger = logging.getLogger(__name__)


def available() -> bool:
    """True when `synthesize` can produce speech (espeak-ng is installed)."""
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", wpm: int = 150) -> bytes | None:
    """Speak `text` with espeak-ng; pcm16 24 kHz mono bytes, or None when espeak-ng is missing or fails.

    Args:
        text: what to say; empty text gives None.
        voice: an espeak-ng voice name such as ``en-us`` or ``en-us+f3``.
        wpm: speaking rate in words per minute.
    """
    exe = shutil.which("espeak-ng")
    if exe is None or not text.strip():
        return None
    # `--stdout` writes a WAV header with bogus lengths (it cannot seek a pipe), so write a real file.
    # The text goes in on stdin so that a leading "-" is never read as an option.
    with tempfile.TemporaryDirectory(prefix="engine-tts-") as tmp:
        path = Path(tmp) / "speech.wav"
        try:
            subprocess.run(
                [exe, "-v", voice, "-s", str(int(wpm)), "-w", str(path), "--stdin"],
                input=text.encode(),
                capture_output=True,
                check=True,
                timeout=60,
            )
            with wave.open(str(path), "rb") as wav:
                if wav.getsampwidth() != 2:
                    raise wave.Error(f"expected 16-bit samples, got {8 * wav.getsampwidth()}-bit")
                rate, channels = wav.getframerate(), wav.getnchannels()
                frames = wav.readframes(wav.getnframes())
        except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
            logger.warning("espeak-ng failed for voice %r: %s", voice, exc)
            return None
    import numpy as np

    samples = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return resample(samples, rate)


def resample(samples: np.ndarray, rate: int, target: int = RATE) -> bytes:
    """Linear resampling of mono samples to `target` Hz, as little-endian pcm16 bytes."""
    import numpy as np

    samples = np.asarray(samples, dtype=np.float64)
    if rate == target or samples.size == 0:
        out = samples
    else:
        n_out = int(round(samples.size * target / rate))
        out = np.interp(np.arange(n_out) * (rate / target), np.arange(samples.size), samples)
    return np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes()
