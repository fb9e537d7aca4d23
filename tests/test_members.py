"""Membership on the ledger: admit and revoke, applied causally, on real SQLite files."""

from __future__ import annotations

import sqlite3
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.errors import TxRejected
from learnae.identity import Identity
from learnae.ledger.members import Roll, Rules
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import (
    Tx,
    admit_payload,
    checkpoint_payload,
    data_payload,
    make_tx,
    revoke_payload,
)


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


FOUNDER, NODE, SENSOR, STRANGER, STEWARD1, STEWARD2 = (identity(n) for n in range(1, 7))
POW = 2
NOW = 1_700_000_000_000
GENESIS = make_tx(FOUNDER, kind="genesis", payload={"name": "m"}, parents=[], swarm=None, pow_bits=POW, time_ms=NOW)
CLOSED = Rules(founder=FOUNDER.public_key, admission=frozenset({FOUNDER.public_key, NODE.public_key}))
CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def open_tangle(path, rules: Rules = CLOSED) -> Tangle:
    return Tangle(path, genesis_raw=GENESIS.raw, pow_bits=POW, max_tx_bytes=4096, rules=rules,
                  clock=lambda: NOW + 10**7)


def tx(author: Identity, kind: str, payload: dict, parents: list[str], dt: int) -> Tx:
    return make_tx(author, kind=kind, payload=payload, parents=sorted(parents, key=_link), swarm=GENESIS.id,
                   pow_bits=POW, time_ms=NOW + dt)


def _link(txid: str) -> bytes:
    from learnae.ledger.tx import tx_link
    return tx_link(txid)


def data(author: Identity, parents: list[str], dt: int, seq: int = 0) -> Tx:
    return tx(author, "data", data_payload(cid=CID, size=1, rows=1, schema={}, source=author.author_id, seq=seq),
              parents, dt)


def checkpoint(author: Identity, parents: list[str], dt: int) -> Tx:
    return tx(author, "checkpoint", checkpoint_payload(cid=CID, size=1, step=dt, samples=1, base=[], data=[],
                                                       metrics={}), parents, dt)


def admit(by: Identity, member: Identity, parents: list[str], dt: int, role: str = "node") -> Tx:
    return tx(by, "admit", admit_payload(member.author_id, role), parents, dt)


def revoke(by: Identity, member: Identity, parents: list[str], dt: int, reason: str = "lied") -> Tx:
    return tx(by, "revoke", revoke_payload(member.author_id, reason), parents, dt)


def code(tangle: Tangle, t: Tx) -> str:
    result = tangle.insert(t)
    return result.error.code if result.error else result.status


