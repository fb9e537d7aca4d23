"""The tangle's memos: decodings of validated bytes shared by the stores of a process
(``decode_cached``, ``_validate``), each store's recently stored transactions (``get``, ``in``,
``stored``), and the processes driver's host bound (``check_process_hosts``)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sqlite3
import sys
import threading

import libipld
import pytest
from test_tangle import ALICE, BOB, GENESIS, NOW, POW, checkpoint_tx, data_tx

from learnae.errors import ConfigError, LedgerError
from learnae.ledger import tangle as tangle_mod
from learnae.ledger import tx as tx_mod
from learnae.ledger.tangle import Tangle, decode_cached
from learnae.ledger.tx import MAX_FUTURE_MS, Tx, decode_tx, make_tx
from learnae.local.harness import run_scenario
from learnae.local.scenario import MAX_HOSTS, check_process_hosts, parse_scenario


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    """Each test starts with an empty process-wide memo (and leaves the real one alone)."""
    import weakref

    monkeypatch.setattr(tangle_mod, "_decoded", {})
    monkeypatch.setattr(tangle_mod, "_valid", {})
    monkeypatch.setattr(tangle_mod, "_fresh", weakref.WeakValueDictionary())
    monkeypatch.setattr(tangle_mod, "_decoded_bytes", 0)


class Clock:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def store(path, *, genesis: Tx = GENESIS, clock=lambda: NOW + 10**6, max_tx_bytes: int = 4096) -> Tangle:
    return Tangle(path, genesis_raw=genesis.raw, pow_bits=POW, max_tx_bytes=max_tx_bytes, clock=clock)


def chain(n: int, start: int = NOW + 1) -> list[Tx]:
    txs, parent = [], GENESIS.id
    for i in range(n):
        tx = data_tx(ALICE if i % 2 else BOB, [parent], start + i, seq=i)
        txs.append(tx)
        parent = tx.id
    return txs


def fields(tx: Tx) -> dict:
    return {f.name: getattr(tx, f.name) for f in dataclasses.fields(tx) if f.init}


def memo_consistent() -> None:
    assert tangle_mod._decoded_bytes == sum(len(raw) for raw in tangle_mod._decoded)
    assert tangle_mod._decoded_bytes <= max(tangle_mod.DECODED_BYTES, max(map(len, tangle_mod._decoded), default=0))
    assert tangle_mod._valid.keys() == tangle_mod._decoded.keys()


# ------------------------------------------------------------------------- the decoding memo
def test_decoded_memo_is_bounded_in_bytes_and_equals_decode_tx(tmp_path, monkeypatch):
    txs = chain(30)
    size = max(len(tx.raw) for tx in txs)
    monkeypatch.setattr(tangle_mod, "DECODED_BYTES", 5 * size)
    with store(tmp_path / "a.sqlite") as a:
        assert all(r.status == "inserted" for r in a.insert_many([tx.raw for tx in txs]))
    memo_consistent()
    assert 0 < len(tangle_mod._decoded) <= 5
    assert list(tangle_mod._decoded) == [tx.raw for tx in txs[-len(tangle_mod._decoded):]]  # the newest kept
    for tx in txs:
        assert fields(decode_cached(tx.raw)) == fields(decode_tx(tx.raw))
        assert fields(decode_cached(bytearray(tx.raw))) == fields(tx)


def test_bytes_that_fail_validation_are_not_remembered(tmp_path):
    # Decodable junk whose decoding is 60 times its size: it must not stay in memory.
    payload = {"junk": [[] for _ in range(5000)]}
    prefix, suffix = tx_mod._unsigned_parts("data", ALICE.public_key, [tx_mod.tx_link(GENESIS.id)], NOW,
                                            libipld.encode_dag_cbor(payload), tx_mod.tx_link(GENESIS.id))
    junk = tx_mod._signed(prefix + tx_mod.cbor_head(0, 0) + suffix, bytes(64))
    good = chain(1)[0]
    bad_sig = good.raw.replace(good.sig, bytes(64))
    with store(tmp_path / "a.sqlite") as a:
        results = a.insert_many([junk, bad_sig, good.raw])
        assert [r.status for r in results] == ["rejected", "rejected", "inserted"]
        assert results[0].error.code == "too-large" and results[1].error.code == "bad-signature"
        del results  # their errors' tracebacks hold the decodings
        gc.collect()
        assert list(tangle_mod._decoded) == [good.raw]
        assert junk not in tangle_mod._fresh and bad_sig not in tangle_mod._fresh
        assert a.insert(junk).error.code == "too-large"  # and again, decoded afresh
    memo_consistent()


def test_a_tx_rejected_for_its_time_stays_rejected_while_remembered(tmp_path):
    future = data_tx(ALICE, [GENESIS.id], NOW + 10 * MAX_FUTURE_MS)
    late, early = Clock(future.time), Clock(NOW)
    with store(tmp_path / "late.sqlite", clock=late) as a, store(tmp_path / "early.sqlite", clock=early) as b:
        assert b.insert(future.raw).error.code == "future-time"
        assert a.insert(future.raw).status == "inserted"  # its bytes are now remembered as valid
        assert future.raw in tangle_mod._decoded
        assert b.insert(future.raw).error.code == "future-time"  # the memo does not skip the clock
        assert b.insert(decode_cached(future.raw)).error.code == "future-time"
        assert future.id not in b
        early.ms = future.time - MAX_FUTURE_MS  # its time is no longer too far ahead
        assert b.insert(future.raw).status == "inserted"
        assert b.get(future.id) == future


def test_a_tx_before_its_parent_is_rejected_though_remembered(tmp_path):
    parent = data_tx(ALICE, [GENESIS.id], NOW + 50)
    child = data_tx(BOB, [parent.id], NOW + 100)
    with store(tmp_path / "a.sqlite") as a, store(tmp_path / "b.sqlite") as b:
        assert [r.status for r in a.insert_many([parent.raw, child.raw])] == ["inserted", "inserted"]
        assert child.raw in tangle_mod._decoded
        # b holds a parent with the same id only as a frontier entry later than the child
        b._db.execute("INSERT INTO pruned VALUES (?, ?, ?, ?, 0)", (b._next_seq, parent.id, NOW + 200, 1))
        b._next_seq += 1
        assert b.insert(child.raw).error.code == "before-parent"


def test_same_bytes_under_other_rules_are_validated_afresh(tmp_path):
    other = make_tx(BOB, kind="genesis", payload={"name": "other"}, parents=[], swarm=None, pow_bits=POW, time_ms=NOW)
    tx = chain(1)[0]
    with store(tmp_path / "a.sqlite") as a:
        assert a.insert(tx.raw).status == "inserted"
    assert tangle_mod._valid[tx.raw] == {(GENESIS.id, POW, 4096)}
    with store(tmp_path / "other.sqlite", genesis=other) as b:
        assert b.insert(tx.raw).error.code == "wrong-swarm"
        assert b.insert(decode_cached(tx.raw)).error.code == "wrong-swarm"
    with store(tmp_path / "small.sqlite", max_tx_bytes=len(tx.raw) - 1) as c:  # same swarm, smaller limit
        assert c.insert(tx.raw).error.code == "too-large"
    assert tangle_mod._valid[tx.raw] == {(GENESIS.id, POW, 4096)}


def test_another_tx_object_with_the_same_bytes_is_validated_in_full(tmp_path):
    tx = chain(1)[0]
    with store(tmp_path / "a.sqlite") as a:
        assert a.insert(tx.raw).status == "inserted"
    lying = Tx(**{**fields(tx), "payload": {"bogus": 1}})  # the remembered bytes, other fields
    with store(tmp_path / "b.sqlite") as b:
        assert b.insert(lying).error.code == "bad-payload"  # checked in full, not by its bytes
    # A hand-made Tx that passes (fields are not checked against the bytes) is not remembered.
    tampered = Tx(**{**fields(tx), "payload": {**tx.payload, "rows": 99}})
    with store(tmp_path / "c.sqlite") as c:
        assert c.insert(tampered).status == "inserted"
    assert decode_cached(tx.raw).payload["rows"] == 1
    assert tangle_mod._decoded[tx.raw] is not tampered


def test_the_memo_holds_across_threads(tmp_path, monkeypatch):
    txs = chain(60)
    monkeypatch.setattr(tangle_mod, "DECODED_BYTES", 7 * max(len(tx.raw) for tx in txs))
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with store(tmp_path / f"{i}.sqlite") as t:
                for _ in range(3):
                    for tx in txs:
                        t.insert(tx.raw)
                        decode_cached(tx.raw)
                assert t.count() == len(txs) + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    memo_consistent()


# ------------------------------------------------------------------------- recent transactions
def committed(path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {i for (i,) in db.execute("SELECT id FROM tx")}


def agrees(t: Tangle, ids: list[str]) -> None:
    """``in``, ``get`` and ``stored`` answer as the committed database does, for ``ids``."""
    held = committed(t.path)
    assert t.stored(ids) == held & set(ids)
    for i in ids:
        assert (i in t) == (i in held)
        got = t.get(i)
        assert (got is not None) == (i in held)
        if got is not None:
            assert got.id == i and fields(got) == fields(decode_tx(got.raw))


class FailingCommit:
    """A connection whose COMMIT fails (a full disk): everything else goes through."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def execute(self, sql, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_get_in_and_stored_agree_with_sqlite_after_inserts_and_failures(tmp_path):
    txs = chain(6)
    ids = [GENESIS.id, *(tx.id for tx in txs)]
    with store(tmp_path / "a.sqlite") as t:
        t.insert_many([tx.raw for tx in txs[:3]])
        agrees(t, ids)
        with pytest.raises(TypeError):
            t.insert_many([txs[3].raw, object()])  # type: ignore[list-item]  # a batch that fails half-way is rolled back
        agrees(t, ids)
        assert txs[3].id not in t
        real = t._db
        t._db = FailingCommit(real)
        with pytest.raises(LedgerError, match="disk is full"):
            t.insert_many([tx.raw for tx in txs[3:]])
        t._db = real
        agrees(t, ids)
        assert not t.stored(ids[4:])
        assert [r.status for r in t.insert_many([tx.raw for tx in txs[3:]])] == ["inserted"] * 3
        agrees(t, ids)


