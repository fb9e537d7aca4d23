"""Ledger pruning and snapshots on real SQLite files: the rule, the frontier (entry points), steps,
export and import (fast joins), tampered snapshots, and a file that does not grow."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import libipld
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learnae.errors import LedgerError
from learnae.identity import Identity
from learnae.ledger.tangle import WAL_LIMIT, Tangle
from learnae.ledger.tx import (
    Tx,
    checkpoint_payload,
    data_payload,
    make_tx,
    snapshot_payload,
)


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


AUTHORS = [identity(n) for n in (1, 2, 3, 4)]
ALICE, BOB = AUTHORS[:2]
POW = 2
NOW = 1_700_000_000_000
CLOCK = lambda: NOW + 10**7  # noqa: E731
GENESIS = make_tx(ALICE, kind="genesis", payload={"name": "prune"}, parents=[], swarm=None, pow_bits=POW,
                  time_ms=NOW)
DATA_CIDS = ["bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
             "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"]
CHECKPOINT_CIDS = ["bafybeifx7yeb55armcsxwwitkymga5xf53dxiarykms3ygqic223w5sk3m",
                   "bafkreiaqsyhw3xdivgbzknt2ny2ojpmofbxpegzmo5ffd6xkxyh3j4bpfi"]


def open_tangle(path, genesis: Tx = GENESIS, pow_bits: int = POW) -> Tangle:
    return Tangle(path, genesis_raw=genesis.raw, pow_bits=pow_bits, max_tx_bytes=4096, clock=CLOCK)


def make(kind: str, author: Identity, parents, time_ms: int, n: int, genesis: Tx = GENESIS,
         pow_bits: int = POW) -> Tx:
    if kind == "data":
        payload = data_payload(cid=DATA_CIDS[n % 2], size=1, rows=1, schema={"x": [2]}, source="probe", seq=n)
    elif kind == "checkpoint":
        payload = checkpoint_payload(cid=CHECKPOINT_CIDS[n % 2], size=9, step=n, samples=32, base=[], data=[],
                                     metrics={"loss": 0.1})
    else:
        payload = snapshot_payload(cid=CHECKPOINT_CIDS[n % 2], size=100 + n, txs=n, top=n)
    return make_tx(author, kind=kind, payload=payload, parents=parents, swarm=genesis.id, pow_bits=pow_bits,
                   time_ms=time_ms)


def random_dag(seed: int, n: int) -> list[Tx]:
    """The genesis and ``n`` transactions of 4 authors and 3 kinds (mostly checkpoints), each
    approving 1 or 2 random earlier ones (not only tips), times shuffled a little against the
    order of issue (the authors' clocks), never before a parent's."""
    rng = random.Random(seed)
    txs, times = [GENESIS], {GENESIS.id: NOW}
    for i in range(n):
        recent = txs[-8:] if rng.random() < 0.8 else txs
        parents = rng.sample([t.id for t in recent], min(len(recent), rng.choice([1, 2, 2])))
        kind = rng.choices(["checkpoint", "data", "snapshot"], [6, 2, 1])[0]
        time_ms = max([NOW + 10 * i + rng.randint(-25, 25)] + [times[p] for p in parents])
        tx = make(kind, rng.choice(AUTHORS), parents, time_ms, i)
        txs.append(tx)
        times[tx.id] = time_ms
    return txs


def expected_kept(txs: list[Tx], heights: dict[str, int], cutoff: int, keep: int) -> set[str]:
    """The pruning rule, by brute force."""
    groups: dict[tuple[str, bytes], list[Tx]] = defaultdict(list)
    kept = set()
    for tx in txs:
        if tx.kind in ("checkpoint", "snapshot"):
            groups[tx.kind, tx.author].append(tx)
        else:
            kept.add(tx.id)
    for (kind, _), group in groups.items():
        group.sort(key=lambda t: (t.time, heights[t.id], t.id), reverse=True)
        for rank, tx in enumerate(group, 1):
            if rank == 1 or (kind == "checkpoint" and rank <= keep and tx.time >= cutoff):
                kept.add(tx.id)
    return kept


def heights_of(txs: list[Tx]) -> dict[str, int]:
    height: dict[str, int] = {}
    for tx in txs:  # parents first
        height[tx.id] = 1 + max((height[p] for p in tx.parents), default=-1)
    return height


def stored_heights(t: Tangle) -> dict[str, int]:
    """Order keys as stored (read from the SQLite file itself)."""
    db = sqlite3.connect(t.path)
    try:
        return dict(db.execute("SELECT id, height FROM tx"))
    finally:
        db.close()


def descendants(txs: list[Tx], among: set[str]) -> dict[str, set[str]]:
    """Brute force: every kept transaction's direct and indirect kept approvers."""
    below: dict[str, set[str]] = {tx.id: set() for tx in txs if tx.id in among}
    for tx in reversed(txs):
        if tx.id in among:
            for p in tx.parents:
                if p in among:
                    below[p] |= {tx.id} | below[tx.id]
    return below


def view(t: Tangle) -> tuple:
    """What a prune must leave the same, whichever way it is done."""
    return t.order(), stored_heights(t), t.tips(), t.counts(), t.pruning()["frontier"]


# The rule --------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 45), window=st.integers(0, 600), keep=st.integers(1, 4))
def test_prune_keeps_exactly_the_rule_and_the_kept_ledger_works(tmp_path_factory, seed, n, window, keep):
    txs = random_dag(seed, n)
    now = NOW + 10 * n
    heights = heights_of(txs)
    kept = expected_kept(txs, heights, now - window, keep)
    with open_tangle(tmp_path_factory.mktemp("t") / "t.db") as t:
        assert all(r.status == "inserted" for r in t.insert_many(txs[1:]))
        tips_before, latest_before = t.tips(), t.latest_checkpoint_per_author()
        owners = {cid: t.owner(cid) for cid in DATA_CIDS}
        data_before = t.data_since(0)[0]

        stats = t.prune(now, window_ms=window, keep_per_author=keep)
        assert set(t.order()) == kept
        assert (stats.pruned, stats.kept, stats.more, stats.cutoff_ms) == (len(txs) - len(kept), len(kept), False,
                                                                           now - window)
        assert t.verify() == []
        # order keys, tips, ownership, queries
        assert stored_heights(t) == {i: heights[i] for i in kept}
        assert t.order() == sorted(kept, key=lambda i: (heights[i], i))
        assert t.tips() == [i for i in tips_before if i in kept]
        assert t.latest_checkpoint_per_author() == latest_before
        assert {cid: t.owner(cid) for cid in DATA_CIDS} == owners
        assert t.data_since(0)[0] == data_before
        assert {tx.id for tx in t.checkpoints_since(0)[0]} == {tx.id for tx in txs if tx.kind == "checkpoint"} & kept
        assert t.counts() == dict(sorted(Counter(tx.kind for tx in txs if tx.id in kept).items()))
        below = descendants(txs, kept)
        for i in kept:
            assert t.weight(i) == 1 + len(below[i])
        # the frontier: exactly the pruned transactions a kept one approves
        frontier = {p for tx in txs if tx.id in kept for p in tx.parents if p not in kept}
        assert stats.frontier == len(frontier) == t.pruning()["frontier"]
        assert {tx.id for tx in txs if t.is_pruned(tx.id)} == frontier
        assert set(t.select_tips(rng=random.Random(seed))) <= set(t.tips())
        # a new transaction on the tips, and one approving an entry point, are accepted
        tip_tx = t.append(BOB, "checkpoint", checkpoint_payload(
            cid=CHECKPOINT_CIDS[0], size=1, step=1, samples=1, base=[], data=[], metrics={}), time_ms=now + 1)
        assert tip_tx.id in t and set(tip_tx.parents) <= set(tips_before) | kept
        if frontier:
            entry = sorted(frontier)[0]
            late = make("data", BOB, [entry], now + 1000, 10**6)
            assert t.insert(late).status == "inserted"
            assert t.weight(late.id) == 1 and late.id in t.tips()
        assert t.verify() == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n=st.integers(5, 45), window=st.integers(0, 300), keep=st.integers(1, 3),
       step=st.integers(1, 7))
