"""`engine check` on hostile inputs: never a traceback, a hang or a blow-up; exit 0/1/2; one line each.

Each case builds a file (or a folder around a flow) in tmp_path, runs `engine check` in a subprocess
with a hard timeout, and asserts the exit code, that every output line is `path:line:col: message` or
`path: message` (one line per problem, as many lines as `flow.check` finds problems), that no
traceback appears, and a time bound: the CPU time of the engine's own work, beyond that of a plain
`engine check` of a tiny valid flow (the interpreter's start, measured in the same run), stays under
half a second (CPU time, not wall time, so that a busy machine does not fail the test).
"""

import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import flow as flowmod
from engine.source import Unreadable, clean

ENGINE = [sys.executable, "-m", "engine", "check"]
HARD_TIMEOUT = 20.0  # a hang fails the test instead of the suite
OWN_WORK = 0.5  # CPU seconds beyond the start-up of `engine check` itself
# Files at the size limits take longer, and are not what the issue times: they get a larger bound.
# (~0.7 s of CPU each on an idle machine; CPU time also grows on a machine whose other core is busy.)
LARGE = {"100000_states_within_the_size_limit": 3.0, "10000_state_chain": 3.0}

VALID = """\
name: tiny
initial: ask
states:
  ask:
    enter:
      - respond
    transitions:
      - all: [response.done, playback.done]
        target: bye
    after:
      - {delay: 10s, target: bye}
  bye:
    final: true
"""


def with_state(extra: str) -> str:
    """VALID with `extra` lines added to state `ask` (indented by the caller)."""
    return VALID.replace("  bye:\n", extra + "  bye:\n")


def with_instructions(name: str) -> str:
    return VALID.replace("initial: ask\n", f"session:\n  instructions_file: '{name}'\ninitial: ask\n")


def alias_bomb() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nname: *a9\n"


def many_states(n: int) -> str:
    """A flow of n states in a chain, each leaving on a timeout: valid, and large."""
    body = "".join(f"  s{i}: {{after: [{{delay: 1s, target: s{i + 1}}}]}}\n" for i in range(n))
    return f"name: big\ninitial: s0\nstates:\n{body}  s{n}: {{final: true}}\n"


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(path: str | Path) -> tuple[int, list[str], float]:
    """Exit code, output lines and CPU seconds of `engine check path` in a subprocess."""
    start = cpu_of_children()
    proc = subprocess.run([*ENGINE, str(path)], capture_output=True, timeout=HARD_TIMEOUT)
    cpu = cpu_of_children() - start
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    return proc.returncode, out.splitlines(), cpu


