"""The measures, as small pure functions over tokens and timed turns.

Each one is tested against hand-computed values. `offline.py` turns them into scored parts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from wordfreq import zipf_frequency

from .models import Turn
from .text import FUNCTION_WORDS, Token, sentences, stem, syllables, tokenize, words

__all__ = [
    "Answer",
    "answers",
    "speaking_rate",
    "pauses",
    "runs",
    "mean_length_of_run",
    "filler_counts",
    "self_repetitions",
    "mattr",
    "content_words",
    "sophistication",
    "word_families",
    "clause_markers",
    "ErrorPattern",
    "ERROR_PATTERNS",
    "grammar_errors",
    "SOPHISTICATED_ZIPF",
    "LONG_PAUSE_S",
]

SOPHISTICATED_ZIPF = 4.0  # 10 per million words: outside the ~7,000 most frequent English word forms
LONG_PAUSE_S = 1.0  # a silence inside an answer this long or longer counts as a long pause


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: the candidate turns (VAD segments) between two interviewer turns."""

    segments: tuple[Turn, ...]
    asked_at_end: float | None  # when the interviewer's previous turn ended, if known


def answers(turns: Sequence[Turn]) -> list[Answer]:
    out: list[Answer] = []
    current: list[Turn] = []
    asked: float | None = None
    for t in turns:
        if t.role == "candidate":
            current.append(t)
            continue
        if current:
            out.append(Answer(tuple(current), asked))
            current = []
        asked = t.end
    if current:
        out.append(Answer(tuple(current), asked))
    return out


def _timed(t: Turn) -> bool:
    return t.start is not None and t.end is not None and t.end > t.start


# --- fluency ---------------------------------------------------------------------------------


def speaking_rate(turns: Sequence[Turn]) -> tuple[float, float, float] | None:
    """(words/min, syllables/min, seconds) over candidate turns that have start and end.
    Unpruned: fillers and repeated words count, as they took time; the time between VAD start
    and stop includes short pauses inside a segment, so this is a speech rate, not articulation
    rate. None when no turn is timed."""
    n_words = n_syll = 0
    seconds = 0.0
    for t in turns:
        if t.role != "candidate" or not _timed(t):
            continue
        ws = [tok.lower for tok in tokenize(t.text) if tok.kind == "word"]
        n_words += len(ws)
        n_syll += sum(syllables(w) for w in ws)
        seconds += t.end - t.start  # type: ignore[operator]
    if seconds <= 0:
        return None
    return n_words * 60 / seconds, n_syll * 60 / seconds, seconds


@dataclass(frozen=True, slots=True)
class Pauses:
    pause_ratio: float | None  # silence / (speech + silence) inside answers
    long_pauses: int | None  # silences >= LONG_PAUSE_S inside answers
    response_latency_s: float | None  # mean time from the question's end to the answer's start


def pauses(turns: Sequence[Turn]) -> Pauses:
    """Silences between VAD segments of one answer. Undefined (None) unless some answer came
    in two or more timed segments: one segment per answer hides the pauses inside it."""
    speech = silence = 0.0
    long_pauses = 0
    split = False
    latencies: list[float] = []
    for a in answers(turns):
        segs = [s for s in a.segments if _timed(s)]
        if segs and a.asked_at_end is not None and a.segments[0] is segs[0]:
            latencies.append(max(0.0, segs[0].start - a.asked_at_end))  # type: ignore[operator]
        speech += sum(s.end - s.start for s in segs if s.end is not None and s.start is not None)
        for prev, nxt in zip(segs, segs[1:], strict=False):
            split = True
            gap = max(0.0, nxt.start - prev.end)  # type: ignore[operator]
            silence += gap
            long_pauses += gap >= LONG_PAUSE_S
    ratio = silence / (speech + silence) if split and speech + silence > 0 else None
    latency = sum(latencies) / len(latencies) if latencies else None
    return Pauses(ratio, long_pauses if split else None, latency)


def runs(tokens: Sequence[Token]) -> list[list[str]]:
    """Stretches of words between pause marks ("...", ",", ";", "-"), sentence ends and fillers."""
    out: list[list[str]] = [[]]
    for t in tokens:
        if t.kind == "word" and not t.filler:
            out[-1].append(t.text)
        elif out[-1]:
            out.append([])
    return [r for r in out if r]


def mean_length_of_run(token_lists: Sequence[Sequence[Token]]) -> float | None:
    """Mean words per run, over all turns (a turn boundary ends a run)."""
    lengths = [len(r) for toks in token_lists for r in runs(toks)]
    return sum(lengths) / len(lengths) if lengths else None


def filler_counts(tokens: Sequence[Token]) -> Counter[str]:
    """Fillers by form; "you know" counts once."""
    c: Counter[str] = Counter()
    prev_you = False
    for t in tokens:
        if t.kind == "word" and t.filler:
            if t.lower == "know" and prev_you:
                c["you know"] += 1
            elif t.lower != "you":
                c[t.lower] += 1
            prev_you = t.lower == "you"
        else:
            prev_you = False
    return c


