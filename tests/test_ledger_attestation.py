"""The ``attestation`` transaction kind in the ledger: payload rules, the judged checkpoint as a
parent, what the tangle refuses, ``append(approve=...)``, the queries, pruning, snapshots, tamper
detection and gossip, on real SQLite files."""

from __future__ import annotations

import random
import sqlite3

import libipld
import pytest
from conftest import eventually
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.errors import LedgerError, TxRejected
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import Attestation, Tangle
from learnae.ledger.tx import (
    ATTEST_METHODS,
    DISPUTE_CODES,
    KINDS,
    Tx,
    attestation_payload,
    check_payload,
    checkpoint_payload,
    data_payload,
    make_tx,
    snapshot_payload,
    tx_link,
    validate_tx,
)


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


ALICE, BOB, CAROL, DAVE = (identity(n) for n in (1, 2, 3, 4))
POW = 2
NOW = 1_700_000_000_000
CLOCK = lambda: NOW + 10**7  # noqa: E731
CID = "bafybeifx7yeb55armcsxwwitkymga5xf53dxiarykms3ygqic223w5sk3m"
GENESIS = make_tx(ALICE, kind="genesis", payload={"name": "attest"}, parents=[], swarm=None, pow_bits=POW,
                  time_ms=NOW)


def open_tangle(path, **kw) -> Tangle:
    return Tangle(path, genesis_raw=GENESIS.raw, pow_bits=POW, max_tx_bytes=4096, clock=CLOCK, **kw)


def checkpoint_tx(author: Identity, parents, time_ms: int, step: int = 1) -> Tx:
    payload = checkpoint_payload(cid=CID, size=9, step=step, samples=32, base=[], data=[], metrics={"loss": 0.1})
    return make_tx(author, kind="checkpoint", payload=payload, parents=parents, swarm=GENESIS.id, pow_bits=POW,
                   time_ms=time_ms)


def data_tx(author: Identity, parents, time_ms: int, seq: int = 0) -> Tx:
    payload = data_payload(cid=CID, size=1, rows=1, schema={"x": [2]}, source="probe", seq=seq)
    return make_tx(author, kind="data", payload=payload, parents=parents, swarm=GENESIS.id, pow_bits=POW,
                   time_ms=time_ms)


def attestation(checkpoint: str, verdict: str = "agree", code: str = "ok", method: str = "holdout",
                figures=None) -> dict:
    return attestation_payload(checkpoint=checkpoint, method=method, verdict=verdict, code=code,
                               figures={"loss": 0.5} if figures is None else figures)


def attestation_tx(author: Identity, checkpoint: str, parents, time_ms: int, **kw) -> Tx:
    return make_tx(author, kind="attestation", payload=attestation(checkpoint, **kw), parents=parents,
                   swarm=GENESIS.id, pow_bits=POW, time_ms=time_ms)


def validate(tx: Tx) -> None:
    validate_tx(tx, swarm=GENESIS.id, pow_bits=POW, max_bytes=4096, now_ms=CLOCK())


def without_seq(attestations: list[Attestation]) -> list[Attestation]:
    """Attestations as any store holding them sees them (seqs count one store's arrivals)."""
    return [a._replace(seq=0) for a in attestations]


def rejected_code(t: Tangle, tx: Tx) -> str | None:
    result = t.insert(tx)
    assert tx.id not in t
    return None if result.error is None else result.error.code


@pytest.fixture
def ledger(tmp_path):
    """BOB's checkpoint ``c`` and a data transaction ``d`` on the genesis."""
    t = open_tangle(tmp_path / "t.db")
    c = checkpoint_tx(BOB, [GENESIS.id], NOW + 1)
    d = data_tx(CAROL, [GENESIS.id], NOW + 2)
    assert [r.status for r in t.insert_many([c, d])] == ["inserted", "inserted"]
    yield t, c, d
    t.close()


