"""Typed inputs and results of the assessment. `Assessment.model_dump(mode="json")` is what the
`assessment` job returns; the flow renders `{assessment.summary}`, `{assessment.overall.band}`."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CEFR",
    "BANDS",
    "PART_NAMES",
    "Turn",
    "BandScore",
    "Part",
    "Assessment",
    "Judgement",
    "Assessor",
]

CEFR = Literal["A1", "A2", "B1", "B2", "C1", "C2"]
BANDS: tuple[CEFR, ...] = ("A1", "A2", "B1", "B2", "C1", "C2")
PartName = Literal["fluency", "vocabulary", "grammar"]
PART_NAMES: tuple[PartName, ...] = ("fluency", "vocabulary", "grammar")


class Turn(BaseModel):
    """One transcribed turn. start/end: seconds on the session clock when the candidate's speech
    started/stopped (VAD), None when unknown."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["candidate", "interviewer"]
    text: str
    start: float | None = None
    end: float | None = None


class BandScore(BaseModel):
    """A CEFR band and a score on a continuous 1-6 scale (A1 = 1 ... C2 = 6); band = round(score)."""

    band: CEFR
    score: float = Field(ge=1.0, le=6.0)


class Part(BandScore):
    """One dimension of the assessment: fluency, vocabulary or grammar."""

    metrics: dict[str, int | float | None] = {}  # name -> value (None: not measurable in this sample)
    evidence: list[str] = []  # short strings a teacher can check against the transcript
    proxies: list[str] = []  # metric names that stand in for something not measured directly
    source: Literal["offline", "model"] = "offline"
    fallback: str | None = None  # why a model judgement was replaced by the offline one


class Assessment(BaseModel):
    summary: str  # 1-3 plain sentences, spoken in the summary turn
    overall: BandScore
    parts: dict[PartName, Part]  # the parts that succeeded
    failed_parts: list[PartName] = []
    errors: dict[str, str] = {}  # failed part -> reason
    assessor: Literal["offline", "model"] = "offline"
    fallbacks: dict[str, str] = {}  # part -> why the model result was not used
    words: int = 0  # candidate words analysed (fillers included)
    notes: list[str] = []  # caveats for the reader (short sample, no timing, ...)


class Judgement(BaseModel):
    """What the model returns for one part (strict structured output: all fields required)."""

    model_config = ConfigDict(extra="forbid")

    band: CEFR
    evidence: list[str]
    rationale: str


class Assessor(Protocol):
    async def assess(self, turns: list[Turn]) -> Assessment: ...
