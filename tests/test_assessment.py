"""engine.assessment: measures against hand-computed values, bands on the personas, the three
parts running concurrently, partial reports, and the model assessor against a local server."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from wordfreq import zipf_frequency

from engine.assessment import (
    Assessment,
    AssessmentFailed,
    ModelAssessor,
    OfflineAssessor,
    Part,
    Turn,
    job,
    make_assessor,
    render_markdown,
)
from engine.assessment.bands import THRESHOLDS, Rule, band_of, metric_score, part_score
from engine.assessment.metrics import (
    ERROR_PATTERNS,
    clause_markers,
    filler_counts,
    grammar_errors,
    mattr,
    mean_length_of_run,
    pauses,
    self_repetitions,
    sophistication,
    speaking_rate,
    word_families,
)
from engine.assessment.offline import OFFLINE_PARTS, NoSpeech
from engine.assessment.text import fallback_syllables, sentences, syllables, tokenize

PERSONAS = Path(__file__).resolve().parent.parent / "flows" / "personas"
KEY = "sk-test-SECRET-0123456789abcdef"


def cand(text: str, start: float | None = None, end: float | None = None) -> Turn:
    return Turn(role="candidate", text=text, start=start, end=end)


def run(coro):
    return asyncio.run(coro)


# --- measures against hand-computed values -------------------------------------------------------


def test_syllables_from_cmudict_and_fallback():
    assert [syllables(w) for w in ("hello", "beautiful", "strengths", "the", "don't")] == [2, 3, 1, 1, 1]
    assert syllables("well-known") == 2  # hyphenated: parts summed
    # Not in the dictionary: vowel groups, minus a silent final e.
    assert syllables("blorptastic") == fallback_syllables("blorptastic") == 3  # o, a, i
    assert fallback_syllables("flake") == 1 and fallback_syllables("table") == 2
    assert fallback_syllables("rhythm") == 1  # y counts as a vowel; never below 1


def test_speaking_rate_words_and_syllables_per_minute():
    turns = [
        cand("hello hello there", 0.0, 3.0),  # 3 words, 2+2+1 = 5 syllables, 3 s
        Turn(role="interviewer", text="ignored words here", start=3.0, end=10.0),
        cand("um beautiful", 10.0, 13.0),  # 2 words (fillers count), 1+3 = 4 syllables, 3 s
        cand("untimed words are not counted"),
    ]
    wpm, spm, seconds = speaking_rate(turns)
    assert seconds == 6.0
    assert wpm == pytest.approx(5 * 60 / 6)  # 50
    assert spm == pytest.approx(9 * 60 / 6)  # 90
    assert speaking_rate([cand("no timing")]) is None


def test_pauses_between_segments_of_one_answer():
    turns = [
        Turn(role="interviewer", text="Question?", start=None, end=-1.0),
        cand("one", 0.0, 2.0),
        cand("two", 2.5, 4.0),  # gap 0.5 s
        cand("three", 5.5, 6.0),  # gap 1.5 s: a long pause
    ]
    p = pauses(turns)
    assert p.pause_ratio == pytest.approx(2.0 / 6.0)  # silence 2.0 / (speech 4.0 + silence 2.0)
    assert p.long_pauses == 1
    assert p.response_latency_s == pytest.approx(1.0)
    one_segment = pauses([cand("a whole answer", 0.0, 5.0)])
    assert one_segment.pause_ratio is None and one_segment.long_pauses is None


def test_fillers_by_form_and_in_context():
    toks = tokenize("Um, I like, you know, tea. It's like... uh, erm, hard. Do you know? I like it.")
    # "I like," is a verb; "you know," and "like..." are fillers; "Do you know?" is a question.
    assert filler_counts(toks) == {"um": 1, "you know": 1, "like": 1, "uh": 1, "erm": 1}


def test_mean_length_of_run():
    # Runs: [I like] [I like football] [and] [tennis]; "um" and the marks end runs.
    toks = tokenize("I like... I like football, and um tennis.")
    assert mean_length_of_run([toks]) == pytest.approx(7 / 4)
    # A turn boundary ends a run too: [a b c] [d e] -> 2.5
    assert mean_length_of_run([tokenize("a b c"), tokenize("d e")]) == pytest.approx(2.5)


def test_self_repetitions():
    toks = tokenize("I I think, in a ... in a park. I like, um, I like it. That that is fine. It. It.")
    assert self_repetitions(toks) == ["i", "in a", "i like"]  # "that that" is deliberate; not across sentences
    assert self_repetitions(tokenize("I I I go")) == ["i", "i"]


def test_mattr_on_a_tiny_text():
    ws = "a b a c a b".split()
    # Windows of 3: [a b a] 2/3, [b a c] 3/3, [a c a] 2/3, [c a b] 3/3 -> 10/12
    assert mattr(ws, window=3) == pytest.approx(10 / 12)
    assert mattr(ws, window=25) == pytest.approx(3 / 6)  # shorter than the window: plain TTR
    assert mattr([], window=3) is None


def test_sophistication_share_of_less_frequent_content_words():
    assert zipf_frequency("house", "en") >= 4.0 > zipf_frequency("ubiquitous", "en")
    assert zipf_frequency("meticulous", "en") < 4.0
    # Content words: house, ubiquitous, meticulous (the/is/and are function words, um a filler,
    # Kyoto a proper noun mid-sentence).
    share, rare = sophistication(tokenize("The house is ubiquitous and um meticulous, like Kyoto."))
    assert share == pytest.approx(2 / 3)
    assert rare == ["ubiquitous", "meticulous"]


def test_word_families():
    ws = "play played playing plays player went go goes going teachers teach happiness happy".split()
    assert word_families(ws) == {"play", "go", "teach", "happy"}


def test_clause_density_markers():
    sents = sentences(tokenize("I think that it is good because it is cheap. Where do you live? That is nice."))
    assert [clause_markers(s) for s in sents] == [["that", "because"], [], []]
    # Hence clause density 2 / 3 sentences; a declarative "When ..." counts, a relative "which" too.
    assert clause_markers(tokenize("When I was young, I lived in a town which had a port.")) == ["when", "which"]


@pytest.mark.parametrize("pattern", ERROR_PATTERNS, ids=lambda p: p.id)
def test_each_documented_error_pattern_finds_its_own_examples(pattern):
    for example in pattern.example.split(", "):
        found = [pid for pid, _ in grammar_errors(tokenize(example))]
        assert pattern.id in found, example


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He go to work.", [("third_person_s", "he go")]),
        ("Did he go to work?", []),  # after "did" the base form is right
        ("I am agree with you.", [("be_agree", "am agree")]),
        ("It is more better.", [("double_comparative", "more better")]),
        ("It is more expensive.", []),
        ("I did went there.", [("did_past", "did went")]),
        ("I didn't go there.", []),
        ("My brother is doctor.", [("missing_article", "is doctor")]),
        ("My brother is a doctor.", []),
        ("I have, um, car.", [("missing_article", "have car")]),  # fillers and marks are skipped
        ("I want visit London.", [("missing_to", "want visit")]),
        ("I want to visit London.", []),
    ],
)
def test_error_patterns_hits_and_misses(text, expected):
    assert grammar_errors(tokenize(text)) == expected


# --- bands ---------------------------------------------------------------------------------------


def test_metric_scores_interpolate_between_typical_values():
    up = Rule(1.0, (10, 20, 30, 40, 50, 60))
    assert metric_score(up, 25) == pytest.approx(2.5)
    assert metric_score(up, 0) == 1.0 and metric_score(up, 99) == 6.0  # clamped
    down = Rule(1.0, (10.0, 6.0, 3.5, 1.5, 0.5, None))  # lower is better, tops out at C1
    assert metric_score(down, 6.0) == pytest.approx(2.0)
    assert metric_score(down, 1.0) == pytest.approx(4.5)
    assert metric_score(down, 0.0) == 5.0
    assert [band_of(s) for s in (1.0, 1.49, 1.5, 3.2, 5.5, 6.0)] == ["A1", "A1", "A2", "B1", "C2", "C2"]
    with pytest.raises(ValueError):
        part_score("fluency", {"words_per_minute": None})


def test_threshold_table_is_complete_and_monotonic():
    for part, rules in THRESHOLDS.items():
        assert abs(sum(r.weight for r in rules.values()) - 1.0) < 1e-9, part
        for name, r in rules.items():
            vals = [v for v in r.typical if v is not None]
            assert vals == sorted(vals) or vals == sorted(vals, reverse=True), name


# --- personas ------------------------------------------------------------------------------------


def persona_turns(path: Path, n: int | None = None) -> list[Turn]:
    """Interviewer questions and candidate answers, the answers timed from words_per_minute."""
    p = yaml.safe_load(path.read_text())
    n = p["interviewer"]["tool_calls"][0]["after_answers"] if n is None else n
    c = p["candidate"]
    t, out = 0.0, []
    for q, a in zip(p["interviewer"]["questions"][:n], c["answers"][:n]):
        t += len(q.split()) / p["interviewer"]["words_per_minute"] * 60
        out.append(Turn(role="interviewer", text=q, end=t))
        t += sum(c["reaction_s"]) / 2
        spoken = len(re.findall(r"[A-Za-z0-9]+(?:['-][A-Za-z]+)*", a))
        out.append(cand(a, t, t + spoken / c["words_per_minute"] * 60))
        t = out[-1].end + 0.5
    return out


@pytest.mark.parametrize("name", ["a2_hesitant.yaml", "c1_fluent.yaml"])
def test_persona_files_have_the_simulator_format(name):
    p = yaml.safe_load((PERSONAS / name).read_text())
    assert set(p) == {"name", "level", "candidate", "interviewer"}
    assert {"words_per_minute", "reaction_s", "answers"} <= set(p["candidate"])
    assert {"voice", "words_per_minute", "questions", "tool_calls"} <= set(p["interviewer"])
    assert len(p["interviewer"]["questions"]) == len(p["candidate"]["answers"]) == 5
    assert all(isinstance(a, str) and a.strip() for a in p["candidate"]["answers"])
    assert len(p["candidate"]["reaction_s"]) == 2


@pytest.mark.parametrize("n", [None, 5])  # the answers before assessment, and all five
def test_a2_persona_is_below_c1_persona_on_every_dimension(n):
    a2 = run(OfflineAssessor().assess(persona_turns(PERSONAS / "a2_hesitant.yaml", n)))
    c1 = run(OfflineAssessor().assess(persona_turns(PERSONAS / "c1_fluent.yaml", n)))
    assert not a2.failed_parts and not c1.failed_parts
    for part in ("fluency", "vocabulary", "grammar"):
        assert a2.parts[part].score < c1.parts[part].score, part
        assert a2.parts[part].band < c1.parts[part].band, part  # "A2" < "C1" as strings too
    assert a2.overall.score < c1.overall.score
    if n is None:  # the calibration the threshold table was checked against
        assert (a2.overall.band, c1.overall.band) == ("A2", "C1")


# --- concurrency and partial reports -------------------------------------------------------------


def _blocking_parts(barrier: threading.Barrier, fail: str | None = None) -> dict[str, Callable]:
    """Parts that each wait (in their worker thread) until all three have started."""

    def make(name: str):
        def part(turns):
            barrier.wait()  # raises BrokenBarrierError after its timeout if the parts ran one by one
            if name == fail:
                raise RuntimeError(f"{name} exploded")
            return OFFLINE_PARTS[name](turns)

        return part

    return {name: make(name) for name in OFFLINE_PARTS}


SAMPLE = [
    Turn(role="interviewer", text="Tell me about yourself.", end=2.0),
    cand("Well, I work as a nurse, and I enjoy it because every day is different.", 3.0, 8.0),
]


def test_the_three_parts_run_concurrently():
    barrier = threading.Barrier(3, timeout=5)
    result = run(OfflineAssessor(_blocking_parts(barrier)).assess(SAMPLE))
    assert set(result.parts) == {"fluency", "vocabulary", "grammar"} and not result.failed_parts


def test_a_failing_part_gives_a_partial_report_naming_it():
    barrier = threading.Barrier(3, timeout=5)
    result = run(OfflineAssessor(_blocking_parts(barrier, fail="grammar")).assess(SAMPLE))
    assert result.failed_parts == ["grammar"]
    assert result.errors == {"grammar": "RuntimeError: grammar exploded"}
    assert set(result.parts) == {"fluency", "vocabulary"}
    assert "could not assess your grammar" in result.summary
    md = render_markdown(result.model_dump(mode="json"))
    assert "Partial report" in md and "grammar exploded" in md


def test_job_raises_a_clear_error_only_when_every_part_fails():
    with pytest.raises(AssessmentFailed) as exc:
        run(job({"turns": [{"role": "interviewer", "text": "Hello?"}], "options": {"assessor": "offline"}}))
    msg = str(exc.value)
    assert msg.startswith("all assessment parts failed")
    assert all(f"{p}: NoSpeech" in msg for p in ("fluency", "vocabulary", "grammar"))


def test_job_returns_the_stable_json_shape(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # "auto" -> offline
    turns = [t.model_dump() for t in persona_turns(PERSONAS / "a2_hesitant.yaml")]
    result = run(job({"turns": turns, "options": {"assessor": "auto"}}))
    json.dumps(result)  # plain JSON
    assert result["assessor"] == "offline"
    assert result["summary"].startswith("Your English is around A2")
    assert result["overall"]["band"] == "A2" and isinstance(result["overall"]["score"], float)
    for part in result["parts"].values():
        assert {"band", "score", "metrics", "evidence", "proxies", "source", "fallback"} <= set(part)
    assert result["failed_parts"] == [] and result["errors"] == {}
    spoken = "{assessment.summary} ({assessment.overall.band})".format(assessment=_Attr(result))
    assert spoken.endswith("(A2)") and "{" not in spoken  # the keys the flow's templates use
    md = render_markdown(result)
    assert md.startswith("## Assessment") and "Proxies" in md and "Error, " in md


class _Attr:
    """Dot access over a dict, as the flow's templates use it."""

    def __init__(self, d: dict) -> None:
        self.__dict__.update({k: _Attr(v) if isinstance(v, dict) else v for k, v in d.items()})