def test_a_sensor_admitted_later_publishes_data_from_there_on_and_nothing_else(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        assert code(t, data(SENSOR, [GENESIS.id], 1)) == "not-admitted"
        a = admit(FOUNDER, SENSOR, [GENESIS.id], 2, role="sensor")
        assert code(t, a) == "inserted"
        assert code(t, data(SENSOR, [a.id], 3)) == "inserted"
        # causal: a transaction whose past does not hold the admit is still not admitted
        assert code(t, data(SENSOR, [GENESIS.id], 4, seq=1)) == "not-admitted"
        assert code(t, checkpoint(SENSOR, [a.id], 5)) == "sensor-role"
        assert code(t, data(STRANGER, [a.id], 6)) == "not-admitted"
        member = t.roll().members[SENSOR.public_key]
        assert (member.role, member.since, member.revoked) == ("sensor", a.id, None)
        assert t.verify() == []


def test_a_revoked_member_is_refused_after_the_revoke_and_its_earlier_work_stays_valid(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        before = checkpoint(NODE, [GENESIS.id], 1)
        r = revoke(FOUNDER, NODE, [before.id], 2, reason="false data claims")
        concurrent = checkpoint(NODE, [GENESIS.id], 3)  # approves only what came before the revoke
        after = checkpoint(NODE, [r.id], 4)
        assert [code(t, x) for x in (before, r, concurrent)] == ["inserted"] * 3
        result = t.insert(after)
        assert result.error.code == "revoked" and "false data claims" in result.error.reason
        assert t.verify() == []  # the earlier checkpoint (and the concurrent one) still verify
        member = t.roll().members[NODE.public_key]
        assert (member.revoked, member.reason) == (r.id, "false data claims")
        # a later admit does not undo a revocation: it is final for that author id
        assert code(t, admit(FOUNDER, NODE, [r.id, concurrent.id], 5)) == "inserted"
        assert code(t, checkpoint(NODE, [t.tips()[0]], 6)) == "revoked"


def test_only_the_founder_or_a_quorum_of_stewards_change_membership(tmp_path):
    rules = Rules(founder=FOUNDER.public_key, admission=frozenset({FOUNDER.public_key}),
                  stewards=frozenset({STEWARD1.public_key, STEWARD2.public_key}), quorum=2)
    with open_tangle(tmp_path / "t.db", rules) as t:
        assert code(t, admit(STRANGER, NODE, [GENESIS.id], 1)) == "not-admitted"  # not even a member
        vote1 = admit(STEWARD1, NODE, [GENESIS.id], 2)
        assert code(t, vote1) == "inserted"
        assert code(t, data(NODE, [vote1.id], 3)) == "not-admitted"  # one vote of two
        vote2 = admit(STEWARD2, NODE, [vote1.id], 4)
        assert code(t, vote2) == "inserted"
        assert code(t, data(NODE, [vote2.id], 5)) == "inserted"
        assert code(t, admit(NODE, SENSOR, [vote2.id], 6)) == "not-steward"
        assert code(t, revoke(STEWARD1, FOUNDER, [vote2.id], 7)) == "bad-payload"
        assert t.roll().members[NODE.public_key].since == vote2.id
        assert t.verify() == []


def test_an_open_swarm_needs_no_admit_and_can_still_revoke(tmp_path):
    with open_tangle(tmp_path / "t.db", Rules(founder=FOUNDER.public_key)) as t:
        assert code(t, data(STRANGER, [GENESIS.id], 1)) == "inserted"
        assert code(t, admit(FOUNDER, NODE, [GENESIS.id], 2)) == "open-swarm"
        r = revoke(FOUNDER, STRANGER, [GENESIS.id], 3, reason="spam")
        assert code(t, r) == "inserted"
        assert code(t, data(STRANGER, [r.id], 4, seq=1)) == "revoked"


def test_every_arrival_order_gives_the_same_ledger(tmp_path):
    a = admit(FOUNDER, SENSOR, [GENESIS.id], 1, role="sensor")
    d = data(SENSOR, [a.id], 2)
    r = revoke(FOUNDER, SENSOR, [d.id], 3)
    late = data(SENSOR, [r.id], 4, seq=1)
    c = checkpoint(NODE, [d.id], 5)
    txs = [a, d, r, late, c]
    results = []
    for n, order in enumerate((txs, txs[::-1], [c, late, r, d, a])):
        with open_tangle(tmp_path / f"{n}.db") as t:
            for x in order:
                t.insert(x)
            results.append((sorted(t.order()), t.rejections.get("revoked", 0), t.verify()))
    assert results[0] == results[1] == results[2]
    assert late.id not in results[0][0] and results[0][1] == 1 and results[0][2] == []


def test_a_snapshot_carries_the_views_of_its_frontier(tmp_path):
    with open_tangle(tmp_path / "a.db") as t:
        r = revoke(FOUNDER, NODE, [GENESIS.id], 1)
        old = checkpoint(FOUNDER, [r.id], 2)
        new = checkpoint(FOUNDER, [old.id], 3)
        for x in (r, old, new):
            assert code(t, x) == "inserted"
        t.prune(NOW + 10**6, window_ms=0, keep_per_author=1)
        assert t.is_pruned(old.id)
        snapshot = t.export_snapshot()
    with open_tangle(tmp_path / "b.db") as b:
        b.import_snapshot(snapshot)
        assert b.verify() == [] and b.is_pruned(old.id)
        # the revoke is in the pruned entry's view: the revoked member cannot build on it
        assert code(b, checkpoint(NODE, [old.id], 4)) == "revoked"


def test_roll_listing_puts_the_founder_first():
    roll = Roll.of(Rules(founder=FOUNDER.public_key, admission=frozenset({NODE.public_key})), [])
    assert [m.author for m in roll.listing()] == [FOUNDER.author_id, NODE.author_id]


@pytest.mark.parametrize("payload", [{"member": "z6Mk", "role": "node"}, {"member": NODE.author_id, "role": "root"},
                                     {"member": NODE.author_id}])
def test_malformed_admits_are_refused(tmp_path, payload):
    with mock.patch("learnae.ledger.tx.check_payload"):
        bad = tx(FOUNDER, "admit", payload, [GENESIS.id], 1)
    with open_tangle(tmp_path / "t.db") as t:
        assert code(t, bad) == "bad-payload"


def test_a_ledger_made_before_membership_opens_read_only_and_migrates(tmp_path):
    path = tmp_path / "old.db"
    with open_tangle(path) as t:
        first = checkpoint(NODE, [GENESIS.id], 1)
        assert code(t, first) == "inserted"
    with sqlite3.connect(path) as db:  # the schema of the versions before views
        db.executescript("ALTER TABLE tx DROP COLUMN view; ALTER TABLE pruned DROP COLUMN view; DROP TABLE view;")
    with Tangle(path, read_only=True, rules=CLOSED) as old:
        assert old.verify() == [] and old.roll().members[NODE.public_key].since is None
    with Tangle(path, rules=CLOSED) as t:
        r = revoke(FOUNDER, NODE, [first.id], 2)
        assert code(t, r) == "inserted" and code(t, checkpoint(NODE, [r.id], 3)) == "revoked"
        assert t.verify() == []


def test_a_member_admitted_a_moment_ago_is_given_tips_that_admit_it(tmp_path):
    with open_tangle(tmp_path / "t.db") as t:
        a = admit(FOUNDER, SENSOR, [GENESIS.id], 1, role="sensor")
        before = [checkpoint(NODE, [GENESIS.id], 2 + i) for i in range(2)]  # tips from before the admit
        for x in (a, *before):
            assert code(t, x) == "inserted"
        assert t.tips_for(SENSOR.public_key) == [a.id]  # only the admit lets it publish yet
        assert t.tips_for(STRANGER.public_key) == []
        payload = data_payload(cid=CID, size=1, rows=1, schema={}, source="s", seq=0)
        with mock.patch.object(t, "select_tips", return_value=sorted(x.id for x in before)):
            made = t.append(SENSOR, "data", payload)  # the walk's two tips do not admit it
        assert made.parents == (a.id,)
        assert t.verify() == []
        r = revoke(FOUNDER, SENSOR, [made.id], made.time - NOW)
        assert code(t, r) == "inserted"
        assert t.tips_for(SENSOR.public_key) == []  # not the tips from before the revoke either
        with mock.patch.object(t, "select_tips", return_value=sorted(x.id for x in before)), \
                pytest.raises(TxRejected) as info:
            t.append(SENSOR, "data", {**payload, "seq": 1})
        assert info.value.code == "not-admitted"  # refused on those tips, not moved to other ones
