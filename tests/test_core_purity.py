"""The core stays sans-I/O: no event loop, sockets, sound, clock or file access in its modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = ["errors", "events", "effects", "gate", "interview", "conversation", "machine", "playback", "facts", "flow"]
FORBIDDEN = {"asyncio", "websockets", "sounddevice", "time", "socket", "threading", "subprocess", "os", "io",
             "sqlite3", "datetime", "random"}
ENGINE = Path(__file__).resolve().parent.parent / "engine"


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def file_calls(tree: ast.AST) -> list[str]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("open", "read_text", "write_text", "read_bytes", "write_bytes", "sleep", "monotonic"):
                calls.append(f"{name}:{node.lineno}")
    return calls


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_that_does_io(module):
    tree = ast.parse((ENGINE / f"{module}.py").read_text())
    assert imported_modules(tree) & FORBIDDEN == set()


@pytest.mark.parametrize("module", [m for m in CORE if m != "flow"])
def test_core_module_touches_no_files_and_no_clock(module):
    assert file_calls(ast.parse((ENGINE / f"{module}.py").read_text())) == []


def test_only_the_flow_loader_reads_a_file():
    # flow.py parses text; its two convenience loaders are the only places that read the disk.
    tree = ast.parse((ENGINE / "flow.py").read_text())
    readers = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and file_calls(f)}
    assert readers == {"load", "check"}


def test_importing_the_core_loads_no_driver_modules():
    # (socket itself is loaded by pydantic's email support, so it is checked in the source above.)
    code = ("import sys, engine.interview, engine.flow; "
            "print(sorted(m for m in ('asyncio', 'websockets', 'sounddevice', 'engine.runner') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
