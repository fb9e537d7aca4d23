"""Tangle sync over pubsub: gossip, gap repair, anti-entropy and limits against floods.

A :class:`TangleSync` keeps one node's :class:`~learnae.ledger.tangle.Tangle` in step with its
peers over one :class:`~learnae.ipfs.base.IpfsNode`. Everything goes over one pubsub topic,
``learnae/<genesis id>/tx`` (:func:`tx_topic`), because pubsub is what every ``IpfsNode`` offers
and it reaches peers several hops away; nothing is process-local, so nodes in other processes,
hosts or network namespaces sync the same way.

Sources: gossiping every new transaction to neighbours, and asking them for the missing ones
until a transaction is "solid" (all its ancestry present), is what IOTA nodes do (S. Popov,
"The Tangle", 2018, sets the tangle; the IRI/Hornet node software the gossip). The periodic
digest exchange is *anti-entropy*, push-pull flavour, from A. Demers et al., "Epidemic
algorithms for replicated database maintenance", PODC 1987. The randomised request and repair
timers, cancelled when someone else's request or repair is overheard, are SRM's loss recovery
(S. Floyd et al., "A reliable multicast framework for light-weight sessions and application
level framing", IEEE/ACM Transactions on Networking 5(6), 1997).

Messages
--------
Each message is a small DAG-CBOR map with a type tag ``t``; unknown tags are ignored (so later
versions can add types). Transaction ids travel as 36-byte binary CIDs, transactions as their
exact signed bytes. The encoding is written by :func:`encode_message` itself, byte strings as
byte strings: ``libipld.encode_dag_cbor`` would turn any bytes that happen to parse as a CID
into a link (tag 42), the problem ``learnae.ledger.tx`` works around the same way.

=========  ========================================  =============================================
``t``      other keys                                meaning
=========  ========================================  =============================================
``tx``     ``txs``: [tx bytes]                       new transactions, gossiped by their author
``txs``    ``txs``: [tx bytes]                       an answer to ``want``: the wanted ones and
                                                     up to ``n`` in all, newest ancestors first
                                                     (sent parents first)
``want``   ``ids``: [tx id], ``n``: uint             "send me these and up to ``n`` transactions
                                                     of their ancestry" (gap repair)
``tips``   ``ids``: [tx id], ``n``: uint,            "my tips (up to 64) and my count" (digest
           ``snap``: tx bytes (optional)             for anti-entropy); ``snap``: the sender's
                                                     newest ``snapshot`` transaction, if it
                                                     published one (see "Snapshots" below)
=========  ========================================  =============================================

Keys a decoder does not know are ignored, so a node of an earlier version reads a ``tips``
message with ``snap`` as a plain ``tips``.

How it behaves
--------------
- **Gossip.** :meth:`TangleSync.publish` sends a node's own new transactions as ``tx``. Every
  received transaction is validated in full by :meth:`Tangle.insert_many` before it is stored;
  a rejected one is counted (``stats["rejected"]``; by reason code in
  :attr:`TangleSync.rejections` and the tangle's ``rejections``) and dropped. The syncer never
  re-publishes what it receives (the pubsub router relays; answers to ``want`` come from the
  store, which only holds valid transactions), so nothing invalid is passed on by an honest
  node. A node's own messages come back from pubsub: they are recognised by sender id and
  dropped before decoding.
- **Gap repair.** A transaction whose parents are missing is held by the tangle (pending).
  After a short random delay (``want_delay``: the parent may be in flight) the syncer asks for
  :meth:`Tangle.missing_parents` in one ``want``. Any node holding them answers after its own
  random delay (``answer_delay``) unless it overhears another node's answer first; since a
  pubsub answer reaches everyone, a node that overhears a ``want`` for ids it misses too does
  not ask again before ``want_retry``. Unanswered ids are asked again with exponential backoff
  (``want_retry`` doubling, up to 32 times it).
- **Deepening.** An answer carries the wanted transactions and the newest of their ancestors,
  up to the ``n`` the asker requested (and ``max_answer_bytes``). The asker sizes ``n`` by the
  gap it sees: 4 times the number of transactions that went pending since its previous
  ``want`` (at least ``min_want_depth``). A lost message costs one small round trip; an answer
  that did not reach what the asker has shows a deeper gap, so the next ``n`` is 4 times larger:
  catching up on thousands of transactions after a long partition takes a handful of rounds
  (8, 32, 128, ...), not one per height.
- **Anti-entropy.** Every ``announce_interval`` seconds (jittered by +-50 %) a node publishes its
  tips and count, and at once (after a short jitter) when a new peer connects (e.g. a healed
  partition). A node that sees unknown tips asks for them (then gap repair walks back to what
  it has); a node whose tangle holds every announced tip and more transactions than the
  announcer answers with its own tips (at most every ``announce_interval / 4``), so the two
  sides of a healed partition find each other's tips within a fraction of the interval.
- **Limits.** Pubsub gives the *origin* of a message (``from``, the peer that published it),
  not the connection it came over: gossipsub relays, and neither Kubo's RPC API nor the
  embedded library says which neighbour delivered a message. An origin id costs an attacker
  one key pair, so limits per id alone are no limit. The syncer therefore bounds the work any
  message can cause and applies two layers of budgets (token buckets; excess is dropped and
  counted, never queued):

  * **A global budget** on everything received from others (``global_msg_rate`` messages/s
    and ``global_byte_rate`` bytes/s, with bursts): the stand-in for a per-connection limit,
    however many ids the messages claim. A message over it is dropped as ``over_budget``
    before any per-id state is made for its sender.
  * **Bounded per-id state.** The table of senders holds at most ``max_peers`` entries
    (least recently heard evicted). Each has buckets for messages/s and bytes/s and the bytes
    of answers it may cause. A new id starts with a small burst (``new_peer_msgs`` messages,
    one largest message of bytes, ``new_peer_answer_bytes`` of answers) that refills at the
    id's rate up to its full burst, so minting ids buys little: an honest peer, heard every
    couple of seconds, stays in the table and earns its full burst.

  A ``want`` or ``tips`` costs one message token plus one per 32 ids it carries (each id is a
  lookup). Each rejected transaction costs its sender ``reject_cost`` message tokens, and
  queued messages of a sender in debt are dropped. **Answers** are paid before the work is
  done: a ``want`` reserves ``min(max_answer_bytes, the asker's answer tokens)`` bytes from the
  asker's bucket (none left, or the queue of ids to answer full: ``wants_throttled``); the
  wants heard within one ``answer_delay`` share one answer of at most ``max_answer_bytes`` and
  at most the sum of their reservations, and what an answer did not use is given back. So the
  bytes answered to one ``want`` are at most ``max_answer_bytes`` (2 MiB by default) and, from
  an id never heard before, at most ``new_peer_answer_bytes`` (256 KiB); all answers together
  are bounded by the global ``answer_rate`` bytes/s (the answer loop waits while that bucket
  is in debt). Only ids this node itself misses are remembered from overheard ``want`` s. The
  inbox of transactions waiting for validation is bounded (``max_inbox_bytes``, counting
  :data:`TX_OVERHEAD` bytes per transaction; excess dropped as ``inbox_full``, anti-entropy
  recovers it). Messages larger than :data:`MAX_MESSAGE_BYTES` (gossipsub's limit) are dropped
  unread; this node's own messages are at most ``max_message_bytes``. The IPFS backends bound
  a subscription's buffer in bytes too (:data:`learnae.ipfs.base.SUBSCRIPTION_BUFFER_BYTES`).
  Nothing a peer sends blocks or stops the syncer.

- **Snapshots.** A node that published a ledger snapshot (a file on IPFS, announced by a
  ``snapshot`` transaction, see :meth:`Tangle.export_snapshot`) sets
  :attr:`TangleSync.snapshot_tx`; its ``tips`` messages then carry that transaction's bytes as
  ``snap``, so a node that joins late hears of it within one announcement, whatever it lacks.
  A receiver takes one message token more for it (a signature check), skips ids it has seen
  (the last :data:`MAX_SNAPSHOT_IDS`), and validates a new one against the swarm's rules without
  its parents (:meth:`Tangle.validate`: signature, proof-of-work, swarm, admission; kind
  ``snapshot``, else ``bad-snapshot``). A valid one is passed to ``on_snapshot`` once per id
  (the node decides whether to fetch and import the file) and stored like any received
  transaction; an invalid one is counted as rejected and charged to its sender.
- **Pruned history.** A transaction the tangle declines as history it pruned (status
  ``"pruned"``) is counted as ``pruned_history`` and its id remembered (the last
  :data:`MAX_SNAPSHOT_IDS` x 16), so a peer's tip this node pruned is not asked for again.

``stats`` counters: ``received`` (messages from others), ``own``, ``oversize``, ``over_budget``
(the global budget), ``bad_message``, ``unknown_type``, ``rate_limited`` (a sender's budget),
``inbox_full``, ``txs_received``, ``stored`` (including pending ones released), ``duplicates``,
``pending``, ``pruned_history``, ``rejected`` (by code in :attr:`TangleSync.rejections`),
``snapshots_received`` (new valid snapshot transactions heard in ``tips``), ``tx_sent`` (messages),
``txs_published``, ``tips_sent``, ``tips_received``, ``wants_sent``, ``want_ids_sent``,
``wants_received``, ``wants_throttled`` (the asker's answer budget is spent, or too many ids
wait for an answer), ``answers_sent`` (messages), ``answer_bytes_sent`` (transaction bytes),
``wants_answered`` (ids), ``answer_txs_sent``, ``answers_suppressed`` (wanted ids not sent
because another node's answer carried them first or just before), ``newcomer_limited`` (a
newcomer author's transactions over its budget, dropped: see :attr:`TangleSync.newcomer`),
``publish_failed``, ``errors`` (logged with their traceback).

Everything runs on the asyncio loop that called :meth:`TangleSync.start`; the tangle must be
used from that loop only (it is not thread-safe). Times are the loop's clock, in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import libipld

from learnae.errors import IpfsError, LedgerError, TxRejected
from learnae.identity import Identity
from learnae.ipfs.base import IpfsNode, Subscription
from learnae.ledger.tangle import Tangle, decode_cached
from learnae.ledger.tx import TX_CID_PREFIX, Tx, cbor_head, cbor_text, decode_tx, tx_id, tx_link

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_SNAPSHOT_IDS",
    "MAX_TIP_IDS",
    "MAX_WANT_IDS",
    "SyncMessage",
    "TX_OVERHEAD",
    "TangleSync",
    "decode_message",
    "encode_message",
    "tx_topic",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
"""Largest pubsub message accepted (bytes): gossipsub's default limit. Larger ones are dropped."""
MAX_TIP_IDS = 64
"""Tips listed in one ``tips`` message (a random sample when a node has more)."""
MAX_WANT_IDS = 512
"""Ids asked for in one ``want`` message; ids beyond this in a received message are ignored."""
MAX_SNAPSHOT_IDS = 1024
"""Snapshot transaction ids a syncer remembers having heard (older ones are forgotten)."""
TX_OVERHEAD = 64
"""Bytes a received transaction counts for in the inbox bound besides its own (its list slot and
bookkeeping), so that a message of many empty byte strings cannot fill memory uncounted."""
_IDS_PER_TOKEN = 32  # a want or tips message costs one more message token per this many ids
_MAX_TO_ANSWER = 4 * MAX_WANT_IDS  # ids waiting for an answer; wants beyond are throttled
_MAX_ANSWERED = 1 << 16  # ids remembered as just answered (for answer_holdoff)
_MAX_HELD = 1 << 15  # ids remembered as pending in the tangle
_MESSAGE_MARGIN = 64  # map head, keys and list head of an envelope, rounded up
_TX_MARGIN = 5  # byte string head of one transaction in an envelope


