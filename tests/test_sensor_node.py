"""Sensors feeding a trainer node process (``learnae node run``), end to end.

- a sensor in ``--via`` mode keeps feeding while its node is SIGKILLed and restarted twice on
  the same state directory and API port: every reading ends up exactly once, in order, in
  the chunks the node's ledger announces (decoded from the node's own IPFS repo);
- a sensor with its own embedded Kubo publishes chunks that a trainer node adopts into its
  training pool and names in a checkpoint's ``data``.

Real processes and real embedded Kubo nodes on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from procs.launch import Launcher, Proc, get_json

from learnae.formats import decode_chunk
from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ipfs import libkubo
from learnae.ledger.tangle import Tangle
from learnae.local.runner import free_port
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.state import init_swarm

pytestmark = pytest.mark.slow  # one node process at a time: runs beside the others (not a swarm)

ROOT = Path(__file__).resolve().parents[1]
# SIGUSR1 dumps every thread's stack into the node's log (what a node that does not stop is doing)
NODE = ("import faulthandler, signal; faulthandler.register(signal.SIGUSR1, all_threads=True);"
        " from learnae.cli import main; main()")


def _probe(path: Path, n: int, delay: float, linger: float = 0.0) -> str:
    """A source command printing ``n`` iris-shaped readings (``x[0]`` is the reading's index)."""
    path.write_text(
        "import json, sys, time\n"
        f"for i in range({n}):\n"
        "    print(json.dumps({'x': [i, 1.5, 2.5, 3.5], 'y': i % 3}), flush=True)\n"
        f"    time.sleep({delay})\n"
        f"time.sleep({linger})\n")
    return f"cmd:{sys.executable} {path}"


class Swarm:
    """An iris swarm, one trainer node process (fixed Kubo and API ports) and one sensor, started
    with the test's launcher."""

    def __init__(self, tmp: Path, launch: Launcher):
        self.tmp, self.launch = tmp, launch
        manifest = Manifest(checkpoint_interval=0, name="sensor-node", model=model_config("iris-mlp"), pow_bits=2, sync_every=3,
                            learning_rate=0.01)
        self.swarm = init_swarm(tmp / "founder", manifest)
        self.invite = tmp / "invite.json"
        self.swarm.invite.save(self.invite)
        self.state = tmp / "node"
        self.peer_id = libkubo.create_repo(self.state / "ipfs")
        self.port, self.api_port = free_port(), free_port()
        self.addr = f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.node: Proc | None = None  # the latest run
        self.sensor: Proc | None = None
        self.runs = 0

    # ------------------------------------------------------------------ node
    def start_node(self, *extra: str) -> None:
        self.runs += 1
        argv = [sys.executable, "-c", NODE, "node", "run", "--invite", str(self.invite),
                "--state", str(self.state), "--data", "iris", "--listen", f"127.0.0.1:{self.port}",
                "--api", f"127.0.0.1:{self.api_port}", "--seed", "0", "--quiet", *extra]
        self.node = self.launch.start(f"node.{self.runs}", argv, cwd=ROOT, stacks=signal.SIGUSR1,
                                      tail=lambda: f"status {self.status()}")

    def status(self) -> dict | None:
        return get_json(self.url + "/status")

    def wait(self, predicate, timeout: float, what: str):
        """:meth:`Launcher.wait` watching the latest run of the node (not the sensor)."""
        return self.launch.wait(predicate, timeout, what, watch=[self.node], interval=0.2)

    def wait_api(self) -> dict:
        return self.wait(lambda: (s := self.status()) and s.get("step", 0) >= 0 and s, 90, "the node's API")

    def data_count(self) -> int:
        s = self.status() or {}
        return ((s.get("ledger") or {}).get("by_kind") or {}).get("data", 0)

    def kill_node(self) -> None:
        self.node.send_signal(signal.SIGKILL)
        self.launch.wait_exit(self.node, 30)

    def stop_node(self) -> None:
        self.node.send_signal(signal.SIGTERM)
        assert self.launch.wait_exit(self.node, 90) == 0, self.node.tail()

    # ---------------------------------------------------------------- sensor
    def start_sensor(self, source: str, *extra: str, invite: Path | None = None) -> None:
        argv = [sys.executable, "-m", "learnae.sensor_cli", "run", "--invite",
                str(invite or self.invite), "--state", str(self.tmp / "pi"), "--source", source,
                "--name", "pi-1", *extra]
        self.sensor = self.launch.start("sensor", argv, cwd=ROOT)  # its cmd: probe in its group

    def sensor_key(self) -> bytes:
        return Identity.load(self.tmp / "pi" / "identity.key").public_key


async def _read_chunks(state: Path, swarm_key: str, cids: list[str], max_bytes: int, schema):
    """Decode chunks from the (stopped) node's own IPFS repo, offline."""
    from learnae.ipfs.embedded import EmbeddedNode

    ipfs = await EmbeddedNode.start(state / "ipfs", swarm_key)
    try:
        return [decode_chunk(await ipfs.cat(cid, timeout=10, max_size=max_bytes), max_bytes=max_bytes,
                             schema=schema) for cid in cids]
    finally:
        await ipfs.close()


async def test_via_sensor_survives_two_node_restarts(tmp_path, launch):
    n, rows = 300, 20
    s = Swarm(tmp_path, launch)
    s.start_node()
    s.wait_api()
    s.start_sensor(_probe(tmp_path / "probe.py", n, 0.05), "--via", s.url, "--rows", str(rows),
                   "--max-age", "30")
    for kill in range(2):  # SIGKILL while the sensor is feeding, restart on the same state and port
        before = s.data_count()
        s.wait(lambda b=before: s.data_count() >= b + 2, 60, f"two more chunks before kill {kill + 1}")
        s.kill_node()
        s.start_node()
        s.wait_api()
    assert s.launch.wait_exit(s.sensor, 120) == 0, s.sensor.tail(3000)
    stats = json.loads(s.sensor.stdout().strip().splitlines()[-1])
    assert stats["published_rows"] == n, stats
    s.wait(lambda: s.data_count() == n // rows, 30, "every chunk on the node's ledger")
    s.stop_node()
    with Tangle(s.state / "tangle.sqlite") as tangle:
        txs = tangle.data_by_author(s.sensor_key())
    seqs = [tx.payload["seq"] for tx in txs]
    assert sorted(seqs) == list(range(n // rows)), seqs  # each chunk once, no gap
    txs.sort(key=lambda tx: tx.payload["seq"])
    manifest = s.swarm.manifest
    chunks = await _read_chunks(s.state, s.swarm.invite.swarm_key, [tx.payload["cid"] for tx in txs],
                                manifest.limits.chunk_bytes, manifest.schema)
    assert [c.seq for c in chunks] == list(range(n // rows))
    readings = np.concatenate([c.x[:, 0] for c in chunks])
    assert readings.tolist() == list(range(n))  # every reading exactly once, in order
    assert np.concatenate([c.y for c in chunks]).tolist() == [i % 3 for i in range(n)]


async def test_embedded_sensor_chunks_are_adopted(tmp_path, launch):
    n, rows = 60, 10
    s = Swarm(tmp_path, launch)
    s.start_node()
    s.wait_api()
    invite = tmp_path / "sensor-invite.json"
    Invite.load(s.invite).with_bootstrap([s.addr]).save(invite)
    s.start_sensor(_probe(tmp_path / "probe.py", n, 0.01, linger=120), "--rows", str(rows),
                   "--max-age", "0.5", invite=invite)
    status = s.wait(lambda: (st := s.status()) and st["adopt"]["chunks"] == n // rows and st, 90,
                    "every chunk adopted")
    assert status["adopt"]["rows"] == n and status["adopt"]["policy"] == "all"
    assert not [k for k in status["rejections"] if k.startswith("data:")], status["rejections"]
    # a checkpoint published after the adoption names the chunks
    s.wait(lambda: (st := s.status()) and st["adopt"]["named"] == n // rows, 60, "the chunks named")
    author = bytes.fromhex(s.status()["author_key"])
    s.stop_node()
    with Tangle(s.state / "tangle.sqlite") as tangle:
        data_ids = {tx.id for tx in tangle.data_by_author(s.sensor_key())}
        named = [link for i in tangle.order() if (tx := tangle.get(i)).kind == "checkpoint"
                 and tx.author == author for link in tx.links("data")]
    assert len(data_ids) == n // rows
    assert sorted(named) == sorted(data_ids)  # each adopted chunk named once
