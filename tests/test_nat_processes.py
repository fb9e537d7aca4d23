"""Trainer nodes behind home routers merge each other's checkpoints (real processes, namespaces).

B and C sit each behind a masquerading router of its own and are told only A, a relay member
with a public address that trains and merges nothing. Two router setups:

- **hole-punched**: the routers keep ports (endpoint-independent mapping). Four more public
  relay members run beside A (B and C find them by peer exchange) because go-libp2p 0.29 starts
  hole punching only once four public peers have seen the same address, and two dials to one
  of them at the same moment can spoil its observation; A serves no checkpoints, so whatever
  B gets of C's it got from C itself, over the connection the hole punch made.
- **relayed**: symmetric NATs (a new port per connection): no hole punch can work. B and C stay
  connected through A's relay, which carries no data in Kubo 0.22, so A serves each author's
  newest checkpoint and B and C fetch from it.

Each test reports the connection it saw. Every host counts what it sends outside the test's
own networks: nothing may be (relays, AutoNAT and hole punching included).
"""

from __future__ import annotations

import time

import pytest

from learnae.local import netns
from learnae.local.natlab import NatLab

ok, why = netns.nat_available()
pytestmark = [pytest.mark.slow, pytest.mark.swarm, pytest.mark.root, pytest.mark.skipif(not ok, reason=why or "nat available")]


@pytest.mark.parametrize("punch", [True, False], ids=["hole-punched", "relayed"])
def test_trainers_behind_nat_merge_each_others_checkpoints(punch, tmp_path, launch, record_property):
    with NatLab(tmp_path, relays=5 if punch else 1, trainers=2, hole_punching=punch,
                serve_checkpoints=not punch) as lab:
        b, c = lab.relays, lab.relays + 1
        try:
            started = time.monotonic()
            for i in range(lab.size):
                launch.start(lab.name(i), lab.argv(i))
            seconds = launch.wait(lambda: lab.merged_from(b, c) and lab.merged_from(c, b)
                                  and time.monotonic() - started, 240,
                                  "B and C to merge checkpoints authored by each other")
            via = launch.wait(lambda: lab.via(b, c), 30, "B to list its connection to C")
            statuses = [lab.status(i) for i in range(lab.size)]
        finally:
            launch.stop_all()
        foreign = lab.net.foreign_packets()
    record_property("connection", via)
    record_property("first_mutual_merge_s", round(seconds, 1))
    print(f"B-C connection: {via}; both merged the other's checkpoints {seconds:.0f} s after start")
    assert via == ("direct" if punch else "relayed")
    assert all(s["network"]["reachability"] == "private" for s in statuses[b:])
    assert all(s["network"]["role"] == "relay" and s["merges"] == 0 and s["published"] == 0
               for s in statuses[:b])
    served = statuses[0]["network"]["served"]
    if punch:
        assert served is None  # A never held their checkpoints
    else:
        assert served["fetched"] > 0 and served["checkpoints_held"] == 2
    assert foreign and not any(foreign.values()), foreign