@pytest.fixture(scope="module")
def startup(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The CPU time of `engine check` on a tiny valid flow here (best of three)."""
    path = tmp_path_factory.mktemp("baseline") / "tiny.yaml"
    path.write_text(VALID)
    times = []
    for _ in range(3):
        rc, lines, elapsed = run(path)
        assert (rc, lines) == (0, [f"{path}: ok"])
        times.append(elapsed)
    return min(times)


# Each case: (build(tmp_path) -> the flow path, expected exit code, a fragment every run must print).
Case = tuple[Callable[[Path], Path], int, str]


def text(content: str | bytes, name: str = "flow.yaml") -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return build


def beside(flow_text: str, setup: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A flow in tmp/flows/ whose folder `setup` prepares (an instructions file, a link...)."""

    def build(tmp: Path) -> Path:
        folder = tmp / "flows"
        folder.mkdir()
        setup(folder)
        path = folder / "flow.yaml"
        path.write_text(flow_text)
        return path

    return build


def fifo(folder: Path, name: str = "fifo") -> Path:
    os.mkfifo(folder / name)
    return folder / name


def fifo_flow(tmp: Path) -> Path:
    return fifo(tmp, "flow.yaml")


def symlink(target: str, name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).symlink_to(target)


def write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


CASES: dict[str, Case] = {
    # Expansion, recursion, depth.
    "alias_bomb": (text(alias_bomb()), 1, "expands to more than 100000 values (an alias bomb?)"),
    "recursive_alias_list": (text("name: &a [*a]\n"), 1, "a recursive alias: the value contains itself"),
    "recursive_alias_map": (text("name: &a {b: *a}\n"), 1, "a recursive alias"),
    # Ours ("nesting deeper than 64 levels") or, with PyYAML >= 6.0.4's libyaml, the parser's own
    # limit, reached first as it scans ahead ("exceeded maximum nesting depth"): a positioned error.
    "deep_sequences_5000": (text("name: " + "[" * 5000 + "]" * 5000 + "\n"), 1, "nesting"),
    "deep_mappings_5000": (text("name: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"), 1, "nesting deeper than 64"),
    "deep_block_nesting": (text("".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n"), 1,
                           "nesting deeper than 64 levels"),
    # Not text, not UTF-8, not a regular file.
    "binary": (text(bytes(range(256)) * 4), 2, "is a binary file, not text"),
    "utf16_bom": (text(VALID.encode("utf-16")), 2, "is UTF-16 text; save it as UTF-8"),
    "utf16_no_bom": (text(VALID.encode("utf-16-le")), 2, "is a binary file"),
    "latin1": (text(VALID.replace("tiny", "café").encode("latin-1")), 2, "is not UTF-8 text (byte 0xe9 on line 1)"),
    "lone_surrogate_bytes": (text(b"name: \xed\xa0\x80\n"), 2, "is not UTF-8 text"),
    "lone_surrogate_escape": (text('name: "\\ud800"\ninitial: a\nstates: {a: {final: true}}\n'), 1,
                              "YAML: found invalid Unicode character escape code"),
    "fifo": (fifo_flow, 2, "not a regular file (it is a FIFO)"),
    "dev_zero": (lambda tmp: Path("/dev/zero"), 2, "not a regular file (it is a device)"),
    "directory": (lambda tmp: tmp, 2, "not a regular file (it is a directory)"),
    "missing": (lambda tmp: tmp / "nowhere.yaml", 2, "no such file or directory"),
    "ten_megabytes": (text(("# " + "x" * 97 + "\n") * 100_000), 2, "larger than 1024 KiB"),
    "ten_megabytes_one_line": (text("name: " + "x" * 10_000_000), 2, "larger than 1024 KiB"),
    # What is in the document.
    "python_object_tag": (text("name: !!python/object/apply:os.system ['echo pwned']\n" + VALID[11:]), 1,
                          "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed here"),
    "python_name_tag": (text("name: !!python/name:os.system\n" + VALID[11:]), 1, "could not determine a constructor"),
    "set_tag": (text(VALID.replace("name: tiny", "name: !!set {a, b}")), 1, "YAML tag 'tag:yaml.org,2002:set'"),
    "merge_key": (text(VALID.replace("  bye:\n    final: true", "  bye:\n    <<: {final: true}")), 1,
                  "YAML merge keys (<<) are not supported"),
    "null_document": (text("~\n"), 1, "the document is empty"),
    "empty_file": (text(""), 1, "the document is empty"),
    "only_comments": (text("# nothing here\n"), 1, "the document is empty"),
    "list_document": (text("- name: tiny\n- initial: ask\n"), 1, "a flow is a mapping with `name`, `initial`"),
    "scalar_document": (text("hello\n"), 1, "a flow is a mapping"),
    "two_documents": (text(VALID + "---\n" + VALID), 1, "YAML: a second document; a file holds one"),
    "syntax_error": (text("name: [tiny\n"), 1, "YAML:"),
    "complex_key": (text("? [a, b]\n: 1\n" + VALID), 1, "a key must be a plain name"),
    "integer_keys": (text("name: tiny\ninitial: 1\nstates:\n  1: {final: true}\n"), 1,
                     "`initial` is the name of a state, not 1 (quote it: '1')"),
    "state_named_on": (text(VALID.replace("bye", "on")), 1, "key 'on' is read by YAML 1.1 as a boolean"),
    "yes_as_value": (text(VALID.replace("final: true", "final: yes")), 1, "'yes' is read by YAML 1.1 as a boolean"),
    "sexagesimal": (text(VALID.replace("delay: 10s", "delay: 1:30")), 1, "'1:30' is read by YAML 1.1 as a number"),
    "huge_integer": (text(VALID.replace("delay: 10s", "delay: " + "9" * 5000)), 1,
                     "YAML: a number of 5000 digits is too long to read"),
    "timestamp_name": (text(VALID.replace("name: tiny", "name: 2024-01-01")), 1, "`name` is text, not a date"),
    "binary_tag_name": (text(VALID.replace("name: tiny", "name: !!binary aGVsbG8=")), 1,
                        "`name` is text, not binary data (!!binary)"),
    # Durations.
    "nan_delay": (text(VALID.replace("delay: 10s", "delay: .nan")), 1, "a duration must be a finite time, not .nan"),
    "inf_delay": (text(VALID.replace("delay: 10s", "delay: .inf")), 1, "a duration must be a finite time, not .inf"),
    "overflow_delay": (text(VALID.replace("delay: 10s", "delay: 1.0e+400")), 1, "a duration must be a finite time"),
    "overflow_string_delay": (text(VALID.replace("delay: 10s", "delay: 1e400s")), 1, "must be a finite time"),
    "negative_delay": (text(VALID.replace("delay: 10s", "delay: -5")), 1, "a duration is between 10ms and 24h"),
    "zero_delay": (text(VALID.replace("delay: 10s", "delay: 0")), 1, "a duration is between 10ms and 24h, not 0"),
    "tiny_delay": (text(VALID.replace("delay: 10s", "delay: 1ms")), 1, "a duration is between 10ms and 24h"),
    "day_long_delay": (text(VALID.replace("delay: 10s", "delay: 25h")), 1, "a duration is between 10ms and 24h"),
    "nan_max_duration": (text("max_duration: .nan\n" + VALID), 1, "a duration must be a finite time, not .nan"),
    # instructions_file.
    "instructions_absolute_bin_true": (beside(with_instructions("/bin/true"), lambda f: None), 1,
                                       "must be a path relative to the flow's folder"),
    "instructions_etc_passwd": (beside(with_instructions("/etc/passwd"), lambda f: None), 1,
                                "must be a path relative to the flow's folder"),
    "instructions_dotdot": (beside(with_instructions("../../../etc/hostname"), lambda f: None), 1,
                            "must stay inside the flow's folder (no '..')"),
    "instructions_symlink_out": (beside(with_instructions("host.md"), symlink("/etc/hostname", "host.md")), 1,
                                 "leads out of the flow's folder"),
    "instructions_symlink_to_bin_true": (beside(with_instructions("true"), symlink("/bin/true", "true")), 1,
                                         "leads out of the flow's folder"),
    "instructions_symlink_loop": (beside(with_instructions("loop.md"), symlink("loop.md", "loop.md")), 1,
                                  "instructions file 'loop.md' cannot be resolved (a symlink loop?)"),
    "instructions_binary_copy": (beside(with_instructions("true"),
                                        lambda f: shutil.copy("/bin/true", f / "true")), 1, "is a binary file"),
    "instructions_fifo": (beside(with_instructions("fifo"), fifo), 1, "not a regular file (it is a FIFO)"),
    "instructions_directory": (beside(with_instructions("sub"), lambda f: (f / "sub").mkdir()), 1,
                               "not a regular file (it is a directory)"),
    "instructions_latin1": (beside(with_instructions("i.md"), write("i.md", "café".encode("latin-1"))), 1,
                            "is not UTF-8 text"),
    "instructions_too_large": (beside(with_instructions("i.md"), write("i.md", b"x" * (2 << 20))), 1,
                               "larger than 1024 KiB"),
    "instructions_nul_name": (beside(with_instructions("x").replace("'x'", '"a\\0b"'), lambda f: None), 1,
                              "is not a file name"),
    "instructions_empty_name": (beside(with_instructions(""), lambda f: None), 1, "is not a file name"),
    # Names that try to break the output.
    "confusable_state_name": (text(VALID.replace("  bye:\n", "  b\u0443e:\n")), 1,
                              "U+0443 CYRILLIC SMALL LETTER U"),
    "newline_in_name": (text(VALID.replace("target: bye\n    after", 'target: "by\\ne"\n    after')), 1,
                        "unknown target state 'by\\x0ae'"),
    "escape_sequence_in_name": (text(VALID.replace("target: bye\n    after", 'target: "\\e[31mred"\n    after')),
                                1, "unknown target state '\\x1b[31mred'"),
    "rtl_override_in_name": (text(VALID.replace("target: bye\n    after", 'target: "b\\u202eye"\n    after')), 1,
                             "unknown target state 'b\\u202eye'"),
    # Size.
    "100000_states_within_the_size_limit": (text("name: big\ninitial: a0\nstates:\n"
                                                 + "".join(f" {i:x}:\n" for i in range(100_000))), 1,
                                            "the document expands to more than 100000 values"),
    "10000_state_chain": (text(many_states(10_000)), 0, "ok"),
}


TIMES: dict[str, float] = {}  # own CPU time per case, for `pytest -s` and the report


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name: str, tmp_path: Path, startup: float) -> None:
    build, code, fragment = CASES[name]
    path = build(tmp_path)
    rc, lines, elapsed = run(path)
    shown = re.escape(clean(str(path)))
    assert rc == code, lines
    assert lines, "every run says something"
    assert not any("Traceback" in line for line in lines), lines
    assert all(re.fullmatch(rf"{shown}(:\d+:\d+)?: \S.*", line) for line in lines), lines
    assert any(fragment in line for line in lines), lines
    if code == 2:
        assert len(lines) == 1
    else:  # one line per problem found (or one "ok")
        try:
            problems = flowmod.check(path)
        except Unreadable:
            pytest.fail("unreadable in process but not in the subprocess")
        assert len(lines) == max(1, len(problems))
    bound = LARGE.get(name, OWN_WORK)
    assert elapsed - startup < bound, f"{name}: {elapsed:.3f}s CPU against {startup:.3f}s for a tiny flow"
    TIMES[name] = elapsed - startup


def test_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    path = os.path.join(folder, b"flow-\xff.yaml")
    with open(path, "wb") as f:
        f.write(VALID.encode())
    proc = subprocess.run([*ENGINE, path], capture_output=True, timeout=HARD_TIMEOUT)
    assert proc.returncode == 0
    assert proc.stdout.endswith(b"flow-\\udcff.yaml: ok\n") or proc.stdout.endswith(b"flow-\\xff.yaml: ok\n")
    assert b"Traceback" not in proc.stderr


def test_a_device_beside_the_flow(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "zero", 0o600 | 0o020000, os.makedev(1, 5))  # a character device, like /dev/zero
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here")
    (tmp_path / "flow.yaml").write_text(with_instructions("zero"))
    rc, lines, _ = run(tmp_path / "flow.yaml")
    assert rc == 1
    assert lines == [f"{tmp_path / 'flow.yaml'}:3:22: cannot use instructions file 'zero': not a regular file "
                     f"(it is a device)"]


def test_nothing_the_author_writes_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "flow.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n" + VALID[11:])
    assert run(path)[0] == 1
    assert not marker.exists()


