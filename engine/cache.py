"""Validated files kept between runs: an unchanged flow or persona is not validated again.

Building pydantic's validators for the flow format and checking a flow takes ~60 ms, most of what
`engine run` spends before its first `response.create` that is not an import (benchmarks/RESULTS.md
§2c). `load()` keeps what a loader returned, as Python keeps compiled modules.

Rules of this module:
1. An entry is used only while every file its loader read (`source.read_text`) has the same bytes
   and the folders they are in list the same files, and only by the engine, pydantic and Python
   that wrote it (their stamp names the entry). Anything else is a miss: the loader runs again.
2. The cache only saves time. An entry that cannot be read, written or trusted is a miss; a failed
   write is ignored; a loader's error is never kept (the next run reports it again). It keeps the
   MAX_ENTRIES entries used last (a few KB each).
3. A pickle is code, as a .pyc is: entries live in the user's own folder (mode 0700, owned by them,
   writable by no one else; any other folder is not used): `$ENGINE_CACHE_DIR`, else
   `$XDG_CACHE_HOME/engine`, else `~/.cache/engine`. `ENGINE_CACHE_DIR=off` turns the cache off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import source

__all__ = ["load", "folder"]

T = TypeVar("T")
_FORMAT = b"engine-cache/1"
MAX_ENTRIES = 256


def load(kind: str, path: Path, loader: Callable[[], T]) -> T:
    """`loader()`'s result for the file at `path`, from the cache while nothing it read has changed."""
    where = folder()
    if where is None:
        return loader()
    entry = where / f"{kind}-{_key(path)}.pickle"
    found = _read(entry)
    if found is not None:
        return found  # type: ignore[no-any-return]
    with source.recording() as reads:
        result = loader()
    _write(entry, reads, result)
    return result


@functools.cache
def folder() -> Path | None:
    """The cache folder, created if need be; None when turned off or not safely the user's."""
    chosen = os.environ.get("ENGINE_CACHE_DIR")
    if chosen == "off":
        return None
    if not chosen:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        chosen = os.path.join(base, "engine")
    if not os.path.isabs(chosen):  # no home to speak of (`~` unexpanded): not a folder in the cwd
        return None
    try:
        os.makedirs(chosen, mode=0o700, exist_ok=True)
        st = os.stat(chosen)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if os.name == "posix" and (st.st_mode & 0o022 or st.st_uid != os.geteuid()):  # (Windows: the profile's ACLs)
        return None
    return Path(chosen)


def _key(path: Path) -> str:
    h = hashlib.sha256(_FORMAT)
    h.update(os.fsencode(os.path.abspath(path)))
    h.update(_stamp())
    return h.hexdigest()[:32]


@functools.cache
def _stamp() -> bytes:
    """What wrote an entry: this engine's modules (their sizes and times), pydantic, Python, and the
    package folders on sys.path (installing or removing a package, e.g. a job, changes their times)."""
    import pydantic.version  # imported by every loader anyway (the entry holds its models)

    h = hashlib.sha256(f"{sys.version}\0{pydantic.version.VERSION}\0".encode())
    package = Path(__file__).parent
    for root, dirs, files in sorted(os.walk(package)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                h.update(f"{root}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for entry in sys.path:  # where packages are installed (not the cwd: it changes as files are made there)
        if os.path.basename(entry) in ("site-packages", "dist-packages"):
            try:
                h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\0".encode())
            except OSError:
                h.update(f"{entry}\0-\0".encode())
    return h.digest()


def _listings(reads: list[tuple[Path, bytes]]) -> list[tuple[str, int]]:
    """The folders of the files read, with their times: a file added beside them (a persona that
    `extends:` a name now found locally) changes what the loader would find."""
    folders = sorted({os.path.dirname(os.path.abspath(p)) for p, _ in reads})
    return [(d, os.stat(d).st_mtime_ns) for d in folders]


def _read(entry: Path) -> Any:
    try:
        with open(entry, "rb") as f:
            files, listings, result = pickle.load(f)
        reads = []
        for name, digest in files:
            data = Path(name).read_bytes()
            if hashlib.sha256(data).digest() != digest:
                return None
            reads.append((Path(name), data))
        for name, mtime in listings:
            if os.stat(name).st_mtime_ns != mtime:
                return None
    except Exception:  # missing, truncated, from another version: a miss (rule 2)
        return None
    for path, data in reads:  # a loader that recorded this one depends on these files too
        source.noted(path, data)
    with contextlib.suppress(OSError):
        os.utime(entry)  # used now: pruning removes the entries used longest ago
    return result


def _write(entry: Path, reads: list[tuple[Path, bytes]], result: Any) -> None:
    import tempfile  # only on a miss

    try:
        files = [(os.path.abspath(p), hashlib.sha256(data).digest()) for p, data in reads]  # whatever the cwd later
        value = (files, _listings(reads), result)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, entry)  # whole or not at all: a reader never sees half an entry
        except BaseException:
            os.unlink(tmp)
            raise
        _prune(entry.parent)
    except Exception:  # a full disk or a read-only home: the next run validates again (rule 2)
        pass


def _prune(where: Path) -> None:
    """Keep the MAX_ENTRIES entries used last (each is a few KB; flows made by tools come and go),
    and drop what a killed writer left behind."""
    entries, stale, now = [], [], time.time()
    for e in os.scandir(where):
        st = e.stat()
        if e.name.endswith(".pickle"):
            entries.append((st.st_mtime, e.path))
        elif e.name.endswith(".tmp") and now - st.st_mtime > 3600:
            stale.append(e.path)
    entries.sort()
    for path in [*stale, *(p for _, p in entries[:max(0, len(entries) - MAX_ENTRIES)])]:
        with contextlib.suppress(OSError):
            os.unlink(path)