# Doubled words that are usually deliberate, not hesitation.
_DELIBERATE_DOUBLES = {"had", "that", "very", "really", "so", "no", "bye", "far", "more", "much"}


def self_repetitions(tokens: Sequence[Token]) -> list[str]:
    """Immediately repeated words or phrases of up to three words, ignoring pause marks and
    fillers between them ("I I", "in a ... in a", "I like, um, I like"). Not across sentences.
    Returns the repeated phrase once per occurrence."""
    found: list[str] = []
    for sent in sentences(list(tokens)):
        ws = words(sent)
        i = 0
        while i < len(ws):
            for n in (3, 2, 1):
                if ws[i:i + n] == ws[i + n:i + 2 * n] and len(ws[i:i + n]) == n:
                    if n == 1 and ws[i] in _DELIBERATE_DOUBLES:
                        continue
                    found.append(" ".join(ws[i:i + n]))
                    i += n  # the second copy may itself be repeated ("I I I" = 2)
                    break
            else:
                i += 1
    return found


# --- vocabulary ------------------------------------------------------------------------------


def mattr(ws: Sequence[str], window: int = 25) -> float | None:
    """Moving-average type-token ratio (Covington & McFall 2010): the mean TTR of every window
    of `window` consecutive words. Unlike raw TTR it does not fall as the sample gets longer.
    A sample shorter than the window gets its plain TTR."""
    if not ws:
        return None
    if len(ws) <= window:
        return len(set(ws)) / len(ws)
    counts = Counter(ws[:window])
    total = len(counts)
    for i in range(window, len(ws)):  # slide: add one word, drop one word
        counts[ws[i]] += 1
        old = ws[i - window]
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
        total += len(counts)
    return total / ((len(ws) - window + 1) * window)


def content_words(tokens: Sequence[Token]) -> list[str]:
    """Lower-cased content words: not function words, not fillers, not proper nouns (a capital
    letter not at a sentence start), letters only."""
    out = []
    for t in tokens:
        if t.kind != "word" or t.filler or not t.text.replace("-", "").isalpha():
            continue
        if t.text[0].isupper() and not t.initial and t.lower != "i":
            continue
        if t.lower not in FUNCTION_WORDS:
            out.append(t.lower)
    return out


def sophistication(tokens: Sequence[Token]) -> tuple[float | None, list[str]]:
    """Share of content words with wordfreq zipf < SOPHISTICATED_ZIPF (a Lexical Frequency
    Profile-style proxy, Laufer & Nation 1995), and those words. Words wordfreq does not know
    (zipf 0: likely transcription errors) are left out of both counts."""
    known = [(w, zipf_frequency(w, "en")) for w in content_words(tokens)]
    known = [(w, z) for w, z in known if z > 0]
    if not known:
        return None, []
    rare = [w for w, z in known if z < SOPHISTICATED_ZIPF]
    return len(rare) / len(known), rare


def word_families(ws: Sequence[str]) -> set[str]:
    """Distinct crude word families (see text.stem)."""
    return {stem(w) for w in ws}


# --- grammar ---------------------------------------------------------------------------------

SUBORDINATORS = frozenset(
    ["because", "although", "though", "while", "whereas", "if", "unless", "whether", "whenever", "wherever"]
)
RELATIVES = frozenset(["which", "who", "whom", "whose", "where", "when"])
_NOT_COMPLEMENTIZER_AFTER_THAT = {"is", "was", "'s"}


def clause_markers(sentence: Sequence[Token]) -> list[str]:
    """Subordinators and relative pronouns in one sentence: a proxy for dependent clauses
    (cf. clauses per T-unit, Lu 2010). "that" counts unless followed by is/was or a pause
    (then it is likely a demonstrative: "that is why", "I like that."). In a question, a
    wh-word in first position is interrogative and does not count. Prepositions that can
    also subordinate (after, before, since, until) are left out."""
    toks = [t for t in sentence if not t.filler]
    question = bool(toks) and toks[-1].text == "?"
    found = []
    for i, t in enumerate(toks):
        if t.kind != "word":
            continue
        w = t.lower
        if question and t.initial:
            continue
        if w in SUBORDINATORS or w in RELATIVES:
            found.append(w)
        elif w == "that":
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is not None and nxt.kind == "word" and nxt.lower not in _NOT_COMPLEMENTIZER_AFTER_THAT:
                found.append(w)
    return found


