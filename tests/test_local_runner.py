"""The local runner (``learnae.local.runner``): trainer nodes as processes in one private
swarm on 127.0.0.1, followed through their status, and stopped leaving nothing behind
(no live pid, no open port, no Kubo ``repo.lock``)."""

from __future__ import annotations

import pytest

from learnae.local.runner import LocalSwarm, pid_alive, port_open

pytestmark = [pytest.mark.slow, pytest.mark.swarm]


def test_two_nodes_train_merge_and_stop_cleanly(tmp_path):
    swarm = LocalSwarm(tmp_path / "swarm", nodes=2, seed=1)
    try:
        swarm.start()
        swarm.wait(swarm.all_training, 120, "both nodes training")
        statuses = swarm.wait(lambda ss: all(s and s["merges"] > 0 and s["peer_count"] >= 1 for s in ss) and ss,
                              120, "both nodes merged a peer's checkpoint")
        assert len({s["author_key"] for s in statuses}) == 2
        pids = swarm.pids()
        assert all(pid_alive(p) for p in pids)
    finally:
        codes = swarm.stop()
    assert codes == {"node0": 0, "node1": 0}, [swarm.log_tail(m) for m in swarm.members]
    assert not any(pid_alive(p) for p in pids)
    assert not any(port_open(m.port) or port_open(m.api_port) for m in swarm.members)
    assert not list((tmp_path / "swarm").rglob("repo.lock"))
    assert swarm.stop() == codes  # idempotent


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    swarm = LocalSwarm(tmp_path / "swarm", nodes=1)
    swarm.create()
    hang = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    monkeypatch.setattr(swarm, "argv", lambda i: [sys.executable, "-c", hang])
    swarm.start()
    pid = swarm.pids()[0]
    m = swarm.members[0]
    swarm.wait(lambda ss: "up" in m.log.read_text(), 20, "the hanging process up")
    codes = swarm.stop(timeout=1)
    assert codes["node0"] == -signal.SIGKILL
    assert not pid_alive(pid)
    assert isinstance(m.proc, subprocess.Popen)
