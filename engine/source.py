"""Reading the files an author hands the engine: flows, instructions, personas, scenarios, tests.

Rules of this module:
1. Nothing in a file runs: YAML is composed by the safe loader and turned into plain data here;
   any tag beyond plain mappings, sequences and scalars is an error.
2. Everything is bounded: the file's size, the nesting depth, and how many values aliases expand
   to. A hostile file (an alias bomb, a recursive alias, 5,000 levels of brackets, /dev/zero, a
   FIFO) is a one-line error found in well under a second, never a hang or a traceback.
3. Only regular files are opened; a directory, FIFO or device is refused before `open` (which
   would block on a FIFO).
4. Two kinds of error, both one line: `Unreadable` (`path: message`, exit 2) when the file cannot
   be used at all, and `Problem`s (`path:line:col: message`) about its content.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EngineError, Problem

__all__ = ["Unreadable", "Document", "read_text", "recording", "noted", "parse_yaml", "read_yaml", "inside", "clean",
           "MAX_BYTES"]

MAX_BYTES = 1 << 20  # 1 MiB: a flow, persona or instructions file is a few KB
MAX_DEPTH = 64  # nesting of mappings and sequences
MAX_VALUES = 100_000  # values in the document once aliases are expanded

if TYPE_CHECKING:
    import yaml
else:
    yaml = None  # PyYAML, imported by the first parse (~15 ms that `engine run` of a kept flow skips)
# Plain scalars that YAML 1.1 (PyYAML) and YAML 1.2 (editors, yaml-language-server) read differently.
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+$")
_OCTAL11 = re.compile(r"^[-+]?0[0-7_]+$")


# What read_text has read while a `recording()` is open (engine.cache: what a kept file depends on).
_reads: ContextVar[list[tuple[Path, bytes]] | None] = ContextVar("engine_reads", default=None)


class Unreadable(EngineError):
    """A file the engine cannot use at all; `str()` is the one line to show (`path: message`)."""

    def __init__(self, path: str | Path, message: str):
        self.path, self.message = str(path), message
        super().__init__(f"{path}: {message}")


# Public API.


def read_text(path: str | Path, *, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes.

    Raises:
        Unreadable: missing, not a regular file, too large, binary, or not UTF-8.
    """
    try:
        # O_NONBLOCK: if the path is swapped for a FIFO after the check below, open still returns.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise Unreadable(path, _os_message(exc)) from None
    except ValueError:  # a NUL byte in the name
        raise Unreadable(clean(str(path)), "is not a file name") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Unreadable(path, f"not a regular file (it is {_kind(mode)})")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise Unreadable(path, _os_message(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Unreadable(path, f"larger than {limit // 1024} KiB; this is not a file the engine reads")
    noted(Path(path), data)
    return _decode(path, data)


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[Path, bytes]]]:
    """The files `read_text` reads in this context, with their bytes (what engine.cache checks).
    An enclosing recording gets them too."""
    reads: list[tuple[Path, bytes]] = []
    token = _reads.set(reads)
    try:
        yield reads
    finally:
        _reads.reset(token)
        for path, data in reads:
            noted(path, data)


def noted(path: Path, data: bytes) -> None:
    """Record that `data` was read from `path` (engine.cache, for what it took from an entry)."""
    reads = _reads.get()
    if reads is not None:
        reads.append((path, data))


