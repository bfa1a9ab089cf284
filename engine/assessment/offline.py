"""The default assessor: three CPU-bound parts computed from the transcript and VAD times, no
network. Each part is a plain function (turns -> Part) so it can run in a worker thread."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from wordfreq import zipf_frequency

from .bands import METRIC_INFO, band_of, part_score
from .combine import assemble, run_parts
from .metrics import (
    ERROR_PATTERNS,
    LONG_PAUSE_S,
    answers,
    clause_markers,
    content_words,
    filler_counts,
    grammar_errors,
    mattr,
    mean_length_of_run,
    pauses,
    runs,
    self_repetitions,
    sophistication,
    speaking_rate,
    word_families,
)
from .models import Assessment, Part, Turn
from .text import Token, sentences, tokenize, words

__all__ = ["fluency", "vocabulary", "grammar", "OFFLINE_PARTS", "OfflineAssessor", "NoSpeech"]

PartFn = Callable[[Sequence[Turn]], Part]
MATTR_WINDOW = 25


class NoSpeech(ValueError):
    """The candidate turns contain no words."""


def _candidate_tokens(turns: Sequence[Turn]) -> list[list[Token]]:
    toks = [tokenize(t.text) for t in turns if t.role == "candidate"]
    if not any(tok.kind == "word" and not tok.filler for ts in toks for tok in ts):
        raise NoSpeech("no candidate words (beyond fillers) in the transcript")
    return toks


def _part(name: str, metrics: dict[str, float | None], evidence: list[str]) -> Part:
    score = part_score(name, metrics)
    return Part(
        band=band_of(score),
        score=round(score, 2),
        metrics={k: (round(v, 3) if v is not None else None) for k, v in metrics.items()},
        evidence=evidence,
        proxies=[k for k, v in metrics.items() if v is not None and k in METRIC_INFO and METRIC_INFO[k].proxy],
    )


def _quote(items: Sequence[Token] | Sequence[str], limit: int = 110) -> str:
    text = " ".join(t if isinstance(t, str) else t.text for t in items)
    text = re.sub(r" ([,.?!;:])", r"\1", text)
    return "\u201c" + (text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026") + "\u201d"


def _counts(c: Counter[str], limit: int = 6) -> str:
    return ", ".join(f"{k} \u00d7{n}" for k, n in c.most_common(limit))


def _per100(n: int, of: int) -> float:
    return 100.0 * n / of if of else 0.0


def fluency(turns: Sequence[Turn]) -> Part:
    """Speaking rate, mean length of run, fillers, self-repetitions, pauses (timing permitting).
    Pronunciation itself is not measured: these are fluency proxies for the phonology part."""
    toks = _candidate_tokens(turns)
    all_words = sum(1 for ts in toks for t in ts if t.kind == "word")
    lexical = sum(len(words(ts)) for ts in toks)
    fillers = sum((filler_counts(ts) for ts in toks), Counter())
    reps = [r for ts in toks for r in self_repetitions(ts)]
    rate = speaking_rate(turns)
    p = pauses(turns)
    metrics: dict[str, float | None] = {
        "words": all_words,
        "speech_seconds": rate[2] if rate else None,
        "words_per_minute": rate[0] if rate else None,
        "syllables_per_minute": rate[1] if rate else None,
        "mean_length_of_run": mean_length_of_run(toks),
        "fillers_per_100_words": _per100(sum(fillers.values()), all_words),
        "repetitions_per_100_words": _per100(len(reps), lexical),
        "pause_ratio": p.pause_ratio,
        "long_pauses": p.long_pauses,
        "response_latency_s": p.response_latency_s,
    }
    ev = []
    if rate:
        ev.append(f"{all_words} words in {rate[2]:.0f} s of speech: {rate[0]:.0f} words, "
                  f"{rate[1]:.0f} syllables per minute")
    else:
        ev.append("No speech timing: speaking rate not measured")
    longest = max((r for ts in toks for r in runs(ts)), key=len)
    ev.append(f"Longest run without a pause ({len(longest)} words): {_quote(longest)}")
    ev.append(f"Fillers: {_counts(fillers)}" if fillers else "No fillers in the transcript")
    if reps:
        ev.append(f"Self-repetitions ({len(reps)}): " + ", ".join(f"\u201c{r} \u2026 {r}\u201d" for r in reps[:5]))
    if p.pause_ratio is not None:
        ev.append(f"{p.long_pauses} pauses of {LONG_PAUSE_S:.0f} s or more inside answers; "
                  f"{p.pause_ratio:.0%} of answer time was silence")
    if p.response_latency_s is not None:
        ev.append(f"Started answering {p.response_latency_s:.1f} s after the question, on average")
    return _part("fluency", metrics, ev)


def vocabulary(turns: Sequence[Turn]) -> Part:
    """MATTR (window 25), share of less frequent content words, distinct word families."""
    toks = [t for ts in _candidate_tokens(turns) for t in ts]
    ws = words(toks)
    share, rare = sophistication(toks)
    families = word_families(ws)
    metrics: dict[str, float | None] = {
        "words": len(ws),
        "mattr": mattr(ws, MATTR_WINDOW),
        "sophisticated_share": share,
        "word_families": len(families),
    }
    ev = []
    if rare:
        by_rarity = sorted(set(rare), key=lambda w: zipf_frequency(w, "en"))
        ev.append("Less frequent words: " + ", ".join(by_rarity[:10]))
    else:
        ev.append("No content words beyond the most frequent ones")
    repeated = Counter(content_words(toks))
    repeated = Counter({w: n for w, n in repeated.items() if n >= 3})
    if repeated:
        ev.append(f"Most repeated content words: {_counts(repeated, 5)}")
    if len(ws) <= MATTR_WINDOW:
        ev.append(f"Only {len(ws)} words: MATTR is the plain type-token ratio here")
    ev.append(f"{len(families)} word families in {len(ws)} words")
    return _part("vocabulary", metrics, ev)


def grammar(turns: Sequence[Turn]) -> Part:
    """Sentence and answer length, clause markers per sentence, the listed error patterns."""
    sents = [s for ts in _candidate_tokens(turns) for s in sentences(ts)]
    lengths = [len(words(s)) for s in sents]
    answer_lengths = [
        sum(len(words(tokenize(seg.text))) for seg in a.segments) for a in answers(turns)
    ]
    markers = Counter(m for s in sents for m in clause_markers(s))
    errors = [e for s in sents for e in grammar_errors(s)]
    n_words = sum(lengths)
    metrics: dict[str, float | None] = {
        "words": n_words,
        "sentences": len(sents),
        "mean_sentence_length": n_words / len(sents),
        "mean_utterance_length": sum(answer_lengths) / len(answer_lengths) if answer_lengths else None,
        "clause_density": sum(markers.values()) / len(sents),
        "errors_per_100_words": _per100(len(errors), n_words),
    }
    described = {p.id: p.description for p in ERROR_PATTERNS}
    ev = []
    if errors:
        by_pattern: dict[str, list[str]] = {}
        for pid, snip in errors:
            by_pattern.setdefault(pid, []).append(f"\u201c{snip}\u201d")
        for pid, snips in by_pattern.items():  # one line per pattern, in order of appearance
            ev.append(f"Error, {described[pid]}: {', '.join(snips[:5])}")
    else:
        ev.append("None of the listed error patterns found (this does not mean error-free)")
    if markers:
        ev.append(f"Clause markers: {_counts(markers, 8)}")
    else:
        ev.append("No subordinate clauses marked (because, which, when, if, that ...)")
    longest = max(sents, key=lambda s: len(words(s)))
    ev.append(f"Longest sentence ({len(words(longest))} words): {_quote(longest)}")
    return _part("grammar", metrics, ev)


OFFLINE_PARTS: dict[str, PartFn] = {"fluency": fluency, "vocabulary": vocabulary, "grammar": grammar}


class OfflineAssessor:
    """Runs each part in a worker thread (`asyncio.to_thread`), all three at once."""

    def __init__(self, parts: Mapping[str, PartFn] | None = None) -> None:
        self.parts = dict(parts or OFFLINE_PARTS)

    async def assess(self, turns: list[Turn]) -> Assessment:
        turns = list(turns)
        results, errors = await run_parts(
            {name: partial(asyncio.to_thread, fn, turns) for name, fn in self.parts.items()}
        )
        return assemble(turns, results, errors, assessor="offline")
