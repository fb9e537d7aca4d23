"""Three ledger peers in separate processes, each with embedded Kubo, split 1|2 and healed.

As root the peers live in network namespaces of their own on one bridge and the
partition cuts host 0's link (a pulled cable: Kubo sees nothing at all). Without
root they share 127.0.0.1 and the partition comes from learnae's fault layer,
which drops the other side's gossip on receipt.
"""

from __future__ import annotations

import json
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

pytestmark = [pytest.mark.slow, pytest.mark.swarm]

PEER = Path(__file__).parent / "procs" / "ledger_peer.py"
POW = 4


class Swarm:
    """Three peer processes, on namespaces (root) or on loopback with the fault layer."""

    def __init__(self, tmp: Path, lan: netns.Lan | None, launch):
        self.tmp, self.lan, self.launch = tmp, lan, launch
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
        for i, state in enumerate(self.states):
            argv = [sys.executable, str(PEER), "--state", str(state), "--genesis", str(tmp / "genesis.tx"),
                    "--swarm-key", str(key), "--pow-bits", str(POW), "--host", hosts[i],
                    "--port", str(ports[i]), "--status", str(state / "status.json"), "--issue-every", "0.15"]
            argv += [a for flag in ("--peer",) for j, addr in enumerate(addrs) if j != i for a in (flag, addr)]
            if not lan:
                argv += ["--faults", str(state / "faults.json")]
            launch.start(f"peer{i}", lan.command(i, argv) if lan else argv)

    def status(self, i: int) -> dict | None:
        try:
            return json.loads((self.states[i] / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def statuses(self) -> list[dict] | None:
        """Every peer's latest status, or None while one has not written any yet."""
        found = [self.status(i) for i in range(3)]
        return found if all(found) else None

    def wait(self, predicate, timeout: float, what: str) -> float:
        """Wait until ``predicate(statuses)``; the seconds it took."""
        start = time.monotonic()
        self.launch.wait(lambda: (st := self.statuses()) is not None and predicate(st), timeout, what)
        return time.monotonic() - start

    def partition(self) -> None:
        """Cut peer 0 off from peers 1 and 2; returns once the cut is in force everywhere."""
        if self.lan:
            self.lan.cut(0)
        else:
            blocked = {0: self.ids[1:], 1: self.ids[:1], 2: self.ids[:1]}
            self._faults(blocked)
            self.wait(lambda st: all(st[i]["blocked"] == sorted(ids) for i, ids in blocked.items()),
                      30, "every peer's fault layer blocking the other side")

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


SIDES = ([0], [1, 2])


def test_split_1_2_then_heal_converges(tmp_path, lan, launch):
    swarm = Swarm(tmp_path, lan, launch)
    # connected: every peer sees transactions issued by every other
    swarm.wait(lambda st: all(s["issued"] >= 3 for s in st), 60, "peers issuing")
    early = [set(s["mine"]) for s in swarm.statuses()]
    swarm.wait(lambda st: _everyone_has(early, st), 60, "first exchange")

    swarm.partition()
    # every peer issues once more, so that what each issued before the cut is in its status
    issued = [s["issued"] for s in swarm.statuses()]
    swarm.wait(lambda st: all(s["issued"] > n for s, n in zip(st, issued, strict=True)), 30,
               "a transaction from every peer after the cut")
    before = [set(s["mine"]) for s in swarm.statuses()]

    def made_since(st) -> list[set]:
        return [set(s["mine"]) - b for s, b in zip(st, before, strict=True)]

    # both sides keep issuing, and each side's peers hold what their own side made since the cut
    # (so what the other side made would be there too, had it crossed the cut) ...
    swarm.wait(lambda st: all(len(m) >= 10 for m in made_since(st)), 60,
               "10 transactions from every peer during the partition")
    made = made_since(swarm.statuses())
    for side in SIDES:
        swarm.wait(lambda st, side=side: all(made[j] <= set(st[i]["ids"]) for i in side for j in side),
                   60, f"peers {side} holding what they made during the partition")
    # ... and none of what the other side made since the cut
    during = swarm.statuses()
    made = made_since(during)
    for side, other in (SIDES, SIDES[::-1]):
        for i in side:
            leaked = set(during[i]["ids"]) & set().union(*(made[j] for j in other))
            assert not leaked, f"peer {i} holds {len(leaked)} transactions made across the cut"

    swarm.heal()
    swarm.quiet()
    seconds = swarm.wait(_converged, 90, "convergence after the heal")
    final = swarm.statuses()
    print(f"converged {seconds:.1f} s after the heal: {final[0]['count']} txs, "
          f"{len(final[0]['tips'])} tips ({'namespaces' if lan else 'fault layer'})")
    assert _everyone_has([set(s["mine"]) for s in final], final)
