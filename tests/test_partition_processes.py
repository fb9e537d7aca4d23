"""Three ledger peers in separate processes, each with embedded Kubo, split 1|2 and healed.

As root the peers live in network namespaces of their own on one bridge and the
partition cuts host 0's link (a pulled cable: Kubo sees nothing at all). Without
root they share 127.0.0.1 and the partition comes from learnae's fault layer,
which drops the other side's gossip on receipt.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learnae.identity import Identity
from learnae.ipfs import libkubo, privnet
from learnae.ipfs.faults import write_control
from learnae.ledger.tx import make_tx
from learnae.local import netns
from learnae.local.runner import free_port

pytestmark = pytest.mark.slow

PEER = Path(__file__).parent / "procs" / "ledger_peer.py"
POW = 4


class Swarm:
    """Three peer processes, on namespaces (root) or on loopback with the fault layer."""

    def __init__(self, tmp: Path, lan: netns.Lan | None):
        self.tmp, self.lan = tmp, lan
        key = tmp / "swarm.key"
        key.write_text(privnet.new_swarm_key())
        genesis = make_tx(Identity.generate(), kind="genesis", payload={"name": "partition"},
                          parents=[], swarm=None, pow_bits=POW)
        (tmp / "genesis.tx").write_bytes(genesis.raw)
        self.states = [tmp / f"peer{i}" for i in range(3)]
        self.ids = [libkubo.create_repo(state / "ipfs") for state in self.states]
        if lan:
            hosts, ports = lan.addresses, [4001] * 3
        else:
            hosts, ports = ["127.0.0.1"] * 3, [free_port() for _ in range(3)]
        addrs = [f"/ip4/{h}/tcp/{p}/p2p/{i}" for h, p, i in zip(hosts, ports, self.ids, strict=True)]
        self.procs = []
        for i, state in enumerate(self.states):
            argv = [sys.executable, str(PEER), "--state", str(state), "--genesis", str(tmp / "genesis.tx"),
                    "--swarm-key", str(key), "--pow-bits", str(POW), "--host", hosts[i],
                    "--port", str(ports[i]), "--status", str(state / "status.json"), "--issue-every", "0.15"]
            argv += [a for flag in ("--peer",) for j, addr in enumerate(addrs) if j != i for a in (flag, addr)]
            if not lan:
                argv += ["--faults", str(state / "faults.json")]
            self.procs.append(subprocess.Popen(lan.command(i, argv) if lan else argv,
                                               stderr=open(state.with_suffix(".log"), "w")))

    def status(self, i: int) -> dict | None:
        try:
            return json.loads((self.states[i] / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def wait(self, predicate, timeout: float, what: str) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log = self.states[i].with_suffix(".log").read_text()[-3000:]
                    pytest.fail(f"peer {i} exited with {proc.returncode} while waiting for {what}:\n{log}")
            statuses = [self.status(i) for i in range(3)]
            if all(statuses) and predicate(statuses):
                return time.monotonic() - start
            time.sleep(0.2)
        pytest.fail(f"not within {timeout} s: {what}; counts {[s and s['count'] for s in statuses]}")

    def partition(self) -> None:
        if self.lan:
            self.lan.cut(0)
        else:
            self._faults({0: self.ids[1:], 1: self.ids[:1], 2: self.ids[:1]})

    def heal(self) -> None:
        if self.lan:
            self.lan.restore(0)
        else:
            self._faults({0: [], 1: [], 2: []})

    def _faults(self, blocked: dict[int, list[str]]) -> None:
        for i, ids in blocked.items():
            write_control(self.states[i] / "faults.json", blocked=ids)

    def quiet(self) -> None:
        for state in self.states:
            (state / "quiet").touch()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _everyone_has(ids_of: list[set], statuses) -> bool:
    return all(ids <= set(s["ids"]) for s in statuses for ids in ids_of)


def _converged(statuses) -> bool:
    first = statuses[0]
    return all(s["digest"] == first["digest"] and s["tips"] == first["tips"] for s in statuses)


@pytest.fixture(params=["namespaces", "fault-layer"])
def lan(request):
    """A 3-host LAN of namespaces (root only), or None: loopback plus the fault layer."""
    if request.param == "fault-layer":
        yield None
        return
    ok, why = netns.available()
    if not ok:
        pytest.skip(why)
    with netns.Lan(3) as made:
        yield made


def test_split_1_2_then_heal_converges(tmp_path, lan):
    swarm = Swarm(tmp_path, lan)
    try:
        # connected: every peer sees transactions issued by every other
        swarm.wait(lambda st: all(s["issued"] >= 3 for s in st), 60, "peers issuing")
        issued_early = [set(s["ids"]) for s in [swarm.status(i) for i in range(3)]]
        swarm.wait(lambda st: _everyone_has(issued_early, st), 60, "first exchange")

        swarm.partition()
        time.sleep(1.0)  # what was in flight lands
        before = [swarm.status(i) for i in range(3)]
        time.sleep(4.0)
        during = [swarm.status(i) for i in range(3)]
        new = [set(d["ids"]) - set(b["ids"]) for b, d in zip(before, during, strict=True)]
        # both sides kept issuing, and neither side saw the other's new transactions
        assert all(during[i]["issued"] > before[i]["issued"] for i in range(3))
        assert not (new[1] | new[2]) <= set(during[0]["ids"]), "peer 0 was not cut off"
        assert not new[0] <= set(during[1]["ids"]) | set(during[2]["ids"]), "peers 1 and 2 were not cut off"

        swarm.heal()
        swarm.quiet()
        seconds = swarm.wait(_converged, 90, "convergence after the heal")
        final = swarm.status(0)
        print(f"converged {seconds:.1f} s after the heal: {final['count']} txs, "
              f"{len(final['tips'])} tips ({'namespaces' if lan else 'fault layer'})")
        assert _everyone_has([set(d["ids"]) for d in during], [final])
    finally:
        swarm.stop()