def test_pruning_in_steps_equals_one_prune(tmp_path_factory, seed, n, window, keep, step):
    txs = random_dag(seed, n)
    now = NOW + 10 * n
    d = tmp_path_factory.mktemp("t")
    with open_tangle(d / "one.db") as one, open_tangle(d / "steps.db") as steps:
        one.insert_many(txs[1:])
        steps.insert_many(txs[1:])
        one.prune(now, window_ms=window, keep_per_author=keep)
        calls = 0
        while True:
            stats = steps.prune(now + calls, window_ms=window, keep_per_author=keep, limit=step)
            calls += 1
            assert stats.pruned <= step
            if not stats.more:
                break
        rounds = -(-(len(txs) - one.count()) // step)  # a call may also find an author has none to prune
        assert rounds <= calls <= max(1, rounds + 2 * len(AUTHORS))
        assert view(steps) == view(one)
        assert {i for i in (tx.id for tx in txs) if steps.is_pruned(i)} == {
            i for i in (tx.id for tx in txs) if one.is_pruned(i)}
        assert steps.pruning()["total"] == one.pruning()["total"] == len(txs) - one.count()
        assert steps.verify() == []


def test_pruned_approvers_do_not_make_tips_again(tmp_path):
    """A data transaction approved only by checkpoints that are pruned stays approved."""
    with open_tangle(tmp_path / "t.db") as t:
        d = make("data", BOB, [GENESIS.id], NOW + 1, 0)
        c1 = make("checkpoint", ALICE, [d.id], NOW + 2, 1)
        c2 = make("checkpoint", ALICE, [c1.id], NOW + 3, 2)
        t.insert_many([d, c1, c2])
        stats = t.prune(NOW + 1000, window_ms=0, keep_per_author=1)
        assert stats.pruned == 1 and t.order() == [GENESIS.id, d.id, c2.id]
        assert t.tips() == [c2.id] and t.is_pruned(c1.id)
        assert t.select_tips() == [c2.id]
        with Tangle(t.path, clock=CLOCK) as again:  # the same after a restart
            assert again.tips() == [c2.id] and again.pruning() == t.pruning()


def test_tip_selection_on_a_pruned_ledger(tmp_path):
    """Walks work when nothing is left at ``top - depth``, and never end on a transaction whose
    approvers were pruned (it is no tip)."""
    with open_tangle(tmp_path / "t.db") as t:
        chain = [GENESIS]
        for i in range(40):
            kind = "data" if i == 10 else "checkpoint"
            chain.append(make(kind, AUTHORS[i % 2], [chain[-1].id], NOW + i + 1, i))
        tips = [make("data", BOB, [chain[5].id, chain[-1].id], NOW + 50, 100)]
        tips += [make("data", AUTHORS[n], [chain[-1].id], NOW + 50 + n, 100 + n) for n in (2, 3)]
        t.insert_many(chain[1:] + tips)
        t.prune(NOW + 100, window_ms=5, keep_per_author=3)
        # the genesis, the data in the chain, each author's newest checkpoint, the three tips
        assert t.count() == 7 and t.tips() == sorted(tx.id for tx in tips)
        for depth in range(45):
            for seed in range(5):
                chosen = t.select_tips(rng=random.Random(seed), depth=depth)
                assert len(chosen) == 2 and set(chosen) <= set(t.tips()), (depth, chosen)
        assert t.verify() == []


def test_history_a_peer_sends_again_is_not_stored(tmp_path):
    """An old, superseded checkpoint or snapshot is what the last prune pruned: it does not come
    back when a peer that kept it sends it (to this node or to another that asked)."""
    txs = random_dag(3, 40)
    with open_tangle(tmp_path / "t.db") as t:
        t.insert_many(txs[1:])
        t.prune(NOW + 400, window_ms=100, keep_per_author=100)
        gone = [tx for tx in txs if tx.id not in t and tx.time < NOW + 300]
        assert len(gone) > 10
        results = t.insert_many(gone)
        assert {r.status for r in results} == {"pruned"}
        assert all(tx.id not in t for tx in gone) and t.verify() == []
        assert t.pending == 0 and not t.rejections


def test_a_late_transaction_brings_back_the_pruned_history_it_needs(tmp_path):
    """A data transaction that approves a checkpoint pruned and forgotten here is not lost: the
    pruned ancestry it waits for is stored again when a peer sends it, and pruned again later."""
    with open_tangle(tmp_path / "t.db") as t:
        c1 = make("checkpoint", ALICE, [GENESIS.id], NOW + 1, 1)
        c2 = make("checkpoint", ALICE, [c1.id], NOW + 2, 2)
        c3 = make("checkpoint", ALICE, [c2.id], NOW + 3, 3)
        c4 = make("checkpoint", ALICE, [c3.id], NOW + 4, 4)
        t.insert_many([c1, c2, c3, c4])
        t.prune(NOW + 100, window_ms=0, keep_per_author=1)
        assert t.order() == [GENESIS.id, c4.id] and t.is_pruned(c3.id) and not t.is_pruned(c2.id)
        assert t.insert(c2).status == "pruned"  # nobody needs it: history stays pruned
        late = make("data", BOB, [c2.id], NOW + 200, 0)
        assert t.insert(late).status == "pending" and t.missing_parents() == [c2.id]
        assert t.insert(c2).status == "pending" and t.missing_parents() == [c1.id]
        assert t.insert(c1).released == (c2.id, late.id)
        assert t.verify() == [] and late.id in t.tips()
        t.prune(NOW + 300, window_ms=0, keep_per_author=1)
        assert set(t.order()) == {GENESIS.id, c4.id, late.id} and t.is_pruned(c2.id) and t.verify() == []


def test_seqs_are_never_reused_after_a_prune(tmp_path):
    """Arrival cursors (``checkpoints_since``) and edges to entry points need fresh seqs, also when
    the prune deleted the last arrival (here an old checkpoint that came late)."""
    with open_tangle(tmp_path / "t.db") as t:
        c1 = make("checkpoint", ALICE, [GENESIS.id], NOW + 1, 1)
        c2 = make("checkpoint", ALICE, [c1.id], NOW + 5, 2)
        late = make("checkpoint", ALICE, [c1.id], NOW + 3, 3)  # older than c2, arrives last
        t.insert_many([c1, c2, late])
        _, cursor = t.checkpoints_since(0)
        t.prune(NOW + 100, window_ms=0, keep_per_author=1)
        assert t.order() == [GENESIS.id, c2.id] and t.is_pruned(c1.id) and not t.is_pruned(late.id)
        new = make("checkpoint", BOB, [c1.id, c2.id], NOW + 200, 4)
        assert t.insert(new).status == "inserted"
        assert [tx.id for tx in t.checkpoints_since(cursor)[0]] == [new.id]
        assert t.approvers(c2.id) == [new.id] and t.verify() == []
    with Tangle(t.path, clock=CLOCK) as again:  # and after a restart
        newer = make("data", BOB, [new.id], NOW + 300, 5)
        again.insert(newer)
        assert [tx.id for tx in again.data_since(cursor)[0]] == [newer.id] and again.verify() == []


def test_prune_arguments_and_read_only(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        for bad in (dict(window_ms=-1, keep_per_author=1), dict(window_ms=0, keep_per_author=0),
                    dict(window_ms=0, keep_per_author=1, limit=0)):
            with pytest.raises(ValueError):
                t.prune(NOW, **bad)
        assert t.pruning() == {"total": 0, "last_cutoff_ms": None, "frontier": 0}
    with Tangle(tmp_path / "t.db", read_only=True) as t, pytest.raises(LedgerError, match="read-only"):
        t.prune(NOW, window_ms=0, keep_per_author=1)


# Snapshots -------------------------------------------------------------------------------------
@pytest.fixture
def pruned(tmp_path) -> tuple[Tangle, list[Tx]]:
    txs = random_dag(11, 60)
    t = open_tangle(tmp_path / "source.db")
    t.insert_many(txs[1:])
    t.prune(NOW + 600, window_ms=150, keep_per_author=2)
    assert t.pruning()["frontier"] > 0 and t.count() < len(txs)
    yield t, txs
    t.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 45), window=st.integers(0, 600), keep=st.integers(1, 4))
