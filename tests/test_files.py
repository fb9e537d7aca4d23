"""learnae.files: atomic and durable writes, the bounded JSON reader."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from learnae import files
from learnae.errors import ConfigError
from learnae.files import read_json, write_atomic, write_json_atomic, write_new


@pytest.fixture
def synced(monkeypatch) -> list[Path]:
    """Record what every ``os.fsync`` syncs (the path its fd names), then sync it for real."""
    seen: list[Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_writes_replaces_and_syncs_the_file_and_its_directory(tmp_path, synced):
    path = tmp_path / "status.json"
    write_atomic(path, b"first", mode=0o644)
    assert path.read_bytes() == b"first" and mode(path) == 0o644
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second" and mode(path) == 0o600
    assert os.listdir(tmp_path) == ["status.json"]  # no temporary file left
    # the data was synced before the rename (a temporary file in the same directory), then the
    # directory, which makes the new name durable
    assert [p.parent for p in synced] == [tmp_path, tmp_path.parent, tmp_path, tmp_path.parent]
    assert synced[0].name.startswith(".status.json.") and synced[1] == tmp_path


def test_modes_are_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "a", b"x", mode=0o644)
        write_new(tmp_path / "b", b"x", mode=0o664)
    finally:
        os.umask(old)
    assert (mode(tmp_path / "a"), mode(tmp_path / "b")) == (0o644, 0o664)


def test_a_failed_replace_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    path.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["progress.json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def refuse(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    for write in (write_atomic, write_new):
        with pytest.raises(OSError, match="Input/output error"):
            write(tmp_path / "key", b"secret")
        assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "key", b"secret")  # the directory must exist


def test_write_new_creates_only(tmp_path, synced):
    path = tmp_path / "identity.key"
    write_new(path, b"mine", mode=0o600)
    assert path.read_bytes() == b"mine" and mode(path) == 0o600
    assert synced[-1] == tmp_path  # the directory, after the link
    with pytest.raises(FileExistsError):
        write_new(path, b"theirs")
    assert path.read_bytes() == b"mine" and os.listdir(tmp_path) == ["identity.key"]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "api.json"
    write_json_atomic(path, {"url": "http://127.0.0.1:8080"}, mode=0o644)
    assert path.read_text() == '{\n  "url": "http://127.0.0.1:8080"\n}\n' and mode(path) == 0o644
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bytes": b"x"})
    assert read_json(path, "API file") == {"url": "http://127.0.0.1:8080"}
    assert os.listdir(tmp_path) == ["api.json"]


def test_read_json_refusals_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=f"no invite file at {tmp_path / 'missing.json'}"):
        read_json(tmp_path / "missing.json", "invite file")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="invite file .*bad.json is not JSON"):
        read_json(tmp_path / "bad.json", "invite file")
    (tmp_path / "big.json").write_text("[" + "0," * 100 + "0]")
    with pytest.raises(ConfigError, match="big.json is over 100 bytes"):
        read_json(tmp_path / "big.json", "status file", max_bytes=100)
    assert len(read_json(tmp_path / "big.json", "status file")) == 101
    with pytest.raises(ConfigError, match="cannot read node settings file"):
        read_json(tmp_path, "node settings file")  # a directory
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="is not JSON"):
        read_json(deep, "manifest file")


def test_the_files_module_imports_only_errors():
    imported = {line.split()[1] for line in Path(files.__file__).read_text().splitlines()
                if line.startswith(("import learnae", "from learnae"))}
    assert imported == {"learnae.errors"}
