"""Kubo's own log, ``kubo.log``: bounded by learnae (copy-truncate at a size cap), or off.

The library reads ``LEARNAE_LOG_DIR`` and ``LEARNAE_KUBO_LOG_MAX`` once, when a process loads
it, so each test drives two embedded nodes (as ``conftest.embedded_pair`` makes them: one
private swarm on 127.0.0.1) in a child process of its own with its own log directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def _child(tmp_path: Path, rounds: int, log_max: str) -> subprocess.Popen:
    env = {**os.environ, "LEARNAE_LOG_DIR": str(tmp_path / "logs"), "LEARNAE_KUBO_LOG_MAX": log_max}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "repos"), str(rounds)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.communicate(timeout=30)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_kubo_log_stays_under_its_cap_while_nodes_work(tmp_path):
    log, rotated = tmp_path / "logs" / "kubo.log", tmp_path / "logs" / "kubo.log.1"
    proc = _child(tmp_path, 400, str(CAP))  # ~400 KiB of Kubo's DEBUG lines, 25x the cap
    biggest, rotations, inode = 0, 0, None
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the child did not finish its rounds in 240 s"
            biggest = max(biggest, _size(log))
            assert biggest <= CAP + SLACK, f"kubo.log reached {biggest} bytes; the cap is {CAP}"
            try:
                now = rotated.stat().st_ino
            except FileNotFoundError:
                now = None
            if now is not None and now != inode:
                rotations, inode = rotations + 1, now
            time.sleep(0.005)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    finally:
        _stop(proc)
    assert _size(log) <= CAP + SLACK
    assert rotations >= 3, f"only {rotations} rotations seen"
    assert 0 < _size(rotated) <= CAP  # the newest CAP bytes before the last rotation
    assert b"DEBUG: " in rotated.read_bytes()
    assert not (tmp_path / "kubo.log").exists()  # never in the working directory


def test_kubo_log_off(tmp_path):
    proc = _child(tmp_path, 20, "0")
    try:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    finally:
        _stop(proc)
    logs = tmp_path / "logs"
    assert not (logs / "kubo.log").exists() or _size(logs / "kubo.log") == 0
    assert not (tmp_path / "kubo.log").exists()
    assert b"DEBUG: " not in err  # not sent to stderr instead


def test_a_bad_cap_is_refused(tmp_path):
    env = {**os.environ, "LEARNAE_LOG_DIR": str(tmp_path / "logs"), "LEARNAE_KUBO_LOG_MAX": "lots"}
    code = "from learnae.ipfs import libkubo; libkubo.load()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "LEARNAE_KUBO_LOG_MAX='lots'" in result.stderr and "ConfigError" in result.stderr
