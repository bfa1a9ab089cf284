"""The README says what the command line and the simulated model do, and it stays true."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from engine import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def test_the_first_lines_are_install_and_run_then_the_tests() -> None:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("pip install -e '.[dev]' && engine run flows/assessment.yaml")
    assert block[1].startswith("python -m pytest")
    assert (ROOT / "flows" / "assessment.yaml").is_file()


def test_every_command_and_option_is_in_the_command_line_section() -> None:
    section = _section("Command line")
    synopsis = section.split("```\n", 1)[1].split("```", 1)[0]
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for name, command in sub.choices.items():
        if not re.search(rf"^engine {name}\b", synopsis, re.M):
            missing.append(f"engine {name}")
        for action in command._actions:
            if action.help == argparse.SUPPRESS:
                continue  # hidden on purpose (for tests)
            for option in action.option_strings:
                if option not in ("-h", "--help") and option not in section:
                    missing.append(f"engine {name} {option}")
    assert "engine --version" in synopsis
    assert not missing, f"not in the README's Command line section: {missing}"


def test_the_exit_codes_are_listed() -> None:
    section = _section("Command line")
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130, 143, 129 |"):
        assert code in section


def test_the_simulated_model_says_what_the_readme_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table in "How the simulated model decides" is what a session of the starter flow says."""
    section = _section("How the simulated model decides")
    said = re.findall(r'\| "([^"|]+)"', section)
    call = re.search(r"the call `([^`]+)`", section)
    assert said and call is not None
    assert cli.main(["init", str(tmp_path)]) == 0
    code = cli.main(["run", str(tmp_path / "interview.yaml"), "--persona", str(tmp_path / "candidate.persona.yaml"),
                     "--speed", "20", "--audio", "none", "--no-ui", "--out", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr().out
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    transcript = (folder / "transcript.md").read_text()
    for line in said:
        assert f"**Interviewer**: {line}" in transcript
    assert f"*tool call*: {call[1]}" in transcript
    verbatim = re.search(r"`'Say: \"([^\"]+)\"'`", section)
    assert verbatim is not None and f"**Interviewer**: {verbatim[1]}" in transcript
