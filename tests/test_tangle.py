"""The tangle store: convergence, rejections, pending buffer, weights, tip selection, queries,
tamper detection and crash safety, on real SQLite files."""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import libipld
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from learnae.errors import LedgerError, TxRejected
from learnae.identity import Identity
from learnae.ledger.members import Rules
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import Tx, checkpoint_payload, data_payload, make_tx, tx_link


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


ALICE, BOB, CAROL, MALLORY = (identity(n) for n in (1, 2, 3, 4))
POW = 2
NOW = 1_700_000_000_000
CLOCK = lambda: NOW + 10**6  # noqa: E731
CIDS = [
    "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    "bafybeifx7yeb55armcsxwwitkymga5xf53dxiarykms3ygqic223w5sk3m",
]
GENESIS = make_tx(ALICE, kind="genesis", payload={"name": "t"}, parents=[], swarm=None, pow_bits=POW, time_ms=NOW)
CLOSED = Rules(founder=ALICE.public_key, admission=frozenset(i.public_key for i in (ALICE, BOB, CAROL)))


def open_tangle(path, **kw) -> Tangle:
    return Tangle(path, genesis_raw=GENESIS.raw, pow_bits=POW, max_tx_bytes=4096, clock=CLOCK, **kw)


def data_tx(author: Identity, parents, time_ms: int, cid: str = CIDS[0], seq: int = 0, pow_bits=POW) -> Tx:
    payload = data_payload(cid=cid, size=1, rows=1, schema={"x": [2]}, source="probe", seq=seq)
    return make_tx(author, kind="data", payload=payload, parents=parents, swarm=GENESIS.id, pow_bits=pow_bits,
                   time_ms=time_ms)


def checkpoint_tx(author: Identity, parents, time_ms: int, cid: str, base=(), data=()) -> Tx:
    payload = checkpoint_payload(cid=cid, size=9, step=1, samples=32, base=base, data=data, metrics={"loss": 0.1})
    return make_tx(author, kind="checkpoint", payload=payload, parents=parents, swarm=GENESIS.id, pow_bits=POW,
                   time_ms=time_ms)


def random_dag(seed: int, n: int) -> list[Tx]:
    """The genesis and ``n`` transactions approving 1 or 2 random earlier ones (not only tips)."""
    rng = random.Random(seed)
    txs = [GENESIS]
    for i in range(n):
        parents = rng.sample([t.id for t in txs], min(len(txs), rng.choice([1, 2])))
        author, cid = rng.choice([ALICE, BOB, CAROL]), rng.choice(CIDS)
        if rng.random() < 0.5:
            txs.append(data_tx(author, parents, NOW + 1 + i, cid, seq=i))
        else:
            txs.append(checkpoint_tx(author, parents, NOW + 1 + i, cid))
    return txs


def descendants(txs: list[Tx]) -> dict[str, set[str]]:
    """Brute force: every transaction's direct and indirect approvers (``txs``: parents first)."""
    below: dict[str, set[str]] = {tx.id: set() for tx in txs}
    for tx in reversed(txs):  # children before parents
        for p in tx.parents:
            below[p] |= {tx.id} | below[tx.id]
    return below


def reference_order(txs: list[Tx]) -> list[str]:
    """Brute force: (height, id) with height = longest path from the genesis."""
    height: dict[str, int] = {}
    for tx in txs:  # parents come first
        height[tx.id] = 1 + max((height[p] for p in tx.parents), default=-1)
    return sorted(height, key=lambda i: (height[i], i))


def state(t: Tangle):
    return t.order(), t.tips(), t.counts(), t.pending, t.missing_parents()


DAG = random_dag(seed=7, n=24)


# Opening ---------------------------------------------------------------------------------------
def test_create_and_reopen(tmp_path):
    path = tmp_path / "t.db"
    with open_tangle(path) as t:
        assert t.swarm == GENESIS.id and t.genesis == GENESIS and t.tips() == [GENESIS.id]
        t.insert_many(DAG[1:])
        before = state(t)
    with Tangle(path, clock=CLOCK) as t:
        assert (t.pow_bits, t.max_tx_bytes) == (POW, 4096)
        assert state(t) == before
        assert t.verify() == []
    with pytest.raises(LedgerError, match="pow_bits"):
        Tangle(path, pow_bits=POW + 1)
    other = make_tx(BOB, kind="genesis", payload={"name": "u"}, parents=[], swarm=None, pow_bits=POW, time_ms=NOW)
    with pytest.raises(LedgerError, match="swarm"):
        Tangle(path, genesis_raw=other.raw)


