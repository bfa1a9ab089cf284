"""`engine check` reports every problem in one run, in the author's words, and the graph checks."""

import re
from pathlib import Path

import pytest

from engine import flow as flowmod

MANY = Path(__file__).parent / "broken_flows" / "many"

# Several mistakes per file; every one must be reported, in one run, and nothing else.
EXPECTED_MANY = {
    "structure_and_names": [
        "9:11: min_answers (6) is more than max_answers (3), so this guard never holds",
        "10:12: a guard needs a condition: min_answers, max_answers or both",
        "15:9: unknown action 'respnd' (did you mean 'respond'?)",
        "16:9: action 'start' needs a value, e.g. `start: assessment`",
        "17:5: unknown key 'transitons' (did you mean 'transitions'?)",
        "24:16: unknown event 'input.transcrpt' (did you mean 'input.transcript'?)",
        "25:17: unknown target state 'byee' (did you mean 'bye'?)",
        "26:16: `event` is an event name, not 5",
        "29:17: not a duration: 'soon' (write e.g. 5s, 250ms, 2m)",
        "32:18: unknown template name '{assesment.summary}' (did you mean 'assessment'?)",
        "32:18: template '{1+1}' is not a name (write {assessment.summary})",
        "33:12: `final` is true or false, not 'maybe'",
        "34:3: state 'orphan' is unreachable from 'ask'",
        "34:11: a state is a mapping of enter/exit/transitions/after (and description, final, wait), not 'hello'",
    ],
    "session_block": [
        "3:15: a duration must be a finite time, not .nan",
        "5:22: instructions file '../../../etc/hostname' must stay inside the flow's folder (no '..')",
        "6:10: warning: unknown voice 'marine' (did you mean 'marin'?) (voices: alloy, ash, ballad, coral, echo, "
        "sage, shimmer, verse, marin, cedar)",
        "7:13: `turn_end` is 'committed' or 'speech_stopped', not 'commited' (did you mean 'committed'?)",
        "10:16: `threshold` is at most 1.0, not 2",
        "11:5: 'eagerness' is a setting of semantic_vad turn detection, not of server_vad",
        "12:5: unknown key 'silence_ms' (did you mean 'silence_duration_ms'?)",
        "13:50: unknown key 'lang' (did you mean 'language'?)",
        "19:26: tool 'finish' parameters: 'strin' is not a JSON Schema type (did you mean 'string'?)",
        "20:13: tool name 'has space' may hold only letters, digits, _ and - (at most 64): it becomes the event "
        "tool.<name>",
        "30:17: a duration must be a finite time, not .inf",
    ],
    "graph": [
        "28:16: warning: this reply waits for the candidate's transcript (the transcription delay, often 0.3-1.5 s) "
        "since it uses {last_answer}",
        "42:3: state 'ping' cannot reach a final state",
        "42:3: states 'ping' -> 'pong' -> 'ping' leave only by `after:` timeouts and none waits for an event: the "
        "session loops until max_duration (a livelock); give one of them a transition on an event",
        "44:18: template {last_answer} in state 'ping' may have no value: the path greet "
        "-[all(response.done, playback.done)]-> listen -[after 40s]-> ping reaches it without an input.transcript "
        "(the candidate's words), and the session would end there",
        "47:3: state 'pong' cannot reach a final state",
        "52:18: template {tool.reason} in state 'wrapup' may have no value: the path greet -[after 30s]-> wrapup "
        "reaches it without tool.finish (a tool call with that argument), and the session would end there",
        "52:18: template {assessment.summary} in state 'wrapup' may have no value: the path greet "
        "-[tool.finish]-> wrapup reaches it without job.assessment.done, and the session would end there",
        "58:3: state 'loop' is unreachable from 'greet'",
    ],
}


def shown(problems: list[flowmod.Problem]) -> list[str]:
    return [f"{p.line}:{p.col}: {'warning: ' if p.warning else ''}{p.message}" for p in problems]


def problems_of(text: str) -> list[str]:
    _, problems = flowmod.parse(text, "t.yaml")
    return shown(problems)


def messages(text: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in problems_of(text)]


def test_every_multi_mistake_flow_is_covered() -> None:
    assert sorted(p.stem for p in MANY.glob("*.yaml")) == sorted(EXPECTED_MANY)


