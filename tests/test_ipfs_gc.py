"""Garbage collection of an embedded Kubo repository: what goes, what stays, and races.

The sweep's parts run on files made here; the rest on real embedded Kubo nodes in a private
swarm on 127.0.0.1 (marked slow). The memory and rpc backends are tested in their own files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from conftest import eventually

from learnae.content import CHUNK_SIZE, file_blocks, file_cid, parse_cid
from learnae.errors import IpfsError, IpfsTimeout, NodeClosed
from learnae.ipfs.base import GcStats
from learnae.ipfs.embedded import EmbeddedNode, _key, _shard_function, _sweep, block_key

MB = 1_000_000
OVERHEAD = 64 << 10  # bytes of Kubo's own records that may change around a measurement


# -- the parts, on files made here ------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 5])
@pytest.mark.parametrize("version", [0, 1])
def test_file_blocks_are_named_by_their_hash_and_end_with_the_root(size, version):
    data = os.urandom(size)
    blocks = list(file_blocks(data, cid_version=version))
    for multihash, block in blocks:
        assert multihash == b"\x12\x20" + hashlib.sha256(block).digest()
    assert blocks[-1][0] == bytes(parse_cid(file_cid(data, cid_version=version)).digest)
    leaves = -(-size // CHUNK_SIZE) or 1
    assert len(blocks) == leaves + (leaves > 1)
    if version == 1 and size:
        assert b"".join(block for _, block in blocks[:leaves]) == data  # raw leaves


def test_the_shard_functions_of_go_ds_flatfs(tmp_path):
    key = "CIQA7D5GPCCMITPLJOBEV4W75VE7OMBPHC7UKV4KCAXOWTMKKSBYZEI"
    for name, expected in [("next-to-last/2", "ZE"), ("prefix/4", "CIQA"), ("suffix/3", "ZEI")]:
        (tmp_path / "SHARDING").write_text(f"/repo/flatfs/shard/v1/{name}\n")
        assert _shard_function(tmp_path)(key) == expected
    (tmp_path / "SHARDING").write_text("/repo/flatfs/shard/v1/next-to-last/2")
    assert _shard_function(tmp_path)("A") == "__"  # short keys are padded as flatfs pads them
    (tmp_path / "SHARDING").write_text("/repo/flatfs/shard/v2/fancy/2")
    with pytest.raises(IpfsError, match="shard function"):
        _shard_function(tmp_path)
    (tmp_path / "SHARDING").unlink()
    with pytest.raises(IpfsError, match="SHARDING"):
        _shard_function(tmp_path)


def test_the_sweep_keeps_the_keep_set_and_what_is_newer_than_the_cutoff(tmp_path):
    now = time.time()
    files = {}
    for name, age in [("KEPT", 100), ("OLD", 100), ("NEW", 1), ("OLDER", 1000)]:
        shard = tmp_path / name[-3:-1]
        shard.mkdir(exist_ok=True)
        path = files[name] = shard / f"{name}.data"
        path.write_bytes(name.encode() * 10)
        os.utime(path, (now - age, now - age))
    (tmp_path / "SHARDING").write_text("/repo/flatfs/shard/v1/next-to-last/2\n")
    (tmp_path / "OL" / "put-123").write_bytes(b"x")  # a flatfs temp file: not a block
    removed, freed, kept, kept_bytes = _sweep(tmp_path, frozenset({"KEPT"}), now - 10)
    assert (removed, freed) == (2, len(b"OLD" * 10) + len(b"OLDER" * 10))
    assert (kept, kept_bytes) == (2, len(b"KEPT" * 10) + len(b"NEW" * 10))
    assert sorted(p.name for p in tmp_path.rglob("*.data")) == ["KEPT.data", "NEW.data"]
    assert (tmp_path / "OL" / "put-123").exists() and (tmp_path / "SHARDING").exists()


# -- real Kubo nodes ---------------------------------------------------------------------------
def _on_disk(node: EmbeddedNode, data: bytes) -> bool:
    """Whether every block of file ``data`` is a file in the node's flatfs."""
    names = {p.name for p in (node.repo / "blocks").rglob("*.data")}
    return all(f"{_key(multihash)}.data" in names for multihash, _ in file_blocks(data))


def test_a_cid_names_the_same_block_file_in_either_version():
    v0 = file_cid(b"block")
    assert block_key(v0) == block_key(str(parse_cid(v0).set(version=1, base="base32")))
    assert block_key(v0) == _key(bytes(parse_cid(v0).digest)) and block_key(v0).startswith("CIQ")