def test_a_snapshot_imported_into_a_fresh_store_gives_the_same_ledger(tmp_path_factory, seed, n, window, keep):
    d = tmp_path_factory.mktemp("t")
    txs = random_dag(seed, n)
    with open_tangle(d / "a.db") as a, open_tangle(d / "b.db") as b:
        a.insert_many(txs[1:])
        a.prune(NOW + 10 * n, window_ms=window, keep_per_author=keep)
        data = a.export_snapshot()
        stats = b.import_snapshot(data)
        assert (stats.txs, stats.inserted, stats.rejected, stats.pending) == (a.count(), a.count() - 1, 0, 0)
        assert stats.frontier == a.pruning()["frontier"] and stats.bytes == len(data)
        assert b.order() == a.order() and stored_heights(b) == stored_heights(a) and b.tips() == a.tips()
        assert b.counts() == a.counts() and b.latest_checkpoint_per_author() == a.latest_checkpoint_per_author()
        assert b.pruning()["frontier"] == a.pruning()["frontier"] and b.verify() == []
        assert b.export_snapshot() == data
        # and it goes on: the same new transaction is accepted by both
        new = a.append(BOB, "data", data_payload(cid=DATA_CIDS[0], size=1, rows=1, schema={}, source="s", seq=99),
                       time_ms=NOW + 10**6)
        assert b.insert(new).status == "inserted" and b.tips() == a.tips()


