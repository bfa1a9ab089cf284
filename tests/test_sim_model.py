"""The simulated model's decisions (engine.sim.model) and generated tool arguments (engine.sim.arguments):
pure functions, tested without a socket. docs/personas.md states the same rules; these tests are
their examples."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from engine.sim.arguments import generate_arguments
from engine.sim.model import CHECK_IN, EXTRA_QUESTION, Decision, Model, Turn, speech_for
from engine.sim.scenario import ACKNOWLEDGEMENT, CLOSING, Interviewer

QUESTIONS = ["Where do you live?", "What do you do?", "Tell me about your last holiday."]
SCORE = {
    "type": "function",
    "name": "score_answer",
    "parameters": {
        "type": "object",
        "properties": {
            "level": {"type": "string", "enum": ["B1", "B2", "C1"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "comment": {"type": "string"},
        },
        "required": ["level", "score"],
    },
}
NOTE = {"type": "function", "name": "note", "parameters": {"type": "object", "properties": {}}}


def model(**interviewer: Any) -> Model:
    interviewer.setdefault("questions", QUESTIONS)
    interviewer.setdefault("tool_calls", [])
    return Model(Interviewer.model_validate(interviewer))


def say(m: Model, instructions: str | None = None, **turn: Any) -> Decision:
    return m.decide(Turn(instructions=instructions, session_instructions=turn.pop("session", "You are Sam."), **turn))


# ---------------------------------------------------------------------------------------------------
# Speech


@pytest.mark.parametrize(
    ("instructions", "spoken"),
    [
        ('Say: "Goodbye, and good luck!"', "Goodbye, and good luck!"),
        ('Thank them. Then say “See you soon.” and "Bye."', "See you soon. Bye."),
        ("Say: Thanks for coming today.", "Thanks for coming today."),
        ("Introduce yourself as Robin from Acme in one sentence, then ask question 1.",
         "Hello, I'm Robin from Acme. Where do you live?"),
        ("Welcome the candidate and introduce yourself.", "Hello, and welcome. I'm Sam."),
        ("Ask the second question.", "What do you do?"),
        ("Ask question 3.", "Tell me about your last holiday."),
        ("Ask the next question.", "Where do you live?"),
        ("Gently ask whether the candidate heard the question, and repeat it in simpler words.",
         f"{CHECK_IN} Let me repeat the question. Where do you live?"),
        ("Thank the candidate and say goodbye.", "Thank you. Goodbye."),
        ("Apologise for the delay.", "I'm sorry about that."),
        ("Ask the candidate to wait a moment.", "One moment, please."),  # a request, not a question
        ("Please wait.", "One moment, please."),
        ("Acknowledge the answer briefly.", ACKNOWLEDGEMENT),
        ("Wrap up the interview politely.", "Goodbye."),
        ("Explain the rules of the test.", "Let me explain."),
        ("Move on to the next topic.", "Let me move on."),
        ("Tell the candidate their result kindly.", "Let me tell you."),
        ("You are in the closing phase now.", "All right."),
    ],
)
def test_instructions_become_speech(instructions: str, spoken: str) -> None:
    decision = say(model(), instructions)
    assert decision.text == spoken
    assert instructions not in decision.text  # never the instruction read aloud


def test_speech_for_reports_acts_in_order_each_once() -> None:
    text, acts = speech_for("Thank the candidate, then thank them again and ask question 2.")
    assert text is None and acts == [("thank", None), ("ask", 2)]
    assert speech_for('Ignore "this" and "that".') == ("this that", [])


def test_without_instructions_the_questions_then_the_closing_line() -> None:
    m = model(closing="That is all.")
    first = say(m, session="You are Dana, a recruiter at Initech.")
    assert first == Decision("Hello, I'm Dana. Where do you live?", None, True)
    assert say(m).text == "What do you do?"  # no greeting twice
    assert say(m).text == "Tell me about your last holiday."
    assert say(m) == Decision("That is all.", None, False)


def test_greeting_from_the_scenario_or_none() -> None:
    assert say(model(greeting="Hi there!"), session="").text == "Hi there! Where do you live?"
    assert say(model(greeting=""), session="").text == "Where do you live?"
    assert say(model(name="Kim"), session="Be kind.").text == "Hello, I'm Kim. Where do you live?"
    assert say(model(), session="Be kind.").text == "Hello. Where do you live?"
    assert say(model(), session="You are Robin from Acme Corp, a recruiter.").text.startswith(
        "Hello, I'm Robin from Acme Corp.")


def test_after_a_tool_output_a_bare_response_acknowledges() -> None:
    m = model()
    say(m)
    assert say(m, after_tool_output=True) == Decision(ACKNOWLEDGEMENT, None, False)
    assert say(m).text == "What do you do?"  # and then goes on with the questions
    quoted = say(m, 'Say "Thanks, your feedback is on its way."', after_tool_output=True)
    assert quoted.text == "Thanks, your feedback is on its way."  # instructions still win


def test_a_question_mark_makes_the_candidate_answer() -> None:
    m = model()
    assert say(m, 'Say "What is your name?"').asks
    assert not say(m, 'Say "Goodbye."').asks
    assert say(m, "Ask the next question.").asks  # the scenario's question, even without a '?'
    assert say(m, "Ask question 3.").asks and m.asked == 3
    assert say(m, 'Say "Good. Now tell me about your favourite meal."').asks  # a request
    assert not say(m, 'Say "Thank you. Give me a moment while I prepare your feedback."').asks


def test_questions_run_out() -> None:
    m = model(questions=["Only one?"])
    assert say(m, "Ask the next question.").text == "Only one?"
    assert say(m, "Ask the next question.").text == EXTRA_QUESTION
    assert say(m).text == CLOSING


def test_an_idle_timeout_response_checks_in_and_repeats() -> None:
    m = model()
    say(m)
    assert say(m, idle=True) == Decision(f"{CHECK_IN} Let me repeat the question. Where do you live?", None, True)


# ---------------------------------------------------------------------------------------------------
# Tool calls


def call_of(decision: Decision) -> tuple[str, dict[str, Any]] | None:
    return None if decision.call is None else (decision.call.name, json.loads(decision.call.arguments))


def test_after_answers_calls_the_first_declared_tool_once_with_its_line() -> None:
    m = model(tool_calls=[{"after_answers": 2, "say": "Thanks, that is all."}])
    tools = (SCORE, NOTE)
    say(m, tools=tools)
    m.hear("I live in Lyon.")
    assert say(m, tools=tools).call is None
    m.hear("I sell bicycles.")
    decision = say(m, tools=tools)
    assert decision.text == "Thanks, that is all." and not decision.asks
    assert call_of(decision) == ("score_answer", {"level": "B1", "score": 3, "comment": "simulated comment"})
    m.hear("More.")
    assert say(m, tools=tools).call is None  # times: 1


def test_a_call_without_say_is_a_function_call_only() -> None:
    m = model(tool_calls=[{"tool": "note", "after_answers": 0}])
    decision = say(m, tools=(SCORE, NOTE))
    assert decision.text == "" and call_of(decision) == ("note", {})


def test_cue_words_call_after_an_answer_that_mentions_them() -> None:
    m = model(tool_calls=[{"tool": "note", "cue": ["refund", "money back"], "times": 2}])
    tools = (NOTE,)
    m.hear("My order was late.")
    assert say(m, tools=tools).call is None
    m.hear("I want my Money back.")
    assert call_of(say(m, tools=tools)) == ("note", {})
    assert say(m, tools=tools).call is None  # the same answer does not call twice
    m.hear("Refunds are fine.")  # whole words only: "Refunds" is not "refund"
    assert say(m, tools=tools).call is None
    m.hear("A refund, please.")
    assert call_of(say(m, tools=tools)) == ("note", {})


def test_times_and_again_after() -> None:
    per_answer = model(tool_calls=[{"tool": "score_answer", "after_answers": 1, "times": 2,
                                    "arguments": [{"score": 2}, {"score": 5}]}])  # fmt: skip
    tools = (SCORE,)
    per_answer.hear("one")
    assert call_of(say(per_answer, tools=tools))[1]["score"] == 2  # type: ignore[index]
    assert say(per_answer, tools=tools).call is None  # waits for the next answer
    per_answer.hear("two")
    assert call_of(say(per_answer, tools=tools))[1]["score"] == 5  # type: ignore[index]
    per_answer.hear("three")
    assert say(per_answer, tools=tools).call is None
    duplicate = model(tool_calls=[{"tool": "note", "after_answers": 0, "times": 2, "again_after": "response"}])
    assert [say(duplicate, tools=(NOTE,)).call is not None for _ in range(3)] == [True, True, False]


def test_tool_choice_none_required_and_named() -> None:
    rules = [{"tool": "score_answer", "after_answers": 0, "arguments": {"comment": "fixed"}}]
    assert say(model(tool_calls=rules), tools=(SCORE,), tool_choice="none").call is None
    assert call_of(say(model(), tools=(SCORE, NOTE), tool_choice="required"))[0] == "score_answer"  # type: ignore[index]
    named = say(model(), tools=(SCORE, NOTE), tool_choice={"type": "function", "name": "note"})
    assert call_of(named) == ("note", {})
    assert call_of(say(model(), tools=(SCORE, NOTE), tool_choice="note")) == ("note", {})  # a bare name too
    forced = say(model(tool_calls=rules), tools=(SCORE,), tool_choice={"type": "function", "name": "score_answer"})
    assert call_of(forced)[1]["comment"] == "fixed"  # type: ignore[index]
    assert say(model(), tools=(), tool_choice="required").call is None  # nothing declared: nothing to call
    assert say(model(tool_calls=[{"tool": "missing", "after_answers": 0}]), tools=(SCORE,)).call is None


def test_scripted_responses_win() -> None:
    rules = [{"after_answers": 0}]
    m = model(tool_calls=rules, responses=[
        {"response": 1, "say": "I can't do that.", "skip_tools": True},
        {"response": 2, "fail": "rate_limit"},
        {"response": 4, "skip_tools": True},
    ])  # fmt: skip
    assert say(m, "Ask question 1.", tools=(NOTE,), tool_choice="required") == Decision("I can't do that.", None, False)
    assert say(m, tools=(NOTE,)) == Decision("", None, False, "rate_limit")
    assert call_of(say(m, tools=(NOTE,))) == ("note", {})  # response 3: the rule is still due
    m2 = model(tool_calls=[{"after_answers": 0}], responses=[{"response": 1, "skip_tools": True}])
    assert say(m2, tools=(NOTE,)).call is None and say(m2, tools=(NOTE,)).call is not None


# ---------------------------------------------------------------------------------------------------
# Generated arguments


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"level": {"type": "string", "enum": ["x", "y"]}}}, {"level": "x"}),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}}}, {"n": 5}),
        ({"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3}}},
         {"n": 1}),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}}, {"n": 7}),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9, "multipleOf": 4}}},
         {"n": 8}),
        ({"type": "object", "properties": {"x": {"type": "number", "minimum": 0, "maximum": 1}}}, {"x": 0.5}),
        ({"type": "object", "properties": {"ok": {"type": "boolean"}, "none": {"type": "null"}}}, {"ok": True, "none": None}),
        ({"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                           "mail": {"type": "string", "format": "email"}}},
         {"when": "2025-01-15", "mail": "candidate@example.com"}),
        ({"type": "object", "properties": {"code": {"type": "string", "minLength": 30, "maxLength": 32}}},
         {"code": "simulated code" + "x" * 16}),
        ({"type": "object", "properties": {"c": {"const": 3}, "d": {"type": "string", "default": "dflt"}}},
         {"c": 3, "d": "dflt"}),
        ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}}},
         {"tags": ["simulated tag", "simulated tag"]}),
        ({"type": "object", "properties": {"who": {"type": "object", "properties": {"name": {"type": "string"},
                                                                              "age": {"type": "integer"}}}}},
         {"who": {"name": "simulated name", "age": 1}}),
        ({"type": "object", "properties": {"p": {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": 4}]}}},
         {"p": 4}),
        ({"type": "object", "properties": {"p": {"type": ["null", "string"]}}}, {"p": "simulated p"}),
        ({"type": "object", "properties": {"p": {"$ref": "#/$defs/level"}},
          "$defs": {"level": {"type": "string", "enum": ["A2", "B1"]}}}, {"p": "A2"}),
        ({"type": "object", "properties": {"p": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                                                           {"properties": {"b": {"type": "boolean"}}}]}}},
         {"p": {"a": 1, "b": True}}),
        ({"type": "object", "properties": {"levels": {"type": "array", "uniqueItems": True, "minItems": 2,
                                                      "items": {"enum": ["A1", "A2", "B1"]}}}},
         {"levels": ["A1", "A2"]}),
        ({"type": "string"}, {}),
        (None, {}),
    ],
)
def test_generated_arguments(schema: Any, expected: dict[str, Any]) -> None:
    arguments = generate_arguments(schema)
    assert arguments == expected
    if isinstance(schema, dict) and schema.get("type") == "object":
        jsonschema.validate(arguments, schema)


def test_generated_arguments_are_bounded_on_recursive_schemas() -> None:
    node = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    arguments = generate_arguments(node)
    depth = 0
    while isinstance(arguments, dict) and arguments.get("child") is not None:
        arguments, depth = arguments["child"], depth + 1
    assert 1 < depth < 30


# ---------------------------------------------------------------------------------------------------
# Any input: never an exception, never the instructions read aloud

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_WORDS = st.sampled_from(["ask", "the", "candidate", "question", "2", "thank", "introduce", "yourself", "as", "Robin",
                          "say:", '"', "“", "then", "and", ",", ".", "repeat", "wait", "goodbye", "please", "kindly",
                          "record", "tool", "whether", "to", "\n", "again", "first", "Say", "welcome"])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=30).map(" ".join), st.booleans(), st.sampled_from(["auto", "none", "required"]))
def test_any_instructions_give_speech_and_never_the_instructions(instructions: str, after_output: bool, choice: str) -> None:
    m = model(tool_calls=[{"cue": ["candidate"]}])
    m.hear("the candidate")
    decision = say(m, instructions, tools=(SCORE,), tool_choice=choice, after_tool_output=after_output)
    assert isinstance(decision.text, str) and (decision.text or decision.call is not None)
    if '"' not in instructions and "“" not in instructions and "say:" not in instructions.lower():
        words = instructions.split()
        if len(words) >= 4:
            assert " ".join(words) not in decision.text
    if choice == "none":
        assert decision.call is None


_SCHEMAS = st.recursive(
    st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null")])
    | st.builds(lambda lo, hi: {"type": "integer", "minimum": lo, "maximum": hi}, st.integers(-5, 5), st.integers(-5, 5))
    | st.builds(lambda e: {"enum": e}, st.lists(st.integers() | st.text(max_size=3), max_size=3))
    | st.sampled_from([{"type": "string", "format": f} for f in ("date", "email", "uuid", "nonsense")])
    | st.just({"$ref": "#/nowhere"}) | st.just({}) | st.just({"type": ["null", "integer"]}),
    lambda inner: st.builds(lambda props: {"type": "object", "properties": props},
                            st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=3))
    | st.builds(lambda items, n: {"type": "array", "items": items, "minItems": n}, inner, st.integers(0, 3))
    | st.builds(lambda a: {"anyOf": a}, st.lists(inner, max_size=3))
    | st.builds(lambda a: {"allOf": a}, st.lists(inner, max_size=2)),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_SCHEMAS)
def test_any_schema_gives_json_arguments(schema: dict[str, Any]) -> None:
    arguments = generate_arguments({"type": "object", "properties": {"x": schema}})
    json.dumps(arguments)  # always serialisable
    assert set(arguments) == {"x"}
