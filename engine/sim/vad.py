"""Turn detection as the simulator models it: when speech starts and stops, and when a turn ends.

Two inputs, one set of knobs (the session's `audio.input.turn_detection`):
- a scripted candidate's answer (words, a speaking rate, pauses) is planned ahead by `plan`;
- real audio appended by the client (a browser, a microphone) goes through `EnergyDetector`.

server_vad ends a turn `silence_duration_ms` after the last word; a pause inside an answer at least
that long ends the turn too (a false turn end). semantic_vad ends a turn a short, seeded delay after
the last word that depends on `eagerness`, and takes a pause inside an answer for the end of the
turn with a probability that also depends on it, and always when the pause is longer than its
maximum wait (8 s, 4 s, 2 s for low, medium, high: the API's documented maxima; auto is medium).
`audio_start_ms` includes `prefix_padding_ms`, `audio_end_ms` the silence that ended the turn
(realtime.md §2a, §5).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["TurnDetection", "Segment", "plan", "EnergyDetector", "SEMANTIC", "validate", "effective"]

# eagerness -> (turn-end delay after the last word [low, high] s, chance a pause ends the turn, max wait s)
SEMANTIC: dict[str, tuple[tuple[float, float], float, float]] = {
    "low": ((0.8, 1.6), 0.1, 8.0),
    "medium": ((0.4, 0.9), 0.35, 4.0),
    "high": ((0.15, 0.4), 0.7, 2.0),
}
MIN_FALSE_PAUSE_S = 0.3  # semantic_vad never takes a shorter pause for the end of a turn
FRAME_MS = 10  # the energy detector's frame
MIN_SPEECH_MS = 30  # voiced audio needed before speech counts as started

_SERVER = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
           "idle_timeout_ms": None, "create_response": True, "interrupt_response": True}  # fmt: skip
_SEMANTIC = {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """The effective turn-detection settings of a session."""

    kind: str = "server_vad"  # server_vad | semantic_vad
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    idle_timeout_ms: int | None = None
    eagerness: str = "auto"
    create_response: bool = True
    interrupt_response: bool = True

    @classmethod
    def of(cls, config: Any) -> TurnDetection | None:
        """From a session's `turn_detection` object (already `validate`d); None when it is null."""
        if not isinstance(config, dict):
            return None
        full = effective(config)
        return cls(
            kind=full["type"],
            threshold=float(full.get("threshold", 0.5)),
            prefix_padding_ms=int(full.get("prefix_padding_ms", 300)),
            silence_duration_ms=int(full.get("silence_duration_ms", 500)),
            idle_timeout_ms=full.get("idle_timeout_ms"),
            eagerness=str(full.get("eagerness", "auto")),
            create_response=bool(full.get("create_response", True)),
            interrupt_response=bool(full.get("interrupt_response", True)),
        )

    @property
    def semantic(self) -> tuple[tuple[float, float], float, float]:
        return SEMANTIC["medium" if self.eagerness == "auto" else self.eagerness]

    def end_delay(self, rng: random.Random) -> float:
        """Seconds from the last word to the detected end of the turn."""
        if self.kind == "server_vad":
            return self.silence_duration_ms / 1000
        (low, high), _, _ = self.semantic
        return rng.uniform(low, high)

    def ends_turn(self, pause_s: float, rng: random.Random) -> float | None:
        """Whether a pause of `pause_s` inside an answer ends the turn: the delay after which it is
        detected, or None."""
        if self.kind == "server_vad":
            delay = self.silence_duration_ms / 1000
            return delay if pause_s >= delay else None
        (low, high), chance, max_wait = self.semantic
        delay = rng.uniform(low, high)
        draw = rng.random()  # always drawn, so one pause's length never shifts the next one's choices
        if pause_s >= max_wait:
            return min(delay, max_wait)
        if pause_s >= max(delay, MIN_FALSE_PAUSE_S) and draw < chance:
            return delay
        return None

    @property
    def real_audio_silence_ms(self) -> int:
        """Silence that ends a turn of real audio (semantic_vad: the middle of its delay range)."""
        if self.kind == "server_vad":
            return self.silence_duration_ms
        (low, high), _, _ = self.semantic
        return round((low + high) / 2 * 1000)


def effective(config: dict[str, Any]) -> dict[str, Any]:
    """The full object the server reports for a turn_detection update (defaults filled in)."""
    base = _SEMANTIC if config.get("type") == "semantic_vad" else _SERVER
    return {**base, **config}