def test_import_is_idempotent_and_merges_into_a_store_with_history(pruned, tmp_path):
    a, txs = pruned
    data = a.export_snapshot()
    with open_tangle(tmp_path / "fresh.db") as fresh:
        fresh.import_snapshot(data)
        before = view(fresh)
        again = fresh.import_snapshot(data)
        assert (again.inserted, again.frontier, again.duplicate) == (0, 0, a.count() - 1)
        assert view(fresh) == before
    with open_tangle(tmp_path / "full.db") as full:  # every transaction, never pruned
        full.insert_many(txs[1:])
        before = view(full)
        stats = full.import_snapshot(data)
        assert (stats.inserted, stats.frontier, stats.duplicate) == (0, 0, a.count() - 1)
        assert view(full) == before and full.verify() == []
    with open_tangle(tmp_path / "half.db") as half:  # the older half, and a transaction of its own
        half.insert_many(txs[1:30])
        own = half.append(BOB, "data", data_payload(cid=DATA_CIDS[1], size=1, rows=1, schema={}, source="s",
                                                    seq=7), time_ms=NOW + 10**6)
        half.import_snapshot(data)
        assert set(a.order()) | set(t.id for t in txs[:30]) | {own.id} == set(half.order())
        assert half.verify() == [] and own.id in half.tips()


