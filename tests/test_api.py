"""The node's HTTP API (learnae.api) against a stand-in node: routes, JSON, Prometheus text."""

from __future__ import annotations

import aiohttp
import pytest

from learnae.api import prometheus_text, start_api
from learnae.identity import Identity
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import make_tx

STATUS = {
    "id": "QmPeer", "author": "author-id", "peers": 2, "step": 120, "samples": 3840, "published": 4,
    "last_checkpoint": {"tx": "bafy...", "cid": "bafy...", "step": 120},
    "metrics": {"loss": 0.25, "accuracy": 0.9}, "test": {"loss": 0.3, "accuracy": 0.88},
    "merges": 3, "rejections": {"norm": 2, "timeout": 1},
    "ledger": {"transactions": 9, "by_kind": {"genesis": 1, "checkpoint": 8}, "tips": 2},
}


class FakeNode:
    def __init__(self, tangle):
        self.tangle = tangle

    def status(self):
        return STATUS


@pytest.fixture
def tangle(tmp_path):
    genesis = make_tx(Identity.generate(), kind="genesis", payload={"name": "api"}, parents=[], swarm=None,
                      pow_bits=0)
    with Tangle(tmp_path / "tangle.sqlite", genesis_raw=genesis.raw, pow_bits=0, max_tx_bytes=4096) as t:
        yield t


def test_prometheus_text_has_typed_counters_and_labels():
    text = prometheus_text(STATUS)
    assert "# TYPE learnae_step counter\nlearnae_step 120.0\n" in text
    assert 'learnae_rejections{reason="norm"} 2.0' in text
    assert 'learnae_rejections{reason="timeout"} 1.0' in text
    assert "learnae_test_accuracy 0.88" in text
    assert 'learnae_ledger_transactions{kind="checkpoint"} 8.0' in text
    assert text.endswith("\n")
    for line in text.splitlines():  # every sample line is NAME[{labels}] VALUE
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.startswith("learnae_")


async def test_routes_serve_status_metrics_and_tips(tangle):
    runner, url = await start_api(FakeNode(tangle), "127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/status") as resp:
                assert resp.status == 200 and await resp.json() == STATUS
            async with session.get(url + "/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                assert "learnae_merges 3.0" in await resp.text()
            async with session.get(url + "/ledger/tips") as resp:
                body = await resp.json()
                assert body == {"tips": [tangle.swarm], "count": 1}
            async with session.get(url + "/nothing") as resp:
                assert resp.status == 404
            async with session.post(url + "/status") as resp:
                assert resp.status == 405
    finally:
        await runner.cleanup()