def validate(config: Any) -> tuple[str, str] | None:
    """A turn_detection object as the API accepts it: None, or (param, message) for the error."""
    if config is None:
        return None
    where = "session.audio.input.turn_detection"
    if not isinstance(config, dict):
        return where, f"Invalid type for '{where}': expected an object or null."
    kind = config.get("type")
    if kind not in ("server_vad", "semantic_vad"):
        return f"{where}.type", f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'."
    allowed = set(_SERVER if kind == "server_vad" else _SEMANTIC)
    for key, value in config.items():
        param = f"{where}.{key}"
        if key not in allowed:
            return param, f"Unknown parameter: '{param}'."
        if key in ("create_response", "interrupt_response") and not isinstance(value, bool):
            return param, f"Invalid type for '{param}': expected a boolean."
        if key == "eagerness" and value not in ("low", "medium", "high", "auto"):
            return param, f"Invalid value: '{value}'. Supported values are: 'low', 'medium', 'high', and 'auto'."
        if key == "threshold" and not (_number(value) and 0 <= value <= 1):
            return param, f"Invalid value: '{value}'. Expected a number between 0 and 1."
        if key in ("prefix_padding_ms", "silence_duration_ms") and not (_integer(value) and 0 <= value <= 86_400_000):
            return param, f"Invalid value: '{value}'. Expected a non-negative integer."
        if key == "idle_timeout_ms" and value is not None and not (_integer(value) and 0 < value <= 86_400_000):
            return param, f"Invalid value: '{value}'. Expected a positive integer, or null."
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------
# A scripted answer


@dataclass(frozen=True, slots=True)
class Segment:
    """One turn as the server detects it: speech from `start` to `end` (the last word), its end
    detected at `detected` (speech_stopped, then the commit). Times in simulated seconds."""

    start: float
    end: float
    detected: float
    text: str


def plan(
    text: str, start: float, wpm: int, pauses: dict[int, float], vad: TurnDetection | None, rng: random.Random
) -> list[Segment]:
    """The turns one answer becomes: one, or more where a pause is taken for the end of the turn.

    Args:
        pauses: seconds of silence after word N (1-based), for the answer's hesitations.
        vad: None (no turn detection): one segment, its end detected at the last word.
    """
    words = text.split() or [text]
    per_word = 60.0 / wpm
    segments: list[Segment] = []
    first, t = 0, start
    seg_start = start
    for i, _ in enumerate(words, start=1):
        t += per_word
        pause = pauses.get(i)
        if pause is None or i == len(words):
            continue
        delay = vad.ends_turn(pause, rng) if vad is not None else None
        if delay is not None:
            segments.append(Segment(seg_start, t, t + delay, " ".join(words[first:i])))
            first, seg_start = i, t + pause
        t += pause
    delay = vad.end_delay(rng) if vad is not None else 0.0
    segments.append(Segment(seg_start, t, t + delay, " ".join(words[first:])))
    return segments


# ---------------------------------------------------------------------------------------------------
# Real audio


class EnergyDetector:
    """Speech detection on appended pcm16 (24 kHz mono) by the energy of 10 ms frames.

    A frame is voiced when its RMS level is at least ``-50 + 40 * threshold`` dBFS (-30 dBFS at the
    default 0.5; background noise sits near -60, speech near -20). Speech starts after 30 ms of
    voiced frames and stops after `real_audio_silence_ms` without one. Positions are milliseconds
    of audio appended in the session, as the API's `audio_start_ms`/`audio_end_ms` are.
    """

    def __init__(self, vad: TurnDetection):
        self.vad = vad
        self.level = 32768 * 10 ** ((-50 + 40 * vad.threshold) / 20)
        self.position_ms = 0  # audio appended so far
        self.speaking = False
        self.speech_start_ms = 0
        self._voiced_run = 0
        self._last_voiced_end = 0
        self._rest = b""

    def feed(self, pcm: bytes) -> list[tuple[str, int]]:
        """Events found in the new audio: ("started", audio_start_ms) and ("stopped", audio_end_ms)."""
        data = self._rest + pcm
        frame = FRAME_MS * 48
        usable = len(data) - len(data) % frame
        self._rest = data[usable:]
        if not usable:
            return []
        import numpy as np  # here, not at the top: only real audio needs it (the simulator starts faster)

        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float64).reshape(-1, frame // 2)
        voiced = np.sqrt(np.mean(samples * samples, axis=1)) >= self.level
        events: list[tuple[str, int]] = []
        for is_voiced in voiced:
            self.position_ms += FRAME_MS
            if not self.speaking:
                self._voiced_run = self._voiced_run + FRAME_MS if is_voiced else 0
                if self._voiced_run >= MIN_SPEECH_MS:
                    self.speaking = True
                    self.speech_start_ms = self.position_ms - self._voiced_run
                    self._last_voiced_end = self.position_ms
                    events.append(("started", max(0, self.speech_start_ms - self.vad.prefix_padding_ms)))
            elif is_voiced:
                self._last_voiced_end = self.position_ms
            elif self.position_ms - self._last_voiced_end >= self.vad.real_audio_silence_ms:
                self.speaking, self._voiced_run = False, 0
                events.append(("stopped", self.position_ms))
        return events

    @property
    def speech_ms(self) -> int:
        """Length of the speech that was last detected (start to last voiced frame)."""
        return self._last_voiced_end - self.speech_start_ms