def tx_topic(genesis_id: str) -> str:
    """The pubsub topic of a swarm's transactions: ``learnae/<genesis id>/tx``."""
    return f"learnae/{genesis_id}/tx"


# Messages --------------------------------------------------------------------------------------
class SyncMessage(NamedTuple):
    """A decoded sync message.

    Type tag ``t``, transaction ``ids`` (base32 strings; invalid ones dropped), transaction
    bytes ``txs``, the count or budget ``n`` (``None`` if absent) and a ``tips`` message's
    snapshot transaction bytes ``snap`` (``None`` if absent).
    """

    t: str
    ids: list[str]
    txs: list[bytes]
    n: int | None
    snap: bytes | None = None


def _bytes_list(items: Sequence[bytes]) -> bytes:
    return cbor_head(4, len(items)) + b"".join(cbor_head(2, len(b)) + b for b in items)


def encode_message(
    t: str, *, ids: Iterable[str] | None = None, txs: Sequence[bytes] | None = None, n: int | None = None,
    snap: bytes | None = None,
) -> bytes:
    """Encode a sync message as a canonical DAG-CBOR map (keys ``n``, ``t``, ``ids``, ``txs``, ``snap``).

    Args:
        t: type tag (``"tx"``, ``"txs"``, ``"want"``, ``"tips"``).
        ids: transaction ids (base32 CIDv1 strings), sent as 36-byte binary CIDs.
        txs: transactions' exact bytes.
        n: an unsigned int (a count or a budget).
        snap: a snapshot transaction's exact bytes (``tips`` messages).

    Raises:
        InvalidCID: an id is not a transaction id.
    """
    entries = []
    if n is not None:
        entries.append(cbor_text("n") + cbor_head(0, n))
    entries.append(cbor_text("t") + cbor_text(t))
    if ids is not None:
        entries.append(cbor_text("ids") + _bytes_list([tx_link(i) for i in ids]))
    if txs is not None:
        entries.append(cbor_text("txs") + _bytes_list(txs))
    if snap is not None:
        entries.append(cbor_text("snap") + cbor_head(2, len(snap)) + snap)
    return cbor_head(5, len(entries)) + b"".join(entries)