@pytest.mark.parametrize("name", sorted(EXPECTED_MANY))
def test_every_mistake_is_reported_in_one_run(name: str) -> None:
    assert shown(flowmod.check(MANY / f"{name}.yaml")) == EXPECTED_MANY[name]


def test_the_shipped_flow_only_hears_about_waiting_for_transcripts() -> None:
    problems = flowmod.check(Path(__file__).parent.parent / "flows" / "assessment.yaml")
    assert all(p.warning and "input.committed" in p.message for p in problems)  # none once it moves on commit


# A small valid flow to plant mistakes in.
BASE = """\
name: t
session:
  tools:
    - name: finish
      parameters: {type: object, properties: {reason: {type: string}}, required: [reason]}
    - name: other
      parameters: {type: object, properties: {x: {type: string}}}
jobs:
  assessment: {timeout: 20s}
initial: ask
states:
  ask:
    enter:
      - respond
    transitions:
      - event: tool.finish
        target: done_asking
      - all: [response.done, playback.done]
        target: listen
    after:
      - {delay: 30s, target: bye}
  listen:
    transitions:
      - event: input.committed
        target: ask
    after:
      - {delay: 30s, target: bye}
  done_asking:
    enter:
      - tool_result: {ok: true}
      - start: assessment
      - respond: 'Thank you.'
    transitions:
      - all: [response.done, job.assessment.done]
        target: summary
    after:
      - {delay: 25s, target: bye}
  summary:
    enter:
      - respond: 'Result: {assessment.summary}. Reason: {tool.reason}.'
    transitions:
      - event: response.done
        target: bye
    after:
      - {delay: 30s, target: bye}
  bye:
    final: true
"""


def test_the_base_flow_is_valid() -> None:
    flow, problems = flowmod.parse(BASE, "t.yaml")
    assert problems == [] and flow is not None


# Every state reaches a final state.


def test_a_state_that_cannot_reach_a_final_state() -> None:
    text = BASE.replace("""      - event: input.committed
        target: ask
    after:
      - {delay: 30s, target: bye}""", """      - event: input.committed
        target: listen
    after:
      - {delay: 30s, target: listen}""")
    assert problems_of(text) == ["22:3: state 'listen' cannot reach a final state"]


def test_an_unreachable_state_is_not_also_said_to_be_stuck() -> None:
    text = BASE + "  island:\n    transitions: [{event: response.done, target: island}]\n    after: [{delay: 1s, " \
                  "target: island}]\n"
    assert messages(text) == ["state 'island' is unreachable from 'ask'"]


# Livelocks.


def test_a_state_that_only_loops_on_its_own_timeout_is_a_livelock() -> None:
    text = BASE.replace("      - {delay: 30s, target: bye}\n  listen:", "      - {delay: 30s, target: nag}\n  listen:")
    text += "  nag:\n    enter: [respond]\n    after: [{delay: 5s, target: nag}]\n"
    assert messages(text) == [
        "state 'nag' cannot reach a final state",
        "state 'nag' leaves only by its own `after:` back into itself and none waits for an event: the session "
        "loops until max_duration (a livelock); give one of them a transition on an event"]


def test_the_first_timeout_to_fire_decides_the_cycle() -> None:
    text = BASE.replace("      - {delay: 30s, target: bye}\n  listen:", "      - {delay: 30s, target: nag}\n  listen:")
    text += "  nag:\n    after: [{delay: 9s, target: bye}, {delay: 1s, target: nag}]\n"
    assert [m for m in messages(text) if "livelock" in m] == [
        "state 'nag' leaves only by its own `after:` back into itself and none waits for an event: the session "
        "loops until max_duration (a livelock); give one of them a transition on an event"]
    # the longer timeout fires first instead: no loop
    text = text.replace("[{delay: 9s, target: bye}, {delay: 1s, target: nag}]", "[{delay: 1s, target: bye}, "
                                                                                   "{delay: 9s, target: nag}]")
    assert problems_of(text) == []


def test_a_timeout_cycle_that_waits_for_an_event_somewhere_is_not_a_livelock() -> None:
    # listen waits for input.committed; the nudge loop between listen and nudge is a patient interviewer
    text = BASE.replace("    after:\n      - {delay: 30s, target: bye}\n  done_asking:",
                        "    after:\n      - {delay: 30s, target: nudge}\n  done_asking:")
    text += "  nudge:\n    enter: [respond]\n    after: [{delay: 10s, target: listen}]\n"
    assert problems_of(text) == []


