"""engine.cache: a validated flow or persona is used again only while nothing it was read from has
changed; anything the cache cannot trust is a miss, and a failing cache never fails a load."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import cache, jobs
from engine import flow as flowmod
from engine.errors import FlowError
from engine.sim import scenario

FLOW = """\
name: cached
initial: ask
session:
  instructions_file: instructions.txt
states:
  ask:
    enter: [respond]
    transitions:
      - event: response.done
        target: bye
    after:
      - delay: 30s
        target: bye
  bye:
    final: true
"""


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(folder))
    cache.folder.cache_clear()
    yield folder
    cache.folder.cache_clear()


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths flow.parse validated (a load from the cache validates nothing)."""
    seen: list[str] = []
    parse = flowmod.parse

    def counting(text: str, path: str = "<flow>", **kw: object) -> object:
        seen.append(path)
        return parse(text, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(flowmod, "parse", counting)
    return seen


def write_flow(folder: Path, instructions: str = "Ask one question.") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instructions.txt").write_text(instructions)
    path = folder / "flow.yaml"
    path.write_text(FLOW)
    return path


def test_an_unchanged_flow_is_not_validated_again_and_is_the_same_flow(where: Path, tmp_path: Path,
                                                                        validations: list[str]) -> None:
    path = write_flow(tmp_path / "f")
    first = flowmod.load(path)
    again = flowmod.load(path)
    assert len(validations) == 1
    assert again == first and again is not first
    assert again.session.instructions == "Ask one question."
    # The caller's own spelling of the path, whichever spelling filled the entry.
    other = flowmod.load(tmp_path / "f" / ".." / "f" / "flow.yaml")
    assert other.path == str(tmp_path / "f" / ".." / "f" / "flow.yaml") and len(validations) == 1
    assert [p.name for p in where.iterdir()] and all(p.stat().st_mode & 0o077 == 0 for p in where.iterdir())


def test_a_changed_flow_or_instructions_file_is_validated_again(where: Path, tmp_path: Path,
                                                                validations: list[str]) -> None:
    path = write_flow(tmp_path / "f")
    flowmod.load(path)
    (tmp_path / "f" / "instructions.txt").write_text("Ask two questions.")
    assert flowmod.load(path).session.instructions == "Ask two questions."
    path.write_text(FLOW.replace("name: cached", "name: edited"))
    assert flowmod.load(path).name == "edited"
    assert len(validations) == 3


def test_a_bad_flow_is_never_kept(where: Path, tmp_path: Path, validations: list[str]) -> None:
    path = write_flow(tmp_path / "f")
    path.write_text(FLOW.replace("target: bye", "target: nowhere"))
    for _ in range(2):
        with pytest.raises(FlowError, match="nowhere"):
            flowmod.load(path)
    assert len(validations) == 2
    path.write_text(FLOW)
    assert flowmod.load(path).name == "cached"


def test_a_damaged_entry_is_a_miss(where: Path, tmp_path: Path, validations: list[str]) -> None:
    path = write_flow(tmp_path / "f")
    flowmod.load(path)
    (entry,) = where.iterdir()
    entry.write_bytes(entry.read_bytes()[:100])  # a truncated write, another version's entry
    assert flowmod.load(path).name == "cached"
    entry.write_bytes(b"not a pickle")
    assert flowmod.load(path).name == "cached"
    assert len(validations) == 3


def test_a_cache_that_cannot_be_written_never_fails_a_load(where: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", full)
    path = write_flow(tmp_path / "f")
    assert flowmod.load(path).name == "cached"
    assert list(where.iterdir()) == []  # no half-written entry left behind


@pytest.mark.parametrize("how", ["off", "shared", "not a folder", "relative"])
def test_no_cache_where_it_is_off_or_others_could_write_it(how: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          validations: list[str]) -> None:
    folder = tmp_path / "cache"
    if how == "shared":  # a pickle is code: a folder anyone may write to is never read
        folder.mkdir(mode=0o777)
        os.chmod(folder, 0o777)
    elif how == "not a folder":
        folder.write_text("")
    if how == "relative":  # e.g. no HOME: `~/.cache` stays unexpanded, and the cwd is no place for it
        monkeypatch.chdir(tmp_path)
        folder = Path("cache")
    monkeypatch.setenv("ENGINE_CACHE_DIR", "off" if how == "off" else str(folder))
    cache.folder.cache_clear()
    try:
        assert cache.folder() is None
        path = write_flow(tmp_path / "f")
        flowmod.load(path)
        flowmod.load(path)
        assert len(validations) == 2
    finally:
        cache.folder.cache_clear()
    assert not folder.is_dir() or list(folder.iterdir()) == []


def test_a_persona_is_read_again_when_a_file_appears_beside_it(where: Path, tmp_path: Path) -> None:
    # `extends: a2_hesitant` names the bundled persona until a file of that name is written beside it.
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "mine.yaml").write_text("extends: a2_hesitant\nname: Kim\n")
    first = scenario.load_persona(folder / "mine.yaml")
    assert scenario.load_persona(folder / "mine.yaml") == first and first.level == "A2"
    (folder / "a2_hesitant").write_text("name: Local\nlevel: C1\n")
    again = scenario.load_persona(folder / "mine.yaml")
    assert again.name == "Kim" and again.level == "C1"


def test_the_job_registry_is_read_when_first_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading every package's entry points happens after the first response.create, not at Session().
    import importlib.metadata

    reads: list[str] = []
    real = importlib.metadata.entry_points

    def counting(**kw: str) -> object:
        reads.append(kw["group"])
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    jobs.registry.cache_clear()
    try:
        installed = jobs.registry()
        assert reads == []
        assert "assessment" in installed and reads == ["engine.jobs"]
        assert list(installed) == ["assessment"] and len(reads) == 1
    finally:
        jobs.registry.cache_clear()


def test_an_entry_used_inside_another_loader_counts_among_its_files(where: Path, tmp_path: Path) -> None:
    # A loader that loads a kept flow depends on the flow's files, whether the flow came from its entry or not.
    from engine import source

    path = write_flow(tmp_path / "f")
    for _ in range(2):  # a miss, then a hit
        with source.recording() as reads:
            cache.load("outer", tmp_path / "outer", lambda: flowmod.load(path))
        assert {p.name for p, _ in reads} == {"flow.yaml", "instructions.txt"}
    (tmp_path / "f" / "instructions.txt").write_text("Changed.")
    assert cache.load("outer", tmp_path / "outer", lambda: flowmod.load(path)).session.instructions == "Changed."


def test_the_folder_is_the_users_cache_unless_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache.folder.cache_clear()
    try:
        assert cache.folder() == tmp_path / "xdg" / "engine"
        assert (tmp_path / "xdg" / "engine").stat().st_mode & 0o777 == 0o700
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        cache.folder.cache_clear()
        assert cache.folder() == tmp_path / "home" / ".cache" / "engine"
    finally:
        cache.folder.cache_clear()


def test_an_entry_made_from_another_folder_checks_the_same_files(where: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Loaded by a relative name, then from elsewhere: the entry names its files absolutely.
    write_flow(tmp_path / "f")
    monkeypatch.chdir(tmp_path)
    flowmod.load(Path("f/flow.yaml"))
    write_flow(tmp_path / "elsewhere" / "f")  # the same relative names, the old content
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "f" / "flow.yaml").write_text(FLOW.replace("name: cached", "name: edited"))
    assert flowmod.load(tmp_path / "f" / "flow.yaml").name == "edited"


def test_installing_a_package_invalidates_files_made_elsewhere_do_not(where: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      validations: list[str]) -> None:
    # A job is a package: a flow checked before it was installed (or removed) is checked again.
    # The folder `python -m` runs from is on sys.path too, and files are made there all the time.
    import sys

    site, here = tmp_path / "lib" / "site-packages", tmp_path / "project"
    site.mkdir(parents=True)
    here.mkdir()
    monkeypatch.setattr(sys, "path", [str(here), *sys.path, str(site)])
    path = write_flow(tmp_path / "f")

    def load_afresh() -> None:
        cache._stamp.cache_clear()  # a new process
        flowmod.load(path)

    try:
        load_afresh()
        (here / "notes.txt").write_text("")
        load_afresh()
        assert len(validations) == 1
        (site / "engine_extra_job-1.0.dist-info").mkdir()
        load_afresh()
        assert len(validations) == 2
    finally:
        cache._stamp.cache_clear()


def test_the_entries_used_last_are_kept_and_a_killed_writers_leftovers_go(where: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           validations: list[str]) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    paths = [write_flow(tmp_path / f"f{i}") for i in range(5)]
    where.mkdir(exist_ok=True)
    leftover = where / ".half-written.tmp"
    leftover.write_bytes(b"")
    os.utime(leftover, (0, 0))
    for path in paths[:3]:
        flowmod.load(path)
        for entry in where.glob("*.pickle"):  # file times in order of use, whatever the clock's grain
            os.utime(entry, (entry.stat().st_mtime - 10, entry.stat().st_mtime - 10))
    flowmod.load(paths[0])  # a hit: now the one used last
    flowmod.load(paths[3])
    flowmod.load(paths[4])
    assert len(list(where.glob("*.pickle"))) == 3 and not leftover.exists()
    del validations[:]
    flowmod.load(paths[0])
    flowmod.load(paths[4])
    assert validations == []  # kept: used last
    flowmod.load(paths[1])
    assert validations == [str(paths[1])]  # pruned: used longest ago
