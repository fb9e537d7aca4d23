"""Trainer nodes (``learnae node run``) as separate processes, each with embedded Kubo, in
one private swarm on 127.0.0.1, training on digits with Dirichlet(0.5) shards.

- three nodes: checkpoints reach every tangle, lineage shows merges of peers' checkpoints,
  and each node ends more accurate on the common test split than the same node alone;
- SIGTERM mid-training publishes a final checkpoint; a restart on the same state directory
  resumes (step continues, tangle intact) and rejoins its peer;
- a hostile member's checkpoints (unfetchable CID, wrong shape, NaN, norm 1000x) are refused
  and counted by reason in ``/status`` while training goes on.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from procs.nodes import SHARDS, Nodes

from learnae.ledger.tangle import Tangle
from learnae.manifest import Manifest
from learnae.models import model_config

pytestmark = [pytest.mark.slow, pytest.mark.swarm]


def _alone_accuracy(i: int, n: int, epochs: int) -> float:
    """The same node trained on its shard alone, same seed and epochs."""
    from learnae.training.data import DataSpec
    from learnae.training.model import build_model, evaluate

    manifest = Manifest(name="alone", model=model_config("digits-mlp"), learning_rate=0.003)
    splits = DataSpec.parse(SHARDS.format(i=i, n=n)).load()
    model = build_model(manifest.model, optimizer=manifest.optimizer, learning_rate=manifest.learning_rate, seed=0)
    model.fit(splits.train.x, splits.train.y, batch_size=manifest.batch_size, epochs=epochs, verbose=0)
    return evaluate(model, splits.test.x, splits.test.y)["accuracy"]


KEYED_BY_DATA = {"rejections", "errors", "by_kind", "checkpoints_by_author", "merged_from", "by_code",
                 "standings"}
"""``/status`` maps whose keys are data (reason codes, tx kinds, author ids), not names."""
UNIT_WORDS = ("time", "uptime", "seconds", "duration", "elapsed", "bytes", "size")
UNIT_SUFFIXES = ("_s", "_ms", "_bytes")


def _check_status_names(status: dict, where: str = "") -> None:
    """Every key of a node's ``/status`` (at any depth) is snake_case, and a key naming a
    quantity with a unit (a time, a size) ends with the unit."""
    for key, value in status.items():
        path = f"{where}.{key}" if where else key
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", key), f"/status key {path!r} is not snake_case"
        words = key.split("_")
        assert not any(w in words for w in UNIT_WORDS) or key.endswith(UNIT_SUFFIXES), \
            f"/status key {path!r} names a quantity without its unit"
        if isinstance(value, dict):
            for sub_key, sub in (value.items() if key in KEYED_BY_DATA else [("", value)]):
                if isinstance(sub, dict):
                    _check_status_names(sub, f"{path}.{sub_key}" if sub_key else path)


def _thread_nice(pid: int) -> dict[int, int]:
    """Thread id -> nice value of every thread of process ``pid`` (Linux /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        out[int(task.name)] = int(stat[stat.rindex(")") + 2:].split()[16])  # field 19: nice
    return out


def test_three_nodes_share_merge_and_beat_training_alone(tmp_path, launch):
    epochs = 40
    nodes = Nodes(tmp_path, launch, 3)
    for i in range(3):
        nodes.start(i, "--wait-peers", "2", "--fetch-timeout", "10", "--sync-every", "epoch")
    # all train side by side until each has done `epochs` and merged checkpoints of both peers
    # (on a loaded CI machine one node made 6 merges, none with one of its peers, by the time
    # all were past `epochs`; the others made 15 and 12), then all stop together
    nodes.wait(lambda: all((s := nodes.status(i)) and s["epoch"] >= epochs and len(s["merged_from"]) == 2
                           for i in range(3)), 150,
               f"every node past {epochs} epochs, with merges of both its peers")
    # training (the main thread) keeps the process's priority; the network side runs nicer
    pid = nodes.procs[0].pid
    nice = _thread_nice(pid)
    others = {v for tid, v in nice.items() if tid != pid}
    assert min(19, nice[pid] + 10) in others, nice
    for proc in nodes.procs.values():
        proc.send_signal(signal.SIGTERM)
    codes = [nodes.terminate(i, signal_sent=True) for i in range(3)]
    statuses = [nodes.status(i) for i in range(3)]
    authors = {s["author_key"] for s in statuses}
    alone = [_alone_accuracy(i, 3, s["epoch"]) for i, s in enumerate(statuses)]
    for i, s in enumerate(statuses):
        print(f"node{i}: step {s['step']} published {s['published']} merges {s['merges']} "
              f"applied {s['merges_applied']} epochs {s['epoch']} test {s['test']['accuracy']:.3f} alone {alone[i]:.3f} "
              f"rejections {s['rejections']} ledger {s['ledger']['by_kind']}")
    for i, s in enumerate(statuses):
        assert codes[i] == 0, f"node{i} exited with {codes[i]}:\n{nodes.procs[i].tail()}"
        assert set(s["ledger"]["checkpoints_by_author"]) == authors, f"node{i} lacks a peer's checkpoints"
        assert s["merges"] > 0 and s["merges_applied"] > 0
        # its line of the credits table: its checkpoints, some of them merged by the others
        assert s["credits"]["checkpoints"] > 0 and s["credits"]["merged"] > 0, s["credits"]
        # No honest checkpoint may be refused for its content. A fetch timeout is not such a
        # refusal: each node's final merge on stop fetches from peers stopping at the same moment.
        refused = {code: n for code, n in s["rejections"].items() if code != "timeout"}
        assert not refused, s["rejections"]
        with Tangle(nodes.states[i] / "tangle.sqlite") as tangle:
            assert not tangle.verify()
            lineage = tangle.lineage(s["last_checkpoint"]["tx"])
            lineage_authors = {tx.author.hex() for tx in lineage.values() if tx is not None}
            assert lineage_authors == authors, f"node{i}'s lineage holds no merge of some peer"
        assert s["test"]["accuracy"] > alone[i], f"node{i}: swarm {s['test']['accuracy']} <= alone {alone[i]}"


def test_sigterm_publishes_final_checkpoint_and_restart_resumes_and_rejoins(tmp_path, launch):
    nodes = Nodes(tmp_path, launch, 2)
    for i in range(2):
        nodes.start(i, "--wait-peers", "1")
    keys = nodes.wait(lambda: all(nodes.status(i) and nodes.status(i)["step"] >= 60 for i in range(2))
                      and [nodes.status(i)["author_key"] for i in range(2)], 60, "both nodes training")
    live = nodes.wait(lambda: (s := json.loads(nodes.api(0, "/status"))).get("last_checkpoint")
                      and s["peer_count"] >= 1 and s, 30, "node 0 with a checkpoint and a peer")
    _check_status_names(live)
    assert live["uptime_s"] > 0 and live["peer_count"] == len(live["peer_ids"])
    assert live["last_checkpoint"]["time_ms"] > 1e12  # ms since the epoch
    metrics = nodes.api(0, "/metrics").decode()
    assert "\nlearnae_uptime_seconds " in metrics and "\nlearnae_peers " in metrics
    assert nodes.terminate(1) == 0, nodes.procs[1].tail()
    stopped = nodes.status(1)
    progress = json.loads((nodes.states[1] / "progress.json").read_text())
    assert stopped["stopping"] and progress["step"] == stopped["step"] >= 60
    assert progress["last_checkpoint"]["step"] == stopped["step"], "no final checkpoint at the stop"
    assert 1 <= len(progress["pinned"]) <= 3 and progress["last_checkpoint"]["cid"] in progress["pinned"]
    with Tangle(nodes.states[1] / "tangle.sqlite") as tangle:
        before = set(tangle.order())
        kinds = {t: tangle.get(t).kind for t in before}
        assert progress["last_checkpoint"]["tx"] in before

    nodes.start(1, "--wait-peers", "1")
    resumed = nodes.wait(lambda: (s := nodes.status(1)) and s.get("resumed_from") == stopped["step"]
                         and s["step"] > stopped["step"] + 20 and s["peer_count"] >= 1 and s, 60,
                         "the restarted node resuming")
    assert resumed["ledger"]["transactions"] >= len(before)
    # node 0 gets the restarted node's new checkpoints: it rejoined
    nodes.wait(lambda: (nodes.status(0)["ledger"]["checkpoints_by_author"].get(keys[1]) or {}).get("step", 0)
               > stopped["step"], 30, "node 0 receiving the restarted node's checkpoints")
    assert nodes.terminate(1) == 0 and nodes.terminate(0) == 0
    with Tangle(nodes.states[1] / "tangle.sqlite") as tangle:
        # nothing acknowledged is lost; old checkpoints beyond the ledger's keep (16 per
        # author) may have been pruned meanwhile (a prune runs after a minute), leaving frontier
        # entries
        missing = before - set(tangle.order())
        assert all(kinds[t] == "checkpoint" for t in missing), missing
        assert tangle.pruning()["total"] >= len(missing) and not tangle.verify()


def test_bad_peers_are_rejected_and_counted_while_training_goes_on(tmp_path, launch):
    nodes = Nodes(tmp_path, launch, 1, bad_peer=True)
    want = {"timeout", "schema", "non-finite", "norm", "codec"}
    nodes.start(0, "--fetch-timeout", "2")
    nodes.start_bad()
    nodes.wait(lambda: (s := nodes.status(0)) and want <= set(s["rejections"]), 90,
               "every kind of bad checkpoint refused")
    status = json.loads(nodes.api(0, "/status"))
    assert want <= set(status["rejections"]) and status["merges"] == 0
    step = status["step"]
    nodes.wait(lambda: nodes.status(0)["step"] > step + 50, 30, "training going on")
    metrics = nodes.api(0, "/metrics").decode()
    assert 'learnae_rejections{reason="norm"}' in metrics
    tips = json.loads(nodes.api(0, "/ledger/tips"))
    assert tips["count"] > 1 and tips["tips"]
    assert nodes.terminate(0) == 0, nodes.procs[0].tail()


def test_a_second_node_on_the_same_state_directory_is_refused(tmp_path, launch):
    nodes = Nodes(tmp_path, launch, 1)
    nodes.start(0)
    nodes.wait(lambda: (s := nodes.status(0)) and s["step"] > 0, 60, "the node training")
    second = launch.start("second", nodes.argv(0))
    assert launch.wait_exit(second, 60) == 2
    assert "another learnae node is running" in second.stderr()
    assert nodes.procs[0].returncode() is None
    assert nodes.terminate(0) == 0, nodes.procs[0].tail()