# Template values on every path.


def test_a_tool_argument_used_where_no_tool_call_came_first() -> None:
    text = BASE.replace("      - {delay: 25s, target: bye}", "      - {delay: 25s, target: summary}")
    assert messages(text) == [
        "template {assessment.summary} in state 'summary' may have no value: the path ask -[tool.finish]-> "
        "done_asking -[after 25s]-> summary reaches it without job.assessment.done, and the session would end "
        "there"]
    text = BASE.replace("      - {delay: 30s, target: bye}\n  listen:", "      - {delay: 30s, target: summary}\n"
                                                                         "  listen:")
    assert messages(text) == [
        "template {assessment.summary} in state 'summary' may have no value: the path ask -[after 30s]-> summary "
        "reaches it without job.assessment.done, and the session would end there",
        "template {tool.reason} in state 'summary' may have no value: the path ask -[after 30s]-> summary reaches "
        "it without tool.finish (a tool call with that argument), and the session would end there"]


def test_a_later_tool_call_replaces_the_arguments_of_the_first() -> None:
    text = BASE.replace("""      - all: [response.done, job.assessment.done]
        target: summary""", """      - all: [response.done, job.assessment.done]
        target: summary
      - event: tool.other
        target: summary""")
    assert messages(text) == [
        "template {assessment.summary} in state 'summary' may have no value: the path ask -[tool.finish]-> "
        "done_asking -[tool.other]-> summary reaches it without job.assessment.done, and the session would end "
        "there",
        "template {tool.reason} in state 'summary' may have no value: the path ask -[tool.finish]-> done_asking "
        "-[tool.other]-> summary reaches it without tool.finish (a tool call with that argument), and the session "
        "would end there"]


def test_an_argument_no_tool_declares() -> None:
    text = BASE.replace("Reason: {tool.reason}", "Reason: {tool.why}")
    assert messages(text) == ["template {tool.why} in state 'summary': no tool declares a parameter 'why' (under "
                              "parameters.properties)"]


def test_a_value_brought_by_the_transition_itself_is_there() -> None:
    text = BASE.replace("""      - event: tool.finish
        target: done_asking""", """      - event: tool.finish
        target: done_asking
        actions:
          - log: 'finished because {tool.reason}'""")
    assert problems_of(text) == []


def test_the_initial_state_has_nothing_yet() -> None:
    text = BASE.replace("    enter:\n      - respond\n    transitions:\n      - event: tool.finish",
                        "    enter:\n      - respond: 'Last time: {last_answer}'\n    transitions:\n"
                        "      - event: tool.finish")
    assert messages(text) == [
        "template {last_answer} in state 'ask' may have no value: the interview starts in 'ask' without an "
        "input.transcript (the candidate's words), and the session would end there"]


def test_last_answer_after_a_transcript_on_every_path() -> None:
    text = BASE.replace("      - event: input.committed\n        target: ask",
                        "      - event: input.transcript\n        target: echo")
    text += "  echo:\n    enter: [{log: 'heard {last_answer}'}]\n    after: [{delay: 1s, target: bye}]\n"
    assert problems_of(text) == []


# Replies that wait for the transcript (issue 13).


def test_a_reply_on_the_transcript_waits_for_the_transcription() -> None:
    text = BASE.replace("event: input.committed", "event: input.transcript")
    assert problems_of(text) == [
        "24:16: warning: this reply waits for the candidate's transcript (the transcription delay, often 0.3-1.5 "
        "s); move on `input.committed` to reply as soon as the turn ends"]
    assert flowmod.parse(text, "t.yaml")[0] is not None  # a warning: the flow still runs


def test_a_transcript_transition_that_does_not_reply_is_fine() -> None:
    text = BASE.replace("event: input.committed\n        target: ask", "event: input.transcript\n        target: bye")
    assert problems_of(text) == []


# Structural errors neither hide nor cause other findings.


def test_a_broken_state_does_not_hide_mistakes_elsewhere() -> None:
    text = BASE.replace("    transitions:\n      - event: input.committed", "    transitons:\n      - event: input.x")
    text = text.replace("target: summary\n", "target: sumary\n")
    assert messages(text) == [
        "unknown key 'transitons' (did you mean 'transitions'?)",
        "unknown target state 'sumary' (did you mean 'summary'?)"]