# Payload ---------------------------------------------------------------------------------------
def test_the_kind_and_its_constants():
    assert "attestation" in KINDS
    assert ATTEST_METHODS == ("holdout", "replay", "claims")
    assert DISPUTE_CODES == ("holdout-worse", "holdout-no-gain", "samples-inconsistent", "replay-mismatch",
                             "data-unreplayable")
    from learnae import verify
    assert verify.CODES == ("ok", *DISPUTE_CODES) and verify.METHODS == ATTEST_METHODS  # the rules' names


def test_good_payloads_pass():
    link = GENESIS.id
    for method in ATTEST_METHODS:
        check_payload("attestation", attestation(link, method=method))
        for code in DISPUTE_CODES:
            check_payload("attestation", attestation(link, "dispute", code, method))
    check_payload("attestation", attestation(link, figures={}))
    check_payload("attestation", attestation(link, figures={f"{k:032d}": k for k in range(16)}))
    assert attestation(link, figures={"n": 3})["figures"] == {"n": 3.0}


BAD_PAYLOADS = {
    "missing key": lambda p: {k: v for k, v in p.items() if k != "figures"},
    "extra key": lambda p: {**p, "note": "x"},
    "checkpoint as text": lambda p: {**p, "checkpoint": GENESIS.id},
    "checkpoint not a tx link": lambda p: {**p, "checkpoint": p["checkpoint"][:-1]},
    "checkpoint a list": lambda p: {**p, "checkpoint": [p["checkpoint"]]},
    "method unknown": lambda p: {**p, "method": "guess"},
    "method not text": lambda p: {**p, "method": 1},
    "verdict unknown": lambda p: {**p, "verdict": "maybe"},
    "code unknown": lambda p: {**p, "code": "bad"},
    "dispute with ok": lambda p: {**p, "verdict": "dispute"},
    "agree with a dispute code": lambda p: {**p, "code": "holdout-worse"},
    "figures not a map": lambda p: {**p, "figures": [1.0]},
    "figure an int": lambda p: {**p, "figures": {"n": 3}},
    "figure nan": lambda p: {**p, "figures": {"n": float("nan")}},
    "figure inf": lambda p: {**p, "figures": {"n": float("inf")}},
    "17 figures": lambda p: {**p, "figures": {str(k): 1.0 for k in range(17)}},
    "figure key of 33 chars": lambda p: {**p, "figures": {"k" * 33: 1.0}},
}


@pytest.mark.parametrize("how", sorted(BAD_PAYLOADS))
def test_bad_payloads(how):
    payload = BAD_PAYLOADS[how](attestation(GENESIS.id))
    with pytest.raises(TxRejected) as info:
        check_payload("attestation", payload)
    assert info.value.code == "bad-payload"
    with pytest.raises(TxRejected) as info:
        make_tx(CAROL, kind="attestation", payload=payload, parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=0)
    assert info.value.code == "bad-payload"


def test_an_attestation_must_approve_its_checkpoint(ledger):
    t, c, d = ledger
    tx = attestation_tx(CAROL, c.id, [d.id], NOW + 3)  # judges c, approves d only
    with pytest.raises(TxRejected) as info:
        validate(tx)
    assert info.value.code == "attestation-parent"
    assert rejected_code(t, tx) == "attestation-parent"
    validate(attestation_tx(CAROL, c.id, [c.id, d.id], NOW + 3))


# What the tangle refuses -----------------------------------------------------------------------
def test_only_checkpoints_are_judged(ledger):
    t, c, d = ledger
    before = (t.order(), t.tips())
    assert rejected_code(t, attestation_tx(CAROL, d.id, [d.id], NOW + 3)) == "attestation-target"
    assert rejected_code(t, attestation_tx(CAROL, GENESIS.id, [GENESIS.id], NOW + 3)) == "attestation-target"
    assert rejected_code(t, attestation_tx(CAROL, d.id, [c.id, d.id], NOW + 3)) == "attestation-target"
    assert t.rejections == {"attestation-target": 3}
    assert (t.order(), t.tips()) == before and t.attestations() == [] and t.verify() == []
    with pytest.raises(TxRejected) as info:
        t.append(CAROL, "attestation", attestation(d.id), approve=d.id)
    assert info.value.code == "attestation-target"