def test_get_in_and_stored_agree_with_sqlite_after_prune(tmp_path):
    txs, parent = [], GENESIS.id
    for i in range(8):
        tx = checkpoint_tx(ALICE, [parent], NOW + 1 + i, cid="bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")
        txs.append(tx)
        parent = tx.id
    ids = [GENESIS.id, *(tx.id for tx in txs)]
    with store(tmp_path / "a.sqlite") as t:
        t.insert_many(txs)
        agrees(t, ids)
        real = t._db
        t._db = FailingCommit(real)
        with pytest.raises(LedgerError):
            t.prune(NOW + 100, window_ms=0, keep_per_author=1)
        t._db = real
        agrees(t, ids)
        assert t.stored(ids) == set(ids)
        stats = t.prune(NOW + 100, window_ms=0, keep_per_author=1)
        assert stats.pruned == 7
        agrees(t, ids)
        assert t.stored(ids) == {GENESIS.id, txs[-1].id}
        assert all(t.get(tx.id) is None and tx.id not in t for tx in txs[:-1])


def test_get_in_and_stored_agree_with_sqlite_after_import_snapshot(tmp_path):
    txs = chain(5)
    ids = [GENESIS.id, *(tx.id for tx in txs)]
    with store(tmp_path / "a.sqlite") as a:
        a.insert_many([tx.raw for tx in txs])
        data = a.export_snapshot()
    with store(tmp_path / "b.sqlite") as b:
        real = b._db
        b._db = FailingCommit(real)
        with pytest.raises(LedgerError):
            b.import_snapshot(data)
        b._db = real
        agrees(b, ids)
        assert b.stored(ids) == {GENESIS.id}
        assert b.import_snapshot(data).inserted == 5
        agrees(b, ids)
        assert b.stored(ids) == set(ids)