def test_open_errors(tmp_path):
    with pytest.raises(LedgerError, match="new tangle store"):
        Tangle(tmp_path / "new.db")
    with pytest.raises(LedgerError, match="not a genesis"):
        Tangle(tmp_path / "new.db", genesis_raw=DAG[1].raw, pow_bits=POW, max_tx_bytes=4096)
    with pytest.raises(TxRejected) as info:
        Tangle(tmp_path / "new.db", genesis_raw=GENESIS.raw, pow_bits=30, max_tx_bytes=4096)
    assert info.value.code == "low-pow"
    (tmp_path / "junk.db").write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(LedgerError, match="not a usable tangle store"):
        Tangle(tmp_path / "junk.db")


def test_genesis_lost_from_the_file_is_an_error_not_none(tmp_path):
    path = tmp_path / "t.db"
    open_tangle(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("DELETE FROM tx WHERE id = ?", (GENESIS.id,))
    db.close()
    with Tangle(path, clock=CLOCK) as t, pytest.raises(LedgerError, match="does not hold its genesis"):
        t.genesis  # noqa: B018


# Convergence -----------------------------------------------------------------------------------
@st.composite
def deliveries(draw):
    """A delivery of DAG[1:] in any order, with duplicates, cut into batches."""
    order = draw(st.permutations(range(1, len(DAG))))
    dupes = draw(st.lists(st.sampled_from(range(len(DAG))), max_size=8))
    items = list(order)
    for d in dupes:
        items.insert(draw(st.integers(0, len(items))), d)
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=6)))
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]


@settings(max_examples=25, deadline=None)
@given(first=deliveries(), second=deliveries())
def test_out_of_order_delivery_converges(first, second):
    order = reference_order(DAG)
    owners = {}
    for tx in sorted(DAG[1:], key=lambda tx: order.index(tx.id)):
        owners.setdefault(tx.payload["cid"], tx.author)
    with tempfile.TemporaryDirectory() as tmp:
        for n, delivery in enumerate((first, second)):
            with open_tangle(Path(tmp) / f"{n}.db") as t:
                for batch in delivery:
                    t.insert_many(DAG[i].raw for i in batch)
                assert t.order() == order
                assert t.pending == 0 and t.missing_parents() == [] and not t.rejections
                assert {cid: t.owner(cid) for cid in CIDS} == {cid: owners.get(cid) for cid in CIDS}
                assert t.tips() == sorted(i for i, below in descendants(DAG).items() if not below)


