"""The command line itself: --version, help text everywhere, shell completion from the parser,
`engine init` (what it writes, that it works at once, that it never overwrites unasked)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from engine import cli
from engine.scaffold import STARTER, files

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


# -- --version and help -----------------------------------------------------------------------------


def test_version_is_the_installed_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"engine {version('engine')}\n"


def test_every_command_and_every_option_has_help() -> None:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    missing = [name for name, text in helps.items() if not text]
    for name, command in _commands().items():
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help:  # (argparse.SUPPRESS: hidden on purpose, e.g. an option only tests use)
                missing.append(f"engine {name} {'/'.join(action.option_strings) or action.dest}".replace("  ", " "))
    assert not missing, f"no help text: {missing}"
    assert {"run", "check", "sim", "replay", "coverage", "schema", "chat", "init", "completion"} <= set(helps)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_prints_and_exits_0(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "engine", *([command] if command else []), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: engine") and not proc.stderr


# -- shell completion --------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_completion_is_generated_from_the_parser(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for name, command in _commands().items():
        assert name in script
        for action in command._actions:
            for option in action.option_strings:  # tcsh lists long options without their dashes
                assert (option.lstrip("-") if shell == "tcsh" else option) in script, (shell, name, option)
    if shutil.which(shell):
        check = subprocess.run([shell, "-n"] if shell != "tcsh" else [shell, "-n", "-f"], input=script,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def _bash_complete(words: list[str], script: str) -> list[str]:
    line = " ".join(words)
    program = f"""
{script}
COMP_WORDS=({" ".join(f"'{w}'" for w in words)}); COMP_CWORD={len(words) - 1}
COMP_LINE='{line}'; COMP_POINT={len(line)}; COMPREPLY=()
_shtab_engine engine '{words[-1]}' '{words[-2]}'
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(["bash", "--norc", "--noprofile"], input=program, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sorted(filter(None, proc.stdout.splitlines()))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_options_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["completion", "bash"])
    script = capsys.readouterr().out
    assert _bash_complete(["engine", "ch"], script) == ["chat", "check"]
    assert _bash_complete(["engine", "init", "--"], script) == ["--example", "--force", "--help"]
    assert _bash_complete(["engine", "run", "--audio", ""], script) == ["auto", "device", "none", "wav"]
    assert _bash_complete(["engine", "completion", ""], script) == ["bash", "tcsh", "zsh"]


# -- engine init -------------------------------------------------------------------------------------


def _paths(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("  ") and not line.startswith("  engine")]


def test_init_writes_a_flow_that_checks_and_runs_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "new"
    assert cli.main(["init", str(folder)]) == 0
    written = _paths(capsys.readouterr().out)
    names = sorted(Path(p).name for p in written)
    assert names == sorted(["interview.yaml", "interviewer.md", "candidate.persona.yaml", "interview.test.yaml",
                            "flow.schema.json", "persona.schema.json"]
                           + (["test.schema.json"] if "test" in cli.SCHEMAS else []))
    assert sorted(p.name for p in folder.iterdir()) == names
    # Each modeline names a schema written beside it, the one `engine schema` prints.
    for name, kind in [("interview.yaml", "flow"), ("candidate.persona.yaml", "persona")]:
        assert (folder / name).read_text().splitlines()[0] == f"# yaml-language-server: $schema={kind}.schema.json"
        assert json.loads((folder / f"{kind}.schema.json").read_text()) == cli._import(cli.SCHEMAS[kind])()

    checked = [folder / "interview.yaml", folder / "candidate.persona.yaml"]
    checked += [folder / "interview.test.yaml"] if "test" in cli.CHECKERS else []
    assert cli.main(["check", *map(str, checked)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{p}: ok" for p in checked]

    for persona in ([], ["--persona", str(folder / "candidate.persona.yaml")]):
        code = cli.main(["run", str(folder / "interview.yaml"), "--speed", "10", "--audio", "none", "--no-ui",
                         "--out", str(tmp_path / "runs"), *persona])
        assert code == 0, capsys.readouterr().out
        assert "completed: reached final state 'done'" in capsys.readouterr().out


def _path(trace: Path) -> list[str]:
    fired = [json.loads(line)["out"] for line in trace.read_text().splitlines() if '"effect":"Fired"' in line]
    return [f["target"] for f in fired if f["target"] is not None and f["target"] != f["source"]]


def test_the_starter_conversation_test_expects_what_the_session_does(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The expectations written in interview.test.yaml hold for the starter's session (engine test runs
    the real session offline), and they are not vacuous: a wrong final state fails them."""
    assert cli.main(["init", str(tmp_path)]) == 0
    test_file = tmp_path / "interview.test.yaml"
    assert cli.main(["test", str(test_file)]) == 0, capsys.readouterr().out
    spec = yaml.safe_load(test_file.read_text())
    assert spec["tests"][0]["expect"]["tool_calls"]
    spec["tests"][0]["expect"]["final_state"] = "listen"
    test_file.write_text(yaml.safe_dump(spec))
    assert cli.main(["test", str(test_file)]) == 1


def test_init_never_overwrites_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "interview.yaml").write_text("mine\n")
    assert cli.main(["init", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "interview.yaml already exists" in captured.err and "--force" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interview.yaml"]  # nothing else written either
    assert (tmp_path / "interview.yaml").read_text() == "mine\n"

    assert cli.main(["init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "interview.yaml").read_text() == STARTER["interview.yaml"].read_text()


def test_init_into_something_unusable_is_one_line_and_exit_2(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["init", str(afile)]) == 2
    assert capsys.readouterr().err == f"engine init: {afile}: not a folder\n"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "interview.yaml").mkdir()  # --force cannot write over a folder
    assert cli.main(["init", str(tmp_path / "d"), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("engine init: ") and len(err.splitlines()) == 1 and "Traceback" not in err


def test_init_example_writes_the_example_interview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", "--example", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assessment.yaml", "flow.schema.json", "interviewer.md"]
    assert (tmp_path / "assessment.yaml").read_text() == (ROOT / "flows" / "assessment.yaml").read_text()
    assert cli.main(["check", str(tmp_path / "assessment.yaml")]) == 0


def test_a_modeline_whose_schema_is_missing_is_left_out() -> None:
    out = files(STARTER, {"flow": lambda: {"title": "flow"}})
    assert out["interview.yaml"].startswith("# yaml-language-server: $schema=flow.schema.json\n")
    assert out["flow.schema.json"] == '{\n  "title": "flow"\n}\n'
    assert "yaml-language-server" not in out["candidate.persona.yaml"]
    assert "persona.schema.json" not in out
    assert out["candidate.persona.yaml"].startswith("# The candidate the simulator plays")


@pytest.mark.parametrize("content", [None, "name: x\ninitial: nowhere\nstates: {}\n"])
def test_run_turns_the_collector_back_on_when_the_flow_cannot_be_used(content: str | None, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # `engine run` loads with the collector off (start-up); a flow it refuses must not leave it off.
    import gc

    path = tmp_path / "flow.yaml"
    if content is not None:
        path.write_text(content)
    assert gc.isenabled()
    assert cli.main(["run", str(path), "--audio", "none", "--no-ui", "--out", str(tmp_path / "out")]) == 2
    assert gc.isenabled()
    assert str(path) in capsys.readouterr().err
