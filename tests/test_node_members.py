"""Membership between real node processes: a closed swarm admits a sensor and revokes a node.

Three ``learnae node run`` processes (embedded Kubo, TensorFlow, digits) on loopback, in a
closed swarm whose genesis admits the three of them and names node0 a steward. While they
train, ``learnae admit`` (run against node0's state directory: it posts to node0's API) admits
a Raspberry-Pi-style sensor, whose chunks the nodes then adopt; ``learnae revoke`` revokes
node2: node2 stops with exit status 3, saying why; a checkpoint signed by node2's key after
the revocation is refused by the other two nodes with code ``revoked``; node2's earlier
checkpoints stay in every ledger and still verify.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from procs.nodes import Nodes

from learnae.identity import Identity
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import checkpoint_payload
from learnae.manifest import Manifest
from learnae.models import model_config

pytestmark = [pytest.mark.slow, pytest.mark.swarm]

CLI = "from learnae.cli import main; main()"
READINGS, ROWS = 60, 10


def learnae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120)


def post_tx(nodes: Nodes, i: int, raw: bytes) -> tuple[int, dict]:
    url = json.loads((nodes.states[i] / "api.json").read_text())["url"]
    request = urllib.request.Request(f"{url}/ledger/tx", data=raw, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def digits_probe(path: Path) -> str:
    """A source command printing digits-shaped readings (64 features, labels 0-9)."""
    path.write_text("import json\n"
                    f"for i in range({READINGS}):\n"
                    "    print(json.dumps({'x': [float((i + j) % 17) for j in range(64)], 'y': i % 10}), flush=True)\n")
    return f"cmd:{sys.executable} {path}"


def test_a_closed_swarm_admits_a_sensor_later_and_revokes_a_node(tmp_path, launch):
    keys = []
    for name in ("node0", "node1", "node2", "pi"):
        (tmp_path / name).mkdir()
        identity = Identity.generate()
        identity.save(tmp_path / name / "identity.key")
        keys.append(identity)
    *members, sensor = keys
    manifest = Manifest(name="members-test", model=model_config("digits-mlp"), pow_bits=4, learning_rate=0.003,
                        sync_every=5, checkpoint_interval=1.0,
                        admission=tuple(m.author_id for m in members), stewards=(members[0].author_id,))
    nodes = Nodes(tmp_path, launch, 3, manifest=manifest)
    for i in range(3):
        nodes.start(i)
    nodes.wait(lambda: all((nodes.status(i) or {}).get("published", 0) >= 2 for i in range(3)), 120,
               "every node publishing")

    # A sensor joins after the founding: a steward admits it, then it feeds node1.
    out = learnae("admit", str(nodes.states[0]), sensor.author_id, "--role", "sensor")
    assert out.returncode == 0 and "inserted by the node" in out.stdout, out.stderr
    nodes.wait(lambda: (nodes.status(1) or {}).get("ledger", {}).get("by_kind", {}).get("admit") == 1, 60,
               "node1 holding the admit")
    url = json.loads((nodes.states[1] / "api.json").read_text())["url"]
    feeder = launch.start("sensor", [sys.executable, "-m", "learnae.sensor_cli", "run", "--invite", str(nodes.invite),
                                     "--state", str(tmp_path / "pi"), "--source", digits_probe(tmp_path / "probe.py"),
                                     "--via", url, "--rows", str(ROWS), "--max-age", "0.5"])
    assert launch.wait_exit(feeder, 120) == 0, feeder.tail(3000)
    chunks = READINGS // ROWS
    nodes.wait(lambda: all((nodes.status(i) or {}).get("adopt", {}).get("chunks", 0) == chunks for i in (0, 1)), 90,
               "node0 and node1 adopting every chunk of the admitted sensor")

    # node2 is revoked: it stops, saying why, and its later checkpoints are refused everywhere.
    earlier = nodes.status(2)["published"]
    out = learnae("revoke", str(nodes.states[0]), members[2].author_id, "--reason", "test: revoked")
    assert out.returncode == 0, out.stderr
    revoke_id = out.stdout.split()[1]
    assert nodes.launch.wait_exit(nodes.procs[2], 120) == 3, nodes.procs[2].tail(3000)
    refused = nodes.status(2)["refused"]
    assert "revoked" in refused and "test: revoked" in refused, refused
    with Tangle(nodes.states[0] / "tangle.sqlite", read_only=True) as ledger:
        late = ledger.make(members[2], "checkpoint", checkpoint_payload(
            cid="bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e", size=1, step=10**6,
            samples=1, base=[], data=[], metrics={}), approve=revoke_id)
    for i in (0, 1):
        status, answer = post_tx(nodes, i, late.raw)
        assert (status, answer["error"]) == (403, "revoked") and "test: revoked" in answer["reason"], answer
    for i in (0, 1):
        assert nodes.terminate(i) == 0, nodes.procs[i].tail()

    for i in (0, 1):
        state = str(nodes.states[i])
        assert learnae("ledger", "verify", state).returncode == 0
        with Tangle(nodes.states[i] / "tangle.sqlite", read_only=True) as ledger:
            kept = [tx for tx in ledger.checkpoints_since(0)[0] if tx.author == members[2].public_key]
        assert kept and earlier >= 2, (len(kept), earlier)  # node2's earlier checkpoints stay, and verify
        listing = json.loads(learnae("ledger", "members", state, "--json").stdout)["members"]
        by_id = {m["author"]: m for m in listing}
        assert by_id[sensor.author_id]["role"] == "sensor" and by_id[sensor.author_id]["since"]
        assert by_id[members[2].author_id]["reason"] == "test: revoked"
        assert by_id[members[0].author_id]["standing"] == "steward" and not by_id[members[0].author_id]["revoked"]
        credits = {row["author"]: row for row in json.loads(learnae("ledger", "credits", state, "--json").stdout)["credits"]}
        assert credits[sensor.author_id]["data_rows"] == READINGS
