"""The flow format: loading, every error with its position, the schema, `engine check`."""

from pathlib import Path

import pytest

from engine import flow as flowmod
from engine.cli import main
from engine.flow import json_schema
from engine.errors import FlowError

from helpers import FLOWS, flow_from

BROKEN = Path(__file__).parent / "broken_flows"

# One mistake per file; each must be reported exactly so, and nothing else.
EXPECTED = {
    "01_unknown_target": "14:17: unknown target state 'listne' (did you mean 'listen'?)",
    "02_unknown_event": "19:16: unknown event 'input.transcrpt' (did you mean 'input.transcript'?)",
    "03_yaml11_on_key": "19:9: key 'on' is read by YAML 1.1 as a boolean; quote it or use another name",
    "04_duplicate_key": "21:9: duplicate key 'target'",
    "05_missing_initial": "1:1: missing key 'initial'",
    "06_unknown_initial": "7:10: unknown initial state 'aks' (did you mean 'ask'?)",
    "07_no_final": "9:3: no final state: mark the state that ends the interview with `final: true`",
    "08_unreachable": "25:3: state 'lost' is unreachable from 'ask'",
    "09_no_timeout": "17:3: state 'listen' has no `after:` timeout, so it can stall (add one, or `wait: forever` to accept that)",
    "10_unknown_action": "11:9: unknown action 'respnd' (did you mean 'respond'?)",
    "11_unknown_guard": "20:16: unknown guard 'enough_answer'",
    "12_unknown_job_action": "12:16: unknown job 'assesment' (did you mean 'assessment'?); jobs are declared under `jobs:`",
    "13_unknown_template": "11:18: unknown template name '{assesment.summary}' (did you mean 'assessment'?)",
    "14_unknown_state_key": "12:5: unknown key 'transitons' (did you mean 'transitions'?)",
    "15_bad_duration": "16:17: not a duration: 'soon' (write e.g. 5s, 250ms, 2m)",
    "16_event_and_all": "13:9: a transition has either `event:` or `all:` (a join), not both or neither",
    "17_high_rate_event": "13:30: 'response.output_audio.delta' streams many times a second and cannot drive a transition",
    "18_unknown_tool": "19:16: unknown tool 'finsh' (did you mean 'tool.finish'?); tools are declared under session.tools",
    "19_final_with_transitions": "24:5: final state 'bye' has transitions; a final state ends the session",
    "20_yaml_syntax": "8:7: YAML: did not find expected ',' or ']'",
    "21_two_keys_action": "11:9: an action has exactly one key, got respond, log",
    "22_join_of_one": "13:14: `all:` joins two or more events; use `event:` for one",
    "23_unknown_job_event": "19:16: unknown job event 'job.asessment.done' (jobs: assessment) (did you mean 'job.assessment.done'?)",
    "24_template_not_name": "11:18: template '{1+1}' is not a name (write {assessment.summary})",
    "25_yaml11_yes_key": "25:5: key 'yes' is read by YAML 1.1 as a boolean; quote it or use another name",
    "26_unknown_job_declared": "7:3: unknown job 'transcribe'",
    "27_missing_instructions_file": "3:22: cannot use instructions file 'nowhere.md': no such file or directory",
    "28_missing_target_in_after": "16:9: missing key 'target'",
}


def test_every_broken_flow_is_covered():
    assert sorted(p.stem for p in BROKEN.glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_flow_reports_position_and_message(name, capsys):
    path = BROKEN / f"{name}.yaml"
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().out.strip() == f"{path}:{EXPECTED[name]}"
    with pytest.raises(FlowError) as info:
        flowmod.load(path)
    assert [f"{p.line}:{p.col}: {p.message}" for p in info.value.problems] == [EXPECTED[name]]


def test_example_flows_are_valid(capsys):
    flows = sorted(str(p) for p in FLOWS.glob("*.yaml") if not p.name.endswith(".test.yaml"))  # tests: their own
    assert main(["check", *flows]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.endswith(": ok") or ": warning: " in line for line in out), out
    for path in flows:
        assert flowmod.load(path).path == path


def test_check_reports_all_errors_at_once(tmp_path):
    bad = (BROKEN / "01_unknown_target.yaml").read_text().replace("event: input.transcript", "event: input.x")
    path = tmp_path / "two.yaml"
    path.write_text(bad)
    problems = flowmod.check(path)
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (14, "unknown target state 'listne'"), (19, "unknown event 'input.x'")]


