"""Trainer node processes (``learnae node run``) on loopback for the process tests.

:class:`Nodes` makes a swarm (its founder directory, the invite), one state directory, IPFS
repository and port per node, and starts each node knowing all the others' addresses (plus,
optionally, ``bad_peer.py``, a member that publishes hostile checkpoints).
"""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from pathlib import Path

from procs.launch import Launcher, Proc, read_json

from learnae.ipfs import libkubo
from learnae.local.runner import free_port
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.state import init_swarm

BAD_PEER = Path(__file__).parent / "bad_peer.py"
NODE = "from learnae.cli import main; main()"
SHARDS = "digits:shard={i}/{n},partition=dirichlet:0.5,seed=3"


class Nodes:
    """Trainer node processes (and an optional bad peer) on loopback, each knowing the others,
    started with the test's launcher."""

    def __init__(self, tmp: Path, launch: Launcher, n: int, *, bad_peer: bool = False,
                 sync_every: int = 5, manifest: Manifest | None = None, shards: str = SHARDS):
        self.launch = launch
        self.shards = shards
        manifest = manifest or Manifest(name="node-test", model=model_config("digits-mlp"), pow_bits=4,
                                        merge="mean", learning_rate=0.003, sync_every=sync_every,
                                        checkpoint_interval=0)
        self.invite = tmp / "invite.json"
        init_swarm(tmp / "founder", manifest).invite.save(self.invite)
        count = n + bad_peer
        self.states = [tmp / f"node{i}" for i in range(count)]
        ids = [libkubo.create_repo(s / "ipfs") for s in self.states]
        self.ports = [free_port() for _ in range(count)]
        self.addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{i}" for p, i in zip(self.ports, ids, strict=True)]
        self.n = n
        self.procs: dict[int, Proc] = {}  # the latest run of each

    def argv(self, i: int, *extra: str) -> list[str]:
        peers = [a for flag_addr in (("--peer", a) for j, a in enumerate(self.addrs) if j != i) for a in flag_addr]
        return [sys.executable, "-c", NODE, "node", "run", "--invite", str(self.invite),
                "--state", str(self.states[i]), "--data", self.shards.format(i=i, n=self.n),
                "--listen", f"127.0.0.1:{self.ports[i]}", "--seed", "0", *peers, *extra]

    def start(self, i: int, *extra: str) -> Proc:
        runs = sum(p.name.startswith(f"node{i}.") for p in self.launch.procs)
        self.procs[i] = self.launch.start(f"node{i}.{runs}", self.argv(i, *extra),
                                          tail=lambda: f"status {self._summary(i)}")
        return self.procs[i]

    def start_bad(self) -> None:
        i = self.n
        argv = [sys.executable, str(BAD_PEER), "--state", str(self.states[i]), "--invite", str(self.invite),
                "--port", str(self.ports[i]), "--status", str(self.states[i] / "bad.json"), "--every", "0.5"]
        argv += [a for j in range(self.n) for a in ("--peer", self.addrs[j])]
        self.procs[i] = self.launch.start("bad", argv)

    def status(self, i: int) -> dict | None:
        return read_json(self.states[i] / "status.json")

    def _summary(self, i: int) -> dict:
        s = self.status(i) or {}
        return {k: s.get(k) for k in ("step", "peer_count", "merges", "rejections")}

    def api(self, i: int, path: str) -> bytes:
        url = json.loads((self.states[i] / "api.json").read_text())["url"]
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            return resp.read()

    def wait(self, predicate, timeout: float, what: str):
        """:meth:`Launcher.wait` watching the latest run of each process (earlier ones exited)."""
        return self.launch.wait(predicate, timeout, what, watch=list(self.procs.values()),
                                interval=0.2)

    def terminate(self, i: int, timeout: float = 60, *, signal_sent: bool = False) -> int:
        """SIGTERM process i (once: a second one may land while Python finalizes); its exit status."""
        if not signal_sent:
            self.procs[i].send_signal(signal.SIGTERM)
        return self.launch.wait_exit(self.procs[i], timeout)
