"""Benchmark of the gossip layer's defences against strangers: amplification and minted ids.

Usage: python bench/gossip.py [--chain 5000] [--wants 1500] [--ids 100000] [--askers 200]
                              [--sync-file PATH]

A victim node (a tangle and a ``TangleSync`` with default limits on the ``memory`` network)
holds a chain of ``--chain`` transactions (about 330 bytes each). Strangers' messages are put
into the victim's subscription as gossipsub would relay them, under ids nobody has seen before
(minting a peer id costs an attacker one key pair).

1. Amplification: one ``want`` of 512 ids of the chain (about 19 KB) with ``n = 10**6`` from a
   fresh id; the same want from that id 6 s later (its answer bucket refilled); then
   ``--askers`` fresh ids each send one such want (other ids) 10 ms apart. Prints the bytes of
   transactions answered per byte of the want, and in all.
2. Wants flood: ``--wants`` fresh ids send one ``want`` each of 512 ids nobody has. Prints the
   growth of the Python heap (``tracemalloc``: peak during the flood and what stays after it).
3. Minted ids: ``--ids`` fresh ids send one ``tips`` message (64 unknown ids) each. Prints the
   peers tracked and the heap growth.

``--sync-file`` loads ``TangleSync`` from another copy of ``learnae/ledger/sync.py`` (e.g. the
previous version, ``git show HEAD~1:learnae/ledger/sync.py > /tmp/old/sync.py``) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib.util
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from learnae.identity import Identity
from learnae.ipfs.base import PubsubMessage
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import TX_CID_PREFIX, data_payload, make_tx, tx_id

POW = 4
CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def load_sync(path: str | None):
    if path is None:
        from learnae.ledger import sync
        return sync
    spec = importlib.util.spec_from_file_location("sync_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def stat(syncer, key: str) -> int:
    """``syncer.stats[key]``; also from a ``--sync-file`` whose keys were kebab-case."""
    return syncer.stats[key] or syncer.stats[key.replace("_", "-")]


def make_chain(n: int):
    author = Identity.generate()
    genesis = make_tx(author, kind="genesis", payload={"name": "gossip"}, parents=[], swarm=None,
                      pow_bits=POW)
    txs, parent = [], genesis.id
    for seq in range(n):
        payload = data_payload(cid=CID, size=1, rows=1, schema={"x": [2]}, source="bench", seq=seq)
        tx = make_tx(author, kind="data", payload=payload, parents=[parent], swarm=genesis.id,
                     pow_bits=POW, time_ms=genesis.time + seq + 1)
        txs.append(tx)
        parent = tx.id
    return genesis, txs


def inject(node, topic: str, sender: str, data: bytes) -> None:
    """Deliver ``data`` to ``node``'s subscriptions as relayed from origin ``sender``."""
    receive = getattr(node, "receive", None)
    if receive is not None:
        receive(topic, sender, data)
    else:  # an older memory backend
        node._deliver(topic, PubsubMessage(sender, data))


def random_ids(k: int, salt: str) -> list[str]:
    digests = (hashlib.sha256(f"{salt}/{i}".encode()).digest() for i in range(k))
    return [tx_id(TX_CID_PREFIX + d) for d in digests]


async def flood(node, topic: str, messages, batch: int = 100) -> None:
    for k, (sender, data) in enumerate(messages):
        inject(node, topic, sender, data)
        if k % batch == batch - 1:
            await asyncio.sleep(0)  # let the victim read (as a network would pace them)


