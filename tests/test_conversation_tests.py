"""Conversation tests as data: `engine test`, its file format, its expectations, offline sessions.

The shipped test files (flows/*.test.yaml, tests/flows/*.test.yaml) run here as `engine test`
from the repository root. Test files that must fail are written to tmp_path, never beside the
flows, so a plain `engine test` in the repository passes. Every session is offline: in this
process or a worker, on virtual time, so no test waits on a clock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import FLOWS, ROOT

from engine import flow as flowmod
from engine.cli import CHECKERS, SCHEMAS, file_kind
from engine.cli import main as engine
from engine.testing import format as fmt
from engine.testing.expect import Observed, check
from engine.testing.offline import run_offline
from engine.testing.runner import discover
from engine.trace import read

sys.path.insert(0, str(ROOT / "tools"))
import render_flow  # noqa: E402

SHIPPED = sorted([*FLOWS.glob("*.test.yaml"), *(ROOT / "tests" / "flows").glob("*.test.yaml"),
                  *(ROOT / "engine" / "starter").glob("*.test.yaml")])  # what `engine init` writes
ASSESSMENT = FLOWS / "assessment.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def suite(*tests: str, flow: Path = ASSESSMENT) -> str:
    """A test file for `flow` with these tests (each a YAML mapping written on one line)."""
    return f"flow: {flow}\ntests:\n" + "".join(f"  - {t}\n" for t in tests)


def results(out: str) -> list[tuple[str, str]]:
    """(PASS or FAIL, test name) of each result line."""
    return re.findall(r"^(PASS|FAIL) (.+) \(\S+, [\d.]+ s\)$", out, re.M)


# The shipped tests -----------------------------------------------------------------------------------


def test_plain_engine_test_in_the_repository_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`engine test` from the root: finds every shipped test file, runs them in worker processes,
    all pass; the JUnit file says the same."""
    junit = tmp_path / "junit.xml"
    monkeypatch.chdir(ROOT)
    status = engine(["test", "--out", str(tmp_path / "runs"), "--junit", str(junit), "-j", "2"])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    names = [t.name for path in SHIPPED for t in fmt.load(path)]
    assert results(out) == [("PASS", name) for name in names]
    assert re.search(rf"^{len(names)} passed, 0 failed in [\d.]+ s \(2 workers\)$", out, re.M)
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (str(len(names)), "0", "0")
    assert [s.get("name") for s in root.iter("testsuite")] == [str(p.relative_to(ROOT)) for p in SHIPPED]
    assert [c.get("name") for c in root.iter("testcase")] == names
    assert not list(root.iter("failure"))
    assert len(names) >= 17 and {"clean interview", "the model forgets the tool"} <= set(names)