@pytest.mark.parametrize("broken", [
    ("    after:\n      - {delay: 30s, target: bye}\n  done_asking:", "    aftr:\n      - {delay: 30s, target: bye}\n"
                                                                     "  done_asking:"),
    ("  bye:\n    final: true", "  bye:\n    final: true\n    finall: true"),
    ("  bye:\n    final: true", "  bye:\n    final: 3"),
    ("        target: listen\n", "        target: [listen]\n"),
    ("      - all: [response.done, playback.done]\n        target: listen",
     "      - all: [response.done, playback.done]\n        event: response.done\n        target: listen"),
])
def test_a_structural_error_is_the_only_finding(broken: tuple[str, str]) -> None:
    found = messages(BASE.replace(*broken))
    assert len(found) == 1, found


def test_all_bad_templates_in_one_string() -> None:
    text = BASE.replace("'Thank you.'", "'Thank {you}, {1+1}, {assesment.x} and {answers}'")
    assert messages(text) == [
        "unknown template name '{you}'",
        "template '{1+1}' is not a name (write {assessment.summary})",
        "unknown template name '{assesment.x}' (did you mean 'assessment'?)"]


NO_CLASS_NAMES = re.compile(r"instance of|_Action|Input should|pydantic|dict\[|list\[|Model|validation error")


@pytest.mark.parametrize("broken", [
    ("  bye:\n    final: true", "  bye: hello"),
    ("  bye:\n    final: true", "  bye: [final]"),
    ("      - respond\n", "      - 5\n"),
    ("      - respond\n", "      - [respond]\n"),
    ("      - respond\n", "      - respnd\n"),
    ("      - respond\n", "      - {respond: 5}\n"),
    ("      - respond\n", "      - {respond: {instructons: x}}\n"),
    ("      - respond\n", "      - {truncate: false}\n"),
    ("      - respond\n", "      - {cancel_response: 1}\n"),
    ("      - respond\n", "      - {tool_result: [1, 2]}\n"),
    ("      - respond\n", "      - {log: null}\n"),
    ("    transitions:\n      - event: tool.finish", "    transitions:\n      - tool.finish\n      - event: tool.x"),
    ("    transitions:\n      - event: tool.finish", "    transitions: {event: tool.finish}\n    x:\n      - event: a"),
    ("      - {delay: 30s, target: bye}\n  listen:", "      - 30s\n  listen:"),
    ("name: t\n", "name: [t]\n"),
    ("name: t\n", ""),
    ("initial: ask\n", "initial: {ask: 1}\n"),
    ("jobs:\n  assessment: {timeout: 20s}\n", "jobs: [assessment]\n"),
    ("jobs:\n  assessment: {timeout: 20s}\n", "jobs:\n  assessment: 20s\n"),
    ("session:\n", "guards: {g: 6}\nsession:\n"),
    ("session:\n", "guards: {g: {min_answers: six}}\nsession:\n"),
    ("session:\n", "session:\n  turn_detection: {type: vad}\n"),
    ("session:\n", "session:\n  turn_detection: {threshold: 0.5}\n"),
    ("session:\n", "session:\n  turn_detection: server_vad\n"),
    ("session:\n", "session:\n  transcription: whisper\n"),
    ("session:\n", "session:\n  transcription: {model: 5}\n"),
    ("session:\n", "session:\n  voice: [a]\n"),
    ("    - name: other\n", "    - other\n"),
    ("    - name: other\n", "    - name: 7\n"),
    ("      parameters: {type: object, properties: {x: {type: string}}}", "      parameters: [x]"),
    ("  tools:\n", "  tools: finish\n  x:\n"),
])
def test_no_message_names_an_internal_class(broken: tuple[str, str]) -> None:
    found = messages(BASE.replace(*broken))
    assert found, "the mistake is reported"
    assert not [m for m in found if NO_CLASS_NAMES.search(m)], found


# The session block.