def test_after_a_fast_join_the_full_history_may_still_arrive(pruned, tmp_path):
    """Entry points replaced by the transactions themselves: the same ledger as never pruned."""
    a, txs = pruned
    with open_tangle(tmp_path / "b.db") as b, open_tangle(tmp_path / "full.db") as full:
        b.import_snapshot(a.export_snapshot())
        full.insert_many(txs[1:])
        results = b.insert_many(txs[1:])
        assert {r.status for r in results} <= {"inserted", "duplicate"}
        assert b.pruning()["frontier"] == 0 and b.verify() == []
        assert b.order() == full.order() and stored_heights(b) == stored_heights(full)
        assert b.tips() == full.tips()


def test_a_snapshot_with_a_bad_signature_inside(pruned, tmp_path):
    a, _ = pruned
    data = a.export_snapshot()
    victim = a.get(a.tips()[0])
    assert victim is not None
    forged = data.replace(victim.raw, victim.raw.replace(victim.sig, bytes(64)))
    assert len(forged) == len(data) and forged != data
    with open_tangle(tmp_path / "b.db") as b:
        stats = b.import_snapshot(forged)
        assert (stats.rejected, stats.rejections, stats.inserted) == (1, {"bad-signature": 1}, a.count() - 2)
        assert victim.id not in b and set(b.order()) == set(a.order()) - {victim.id}
        assert b.verify() == [] and b.rejections["bad-signature"] == 1


@pytest.mark.parametrize("how", ["truncated", "not-cbor", "wrong-swarm", "oversize", "genesis", "version",
                                 "frontier-shape", "not-a-map"])
def test_bad_snapshots_are_refused_and_change_nothing(pruned, tmp_path, how):
    a, _ = pruned
    data = a.export_snapshot()
    obj = libipld.decode_dag_cbor(data)
    other = make_tx(BOB, kind="genesis", payload={"name": "other"}, parents=[], swarm=None, pow_bits=POW,
                    time_ms=NOW)
    limit = 1 << 30
    if how == "truncated":
        data, code, match = data[:-10], "snapshot-malformed", "truncated"
    elif how == "not-cbor":
        data, code, match = b"\xff" + data, "snapshot-malformed", "not DAG-CBOR"
    elif how == "not-a-map":
        data, code, match = libipld.encode_dag_cbor([1, 2]), "snapshot-malformed", "not a map"
    elif how == "wrong-swarm":
        with open_tangle(tmp_path / "other.db", genesis=other) as o:
            data = o.export_snapshot()
        code, match = "snapshot-wrong-swarm", f"snapshot is of swarm {other.id}"
    elif how == "oversize":
        limit, code, match = len(data) - 1, "snapshot-oversize", f"{len(data)} bytes, over"
    elif how == "genesis":
        data, code, match = libipld.encode_dag_cbor({**obj, "txs": [other.raw, *obj["txs"][1:]]}), \
            "snapshot-genesis", "not this swarm's genesis"
    elif how == "version":
        data, code, match = libipld.encode_dag_cbor({**obj, "v": 2}), "snapshot-version", "version 2"
    else:
        data, code, match = libipld.encode_dag_cbor({**obj, "frontier": [["x", 1, 1]]}), "snapshot-malformed", \
            "not a transaction id"
    with open_tangle(tmp_path / "b.db") as b:
        with pytest.raises(LedgerError, match=match) as info:
            b.import_snapshot(data, max_bytes=limit)
        assert info.value.code == code
        assert b.order() == [GENESIS.id] and b.pruning()["frontier"] == 0


