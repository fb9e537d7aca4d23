"""Kubo's own log, ``kubo.log``: bounded by learnae (copy-truncate at a size cap), or off.

The library reads ``LEARNAE_LOG_DIR`` and ``LEARNAE_KUBO_LOG_MAX`` once, when a process loads
it, so each test drives two embedded nodes (as ``conftest.embedded_pair`` makes them: one
private swarm on 127.0.0.1) in a child process of its own with its own log directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CAP = 16 * 1024
SLACK = 4 * 1024  # what Kubo writes during one call (a Download is ~1 KiB of DEBUG lines)

# Two embedded nodes in one private swarm; B fetches ROUNDS files that A adds.
CHILD = r"""
import asyncio, os, sys
from pathlib import Path
from learnae.ipfs import privnet
from learnae.ipfs.embedded import EmbeddedNode

async def main(root, rounds):
    key = privnet.new_swarm_key()
    nodes = []
    try:
        for name in "ab":
            nodes.append(await EmbeddedNode.start(root / name, key))
        a, b = nodes
        await b.connect((await a.addrs())[0])
        for i in range(rounds):
            cid = await a.add(os.urandom(100) + i.to_bytes(8, "big"))
            assert await b.cat(cid, timeout=20)
    finally:
        for node in nodes:
            await node.close()

asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
"""


def _child(launch, tmp_path: Path, rounds: int, log_max: str):
    env = {**os.environ, "LEARNAE_LOG_DIR": str(tmp_path / "logs"), "LEARNAE_KUBO_LOG_MAX": log_max}
    return launch.start("child", [sys.executable, "-c", CHILD, str(tmp_path / "repos"), str(rounds)],
                        env=env, cwd=tmp_path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_kubo_log_stays_under_its_cap_while_nodes_work(tmp_path, launch):
    log, rotated = tmp_path / "logs" / "kubo.log", tmp_path / "logs" / "kubo.log.1"
    proc = _child(launch, tmp_path, 400, str(CAP))  # ~400 KiB of Kubo's DEBUG lines, 25x the cap
    biggest, rotations, inode = 0, 0, None

    def sample() -> bool:
        """Measure the log while the child runs; True once it exited."""
        nonlocal biggest, rotations, inode
        done = proc.returncode() is not None
        biggest = max(biggest, _size(log))
        assert biggest <= CAP + SLACK, f"kubo.log reached {biggest} bytes; the cap is {CAP}"
        try:
            now = rotated.stat().st_ino
        except FileNotFoundError:
            now = None
        if now is not None and now != inode:
            rotations, inode = rotations + 1, now
        return done

    launch.wait(sample, 240, "the child's rounds", watch=(), interval=0.005)
    assert proc.returncode() == 0, proc.tail()
    assert _size(log) <= CAP + SLACK
    assert rotations >= 3, f"only {rotations} rotations seen"
    assert 0 < _size(rotated) <= CAP  # the newest CAP bytes before the last rotation
    assert b"DEBUG: " in rotated.read_bytes()
    assert not (tmp_path / "kubo.log").exists()  # never in the working directory


def test_kubo_log_off(tmp_path, launch):
    proc = _child(launch, tmp_path, 20, "0")
    assert launch.wait_exit(proc, 120) == 0, proc.tail()
    logs = tmp_path / "logs"
    assert not (logs / "kubo.log").exists() or _size(logs / "kubo.log") == 0
    assert not (tmp_path / "kubo.log").exists()
    assert "DEBUG: " not in proc.stderr()  # not sent to stderr instead


def test_a_bad_cap_is_refused(tmp_path):
    env = {**os.environ, "LEARNAE_LOG_DIR": str(tmp_path / "logs"), "LEARNAE_KUBO_LOG_MAX": "lots"}
    code = "from learnae.ipfs import libkubo; libkubo.load()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "LEARNAE_KUBO_LOG_MAX='lots'" in result.stderr and "ConfigError" in result.stderr