@dataclass
class Document:
    """A YAML document as plain data, and where each value and key stands in the file.

    `problems` collects findings in any order; `sorted_problems()` gives them in file order.
    """

    path: str
    data: Any = None
    values: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # Where a problem made the reader drop a key or a value: later stages must not echo it.
    dropped: set[tuple[Any, ...]] = field(default_factory=set)
    # Plain values YAML 1.2 (editors, JSON Schema tools) reads differently from YAML 1.1 (this
    # reader): `yes`, `on`, `1:30`, `010`, as (location, position, why). Kept as YAML 1.1 reads them;
    # a format that wants its files to mean the same in an editor reports them (flows do).
    yaml11: list[tuple[tuple[Any, ...], tuple[int, int], str]] = field(default_factory=list)

    def at(self, loc: Iterable[Any], message: str, *, key: bool = False, warning: bool = False) -> None:
        """Report `message` at the value (or the key) at `loc`, or its nearest known parent."""
        loc = tuple(loc)
        table = self.keys if key else self.values
        while loc and loc not in table:
            loc = loc[:-1]
        line, col = table.get(loc, self.values.get((), (1, 1)))
        self.problems.append(Problem(self.path, line, col, clean(message), warning))

    def add(self, position: tuple[int, int], message: str, *, warning: bool = False) -> None:
        """Report `message` at a (line, col) position."""
        self.problems.append(Problem(self.path, position[0], position[1], clean(message), warning))

    def position(self, loc: Iterable[Any]) -> tuple[int, int]:
        loc = tuple(loc)
        while loc and loc not in self.values:
            loc = loc[:-1]
        return self.values.get(loc, (1, 1))

    @property
    def ok(self) -> bool:
        return not any(not p.warning for p in self.problems)

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: (p.line, p.col))


def parse_yaml(text: str, path: str = "<yaml>") -> Document:
    """Read `text` safely into plain data with positions. Never raises for any input.

    Problems: YAML syntax, an empty or null document, more than one document, tags, non-scalar
    keys, duplicate keys, YAML 1.1 boolean keys, nesting deeper than MAX_DEPTH, more than
    MAX_VALUES values once aliases are expanded. Values YAML 1.2 reads differently are in `yaml11`.
    """
    doc = Document(clean(path))
    loader = _loader(text)
    collecting = gc.isenabled()
    gc.disable()  # a large document makes many containers and no cycles: collecting only costs time
    try:
        data = _Builder(doc, loader).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        doc.add((line, col), f"YAML: {exc.problem or exc.context or 'syntax error'}")
        return doc
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # RecursionError: pure-Python parser only
        doc.add((1, 1), f"YAML: {_first_line(exc) or type(exc).__name__}")
        return doc
    except _TooBig as exc:
        doc.add(exc.position, exc.message)
        return doc
    finally:
        loader.dispose()
        if collecting:
            gc.enable()
    if data is None:
        doc.add((1, 1), "the document is empty")
        return doc
    doc.data = data
    return doc


def _loader(text: str) -> Any:
    global yaml
    if yaml is None:
        import yaml
    # The C parser when PyYAML has it: the pure-Python scanner is quadratic on deep nesting (9 s for
    # 5,000 brackets) and 30x slower on large files. Both give the same nodes and positions.
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)


def read_yaml(path: str | Path, *, limit: int = MAX_BYTES) -> Document:
    """`read_text` then `parse_yaml`. Raises Unreadable; content problems are in the Document."""
    return parse_yaml(read_text(path, limit=limit), str(path))


def inside(folder: Path, name: str) -> Path:
    """The file `name` names inside `folder` (for `instructions_file:` beside a flow).

    Only the path is checked here; `read_text` then refuses what is not a regular file.

    Raises:
        ValueError: not a file name, an absolute path, a `..` part, or a path (or a symlink on the
            way) that leads out of `folder`.
    """
    if not name or any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise ValueError(f"'{clean(name)}' is not a file name")
    relative = Path(name)
    if relative.is_absolute() or name.startswith("~"):
        raise ValueError(f"'{name}' must be a path relative to the flow's folder")
    if ".." in relative.parts:
        raise ValueError(f"'{name}' must stay inside the flow's folder (no '..')")
    try:
        base = folder.resolve()
        target = (base / relative).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (pathlib before 3.13)
        raise ValueError(f"'{name}' cannot be resolved (a symlink loop?)") from None
    if target != base and base not in target.parents:
        raise ValueError(f"'{name}' leads out of the flow's folder (a symlink?)")
    return target