def test_insert_results(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        a = data_tx(BOB, [GENESIS.id], NOW + 1)
        assert t.insert(a.raw).status == "inserted"
        assert t.insert(a.raw).status == "duplicate"
        assert t.insert(a).status == "duplicate"  # a decoded Tx is accepted too
        assert t.insert(GENESIS.raw).status == "duplicate"
        result = t.insert(b"\x00")
        assert (result.id, result.status, result.error.code) == (None, "rejected", "undecodable")


# Rejections ------------------------------------------------------------------------------------
def resign(tx: Tx, signer: Identity, **changes) -> bytes:
    """``tx`` with ``changes`` to its map, mined and signed again by ``signer``."""
    obj = libipld.decode_dag_cbor(tx.raw)
    del obj["sig"]
    obj.update(changes, nonce=0)
    while hashlib.sha256(libipld.encode_dag_cbor(obj)).digest()[0] >> (8 - POW):
        obj["nonce"] += 1
    obj["sig"] = signer.sign(libipld.encode_dag_cbor(obj))
    return libipld.encode_dag_cbor(obj)


def low_pow_tx(parent: str) -> Tx:
    for t in range(NOW + 30, NOW + 130):
        tx = data_tx(BOB, [parent], t, pow_bits=0)
        if hashlib.sha256(tx.unsigned).digest()[0] >> (8 - POW):
            return tx
    raise AssertionError("no low-pow transaction found")


BAD = {
    "undecodable": lambda a: b"\xa1\x61",
    "not-canonical": lambda a: a.raw.replace(b"\x81\xd8\x2a\x58\x25\x00", b"\x81\x58\x24"),
    "bad-signature": lambda a: resign(a, MALLORY, author=BOB.public_key, time=NOW + 50),
    "low-pow": lambda a: low_pow_tx(a.id).raw,
    "too-large": lambda a: make_tx(BOB, kind="data", parents=[a.id], swarm=GENESIS.id, pow_bits=POW,
                                   time_ms=NOW + 20, payload=data_payload(
                                       cid=CIDS[0], size=1, rows=1, schema={}, source="x" * 5000, seq=0)).raw,
    "bad-parents": lambda a: resign(a, BOB, parents=sorted([tx_link(a.id), tx_link(GENESIS.id)], reverse=True)),
    "future-time": lambda a: data_tx(BOB, [a.id], CLOCK() + 11 * 60_000).raw,
    "before-parent": lambda a: data_tx(BOB, [a.id], a.time - 1, cid=CIDS[2]).raw,
    "wrong-swarm": lambda a: resign(a, BOB, swarm=tx_link(a.id), parents=[tx_link(a.id)], time=NOW + 21),
    "not-admitted": lambda a: data_tx(MALLORY, [a.id], NOW + 24).raw,
    "bad-payload": lambda a: resign(a, BOB, payload={"cid": CIDS[0]}, parents=[tx_link(a.id)], time=NOW + 22),
    "bad-fields": lambda a: resign(a, BOB, extra=1, parents=[tx_link(a.id)], time=NOW + 23),
    "unknown-kind": lambda a: resign(a, BOB, kind="evict", payload={"pad": b"\x00" * 100},
                                     parents=[tx_link(a.id)], time=NOW + 25),
}


@pytest.mark.parametrize("code", sorted(BAD))
def test_rejection_leaves_the_tangle_unchanged(tmp_path, code):
    with open_tangle(tmp_path / "t.db", rules=CLOSED) as t:
        a = data_tx(BOB, [GENESIS.id], NOW + 10)
        t.insert(a.raw)
        before = state(t)
        result = t.insert(BAD[code](a))
        assert result.status == "rejected" and result.error.code == code, result
        assert t.rejections == {code: 1}
        assert state(t) == before
        b = t.append(CAROL, "data", data_payload(cid=CIDS[1], size=1, rows=1, schema={}, source="s", seq=0))
        assert t.tips() == [b.id] and t.verify() == []


def test_append(tmp_path):
    with open_tangle(tmp_path / "t.db", rules=CLOSED) as t:
        t.insert_many(DAG[1:])
        tips = t.tips()
        tx = t.append(ALICE, "checkpoint", checkpoint_payload(
            cid=CIDS[0], size=1, step=2, samples=3, base=[DAG[2].id], data=[], metrics={}), time_ms=0)
        assert set(tx.parents) <= set(tips) and len(tx.parents) == 2
        assert tx.time == max(t.get(p).time for p in tx.parents)  # raised to the parents' time
        assert tx.id in t.tips()
        with pytest.raises(TxRejected) as info:
            t.append(MALLORY, "data", data_payload(cid=CIDS[0], size=1, rows=1, schema={}, source="s", seq=0))
        assert info.value.code == "not-admitted"
        with pytest.raises(TxRejected) as info:
            t.append(ALICE, "data", {"cid": CIDS[0]})
        assert info.value.code == "bad-payload"


# Pending buffer --------------------------------------------------------------------------------
def test_pending_until_parents_arrive(tmp_path):
    a = data_tx(BOB, [GENESIS.id], NOW + 1)
    b = data_tx(CAROL, [a.id], NOW + 2)
    c = data_tx(ALICE, [GENESIS.id], NOW + 3)
    d = data_tx(BOB, [b.id, c.id], NOW + 4)
    with open_tangle(tmp_path / "t.db") as t:
        assert t.insert(d.raw).status == "pending"
        assert t.insert(d.raw).status == "duplicate"
        assert t.insert(b.raw).status == "pending"
        assert t.missing_parents() == sorted([a.id, c.id]) and t.pending == 2
        assert d.id not in t and t.tips() == [GENESIS.id]
        result = t.insert(a.raw)
        assert (result.status, result.released) == ("inserted", (b.id,))
        assert t.missing_parents() == [c.id]
        assert t.insert(c.raw).released == (d.id,)
        assert t.pending == 0 and t.missing_parents() == [] and t.tips() == [d.id]
        assert t.verify() == []


def test_pending_child_rejected_when_its_parent_arrives(tmp_path):
    a = data_tx(BOB, [GENESIS.id], NOW + 10)
    early = data_tx(CAROL, [a.id], NOW + 5)  # before its parent
    with open_tangle(tmp_path / "t.db") as t:
        assert t.insert(early.raw).status == "pending"
        assert t.insert(a.raw).released == ()
        assert t.rejections == {"before-parent": 1}
        assert t.pending == 0 and early.id not in t and t.tips() == [a.id]


def test_pending_buffer_is_bounded(tmp_path):
    a = data_tx(BOB, [GENESIS.id], NOW + 1)
    children = [data_tx(CAROL, [a.id], NOW + 2 + i, seq=i) for i in range(10)]
    size = len(children[0].raw)
    with open_tangle(tmp_path / "t.db", max_pending_bytes=3 * size + size // 2) as t:
        t.insert_many(c.raw for c in children)
        assert t.pending == 3 and t.pending_evicted == 7
        assert sorted(t.insert(a.raw).released) == sorted(c.id for c in children[-3:])  # the newest stayed
        assert t.pending == 0 and t.missing_parents() == []


# Weights and tip selection ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_weights_match_brute_force(tmp_path, seed):
    txs = random_dag(seed, 30)
    below = descendants(txs)
    with open_tangle(tmp_path / "t.db") as t:
        t.insert_many(tx.raw for tx in reversed(txs[1:]))
        assert {tx.id: t.weight(tx.id) for tx in txs} == {i: 1 + len(b) for i, b in below.items()}
        for depth in (2, 5, 100):
            region = t._region(depth)  # what the walks use
            assert region.weights == {i: 1 + len(below[i]) for i in region.heights}
            assert all(sorted(a) == t.approvers(i) for i, a in region.approvers.items())


@pytest.mark.parametrize("seed", range(4))
def test_select_tips_returns_tips(tmp_path, seed):
    rng = random.Random(seed)
    with open_tangle(tmp_path / "t.db") as t:
        assert t.select_tips(rng=rng) == [GENESIS.id]
        t.insert_many(tx.raw for tx in random_dag(seed, 30)[1:])
        for n in (1, 2, 3):
            for depth in (1, 3, 100):
                chosen = t.select_tips(n, depth=depth, rng=rng)
                assert len(chosen) == len(set(chosen)) == min(n, len(t.tips()))
                assert set(chosen) <= set(t.tips()) and chosen == sorted(chosen)
    with open_tangle(tmp_path / "chain.db") as t:
        a = data_tx(BOB, [GENESIS.id], NOW + 1)
        t.insert_many([a.raw, data_tx(BOB, [a.id], NOW + 2).raw])
        assert t.select_tips(rng=rng) == t.tips() and len(t.tips()) == 1


def test_walks_follow_the_heavier_branch(tmp_path):
    """Genesis <- a1 <- a2 <- ... <- a10 (heavy) and genesis <- b1 (light)."""
    with open_tangle(tmp_path / "t.db") as t:
        chain = [data_tx(BOB, [GENESIS.id], NOW + 1)]
        for i in range(9):
            chain.append(data_tx(BOB, [chain[-1].id], NOW + 2 + i, seq=i + 1))
        b1 = data_tx(CAROL, [GENESIS.id], NOW + 1)
        t.insert_many([*chain, b1])
        rng = random.Random(1)
        assert t.select_tips(1, alpha=10, depth=100, rng=rng) == [chain[-1].id]
        assert t.select_tips(2, alpha=10, depth=100, rng=rng) == sorted([chain[-1].id, b1.id])  # filled in
        assert t.confirmation_confidence(chain[0].id, alpha=10, depth=100, rng=rng) == 1.0
        assert t.confirmation_confidence(b1.id, alpha=10, depth=100, rng=rng) == 0.0
        assert 0.3 < t.confirmation_confidence(b1.id, alpha=0, depth=100, walks=400, rng=rng) < 0.7
        assert t.confirmation_confidence(GENESIS.id, rng=rng) == 1.0


def test_confidence_of_genesis_is_one(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        assert t.confirmation_confidence(GENESIS.id) == 1.0
        t.insert_many(tx.raw for tx in DAG[1:])
        assert t.confirmation_confidence(GENESIS.id, walks=50) == 1.0
        with pytest.raises(LedgerError):
            t.confirmation_confidence(data_tx(CAROL, [GENESIS.id], NOW + 999).id)


# Queries ---------------------------------------------------------------------------------------
def test_queries(tmp_path):
    d1 = data_tx(BOB, [GENESIS.id], NOW + 1, cid=CIDS[0], seq=0)
    d2 = data_tx(CAROL, [GENESIS.id], NOW + 2, cid=CIDS[1], seq=0)
    d3 = data_tx(BOB, [d1.id, d2.id], NOW + 3, cid=CIDS[0], seq=1)  # claims BOB's CID again: not the owner
    c1 = checkpoint_tx(ALICE, [d3.id], NOW + 4, CIDS[2], data=[d1.id])
    c2 = checkpoint_tx(ALICE, [c1.id], NOW + 5, CIDS[2], base=[c1.id], data=[d2.id, d3.id])
    c3 = checkpoint_tx(CAROL, [c2.id], NOW + 6, CIDS[2], base=[c2.id])
    with open_tangle(tmp_path / "t.db") as t:
        t.insert_many([d1.raw, d2.raw, d3.raw, c1.raw])
        new, cursor = t.checkpoints_since(0)
        assert new == [c1]
        t.insert_many([c3.raw, c2.raw])
        new, cursor = t.checkpoints_since(cursor)
        assert new == [c2, c3] and t.checkpoints_since(cursor) == ([], cursor)
        assert t.latest_checkpoint_per_author() == {ALICE.public_key: c2, CAROL.public_key: c3}
        assert t.data_by_author(BOB.public_key) == [d1, d3]
        assert t.owner(CIDS[0]) == BOB.public_key and t.owner(CIDS[1]) == CAROL.public_key
        assert t.owner(CIDS[2]) == ALICE.public_key and t.owner("bafkreiunknown") is None
        assert t.count() == 7 and t.counts() == {"checkpoint": 3, "data": 3, "genesis": 1}
        assert t.get(c2.id) == c2 and c2.id in t and t.get("nope") is None and "nope" not in t
        assert t.stored(["nope", c2.id, c2.id, GENESIS.id]) == {c2.id, GENESIS.id}
        assert t.stored([f"bafy{n}" for n in range(1200)] + [c2.id]) == {c2.id}  # past one query's 500
        assert t.approvers(GENESIS.id) == sorted([d1.id, d2.id]) and t.tips() == [c3.id]
        assert [i for i, _ in t.iter_raw()] == [GENESIS.id, d1.id, d2.id, d3.id, c1.id, c2.id, c3.id]
        assert dict(t.iter_raw())[c2.id] == c2.raw

        assert t.order() == [GENESIS.id, *sorted([d1.id, d2.id]), d3.id, c1.id, c2.id, c3.id]

def sql_latest_and_counts(path) -> tuple[dict[bytes, str], dict[str, int]]:
    """Brute force from the file: each author's latest checkpoint id, and counts by kind."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT author, time, height, id FROM tx WHERE kind = 'checkpoint'").fetchall()
        counts = dict(db.execute("SELECT kind, count(*) FROM tx GROUP BY kind ORDER BY kind"))
    finally:
        db.close()
    latest: dict[bytes, tuple] = {}
    for author, time_ms, height, i in rows:
        latest[author] = max(latest.get(author, (0, 0, "")), (time_ms, height, i))
    return {a: key[2] for a, key in latest.items()}, counts


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), cut=st.integers(1, 40))
def test_kept_counts_and_latest_agree_with_the_file(tmp_path_factory, seed, cut):
    """counts() and latest_checkpoint_per_author() are kept in memory by inserts; they must
    equal what the file says, across batches, a reopen and a failed (rolled back) batch."""
    path = tmp_path_factory.mktemp("kept") / "t.db"
    dag = random_dag(seed, 40)
    with open_tangle(path) as t:
        t.insert_many(tx.raw for tx in dag[1:cut])
        def failing():  # a batch that fails half way is rolled back whole
            yield from (tx.raw for tx in dag[cut:])
            raise RuntimeError("the batch's source failed")

        with pytest.raises(RuntimeError):
            t.insert_many(failing())
        latest, counts = sql_latest_and_counts(path)
        assert t.counts() == counts and t.count() == sum(counts.values())
        assert {a: tx.id for a, tx in t.latest_checkpoint_per_author().items()} == latest
        t.insert_many(tx.raw for tx in dag[cut:])
        latest, counts = sql_latest_and_counts(path)
        assert t.counts() == counts and {a: tx.id for a, tx in t.latest_checkpoint_per_author().items()} == latest
    with Tangle(path, clock=CLOCK) as t:
        assert t.counts() == counts and {a: tx.id for a, tx in t.latest_checkpoint_per_author().items()} == latest


def test_data_seq_lookups(tmp_path):
    """data_tx_at_seq / next_data_seq answer from the index, as a scan of the author's data would."""
    dag = random_dag(11, 60)
    with open_tangle(tmp_path / "t.db") as t:
        for who in (ALICE, BOB, CAROL, MALLORY):
            assert t.next_data_seq(who.public_key) == 0 and t.data_tx_at_seq(who.public_key, 0) is None
        t.insert_many(tx.raw for tx in dag[1:])
        for who in (ALICE, BOB, CAROL):
            mine = [tx for tx in dag if tx.kind == "data" and tx.author == who.public_key]
            assert mine, "the DAG gives every author data transactions"
            assert t.next_data_seq(who.public_key) == 1 + max(tx.payload["seq"] for tx in mine)
            for tx in mine:
                assert t.data_tx_at_seq(who.public_key, tx.payload["seq"]) == tx.id
            assert t.data_tx_at_seq(who.public_key, 10**6) is None
        # another author's seq is not this one's
        d = data_tx(MALLORY, [GENESIS.id], NOW + 500, seq=7)
        t.insert(d)
        assert t.data_tx_at_seq(MALLORY.public_key, 7) == d.id and t.next_data_seq(MALLORY.public_key) == 8
        assert t.data_tx_at_seq(ALICE.public_key, 7) != d.id


def test_a_store_made_before_the_seq_index_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    dag = random_dag(5, 30)
    with open_tangle(path) as t:
        t.insert_many(tx.raw for tx in dag[1:])
    db = sqlite3.connect(path)  # what a store of the previous version looks like
    db.execute("DROP INDEX tx_data_seq")
    db.execute("ALTER TABLE tx DROP COLUMN dseq")
    db.commit()
    db.close()
    with Tangle(path, read_only=True) as t:  # read-only: answers by scanning, writes nothing
        last = max(tx.payload["seq"] for tx in dag if tx.kind == "data" and tx.author == BOB.public_key)
        assert t.next_data_seq(BOB.public_key) == last + 1 and t.verify() == []
    with Tangle(path, clock=CLOCK) as t:
        assert t.next_data_seq(BOB.public_key) == last + 1 and t.verify() == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM tx WHERE kind = 'data' AND dseq IS NULL").fetchone() == (0,)
    db.close()


def test_reading_never_writes(tmp_path):
    """An empty file, a foreign SQLite database and a real ledger opened read-only are left
    byte for byte as they were, with a message that says what the file is."""
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    for read_only in (True, False):
        with pytest.raises(LedgerError, match="empty file"):
            Tangle(empty, read_only=read_only)
        assert empty.stat().st_size == 0
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    for kw in ({"read_only": True}, {}, {"genesis_raw": GENESIS.raw, "pow_bits": POW, "max_tx_bytes": 4096}):
        with pytest.raises(LedgerError, match="not a learnae ledger"):
            Tangle(foreign, **kw)
        assert foreign.read_bytes() == before
    with pytest.raises(LedgerError, match="does not exist"):
        Tangle(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()
    real = tmp_path / "t.db"
    with open_tangle(real) as t:
        t.insert_many(tx.raw for tx in DAG[1:])
    before = real.read_bytes()
    with Tangle(real, read_only=True) as t:
        assert t.count() == len(DAG) and t.verify() == []
        with pytest.raises(LedgerError):
            t.insert(data_tx(CAROL, [GENESIS.id], NOW + 999))
    # SQLite may make its (empty) WAL side files to read a WAL store; the ledger is untouched
    assert real.read_bytes() == before
    wal = tmp_path / "t.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0



def test_lineage(tmp_path):
    d1 = data_tx(BOB, [GENESIS.id], NOW + 1, cid=CIDS[0])
    d2 = data_tx(CAROL, [GENESIS.id], NOW + 2, cid=CIDS[1])
    c1 = checkpoint_tx(ALICE, [d1.id], NOW + 3, CIDS[2], data=[d1.id])
    unknown = DAG[5].id
    c2 = checkpoint_tx(BOB, [c1.id, d2.id], NOW + 4, CIDS[2], base=[c1.id], data=[d2.id, unknown])
    with open_tangle(tmp_path / "t.db") as t:
        t.insert_many([d1.raw, d2.raw, c1.raw, c2.raw])
        assert t.lineage(c2.id) == {c2.id: c2, c1.id: c1, d2.id: d2, unknown: None, d1.id: d1}
        assert list(t.lineage(c2.id)) == [c2.id, c1.id, d2.id, unknown, d1.id]
        assert t.lineage(d1.id) == {d1.id: d1}


# Tamper detection ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("tamper") / "t.db"
    with open_tangle(path) as t:
        t.insert_many(tx.raw for tx in DAG[1:8])
    return path


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_verify_catches_any_changed_byte(stored, data):
    db = sqlite3.connect(stored)
    rows = db.execute("SELECT id, raw FROM tx ORDER BY seq").fetchall()
    db.close()
    tx_id, raw = data.draw(st.sampled_from(rows))
    position = data.draw(st.integers(0, len(raw) - 1))
    changed = bytearray(raw)
    changed[position] ^= data.draw(st.integers(1, 255))
    edit(stored, "UPDATE tx SET raw = ? WHERE id = ?", bytes(changed), tx_id)
    try:
        with Tangle(stored, clock=CLOCK) as t:
            problems = t.verify()
        assert problems and problems[0].startswith(tx_id), problems
    finally:
        edit(stored, "UPDATE tx SET raw = ? WHERE id = ?", raw, tx_id)
    with Tangle(stored, clock=CLOCK) as t:
        assert t.verify() == []


def edit(path, sql, *args):
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()


@pytest.mark.parametrize("sql", [
    "UPDATE tx SET height = height + 1 WHERE seq = 3",
    "UPDATE tx SET author = x'00' WHERE seq = 3",
    "UPDATE tx SET cid = NULL WHERE seq = 3",
    "DELETE FROM edge WHERE child = 3",
    "UPDATE tx SET id = 'bafyreiaaaa' WHERE seq = 3",
    "DELETE FROM tx WHERE seq = (SELECT max(parent) FROM edge)",
])
def test_verify_catches_changed_indexes(tmp_path, sql):
    path = tmp_path / "t.db"
    with open_tangle(path) as t:
        t.insert_many(tx.raw for tx in DAG[1:8])
    edit(path, sql)
    with Tangle(path, clock=CLOCK) as t:
        assert t.verify()


# Crash safety ----------------------------------------------------------------------------------
CRASH_WRITER = textwrap.dedent("""
    import sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from learnae.identity import Identity
    from learnae.ledger.tangle import Tangle
    from learnae.ledger.tx import data_payload

    me = Identity(Ed25519PrivateKey.from_private_bytes(b"\\x05" * 32))
    t = Tangle(sys.argv[1])
    for i in range(10**6):
        payload = data_payload(cid=sys.argv[2], size=1, rows=1, schema={}, source="crash", seq=i)
        print(t.append(me, "data", payload).id, flush=True)
""")


@pytest.mark.slow
def test_acknowledged_inserts_survive_sigkill(tmp_path):
    path = tmp_path / "t.db"
    open_tangle(path).close()
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(path), CIDS[0]],
                            stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        while len(acknowledged) < 200:
            line = proc.stdout.readline()
            assert line, "the writer died"
            acknowledged.append(line.strip())
        proc.send_signal(signal.SIGKILL)
        acknowledged += [line.strip() for line in proc.stdout]  # printed before the kill
    finally:
        proc.kill()
        proc.wait()
    with Tangle(path) as t:
        assert all(i in t for i in acknowledged)
        assert t.count() >= len(acknowledged) + 1
        assert t.verify() == []
        assert t.tips()