def test_turn_detection_and_transcription_stay_plain_dicts() -> None:
    flow, _ = flowmod.parse(BASE, "t.yaml")
    assert flow is not None and flow.session.turn_end == "committed" and flow.max_duration == 3600.0
    assert flow.session.turn_detection == {"type": "server_vad", "create_response": False,
                                           "interrupt_response": True, "silence_duration_ms": 600}
    text = BASE.replace("session:\n", "max_duration: 45min\nsession:\n  turn_end: speech_stopped\n"
                                      "  turn_detection: {type: semantic_vad, eagerness: high}\n"
                                      "  transcription: {model: gpt-4o-transcribe, language: de, prompt: Namen}\n")
    flow, problems = flowmod.parse(text, "t.yaml")
    assert problems == [] and flow is not None
    assert flow.max_duration == 2700.0 and flow.session.turn_end == "speech_stopped"
    assert flow.session.turn_detection == {"type": "semantic_vad", "eagerness": "high", "create_response": False}
    assert flow.session.transcription == {"model": "gpt-4o-transcribe", "language": "de", "prompt": "Namen"}
    text = BASE.replace("session:\n", "session:\n  turn_detection: null\n  transcription: null\n")
    flow, problems = flowmod.parse(text, "t.yaml")
    assert flow is not None and flow.session.turn_detection is None and flow.session.transcription is None


def test_server_vad_knobs_are_checked() -> None:
    text = BASE.replace("session:\n", "session:\n  turn_detection:\n    type: server_vad\n    threshold: -0.1\n"
                                      "    prefix_padding_ms: 300.5\n    silence_duration_ms: '500'\n"
                                      "    idle_timeout_ms: 0\n    create_response: maybe\n")
    assert problems_of(text) == [
        "5:16: `threshold` is at least 0.0, not -0.1",
        "6:24: `prefix_padding_ms` is a whole number, not 300.5",
        "7:26: `silence_duration_ms` is a whole number, not '500'",
        "8:22: `idle_timeout_ms` is at least 1, not 0",
        "9:22: `create_response` is true or false, not 'maybe'"]


def test_create_response_true_is_a_warning() -> None:
    text = BASE.replace("session:\n", "session:\n  turn_detection: {type: server_vad, create_response: true}\n")
    assert messages(text) == ["warning: create_response: true lets the server answer on its own and collide with "
                              "the flow's responses"]


def test_no_transcripts_without_transcription() -> None:
    text = BASE.replace("session:\n", "session:\n  transcription: null\n").replace(
        "event: input.committed\n        target: ask", "event: input.transcript\n        target: bye")
    assert messages(text) == ["warning: no input.transcript ever arrives: session.transcription is null"]


def test_tools() -> None:
    text = BASE.replace("    - name: other\n      parameters: {type: object, properties: {x: {type: string}}}",
                        "    - name: finish\n      parameters: {type: array, items: 5}")
    assert problems_of(text) == [
        "6:13: tool 'finish' is declared twice",
        "7:19: tool 'finish': `parameters` is the JSON Schema of the arguments, with `type: object`",
        "7:40: tool 'finish' parameters: 5 is not of type 'object', 'boolean'"]


def test_a_timeout_longer_than_the_session() -> None:
    text = BASE.replace("name: t\n", "name: t\nmax_duration: 20s\n")
    assert "warning: this timeout never fires: the session ends at max_duration (20s) first" in messages(text)


def test_a_timeout_of_a_day_and_a_bit_is_refused_and_a_day_is_not() -> None:
    assert flowmod.parse(BASE.replace("{delay: 30s, target: bye}", "{delay: 24h, target: bye}"), "t")[0]
    assert messages(BASE.replace("delay: 25s", "delay: 24h 1s")) == [
        "not a duration: '24h 1s' (write e.g. 5s, 250ms, 2m)"]


def test_a_broken_action_does_not_hide_a_missing_final_state() -> None:
    text = BASE.replace("  bye:\n    final: true\n", "  bye:\n    enter: [respnd]\n    after: [{delay: 1s, target: "
                                                     "ask}]\n")
    assert messages(text) == [
        "no final state: mark the state that ends the interview with `final: true`",
        "unknown action 'respnd' (did you mean 'respond'?)"]
    # but a misspelt `final` might be the final state: no echo then
    text = BASE.replace("  bye:\n    final: true\n", "  bye:\n    finall: true\n")
    assert messages(text) == ["unknown key 'finall' (did you mean 'final'?)"]
