"""Transactions: wire format, ids, proof-of-work, and one test per rejection code."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import libipld
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from learnae.content import parse_cid, to_v1
from learnae.errors import InvalidCID, TxRejected
from learnae.identity import Identity
from learnae.ledger.tx import (
    KINDS,
    MAX_FUTURE_MS,
    check_payload,
    checkpoint_payload,
    data_payload,
    decode_tx,
    make_tx,
    snapshot_payload,
    tx_id,
    tx_link,
    validate_tx,
)

ALICE = Identity(Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
BOB = Identity(Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
NOW = 1_700_000_000_000
POW = 4
CID_A = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
CID_B = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
GENESIS = make_tx(ALICE, kind="genesis", payload={"name": "test"}, parents=[], swarm=None, pow_bits=POW, time_ms=NOW)
DATA = make_tx(
    BOB, kind="data", parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=POW, time_ms=NOW + 1,
    payload=data_payload(cid=CID_A, size=10, rows=2, schema={"x": [3], "dtype": "float32"}, source="probe-1", seq=0),
)
CHECKPOINT = make_tx(
    ALICE, kind="checkpoint", parents=[DATA.id, GENESIS.id], swarm=GENESIS.id, pow_bits=POW, time_ms=NOW + 2,
    payload=checkpoint_payload(
        cid=CID_B, size=1000, step=100, samples=6400, base=[], data=[DATA.id],
        metrics={"loss": 0.5, "accuracy": 0.75},
    ),
)
RULES = {"swarm": GENESIS.id, "pow_bits": POW, "max_bytes": 4096, "now_ms": NOW}


def check(tx, **overrides):
    validate_tx(tx, **{**RULES, **overrides})


@contextmanager
def rejected(code: str):
    """The block raises TxRejected with ``code``."""
    with pytest.raises(TxRejected) as info:
        yield
    assert info.value.code == code, info.value.reason


def forge(identity=ALICE, signer=None, pow_bits=POW, sign=True, **fields) -> bytes:
    """Encode a hand-made transaction map with libipld: fields default to DATA's with
    ``identity`` as author, ``None`` drops a field; the nonce is mined (unless given) and the
    map signed by ``signer`` (default: the author) unless ``sign`` is false."""
    base = libipld.decode_dag_cbor(DATA.raw)
    base.update(author=identity.public_key)
    base.update(fields)
    base = {k: v for k, v in base.items() if v is not None}
    base.pop("sig")
    if "nonce" not in fields:
        base["nonce"] = 0
        while hashlib.sha256(libipld.encode_dag_cbor(base)).digest()[0] >> (8 - pow_bits):
            base["nonce"] += 1
    if sign:
        base["sig"] = fields["sig"] if "sig" in fields else (signer or identity).sign(libipld.encode_dag_cbor(base))
    return libipld.encode_dag_cbor(base)


# Format ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tx", [GENESIS, DATA, CHECKPOINT], ids=["genesis", "data", "checkpoint"])
def test_round_trip(tx):
    again = decode_tx(tx.raw)
    assert again == tx
    assert (again.raw, again.kind, again.author, again.parents, again.time, again.payload, again.nonce, again.sig,
            again.swarm) == (tx.raw, tx.kind, tx.author, tx.parents, tx.time, tx.payload, tx.nonce, tx.sig, tx.swarm)
    check(tx)
    # the hand-written envelope is byte-for-byte what libipld writes for the same map
    assert libipld.encode_dag_cbor(libipld.decode_dag_cbor(tx.raw)) == tx.raw


def test_fields_and_links():
    obj = libipld.decode_dag_cbor(CHECKPOINT.raw)
    assert obj["v"] == 1 and obj["kind"] == "checkpoint" and obj["author"] == ALICE.public_key
    assert obj["swarm"] == tx_link(GENESIS.id)
    assert obj["parents"] == sorted([tx_link(GENESIS.id), tx_link(DATA.id)])
    assert b"\xd8\x2a\x58\x25\x00" + tx_link(GENESIS.id) in CHECKPOINT.raw  # parents and swarm are tag-42 links
    assert CHECKPOINT.links("data") == [DATA.id] and CHECKPOINT.links("base") == []
    assert "swarm" not in libipld.decode_dag_cbor(GENESIS.raw) and GENESIS.parents == ()


def test_id_is_cidv1_dag_cbor_sha256_base32():
    expected = CID("base32", 1, "dag-cbor", multihash.digest(DATA.raw, "sha2-256"))
    assert DATA.id == str(expected)
    assert DATA.id.startswith("bafyrei")
    assert tx_id(tx_link(DATA.id)) == DATA.id


def test_id_is_stable():
    again = make_tx(ALICE, kind="genesis", payload={"name": "test"}, parents=[], swarm=None, pow_bits=POW, time_ms=NOW)
    assert (again.raw, again.id) == (GENESIS.raw, GENESIS.id)
    # A golden vector: changing it changes every transaction id in every swarm.
    assert GENESIS.id == "bafyreidh3pxkv7dofm3j6b3yxakuhzbgelry6epvhzcnu43kogw5tzrk3q"


def test_unsigned_encoding_is_the_map_without_sig():
    obj = libipld.decode_dag_cbor(CHECKPOINT.raw)
    del obj["sig"]
    assert CHECKPOINT.unsigned == libipld.encode_dag_cbor(obj)


@pytest.mark.parametrize("bad", [None, 7, "", "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD", CID_A, DATA.id.upper(), DATA.id + "a"])
def test_tx_link_rejects_non_tx_ids(bad):
    with pytest.raises(InvalidCID):
        tx_link(bad)


# Proof-of-work ---------------------------------------------------------------------------------
def plain_tx(author, **kw):
    """A data transaction approving the genesis (``pow_bits`` and ``time_ms`` given)."""
    return make_tx(author, kind="data", payload=DATA.payload, parents=[GENESIS.id], swarm=GENESIS.id, **kw)


def leading_zero_bits(digest: bytes) -> int:
    return 256 - int.from_bytes(digest, "big").bit_length()


def test_pow_is_mined_to_the_first_nonce_that_works():
    tx = plain_tx(ALICE, pow_bits=10, time_ms=NOW)
    assert leading_zero_bits(hashlib.sha256(tx.unsigned).digest()) >= 10
    check(tx, pow_bits=10)
    obj = libipld.decode_dag_cbor(tx.raw)
    del obj["sig"]
    for nonce in range(tx.nonce):
        obj["nonce"] = nonce
        assert leading_zero_bits(hashlib.sha256(libipld.encode_dag_cbor(obj)).digest()) < 10


def test_low_pow():
    tx = plain_tx(ALICE, pow_bits=0, time_ms=NOW)
    bits = leading_zero_bits(hashlib.sha256(tx.unsigned).digest())
    check(tx, pow_bits=bits)
    with rejected("low-pow"):
        check(tx, pow_bits=bits + 1)


# One test per rejection code --------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"", b"\xff", b"not cbor at all", libipld.encode_dag_cbor([1, 2]),
                                 libipld.encode_dag_cbor("text"), DATA.raw + b"\x00", DATA.raw[:-1]])
def test_undecodable(raw):
    with rejected("undecodable"):
        decode_tx(raw)


def test_not_canonical_non_minimal_integer():
    tx = plain_tx(ALICE, pow_bits=0, time_ms=NOW)
    assert tx.nonce == 0
    raw = tx.raw.replace(b"enonce\x00", b"enonce\x18\x00")
    assert libipld.decode_dag_cbor(raw) == libipld.decode_dag_cbor(tx.raw)
    with rejected("not-canonical"):
        decode_tx(raw)


def test_not_canonical_bytes_where_a_link_belongs():
    link = tx_link(GENESIS.id)
    raw = DATA.raw.replace(b"\x81\xd8\x2a\x58\x25\x00" + link, b"\x81\x58\x24" + link)
    assert raw != DATA.raw
    with rejected("not-canonical"):
        decode_tx(raw)


@pytest.mark.parametrize("v", [2, 0, "1", True, None])
def test_bad_version(v):
    with rejected("bad-version"):
        decode_tx(forge(v=v))


@pytest.mark.parametrize("fields", [{"extra": 1}, {"nonce": None}, {"swarm": None}, {"payload": None}],
                         ids=["extra", "no-nonce", "no-swarm", "no-payload"])
def test_bad_fields(fields):
    with rejected("bad-fields"):
        decode_tx(forge(**fields))


def test_bad_fields_genesis_with_swarm():
    with rejected("bad-fields"):
        decode_tx(forge(kind="genesis", parents=[]))
    with rejected("bad-fields"):
        decode_tx(forge(sign=False))  # no sig


@pytest.mark.parametrize("fields", [
    {"time": "now"}, {"time": -1}, {"time": 1.5}, {"nonce": True}, {"kind": 3}, {"author": b"\x01" * 31},
    {"sig": b"\x00" * 63}, {"payload": [1]}, {"parents": tx_link(GENESIS.id)}, {"swarm": "bafy"},
], ids=lambda f: next(iter(f)))
def test_bad_type(fields):
    with rejected("bad-type"):
        decode_tx(forge(**fields))


def test_bad_signature():
    sig_at = DATA.raw.index(b"csigX@") + 6
    flipped = bytearray(DATA.raw)
    flipped[sig_at] ^= 1
    with rejected("bad-signature"):
        check(decode_tx(bytes(flipped)))
    check(decode_tx(forge()))
    with rejected("bad-signature"):  # signed by someone other than the author
        check(decode_tx(forge(signer=BOB)))


def test_too_large():
    with rejected("too-large"):
        check(DATA, max_bytes=len(DATA.raw) - 1)
    check(DATA, max_bytes=len(DATA.raw))


@pytest.mark.parametrize("parents", [
    lambda: [],
    lambda: [tx_link(GENESIS.id)] * 2,
    lambda: sorted([tx_link(GENESIS.id), tx_link(DATA.id)], reverse=True),
    lambda: sorted([tx_link(t.id) for t in (GENESIS, DATA, CHECKPOINT)]),
], ids=["none", "duplicate", "unsorted", "three"])
def test_bad_parents(parents):
    with rejected("bad-parents"):
        check(decode_tx(forge(parents=parents())))


def test_bad_parents_not_tx_cids():
    raw_link = CID("base32", 1, "raw", multihash.digest(b"x", "sha2-256"))
    with rejected("bad-parents"):
        decode_tx(forge(parents=[bytes(raw_link)]))
    with rejected("bad-parents"):
        check(decode_tx(forge(kind="genesis", swarm=None)), swarm=None)  # a genesis has no parents


def test_future_time():
    check(DATA, now_ms=DATA.time - MAX_FUTURE_MS)
    with rejected("future-time"):
        check(DATA, now_ms=DATA.time - MAX_FUTURE_MS - 1)


def test_before_parent():
    check(DATA, parent_times={GENESIS.id: DATA.time})
    with rejected("before-parent"):
        check(DATA, parent_times={GENESIS.id: DATA.time + 1})


def test_wrong_swarm():
    with rejected("wrong-swarm"):
        check(DATA, swarm=DATA.id)
    with rejected("wrong-swarm"):  # another swarm's genesis
        check(GENESIS, swarm=DATA.id)
    check(GENESIS)
    check(DATA, swarm=None)


def test_not_admitted():
    check(DATA, admitted=lambda key: key == BOB.public_key)
    with rejected("not-admitted"):
        check(DATA, admitted=lambda key: key == ALICE.public_key)
    check(GENESIS, admitted=lambda key: False)  # the genesis defines admission


@pytest.mark.parametrize("payload", [
    {"cid": CID_A},
    {**DATA.payload, "extra": 1},
    {**DATA.payload, "seq": -1},
    {**DATA.payload, "rows": 2.0},
    {**DATA.payload, "cid": "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"},
    {**DATA.payload, "cid": CID_A.upper()},
    {**DATA.payload, "source": 7},
    {**DATA.payload, "schema": "x"},
], ids=["missing", "extra", "negative", "float", "cidv0", "not-base32-lower", "source", "schema"])
def test_bad_payload_data(payload):
    with rejected("bad-payload"):
        check(decode_tx(forge(payload=payload)))


@pytest.mark.parametrize("change", [
    {"metrics": {"loss": 1}}, {"metrics": {"loss": "low"}}, {"base": [CID_A]}, {"data": tx_link(DATA.id)},
    {"step": None},
], ids=["int-metric", "text-metric", "base-not-links", "data-not-list", "step-missing"])
def test_bad_payload_checkpoint(change):
    payload = {k: v for k, v in {**CHECKPOINT.payload, **change}.items() if v is not None}
    with rejected("bad-payload"):
        check(decode_tx(forge(kind="checkpoint", payload=payload)))
    with rejected("bad-payload"):
        make_tx(ALICE, kind="checkpoint", payload=payload, parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=0)


def test_a_checkpoint_may_claim_a_replayable_segment():
    payload = checkpoint_payload(cid=CID_B, size=1000, step=110, samples=320, base=[CHECKPOINT.id],
                                 data=[DATA.id], metrics={}, segment={"seed": 2**63 - 1, "steps": 10})
    tx = make_tx(ALICE, kind="checkpoint", payload=payload, parents=[CHECKPOINT.id], swarm=GENESIS.id,
                 pow_bits=POW, time_ms=NOW + 3)
    assert decode_tx(tx.raw) == tx and tx.payload["segment"] == {"seed": 2**63 - 1, "steps": 10}
    check(tx)


@pytest.mark.parametrize("segment, base, data", [
    ({"seed": 2**63, "steps": 10}, True, True), ({"seed": 1, "steps": 0}, True, True),
    ({"seed": 1, "steps": 100_001}, True, True), ({"seed": 1}, True, True),
    ({"seed": 1, "steps": 1, "lr": 1}, True, True), ({"seed": -1, "steps": 1}, True, True),
    ([1, 2], True, True), ({"seed": 1, "steps": 1}, False, True), ({"seed": 1, "steps": 1}, True, False),
], ids=["seed-too-big", "no-steps", "too-many-steps", "steps-missing", "extra-key", "negative-seed",
        "not-a-map", "no-base", "no-data"])
def test_bad_segments(segment, base, data):
    """A segment names its seed and steps, starts from exactly one base, trains on some data."""
    payload = {**CHECKPOINT.payload, "base": [tx_link(CHECKPOINT.id)] if base else [],
               "data": [tx_link(DATA.id)] if data else [], "segment": segment}
    with rejected("bad-payload"):
        check(decode_tx(forge(kind="checkpoint", payload=payload)))


def test_snapshot_transactions():
    """A ledger snapshot is announced by a ``snapshot`` transaction: content CID, size, count, top."""
    payload = snapshot_payload(cid=CID_B, size=123_456, txs=900, top=4000)
    tx = make_tx(BOB, kind="snapshot", payload=payload, parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=POW,
                 time_ms=NOW + 3)
    assert decode_tx(tx.raw) == tx and tx.payload == {"cid": CID_B, "size": 123_456, "txs": 900, "top": 4000}
    check(tx)


@pytest.mark.parametrize("change", [
    {"cid": "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"}, {"size": -1}, {"txs": 1.0}, {"top": None},
    {"extra": 1}, {"cid": None},
], ids=["cidv0", "negative-size", "float-txs", "top-missing", "extra-key", "cid-missing"])
def test_bad_payload_snapshot(change):
    payload = {k: v for k, v in {**snapshot_payload(cid=CID_B, size=1, txs=1, top=1), **change}.items()
               if v is not None}
    with rejected("bad-payload"):
        check(decode_tx(forge(kind="snapshot", payload=payload)))
    with rejected("bad-payload"):
        make_tx(ALICE, kind="snapshot", payload=payload, parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=0)


def test_genesis_payloads_are_any_map():
    check_payload("genesis", {"name": "x", "pow_bits": 8})
    with rejected("bad-payload"):
        check_payload("genesis", [1])


@pytest.mark.parametrize("kind", ["evict", "Admit", "x", "Data", ""])
def test_unknown_kind(kind):
    """A kind this version does not know is refused whatever its payload: otherwise anyone could
    store any map of up to max_bytes in every peer's permanent ledger."""
    assert KINDS == {"genesis", "checkpoint", "data", "snapshot", "attestation", "admit", "revoke"}
    tx = decode_tx(forge(kind=kind, payload={"anything": [1, "two", b"3"]}))
    check(decode_tx(forge(kind="data")))  # the same transaction with a known kind passes
    with rejected("unknown-kind"):
        check(tx)
    with rejected("unknown-kind"):
        check_payload(kind, {})
    with rejected("unknown-kind"):
        make_tx(ALICE, kind=kind, payload={}, parents=[GENESIS.id], swarm=GENESIS.id, pow_bits=0)