def test_check_exit_codes(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_wait_forever_is_a_warning_not_an_error(tmp_path, capsys):
    text = (BROKEN / "09_no_timeout.yaml").read_text().replace("  listen:\n", "  listen:\n    wait: forever\n")
    path = tmp_path / "forever.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 0
    assert "warning: state 'listen' may wait forever" in capsys.readouterr().out


def test_beta_event_names_are_normalised_to_ga():
    text = (BROKEN / "01_unknown_target.yaml").read_text().replace("target: listne", "target: listen")
    text = text.replace("all: [response.done, playback.done]", "all: [response.audio_transcript.done, playback.done]")
    flow = flow_from(text)
    assert flow.states["ask"].transitions[0].events == ("response.output_audio_transcript.done", "playback.done")


def test_realtime_names_of_engine_aliases_are_accepted():
    text = (BROKEN / "02_unknown_event.yaml").read_text().replace(
        "input.transcrpt", "conversation.item.input_audio_transcription.completed")
    assert flow_from(text).states["listen"].transitions[0].events == ("input.transcript",)


def test_no_code_runs_from_yaml(tmp_path):
    path = tmp_path / "evil.yaml"
    rest = "initial: a\nstates: {a: {final: true}}\n"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n" + rest)
    problems = flowmod.check(path)
    assert [str(p) for p in problems] == [
        f"{path}:1:7: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed here"]
    path.write_text("name: !!python/name:os.system\n" + rest)
    assert ["could not determine a constructor" in p.message for p in flowmod.check(path)] == [True]


def test_durations():
    assert flowmod.parse_duration("250ms") == 0.25
    assert flowmod.parse_duration("2m") == 120
    assert flowmod.parse_duration(3) == 3.0
    assert flowmod.parse_duration("1h") == 3600
    assert flowmod.parse_duration("60min") == 3600
    assert flowmod.parse_duration("1e3") == 1000
    for bad in ("soon", "-1s", 0, True, float("nan"), float("inf"), 10**400, "1e400s", "5ms", "25h", -1, None, [1]):
        with pytest.raises(ValueError):
            flowmod.parse_duration(bad)


def test_instructions_file_is_read_beside_the_flow():
    flow = flowmod.load(FLOWS / "assessment.yaml")
    assert flow.session.instructions == (FLOWS / "interviewer.md").read_text()


def test_schema_forbids_unknown_keys():
    printed = json_schema()
    assert printed["$defs"]["State"]["additionalProperties"] is False
    assert "all" in printed["$defs"]["Transition"]["properties"]


def test_example_flow_declares_the_schema_for_editors():
    first = (FLOWS / "assessment.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=flow.schema.json"


def test_check_of_several_files_exits_with_the_worst(tmp_path, capsys):
    good, bad, missing = tmp_path / "good.yaml", BROKEN / "01_unknown_target.yaml", tmp_path / "missing.yaml"
    good.write_text((BROKEN / "01_unknown_target.yaml").read_text().replace("target: listne", "target: listen"))
    assert main(["check", str(good), str(bad)]) == 1
    assert main(["check", str(good), str(bad), str(missing)]) == 2
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{good}: ok", f"{bad}:{EXPECTED['01_unknown_target']}"] * 2
    assert out.err.splitlines() == [f"{missing}: no such file or directory"]
