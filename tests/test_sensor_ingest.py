"""A sensor never loses or stalls its data, and ``POST /ingest`` never takes one seq twice.

- ``learnae sensor run --via`` (a real process) against a fake node answering ``200 {}``: the
  chunks stay queued on disk, the bad answers are counted and logged at the default level;
- a sensor process with its kept key and an empty state directory, posting to the node API
  (learnae.api) that already holds its seq 0..2: it renumbers its chunks from seq 3, warns,
  and the node accepts them;
- two concurrent posts with one seq to the node API, with an embedded Kubo node whose
  ``add`` is held until both are in: one 200 and one 409 ``duplicate-seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from conftest import eventually
from test_sensor import SENSOR, FakeNode, chunk_and_tx, make_swarm, queue_for

from learnae.formats import decode_chunk
from learnae.identity import Identity
from learnae.ingest import encode_ingest_request
from learnae.state import open_tangle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LEARNAE = "from learnae.cli import main; main()"  # `learnae ...`: default log level WARNING


def _sensor_argv(invite: Path, state: Path, source: str, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", LEARNAE, "sensor", "run", "--invite", str(invite), "--state",
            str(state), "--source", source, "--via", url, "--rows", "10", "--max-age", "0.2",
            *extra]


def _readings(path: Path, start: int, n: int) -> str:
    path.write_text("".join(json.dumps({"x": [i, 0, 0, 0], "y": i % 3}) + "\n"
                            for i in range(start, start + n)))
    return f"jsonl:{path}"


def test_a_sensor_process_keeps_what_a_bogus_node_acknowledges(tmp_path, launch):
    swarm = make_swarm(tmp_path / "swarm")
    fake = FakeNode(lambda method, body: (200, b"{}"))
    state = tmp_path / "pi"
    try:
        proc = launch.start("sensor", _sensor_argv(swarm.directory / "invite.json", state,
                                                   _readings(tmp_path / "r.jsonl", 0, 25), fake.url),
                            cwd=ROOT)
        launch.wait(lambda: fake.posts >= 2, 60, "two answers ignored: a first send and a retry")
        proc.send_signal(signal.SIGTERM)
        assert launch.wait_exit(proc, 30) == 0, proc.tail()
        stats = json.loads(proc.stdout().strip().splitlines()[-1])
        assert stats["published"] == 0 and stats["queued_chunks"] == 3, stats
        assert stats["bad_answers"] >= 2, stats
        log = proc.stderr()
        assert "WARNING" in log and "stays queued" in log, log
        q = queue_for(state / "queue.sqlite", swarm, chunk_rows=10, max_bytes=256 << 20)
        try:  # still on disk after the process is gone
            assert q.next_chunk().seq == 0 and q.stats["queued_chunks"] == 3
            assert q.stats["bad_answers"] == stats["bad_answers"]
        finally:
            q.close()
        status = subprocess.run([sys.executable, "-c", LEARNAE, "sensor", "status", "--state",
                                 str(state)], capture_output=True, text=True, cwd=ROOT, check=True)
        assert json.loads(status.stdout)["bad_answers"] == stats["bad_answers"]
    finally:
        fake.close()


@contextlib.asynccontextmanager
async def _node_api(swarm, ipfs):
    """learnae.api over the swarm's tangle and ``ipfs`` (a small stand-in for a trainer node)."""
    from learnae.api import start_api

    tangle, manifest = open_tangle(swarm.directory)
    node = SimpleNamespace(manifest=manifest, tangle=tangle, ipfs=ipfs, sync=None, status=dict)
    runner, url = await start_api(node)
    try:
        yield node, url
    finally:
        await runner.cleanup()
        tangle.close()


async def _run_sensor(launch, name: str, argv: list[str]):
    """Run a sensor process to its end (in a thread: the node API it posts to runs on this
    loop); its final stats and the process."""
    proc = launch.start(name, argv, cwd=ROOT)
    assert await asyncio.to_thread(launch.wait_exit, proc, 90) == 0, proc.tail()
    return json.loads(proc.stdout().strip().splitlines()[-1]), proc


