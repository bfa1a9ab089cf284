"""Spoken-English assessment: fluency (phonology proxies), vocabulary and grammar, computed in
parallel after the interview's questions, as the background job `assessment`.

    result = await job({"turns": [...], "options": {"assessor": "auto"}})
    result["summary"], result["overall"]["band"], result["parts"]["grammar"]["evidence"]

The default assessor is offline (no network). With OPENAI_API_KEY set (assessor "auto") or
assessor "model", each part is judged by a model instead, falling back to the offline part
on any failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .combine import AssessmentFailed
from .model import DEFAULT_BASE_URL, DEFAULT_MODEL, DEFAULT_TIMEOUT_S, ModelAssessor
from .models import BANDS, CEFR, Assessment, Assessor, BandScore, Judgement, Part, Turn
from .offline import OfflineAssessor
from .report import render_markdown

__all__ = [
    "job",
    "make_assessor",
    "render_markdown",
    "Assessment",
    "Assessor",
    "AssessmentFailed",
    "BandScore",
    "Part",
    "Turn",
    "Judgement",
    "OfflineAssessor",
    "ModelAssessor",
    "BANDS",
    "CEFR",
]


def make_assessor(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Assessor:
    """options["assessor"]: "auto" (model if OPENAI_API_KEY is set, else offline), "offline" or
    "model" (without a key every part falls back to offline, and says so). Model options:
    base_url (else OPENAI_BASE_URL, else the OpenAI API), model, timeout_s."""
    env = os.environ if env is None else env
    kind = options.get("assessor") or "auto"
    if kind not in ("auto", "offline", "model"):
        raise ValueError(f"unknown assessor {kind!r}: expected 'auto', 'offline' or 'model'")
    key = env.get("OPENAI_API_KEY") or None
    if kind == "offline" or (kind == "auto" and not key):
        return OfflineAssessor()
    return ModelAssessor(
        key,
        base_url=options.get("base_url") or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        model=options.get("model") or DEFAULT_MODEL,
        timeout_s=float(options.get("timeout_s") or DEFAULT_TIMEOUT_S),
    )


def _turns(raw: Any) -> list[Turn]:
    """Lenient: a malformed turn must not fail the whole job (only candidate words matter)."""
    out = []
    for t in raw or ():
        if not isinstance(t, Mapping) or t.get("role") not in ("candidate", "interviewer"):
            continue  # other roles (system, tool) are not assessed
        try:
            out.append(Turn.model_validate(t))
        except ValidationError:  # bad timing or text type: keep the words, drop the timing
            out.append(Turn(role=t["role"], text=str(t.get("text") or "")))
    return out


async def job(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The background job `assessment`. inputs = {"turns": [{"role": "candidate"|"interviewer",
    "text": str, "start": float|None, "end": float|None}, ...], "options": {"assessor":
    "auto"|"offline"|"model", ...}}. Returns Assessment.model_dump(mode="json"). A failing part
    gives a partial result (failed_parts, errors); raises AssessmentFailed only if all fail."""
    turns = _turns(inputs.get("turns"))
    assessor = make_assessor(inputs.get("options") or {})
    result = await assessor.assess(turns)
    return result.model_dump(mode="json")


def warm_up() -> None:
    """Load the pronouncing dictionary and word frequencies (~1 s, once per process).

    The runner calls this before the session clock starts, so the job itself takes milliseconds
    when the flow starts it, and never competes with the event loop for the GIL mid-interview."""
    from wordfreq import zipf_frequency

    from .text import _cmu_counts

    _cmu_counts()
    zipf_frequency("warm", "en")


job.warm_up = warm_up  # type: ignore[attr-defined]  # optional hook the runner looks for
