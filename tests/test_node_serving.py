"""A relay member's content service: newest checkpoint per author, recent chunks (memory network)."""

from __future__ import annotations

import os
import time

from conftest import eventually
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.content import content_id
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.tx import checkpoint_payload, data_payload
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node.serving import ContentServer
from learnae.state import init_swarm, open_tangle

SCHEMA = {"features": 4, "classes": 3}


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


async def test_holds_each_authors_newest_checkpoint_and_recent_chunks_then_lets_go(tmp_path):
    manifest = Manifest(checkpoint_interval=0, name="serve", model=model_config("iris-mlp"), pow_bits=2)
    swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
    tangle, _ = open_tangle(swarm.directory)
    net = MemoryNetwork(seed=0)
    relay, author = net.node("relay"), net.node("author")
    await author.connect((await relay.addrs())[0])
    server = ContentServer(relay, tangle, manifest, stale=0.5, fetch_timeout=0.5)
    b, c = identity(2), identity(3)

    async def checkpoint(who: Identity) -> str:
        data = os.urandom(512)
        cid = await author.add(data)
        tangle.append(who, "checkpoint", checkpoint_payload(cid=cid, size=len(data), step=1, samples=1, base=[],
                                                             data=[], metrics={}),
                      time_ms=int(time.time() * 1000))
        return cid

    try:
        old_b, c1 = await checkpoint(b), await checkpoint(c)
        chunk = os.urandom(256)
        chunk_cid = await author.add(chunk)
        tangle.append(c, "data", data_payload(cid=chunk_cid, size=len(chunk), rows=1, schema=SCHEMA,
                                              source="probe", seq=0))
        await server.step()
        assert server.held == {b.public_key: old_b, c.public_key: c1} and set(server.chunks) == {chunk_cid}
        assert set(await relay.pins()) >= {old_b, c1, chunk_cid}
        new_b = await checkpoint(b)
        unknown = content_id(os.urandom(64))  # announced, nobody serves it: one failed fetch
        tangle.append(c, "checkpoint", checkpoint_payload(cid=unknown, size=64, step=2, samples=1, base=[],
                                                          data=[], metrics={}))
        await server.step()
        assert server.held == {b.public_key: new_b, c.public_key: c1} and server.failed == 1
        pins = set(await relay.pins())
        assert new_b in pins and old_b not in pins  # the replaced one is let go
        # the author leaves: the relay still serves what it holds to anyone
        await author.close()
        reader = net.node("reader")
        await reader.connect((await relay.addrs())[0])
        assert len(await reader.cat(new_b, timeout=1, max_size=10**6)) == 512
        # past the stale window the chunk is let go; a stale checkpoint is not fetched
        await eventually(lambda: _step_until_let_go(server, chunk_cid), timeout=5)
        assert chunk_cid not in set(await relay.pins())
        tangle.append(identity(4), "checkpoint", checkpoint_payload(  # stale: not even tried
            cid=content_id(os.urandom(64)), size=64, step=1, samples=1, base=[], data=[], metrics={}),
            time_ms=int((time.time() - 10) * 1000))
        await server.step()
        assert identity(4).public_key not in server.held
        assert server.status() == {"checkpoints_held": 2, "chunks_held": 0, "fetched": 4, "failed": 1}
    finally:
        await relay.close()
        tangle.close()


async def _step_until_let_go(server: ContentServer, cid: str) -> bool:
    await server.step()
    return cid not in server.chunks
