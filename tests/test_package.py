"""The built wheel works outside the repo: it ships the example flow, its instructions, the bundled
personas, the JSON Schemas and the starter, and in an empty folder `engine init`, `engine check` and
`engine run` exit 0.

The wheel is built from a copy of the sources (the repo is left as it is) with `pip wheel`, then
installed with `--no-deps` into a fresh venv that sees the dependencies of the interpreter running
the tests (a .pth file naming its site-packages), so nothing but the build backend is downloaded.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine import cli

ROOT = Path(__file__).resolve().parent.parent
BUILD_WAIT = 600.0  # the first build may fetch setuptools into pip's cache
RUN_WAIT = 180.0

SHIPPED = [
    "engine/flows/assessment.yaml", "engine/flows/interviewer.md", "engine/flows/flow.schema.json",
    "engine/flows/personas/default.yaml", "engine/flows/personas/a2_hesitant.yaml",
    "engine/flows/personas/c1_fluent.yaml", "engine/flows/personas/persona.schema.json",
    "engine/schemas/report.schema.json",
    "engine/starter/interview.yaml", "engine/starter/interviewer.md", "engine/starter/candidate.persona.yaml",
    "engine/starter/interview.test.yaml",
]


def test_the_packaged_files_have_one_copy_in_the_repo() -> None:
    """engine/flows is the repo's flows/ (a symlink), so the example, personas and schemas the wheel
    ships are the files authors read in flows/, never copies to keep in sync."""
    link = ROOT / "engine" / "flows"
    assert link.is_symlink() and os.readlink(link) == "../flows"
    assert link.resolve() == (ROOT / "flows").resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "runs")
    for name in ("engine", "flows"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(dist)],
                          capture_output=True, text=True, timeout=BUILD_WAIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = dist.glob("engine-*.whl")
    return built


def test_the_wheel_ships_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, missing
    # Every schema in flows/ (the tests stream's test.schema.json too, once it is there) ships.
    for schema in (ROOT / "flows").rglob("*.schema.json"):
        assert f"engine/flows/{schema.relative_to(ROOT / 'flows')}" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "flows/")) for name in names)


def _venv(folder: Path, wheel: Path) -> Path:
    """A fresh venv with only the wheel installed; its dependencies are the running interpreter's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=RUN_WAIT)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=RUN_WAIT).stdout.strip()
    deps = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    (Path(purelib) / "test-deps.pth").write_text("\n".join(deps) + "\n")  # searched after the venv's own
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=RUN_WAIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder / "bin"


def test_the_installed_wheel_inits_checks_and_runs_in_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    bin_ = _venv(tmp_path / "venv", wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "PYTHONPATH", "PYTHONHOME")}

    def engine(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(bin_ / "engine"), *args], cwd=empty, env=env, capture_output=True, text=True,
                              timeout=RUN_WAIT)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    where = subprocess.run([str(bin_ / "python"), "-c", "import engine; print(engine.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, timeout=RUN_WAIT)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), where.stdout + where.stderr  # not the repo's

    assert engine("--version").stdout.startswith("engine ")
    init = engine("init")
    assert init.returncode == 0, init.stderr
    check = engine("check", "interview.yaml", "candidate.persona.yaml")
    assert check.returncode == 0 and check.stdout.splitlines() == ["interview.yaml: ok", "candidate.persona.yaml: ok"]
    if "test" in cli.CHECKERS:  # `engine test` and checks of test files (once the engine has them)
        assert engine("check", "interview.test.yaml").returncode == 0
        tested = engine("test", "interview.test.yaml")
        assert tested.returncode == 0, tested.stdout + tested.stderr
    run = engine("run", "interview.yaml", "--speed", "20", "--audio", "none", "--no-ui")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed: reached final state 'done'" in run.stdout
    # The bundled personas by name, from the installed package.
    hesitant = engine("run", "interview.yaml", "--persona", "a2_hesitant", "--speed", "20", "--audio", "none",
                      "--no-ui")
    assert hesitant.returncode == 0, hesitant.stdout + hesitant.stderr
    unknown = engine("run", "interview.yaml", "--persona", "nobody", "--audio", "none", "--no-ui")
    assert unknown.returncode == 2 and "bundled: a2_hesitant, c1_fluent, default" in unknown.stderr
    # The example interview ships too.
    assert engine("init", "--example", "example").returncode == 0
    assert engine("check", "example/assessment.yaml").returncode == 0
    assert engine("schema", "--persona").returncode == 0