@dataclass(frozen=True, slots=True)
class ErrorPattern:
    id: str
    description: str
    example: str
    regex: re.Pattern[str]
    skip_after: frozenset[str] = frozenset()  # no error when the group `prev` is one of these


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_BASE_VERBS = (
    "go|have|do|like|want|need|play|work|live|make|think|say|get|know|come|take|watch|eat|study|"
    "love|speak|use|help|don't"
)
_COUNT_NOUNS = (
    "car|house|dog|cat|job|book|computer|brother|sister|problem|teacher|student|doctor|engineer|"
    "nurse|question|city|country|flat|apartment|garden|bike|bicycle|idea|friend|holiday|trip|son|"
    "daughter|husband|wife|restaurant|shop|supermarket|park|cinema|museum|village|office|hotel|"
    "waiter|manager|seller|boyfriend|girlfriend"
)
_ADJ = "big|small|good|nice|new|old|great|beautiful|little|large|busy|modern|quiet|very|really"
_PAST_FORMS = (
    "went|saw|came|ate|bought|made|took|got|had|was|were|said|told|gave|knew|thought|found|wrote|"
    "met|felt|began|brought|heard|lived|liked|wanted|played|worked|studied|visited|started|stayed|"
    "decided|watched|tried|used"
)
_AUX = frozenset(
    [
        "do", "does", "did", "don't", "doesn't", "didn't", "will", "would", "can", "could", "should", "might", "must",
        "may", "shall", "let", "make", "makes", "made", "help", "helps", "helped", "see", "saw", "watch", "to",
    ]
)

# The documented error patterns. Each is a high-precision, low-recall signal over the
# transcript (fillers and pause marks removed, lower case): finding none proves little.
ERROR_PATTERNS: tuple[ErrorPattern, ...] = (
    ErrorPattern("third_person_s", "third person without -s", "he go, she don't",
                 _p(rf"(?:\b(?P<prev>[\w']+)\s+)?\b(?:he|she|it)\s+(?:{_BASE_VERBS})(?![\w'])"), _AUX),
    ErrorPattern("be_agree", "'be' + agree", "I am agree",
                 _p(r"\b(?:am|is|are|i'm|we're|they're|he's|she's)\s+(?:not\s+)?(?:dis)?agree\b")),
    ErrorPattern("double_comparative", "more/most + comparative or short adjective", "more better, more easy",
                 _p(r"\b(?:more|most)\s+(?:better|best|worse|worst|bigger|smaller|easier|harder|faster|"
                    r"cheaper|older|younger|happier|longer|larger|higher|nicer|easy|big|cheap|fast|happy|"
                    r"nice|hard|small|old|young|good|bad)\b")),
    ErrorPattern("did_past", "past form after did", "did went, didn't saw",
                 _p(rf"\b(?:did|didn't)\s+(?:(?:i|you|he|she|it|we|they|not)\s+)?(?:{_PAST_FORMS})\b")),
    ErrorPattern("modal_to", "'to' after a modal", "I can to swim",
                 _p(r"\b(?:can|could|must|should|will|would|might|may)\s+to\b")),
    ErrorPattern("missing_to", "missing 'to' before an infinitive", "I want visit",
                 _p(r"\b(?:want|wants|wanted|need|needs|needed|decided|try|tried|hope)\s+(?:go|visit|see|eat|"
                    r"buy|do|make|play|work|learn|study|live|have|be|get|come|travel|speak|stay)\b")),
    ErrorPattern("missing_article", "no article before a singular count noun (proxy)",
                 "I am teacher, it is very big city, I have car",
                 _p(rf"\b(?:is|was|am|i'm|he's|she's|it's|there's|have|has|had|want|wants|need|buy|bought|got|"
                    rf"in|at|(?:go|goes|went|going|come|came)\s+to)\s+(?:(?:{_ADJ})\s+){{0,2}}(?:{_COUNT_NOUNS})\b")),
    ErrorPattern("non_count_plural", "plural -s on a non-count or irregular plural noun",
                 "informations, childrens",
                 _p(r"\b(?:informations|advices|furnitures|homeworks|equipments|knowledges|childrens|mens|womens)\b")),
    ErrorPattern("plural_subject_agreement", "singular verb after people/children", "people is",
                 _p(r"\b(?:people|children|childrens)\s+(?:is|was|has|does|doesn't|likes|wants|goes)\b")),
    ErrorPattern("have_age", "'have' for age", "I have 30 years",
                 _p(r"\b(?:i|he|she|you|we|they)\s+(?:have|has)\s+(?:[\w-]+\s+){1,2}years(?:\s+old\b|$)")),
    ErrorPattern("listen_to", "listen without 'to'", "listen the teacher",
                 _p(r"\blisten(?:s|ed|ing)?\s+(?:the|my|a|him|her|me|them|music)\b")),
)


def grammar_errors(sentence: Sequence[Token]) -> list[tuple[str, str]]:
    """(pattern id, matched words) for every error pattern found in one sentence."""
    text = " ".join(words(sentence))
    found = []
    for p in ERROR_PATTERNS:
        for m in p.regex.finditer(text):
            prev = m.groupdict().get("prev")
            if prev is not None and prev in p.skip_after:
                continue
            snippet = m.group()
            if prev is not None:
                snippet = snippet[len(prev):].lstrip()
            found.append((p.id, snippet))
    return found