# ------------------------------------------------------------------------- host bound
def scenario(nodes: int, **over) -> dict:
    return {"name": "big", "seed": 1, "nodes": nodes, "rounds": 2, "round_seconds": 2.0, **over}


def test_a_thousand_node_memory_scenario_parses_and_processes_are_bounded(tmp_path):
    big = parse_scenario(scenario(1000))
    assert big.nodes == 1000 and big.topology.kind == "mesh"
    with pytest.raises(ConfigError, match=f"at most {MAX_HOSTS - 1} nodes .* not 1000"):
        check_process_hosts(big)
    check_process_hosts(parse_scenario(scenario(MAX_HOSTS - 1)))  # exactly one test network
    with pytest.raises(ConfigError, match=f"big: the processes driver runs at most {MAX_HOSTS - 1} nodes and"
                                          " relay members on one test network, not 300"):
        run_scenario(parse_scenario(scenario(300)), tmp_path / "out", driver="processes", echo=lambda _: None)
    assert not (tmp_path / "out" / "reference").exists()  # refused before anything ran
    with pytest.raises(ConfigError, match="a line topology has at most"):
        parse_scenario(scenario(300, topology={"kind": "line"}))
    with pytest.raises(ConfigError, match="nodes \\+ relays must be at most"):
        parse_scenario(scenario(MAX_HOSTS - 1, topology={"kind": "home-nat", "relays": 1}))