@pytest.mark.parametrize("cid", [CID_A, CID_B, "bafybeifx7yeb55armcsxwwitkymga5xf53dxiarykms3ygqic223w5sk3m",
                                 "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD", CID_A + "a", CID_A.upper(),
                                 "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA", "", "b"])
def test_content_cid_rule_matches_content_module(cid):
    try:
        canonical = to_v1(parse_cid(cid)) == cid
    except InvalidCID:
        canonical = False
    payload = {**DATA.payload, "cid": cid}
    if canonical:
        check_payload("data", payload)
    else:
        with rejected("bad-payload"):
            check_payload("data", payload)


# Any corruption is caught ---------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(CHECKPOINT.raw) - 1), xor=st.integers(1, 255))
def test_any_flipped_byte_is_caught(position, xor):
    raw = bytearray(CHECKPOINT.raw)
    raw[position] ^= xor
    with pytest.raises(TxRejected):
        check(decode_tx(bytes(raw)))


def test_cid_like_key_and_signature_stay_byte_strings():
    """libipld would encode these bytes as links; the envelope keeps them byte strings."""

    def cid_like(b: bytes) -> bool:
        return libipld.encode_dag_cbor(b)[:2] == b"\xd8\x2a"

    author = next(i for i in (Identity(Ed25519PrivateKey.from_private_bytes(n.to_bytes(32, "big")))
                              for n in range(1, 100_000)) if cid_like(i.public_key))
    tx = next(t for t in (plain_tx(author, pow_bits=0, time_ms=NOW + n) for n in range(100_000))
              if cid_like(t.sig))
    assert b"fauthorX\x20" + author.public_key in tx.raw and b"csigX\x40" + tx.sig in tx.raw
    assert decode_tx(tx.raw) == tx
    check(tx, pow_bits=0)
    as_link = tx.raw.replace(b"fauthorX\x20", b"fauthor\xd8\x2a\x58\x21\x00")
    assert libipld.decode_dag_cbor(as_link)["author"] == author.public_key
    with rejected("not-canonical"):
        decode_tx(as_link)