def decode_message(data: bytes) -> SyncMessage:
    """Decode a sync message (any valid DAG-CBOR map of that shape; extra keys are ignored).

    Only the first :data:`MAX_WANT_IDS` ids are read; those that are not 36-byte transaction
    CIDs are dropped; a link (tag 42) is read as its CID.

    Raises:
        LedgerError: code ``bad-message``: not DAG-CBOR, not a map, no text ``t``, or a field of
            the wrong type.
    """
    try:
        obj = libipld.decode_dag_cbor(data)
    except Exception as exc:  # noqa: BLE001  (libipld raises ValueError, RecursionError, ...)
        raise LedgerError(f"sync message is not DAG-CBOR: {exc}", code="bad-message") from None
    if not isinstance(obj, dict) or type(obj.get("t")) is not str:
        raise LedgerError("sync message is not a map with a text 't'", code="bad-message")
    ids, txs, n, snap = obj.get("ids", []), obj.get("txs", []), obj.get("n"), obj.get("snap")
    if (
        type(ids) is not list or type(txs) is not list
        or not all(type(x) is bytes for x in txs) or (n is not None and (type(n) is not int or n < 0))
        or (snap is not None and type(snap) is not bytes)
    ):
        raise LedgerError("sync message fields: ids and txs lists of bytes, n an unsigned int, snap bytes",
                          code="bad-message")
    good = [tx_id(i) for i in ids[:MAX_WANT_IDS]
            if type(i) is bytes and len(i) == 36 and i.startswith(TX_CID_PREFIX)]
    return SyncMessage(obj["t"], good, txs, n, snap)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds pass.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that coincides with
    the event (gh-86296).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _raw_id(raw: bytes) -> str:
    """The id a transaction with these bytes has (without decoding it)."""
    return tx_id(TX_CID_PREFIX + hashlib.sha256(raw).digest())