def clean(text: str) -> str:
    """`text` safe to print on one line: control, format and surrogate characters escaped.

    A name in a message comes from the author's file; a newline in it would split the line, an
    escape sequence would reach the terminal, a lone surrogate would fail to encode.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)


# Private.


class _TooBig(Exception):
    def __init__(self, position: tuple[int, int], message: str):
        self.position, self.message = position, message


class _Builder:
    """YAML events -> plain data with positions; bounded in depth and in expanded size.

    It reads the parser's events rather than a composed node tree: no tree is built for a large
    file, and an alias adds the size of the value it names in one step, so an alias bomb stops at
    once. An alias shares that value (the data is read, never changed).
    """

    def __init__(self, doc: Document, loader: Any):
        self.doc, self.loader = doc, loader
        self.count = 0
        self.height = 0  # nesting below the value built last
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # anchor -> (value, values in it, its height)
        self.building: set[str] = set()  # anchors whose value is not complete yet

    def document(self) -> Any:
        """The single document of the stream, or None if it is empty."""
        loader = self.loader
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # document start
        value = self.value((), 0, loader.get_event())
        loader.get_event()  # document end
        if not loader.check_event(yaml.StreamEndEvent):
            raise _TooBig(_mark(loader.peek_event()), "YAML: a second document; a file holds one (remove `---`)")
        return value

    def value(self, loc: tuple[Any, ...], depth: int, event: Any) -> Any:
        position = event.start_mark.line + 1, event.start_mark.column + 1
        if isinstance(event, yaml.AliasEvent):
            return self._alias(str(event.anchor), loc, depth, position)
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig(position, f"the document expands to more than {MAX_VALUES} values (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise _TooBig(position, f"nesting deeper than {MAX_DEPTH} levels")
        self.doc.values.setdefault(loc, position)
        anchor, before = event.anchor, self.count
        if anchor:
            self.building.add(anchor)
        if isinstance(event, yaml.MappingStartEvent):
            value = self._collection(event, loc, depth, self._mapping, _MAP)
        elif isinstance(event, yaml.SequenceStartEvent):
            value = self._collection(event, loc, depth, self._sequence, _SEQ)
        else:
            value, self.height = self._scalar(event, loc, position), 0
        if anchor:
            self.building.discard(anchor)
            self.anchors[anchor] = (value, self.count - before + 1, self.height)
        return value

    def _alias(self, anchor: str, loc: tuple[Any, ...], depth: int, position: tuple[int, int]) -> Any:
        if anchor in self.building:
            raise _TooBig(position, "a recursive alias: the value contains itself")
        if anchor not in self.anchors:
            raise _TooBig(position, f"YAML: the alias *{anchor} names no anchor (&{anchor}) before it")
        value, size, height = self.anchors[anchor]
        self.count += size
        if self.count > MAX_VALUES:
            raise _TooBig(position, f"the document expands to more than {MAX_VALUES} values (an alias bomb?)")
        if depth + height > MAX_DEPTH:
            raise _TooBig(position, f"nesting deeper than {MAX_DEPTH} levels (through the alias *{anchor})")
        self.doc.values.setdefault(loc, position)
        self.height = height
        return value

    def _collection(self, event: Any, loc: tuple[Any, ...], depth: int, read: Any, tag: str) -> Any:
        value = read(loc, depth)  # up to and with the end of the collection
        self.height += 1
        if event.tag not in (None, "!", tag):
            self.doc.add(_mark(event), f"YAML tag '{event.tag}' is not allowed here")
            self.doc.dropped.add(loc)
            return None
        return value

    def _sequence(self, loc: tuple[Any, ...], depth: int) -> list[Any]:
        out: list[Any] = []
        height = 0
        get = self.loader.get_event
        while not isinstance(event := get(), yaml.SequenceEndEvent):
            out.append(self.value(loc + (len(out),), depth + 1, event))
            height = max(height, self.height)
        self.height = height
        return out

    def _mapping(self, loc: tuple[Any, ...], depth: int) -> dict[str, Any]:
        doc, get = self.doc, self.loader.get_event
        out: dict[str, Any] = {}
        height = 0
        while not isinstance(event := get(), yaml.MappingEndEvent):
            position = event.start_mark.line + 1, event.start_mark.column + 1
            if isinstance(event, yaml.ScalarEvent):
                key = event.value
                problem = _key_problem(key, event, out)
            else:  # a mapping, a list or an alias as a key
                self.value(loc + ("?",), depth + 1, event)
                key, problem = "?", "a key must be a plain name"
            if problem:
                doc.add(position, problem)
                doc.dropped.add(loc + (key,))
                self.value(loc + (key,), depth + 1, get())  # read (anchors in it still count), then dropped
                continue
            doc.keys[loc + (key,)] = position
            out[key] = self.value(loc + (key,), depth + 1, get())
            height = max(height, self.height)
        self.height = height
        return out

    def _tag(self, event: Any) -> str:
        if event.tag is not None and event.tag != "!":
            return str(event.tag)
        if not event.implicit[0]:  # quoted or block text: a string
            return _STR
        if event.value in _NULLS:
            return _NULL
        return str(self.loader.resolve(yaml.ScalarNode, event.value, event.implicit))

    def _scalar(self, event: Any, loc: tuple[Any, ...], position: tuple[int, int]) -> Any:
        doc, tag = self.doc, self._tag(event)
        if tag == _STR:
            return event.value
        if tag == _NULL:
            return None
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        surprise = _yaml11_only(node)
        if surprise:
            doc.yaml11.append((loc, position, surprise))
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.constructor.ConstructorError, ValueError, OverflowError) as exc:  # !!python/..., bad !!int
            message = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else _first_line(exc)
            if "digits" in str(message):  # Python's bound on int("9" * 5000)
                message = f"a number of {len(node.value)} digits is too long to read"
            doc.add(position, f"YAML: {message}")
            doc.dropped.add(loc)
            return None


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_NULL = "tag:yaml.org,2002:null"
_NULLS = {"", "~", "null", "Null", "NULL"}  # what PyYAML's resolver reads as null
_BOOLS = {w for word in ("yes", "no", "true", "false", "on", "off") for w in (word, word.title(), word.upper())}


def _key_problem(key: str, event: Any, seen: dict[str, Any]) -> str | None:
    plain = event.tag is None and event.implicit[0]
    if plain and key == "<<" or event.tag == "tag:yaml.org,2002:merge":
        return "YAML merge keys (<<) are not supported"
    if plain and key in _BOOLS or event.tag == "tag:yaml.org,2002:bool":
        return f"key '{key}' is read by YAML 1.1 as a boolean; quote it or use another name"
    if key in seen:
        return f"duplicate key '{key}'"
    return None


def _mark(event: Any) -> tuple[int, int]:
    return event.start_mark.line + 1, event.start_mark.column + 1


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _yaml11_only(node: yaml.ScalarNode) -> str | None:
    """Why YAML 1.2 (what editors check against) would read this plain scalar differently."""
    if node.style not in (None, ""):
        return None
    text = node.value
    if node.tag == "tag:yaml.org,2002:bool" and text.lower() not in ("true", "false"):
        return f"'{text}' is read by YAML 1.1 as a boolean; write true or false, or quote it for text"
    if node.tag == "tag:yaml.org,2002:int" and _SEXAGESIMAL.match(text):
        return f"'{text}' is read by YAML 1.1 as a number in base 60; quote it, or write the number"
    if node.tag == "tag:yaml.org,2002:int" and _OCTAL11.match(text):
        return f"'{text}' is read by YAML 1.1 as an octal number; quote it, or drop the leading zero"
    return None




def _decode(path: str | Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Unreadable(path, "is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise Unreadable(path, "is a binary file, not text")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise Unreadable(path, f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _os_message(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.strerror else str(exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""
