"""A node that runs for weeks, in real processes: a bounded IPFS repository, a pruned ledger,
and a late node that joins from a snapshot (``learnae.node.upkeep``).

- Two ``mlp-1m`` nodes (4.3 MB checkpoints) publish and merge until more than twice the
  repository's bound has gone through each; the repository, measured right after each garbage
  collection, stays under the bound, and the checkpoints a node keeps pinned are still fetched
  by a new peer.
- Two nodes prune their ledgers (a 4 s window, 2 checkpoints per author) and publish
  snapshots; they go on accepting each other's new transactions; a third node joining late
  imports a snapshot and merges within seconds; ``learnae ledger verify`` passes on a pruned
  ledger and says what was pruned.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs.nodes import NODE, Nodes

from learnae.errors import ConfigError
from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ledger.tangle import Tangle
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node.upkeep import (
    LEDGER_ROOM,
    check_budget,
    checkpoint_bytes,
    format_size,
    measure,
    parse_size,
    repo_bound,
)
from learnae.state import StateDir


# --------------------------------------------------------------------------- sizes and bounds
def test_sizes_read_and_print_in_binary_units():
    assert [parse_size(t) for t in ("2G", "512M", "1.5G", "1073741824", "2GiB", "2gb", "10k")] == [
        2 << 30, 512 << 20, 3 << 29, 1 << 30, 2 << 30, 2 << 30, 10 << 10]
    for bad in ("", "x", "2X", "-1G", "G", "nanM"):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(bad)
    assert [format_size(n) for n in (2 << 30, 3 << 20, 1536, 1000)] == ["2G", "3M", "1536", "1000"]
    assert all(parse_size(format_size(n)) == n for n in (2 << 30, 3 << 20, 1536, 1000))


def test_a_budget_the_model_cannot_fit_is_refused_with_the_least_that_works():
    ckpt = checkpoint_bytes(1_053_194)  # mlp-1m
    assert 4_250_000 < ckpt < 4_400_000
    need = repo_bound(keep=3, k=4, checkpoint=ckpt) + LEDGER_ROOM
    assert need == 11 * ckpt + (64 << 20) + (64 << 20)
    check_budget(need, keep=3, k=4, checkpoint=ckpt)
    with pytest.raises(ConfigError, match=r"--disk-max 100 MiB is too small.* at least 173 MiB\. Raise"):
        check_budget(100 << 20, keep=3, k=4, checkpoint=ckpt)


def test_the_state_directory_is_measured_by_part(tmp_path):
    paths = StateDir(tmp_path)
    (tmp_path / "ipfs" / "blocks").mkdir(parents=True)
    (tmp_path / "ipfs" / "blocks" / "a.data").write_bytes(b"x" * 100_000)
    paths.tangle.write_bytes(b"t" * 50_000)
    Path(f"{paths.tangle}-wal").write_bytes(b"w" * 20_000)
    paths.adopted.write_bytes(b"a" * 30_000)
    use = measure(paths, budget=150_000)
    assert 100_000 <= use.ipfs < 110_000 and 70_000 <= use.ledger < 80_000 and 30_000 <= use.adopted < 40_000
    assert use.total >= use.ipfs + use.ledger + use.adopted and use.over
    assert "over --disk-max" in use.explain(keep=3, pinned=2) and "Raise --disk-max" in use.explain(keep=3, pinned=2)
    assert not measure(paths, budget=10 << 20).over


# --------------------------------------------------------------------------- node processes
@pytest.mark.slow  # one node process: not a swarm
def test_checkpoints_are_paced_by_the_manifest_interval(tmp_path, launch):
    manifest = Manifest(name="paced", model=model_config("digits-mlp"), pow_bits=2, sync_every=1,
                        learning_rate=0.003, checkpoint_interval=1.0)
    nodes = Nodes(tmp_path, launch, 1, manifest=manifest)
    nodes.start(0, "--api", "off")
    nodes.wait(lambda: (nodes.status(0) or {}).get("published", 0) >= 6, 120, "six checkpoints published")
    assert nodes.terminate(0) == 0
    with Tangle(nodes.states[0] / "tangle.sqlite", read_only=True) as tangle:
        times = sorted(tx.time for tx in tangle.checkpoints_since(0)[0])
    gaps = [b - a for a, b in zip(times, times[1:-1], strict=False)]  # the last: the final checkpoint at stop
    assert len(gaps) >= 4 and min(gaps) >= 900, gaps  # a batch takes milliseconds: one offer per batch


@pytest.mark.slow
@pytest.mark.swarm
def test_the_repository_shrinks_back_under_its_bound_and_keeps_its_pins(tmp_path, launch):
    manifest = Manifest(name="upkeep", model=model_config("mlp-1m"), pow_bits=2, sync_every=5,
                        learning_rate=0.001, checkpoint_interval=0.5)
    nodes = Nodes(tmp_path, launch, 2, manifest=manifest)
    for i in range(2):
        nodes.start(i, "--keep", "2", "--k", "1", "--api", "off")

    def churned(i: int) -> dict | None:
        s = nodes.status(i) or {}
        disk = s.get("disk", {})
        bound = disk.get("ipfs_bound_bytes")
        return disk if bound and disk.get("gc_freed_bytes", 0) > 2 * bound and s.get("merges", 0) >= 5 else None

    for i in range(2):
        nodes.wait(lambda i=i: churned(i), 240, f"node{i} sent more than twice its bound through its repository")
    # From here on, every look at the disk comes right after a collection: each is under the bound.
    seen: dict[int, int] = {0: 0, 1: 0}
    checked = {0: set(), 1: set()}

    def looked_again() -> bool:
        for i in range(2):
            disk = (nodes.status(i) or {}).get("disk", {})
            gc = disk.get("gc") or {}
            if "ipfs_bytes" in disk and gc:
                assert disk["ipfs_bytes"] <= disk["ipfs_bound_bytes"], (i, disk)
                checked[i].add(disk["ipfs_bytes"])
            seen[i] = len(checked[i])
        return all(n >= 2 for n in seen.values())

    nodes.wait(looked_again, 60, "two more measurements of each node's repository")

    # The pinned checkpoints (node0's last 2) are fetched by a node that never held them.
    nodes.terminate(1)
    nodes.terminate(0)
    me = Identity.load(nodes.states[0] / "identity.key").public_key
    with Tangle(nodes.states[0] / "tangle.sqlite", read_only=True) as tangle:
        mine = sorted((tx for tx in tangle.checkpoints_since(0)[0] if tx.author == me),
                      key=lambda tx: tx.time, reverse=True)
    assert len(mine) > 2
    kept, dropped = [tx.payload["cid"] for tx in mine[:2]], mine[-1].payload["cid"]
    nodes.start(0, "--keep", "2", "--k", "1", "--api", "off")  # to serve them
    asyncio.run(_fetch_from(nodes, 0, kept, dropped))


async def _fetch_from(nodes: Nodes, i: int, kept: list[str], dropped: str) -> None:
    """A new embedded node, told only node ``i``'s address, fetches ``kept``; ``dropped`` is gone."""
    from learnae.errors import IpfsError, IpfsTimeout
    from learnae.ipfs.embedded import EmbeddedNode

    invite = Invite.load(nodes.invite)
    peer = await EmbeddedNode.start(nodes.states[i].parent / "fetcher", invite.swarm_key)
    try:
        deadline = time.monotonic() + 120  # the node process starts Kubo in a few seconds
        while True:
            try:
                await peer.connect(nodes.addrs[i], timeout=10)
                break
            except IpfsError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        for cid in kept:
            assert len(await peer.cat(cid, timeout=30)) > 4_000_000
        with pytest.raises(IpfsTimeout):
            await peer.cat(dropped, timeout=3)
    finally:
        await peer.close()