def test_job_tolerates_odd_turns(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    turns = [
        {"role": "system", "text": "not assessed"},
        {"role": "candidate", "text": "I work as a nurse and I like it.", "start": "soon", "end": None},
        {"role": "candidate", "text": None},
        {"role": "interviewer", "text": "Thanks!", "end": 12.5, "item_id": "extra keys are fine"},
    ]
    result = run(job({"turns": turns}))
    assert result["words"] == 9 and not result["failed_parts"]
    assert any("No speech timing" in n for n in result["notes"])


def test_unknown_assessor_option_is_rejected():
    with pytest.raises(ValueError, match="unknown assessor"):
        make_assessor({"assessor": "psychic"}, env={})


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab yo um,.?!'-…\n")) | st.characters(), max_size=80))
def test_parts_never_crash_on_odd_text(text):
    for fn in OFFLINE_PARTS.values():
        try:
            part = fn([cand(text, 0.0, 1.0)])
        except NoSpeech:
            continue
        assert isinstance(part, Part) and 1.0 <= part.score <= 6.0


# --- model-based assessor against a local fake server --------------------------------------------


def _judgement(band: str) -> dict:
    content = {"band": band, "evidence": ["said \u201cI enjoy it\u201d"], "rationale": f"Looks {band}."}
    return {"choices": [{"message": {"role": "assistant", "content": json.dumps(content)}}]}


class FakeOpenAI:
    """A Chat Completions stand-in on 127.0.0.1; `reply(part, body)` -> (status, JSON-able) or
    None to hang until released."""

    def __init__(self, reply: Callable[[str, dict], Any]) -> None:
        self.reply = reply
        self.requests: list[tuple[dict, dict]] = []
        self.release = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((dict(self.headers), body))
                part = body["response_format"]["json_schema"]["name"].removesuffix("_judgement")
                answer = fake.reply(part, body)
                if answer is None:
                    fake.release.wait(10)  # the client has timed out long before
                    return
                status, payload = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _assert_no_key(*things: Any) -> None:
    for thing in things:
        text = thing if isinstance(thing, str) else json.dumps(thing, default=str)
        assert KEY not in text and "SECRET" not in text


def test_model_assessor_success_three_parallel_requests():
    barrier = threading.Barrier(3, timeout=5)  # the server answers only once all three arrived

    def reply(part: str, body: dict):
        barrier.wait()
        return 200, _judgement({"fluency": "B1", "vocabulary": "B2", "grammar": "B1"}[part])

    with FakeOpenAI(reply) as fake:
        assessor = ModelAssessor(KEY, base_url=fake.base_url, timeout_s=5)
        result = run(assessor.assess(SAMPLE))
    assert result.assessor == "model" and result.fallbacks == {}
    assert {p: r.band for p, r in result.parts.items()} == {"fluency": "B1", "vocabulary": "B2", "grammar": "B1"}
    assert all(r.source == "model" for r in result.parts.values())
    assert result.parts["vocabulary"].evidence[0] == "Looks B2."
    assert result.parts["fluency"].metrics["words_per_minute"] is not None  # offline measures kept
    headers, body = fake.requests[0]
    assert headers["Authorization"] == f"Bearer {KEY}"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert "I enjoy it because every day is different" in body["messages"][1]["content"]
    _assert_no_key(result.model_dump(mode="json"), repr(assessor))


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"choices": [{"message": {"content": "this is not JSON"}}]}, "malformed JSON"),
        (_judgement("Z9"), "schema mismatch"),
        ({"unexpected": True}, "malformed response"),
        (b"<html>oops</html>", "malformed response"),
    ],
)
def test_model_assessor_malformed_output_falls_back_to_offline(payload, reason):
    def reply(part: str, body: dict):
        return (200, payload) if part == "grammar" else (200, _judgement("C1"))

    with FakeOpenAI(reply) as fake:
        result = run(ModelAssessor(KEY, base_url=fake.base_url, timeout_s=5).assess(SAMPLE))
    grammar = result.parts["grammar"]
    assert grammar.source == "offline" and reason in grammar.fallback
    assert set(result.fallbacks) == {"grammar"} and reason in result.fallbacks["grammar"]
    assert result.parts["fluency"].source == "model" and result.parts["fluency"].band == "C1"
    assert grammar == OFFLINE_PARTS["grammar"](SAMPLE).model_copy(update={"fallback": grammar.fallback})
    assert "model failed" in render_markdown(result.model_dump(mode="json"))


