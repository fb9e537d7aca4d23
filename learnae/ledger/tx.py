"""Tangle transactions: the DAG-CBOR wire format, proof-of-work, signatures and validation.

A transaction is a DAG-CBOR map (https://ipld.io/specs/codecs/dag-cbor/spec/):

===========  ==========================================================================
``v``        1
``swarm``    link (tag 42) to the genesis transaction; absent on the genesis itself
``kind``     text: one of :data:`KINDS` (``genesis``, ``checkpoint``, ``data``, ``snapshot``,
             ``attestation``, ``admit``, ``revoke``); others are refused
``author``   bytes: the author's 32-byte Ed25519 public key
``parents``  list of links to 1 or 2 distinct earlier transactions, sorted by their binary
             CIDs (1 only while the tangle has a single tip); empty on the genesis
``time``     unsigned int: milliseconds since the Unix epoch, by the author's clock
``payload``  map, per kind (:func:`check_payload`)
``nonce``    unsigned int: proof-of-work
``sig``      bytes: 64-byte Ed25519 signature over the *unsigned encoding*, the DAG-CBOR
             map of every other field
===========  ==========================================================================

Proof-of-work: sha2-256 of the unsigned encoding has at least ``pow_bits`` leading zero bits
(priced spam, as in IOTA). A transaction's id is its CIDv1 (dag-cbor, sha2-256) over the signed
encoding, shown in base32 (``"bafyrei..."``).

Kinds: a node accepts only the kinds its version knows, each with its payload rules
(:func:`check_payload`); any other kind is refused with code ``unknown-kind``, so nobody can
store arbitrary payloads in every peer's permanent ledger under a made-up kind. A new kind is
added to :data:`KINDS` together with its payload rules, in a version the whole swarm runs before
anyone issues it: a node of an older version refuses the new kind (and whatever approves such a
transaction stays pending there). ``snapshot`` (a ledger snapshot file on IPFS, see
:meth:`learnae.ledger.tangle.Tangle.export_snapshot`), ``attestation`` (a verifier's verdict on a
peer's checkpoint, which it approves), ``admit`` and ``revoke`` (membership,
:mod:`learnae.ledger.members`) are such kinds: nodes of the versions before them refuse these
transactions.

The envelope is encoded here rather than by ``libipld``: ``libipld.encode_dag_cbor`` (3.x) writes
*any* Python ``bytes`` that parse as a binary CID as a link (tag 42), and about 1 in 2,500 random
32-byte keys and 1 in 1,100 random 64-byte signatures do. Links and byte strings are therefore
written by hand, and only the payload goes through ``libipld`` (payload links are binary CIDs in
``bytes``, as ``libipld`` decodes them; payload byte strings meet the same ambiguity). Decoding is by ``libipld``; a transaction is accepted only if
re-encoding its decoded fields gives back exactly its bytes (canonical form), so every accepted
transaction has one encoding and one id.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import libipld

from learnae.errors import BadSignature, IdentityError, InvalidCID, TxRejected
from learnae.identity import Identity, parse_author_id, verify

VERSION = 1
MAX_FUTURE_MS = 10 * 60 * 1000
"""A transaction may be at most this far ahead of the receiver's clock (ms)."""
TX_CID_PREFIX = b"\x01\x71\x12\x20"
"""Binary CIDv1 prefix of a transaction id: version 1, dag-cbor, sha2-256, 32 bytes."""

_FIELDS = frozenset({"v", "kind", "author", "parents", "time", "payload", "nonce", "sig"})
_SIG_ENTRY = b"\x63sig\x58\x40"  # key "sig", then the head of a 64-byte byte string
_V_ENTRY = b"\x61v\x01"  # key "v", value 1


# Tx ids ----------------------------------------------------------------------------------------
def tx_id(link: bytes) -> str:
    """The base32 CIDv1 string (``"bafyrei..."``) of a binary transaction CID."""
    return libipld.encode_multibase("b", link)


def tx_link(txid: str) -> bytes:
    """The binary CID (36 bytes) of a transaction id string.

    Raises:
        InvalidCID: ``txid`` is not a base32 CIDv1 with dag-cbor codec and sha2-256 digest.
    """
    try:
        base, link = libipld.decode_multibase(txid)
    except (ValueError, TypeError):
        base, link = "", b""
    if base == "b" and _is_link(link) and tx_id(link) == txid:
        return link
    raise InvalidCID(f"{txid!r} is not a transaction id (base32 CIDv1, dag-cbor, sha2-256)")


