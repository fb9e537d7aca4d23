"""Spot checks between real node processes: a lazy member is disputed and left out of merges.

Four ``learnae node run`` processes (embedded Kubo, TensorFlow, digits on Dirichlet(0.5)
shards) on loopback; one of them runs ``--behaviour lazy``: it trains nothing and republishes
what it merged plus noise. The swarm checks every checkpoint (``rate`` 1: two of the three
others judge each one; the default 5% is exercised by the memory driver's ``verification``
scenario, which needs 20 nodes). The honest nodes dispute the lazy node's checkpoints, flag
it, refuse its checkpoints as ``low-standing``, never flag each other, and ``learnae ledger
attestations`` shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from procs.nodes import Nodes

from learnae.manifest import Manifest, Verification
from learnae.models import model_config

pytestmark = [pytest.mark.slow, pytest.mark.swarm]

NODES, LAZY = 4, 3


def test_a_lazy_node_is_disputed_flagged_and_left_out_of_merges(tmp_path, launch):
    manifest = Manifest(name="verify-test", model=model_config("digits-mlp"), pow_bits=4, merge="mean",
                        learning_rate=0.003, sync_every=5, checkpoint_interval=1.0,
                        verification=Verification(rate=1.0))
    nodes = Nodes(tmp_path, launch, NODES, manifest=manifest)
    for i in range(NODES):
        nodes.start(i, *(["--behaviour", "lazy"] if i == LAZY else []))
    honest = [i for i in range(NODES) if i != LAZY]
    keys = nodes.wait(lambda: all(nodes.status(i) for i in range(NODES))
                      and [nodes.status(i)["author_key"] for i in range(NODES)], 120, "every node's status")

    def excluded(i: int) -> bool:
        s = nodes.status(i)
        return keys[LAZY] in s["verification"]["flagged"] and s["rejections"].get("low-standing", 0) > 0

    nodes.wait(lambda: all(excluded(i) for i in honest), 240,
               "every honest node flagging the lazy one and refusing its checkpoints")
    statuses = {i: nodes.status(i) for i in range(NODES)}
    for i in honest:
        assert nodes.terminate(i) == 0, nodes.procs[i].tail()
    assert nodes.terminate(LAZY) == 0, nodes.procs[LAZY].tail()

    for i in honest:
        v = statuses[i]["verification"]
        assert v["flagged"] == [keys[LAZY]], f"node{i} flagged {v['flagged']}"
    assert sum(statuses[i]["verification"]["disputed"] for i in honest) > 0
    out = subprocess.run([sys.executable, "-c", "from learnae.cli import main; main()", "ledger",
                          "attestations", str(nodes.states[0]), "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    report = json.loads(out)
    flagged = [row["author_key"] for row in report["standings"] if row["flagged"]]
    assert flagged == [keys[LAZY]]
    disputes = report["disputes"]
    assert disputes and {d["code"] for d in disputes} <= {"holdout-no-gain", "holdout-worse"}
    lazy_id = next(row["author"] for row in report["standings"] if row["author_key"] == keys[LAZY])
    assert any(d["subject"] == lazy_id for d in disputes)
    text = subprocess.run([sys.executable, "-c", "from learnae.cli import main; main()", "ledger",
                           "attestations", str(nodes.states[0])],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    assert "yes" in text and "holdout-" in text