def test_the_shipped_tests_are_valid_and_checked_by_engine_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(SHIPPED) == 6 and all(file_kind(p) == "test" for p in SHIPPED)
    assert engine(["check", *map(str, SHIPPED)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{p}: ok" for p in SHIPPED]


# Tests that can fail: the shipped flow, mutated --------------------------------------------------------


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    """flows/assessment.yaml, its instructions and its tests, copied to tmp_path."""
    for name in ("assessment.yaml", "interviewer.md", "assessment.test.yaml"):
        shutil.copy(FLOWS / name, tmp_path / name)
    return tmp_path


def mutate(folder: Path, old: str, new: str) -> None:
    flow = folder / "assessment.yaml"
    text = flow.read_text()
    assert text.count(old) == 1, old
    flow.write_text(text.replace(old, new))


def engine_test(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    # -j 1: in this process, where the assessment is warmed up already (a worker would start cold).
    status = engine(["test", str(folder / "assessment.test.yaml"), "--out", str(folder / "runs"), "-j", "1", *extra])
    out, err = capsys.readouterr()
    return status, out, err


def failure(out: str, name: str) -> str:
    """The line under `FAIL name`: its first unmet expectation."""
    match = re.search(rf"^FAIL {re.escape(name)} \(.*\n {{5}}(.*)$", out, re.M)
    assert match, out
    return match[1]


TOOL_TRANSITION = """    transitions:
      - event: tool.trigger_assessment
        target: ack
      - all: [response.done, playback.done]
        target: listening
      - event: speech.started
        guard: speaking
        actions: [truncate]
        target: listening
    after:
      - {delay: 30s, target: listening}"""


def test_without_the_tool_transition_the_tool_path_tests_fail(copied: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mutate(copied, TOOL_TRANSITION, TOOL_TRANSITION.replace("      - event: tool.trigger_assessment\n"
                                                            "        target: ack\n", ""))
    status, out, _ = engine_test(copied, capsys, "-k", "clean", "-k", "assessment fails", "-k", "forgets")
    assert status == 1
    # The tool call now finds no transition: the flow waits, nudges and ends without the tool.
    assert failure(out, "clean interview") == (
        "path: expected greeting -> listening -> asking -> listening -> asking -> listening -> asking -> listening "
        "-> asking -> ack -> summary -> goodbye -> done; got greeting -> listening -> asking -> listening -> asking "
        "-> listening -> asking -> listening -> asking -> listening -> nudge -> asking -> listening -> "
        "ack_without_tool -> summary -> goodbye -> done (off the expected path at state 10, listening)")
    assert failure(out, "the assessment fails").endswith(
        "-> ack_without_tool -> summary_fallback -> goodbye -> done (no ack where the expected path needs it)")
    assert results(out) == [("FAIL", "clean interview"), ("FAIL", "the assessment fails"),
                            ("PASS", "the model forgets the tool")]  # it never needed the tool
    assert re.search(r"^     session: .*/runs/assessment/clean-interview/session$", out, re.M)


def test_a_swapped_target_is_caught(copied: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mutate(copied, "        guard: enough_answers\n        target: ack_without_tool\n      - event: input.committed\n"
                   "        target: asking\n",
           "        guard: enough_answers\n        target: asking\n      - event: input.committed\n"
           "        target: ack_without_tool\n")
    status, out, _ = engine_test(copied, capsys, "-k", "clean", "-k", "forgets", "-k", "silent")
    assert status == 1
    assert failure(out, "clean interview").endswith(
        "; got greeting -> listening -> ack_without_tool -> summary -> goodbye -> done (off the expected path at "
        "state 3, ack_without_tool)")
    assert failure(out, "the model forgets the tool") == "report.counts.answers: expected 6; got 1"
    assert results(out) == [("FAIL", "clean interview"), ("PASS", "a silent candidate is nudged, then left"),
                            ("FAIL", "the model forgets the tool")]  # the silent candidate never answers at all


def test_a_dropped_timeout_is_refused_or_caught(copied: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nudge_timeout = "        target: asking\n    after:\n      - {delay: 40s, target: goodbye}\n"
    mutate(copied, nudge_timeout, "        target: asking\n")
    status, out, err = engine_test(copied, capsys)
    # The no-stall rule refuses it before anything runs.
    assert status == 2 and out == "" and not (copied / "runs").exists()
    line = (copied / "assessment.yaml").read_text().splitlines().index("  nudge:") + 1
    assert err.splitlines()[0] == (
        f"{copied / 'assessment.test.yaml'}:8:7: flow 'assessment.yaml' does not load: {copied / 'assessment.yaml'}"
        f":{line}:3: state 'nudge' has no `after:` timeout, so it can stall (add one, or `wait: forever` to accept "
        "that)")
    # The author opts out of the rule; the silent candidate's test still sees the stall.
    mutate(copied, "    description: The candidate said nothing for a while; ask again, once.\n",
           "    description: The candidate said nothing for a while; ask again, once.\n    wait: forever\n")
    status, out, _ = engine_test(copied, capsys, "-k", "silent", "-k", "clean")
    assert status == 1
    assert failure(out, "a silent candidate is nudged, then left") == (
        "path: expected greeting -> listening -> nudge -> goodbye -> done; got greeting -> listening -> nudge (no "
        "goodbye where the expected path needs it)")
    assert "(and 4 more unmet: outcome, transcript.interviewer.says, report.counts.timeouts, budgets.session)" in out
    assert results(out) == [("PASS", "clean interview"), ("FAIL", "a silent candidate is nudged, then left")]


# Each expectation, passing and failing ----------------------------------------------------------------


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Observed:
    """One clean session of the assessment (the default persona), as the expectations see it."""
    ran = run_offline(flowmod.load(ASSESSMENT), tmp_path_factory.mktemp("clean"), session_id="session")
    assert ran.result.ok, ran.result.reason
    return Observed.of(ran.folder)


def unmet(seen: Observed, **expect: Any) -> list[str]:
    """The unmet expectations of `expect` (as written in a test's `expect:`), in order."""
    return [str(u) for u in check(fmt.Expect.model_validate(expect), list(expect), seen)]


CLEAN_PATH = ["greeting", "listening", "asking", "listening", "asking", "listening", "asking", "listening", "asking",
              "ack", "summary", "goodbye", "done"]


def test_path(clean: Observed) -> None:
    assert clean.path == CLEAN_PATH
    for good in (CLEAN_PATH, ["greeting", "...", "done"], ["...", "ack", "summary", "goodbye", "done"], ["..."],
                 ["greeting", "...", "listening", "asking", "...", "ack", "...", "done", "..."]):
        assert unmet(clean, path=good) == [], good
    got = " -> ".join(CLEAN_PATH)
    assert unmet(clean, path=["greeting", "nudge", "..."]) == [
        f"path: expected greeting -> nudge -> ...; got {got} (off the expected path at state 2, listening)"]
    assert unmet(clean, path=["...", "ack_without_tool", "..."]) == [
        f"path: expected ... -> ack_without_tool -> ...; got {got} (no ack_without_tool where the expected path "
        f"needs it)"]
    assert unmet(clean, path=CLEAN_PATH[:-1]) == [  # the path is matched whole: `...` to leave the end open
        f"path: expected {' -> '.join(CLEAN_PATH[:-1])}; got {got} (off the expected path at state 13, done)"]


def test_visited_and_not_visited(clean: Observed) -> None:
    assert unmet(clean, visited=["ack", "summary"], not_visited=["nudge", "ack_without_tool"]) == []
    assert unmet(clean, visited=["nudge"], not_visited=["ack"]) == [
        f"visited: expected a visit to 'nudge'; got never entered (path: {' -> '.join(CLEAN_PATH)})",
        f"not_visited: expected no visit to 'ack'; got entered as state 10 of the path ({' -> '.join(CLEAN_PATH)})"]


def test_tool_calls(clean: Observed) -> None:
    assert clean.calls == [("trigger_assessment", {"reason": "simulated reason"})]
    for good in ({"name": "trigger_assessment"}, {"name": "trigger_assessment", "times": 1},
                 {"name": "trigger_assessment", "arguments": {"reason": "any"}, "times": {"min": 1, "max": 1}},
                 {"name": "trigger_assessment", "arguments": {"reason": ["other", "simulated reason"]}},
                 {"name": "trigger_assessment", "arguments": {"reason": "simulated reason"}}):
        assert unmet(clean, tool_calls=[good]) == [], good
    made = 'the calls made: trigger_assessment({"reason": "simulated reason"})'
    assert unmet(clean, tool_calls=[{"name": "trigger_assessment", "arguments": {"reason": "enough"}}]) == [
        f'tool_calls: expected at least one call of trigger_assessment(reason="enough"); got 0 ({made})']
    assert unmet(clean, tool_calls=[{"name": "trigger_assessment", "arguments": {"missing": "any"}}]) == [
        f"tool_calls: expected at least one call of trigger_assessment(missing=any value); got 0 ({made})"]
    assert unmet(clean, tool_calls=[{"name": "trigger_assessment", "times": 0}]) == [
        f"tool_calls: expected no call of trigger_assessment(); got 1 ({made})"]
    assert unmet(clean, tool_calls=[{"name": "trigger_assessment", "times": {"min": 2}}]) == [
        f"tool_calls: expected at least 2 calls of trigger_assessment(); got 1 ({made})"]


def test_transcript(clean: Observed) -> None:
    good = {"interviewer": {"says": ["Goodbye, and good luck!", "/around B[12] overall/", "/GOODBYE/i"],
                            "never_says": ["Say:", "/^Tell/"]},
            "candidate": {"says": ["My name is Alex"], "never_says": ["Goodbye"]}}
    assert unmet(clean, transcript=good) == []
    bad = {"interviewer": {"says": ["Farewell"], "never_says": ["/good luck/"]}, "candidate": {"says": ["/^Hello/"]}}
    says, never, candidate = unmet(clean, transcript=bad)
    assert says.startswith("transcript.interviewer.says: expected 'Farewell'; got not in any of its 8 turns: "
                           "\"Hello, I'm Sam. Could you tell me a little about yourself?\"; ") and says.endswith(" ...")
    goodbye = clean.report["turns"][-1]
    assert never == (f"transcript.interviewer.never_says: expected never '/good luck/'; got said at "
                     f"{goodbye['t']:.2f} s: 'Goodbye, and good luck!'")
    assert candidate.startswith("transcript.candidate.says: expected '/^Hello/'; got not in any of its 4 turns: ")


def test_final_state_and_outcome(clean: Observed) -> None:
    assert unmet(clean, final_state="done", outcome="completed") == []
    assert unmet(clean, final_state=["goodbye", "done"], outcome=["completed", "completed_degraded"]) == []
    assert unmet(clean, outcome="completed_degraded", final_state=["goodbye", "nudge"]) == [
        "outcome: expected completed_degraded; got completed (reached final state 'done')",
        "final_state: expected one of goodbye, nudge; got done (reached final state 'done')"]


def test_outputs(clean: Observed, tmp_path: Path) -> None:
    assert unmet(clean, outputs=list(fmt.OUTPUTS)) == []
    copy = tmp_path / "runs" / "session"
    shutil.copytree(clean.folder, copy)
    (copy / "report.md").unlink()
    assert unmet(Observed.of(copy), outputs=["report.md", "report.json", "sessions.sqlite"]) == [
        f"outputs: expected report.md; got no {copy / 'report.md'}",
        f"outputs: expected sessions.sqlite; got no {copy.parent / 'sessions.sqlite'}"]
    # A session that left nothing readable says so before anything else.
    nothing = tmp_path / "nothing"
    assert unmet(Observed.of(nothing), outcome="completed") == [
        f"outputs: expected a readable report.json; got none in {nothing}",
        f"outputs: expected a readable trace.jsonl; got none in {nothing}",
        "outcome: expected completed; got None (no report)"]


def test_report_fields(clean: Observed) -> None:
    good = {"results.assessment.overall.band": ["B1", "B2"], "counts.answers": 4, "counts.collisions": {"max": 0},
            "results.assessment.overall.score": {"min": 1, "max": 6}, "turns.0.role": "interviewer",
            "ok": True, "reason": "any", "turns.9.text": "any"}
    assert unmet(clean, report=good) == []
    band = clean.report["results"]["assessment"]["overall"]["band"]
    assert unmet(clean, report={"results.assessment.overall.band": ["A1", "A2"], "counts.answers": {"min": 5},
                                "ok": 1, "results.verdict": "any", "turns.99.role": "any", "ok.value": 1}) == [
        f'report.results.assessment.overall.band: expected one of ["A1", "A2"]; got "{band}"',
        "report.counts.answers: expected at least 5; got 4",
        "report.ok: expected 1; got true",  # a boolean is not a number
        "report.results.verdict: expected any value; got no such field in report.json (results has assessment)",
        f"report.turns.99.role: expected any value; got no such field in report.json (turns is "
        f"{json.dumps(clean.report['turns'])[:117]}...)",
        "report.ok.value: expected 1; got no such field in report.json (ok is true)"]


def test_responses_and_collisions(clean: Observed) -> None:
    assert unmet(clean, responses=8, collisions=0) == []
    assert unmet(clean, responses={"min": 7, "max": 9}) == []
    assert unmet(clean, responses={"max": 5}, collisions=1) == [
        "responses: expected at most 5; got 8 responses asked for",
        "collisions: expected 1; got 0 (responses refused because one was in progress)"]


def test_budgets(clean: Observed) -> None:
    assert unmet(clean, budgets={"dead_air": "700ms", "answer_to_reply": "0.7s", "session": "3min"}) == []
    (start, first_words), = clean.silences()
    replies = clean.replies()
    end, heard = max(replies, key=lambda r: r[1] - r[0])
    assert (start, len(replies)) == (0.0, 4) and 0.2 <= first_words <= 0.6  # the simulated model's latency
    assert unmet(clean, budgets={"dead_air": "100ms", "answer_to_reply": "100ms", "session": "1min"}) == [
        f"budgets.dead_air: expected at most 0.100 s; got {first_words:.3f} s of silence from 0.00 s to "
        f"{first_words:.2f} s",
        f"budgets.answer_to_reply: expected at most 0.100 s; got {heard - end:.3f} s after answer "
        f"{replies.index((end, heard)) + 1} (its turn ended at {end:.2f} s, the reply was heard from {heard:.2f} s)",
        f"budgets.session: expected at most 60.0 s; got {clean.report['duration_s']:.1f} s"]


def test_expectations_are_checked_in_the_order_written_collisions_first(clean: Observed) -> None:
    tests = fmt.load(write(clean.folder.parent / "order.test.yaml", suite(
        "{name: t, expect: {outcome: error, path: [nudge]}}",
        "{name: u, expect: {final_state: nudge, collisions: 2, outcome: error}}")))
    assert [t.order for t in tests] == [("collisions", "outcome", "path"), ("final_state", "collisions", "outcome")]
    assert [u.expectation for u in check(tests[1].case.expect, tests[1].order, clean)] == [
        "final_state", "collisions", "outcome"]


def test_engine_job_faults(tmp_path: Path) -> None:
    flow = flowmod.load(FLOWS / "seed.yaml")

    def job_events(job_faults: dict[str, Any]) -> list[tuple[float, str, Any]]:
        ran = run_offline(flow, tmp_path / str(job_faults), job_faults=job_faults, jobs={"assessment": instant},
                          session_id="s")
        lines = list(read(ran.folder / "trace.jsonl"))
        starts = [(line["t"], "start", None) for line in lines if line.get("out", {}).get("effect") == "StartJob"]
        ends = [(line["t"], line["in"]["engine"]["type"], line["in"]["engine"].get("data")) for line in lines
                if line.get("in", {}).get("engine", {}).get("type", "").startswith("job.")]
        return starts + ends

    async def instant(inputs: Any) -> Any:
        return {"summary": "Your English is around B1.", "overall": {"band": "B1"}}

    assert job_events({}) == [(0.0, "start", None), (0.0, "job.assessment.done", {"result": instant_result()})]
    assert job_events({"assessment": 3.0}) == [(0.0, "start", None), (3.0, "job.assessment.done",
                                                                       {"result": instant_result()})]
    assert job_events({"assessment": "fail"}) == [(0.0, "start", None), (0.0, "job.assessment.failed", {
        "error": "RuntimeError: the job failed (a test's job fault)"})]
    hang = job_events({"assessment": "hang"})
    assert hang[0] == (0.0, "start", None) and all(t >= 8.0 for t, _, _ in hang[1:])  # never done before the timeout


def instant_result() -> dict[str, Any]:
    return {"summary": "Your English is around B1.", "overall": {"band": "B1"}}


# The format and its errors --------------------------------------------------------------------------


def test_engine_schema_test_is_the_shipped_schema_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert SCHEMAS["test"] == "engine.testing.format:json_schema" and CHECKERS["test"] == "engine.testing.format:check"
    assert engine(["schema", "--test"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == fmt.json_schema()
    assert json.loads((FLOWS / "test.schema.json").read_text()) == printed, \
        "run: engine schema --test > flows/test.schema.json"
    jsonschema.Draft202012Validator.check_schema(printed)


def test_every_field_of_the_schema_has_a_description() -> None:
    schema = fmt.json_schema()
    missing = [f"{name}.{key}" for name, d in [("", schema), *schema["$defs"].items()]
               for key, prop in d.get("properties", {}).items() if not prop.get("description")]
    missing += [name for name, d in schema["$defs"].items() if not d.get("description")]
    assert missing == [] and schema["title"] == "engine conversation test" and schema["description"]


SCHEMA_REFUSES = [
    "flow: a.yaml\ntests: []\n",
    "flow: a.yaml\ntests: [{name: x, expect: {}, mood: calm}]\n",
    "flow: a.yaml\ntests: [{name: x, expect: {responses: {least: 2}}}]\n",
    "flow: a.yaml\ntests: [{name: x, expect: {outcome: finished}}]\n",
    "flow: a.yaml\ntests: [{name: x, expect: {outputs: [report.pdf]}}]\n",
    "flow: a.yaml\ntests: [{name: x, seed: '1', expect: {}}]\n",
    "flow: a.yaml\ntests: [{name: x, jobs: {assessment: slow}, expect: {}}]\n",
    "flow: a.yaml\ntests: [{name: x, scenario: {candidate: {mood: calm}}, expect: {}}]\n",
    "tests: [{name: x, expect: {}}]\n",
]


def test_the_shipped_tests_pass_the_schema_and_mistakes_do_not() -> None:
    validator = jsonschema.Draft202012Validator(fmt.json_schema())
    from engine.source import read_yaml

    for path in SHIPPED:
        assert list(validator.iter_errors(read_yaml(path).data)) == [], path
    for text in SCHEMA_REFUSES:
        from engine.source import parse_yaml

        assert list(validator.iter_errors(parse_yaml(text).data)), text


FLOW = str(ASSESSMENT)
BAD_FILES = [
    # (the test file, every problem `engine check` prints for it: line:col: message)
    (f"flow: {FLOW}\ntests:\n  - {{name: a, expext: {{}}}}\n",
     ["3:5: missing key 'expect'", "3:15: unknown key 'expext' (did you mean 'expect'?)"]),
    (f"flow: {FLOW}\ntests:\n  - name: a\n    expect: {{path: [greeting, asking, ...], visited: [aks]}}\n",
     ["4:55: no state 'aks' in flow 'english-assessment' (did you mean 'ack'?)"]),
    (f"flow: {FLOW}\ntests:\n  - name: a\n    expect: {{final_state: [done, gone], not_visited: [done]}}\n"
     "  - {name: A, expect: {visited: [done]}}\n",
     ["4:34: no state 'gone' in flow 'english-assessment' (did you mean 'done'?)",
      "5:12: two tests are named alike: 'a' and 'A'"]),
    # A structural error in one test hides nothing in the others.
    (f"flow: {FLOW}\ntests:\n  - name: a\n    faults: shuffle,duplicate\n    jobs: {{asessment: fail, other: 3s}}\n"
     "    expect: {tool_calls: [{name: trigger}]}\n  - {name: b, expect: {responses: {min: 3, max: 1}}}\n",
     ["4:13: faults: unknown fault 'shuffle' (did you mean 'shuffle_done'?)",
      "5:12: no job 'asessment' in flow 'english-assessment' (did you mean 'assessment'?)",
      "5:29: no job 'other' in flow 'english-assessment' (its jobs: assessment)",
      "6:34: no tool 'trigger' in flow 'english-assessment' (its tools: trigger_assessment)",
      "7:35: tests.1.expect.responses: min (3) is more than max (1)"]),
    (f"flow: {FLOW}\ntests:\n  - name: a\n    jobs: {{assessment: slow}}\n    expect:\n"
     "      transcript: {interviewer: {says: ['/(unclosed/']}}\n      budgets: {dead_air: soon}\n"
     "      outcome: finished\n      outputs: [report.pdf]\n",
     ["4:24: tests.0.jobs.assessment: a job fault is fail, hang or a duration such as 3s, not 'slow'",
      "6:41: tests.0.expect.transcript.interviewer.says.0: /(unclosed/ is not a regular expression: missing ), "
      "unterminated subpattern at position 0",
      "7:27: tests.0.expect.budgets.dead_air: not a duration: 'soon' (write e.g. 5s, 250ms, 2m)",
      "8:16: tests.0.expect.outcome: Input should be 'completed', 'completed_degraded', 'not_completed', "
      "'interrupted' or 'error'",
      "9:17: tests.0.expect.outputs.0: Input should be 'trace.jsonl', 'report.json', 'report.md', 'transcript.md' "
      "or 'sessions.sqlite'"]),
    (f"flow: {FLOW}\ntests:\n  - name: a\n    persona: nobody\n    expect: {{}}\n"
     "  - name: b\n    persona: default\n    scenario: {name: x}\n    expect: {}\n"
     "  - name: c\n    scenario:\n      candidate: {answers: [{silence: true, text: hi}]}\n    expect: {}\n",
     ["4:14: persona: no file 'nobody' beside this test and no bundled persona of that name (bundled: a2_hesitant, "
      "c1_fluent, default)",
      "8:15: give `persona` or `scenario`, not both",
      "12:29: tests.2.scenario.candidate.answers.0: an answer has exactly one of text, silence, leave; got text, "
      "silence"]),
    ("flow: missing.yaml\ntests: [{name: a, expect: {}}]\n",
     ["1:7: flow: cannot read 'missing.yaml': no such file or directory"]),
    (f"flow: {ROOT / 'tests/broken_flows/01_unknown_target.yaml'}\ntests: [{{name: a, expect: {{}}}}]\n",
     [f"1:7: flow '{ROOT / 'tests/broken_flows/01_unknown_target.yaml'}' does not load: "
      f"{ROOT / 'tests/broken_flows/01_unknown_target.yaml'}:14:17: unknown target state 'listne' (did you mean "
      f"'listen'?)"]),
    ("- a list\n", ["1:1: a test file is a mapping with `flow` and `tests`"]),
    ("flow: x.yaml\ntests: {a: 1}\n", ["1:7: flow: cannot read 'x.yaml': no such file or directory",
                                        "2:8: tests: should be a list"]),
    (f"flow: {FLOW}\ntests:\n  - name: a\n    expect: 5\n", ["4:13: tests.0.expect: should be a mapping"]),
    (f"flow: {FLOW}\ntests:\n  - name: a\n    seed: yes\n    expect: {{}}\n",
     ["4:11: 'yes' is read by YAML 1.1 as a boolean; write true or false, or quote it for text"]),
]


@pytest.mark.parametrize(("text", "problems"), BAD_FILES)
def test_a_bad_test_file_gets_every_problem_with_its_position(text: str, problems: list[str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "bad.test.yaml", text)
    assert engine(["check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{path}:{p}" for p in problems]
    with pytest.raises(fmt.TestFileError) as info:
        fmt.load(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:{p}" for p in problems]
    # engine test refuses it before running anything: exit 2, the same lines.
    assert engine(["test", str(path), "--out", str(tmp_path / "runs")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[:-1] == [f"{path}:{p}" for p in problems]
    assert not (tmp_path / "runs").exists()


def test_personas_and_scenarios_resolve_beside_the_test_file(tmp_path: Path) -> None:
    write(tmp_path / "mine.persona.yaml", "name: Mine\nextends: a2_hesitant\ncandidate: {words_per_minute: 70}\n")
    path = write(tmp_path / "t.test.yaml", suite(
        "{name: bundled, persona: c1_fluent, expect: {}}", "{name: a file, persona: mine.persona.yaml, expect: {}}",
        "{name: inline, scenario: {extends: mine.persona.yaml, name: Inline}, expect: {}}",
        "{name: default, expect: {}}"))
    personas = [t.persona for t in fmt.load(path)]
    assert [p.name for p in personas] == ["Daniel (fluent C1)", "Mine", "Inline", "Alex (B1, steady)"]
    assert personas[1].candidate.words_per_minute == personas[2].candidate.words_per_minute == 70


# engine test: exit codes, lines, JUnit, drawing a failure, determinism ---------------------------------


def test_a_failing_test_its_lines_junit_and_drawing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "mixed.test.yaml", suite(
        "{name: passes, expect: {outcome: completed}}",
        "{name: fails, persona: a2_hesitant, expect: {report: {results.assessment.overall.band: [C1, C2]}, "
        "outcome: not_completed}}"))
    junit = tmp_path / "ci" / "junit.xml"
    assert engine(["test", str(path), "--out", str(tmp_path / "runs"), "-j", "1", "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / "mixed" / "fails" / "session"
    assert results(out) == [("PASS", "passes"), ("FAIL", "fails")]
    assert out.splitlines()[2:] == [
        '     report.results.assessment.overall.band: expected one of ["C1", "C2"]; got "A2"',
        "     (and 1 more unmet: outcome)",
        f"     session: {folder}",
    ] + out.splitlines()[5:] and re.search(r"^1 passed, 1 failed in [\d.]+ s$", out, re.M)
    draw = f"draw the first failure: python tools/render_flow.py {ASSESSMENT} --trace {folder / 'trace.jsonl'}"
    assert out.splitlines()[-1] == draw
    cases = ET.parse(junit).getroot().findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["passes", "fails"] and cases[0].find("failure") is None
    failed = cases[1].find("failure")
    assert failed is not None and failed.get("message") == (
        'report.results.assessment.overall.band: expected one of ["C1", "C2"]; got "A2"')
    assert failed.text is not None and failed.text.splitlines()[-1] == f"session: {folder}"
    # The failed session, drawn: the path it took is marked on the flow.
    assert render_flow.main([str(ASSESSMENT), "--trace", str(folder / "trace.jsonl")]) == 0
    drawing = capsys.readouterr().out
    assert "#1" in drawing and render_flow.TAKEN in drawing
    lines = list(read(folder / "trace.jsonl"))
    assert render_flow.overlay(lines).visited == {"greeting", "listening", "asking", "ack", "summary", "goodbye",
                                                  "done"}


def test_a_session_that_cannot_finish_fails_its_test_and_the_others_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import engine.testing.offline as offline

    real = offline.run_offline

    def deadlocks(flow: Any, out: Path, **options: Any) -> Any:
        if "broken" in str(out):
            raise RuntimeError("every task is waiting and no timer is scheduled")
        return real(flow, out, **options)

    monkeypatch.setattr(offline, "run_offline", deadlocks)
    path = write(tmp_path / "x.test.yaml", suite("{name: broken, expect: {}}", "{name: fine, expect: {}}",
                                                 flow=FLOWS / "seed.yaml"))
    junit = tmp_path / "junit.xml"
    assert engine(["test", str(path), "--out", str(tmp_path / "runs"), "-j", "1", "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert results(out) == [("FAIL", "broken"), ("PASS", "fine")]
    assert "     the session did not finish: RuntimeError: every task is waiting and no timer is scheduled" in out
    root = ET.parse(junit).getroot()
    assert (root.get("failures"), root.get("errors")) == ("0", "1")
    error = root.find("testsuite/testcase/error")
    assert error is not None and error.get("message", "").startswith("the session did not finish: RuntimeError")


def test_exit_codes_for_what_is_not_a_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert engine(["test", str(ASSESSMENT)]) == 2
    assert capsys.readouterr().err == f"{ASSESSMENT}: not a conversation test (their names end in .test.yaml)\n" \
                                      "engine test: 1 problem(s) in the test files; no test was run\n"
    assert engine(["test", str(tmp_path / "gone.test.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'gone.test.yaml'}: no such file or folder\n")
    assert engine(["test", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"engine test: no conversation tests (*.test.yaml) under {tmp_path}\n"
    assert engine(["test", str(FLOWS / "seed.test.yaml"), "-k", "no such", "-k", "test"]) == 2
    assert capsys.readouterr().err == ("engine test: no conversation tests (*.test.yaml) named like 'no such' or "
                                       f"'test' under {FLOWS / 'seed.test.yaml'}\n")
    write(tmp_path / "bin.test.yaml", "").write_bytes(b"\xff\xfe\x00")
    assert engine(["test", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"{tmp_path / 'bin.test.yaml'}: is UTF-16 text; save it as UTF-8"
    with pytest.raises(SystemExit):
        engine(["test", "-j", "0"])
    assert "expected a whole number of at least 1" in capsys.readouterr().err


def test_discovery_skips_hidden_folders_runs_virtualenvs_and_node_modules(tmp_path: Path) -> None:
    for name in (".git/a.test.yaml", "runs/b.test.yaml", "env/c.test.yaml", "node_modules/d.test.yaml",
                 "flows/e.test.yaml", "f.test.yml", "flows/g.yaml", "deep/er/h.test.yaml"):
        write(tmp_path / name, "")
    write(tmp_path / "env" / "pyvenv.cfg", "home = /usr\n")
    files, problems = discover([tmp_path])
    assert files == [tmp_path / "deep/er/h.test.yaml", tmp_path / "f.test.yml", tmp_path / "flows/e.test.yaml"]
    assert problems == []
    assert tmp_path / "runs" / "b.test.yaml" in discover([tmp_path / "runs" / "b.test.yaml", tmp_path])[0]  # named


def test_the_same_test_gives_the_same_trace_in_parallel_workers(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Two workers run the same faulty session at once (each loading the machine for the other),
    and this process runs it a third time: three identical traces."""
    same = ("persona: a2_hesitant, seed: 7, faults: 'duplicate,shuffle_done,garbage', jobs: {assessment: fail}, "
            "expect: {outcome: completed}")
    path = write(tmp_path / "twice.test.yaml", suite(f"{{name: one, {same}}}", f"{{name: two, {same}}}"))
    assert engine(["test", str(path), "--out", str(tmp_path / "runs"), "-j", "2"]) == 0
    assert results(capsys.readouterr().out) == [("PASS", "one"), ("PASS", "two")]
    here = run_offline(flowmod.load(ASSESSMENT), tmp_path / "here", persona="a2_hesitant", seed=7,
                       faults="duplicate,shuffle_done,garbage", job_faults={"assessment": "fail"}, session_id="session")

    def trace(folder: Path) -> list[str]:
        lines = (folder / "trace.jsonl").read_text().splitlines()
        meta = json.loads(lines[0])["meta"]
        assert meta["session"] == "session" and os.path.isabs(meta["flow"])
        return lines[1:]  # the meta line has the wall-clock start

    one, two = (trace(tmp_path / "runs" / "twice" / name / "session") for name in ("one", "two"))
    assert one == two == trace(here.folder)
    assert len(one) > 1000 and any('"garbage"' in line or "skipped a bad frame" in line for line in one)
