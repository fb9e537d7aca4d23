"""Writing files so that a crash never leaves them half written, and reading small JSON files.

Every file learnae keeps on disk (keys, the swarm's files, a node's progress and status) is
written by :func:`write_atomic` (replace) or :func:`write_new` (create only): the bytes go to a
temporary file in the same directory (created mode 0600, then set to exactly ``mode``, whatever
the umask), which is synced, then moved or linked into place, and the directory is synced so
that the new name survives a power cut too. A reader sees the old file or the whole new one,
never a part, and a file meant to be private is never readable by others, not even briefly.

Writes raise :class:`OSError`: the caller knows what the file is and which typed error to give
(``IdentityError`` for a key file, ``ConfigError`` for a swarm file). :func:`read_json` raises
:class:`~learnae.errors.ConfigError`, naming the file and what it should hold.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from learnae.errors import ConfigError

__all__ = ["MAX_JSON_BYTES", "fsync_dir", "read_bounded", "read_json", "write_atomic", "write_json_atomic", "write_new"]

MAX_JSON_BYTES = 1 << 20
"""Largest JSON file :func:`read_json` reads by default (1 MiB)."""


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions exactly ``mode``.

    The directory must exist. On failure ``path`` is unchanged and the temporary file removed.

    Raises:
        OSError: the directory is missing or not writable, the disk is full, or a sync failed.
    """
    path = Path(path)
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_new(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data`` (mode exactly ``mode``); refuse if it exists.

    Atomic and durable like :func:`write_atomic`: the file appears whole or not at all (a
    temporary file is hard-linked to ``path``, which fails if the name exists, as ``O_EXCL``
    does). The directory must exist and its file system support hard links (every Linux and
    macOS one does, FAT does not).

    Raises:
        FileExistsError: ``path`` exists (it is left untouched).
        OSError: the directory is missing or not writable, the disk is full, or a sync failed.
    """
    path = Path(path)
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike[str], value: Any, *, mode: int = 0o600) -> None:
    """:func:`write_atomic` of ``value`` as indented JSON text (UTF-8, ending in a newline).

    Raises:
        TypeError: ``value`` is not JSON serializable (nothing is written).
        OSError: as :func:`write_atomic`.
    """
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode(), mode=mode)


def read_bounded(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, a file of at most ``max_bytes`` bytes, never read past that.

    Args:
        path: the file.
        what: what the file is, for error messages (``"invite file"``).
        max_bytes: the largest file accepted.

    Raises:
        ConfigError: no such file, unreadable, or over ``max_bytes``; the reason names ``what``
            and ``path``.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what} {path} is over {max_bytes} bytes")
    return data


def read_json(path: str | os.PathLike[str], what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``, a file of at most ``max_bytes`` bytes.

    Args:
        path: the file.
        what: what the file is, for error messages (``"invite file"``).
        max_bytes: the largest file read; a larger one is refused without reading it all.

    Raises:
        ConfigError: no such file, unreadable, over ``max_bytes``, or not JSON; the reason
            names ``what`` and ``path``.
    """
    data = read_bounded(path, what, max_bytes)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{what} {path} is not JSON: {exc}") from None


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """A synced temporary file beside ``path`` holding ``data``, mode exactly ``mode``."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)  # mkstemp made it 0600: never readable by others
    try:
        try:
            os.fchmod(fd, mode)  # the umask can only remove bits; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def fsync_dir(directory: Path) -> None:
    """Sync a directory, so that a name just added to it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