def test_an_author_does_not_attest_its_own_checkpoint(ledger):
    t, c, _ = ledger
    assert rejected_code(t, attestation_tx(BOB, c.id, [c.id], NOW + 3, verdict="dispute",
                                           code="holdout-worse")) == "self-attestation"
    with pytest.raises(TxRejected) as info:
        t.append(BOB, "attestation", attestation(c.id), approve=c.id)
    assert info.value.code == "self-attestation"
    assert t.attestations() == [] and t.counts() == {"checkpoint": 1, "data": 1, "genesis": 1}


def test_an_attestation_waits_for_its_checkpoint(tmp_path):
    c = checkpoint_tx(BOB, [GENESIS.id], NOW + 1)
    d = data_tx(CAROL, [GENESIS.id], NOW + 2)
    good = attestation_tx(CAROL, c.id, [c.id], NOW + 3)
    bad = attestation_tx(DAVE, d.id, [d.id], NOW + 3)  # released when d arrives, then refused
    with open_tangle(tmp_path / "t.db") as t:
        assert [r.status for r in t.insert_many([good, bad])] == ["pending", "pending"]
        assert t.attestations() == []
        result = t.insert(c)
        assert (result.status, result.released) == ("inserted", (good.id,))
        result = t.insert(d)
        assert (result.status, result.released) == ("inserted", ())
        assert t.rejections == {"attestation-target": 1} and t.pending == 0 and bad.id not in t
        assert [a.tx for a in t.attestations()] == [good.id] and t.verify() == []


# append(approve=...) ---------------------------------------------------------------------------
def test_append_approves_the_checkpoint_and_one_tip(ledger):
    t, c, d = ledger
    rng = random.Random(1)
    more = [data_tx(DAVE, [GENESIS.id], NOW + 3 + k, seq=k) for k in range(3)]
    t.insert_many(more)
    tips = set(t.tips())
    assert c.id in tips and len(tips) == 5
    for k in range(8):
        tx = t.append(CAROL, "attestation", attestation(c.id), approve=c.id, time_ms=NOW + 10 + k, rng=rng)
        assert len(tx.parents) == 2 and c.id in tx.parents and len(set(tx.parents)) == 2
        links = [tx_link(p) for p in tx.parents]
        assert links == sorted(links)
        assert tx.id in t and not ({p for p in tx.parents} - {c.id}) - tips  # the other parent was a tip
        tips = set(t.tips())
    assert len(t.attestations()) == 8 and t.verify() == []


