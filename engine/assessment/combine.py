"""Running the three parts concurrently and combining what came back into one Assessment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .bands import band_of, overall_score
from .models import PART_NAMES, Assessment, BandScore, Part, PartName, Turn
from .text import tokenize

__all__ = ["AssessmentFailed", "run_parts", "assemble", "summary_text"]

SHORT_SAMPLE_WORDS = 100  # below this, say that the result is only a rough indication


class AssessmentFailed(Exception):
    """Every part failed; the message names each part and why."""


async def run_parts(
    parts: Mapping[str, Callable[[], Awaitable[Part]]],
) -> tuple[dict[str, Part], dict[str, str]]:
    """Run the parts concurrently in one TaskGroup. A failing part is caught inside its own task,
    so it cannot cancel its siblings; cancelling the caller still cancels all of them."""
    results: dict[str, Part] = {}
    errors: dict[str, str] = {}

    async def one(name: str, run: Callable[[], Awaitable[Part]]) -> None:
        try:
            results[name] = await run()
        except Exception as e:  # noqa: BLE001 - any failure becomes a partial report
            errors[name] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    async with asyncio.TaskGroup() as tg:
        for name, run in parts.items():
            tg.create_task(one(name, run), name=f"assessment.{name}")
    return results, errors


def assemble(
    turns: Sequence[Turn],
    results: Mapping[str, Part],
    errors: Mapping[str, str],
    assessor: str = "offline",
) -> Assessment:
    """The Assessment from the parts that succeeded. Raises AssessmentFailed if none did."""
    if not results:
        detail = "; ".join(f"{p}: {e}" for p, e in errors.items()) or "no parts ran"
        raise AssessmentFailed(f"all assessment parts failed: {detail}")
    parts: dict[PartName, Part] = {p: results[p] for p in PART_NAMES if p in results}
    score = overall_score({p: r.score for p, r in parts.items()})
    overall = BandScore(band=band_of(score), score=round(score, 2))
    failed: list[PartName] = [p for p in PART_NAMES if p in errors and p not in results]
    n_words = sum(
        1 for t in turns if t.role == "candidate" for tok in tokenize(t.text) if tok.kind == "word"
    )
    notes = []
    if n_words < SHORT_SAMPLE_WORDS:
        notes.append(
            f"Only {n_words} candidate words were analysed; below about {SHORT_SAMPLE_WORDS} words "
            "these measures are unstable, so treat the bands as a rough indication."
        )
    if not any(t.role == "candidate" and t.start is not None and t.end is not None for t in turns):
        notes.append("No speech timing was available, so speaking rate and pauses were not measured.")
    return Assessment(
        summary=summary_text(overall, parts, failed),
        overall=overall,
        parts=parts,
        failed_parts=failed,
        errors={p: errors[p] for p in failed},
        assessor="model" if assessor == "model" else "offline",
        fallbacks={p: r.fallback for p, r in parts.items() if r.fallback},
        words=n_words,
        notes=notes,
    )


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_text(overall: BandScore, parts: Mapping[PartName, Part], failed: Sequence[str]) -> str:
    """1-3 plain spoken sentences: the overall band, strongest and weakest area, what failed."""
    names = list(parts)
    if len(names) == 1:
        first = f"Your English is around {overall.band}, judging by your {names[0]}."
    else:
        first = f"Your English is around {overall.band} overall."
    sentences = [first]
    if len(names) > 1:
        best = max(names, key=lambda p: parts[p].score)
        worst = min(names, key=lambda p: parts[p].score)
        if parts[best].band == parts[worst].band:
            sentences.append(f"Your {_and(names)} are at about the same level.")
        else:
            sentences.append(
                f"Your strongest area is {best}, at {parts[best].band}, "
                f"and {worst}, at {parts[worst].band}, is the one to work on most."
            )
    if failed:
        sentences.append(f"I could not assess your {_and(list(failed))} this time.")
    return " ".join(sentences)