@pytest.mark.slow
async def test_a_collection_frees_what_no_pin_needs_and_keeps_the_pinned_files(embedded_pair,
                                                                                 swarm_key):
    """A adds 10 files of 1 MB and unpins 8; it fetches B's 3 files. The collection frees those
    11 files (and the directory blocks Kubo's adds leave); B then fetches A's 2 pinned files,
    which it never had; A fetches one of B's files again; with B gone, A has none of the
    others; A restarts on the collected repository."""
    a, b = embedded_pair
    own = [os.urandom(MB) for _ in range(10)]
    cids = [await a.add(data) for data in own]
    for cid in cids[2:]:
        await a.unpin(cid)
    theirs = [os.urandom(MB) for _ in range(3)]
    their_cids = [await b.add(data) for data in theirs]
    for cid, data in zip(their_cids, theirs, strict=True):
        assert await a.cat(cid, timeout=30) == data

    before = await a.repo_bytes()
    stats = await a.collect_garbage(grace=0)
    after = await a.repo_bytes()
    # 11 files of 5 blocks (4 leaves and a root), and the directory Kubo wraps each add in
    assert stats.blocks_removed == 11 * 5 + 10
    assert 11 * MB < stats.bytes_freed < 11 * MB + 16_000
    assert abs((before - after) - stats.bytes_freed) < OVERHEAD
    assert stats.blocks_kept == 2 * 5 + 1  # the pinned files, and Kubo's files root
    assert 2 * MB < stats.bytes_kept < 2 * MB + 2_000
    assert 0 < stats.seconds < 10
    again = await a.collect_garbage(grace=0)
    assert again[:4] == (0, 0, stats.blocks_kept, stats.bytes_kept)
    assert all(_on_disk(a, data) for data in own[:2])
    assert not any(_on_disk(a, data) for data in own[2:] + theirs)

    for cid, data in zip(cids[:2], own[:2], strict=True):  # B never had these
        assert await b.cat(cid, timeout=30) == data
    assert await a.cat(their_cids[0], timeout=30) == theirs[0]  # fetched again
    assert _on_disk(a, theirs[0])

    await b.close()
    await eventually(lambda: _no_peers(a))
    for cid in (cids[5], their_cids[1]):
        started = time.monotonic()
        with pytest.raises(IpfsTimeout):
            await a.cat(cid, timeout=1)
        assert time.monotonic() - started < 5
    assert await a.cat(their_cids[0], timeout=5) == theirs[0]  # stored again by the new fetch

    with pytest.raises(ValueError, match="grace"):
        await a.collect_garbage(grace=-1)
    repo = a.repo
    await a.close()
    with pytest.raises(NodeClosed):
        await a.collect_garbage()
    with pytest.raises(NodeClosed):
        await a.repo_bytes()
    again = await EmbeddedNode.start(repo, swarm_key)  # Kubo's files root is still there
    try:
        assert await again.cat(cids[1], timeout=5) == own[1]
    finally:
        await again.close()


async def _no_peers(node: EmbeddedNode) -> bool:
    return not await node.peers()


@pytest.mark.slow
async def test_adding_again_what_a_collection_removed_stores_it_again(embedded_pair):
    """Kubo's blockstore caches that it has a block; the collection removes the file behind its
    back. A second add of the same bytes, or of a file sharing a 256 KiB chunk with them, must
    still store every block (Kubo alone would store none and wait for them forever)."""
    a, b = embedded_pair
    data = os.urandom(MB)
    cid = await a.add(data)
    await a.unpin(cid)
    assert (await a.collect_garbage(grace=0)).blocks_removed == 6
    assert not _on_disk(a, data)
    async with asyncio.timeout(30):
        assert await a.add(data) == cid
        sharing = data[:CHUNK_SIZE] + os.urandom(MB)  # its first leaf is one that was removed
        other = await a.add(sharing)
    assert _on_disk(a, data) and _on_disk(a, sharing)
    async with asyncio.timeout(30):
        assert {cid, other} <= await a.pins()  # Kubo walks every pinned file: all there
    assert await b.cat(cid, timeout=30) == data
    assert await b.cat(other, timeout=30) == sharing


@pytest.mark.slow
async def test_collections_during_adds_and_pins_never_lose_a_pinned_block(embedded_pair,
                                                                           tmp_path, swarm_key):
    """Collections with no grace run back to back while A adds 16 files and pins 8 of B's,
    concurrently (started 20 ms apart). Every file is then whole on A's disk, and a third node
    fetches them all from A."""
    a, b = embedded_pair
    own = [os.urandom(MB) for _ in range(16)]
    theirs = [os.urandom(MB) for _ in range(8)]
    their_cids = [await b.add(data) for data in theirs]
    done = asyncio.Event()
    collections: list[GcStats] = []

    async def collect():
        while not done.is_set():
            collections.append(await a.collect_garbage(grace=0))
            await asyncio.sleep(0)

    async def later(k, write):
        await asyncio.sleep(0.02 * k)
        return await write

    collector = asyncio.create_task(collect())
    try:
        await eventually(lambda: collections, timeout=30, interval=0.01)
        first = len(collections)
        writes = [a.add(data) for data in own] + [a.pin(cid, timeout=60) for cid in their_cids]
        cids = await asyncio.gather(*(later(k, w) for k, w in enumerate(writes)))
        during = len(collections) - first
    finally:
        done.set()
        await collector
    cids = cids[:len(own)]
    assert during >= 5, collections
    assert sum(c.blocks_removed for c in collections) > 0  # they did remove blocks: the wrappers
    assert all(_on_disk(a, data) for data in own + theirs)

    await b.close()  # so that C gets B's files from A
    c = await EmbeddedNode.start(tmp_path / "c", swarm_key)
    try:
        await c.connect((await a.addrs())[0])
        for cid, data in zip(cids + their_cids, own + theirs, strict=True):
            assert await c.cat(cid, timeout=30) == data
    finally:
        await c.close()


@pytest.mark.slow
async def test_blocks_written_within_the_grace_survive(embedded_pair):
    a, b = embedded_pair
    data = os.urandom(MB)
    cid = await b.add(data)
    assert await a.cat(cid, timeout=30) == data  # stored on A, unpinned
    own = os.urandom(MB)
    await a.unpin(await a.add(own))
    stats = await a.collect_garbage(grace=60)
    assert stats.blocks_removed == 0 and _on_disk(a, data) and _on_disk(a, own)
    stats = await a.collect_garbage(grace=0)
    assert stats.blocks_removed == 5 + 5 + 1 and not _on_disk(a, data) and not _on_disk(a, own)