def test_model_assessor_timeout_falls_back_to_offline():
    with FakeOpenAI(lambda part, body: None) as fake:  # never answers
        result = run(ModelAssessor(KEY, base_url=fake.base_url, timeout_s=0.3).assess(SAMPLE))
    assert set(result.fallbacks) == {"fluency", "vocabulary", "grammar"}
    assert all("timeout after 0.3 s" in r for r in result.fallbacks.values())
    assert all(p.source == "offline" for p in result.parts.values())
    _assert_no_key(result.model_dump(mode="json"))


def test_http_error_echoing_the_key_never_leaks_it():
    def reply(part: str, body: dict):
        return 401, {"error": {"message": f"Incorrect API key provided: {KEY}. Also sk-abc***cdef."}}

    with FakeOpenAI(reply) as fake:
        assessor = ModelAssessor(KEY, base_url=fake.base_url, timeout_s=5)
        result = run(assessor.assess(SAMPLE))
        assert all(r.startswith("model failed (HTTP 401") for r in result.fallbacks.values())
        _assert_no_key(result.model_dump(mode="json"), render_markdown(result.model_dump(mode="json")))
        # Everything fails (no candidate speech and a 401): the exception text is key-free too.
        with pytest.raises(AssessmentFailed) as exc:
            run(assessor.assess([Turn(role="interviewer", text="Hello?")]))
    _assert_no_key(str(exc.value), repr(exc.value))
    assert "HTTP 401" in str(exc.value) and "NoSpeech" in str(exc.value)


def test_job_uses_the_model_with_a_key_in_the_environment(monkeypatch):
    with FakeOpenAI(lambda part, body: (200, _judgement("B2"))) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/not-used")  # options win
        inputs = {"turns": [t.model_dump() for t in SAMPLE], "options": {"base_url": fake.base_url}}
        result = run(job(inputs))
    assert result["assessor"] == "model" and result["overall"]["band"] == "B2"
    _assert_no_key(result)


def test_model_requested_without_a_key_falls_back_everywhere():
    assessor = make_assessor({"assessor": "model"}, env={})
    result = run(assessor.assess(SAMPLE))
    assert result.assessor == "model"
    assert all("OPENAI_API_KEY is not set" in r for r in result.fallbacks.values())
    assert isinstance(result, Assessment) and not result.failed_parts
