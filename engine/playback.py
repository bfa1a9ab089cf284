"""Audio accounting: what the core asked the driver to play, what was heard, and when a session
that reached its final state may hang up.

Rules of this module:
1. Audio is counted, never kept: pcm16, 24 kHz, mono is 48 bytes per ms (realtime.md §5).
2. A response plays from its first audio until the driver reports `playback.done` (after the
   core's EndAudio) or `playback.stopped`; a response silenced by a barge-in never plays again.
3. The hang-up wait: a final state hangs up once queued audio has been heard, waiting at most its
   length plus HANGUP_MARGIN, extended by audio that still arrives.
4. Plain data and questions; no effects other than the Play/EndAudio values it hands back.
"""

from __future__ import annotations

from typing import Any

from .effects import EndAudio, Play

__all__ = ["Playback", "BYTES_PER_S", "BYTES_PER_MS", "HANGUP_MARGIN"]

BYTES_PER_S = 48_000
BYTES_PER_MS = 48
HANGUP_MARGIN = 5.0  # in a final state, wait for queued audio at most its length plus this


class Playback:
    """The audio of one session, by response and by conversation item."""

    def __init__(self) -> None:
        self._item_bytes: dict[str, int] = {}  # received per item: a truncation is clamped to it
        self._response_bytes: dict[str, int] = {}  # received per response: bounds the final wait
        self._heard_ms: dict[str, int] = {}  # item -> ms the candidate heard of it before a barge-in
        self._ended: set[str] = set()  # responses whose EndAudio was handed out
        self._playing: set[str] = set()  # audio queued, not yet reported heard
        self._silenced: set[str] = set()  # stopped by a barge-in
        self.hangup: str | None = None  # a final state was reached: why the session will end...
        self.hangup_at = float("inf")  # ...and when to stop waiting for queued audio

    # Public questions.

    @property
    def speaking(self) -> bool:
        """Audio is queued or playing that the candidate has not finished hearing."""
        return bool(self._playing)

    @property
    def unheard(self) -> int:
        """Responses whose audio has not been reported heard."""
        return len(self._playing)

    def heard_ms(self, item: str | None) -> int | None:
        return self._heard_ms.get(item) if item else None

    def unended(self) -> list[str]:
        """Responses whose audio is playing but whose EndAudio was not handed out yet."""
        return sorted(self._playing - self._ended)

    def may_hang_up(self, now: float) -> bool:
        return not self._playing or now >= self.hangup_at

    # Public inputs.

    def audio(self, response_id: str, item: str | None, audio: str) -> Play | None:
        """An audio delta: the Play to hand out, or None if its response must stay silent."""
        if response_id in self._silenced or response_id in self._ended:
            return None
        self._playing.add(response_id)
        # Base64 is 4 characters per 3 bytes, less the padding: the length without decoding.
        size = len(audio) * 3 // 4 - audio[-2:].count("=") if audio else 0
        self._response_bytes[response_id] = self._response_bytes.get(response_id, 0) + size
        if item:
            self._item_bytes[item] = self._item_bytes.get(item, 0) + size
        if self.hangup is not None:  # audio arriving after the end is waited for too
            self.hangup_at += size / BYTES_PER_S
        return Play(response_id, item, audio)

    def end(self, response_id: str) -> EndAudio | None:
        """No more audio will come for `response_id`: the EndAudio to hand out (once), or None."""
        if response_id in self._ended or response_id in self._silenced:
            return None
        self._ended.add(response_id)
        self._playing.add(response_id)  # until the driver reports it heard (at once if it had no audio)
        return EndAudio(response_id)

    def played(self, response_id: str | None) -> None:
        """`playback.done`: the candidate has heard all of it."""
        self._playing.discard(response_id or "")

    def stopped(self, response_ids: list[str], item: str | None, played_ms: int) -> int | None:
        """`playback.stopped` (a barge-in). Returns `audio_end_ms` to truncate `item` at, if any."""
        for rid in response_ids:
            self._silenced.add(rid)
            self._playing.discard(rid)
        if not item or played_ms <= 0:
            return None
        # Never claim more than was received: the server rejects audio_end_ms past the end.
        heard = min(played_ms, self._item_bytes.get(item, 0) // BYTES_PER_MS)
        self._heard_ms[item] = heard
        return heard

    def hang_up(self, reason: str, now: float) -> None:
        """A final state was reached: wait for the queued audio by its length plus the margin."""
        queued = sum(self._response_bytes.get(rid, 0) for rid in self._playing) / BYTES_PER_S
        self.hangup = reason
        self.hangup_at = now + queued + HANGUP_MARGIN

    # Snapshots.

    def snapshot(self) -> tuple[Any, ...]:
        return (tuple(sorted(self._item_bytes.items())), tuple(sorted(self._response_bytes.items())),
                tuple(sorted(self._heard_ms.items())), tuple(sorted(self._ended)), tuple(sorted(self._playing)),
                tuple(sorted(self._silenced)), self.hangup, self.hangup_at)

    @classmethod
    def restore(cls, snap: tuple[Any, ...]) -> Playback:
        p = cls()
        items, responses, heard, ended, playing, silenced, p.hangup, p.hangup_at = snap
        p._item_bytes, p._response_bytes, p._heard_ms = dict(items), dict(responses), dict(heard)
        p._ended, p._playing, p._silenced = set(ended), set(playing), set(silenced)
        return p
