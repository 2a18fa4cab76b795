"""Atomic writes: a reader sees either the old file/directory or the complete new one, never a
half-written one, even if the process is killed mid-write."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(path: Path, directory: bool = False) -> None:
    """Give a temporary file or directory the permissions a plain open/mkdir would have had
    (mkstemp and mkdtemp create them private: 0600 / 0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path (same suffix, so writers that pick a format from the
    extension still work); on success it replaces `path` in one rename, on failure it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _publish(tmp)
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    An existing `path` is moved aside first and deleted only after the new one is in place, so a
    crash leaves either the old or the new directory (plus, at worst, a stale `.old` sibling).
    """
    path = Path(path)
    check_output_location(path, directory=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, directory=True)
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def check_output_location(path: str | Path, directory: bool, flag: str = "") -> None:
    """Refuse to write where the user's data would be lost or the write cannot succeed, before
    any work: a directory output onto an existing file (atomic_directory would move the file
    aside and delete it), a file output onto a directory, or a location under a file or in a
    folder that cannot be written. Raises FileExistsError / PermissionError with one line."""
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if directory and path.exists() and not path.is_dir():
        raise FileExistsError(f"{name} is an existing file; give a directory path (it is kept)")
    if not directory and path.is_dir():
        raise FileExistsError(f"{name} is an existing directory; give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FileExistsError(f"{name}: {parent} is a file, so nothing can be written under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: {parent} is not writable")


# atomic_file's temporary: "." + the target's stem + "." + mkstemp's 8 random characters (lower-
# case letters, digits, "_") + the target's suffix.
STALE_FILE = re.compile(r"^\.[^.].*\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete what killed writers left directly in `directory`: `.<name>.*.tmp` directories of
    atomic_directory, `.<stem>.<8 random characters><suffix>` files of atomic_file, and a
    `.<name>.old` whose `<name>` exists again (the kill came after the new one was in place).
    A `.<name>.old` without its `<name>` is the only complete copy (the kill came between the
    two renames) and is kept. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        stale_tmp = name.startswith(".") and name.endswith(".tmp") and entry.is_dir()
        stale_tmp = stale_tmp or (entry.is_file() and STALE_FILE.match(name) is not None)
        stale_old = (name.startswith(".") and name.endswith(".old")
                     and (directory / name[1:-4]).exists())  # fmt: skip
        if stale_tmp or stale_old:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
            removed.append(entry)
    return removed