# Random damage to a valid flow: any value replaced by junk of any type, keys dropped or added.
JUNK: list[object] = [None, 0, -1, 1.5, float("nan"), True, "", "x", "respond", "tool.finish", "bye", [], [1],
                      ["a", "b"], {}, {"a": 1}, {"type": "server_vad"}, {"respond": "x"}, "10s", "{tool.reason}",
                      "{x", [None], {"event": "x"}, "0ms", 10**20, "on"]
KEYS = ["x", "after", "final", "target", "event", "all", "guard", "enter", "respond", "type", "delay", "name"]


def mutations(seed: int, count: int) -> list[str]:
    """`count` damaged copies of a valid flow with tools, jobs and guards, as YAML or JSON text."""
    import copy
    import json
    import random

    import yaml
    from test_checks import BASE

    rng = random.Random(seed)
    base = yaml.safe_load(BASE)

    def places(node: object, loc: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        found = [loc]
        if isinstance(node, dict):
            found += [p for k, v in node.items() for p in places(v, (*loc, k))]
        elif isinstance(node, list):
            found += [p for i, v in enumerate(node) for p in places(v, (*loc, i))]
        return found

    texts = []
    for _ in range(count):
        data = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            loc = rng.choice(places(data)[1:])
            parent = data
            for part in loc[:-1]:
                parent = parent[part]
            if isinstance(parent, dict) and rng.random() < 0.15:
                del parent[loc[-1]]
            elif isinstance(parent, dict) and rng.random() < 0.15:
                parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(JUNK))
            else:
                parent[loc[-1]] = copy.deepcopy(rng.choice(JUNK))
        texts.append(json.dumps(data) if rng.random() < 0.3 else yaml.safe_dump(data))
    return texts


def test_random_damage_never_raises_and_speaks_plainly() -> None:
    internal = re.compile(r"instance of|_Action|Input should|dict\[|list\[|Value error|validation error")
    for text in mutations(seed=11, count=400):
        flow, problems = flowmod.parse(text, "f.yaml")
        assert flow is not None or any(not p.warning for p in problems), text
        for p in problems:
            assert "\n" not in str(p) and not internal.search(p.message), (p, text)