@pytest.mark.slow
@pytest.mark.swarm
def test_a_pruned_swarm_goes_on_and_a_late_node_joins_from_a_snapshot(tmp_path, launch):
    manifest = Manifest(name="pruned", model=model_config("digits-mlp"), pow_bits=2, sync_every=5,
                        learning_rate=0.003, checkpoint_interval=0.2)
    nodes = Nodes(tmp_path, launch, 3, manifest=manifest)
    upkeep = ("--ledger-window", "4", "--ledger-keep", "2", "--snapshot-interval", "5")
    for i in range(2):
        nodes.start(i, *upkeep)

    def pruned_and_snapshot(i: int) -> dict | None:
        ledger = (nodes.status(i) or {}).get("ledger", {})
        return ledger if ledger.get("pruning", {}).get("total", 0) > 50 and ledger.get("snapshot") else None

    before = [nodes.wait(lambda i=i: pruned_and_snapshot(i), 180, f"node{i} pruned its ledger and"
                         " published a snapshot") for i in range(2)]
    # New transactions keep coming in from the peer after the prunes, and are stored.
    peer_steps = [before[i]["checkpoints_by_author"] for i in range(2)]

    def went_on() -> bool:
        for i in range(2):
            now = ((nodes.status(i) or {}).get("ledger") or {}).get("checkpoints_by_author", {})
            if not any(a in peer_steps[i] and now[a]["tx"] != peer_steps[i][a]["tx"] for a in now):
                return False
        return True

    nodes.wait(went_on, 60, "each node stored newer checkpoints of its peer after pruning")

    t0 = time.monotonic()
    nodes.start(2, *upkeep)

    def joined() -> dict | None:
        s = nodes.status(2) or {}
        return s if s.get("ledger", {}).get("snapshots_imported", 0) >= 1 and s.get("merges", 0) >= 1 else None

    status = nodes.wait(joined, 90, "the late node imported a snapshot and merged")
    took = time.monotonic() - t0
    assert status["peer_count"] >= 1
    print(f"late node: snapshot imported and first merge {took:.1f} s after its start")
    for i in range(3):
        assert nodes.terminate(i) == 0
    out = subprocess.run([sys.executable, "-c", NODE, "ledger", "verify", str(nodes.states[0])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pruned" in out.stdout, out.stdout