# Rate limits -----------------------------------------------------------------------------------
class _Bucket:
    """A token bucket: ``rate`` tokens/s up to ``burst``.

    It starts with ``start`` tokens (default ``burst``); :meth:`charge` may run into debt.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float, start: float | None = None):
        self.rate, self.burst, self.stamp = rate, burst, now
        self.tokens = burst if start is None else min(start, burst)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def level(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, amount: float, now: float) -> bool:
        self._refill(now)
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def charge(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount

    def refund(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + amount)


@dataclass(slots=True)
class _Peer:
    msgs: _Bucket
    data: _Bucket
    answers: _Bucket
    counters: Counter = field(default_factory=Counter)
    tips: tuple[int, list[str]] | None = None  # last announcement: (count, tips)
    author: bytes | None = None  # the author of the checkpoints it gossips (its member)


@dataclass
class _Want:
    tries: int = 0
    next: float = 0.0  # loop time before which this id is not asked for again


def _gossiper(raw: bytes, known: bytes | None) -> bytes | None:
    """The author of ``raw`` if it is a checkpoint (a node gossips its own), else ``known``."""
    try:
        tx = decode_cached(raw)
    except TxRejected:
        return known
    return tx.author if tx.kind == "checkpoint" else known


# The syncer ------------------------------------------------------------------------------------
class TangleSync:
    """Keeps ``tangle`` in step with the peers of ``ipfs`` (see the module docstring).

    Args:
        tangle: this node's store; use it only from the loop that runs the syncer.
        ipfs: the node's IPFS node (any ``IpfsNode``).
        genesis_id: the swarm's genesis id; default ``tangle.swarm``; must equal it.
        announce_interval: mean seconds between tip announcements (jittered +-50 %).
        want_delay: a new gap is asked for after a random 0..``want_delay`` s.
        want_retry: seconds before an unanswered id is asked for again (doubles per try).
        answer_delay: a ``want`` is answered after a random 0..``answer_delay`` s, unless
            another node's answer is overheard first.
        answer_holdoff: seconds during which an id just sent in an answer (by anyone) is not
            sent again (concurrent wants for the same ids get one answer).
        min_want_depth: least ``n`` of a ``want``; it is 4 times the transactions that went
            pending since the previous ``want`` when that is more.
        max_answer_txs: most transactions in one answer.
        max_answer_bytes: most transaction bytes in one answer, whatever the wants it answers
            (sent as messages of ``max_message_bytes``).
        max_message_bytes: largest message this node publishes (at most
            :data:`MAX_MESSAGE_BYTES`; must hold the largest transaction, ``tangle.max_tx_bytes``).
        peer_msg_rate, peer_msg_burst: messages/s and burst accepted from one sender.
        peer_byte_rate, peer_byte_burst: bytes/s and burst accepted from one sender (burst at
            least :data:`MAX_MESSAGE_BYTES`).
        peer_answer_rate, peer_answer_burst: bytes/s and burst of answers one asker may cause.
        new_peer_msgs: message tokens a sender not in the table starts with (its bytes bucket
            starts with :data:`MAX_MESSAGE_BYTES`).
        new_peer_answer_bytes: answer bytes a sender not in the table starts with: the most
            answered to a new id's first ``want`` (at least ``tangle.max_tx_bytes``).
        global_msg_rate, global_msg_burst: messages/s and burst accepted from all others
            together.
        global_byte_rate, global_byte_burst: bytes/s and burst accepted from all others together
            (burst at least :data:`MAX_MESSAGE_BYTES`).
        answer_rate, answer_burst: bytes/s and burst of answers this node sends in all.
        reject_cost: message tokens a sender loses per rejected transaction.
        max_inbox_bytes: bound on received transaction bytes waiting for validation (each
            counts :data:`TX_OVERHEAD` more).
        ingest_batch: transactions validated and committed together (one SQLite commit).
        peer_poll_interval: seconds between checks of ``ipfs.peers()`` (a new peer triggers an
            announcement); 0 disables them.
        max_peers: senders whose rate-limit state is kept (least recently heard dropped); each
            costs at most about 9 KB (its counters and last announced tips).
        rng: randomness of the jitters (default: a fresh ``random.Random()``).
        on_snapshot: called on the loop with each new valid ``snapshot`` transaction a peer's
            ``tips`` message carries, once per id; it must not block (start a task to fetch).
            Its exceptions are logged and counted as ``errors``.

    Attributes:
        snapshot_tx: this node's newest ``snapshot`` transaction (set it after publishing one);
            when set, ``tips`` messages carry it.
        newcomer: ``newcomer(author key) -> bool``, or ``None`` (the default: nobody is). A
            newcomer author's received transactions are stored at most ``newcomer_rate`` a
            second (a bucket of ``newcomer_rate * 60`` per author, for the ``max_peers``
            authors heard last); the rest are dropped (``newcomer_limited``) and come again
            by gap repair once someone approves them. The trainer node sets it from its
            manifest's ``newcomers`` rule.

    Raises:
        LedgerError: ``genesis_id`` is not the tangle's, or the limits are inconsistent.
    """

    def __init__(
        self,
        tangle: Tangle,
        ipfs: IpfsNode,
        *,
        genesis_id: str | None = None,
        announce_interval: float = 2.0,
        want_delay: float = 0.05,
        want_retry: float = 1.0,
        answer_delay: float = 0.05,
        answer_holdoff: float = 0.3,
        min_want_depth: int = 8,
        max_answer_txs: int = 8192,
        max_answer_bytes: int = 2 << 20,
        max_message_bytes: int = 512 << 10,
        peer_msg_rate: float = 100.0,
        peer_msg_burst: float = 300.0,
        peer_byte_rate: float = 4 << 20,
        peer_byte_burst: float = 16 << 20,
        peer_answer_rate: float = 4 << 20,
        peer_answer_burst: float = 16 << 20,
        new_peer_msgs: float = 10.0,
        new_peer_answer_bytes: float = 256 << 10,
        global_msg_rate: float = 1000.0,
        global_msg_burst: float = 3000.0,
        global_byte_rate: float = 32 << 20,
        global_byte_burst: float = 64 << 20,
        answer_rate: float = 4 << 20,
        answer_burst: float = 16 << 20,
        reject_cost: float = 10.0,
        max_inbox_bytes: int = 32 << 20,
        ingest_batch: int = 256,
        peer_poll_interval: float = 1.0,
        max_peers: int = 1024,
        rng: random.Random | None = None,
        on_snapshot: Callable[[Tx], None] | None = None,
    ):
        if genesis_id is not None and genesis_id != tangle.swarm:
            raise LedgerError(f"the tangle holds swarm {tangle.swarm}, not {genesis_id}")
        if not tangle.max_tx_bytes + _TX_MARGIN + _MESSAGE_MARGIN <= max_message_bytes <= MAX_MESSAGE_BYTES:
            raise LedgerError(
                f"max_message_bytes {max_message_bytes} must hold one transaction of up to "
                f"{tangle.max_tx_bytes} bytes and be at most {MAX_MESSAGE_BYTES}"
            )
        if min(peer_byte_burst, global_byte_burst) < MAX_MESSAGE_BYTES:
            raise LedgerError(f"peer_byte_burst and global_byte_burst must be at least "
                              f"{MAX_MESSAGE_BYTES} bytes (one largest message)")
        self.tangle = tangle
        self.ipfs = ipfs
        self.genesis_id = tangle.swarm
        self.topic = tx_topic(self.genesis_id)
        self.announce_interval = announce_interval
        self.want_delay = want_delay
        self.want_retry = want_retry
        self.answer_delay = answer_delay
        self.answer_holdoff = answer_holdoff
        self.min_want_depth = max(1, min_want_depth)
        self.max_answer_txs = max_answer_txs
        self.max_answer_bytes = max(max_answer_bytes, max_message_bytes)
        self.max_message_bytes = max_message_bytes
        self._peer_limits = (peer_msg_rate, peer_msg_burst, peer_byte_rate, peer_byte_burst,
                             peer_answer_rate, peer_answer_burst)
        self.new_peer_msgs = new_peer_msgs
        self.new_peer_answer_bytes = max(new_peer_answer_bytes, tangle.max_tx_bytes)
        self._global_limits = (global_msg_rate, global_msg_burst,
                               global_byte_rate, global_byte_burst)
        self._answer_limits = (answer_rate, answer_burst)
        self.reject_cost = reject_cost
        self.max_inbox_bytes = max_inbox_bytes
        self.ingest_batch = ingest_batch
        self.peer_poll_interval = peer_poll_interval
        self.max_peers = max_peers
        self._rng = rng or random.Random()
        self.on_snapshot = on_snapshot
        self.snapshot_tx: Tx | None = None
        """This node's newest snapshot transaction, carried in its ``tips`` messages."""
        self.newcomer: Callable[[bytes], bool] | None = None
        self.newcomer_rate = 0.5
        self._newcomers: OrderedDict[bytes, _Bucket] = OrderedDict()  # author -> its budget

        self.stats: Counter[str] = Counter()
        """Event counters, snake_case names (see the module docstring)."""
        self.rejections: Counter[str] = Counter()
        """Transactions refused on validation, by :attr:`TxRejected.code` (``bad-signature``,
        ...); their sum is ``stats["rejected"]``."""
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._inbox: deque[tuple[str, list[bytes], int]] = deque()  # (sender, raws, bytes)
        self._inbox_bytes = 0
        self._wants: dict[str, _Want] = {}  # ids asked for (by us or overheard)
        self._wish: dict[str, int] = {}  # unknown tips heard -> times asked for
        self._held: set[str] = set()  # ids the tangle holds pending (as far as we saw)
        self._count = (float("-inf"), 0)  # (when, tangle.count()): count() scans the table
        self._new_pending = 0  # transactions that went pending since the last want
        self._missing: set[str] = set()  # ids this node missed when it last asked
        self._to_answer: dict[str, int] = {}  # id -> budget n
        self._reserved: dict[str, float] = {}  # asker -> answer bytes reserved for _to_answer
        self._answered: OrderedDict[str, float] = OrderedDict()  # id -> when last sent in an answer
        self._snapshots: OrderedDict[str, None] = OrderedDict()  # snapshot tx ids heard
        self._pruned: OrderedDict[str, None] = OrderedDict()  # ids the tangle declined as pruned
        self._last_announce = float("-inf")
        # Full buckets; start() makes them afresh on the loop's clock.
        mr, mb, br, bb = self._global_limits
        self._out = _Bucket(*self._answer_limits, 0.0)  # answers sent, bytes
        self._in_msgs = _Bucket(mr, mb, 0.0)  # messages received from others
        self._in_bytes = _Bucket(br, bb, 0.0)
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox_event = asyncio.Event()
        self._gap_event = asyncio.Event()
        self._answer_event = asyncio.Event()
        self._announce_event = asyncio.Event()

    # Life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the topic and start the syncer's tasks on the running loop.

        Raises:
            LedgerError: already started.
            IpfsError: the IPFS node could not subscribe (e.g. ``NodeClosed``).
        """
        if self._tasks:
            raise LedgerError("this syncer is already running")
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        now = self._now()
        self._out = _Bucket(*self._answer_limits, now)
        mr, mb, br, bb = self._global_limits
        self._in_msgs, self._in_bytes = _Bucket(mr, mb, now), _Bucket(br, bb, now)
        self._sub = self.ipfs.subscribe(self.topic)
        loops = [self._read_loop, self._ingest_loop, self._want_loop, self._answer_loop,
                 self._announce_loop]
        if self.peer_poll_interval > 0:
            loops.append(self._peer_loop)
        self._tasks = [asyncio.create_task(fn(), name=f"sync-{fn.__name__}") for fn in loops]
        self._announce_soon()
        log.info("syncing %s on %s as %s", self.genesis_id, self.topic, self.ipfs.id)

    async def stop(self) -> None:
        """Cancel the tasks and unsubscribe. Idempotent; the tangle and IPFS node stay open."""
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.aclose()

    async def __aenter__(self) -> TangleSync:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether :meth:`start` ran and :meth:`stop` did not."""
        return bool(self._tasks)

    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    # Sending ----------------------------------------------------------------------------------------
    async def publish(self, *txs: Tx) -> None:
        """Gossip this node's new transactions (already stored in its tangle) as ``tx`` messages.

        Several transactions share a message while they fit in ``max_message_bytes``. Failures
        of the IPFS node are logged and counted (``publish_failed``), not raised: anti-entropy
        delivers the transactions later.

        Raises:
            LedgerError: the syncer is not running, or a transaction is not in the tangle.
        """
        if not self._tasks:
            raise LedgerError("start the syncer before publishing")
        for tx in txs:
            if tx.id not in self.tangle:
                raise LedgerError(f"transaction {tx.id} is not in this node's tangle: append it first")
        for chunk in self._chunks([tx.raw for tx in txs]):
            if await self._send(encode_message("tx", txs=chunk)):
                self.stats["tx_sent"] += 1
                self.stats["txs_published"] += len(chunk)

    async def append(self, identity: Identity, kind: str, payload: dict, *,
                     time_ms: int | None = None, rng: random.Random | None = None,
                     approve: str | None = None) -> Tx:
        """:meth:`Tangle.append` a new transaction, then :meth:`publish` it; returns it.

        ``approve``: a transaction it must approve (an attestation's checkpoint), as
        :meth:`Tangle.append`.

        Raises:
            TxRejected, LedgerError: as :meth:`Tangle.append`.
        """
        tx = self.tangle.append(identity, kind, payload, time_ms=time_ms, rng=rng, approve=approve)
        await self.publish(tx)
        return tx

    async def announce(self) -> None:
        """Publish this node's tips (a random sample of :data:`MAX_TIP_IDS` if more) and count.

        The message carries :attr:`snapshot_tx` when it is set.
        """
        tips = self.tangle.tips()
        if len(tips) > MAX_TIP_IDS:
            tips = sorted(self._rng.sample(tips, MAX_TIP_IDS))
        self._last_announce = self._now()
        snap = None if self.snapshot_tx is None else self.snapshot_tx.raw
        if await self._send(encode_message("tips", ids=tips, n=self._tx_count(fresh=True), snap=snap)):
            self.stats["tips_sent"] += 1

    def _tx_count(self, fresh: bool = False) -> int:
        """``tangle.count()``, cached for 0.25 s unless ``fresh`` (it scans the table)."""
        now = self._now()
        when, count = self._count
        if fresh or now - when > 0.25:
            count = self.tangle.count()
            self._count = (now, count)
        return count

    def _chunks(self, raws: Sequence[bytes]) -> list[list[bytes]]:
        """Split transactions into message-sized lists, in order."""
        limit = self.max_message_bytes - _MESSAGE_MARGIN
        chunks: list[list[bytes]] = []
        size = limit + 1
        for raw in raws:
            need = len(raw) + _TX_MARGIN
            if need > limit:
                raise LedgerError(f"a {len(raw)}-byte transaction does not fit in a sync message")
            if size + need > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(raw)
            size += need
        return chunks

    async def _send(self, data: bytes) -> bool:
        try:
            await self.ipfs.publish(self.topic, data)
            return True
        except IpfsError as exc:
            self.stats["publish_failed"] += 1
            log.warning("could not publish on %s: %s", self.topic, exc.reason)
            return False

    def _announce_soon(self) -> None:
        self._announce_event.set()

    # Receiving --------------------------------------------------------------------------------------
    def _peer(self, sender: str, now: float) -> _Peer:
        """The sender's entry, made with a new id's small burst if absent.

        Making one evicts the least recently heard beyond ``max_peers``.
        """
        peer = self._peers.get(sender)
        if peer is None:
            mr, mb, br, bb, ar, ab = self._peer_limits
            peer = self._peers[sender] = _Peer(
                _Bucket(mr, mb, now, self.new_peer_msgs), _Bucket(br, bb, now, MAX_MESSAGE_BYTES),
                _Bucket(ar, ab, now, self.new_peer_answer_bytes))
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(sender)
        return peer

    async def _read_loop(self) -> None:
        assert self._sub is not None  # start() subscribed before starting this task
        async for sender, data in self._sub:
            try:
                self._on_message(sender, data)
            except Exception:  # never let one message stop the syncer
                self.stats["errors"] += 1
                log.exception("sync message from %s failed", sender)
        log.warning("the subscription to %s ended", self.topic)

    def _on_message(self, sender: str, data: bytes) -> None:
        if sender == self.ipfs.id:
            self.stats["own"] += 1
            return
        self.stats["received"] += 1
        now = self._now()
        if len(data) > MAX_MESSAGE_BYTES:
            self.stats["oversize"] += 1
            known = self._peers.get(sender)
            if known is not None:
                known.counters["oversize"] += 1
            return
        # The global budget first: a message over it makes no per-id state.
        if self._in_msgs.level(now) < 1 or self._in_bytes.level(now) < len(data):
            self.stats["over_budget"] += 1
            return
        peer = self._peer(sender, now)
        peer.counters["received"] += 1
        # Check every bucket before taking from any, so a refused message costs nothing.
        if peer.msgs.level(now) < 1 or peer.data.level(now) < len(data):
            self.stats["rate_limited"] += 1
            peer.counters["rate_limited"] += 1
            return
        for bucket, cost in ((peer.msgs, 1), (peer.data, len(data)), (self._in_msgs, 1),
                             (self._in_bytes, len(data))):
            bucket.charge(cost, now)
        try:
            msg = decode_message(data)
        except LedgerError:
            self.stats["bad_message"] += 1
            peer.counters["bad_message"] += 1
            return
        extra = len(msg.ids) // _IDS_PER_TOKEN  # each id costs a lookup
        if extra:
            peer.msgs.charge(extra, now)
            self._in_msgs.charge(extra, now)
        if msg.t in ("tx", "txs"):
            if msg.t == "tx" and msg.txs:
                peer.author = _gossiper(msg.txs[0], peer.author)
            self._on_txs(sender, msg, now)
        elif msg.t == "want":
            self._on_want(sender, peer, msg, now)
        elif msg.t == "tips":
            self._on_tips(peer, msg)
            if msg.snap is not None:
                self._on_snapshot(sender, peer, msg.snap, now)
        else:
            self.stats["unknown_type"] += 1

    def _on_txs(self, sender: str, msg: SyncMessage, now: float) -> None:
        if msg.t == "txs":  # an answer: whoever else meant to send these need not
            for raw in msg.txs:
                i = _raw_id(raw)
                if self._to_answer.pop(i, None) is not None:
                    self.stats["answers_suppressed"] += 1
                self._mark_answered(i, now)
        size = sum(map(len, msg.txs)) + TX_OVERHEAD * len(msg.txs)
        if self._inbox_bytes + size > self.max_inbox_bytes:
            self.stats["inbox_full"] += 1
            return
        self.stats["txs_received"] += len(msg.txs)
        for start in range(0, len(msg.txs), self.ingest_batch):
            chunk = msg.txs[start : start + self.ingest_batch]
            chunk_size = sum(map(len, chunk)) + TX_OVERHEAD * len(chunk)
            self._inbox.append((sender, chunk, chunk_size))
            self._inbox_bytes += chunk_size
        self._inbox_event.set()

    def _on_want(self, sender: str, peer: _Peer, msg: SyncMessage, now: float) -> None:
        self.stats["wants_received"] += 1
        ids = msg.ids[:MAX_WANT_IDS]
        wants, wish, missing = self._wants, self._wish, self._missing
        for i in ids:  # whoever misses these too will get this want's answer: do not ask now
            if i in wants or i in wish or i in missing:  # (only ids this node misses itself)
                state = wants.setdefault(i, _Want())
                state.next = max(state.next, now + self.want_retry)
        todo = []
        for i in ids:
            sent = self._answered.get(i)
            if sent is not None and now - sent < self.answer_holdoff:
                self.stats["answers_suppressed"] += 1
            else:
                todo.append(i)
        if not todo:
            return
        # Pay first: reserve the answer's bytes from the asker (once per answer it waits for).
        new = sender not in self._reserved
        if new:
            grant = min(self.max_answer_bytes, peer.answers.level(now))
            if grant < self.tangle.max_tx_bytes or len(self._to_answer) >= _MAX_TO_ANSWER:
                self.stats["wants_throttled"] += 1
                return
            peer.answers.take(grant, now)
            self._reserved[sender] = grant
        budget = max(1, min(msg.n or 1, self.max_answer_txs))
        to_answer = self._to_answer
        scheduled = False
        for i in todo:
            if i in to_answer:
                to_answer[i] = max(budget, to_answer[i])
                scheduled = True
            elif len(to_answer) < _MAX_TO_ANSWER and i in self.tangle:
                to_answer[i] = budget
                scheduled = True
        if scheduled:
            self._answer_event.set()
        elif new:  # nothing to answer: give the reservation back
            peer.answers.refund(self._reserved.pop(sender), now)

    def _on_tips(self, peer: _Peer, msg: SyncMessage) -> None:
        self.stats["tips_received"] += 1
        ids = msg.ids[:MAX_TIP_IDS]
        peer.tips = (msg.n or 0, ids)
        maybe = [i for i in ids if i not in self._held and i not in self._pruned]
        stored = self.tangle.stored(maybe)
        unknown = [i for i in maybe if i not in stored]
        for i in unknown:
            if i not in self._wish and len(self._wish) < 16 * MAX_TIP_IDS:
                self._wish[i] = 0
        if unknown:
            self._gap_event.set()
        elif msg.n is not None and msg.n < self._tx_count():
            # Every tip it has is here and it has fewer: it is behind, tell it our tips.
            if self._now() - self._last_announce >= self.announce_interval / 4:
                self._announce_soon()

    def _on_snapshot(self, sender: str, peer: _Peer, raw: bytes, now: float) -> None:
        """A peer's snapshot transaction, carried in its ``tips``: validate, report, store."""
        i = _raw_id(raw)
        if i in self._snapshots:
            self._snapshots.move_to_end(i)
            return
        self._snapshots[i] = None
        while len(self._snapshots) > MAX_SNAPSHOT_IDS:
            self._snapshots.popitem(last=False)
        peer.msgs.charge(1, now)  # a signature check
        self._in_msgs.charge(1, now)
        try:
            tx = decode_tx(raw)
            if tx.kind != "snapshot":
                raise TxRejected(f"a tips message carries a {tx.kind!r} transaction, not a snapshot",
                                 code="bad-snapshot")
            self.tangle.validate(tx)
            self.tangle.roll().check(tx)  # no fetching the snapshot of a stranger or a revoked member
        except TxRejected as exc:
            self.stats["rejected"] += 1
            self.rejections[exc.code] += 1
            peer.counters["rejected"] += 1
            peer.msgs.charge(self.reject_cost, now)
            log.debug("snapshot transaction %s from %s rejected (%s): %s", i, sender, exc.code, exc.reason)
            return
        self.stats["snapshots_received"] += 1
        if i not in self.tangle:
            self._on_txs(sender, SyncMessage("tx", [], [raw], None), now)
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(tx)
            except Exception:
                self.stats["errors"] += 1
                log.exception("on_snapshot failed for %s", i)

    def _mark_answered(self, i: str, now: float) -> None:
        answered = self._answered
        answered[i] = now
        answered.move_to_end(i)
        while answered:
            oldest = next(iter(answered.values()))
            if now - oldest < self.answer_holdoff and len(answered) <= _MAX_ANSWERED:
                break
            answered.popitem(last=False)

    # Ingest -----------------------------------------------------------------------------------------
    async def _ingest_loop(self) -> None:
        while not self._stopping:
            await self._inbox_event.wait()
            self._inbox_event.clear()
            while self._inbox:
                batch: list[bytes] = []
                owners: list[str] = []
                now = self._now()
                while self._inbox and len(batch) < self.ingest_batch:
                    sender, raws, size = self._inbox.popleft()
                    self._inbox_bytes -= size
                    peer = self._peers.get(sender)
                    if peer is not None and peer.msgs.level(now) < 0:  # in debt for rejects
                        self.stats["rate_limited"] += 1
                        peer.counters["rate_limited"] += 1
                        continue
                    batch.extend(raws)
                    owners.extend([sender] * len(raws))
                if batch:
                    try:
                        self._ingest(batch, owners)
                    except Exception:  # a failing database must not stop the syncer
                        self.stats["errors"] += 1
                        log.exception("storing %d received transactions failed", len(batch))
                await asyncio.sleep(0)

    def _within_budget(self, batch: list[bytes], owners: list[str]) -> tuple[list[bytes | Tx], list[str]]:
        """The transactions of ``batch`` left once newcomers' budgets are taken.

        Decoded, so that the store does not decode them again.
        """
        now = self._now()
        kept: list[bytes | Tx] = []
        kept_owners = []
        for raw, owner in zip(batch, owners, strict=True):
            try:
                tx: bytes | Tx = decode_cached(raw)
            except TxRejected:
                tx = raw  # the store rejects and counts it
            if (isinstance(tx, Tx) and self.newcomer is not None and self.newcomer(tx.author)
                    and tx.id not in self.tangle):  # a duplicate costs nothing
                bucket = self._newcomers.pop(tx.author, None)
                if bucket is None:
                    bucket = _Bucket(self.newcomer_rate, self.newcomer_rate * 60, now)
                self._newcomers[tx.author] = bucket
                while len(self._newcomers) > self.max_peers:
                    self._newcomers.popitem(last=False)
                if not bucket.take(1, now):
                    self.stats["newcomer_limited"] += 1
                    continue
            kept.append(tx)
            kept_owners.append(owner)
        return kept, kept_owners

    def _ingest(self, batch: list[bytes], owners: list[str]) -> None:
        items: list[bytes | Tx] = list(batch)
        if self.newcomer is not None:
            items, owners = self._within_budget(batch, owners)
        results = self.tangle.insert_many(items)
        now = self._now()
        stats = self.stats
        for result, sender in zip(results, owners, strict=True):
            status = result.status
            if result.error is not None:  # status "rejected"
                stats["rejected"] += 1
                self.rejections[result.error.code] += 1
                peer = self._peers.get(sender)
                if peer is not None:
                    peer.counters["rejected"] += 1
                    peer.msgs.charge(self.reject_cost, now)
                continue
            assert result.id is not None  # only bytes that did not decode (rejected) have none
            self._wish.pop(result.id, None)  # here now (maybe pending): gap repair takes over
            if status == "inserted":
                stats["stored"] += 1 + len(result.released)
                self._held.difference_update(result.released)
            elif status == "duplicate":
                stats["duplicates"] += 1
            elif status == "pending":
                stats["pending"] += 1
                self._held.add(result.id)
                self._new_pending += 1
            elif status == "pruned":
                stats["pruned_history"] += 1
                self._pruned[result.id] = None
                if len(self._pruned) > 16 * MAX_SNAPSHOT_IDS:
                    self._pruned.popitem(last=False)
        self._gap_check()

    def _gap_check(self) -> None:
        """Wake gap repair if transactions wait."""
        if not self.tangle.pending or len(self._held) > _MAX_HELD:
            self._held.clear()  # (evicted ones are not reported: forget them here)
        if self.tangle.pending or self._wish:
            self._gap_event.set()

    # Gap repair -------------------------------------------------------------------------------------
    async def _want_loop(self) -> None:
        while not self._stopping:
            await _wait(self._gap_event, self.want_retry)
            self._gap_event.clear()
            if self.want_delay > 0:
                await asyncio.sleep(self._rng.uniform(0, self.want_delay))
            try:
                await self._send_wants()
            except Exception:
                self.stats["errors"] += 1
                log.exception("gap repair failed")

    async def _send_wants(self) -> None:
        now = self._now()
        tangle = self.tangle
        missing = tangle.missing_parents()
        for i in [i for i in self._wish if i in tangle]:
            del self._wish[i]
        candidates = dict.fromkeys(missing)
        candidates.update(dict.fromkeys(self._wish))
        self._missing = set(candidates)
        # Forget ids no longer missing whose retry time has passed.
        self._wants = {i: s for i, s in self._wants.items() if i in candidates or s.next > now}
        if not candidates:
            return
        ready = []
        for i in candidates:
            state = self._wants.get(i)
            if state is not None and now < state.next:
                continue
            ready.append(i)
            if len(ready) == MAX_WANT_IDS:
                break
        if not ready:
            return
        depth = min(max(self.min_want_depth, 4 * self._new_pending), self.max_answer_txs)
        self._new_pending = 0
        if not await self._send(encode_message("want", ids=ready, n=depth)):
            return
        self.stats["wants_sent"] += 1
        self.stats["want_ids_sent"] += len(ready)
        for i in ready:
            state = self._wants.setdefault(i, _Want())
            backoff = self.want_retry * 2 ** min(state.tries, 5)
            state.tries += 1
            state.next = now + backoff * self._rng.uniform(1.0, 1.5)
            if i in self._wish:
                self._wish[i] += 1
                if self._wish[i] > 6:  # nobody has it (or the announcer lied): stop asking
                    del self._wish[i]

    # Answers ----------------------------------------------------------------------------------------
    async def _answer_loop(self) -> None:
        while not self._stopping:
            await self._answer_event.wait()
            self._answer_event.clear()
            if self.answer_delay > 0:
                await asyncio.sleep(self._rng.uniform(0, self.answer_delay))
            debt = -self._out.level(self._now())
            if debt > 0:
                await asyncio.sleep(debt / self._out.rate)
            todo, self._to_answer = self._to_answer, {}
            reserved, self._reserved = self._reserved, {}
            if not todo:
                self._refund(reserved, 0)
                continue
            try:
                await self._answer(todo, reserved)
            except Exception:
                self.stats["errors"] += 1
                log.exception("answering a want failed")

    def _ancestry(self, wanted: Iterable[str], budget: int, max_bytes: float) -> list[bytes]:
        """The wanted transactions, then their newest ancestors, oldest first.

        Ancestors by time, ties by id, within ``budget`` transactions and ``max_bytes``;
        returned oldest first (parents before children, as times never decrease along
        approvals). The genesis is left out.
        """
        get = self.tangle.get
        heap: list[tuple[int, int, str, Tx]] = []
        seen: set[str] = set()

        def push(rank: int, i: str) -> None:
            seen.add(i)
            tx = get(i)
            if tx is not None and tx.kind != "genesis":
                heapq.heappush(heap, (rank, -tx.time, i, tx))

        for i in wanted:
            push(0, i)
        out: list[bytes] = []
        size = 0
        while heap and len(out) < budget:
            _, _, _, tx = heapq.heappop(heap)
            if size + len(tx.raw) > max_bytes:
                break
            out.append(tx.raw)
            size += len(tx.raw)
            for p in tx.parents:
                if p not in seen:
                    push(1, p)
        out.reverse()
        return out

    async def _answer(self, todo: dict[str, int], reserved: dict[str, float]) -> None:
        """Answer the wanted ids ``todo`` (id -> ``n``) within the askers' ``reserved`` bytes."""
        budget = min(self.max_answer_txs, max(todo.values()))
        raws = self._ancestry(todo, budget, min(self.max_answer_bytes, sum(reserved.values())))
        size = sum(map(len, raws))
        self._refund(reserved, size)
        if not raws:
            return
        now = self._now()
        self._out.charge(size, now)
        for raw in raws:
            self._mark_answered(_raw_id(raw), now)
        for chunk in self._chunks(raws):
            if await self._send(encode_message("txs", txs=chunk)):
                self.stats["answers_sent"] += 1
                self.stats["answer_txs_sent"] += len(chunk)
                self.stats["answer_bytes_sent"] += sum(map(len, chunk))
        self.stats["wants_answered"] += len(todo)

    def _refund(self, reserved: dict[str, float], used: int) -> None:
        """Give each asker back what of its reservation an answer of ``used`` bytes left over.

        Every asker is charged the whole answer, up to its reservation: all of them get it.
        """
        now = self._now()
        for asker, grant in reserved.items():
            peer = self._peers.get(asker)
            if peer is not None and grant > used:
                peer.answers.refund(grant - used, now)

    # Anti-entropy -----------------------------------------------------------------------------------
    async def _announce_loop(self) -> None:
        while not self._stopping:
            await _wait(self._announce_event, self.announce_interval * self._rng.uniform(0.5, 1.5))
            if self._announce_event.is_set():  # an early announcement: jitter, then rate-limit
                self._announce_event.clear()
                gap = self.announce_interval / 4
                await asyncio.sleep(max(self._rng.uniform(0, gap / 2),
                                        self._last_announce + gap - self._now()))
                self._announce_event.clear()
            try:
                await self.announce()
            except Exception:
                self.stats["errors"] += 1
                log.exception("announcing tips failed")

    async def _peer_loop(self) -> None:
        known: set[str] = set()
        while not self._stopping:
            try:
                peers = set(await self.ipfs.peers())
            except IpfsError as exc:
                log.debug("could not list peers: %s", exc.reason)
                peers = known
            if peers - known:
                self._announce_soon()
            known = peers
            await asyncio.sleep(self.peer_poll_interval)

    # Introspection ----------------------------------------------------------------------------------
    def peer_stats(self) -> dict[str, dict]:
        """Per sender heard from: its counters and what it last announced.

        The counters are ``received``, ``rate_limited``, ``rejected``, ``bad_message`` and
        ``oversize``; then its last announced ``count`` and ``tips``, and ``author``: the
        author (hex key) of the checkpoints it gossips as their first sender, the member that
        peer runs as far as this node heard (``None`` until it gossiped one).
        """
        return {
            sender: {**peer.counters, "count": peer.tips[0] if peer.tips else None,
                     "tips": peer.tips[1] if peer.tips else None,
                     "author": peer.author.hex() if peer.author else None}
            for sender, peer in self._peers.items()
        }
