"""From measures to CEFR-style bands: the one threshold table, and how it is applied.

Scale: a score from 1.0 (A1) to 6.0 (C2); a band is its score rounded to the nearest level.
Each measure gets its own score by linear interpolation between the typical values in
THRESHOLDS (clamped at the ends); a part's score is the weighted mean of its measures' scores,
over the measures that could be computed in this sample (weights renormalised).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .models import BANDS, CEFR, PART_NAMES

__all__ = ["Rule", "THRESHOLDS", "METRIC_INFO", "band_of", "metric_score", "part_score", "overall_score"]


@dataclass(frozen=True, slots=True)
class Rule:
    weight: float
    # Typical value at A1, A2, B1, B2, C1, C2 (None: this measure cannot show that level).
    # Increasing values: higher is better; decreasing: lower is better.
    typical: tuple[float | None, float | None, float | None, float | None, float | None, float | None]


# THE threshold table: typical values of each scored measure per band, and its weight.
# Where these numbers come from. They are HEURISTIC starting points, set by hand and checked
# only against the persona transcripts in flows/personas; they are not a validated CEFR
# test and should be recalibrated on rated samples before any high-stakes use.
# - Speech rate and mean length of run rise with level in L2 fluency studies (Kormos & Denes
#   2004; Tavakoli, Nakatsuhara & Hunter 2020 compared them across CEFR levels and found the
#   clearest differences at the lower levels, smaller ones above B2); fluent native
#   conversation runs at roughly 150-190 words per minute.
# - Fillers and self-repetitions (Skehan's "repair fluency") fall with proficiency; fluent
#   native speakers still produce one to three fillers per 100 words.
# - Mean length of run here is read from punctuation, and clean transcripts have few commas,
#   so its typical values are set above those of pause-based studies.
# - MATTR with a 25-word window (Covington & McFall 2010) is length-independent; spoken
#   a 25-word window gives higher values than the 50-word window often reported, and spoken
#   samples score lower than writing (a polished written paragraph reaches about 0.93).
# - Sophistication follows the Lexical Frequency Profile idea (Laufer & Nation 1995): the
#   share of content words outside the ~7,000 most frequent word forms (wordfreq zipf < 4.0).
# - Word families depend on how much was said; the values assume about four answers.
# - Sentence length and subordination rise with level in syntactic-complexity research
#   (Norris & Ortega 2009; Lu 2010, L2SCA) and with the CEFR descriptors for grammatical
#   range (Companion Volume 2020: from "simple phrases" to "complex sentences").
THRESHOLDS: dict[str, dict[str, Rule]] = {
    "fluency": {
        # Speed is measured from timing, so it weighs most; the transcript-only signals below
        # are lower bounds (transcription drops fillers), so their absence tops out at C1.
        "words_per_minute": Rule(0.20, (55, 80, 105, 125, 145, 165)),
        "syllables_per_minute": Rule(0.20, (80, 115, 150, 185, 215, 245)),
        "mean_length_of_run": Rule(0.25, (2.0, 3.0, 5.0, 7.0, 9.0, 12.0)),
        "fillers_per_100_words": Rule(0.10, (15.0, 11.0, 8.0, 5.5, 3.0, None)),
        "repetitions_per_100_words": Rule(0.15, (7.0, 5.0, 3.5, 2.5, 1.2, None)),
        "pause_ratio": Rule(0.10, (0.45, 0.35, 0.27, 0.20, 0.14, 0.10)),
    },
    "vocabulary": {
        "mattr": Rule(0.40, (0.66, 0.72, 0.78, 0.84, 0.89, 0.93)),
        "sophisticated_share": Rule(0.40, (0.00, 0.04, 0.08, 0.13, 0.19, 0.26)),
        "word_families": Rule(0.20, (25, 45, 75, 110, 150, 190)),
    },
    "grammar": {
        "mean_sentence_length": Rule(0.30, (4.0, 6.0, 9.0, 12.0, 16.0, 20.0)),
        "clause_density": Rule(0.35, (0.0, 0.15, 0.35, 0.60, 0.90, 1.20)),
        # Finding none of a few listed errors is weak evidence: this measure tops out at C1.
        "errors_per_100_words": Rule(0.35, (10.0, 6.0, 3.5, 1.5, 0.5, None)),
    },
}


@dataclass(frozen=True, slots=True)
class MetricInfo:
    label: str
    fmt: str  # format spec for the value
    proxy: str | None = None  # why this is a proxy (None: measured directly)


METRIC_INFO: dict[str, MetricInfo] = {
    "words_per_minute": MetricInfo("Speaking rate, words per minute", ".0f",
                                   "from voice-activity times, which include short pauses; not articulation rate"),
    "syllables_per_minute": MetricInfo("Speaking rate, syllables per minute", ".0f",
                                       "syllables from a pronouncing dictionary, not from the audio"),
    "mean_length_of_run": MetricInfo("Mean length of run, words between pauses", ".1f",
                                     "pauses read from transcript punctuation ('...', ',') and fillers"),
    "fillers_per_100_words": MetricInfo("Fillers per 100 words", ".1f",
                                        "transcription often drops fillers, so this is a lower bound"),
    "repetitions_per_100_words": MetricInfo("Self-repetitions per 100 words", ".1f",
                                            "repeated words/phrases in the transcript"),
    "pause_ratio": MetricInfo("Pause ratio (silence inside answers)", ".2f",
                              "silences between voice-activity segments only"),
    "long_pauses": MetricInfo("Long pauses (1 s or more) inside answers", ".0f"),
    "response_latency_s": MetricInfo("Mean time to start answering, seconds", ".1f",
                                     "also reflects thinking about content, so it is reported, not scored"),
    "speech_seconds": MetricInfo("Speech analysed, seconds", ".0f"),
    "mattr": MetricInfo("Lexical diversity, MATTR (window 25)", ".2f"),
    "sophisticated_share": MetricInfo("Less frequent content words (zipf < 4.0), share", ".2f",
                                      "word frequency stands in for difficulty"),
    "word_families": MetricInfo("Distinct word families", ".0f",
                                "crude suffix-stripping, and it grows with the amount said"),
    "mean_sentence_length": MetricInfo("Mean sentence length, words", ".1f",
                                       "sentence ends come from transcript punctuation"),
    "mean_utterance_length": MetricInfo("Mean answer length, words", ".1f"),
    "clause_density": MetricInfo("Subordinators and relative pronouns per sentence", ".2f",
                                 "clause markers counted from a word list, not parsed"),
    "errors_per_100_words": MetricInfo("Listed error patterns per 100 words", ".1f",
                                       "a small list of patterns; most errors are not detected"),
    "words": MetricInfo("Words analysed", ".0f"),
    "sentences": MetricInfo("Sentences", ".0f"),
}


def band_of(score: float) -> CEFR:
    return BANDS[min(max(int(score + 0.5), 1), 6) - 1]  # round half up, within A1..C2


def metric_score(rule: Rule, value: float) -> float:
    """Piecewise-linear position of `value` among the typical values, clamped to the table."""
    points = [(v, i + 1.0) for i, v in enumerate(rule.typical) if v is not None]
    if points[0][0] > points[-1][0]:  # lower is better: mirror the values
        points = [(-v, s) for v, s in points]
        value = -value
    if value <= points[0][0]:
        return points[0][1]
    for (v0, s0), (v1, s1) in zip(points, points[1:], strict=False):
        if value <= v1:
            return s0 + (s1 - s0) * (value - v0) / (v1 - v0)
    return points[-1][1]


def part_score(part: str, metrics: Mapping[str, float | None]) -> float:
    """Weighted mean of the scored measures present in `metrics`. ValueError if none is."""
    total = weights = 0.0
    for name, rule in THRESHOLDS[part].items():
        value = metrics.get(name)
        if value is not None:
            total += rule.weight * metric_score(rule, value)
            weights += rule.weight
    if not weights:
        raise ValueError(f"no {part} measure could be computed from this sample")
    return total / weights


def overall_score(scores: Mapping[str, float]) -> float:
    """Unweighted mean of the parts that succeeded (the three dimensions count equally)."""
    present = [scores[p] for p in PART_NAMES if p in scores]
    if not present:
        raise ValueError("no part to combine")
    return sum(present) / len(present)