def test_append_when_the_checkpoint_is_the_only_tip(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        c = t.append(BOB, "checkpoint", checkpoint_payload(cid=CID, size=9, step=1, samples=32, base=[],
                                                           data=[], metrics={}))
        assert t.tips() == [c.id]
        tx = t.append(CAROL, "attestation", attestation(c.id), approve=c.id)
        assert tx.parents == (c.id,) and t.tips() == [tx.id]
        with pytest.raises(LedgerError, match="not in this ledger"):
            t.append(CAROL, "attestation", attestation(GENESIS.id), approve=data_tx(DAVE, [c.id], NOW).id)
        with pytest.raises(TxRejected) as info:  # without approve: the checkpoint is not a parent
            t.append(DAVE, "attestation", attestation(c.id))
        assert info.value.code == "attestation-parent"


# Queries ---------------------------------------------------------------------------------------
def test_queries(ledger):
    t, c, d = ledger
    c2 = t.append(CAROL, "checkpoint", checkpoint_payload(cid=CID, size=9, step=2, samples=32, base=[c.id],
                                                          data=[], metrics={}), time_ms=NOW + 5)
    a1 = t.append(CAROL, "attestation", attestation(c.id, "dispute", "holdout-worse", figures={"loss": 2.5}),
                  approve=c.id, time_ms=NOW + 6)
    a2 = t.append(DAVE, "attestation", attestation(c2.id, method="claims", figures={}), approve=c2.id,
                  time_ms=NOW + 7)
    a3 = t.append(DAVE, "attestation", attestation(c.id, method="replay"), approve=c.id, time_ms=NOW + 8)
    assert t.counts()["attestation"] == 3
    everything = t.attestations()
    assert [a.tx for a in everything] == [i for i in t.order() if i in {a1.id, a2.id, a3.id}]
    first = next(a for a in everything if a.tx == a1.id)
    seq = t._db.execute("SELECT seq FROM tx WHERE id = ?", (a1.id,)).fetchone()[0]
    assert first == Attestation(tx=a1.id, seq=seq, verifier=CAROL.public_key, subject=BOB.public_key,
                                checkpoint=c.id, method="holdout", verdict="dispute", code="holdout-worse",
                                figures={"loss": 2.5}, time=NOW + 6)
    assert t.attestations(figures=False) == [a._replace(figures={}) for a in everything]
    assert {a.tx for a in t.attestations(BOB.public_key)} == {a1.id, a3.id}
    assert [a.tx for a in t.attestations(CAROL.public_key)] == [a2.id]
    assert t.attestations(DAVE.public_key) == []
    new, cursor = t.attestations_since()
    assert [a.tx for a in new] == [a1.id, a2.id, a3.id] and cursor == new[-1].seq
    assert t.attestations_since(cursor) == ([], cursor)
    assert [a.tx for a in t.attestations_since(new[0].seq)[0]] == [a2.id, a3.id]
    a4 = t.append(BOB, "attestation", attestation(c2.id), approve=c2.id, time_ms=NOW + 9)
    assert [a.tx for a in t.attestations_since(cursor)[0]] == [a4.id]


def test_a_store_made_before_attestations_existed(tmp_path):
    path = tmp_path / "old.db"
    with open_tangle(path) as t:
        t.insert(checkpoint_tx(BOB, [GENESIS.id], NOW + 1))
    with sqlite3.connect(path) as db:
        db.executescript("DROP TABLE attestation; DROP TABLE judged")
    with Tangle(path, read_only=True) as t:
        assert t.attestations() == [] and t.attestations_since(0) == ([], 0) and t.verify() == []
        assert libipld.decode_dag_cbor(t.export_snapshot())["judged"] == []
    with Tangle(path, clock=CLOCK) as t:  # opened writable: the tables are made
        c = t.latest_checkpoint_per_author()[BOB.public_key]
        t.append(CAROL, "attestation", attestation(c.id), approve=c.id)
        assert len(t.attestations()) == 1 and t.verify() == []


# Pruning and snapshots -------------------------------------------------------------------------
@pytest.fixture
def pruned(tmp_path):
    """BOB's checkpoints c1 (judged by CAROL and DAVE), c2 (not judged), c3; pruned down to c3."""
    t = open_tangle(tmp_path / "source.db")
    c1 = checkpoint_tx(BOB, [GENESIS.id], NOW + 1, step=1)
    a1 = attestation_tx(CAROL, c1.id, [c1.id], NOW + 2, verdict="dispute", code="holdout-no-gain")
    a2 = attestation_tx(DAVE, c1.id, [c1.id], NOW + 3)
    c2 = checkpoint_tx(BOB, [a1.id, a2.id], NOW + 4, step=2)
    c3 = checkpoint_tx(BOB, [c2.id], NOW + 5, step=3)
    assert {r.status for r in t.insert_many([c1, a1, a2, c2, c3])} == {"inserted"}
    before = t.attestations()
    stats = t.prune(NOW + 100, window_ms=0, keep_per_author=1)
    assert stats.pruned == 2 and c1.id not in t and c2.id not in t and c3.id in t
    assert t.is_pruned(c1.id) and t.is_pruned(c2.id)
    assert t.attestations() == before and [a.subject for a in before] == [BOB.public_key] * 2
    yield t, (c1, a1, a2, c2, c3)
    t.close()


def test_pruning_keeps_attestations_and_their_subjects(pruned):
    t, (c1, a1, a2, c2, c3) = pruned
    assert t.counts() == {"attestation": 2, "checkpoint": 1, "genesis": 1}
    assert t.verify() == []
    assert t.prune(NOW + 200, window_ms=0, keep_per_author=1).pruned == 0
    # a late attestation on the judged, pruned checkpoint: its author is still known
    late = attestation_tx(ALICE, c1.id, [c1.id, c3.id], NOW + 6)
    assert t.insert(late).status == "inserted"
    assert [a.subject for a in t.attestations(BOB.public_key)] == [BOB.public_key] * 3
    assert rejected_code(t, attestation_tx(BOB, c1.id, [c1.id, late.id], NOW + 7)) == "self-attestation"
    # on a checkpoint pruned before anyone judged it: who wrote it cannot be checked any more
    assert rejected_code(t, attestation_tx(ALICE, c2.id, [c2.id, late.id], NOW + 7)) == "attestation-target"
    assert t.verify() == []


def test_a_snapshot_carries_the_attestations_and_their_proven_subjects(pruned, tmp_path):
    t, (c1, *_) = pruned
    data = t.export_snapshot()
    assert libipld.decode_dag_cbor(data)["judged"] == [c1.raw]
    with open_tangle(tmp_path / "fresh.db") as fresh:
        stats = fresh.import_snapshot(data)
        assert (stats.inserted, stats.rejected) == (t.count() - 1, 0)
        assert fresh.is_pruned(c1.id) and fresh.verify() == []
        assert without_seq(fresh.attestations()) == without_seq(t.attestations())
        assert fresh.export_snapshot() == data
        late = fresh.append(ALICE, "attestation", attestation(c1.id), approve=c1.id)
        assert t.insert(late).status == "inserted"
    with open_tangle(tmp_path / "full.db") as full:  # never pruned: the snapshot changes nothing
        full.insert_many(pruned[1])
        before = full.attestations()
        assert full.import_snapshot(data).inserted == 0 and full.attestations() == before
        assert full.verify() == []


def test_a_snapshot_without_sound_proofs_of_the_subjects(pruned, tmp_path):
    """The subject of an attestation on a pruned checkpoint is never taken on trust: without the
    checkpoint's valid bytes, with another checkpoint's, or with forged ones, it is refused."""
    t, (c1, a1, a2, c2, c3) = pruned
    obj = libipld.decode_dag_cbor(t.export_snapshot())
    forged = c1.raw.replace(c1.sig, bytes(64))
    impostor = checkpoint_tx(ALICE, [GENESIS.id], c1.time, step=1)  # right time, another author
    for n, judged in enumerate([[], [c2.raw], [forged], [impostor.raw], [GENESIS.raw]]):
        bad = {**obj, "judged": judged}
        if n == 0:
            del bad["judged"]  # a file of a version before attestations
        with open_tangle(tmp_path / f"b{n}.db") as b:
            stats = b.import_snapshot(libipld.encode_dag_cbor(bad))
            assert (stats.rejected, stats.rejections) == (2, {"attestation-target": 2}), judged
            assert b.attestations() == [] and b.verify() == []
            assert b.counts() == {"checkpoint": 1, "genesis": 1}
    with open_tangle(tmp_path / "malformed.db") as b, pytest.raises(LedgerError) as info:
        b.import_snapshot(libipld.encode_dag_cbor({**obj, "judged": ["text"]}))
    assert info.value.code == "snapshot-malformed"


def test_a_snapshot_cannot_pass_off_another_kind_or_a_lying_time_as_a_judged_checkpoint(pruned, tmp_path):
    t, (c1, *_) = pruned
    obj = libipld.decode_dag_cbor(t.export_snapshot())
    snap = make_tx(BOB, kind="snapshot", payload=snapshot_payload(cid=CID, size=1, txs=1, top=0),
                   parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=POW, time_ms=NOW + 1)
    on_snap = attestation_tx(CAROL, snap.id, [snap.id], NOW + 2)
    other_kind = {**obj, "txs": [*obj["txs"], on_snap.raw], "frontier": [*obj["frontier"], [snap.id, snap.time, 1]],
                  "judged": [*obj["judged"], snap.raw]}
    lying_time = {**obj, "frontier": [[i, time_ms - (i == c1.id), h] for i, time_ms, h in obj["frontier"]]}
    for n, (lie, refused, kept) in enumerate([(other_kind, 1, 2), (lying_time, 2, 0)]):
        with open_tangle(tmp_path / f"b{n}.db") as b:
            stats = b.import_snapshot(libipld.encode_dag_cbor(lie))
            assert stats.rejections == {"attestation-target": refused}
            assert len(b.attestations()) == kept and b.verify() == []


# Tamper detection ------------------------------------------------------------------------------
def edit(path, sql, *args):
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


@pytest.mark.parametrize("sql", [
    "UPDATE attestation SET subject = x'00' WHERE rowid = (SELECT min(rowid) FROM attestation)",
    "UPDATE attestation SET verdict = 'agree' WHERE code != 'ok'",
    "UPDATE attestation SET seq = seq + 1000 WHERE code != 'ok'",
    "DELETE FROM attestation WHERE code != 'ok'",
    "INSERT INTO attestation SELECT seq, id, author, author, id, 'holdout', 'agree', 'ok' FROM tx"
    " WHERE kind = 'checkpoint'",
    "UPDATE judged SET raw = (SELECT raw FROM tx WHERE kind = 'checkpoint')",
    "DELETE FROM judged",
])
def test_verify_catches_changed_attestation_indexes(pruned, sql):
    t, _ = pruned
    assert t.verify() == []
    edit(t.path, sql)
    assert t.verify() != []


# Gossip ----------------------------------------------------------------------------------------
async def test_attestations_travel_by_gossip(tmp_path):
    net = MemoryNetwork(seed=1)
    fast = dict(announce_interval=0.5, want_delay=0.02, answer_delay=0.02, want_retry=0.3, peer_poll_interval=0.2)
    nodes = [net.node(name) for name in "ab"]
    tangles = [Tangle(tmp_path / f"{name}.db", genesis_raw=GENESIS.raw, pow_bits=POW, max_tx_bytes=4096)
               for name in "ab"]
    syncers = [TangleSync(t, n, genesis_id=GENESIS.id, rng=random.Random(k), **fast)
               for k, (t, n) in enumerate(zip(tangles, nodes, strict=True))]
    try:
        for s in syncers:
            await s.start()
        await nodes[0].connect((await nodes[1].addrs())[0])
        a, b = syncers
        c = await a.append(BOB, "checkpoint", checkpoint_payload(cid=CID, size=9, step=1, samples=32, base=[],
                                                                 data=[], metrics={}))
        await eventually(lambda: c.id in tangles[1])
        att = await b.append(CAROL, "attestation", attestation(c.id, "dispute", "replay-mismatch",
                                                               method="replay"), approve=c.id)
        await eventually(lambda: att.id in tangles[0])
        assert without_seq(tangles[0].attestations()) == without_seq(tangles[1].attestations())
        assert tangles[0].attestations()[0].subject == BOB.public_key
        assert not a.rejections and not b.rejections
    finally:
        for s in syncers:
            await s.stop()
        for n in nodes:
            await n.close()
        for t in tangles:
            t.close()
