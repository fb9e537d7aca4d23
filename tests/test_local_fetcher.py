"""The fault harness's content check (:mod:`learnae.local.fetcher`) as a real process against a
real embedded Kubo node: what a live node's ledger stops keeping is given up at once."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from learnae.content import content_id
from learnae.identity import Identity
from learnae.ipfs import libkubo
from learnae.ipfs.embedded import EmbeddedNode
from learnae.ledger.tx import checkpoint_payload
from learnae.local.runner import free_port
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.state import init_swarm, open_tangle


async def test_a_cid_the_ledger_stops_keeping_is_given_up_not_waited_for(tmp_path):
    swarm = init_swarm(tmp_path / "swarm", Manifest(name="fetch", model=model_config("iris-mlp"), pow_bits=2))
    invite = tmp_path / "invite.json"
    swarm.invite.save(invite)
    server = await EmbeddedNode.start(tmp_path / "server", swarm.invite.swarm_key)
    try:
        kept = await server.add(b"a checkpoint its author still keeps " + os.urandom(8))
        gone = content_id(b"a checkpoint its author rotated out " + os.urandom(8))  # nobody has it
        tangle, _ = open_tangle(swarm.directory)
        with tangle:
            tangle.append(Identity.load(swarm.directory / "identity.key"), "checkpoint", checkpoint_payload(
                cid=kept, size=10, step=1, samples=1, base=[], data=[], metrics={}))
        (tmp_path / "cids.txt").write_text(f"{kept}\n{gone}\n")

        async def fetch(*how: str) -> dict:
            repo = tmp_path / f"fetcher{len(how)}"
            libkubo.create_repo(repo)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "learnae.local.fetcher", "--repo", str(repo), "--invite", str(invite),
                "--listen", f"127.0.0.1:{free_port()}", "--peer", (await server.addrs())[0], "--timeout", "120",
                "--out", str(repo / "result.json"), "--kept-by", str(swarm.directory), *how)
            try:
                assert await asyncio.wait_for(proc.wait(), 100) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            return json.loads((repo / "result.json").read_text())

        # what the ledger keeps, read by the peer itself
        result = await fetch()
        assert result["checked"] == [kept] and result["fetched"] == 1 and result["rotated"] == []
        # a list of which one CID is no longer kept: given up, not waited out (120 s)
        result = await fetch("--cids", str(tmp_path / "cids.txt"))
        assert result["fetched"] == 1 and result["missing"] == [] and result["rotated"] == [gone]
        assert result["elapsed_s"] < 100
    finally:
        await server.close()