def _is_link(value: Any) -> bool:
    return type(value) is bytes and len(value) == 36 and value.startswith(TX_CID_PREFIX)


def _is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


# Encoding --------------------------------------------------------------------------------------
def cbor_head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form (DAG-CBOR's canonical rule, RFC 8949 section 4.2.1).

    learnae writes its envelopes by hand with this and :func:`cbor_text` because ``libipld``
    encodes any bytes value that parses as a CID as a link (tag 42).
    """
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << 8 * size:
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError(f"{n} does not fit in 64 bits")


def cbor_text(s: str) -> bytes:
    """A CBOR text string (major type 3), UTF-8."""
    data = s.encode()
    return cbor_head(3, len(data)) + data


def _link(cid: bytes) -> bytes:
    return b"\xd8\x2a" + cbor_head(2, len(cid) + 1) + b"\x00" + cid


_KEY = {k: cbor_text(k) for k in ("kind", "time", "nonce", "swarm", "author", "parents", "payload")}


def _unsigned_parts(
    kind: str, author: bytes, parents: list[bytes], time_ms: int, payload: bytes, swarm: bytes | None
) -> tuple[bytes, bytes]:
    """The unsigned encoding split around the nonce value: ``prefix + uint(nonce) + suffix``.

    Keys are in DAG-CBOR order (shorter first, then bytewise): v, kind, time, nonce, swarm,
    author, parents, payload.
    """
    prefix = b"".join((
        cbor_head(5, 7 if swarm is None else 8), _V_ENTRY,
        _KEY["kind"], cbor_text(kind), _KEY["time"], cbor_head(0, time_ms), _KEY["nonce"],
    ))
    suffix = b"".join((
        b"" if swarm is None else _KEY["swarm"] + _link(swarm),
        _KEY["author"], cbor_head(2, len(author)), author,
        _KEY["parents"], cbor_head(4, len(parents)), *map(_link, parents),
        _KEY["payload"], payload,
    ))
    return prefix, suffix


def _signed(unsigned: bytes, sig: bytes) -> bytes:
    """Insert ``sig`` into the unsigned map: it sorts right after ``v``."""
    return bytes([unsigned[0] + 1]) + unsigned[1:4] + _SIG_ENTRY + sig + unsigned[4:]


def _pow_ok(digest: bytes, pow_bits: int) -> bool:
    return int.from_bytes(digest, "big") >> (256 - pow_bits) == 0


# The transaction -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Tx:
    """A decoded, canonically encoded transaction. Build with :func:`make_tx` or :func:`decode_tx`.

    ``parents`` are transaction ids in wire order; ``swarm`` is the genesis id (``None`` on the
    genesis); ``payload`` is the decoded map (links inside it are binary CIDs, see
    :func:`tx_id`). Two ``Tx`` are equal when their ids are.
    """

    id: str
    raw: bytes
    kind: str
    author: bytes
    parents: tuple[str, ...]
    time: int
    payload: dict
    nonce: int
    sig: bytes
    swarm: str | None
    _links: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)

    @property
    def unsigned(self) -> bytes:
        """The encoding that ``sig`` signs and proof-of-work hashes: ``raw`` without ``sig``."""
        return bytes([self.raw[0] - 1]) + self.raw[1:4] + self.raw[4 + len(_SIG_ENTRY) + 64 :]

    def links(self, key: str) -> list[str]:
        """Payload ``key`` (a list of links, e.g. a checkpoint's ``base``/``data``) as tx ids.

        Worked out once per key (a node reads a peer checkpoint's links whenever it sees it).
        """
        found = self._links.get(key)
        if found is None:
            found = self._links[key] = tuple(tx_id(link) for link in self.payload.get(key, ()))
        return list(found)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tx) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def make_tx(
    identity: Identity,
    *,
    kind: str,
    payload: dict,
    parents: Iterable[str],
    swarm: str | None,
    pow_bits: int,
    time_ms: int | None = None,
) -> Tx:
    """Build, mine and sign a transaction.

    Args:
        identity: the author's key.
        kind: one of :data:`KINDS`: ``"genesis"``, ``"checkpoint"``, ``"data"``, ``"snapshot"``
            or ``"attestation"``.
        payload: the kind's map (build with :func:`checkpoint_payload`, :func:`data_payload`,
            :func:`snapshot_payload` or :func:`attestation_payload`).
        parents: ids of the approved transactions (any order; sorted here); empty for a genesis.
        swarm: the genesis id; ``None`` for a genesis.
        pow_bits: leading zero bits the proof-of-work needs (0 to 256); the expected work is
            ``2**pow_bits`` sha2-256 hashes of the unsigned encoding.
        time_ms: ms since the epoch; default now. Must not be before a parent's time.

    Raises:
        TxRejected: ``unknown-kind`` if ``kind`` is not in :data:`KINDS`, ``bad-payload`` if
            ``payload`` does not fit it.
        InvalidCID: a parent or ``swarm`` is not a transaction id.
    """
    check_payload(kind, payload)
    links = sorted(tx_link(p) for p in parents)
    now = int(time.time() * 1000) if time_ms is None else time_ms
    prefix, suffix = _unsigned_parts(
        kind, identity.public_key, links, now, libipld.encode_dag_cbor(payload),
        None if swarm is None else tx_link(swarm),
    )
    state = hashlib.sha256(prefix)
    nonce = 0
    while True:
        tail = cbor_head(0, nonce) + suffix
        h = state.copy()
        h.update(tail)
        if _pow_ok(h.digest(), pow_bits):
            break
        nonce += 1
    unsigned = prefix + tail
    return decode_tx(_signed(unsigned, identity.sign(unsigned)))


def decode_tx(raw: bytes) -> Tx:
    """Decode a transaction and check its form: fields, types and canonical encoding.

    Signature, proof-of-work and context are :func:`validate_tx`'s job.

    Raises:
        TxRejected: with code ``undecodable`` (not DAG-CBOR, or not a map), ``bad-version``,
            ``bad-fields`` (missing or extra fields), ``bad-type``, ``bad-parents`` (a parent is
            not a transaction CID) or ``not-canonical`` (the bytes are not the one canonical
            encoding of their content, e.g. a non-minimal integer or bytes where a link belongs).
    """
    raw = bytes(raw)
    try:
        obj = libipld.decode_dag_cbor(raw)
    except (ValueError, RecursionError) as exc:
        raise TxRejected(f"transaction is not DAG-CBOR: {exc}", code="undecodable") from None
    if not isinstance(obj, dict):
        raise TxRejected("transaction is not a DAG-CBOR map", code="undecodable")
    if obj.get("v") != VERSION or type(obj.get("v")) is not int:
        raise TxRejected(f"transaction version {obj.get('v')!r} is not {VERSION}", code="bad-version")
    expected = _FIELDS if obj.get("kind") == "genesis" else _FIELDS | {"swarm"}
    if obj.keys() != expected:
        missing, extra = sorted(expected - obj.keys()), sorted(obj.keys() - expected)
        raise TxRejected(f"transaction fields: missing {missing}, unexpected {extra}", code="bad-fields")
    kind, author, parents, time_ms = obj["kind"], obj["author"], obj["parents"], obj["time"]
    payload, nonce, sig, swarm = obj["payload"], obj["nonce"], obj["sig"], obj.get("swarm")
    if not (
        type(kind) is str
        and type(author) is bytes and len(author) == 32
        and type(parents) is list
        and _is_uint(time_ms) and _is_uint(nonce)
        and type(payload) is dict
        and type(sig) is bytes and len(sig) == 64
        and (swarm is None or _is_link(swarm))
    ):
        raise TxRejected(
            "transaction field types: kind text, author 32 bytes, parents list, time and nonce "
            "unsigned ints, payload map, sig 64 bytes, swarm a transaction link",
            code="bad-type",
        )
    if not all(_is_link(p) for p in parents):
        raise TxRejected("a parent is not a transaction CID (dag-cbor, sha2-256)", code="bad-parents")
    prefix, suffix = _unsigned_parts(kind, author, parents, time_ms, libipld.encode_dag_cbor(payload), swarm)
    if _signed(prefix + cbor_head(0, nonce) + suffix, sig) != raw:
        raise TxRejected("transaction bytes are not in canonical DAG-CBOR form", code="not-canonical")
    return Tx(
        id=tx_id(TX_CID_PREFIX + hashlib.sha256(raw).digest()),
        raw=raw,
        kind=kind,
        author=author,
        parents=tuple(tx_id(p) for p in parents),
        time=time_ms,
        payload=payload,
        nonce=nonce,
        sig=sig,
        swarm=None if swarm is None else tx_id(swarm),
    )


# Payloads --------------------------------------------------------------------------------------
def _content_cid(value: Any) -> bool:
    """Is ``value`` a CIDv1 in canonical base32, i.e. ``content.to_v1(value) == value``?

    Checked with ``libipld`` (about 1 us) rather than ``multiformats`` (about 500 us).
    """
    try:
        return type(value) is str and libipld.encode_cid(libipld.decode_multibase(value)[1]) == value
    except ValueError:
        return False


def _links(value: Any) -> bool:
    return type(value) is list and all(_is_link(v) for v in value)


def _metrics(value: Any) -> bool:
    return type(value) is dict and all(type(v) is float and math.isfinite(v) for v in value.values())


ATTEST_METHODS = ("holdout", "replay", "claims")
"""How an attestation's verifier judged the checkpoint (its payload ``method``)."""
DISPUTE_CODES = ("holdout-worse", "holdout-no-gain", "samples-inconsistent", "replay-mismatch",
                 "data-unreplayable")
"""Why a ``dispute`` attestation disputes (its payload ``code``); an ``agree`` has code ``ok``."""
MAX_FIGURES = 16
"""Most entries in an attestation's ``figures``."""
MAX_FIGURE_KEY = 32
"""Longest key of an attestation's ``figures``, in characters."""


def _figures(value: Any) -> bool:
    return (_metrics(value) and len(value) <= MAX_FIGURES
            and all(type(k) is str and len(k) <= MAX_FIGURE_KEY for k in value))


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: type(v) is str and v in choices


MAX_SEGMENT_STEPS = 100_000
"""Most batches a checkpoint's replayable ``segment`` may claim (what a verifier replays)."""


ROLES = ("node", "sensor")
"""What an ``admit`` lets a member publish: ``node``, every kind; ``sensor``, data only."""
MAX_REASON = 500
"""Longest ``reason`` of a ``revoke`` (characters)."""


def _is_author_id(value: Any) -> bool:
    try:
        return type(value) is str and len(parse_author_id(value)) == 32
    except IdentityError:
        return False


def _reason(value: Any) -> bool:
    return type(value) is str and 1 <= len(value) <= MAX_REASON and value.isprintable()


def _segment(value: Any) -> bool:
    return (type(value) is dict and value.keys() == {"seed", "steps"}
            and _is_uint(value["seed"]) and value["seed"] < 2**63
            and _is_uint(value["steps"]) and 1 <= value["steps"] <= MAX_SEGMENT_STEPS)


_PAYLOADS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "checkpoint": {
        "cid": _content_cid, "size": _is_uint, "step": _is_uint, "samples": _is_uint,
        "base": _links, "data": _links, "metrics": _metrics,
    },
    "data": {
        "cid": _content_cid, "size": _is_uint, "rows": _is_uint,
        "schema": lambda v: type(v) is dict,
        "source": lambda v: type(v) in (dict, str),
        "seq": _is_uint,
    },
    "snapshot": {"cid": _content_cid, "size": _is_uint, "txs": _is_uint, "top": _is_uint},
    "attestation": {
        "checkpoint": _is_link, "method": _one_of(*ATTEST_METHODS), "verdict": _one_of("agree", "dispute"),
        "code": _one_of("ok", *DISPUTE_CODES), "figures": _figures,
    },
    "admit": {"member": _is_author_id, "role": _one_of(*ROLES)},
    "revoke": {"member": _is_author_id, "reason": _reason},
}
_OPTIONAL: dict[str, dict[str, Callable[[Any], bool]]] = {"checkpoint": {"segment": _segment}}
"""Keys a kind's payload may hold besides its own (absent, they say nothing)."""
KINDS = frozenset({"genesis", *_PAYLOADS})
"""The transaction kinds this version accepts: ``genesis``, ``checkpoint``, ``data``,
``snapshot``, ``attestation``, ``admit`` and ``revoke``."""
_PAYLOAD_RULES = {
    "cid": "a CIDv1 base32 string", "base": "a list of tx links", "data": "a list of tx links",
    "metrics": "a map of text to finite floats", "schema": "a map", "source": "a map or text",
    "checkpoint": "a tx link", "method": f"one of {', '.join(ATTEST_METHODS)}",
    "verdict": "'agree' or 'dispute'", "code": f"'ok' or one of {', '.join(DISPUTE_CODES)}",
    "figures": f"a map of at most {MAX_FIGURES} texts of at most {MAX_FIGURE_KEY} characters to finite"
               " floats",
    "segment": f"a map of 'seed' (an unsigned int below 2**63) and 'steps' (1 to {MAX_SEGMENT_STEPS})",
    "member": "an author id (z6Mk...)", "role": f"one of {', '.join(ROLES)}",
    "reason": f"text of 1 to {MAX_REASON} characters",
}


def check_payload(kind: str, payload: Any) -> None:
    """Check that ``kind`` is known (:data:`KINDS`) and that ``payload`` fits it.

    The payload must hold exactly the kind's keys, each of the right type.

    ``checkpoint``: ``cid`` (content CIDv1 base32 string), ``size`` (bytes), ``step``,
    ``samples`` (unsigned ints), ``base``, ``data`` (lists of tx links), ``metrics`` (text to
    finite float), and optionally ``segment``: the update is a replayable training segment
    (``seed``, ``steps``: :func:`learnae.verify.segment_rows`) that starts from its only
    ``base`` and trains on the rows of its ``data`` (at least one), in the order named.
    ``data``: ``cid``, ``size``, ``rows``, ``schema`` (map), ``source`` (map or
    text), ``seq`` (unsigned int). ``snapshot``: ``cid`` (content CIDv1 base32 string of the
    snapshot file on IPFS), ``size`` (its bytes), ``txs`` (transactions in it), ``top`` (the
    highest height among them), unsigned ints. ``attestation``: ``checkpoint`` (a tx link: the
    checkpoint judged), ``method`` (one of :data:`ATTEST_METHODS`), ``verdict`` (``"agree"`` or
    ``"dispute"``), ``code`` (``"ok"`` for an agree, one of :data:`DISPUTE_CODES` for a dispute),
    ``figures`` (at most :data:`MAX_FIGURES` entries, text of at most :data:`MAX_FIGURE_KEY`
    characters to finite float). ``admit``: ``member`` (the admitted author's id, ``"z6Mk..."``:
    text, since a byte string may read as a link) and ``role`` (one of :data:`ROLES`); ``revoke``: ``member`` and ``reason`` (printable text,
    1 to :data:`MAX_REASON` characters); who may sign them and what they do is
    :mod:`learnae.ledger.members`. ``genesis``: any map (the manifest is checked by the manifest
    layer).

    Raises:
        TxRejected: code ``unknown-kind`` for a kind not in :data:`KINDS`; code
            ``bad-payload``, naming the first offending key.
    """
    if kind not in KINDS:
        raise TxRejected(
            f"transaction kind {kind!r} is not one this version knows "
            f"({', '.join(sorted(KINDS))}): a node accepts a new kind only once it runs a version "
            "that defines its payload",
            code="unknown-kind",
        )
    if type(payload) is not dict:
        raise TxRejected(f"{kind} payload is not a map", code="bad-payload")
    rules = _PAYLOADS.get(kind)
    if rules is None:
        return
    optional = _OPTIONAL.get(kind, {})
    if not rules.keys() <= payload.keys() <= rules.keys() | optional.keys():
        also = f" (optionally also {sorted(optional)})" if optional else ""
        raise TxRejected(
            f"{kind} payload keys {sorted(payload)} are not {sorted(rules)}{also}", code="bad-payload"
        )
    for key, ok in (*rules.items(), *optional.items()):
        if key in payload and not ok(payload[key]):
            rule = _PAYLOAD_RULES.get(key, "an unsigned int")
            raise TxRejected(f"{kind} payload {key!r} must be {rule}", code="bad-payload")
    if "segment" in payload and (len(payload["base"]) != 1 or not payload["data"]):
        raise TxRejected(
            f"checkpoint segment needs exactly one base (the weights it starts from) and some data"
            f" (the rows it trains on); it has {len(payload['base'])} base and"
            f" {len(payload['data'])} data links", code="bad-payload")
    if kind == "attestation" and (payload["verdict"] == "agree") != (payload["code"] == "ok"):
        raise TxRejected(
            f"attestation code {payload['code']!r} does not go with verdict {payload['verdict']!r}:"
            " an agree has code 'ok', a dispute one of " + ", ".join(DISPUTE_CODES),
            code="bad-payload",
        )


def checkpoint_payload(
    *, cid: str, size: int, step: int, samples: int, base: Iterable[str], data: Iterable[str],
    metrics: dict[str, float], segment: Mapping[str, int] | None = None,
) -> dict:
    """A ``checkpoint`` payload; ``base``/``data`` are tx ids (stored as links).

    ``segment`` (``seed``, ``steps``), if given, says the update is a replayable training
    segment from the only ``base`` on the ``data`` rows (:func:`check_payload`).
    """
    payload = {
        "cid": cid, "size": size, "step": step, "samples": samples,
        "base": [tx_link(b) for b in base], "data": [tx_link(d) for d in data],
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    if segment is not None:
        payload["segment"] = {"seed": int(segment["seed"]), "steps": int(segment["steps"])}
    return payload


def data_payload(*, cid: str, size: int, rows: int, schema: dict, source: dict | str, seq: int) -> dict:
    """A ``data`` payload (a thin constructor, for symmetry with :func:`checkpoint_payload`)."""
    return {"cid": cid, "size": size, "rows": rows, "schema": schema, "source": source, "seq": seq}


def snapshot_payload(*, cid: str, size: int, txs: int, top: int) -> dict:
    """A ``snapshot`` payload: a ledger snapshot file announced in the ledger.

    Args:
        cid: the content CID (CIDv1 base32) of the file on IPFS, as
            :meth:`~learnae.ledger.tangle.Tangle.export_snapshot` wrote it.
        size: the file's size in bytes.
        txs: transactions in the file (the genesis included).
        top: the highest height among them.
    """
    return {"cid": cid, "size": size, "txs": txs, "top": top}


def attestation_payload(
    *, checkpoint: str, method: str, verdict: str, code: str, figures: Mapping[str, float],
) -> dict:
    """An ``attestation`` payload: a verifier's verdict on a peer's checkpoint.

    The transaction must approve the checkpoint it judges (``validate_tx``'s
    ``attestation-parent`` rule; :meth:`~learnae.ledger.tangle.Tangle.append` with
    ``approve=checkpoint`` does it).

    Args:
        checkpoint: the judged checkpoint transaction's id (stored as a link).
        method: one of :data:`ATTEST_METHODS`.
        verdict: ``"agree"`` or ``"dispute"``.
        code: ``"ok"`` for an agree; one of :data:`DISPUTE_CODES` for a dispute.
        figures: what the verifier measured (e.g. validation losses), at most
            :data:`MAX_FIGURES` entries with keys of at most :data:`MAX_FIGURE_KEY` characters;
            values are stored as floats and must be finite.

    Raises:
        InvalidCID: ``checkpoint`` is not a transaction id. The other rules are checked when
            the transaction is made (``bad-payload``).
    """
    return {
        "checkpoint": tx_link(checkpoint), "method": method, "verdict": verdict, "code": code,
        "figures": {k: float(v) for k, v in figures.items()},
    }



def admit_payload(member: str, role: str = "node") -> dict:
    """The payload of an ``admit`` (:mod:`learnae.ledger.members`).

    ``member`` (author id, ``"z6Mk..."``) may publish as ``role`` (one of :data:`ROLES`) in
    every transaction that has this one in its past.
    """
    return {"member": member, "role": role}


def revoke_payload(member: str, reason: str) -> dict:
    """The payload of a ``revoke`` (:mod:`learnae.ledger.members`).

    ``member`` (author id) may no longer publish, for ``reason`` (printable text, 1 to
    :data:`MAX_REASON` characters).
    """
    return {"member": member, "reason": reason}

# Validation ------------------------------------------------------------------------------------
def check_parent_times(tx: Tx, parent_times: dict[str, int]) -> None:
    """Check ``tx.time`` is not before any parent's time (``parent_times``: id -> ms; absent ids skipped).

    Raises:
        TxRejected: code ``before-parent``.
    """
    for parent in tx.parents:
        if parent in parent_times and tx.time < parent_times[parent]:
            raise TxRejected(
                f"transaction time {tx.time} is before its parent {parent}'s {parent_times[parent]}",
                code="before-parent",
            )


def validate_tx(
    tx: Tx,
    *,
    swarm: str | None,
    pow_bits: int,
    max_bytes: int,
    now_ms: int,
    admitted: Callable[[bytes], bool] | None = None,
    parent_times: dict[str, int] | None = None,
) -> None:
    """Check a decoded transaction against the swarm's rules; cheap checks first.

    Args:
        tx: from :func:`decode_tx` (which already checked form and types).
        swarm: the genesis id the transaction must name; ``None`` skips the check. A genesis
            passes if its own id is ``swarm``.
        pow_bits: required leading zero bits of sha2-256(unsigned encoding).
        max_bytes: largest accepted encoding.
        now_ms: the receiver's clock (ms since the epoch); ``tx.time`` may be at most
            :data:`MAX_FUTURE_MS` ahead.
        admitted: ``admitted(author_key) -> bool`` for closed swarms; ``None`` admits everyone.
            Not applied to the genesis, which defines admission.
        parent_times: times of the parents held by the receiver (see :func:`check_parent_times`).

    Raises:
        TxRejected: one reason, code ``too-large``, ``wrong-swarm``, ``bad-parents`` (genesis
            with parents; else not 1 or 2 distinct parents sorted by binary CID),
            ``future-time``, ``before-parent``, ``not-admitted``, ``unknown-kind`` (a kind not in
            :data:`KINDS`), ``bad-payload``, ``attestation-parent`` (an attestation that does not
            approve the checkpoint it judges: its ``checkpoint`` must be one of its parents, so
            that every store holds the checkpoint before the attestation), ``low-pow`` or
            ``bad-signature``.
    """
    if len(tx.raw) > max_bytes:
        raise TxRejected(f"transaction is {len(tx.raw)} bytes, over the {max_bytes}-byte limit", code="too-large")
    genesis = tx.kind == "genesis"
    if swarm is not None and (tx.id if genesis else tx.swarm) != swarm:
        raise TxRejected(f"transaction belongs to swarm {tx.swarm or tx.id}, not {swarm}", code="wrong-swarm")
    links = [tx_link(p) for p in tx.parents]
    if genesis and links:
        raise TxRejected("a genesis transaction has no parents", code="bad-parents")
    if not genesis and not (len(links) in (1, 2) and links == sorted(set(links))):
        raise TxRejected("parents must be 1 or 2 distinct transactions sorted by binary CID", code="bad-parents")
    if tx.time > now_ms + MAX_FUTURE_MS:
        raise TxRejected(f"transaction time is {tx.time - now_ms} ms ahead of this clock", code="future-time")
    check_parent_times(tx, parent_times or {})
    if admitted is not None and not genesis and not admitted(tx.author):
        raise TxRejected(f"author {tx.author.hex()} is not admitted to this swarm", code="not-admitted")
    check_payload(tx.kind, tx.payload)
    if tx.kind == "attestation" and tx.payload["checkpoint"] not in links:
        raise TxRejected(
            f"attestation judges {tx_id(tx.payload['checkpoint'])} but does not approve it: the judged"
            " checkpoint must be one of its parents (Tangle.append(..., approve=<checkpoint id>))",
            code="attestation-parent",
        )
    unsigned = tx.unsigned
    if not _pow_ok(hashlib.sha256(unsigned).digest(), pow_bits):
        raise TxRejected(f"proof-of-work has fewer than {pow_bits} leading zero bits", code="low-pow")
    try:
        verify(tx.author, unsigned, tx.sig)
    except BadSignature as exc:
        raise TxRejected(f"signature does not verify: {exc.reason}", code="bad-signature") from None