async def test_a_sensor_process_with_a_lost_state_directory_carries_on(tmp_path, swarm_key, launch):
    from learnae.ipfs.embedded import EmbeddedNode

    swarm = make_swarm(tmp_path / "swarm")
    invite, state = swarm.directory / "invite.json", tmp_path / "pi"
    ipfs = await EmbeddedNode.start(tmp_path / "node-ipfs", swarm_key)
    try:
        async with _node_api(swarm, ipfs) as (node, url):
            source = _readings(tmp_path / "a.jsonl", 0, 30)
            stats, _ = await _run_sensor(launch, "first", _sensor_argv(invite, state, source, url))
            assert stats["published"] == 3
            key = Identity.load(state / "identity.key")
            for path in state.iterdir():  # the SD card died; the key was kept
                if path.name != "identity.key":
                    path.unlink()
            source = _readings(tmp_path / "b.jsonl", 100, 20)
            stats, second = await _run_sensor(launch, "second",
                                              _sensor_argv(invite, state, source, url))
            assert stats["published"] == 2 and stats["queued_chunks"] == 0, stats
            assert stats["renumbered"] == 1 and stats["next_seq"] == 5, stats
            log = second.stderr()
            warned = [line for line in log.splitlines()
                      if "WARNING" in line and "renumbered" in line]
            assert len(warned) == 1 and "seq 3" in warned[0], log
            txs = sorted(node.tangle.data_by_author(key.public_key), key=lambda t: t.payload["seq"])
            assert [t.payload["seq"] for t in txs] == list(range(5))
            limit = swarm.manifest.limits.chunk_bytes
            for t in txs[3:]:  # the renumbered files, each with its new seq, on the node's IPFS
                chunk = decode_chunk(await ipfs.cat(t.payload["cid"], timeout=10), max_bytes=limit)
                assert chunk.seq == t.payload["seq"] and chunk.x[0, 0] == 100 + 10 * (chunk.seq - 3)
    finally:
        await ipfs.close()


class HeldIpfs:
    """An IPFS node whose ``add`` waits for :attr:`release` (counting the calls): holds a
    first ingest inside its ``await ipfs.add`` while a second one comes in."""

    def __init__(self, node):
        self.node, self.calls, self.release = node, 0, asyncio.Event()

    async def add(self, data: bytes) -> str:
        self.calls += 1
        await self.release.wait()
        return await self.node.add(data)


async def _post(session, url: str, body: bytes) -> tuple[int, dict]:
    async with session.post(f"{url}/ingest", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_concurrent_posts_of_one_seq_give_one_200_and_one_409(tmp_path, swarm_key):
    from learnae.ipfs.embedded import EmbeddedNode

    swarm = make_swarm(tmp_path / "swarm")
    kubo = await EmbeddedNode.start(tmp_path / "node-ipfs", swarm_key)
    ipfs = HeldIpfs(kubo)
    try:
        async with _node_api(swarm, ipfs) as (node, url), aiohttp.ClientSession() as session:
            tasks = []
            try:
                data_a, tx_a = chunk_and_tx(swarm, node.tangle, seq=0, rows=5)
                data_b, tx_b = chunk_and_tx(swarm, node.tangle, seq=0, rows=6)
                body_a, body_b = (encode_ingest_request(data_a, tx_a.raw),
                                  encode_ingest_request(data_b, tx_b.raw))
                tasks.append(first := asyncio.create_task(_post(session, url, body_a)))
                await eventually(lambda: ipfs.calls == 1)  # A is checked and inside ipfs.add
                tasks.append(second := asyncio.create_task(_post(session, url, body_b)))
                # B is answered at once (fixed), or reaches ipfs.add too (the race)
                await eventually(lambda: second.done() or ipfs.calls == 2)
                ipfs.release.set()
                (status_a, answer_a), (status_b, answer_b) = await asyncio.gather(first, second)
                assert (status_a, answer_a["tx"]) == (200, tx_a.id), answer_a
                assert (status_b, answer_b["error"]) == (409, "duplicate-seq"), answer_b
                assert answer_b["next_seq"] == 1 and answer_b["reason"]
                assert [t.id for t in node.tangle.data_by_author(SENSOR.public_key)] == [tx_a.id]

                # the same transaction twice at once: both 200 (the second waits for the first)
                ipfs.release.clear()
                calls = ipfs.calls
                data_c, tx_c = chunk_and_tx(swarm, node.tangle, seq=1, rows=5)
                body = encode_ingest_request(data_c, tx_c.raw)
                posts = [asyncio.create_task(_post(session, url, body)) for _ in range(2)]
                tasks += posts
                await eventually(lambda: ipfs.calls > calls)  # one is inside ipfs.add
                ipfs.release.set()
                answers = await asyncio.gather(*posts)
                assert [(s, a.get("tx")) for s, a in answers] == [(200, tx_c.id)] * 2, answers
                seqs = [t.payload["seq"] for t in node.tangle.data_by_author(SENSOR.public_key)]
                assert sorted(seqs) == [0, 1]
            finally:  # nothing left waiting on the held add when the API stops
                ipfs.release.set()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await kubo.close()
