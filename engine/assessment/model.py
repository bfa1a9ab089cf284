"""Optional model-based assessor: one Chat Completions request per part, all three at once,
with structured output (the JSON Schema of `Judgement`). Any failure of a part's request -
HTTP error, timeout, malformed JSON, schema mismatch, refusal - falls back to that part's
offline result and records why. Stdlib HTTP only (urllib in a worker thread).

The API key goes into one request header and nowhere else: error texts are redacted, the
key is kept out of repr(), and redirects are refused so it is never re-sent to another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from pydantic import ValidationError

from .bands import METRIC_INFO
from .combine import assemble, run_parts
from .models import BANDS, Assessment, Judgement, Part, Turn
from .offline import OFFLINE_PARTS, PartFn

__all__ = ["ModelAssessor", "ModelError", "DEFAULT_BASE_URL", "DEFAULT_MODEL", "DEFAULT_TIMEOUT_S"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT_S = 30.0
MAX_EVIDENCE = 6

JUDGEMENT_SCHEMA = Judgement.model_json_schema()

DIMENSIONS = {
    "fluency": "fluency, and phonology as far as a transcript shows it: speed, pausing, hesitation "
               "and fillers, self-repetition and repair, length of fluent stretches",
    "vocabulary": "vocabulary range and control: diversity, precision, less frequent and idiomatic words",
    "grammar": "grammatical range and accuracy: sentence complexity, subordination, errors",
}
SYSTEM = (
    "You are an experienced examiner of spoken English. Rate ONLY the candidate's {dimension}, "
    "on the CEFR scale (A1, A2, B1, B2, C1, C2), from the interview transcript. Transcripts mark "
    "pauses with '...' and commas. Automatic measures are given for reference; they are heuristic. "
    "evidence: up to 5 short observations, quoting the candidate's words. rationale: one sentence."
)


class ModelError(Exception):
    """A model request failed; the message is safe to record (no key)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx becomes an HTTPError instead of re-sending the Authorization header


class ModelAssessor:
    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        offline_parts: Mapping[str, PartFn] | None = None,
    ) -> None:
        self._key = api_key or None
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.offline_parts = dict(offline_parts or OFFLINE_PARTS)
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"ModelAssessor(url={self.url!r}, model={self.model!r}, timeout_s={self.timeout_s})"

    async def assess(self, turns: list[Turn]) -> Assessment:
        turns = list(turns)
        results, errors = await run_parts(
            {name: partial(self._part, name, turns) for name in self.offline_parts}
        )
        return assemble(turns, results, errors, assessor="model")

    async def _part(self, name: str, turns: Sequence[Turn]) -> Part:
        # The offline part comes first: the model sees its measures, and it is the fallback.
        offline: Part | None = None
        offline_error = ""
        try:
            offline = await asyncio.to_thread(self.offline_parts[name], turns)
        except Exception as e:  # noqa: BLE001 - the model may still judge this part
            offline_error = f"{type(e).__name__}: {e}"
        try:
            j = await self._judge(name, turns, offline)
        except Exception as e:  # noqa: BLE001 - any failure falls back to the offline part
            reason = self._redact(_describe(e, self.timeout_s))
            if offline is None:
                raise ModelError(f"model: {reason}; offline: {offline_error}") from None
            return offline.model_copy(update={"fallback": f"model failed ({reason}); offline result used"})
        evidence = [j.rationale, *j.evidence[: MAX_EVIDENCE - 1]]
        return Part(
            band=j.band,
            score=float(BANDS.index(j.band) + 1),
            metrics=offline.metrics if offline else {},
            evidence=[e[:240] for e in evidence if e.strip()] + (offline.evidence if offline else []),
            proxies=offline.proxies if offline else [],
            source="model",
        )

    async def _judge(self, name: str, turns: Sequence[Turn], offline: Part | None) -> Judgement:
        if not self._key:
            raise ModelError("OPENAI_API_KEY is not set")
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM.format(dimension=DIMENSIONS.get(name, name))},
                {"role": "user", "content": _prompt(turns, offline)},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": f"{name}_judgement", "strict": True, "schema": JUDGEMENT_SCHEMA},
            },
        }
        # The socket timeout ends the thread; the timeout also bounds a server that trickles bytes.
        async with asyncio.timeout(self.timeout_s * 2):
            raw = await asyncio.to_thread(self._post, body)
        try:
            message = json.loads(raw)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"malformed response ({type(e).__name__})") from None
        if message.get("refusal"):
            raise ModelError(f"model refused: {str(message['refusal'])[:200]}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ModelError("malformed response (no content)")
        return Judgement.model_validate_json(content)

    def _post(self, body: dict[str, Any]) -> bytes:
        req = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
            method="POST",
        )
        with self._opener.open(req, timeout=self.timeout_s) as resp:
            data: bytes = resp.read()
            return data

    def _redact(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "***")
        return re.sub(r"sk-[A-Za-z0-9_\-*]{4,}", "sk-***", text)  # also partial keys echoed by servers


def _prompt(turns: Sequence[Turn], offline: Part | None) -> str:
    lines = ["Transcript:"]
    lines += [f"{'Candidate' if t.role == 'candidate' else 'Interviewer'}: {t.text}" for t in turns]
    if offline:
        lines.append("\nAutomatic measures (heuristic):")
        for k, v in offline.metrics.items():
            if v is not None:
                lines.append(f"- {METRIC_INFO[k].label if k in METRIC_INFO else k}: {v:g}")
    return "\n".join(lines)


def _describe(e: BaseException, timeout_s: float) -> str:
    """A short, key-free reason for a failed request."""
    if isinstance(e, urllib.error.HTTPError):
        detail = ""
        with contextlib.suppress(Exception):  # the body is only a nicety
            detail = str(json.loads(e.read() or b"{}").get("error", {}).get("message", ""))[:200]
        return f"HTTP {e.code}" + (f": {detail}" if detail else "")
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)) or (
        isinstance(e, urllib.error.URLError) and isinstance(e.reason, TimeoutError)
    ):
        return f"timeout after {timeout_s:g} s"
    if isinstance(e, urllib.error.URLError):
        return f"connection failed: {e.reason}"
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "response"
        kind = "malformed JSON" if first["type"] == "json_invalid" else "schema mismatch"
        return f"{kind} at {where}: {first['msg']}"
    if isinstance(e, ModelError):
        return str(e)
    return f"{type(e).__name__}: {e}"