async def settle(syncer, received: int, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while syncer.stats["received"] < received and loop.time() < deadline:
        await asyncio.sleep(0.01)


async def run(args) -> None:
    sync = load_sync(args.sync_file)
    print(f"TangleSync from {sync.__file__}")
    t0 = time.perf_counter()
    genesis, chain = make_chain(args.chain)
    print(f"chain of {len(chain)} transactions, {sum(len(t.raw) for t in chain)} bytes "
          f"(made in {time.perf_counter() - t0:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        tangle = Tangle(Path(tmp) / "victim.db", genesis_raw=genesis.raw, pow_bits=POW,
                        max_tx_bytes=4096)
        tangle.insert_many(chain)
        net = MemoryNetwork()
        victim, spy = net.node("victim"), net.node("spy")
        await spy.connect((await victim.addrs())[0])
        syncer = sync.TangleSync(tangle, victim, peer_poll_interval=0, announce_interval=60.0)
        topic = sync.tx_topic(genesis.id)
        answered = 0
        spy_sub = spy.subscribe(topic)

        async def count_answers():
            nonlocal answered
            async for sender, data in spy_sub:
                if sender == "victim":
                    msg = sync.decode_message(data)
                    if msg.t == "txs":
                        answered += sum(map(len, msg.txs))

        async def measured_flood(messages, n: int, pause: float = 0.0) -> tuple[int, int, float]:
            """Deliver ``n`` (sender, data) messages to the victim: (peak heap growth, heap
            growth kept after ``pause`` s, seconds), in bytes and seconds."""
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            start = syncer.stats["received"]
            t0 = time.perf_counter()
            await flood(victim, topic, messages)
            await settle(syncer, start + n)
            took = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base
            await asyncio.sleep(pause)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            return peak, kept, took

        counter = asyncio.create_task(count_answers())
        await syncer.start()
        try:
            # 1. Amplification
            want = sync.encode_message("want", ids=[t.id for t in chain[-512:]], n=10**6)
            inject(victim, topic, "stranger-0", want)
            await asyncio.sleep(2.0)
            print(f"\n1a. one want of {len(want)} bytes (512 ids, n=10**6) from a fresh id: "
                  f"{answered} bytes answered, {answered / len(want):.1f} per byte of the want")
            answered = 0
            await asyncio.sleep(4.0)  # its answer bucket refills to its full burst
            inject(victim, topic, "stranger-0", want)
            await asyncio.sleep(2.0)
            print(f"1b. the same want from that id {6:.0f} s later: {answered} bytes answered, "
                  f"{answered / len(want):.1f} per byte")
            answered = 0
            rng = random.Random(0)
            t0 = asyncio.get_running_loop().time()
            for k in range(args.askers):  # each wants other ids (no answer holdoff)
                ids = [t.id for t in rng.sample(chain, 512)]
                inject(victim, topic, f"stranger-{k + 1}", sync.encode_message("want", ids=ids, n=10**6))
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            took = asyncio.get_running_loop().time() - t0
            print(f"1c. {args.askers} fresh ids each send such a want within {took:.1f} s: "
                  f"{answered / 2**20:.1f} MiB answered in all ({answered / 2**20 / took:.1f} MiB/s)")

            # 2. Wants flood
            wants = ((f"minted-w{k}", sync.encode_message("want", ids=random_ids(512, f"w{k}"), n=8))
                     for k in range(args.wants))
            peak, kept, took = await measured_flood(wants, args.wants, pause=1.0)
            shown = {k: stat(syncer, k) for k in ("wants_received", "rate_limited", "over_budget")}
            print(f"2. {args.wants} minted ids, one 512-id want each ({len(want)} bytes): heap grew "
                  f"{peak / 2**20:.1f} MiB at peak, {kept / 2**20:.1f} MiB kept "
                  f"({took:.1f} s); peers tracked {len(syncer.peer_stats())}; {shown}")

            # 3. Minted ids
            tips = ((f"minted-t{k}", sync.encode_message("tips", ids=random_ids(64, f"t{k}"), n=10**6))
                    for k in range(args.ids))
            peak, kept, took = await measured_flood(tips, args.ids)
            shown = {k: stat(syncer, k) for k in ("received", "rate_limited", "over_budget")}
            print(f"3. {args.ids} minted ids, one tips message each: peers tracked "
                  f"{len(syncer.peer_stats())}, heap grew {peak / 2**20:.1f} MiB at peak, "
                  f"{kept / 2**20:.1f} MiB kept ({took:.1f} s); {shown}")
        finally:
            await syncer.stop()
            await spy_sub.aclose()
            await counter
            await victim.close()
            await spy.close()
            tangle.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", type=int, default=5000, help="transactions the victim holds")
    parser.add_argument("--wants", type=int, default=1500, help="minted ids sending a 512-id want")
    parser.add_argument("--ids", type=int, default=100_000, help="minted ids sending tips")
    parser.add_argument("--askers", type=int, default=200, help="fresh ids wanting 512 ids each")
    parser.add_argument("--sync-file", default=os.environ.get("LEARNAE_SYNC_FILE"),
                        help="load TangleSync from this copy of learnae/ledger/sync.py")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