def test_a_lying_frontier_shifts_order_keys_and_verify_says_so_once_history_arrives(pruned, tmp_path):
    """What a snapshot is trusted for: the frontier's heights. A lie shifts the kept heights above
    it; it forges nothing, and the pruned history, if it arrives, shows the lie."""
    a, txs = pruned
    obj = libipld.decode_dag_cbor(a.export_snapshot())
    lie = [[i, t, h + 1000] for i, t, h in obj["frontier"]]
    with open_tangle(tmp_path / "b.db") as b:
        b.import_snapshot(libipld.encode_dag_cbor({**obj, "frontier": lie}))
        assert set(b.order()) == set(a.order()) and b.verify() == []
        assert stored_heights(b) != stored_heights(a)
        b.insert_many(txs[1:])
        assert any("index columns disagree" in p for p in b.verify())


# A bounded file --------------------------------------------------------------------------------
def test_the_file_does_not_grow_across_append_and_prune_cycles(tmp_path):
    """20 cycles of 500 checkpoints appended, then pruned: SQLite reuses the freed pages, and the
    WAL is truncated back after its checkpoints (``journal_size_limit``)."""
    genesis = make_tx(ALICE, kind="genesis", payload={"name": "cycles"}, parents=[], swarm=None, pow_bits=0,
                      time_ms=NOW)
    path = tmp_path / "t.db"
    files, wals = [], []
    with open_tangle(path, genesis=genesis, pow_bits=0) as t:
        last = [genesis.id]
        clock = NOW
        for _ in range(20):
            batch = []
            for i in range(500):
                clock += 1
                tx = make("checkpoint", AUTHORS[i % 4], last[-2:], clock, i, genesis=genesis, pow_bits=0)
                batch.append(tx)
                last.append(tx.id)
            assert all(r.status == "inserted" for r in t.insert_many(batch))
            stats = t.prune(clock, window_ms=50, keep_per_author=8)
            assert stats.kept <= 1 + 4 * 8 and stats.pruned >= 450
            files.append(path.stat().st_size)
            wals.append(Path(f"{path}-wal").stat().st_size)
        assert t.pruning()["total"] >= 9000 and t.verify() == []
    print(f"file bytes per cycle: {files}\nWAL bytes per cycle: {wals}")
    assert max(files[3:]) == files[3], files
    assert max(wals) <= 2 * WAL_LIMIT, wals


def test_the_wal_does_not_stay_at_its_high_water_mark(tmp_path):
    """One large commit (a first prune of a long history) grows the WAL; the next commits after
    its checkpoint truncate it back to ``WAL_LIMIT``."""
    genesis = make_tx(ALICE, kind="genesis", payload={"name": "wal"}, parents=[], swarm=None, pow_bits=0,
                      time_ms=NOW)
    path = tmp_path / "t.db"
    wal = Path(f"{path}-wal")
    with open_tangle(path, genesis=genesis, pow_bits=0) as t:
        last, txs = [genesis.id], []
        for i in range(12_000):
            txs.append(make("checkpoint", AUTHORS[i % 4], last[-2:], NOW + i + 1, i, genesis=genesis, pow_bits=0))
            last.append(txs[-1].id)
        t.insert_many(txs)
        t.prune(NOW + 20_000, window_ms=0, keep_per_author=1)
        high = wal.stat().st_size
        assert high > 2 * WAL_LIMIT
        for i in range(3):
            t.append(BOB, "data", data_payload(cid=DATA_CIDS[0], size=1, rows=1, schema={}, source="s", seq=i))
        print(f"WAL {high} bytes after the large commits, {wal.stat().st_size} after three small ones")
        assert wal.stat().st_size <= WAL_LIMIT
