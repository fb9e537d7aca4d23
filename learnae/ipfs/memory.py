"""``memory``: a simulated IPFS network inside one process (unit tests, simulations of hundreds of nodes).

A :class:`MemoryNetwork` holds :class:`MemoryNode` s, the connections between them
and fault rules. Everything runs on the caller's asyncio event loop (no threads);
delays are ``loop.call_later`` / ``asyncio.sleep`` on the loop's clock. All
randomness comes from one ``random.Random(seed)`` owned by the network, drawn in
an order fixed by the calls made, so a run is reproducible from its seed.

The model, and where it differs from Kubo:

- Peer ids are the node names (``network.node("a").id == "a"``); unnamed nodes get
  ``"n0"``, ``"n1"``, ... Addresses are ``/memory/<id>/p2p/<id>``; :meth:`MemoryNode.connect`
  takes that form only (a well-formed Kubo multiaddr is refused with
  :class:`~learnae.errors.InvalidMultiaddr`, a malformed one as
  :func:`~learnae.ipfs.addr.check_multiaddr` says).
- Nodes talk only over connections made with ``connect`` (Kubo with ``Routing.Type =
  "none"``). A link is *live* when both ends run, neither is :meth:`~MemoryNetwork.down`
  and they are in the same partition group. Connections outlive partitions and
  ``down``: ``heal()`` / ``up()`` make them live again (Kubo would drop them).
- Pubsub floods like floodsub/gossipsub: the publisher sends to its peers that
  subscribe to the topic, and a subscribed node forwards to its own subscribed
  peers; a node that does not subscribe does not relay. Each hop is lost with
  the link's loss probability and takes the link's delay; a node delivers a
  message once, along the fastest path that survived (messages are deduplicated
  per node, as libp2p does by message id). Loss and delay are sampled, and the
  links' liveness read, when the message is published; a node that is down or
  closed when its copy arrives does not get it. The publisher gets its own
  message at once (Kubo does), even when it is down.
- ``cat`` finds the CID on the node itself or on any node it reaches over live
  links, any number of hops away (a simplification: bitswap with no routing asks
  direct peers only). The transfer takes twice the summed link delays of the
  fastest path and is never lost (bitswap runs over reliable streams). Fetched
  content is kept unpinned, so it can be served onwards, until
  :meth:`MemoryNode.collect_garbage`.
  With no holder reachable, ``cat`` waits for the network to change (an add,
  connect, heal, up) until its timeout.
- Storage is per object, not per block: a node holds whole files. Garbage collection drops every
  unpinned object at once, whatever its age (adds and fetches store an object whole, at one
  instant of the loop's clock, so no write is ever under way and no grace is needed), and takes
  no time. :meth:`MemoryNode.repo_bytes` is the sum of the stored objects' sizes.
- ``down(id)``: the node is cut off (sends and receives nothing) but keeps its
  content and subscriptions; ``up(id)`` reconnects it. ``close()`` removes the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator

from learnae.content import content_id, to_v1
from learnae.errors import InvalidMultiaddr, IpfsError, IpfsTimeout, NodeClosed, OversizeError
from learnae.ipfs.addr import check_multiaddr
from learnae.ipfs.base import (
    DEFAULT_GC_GRACE,
    SUBSCRIPTION_BUFFER_BYTES,
    GcStats,
    IpfsNode,
    PubsubMessage,
    SubscriptionBuffer,
    check_grace,
)

__all__ = ["MemoryNetwork", "MemoryNode", "SUBSCRIPTION_BUFFER_BYTES"]

_RuleKey = frozenset[str] | str | None  # a link {a, b}, every link of a node, or every link (None)


def _rule_key(a: str | None, b: str | None) -> _RuleKey:
    if a is None or b is None:
        return b if a is None else a
    return frozenset((a, b))


def _label(key: _RuleKey) -> str:
    if key is None:
        return "*"
    if isinstance(key, str):
        return f"{key}-*"
    return "-".join(sorted(key))


class MemoryNetwork:
    """Simulated nodes, their connections and the fault rules between them.

    Args:
        seed: seed of the network's random generator (message loss).

    Attributes:
        nodes: running nodes by peer id.
        counters: ``published`` messages, ``delivered`` (one per receiving node),
            ``lost`` (hops dropped by loss rules).
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = random.Random(seed)
        self.nodes: dict[str, MemoryNode] = {}
        self.counters: Counter[str] = Counter()
        self._names = itertools.count()
        self._group: dict[str, int] = {}  # peer id -> partition group; unlisted ids are group -1
        self._loss: dict[_RuleKey, float] = {}
        self._delay: dict[_RuleKey, float] = {}  # seconds
        self._where: dict[str, dict[str, None]] = {}  # CID -> ids of the nodes holding it
        self._change: asyncio.Event | None = None
        self._reach: dict[str, list[tuple[str, float]]] = {}  # reach(), until the links change

    # -- nodes --------------------------------------------------------------
    def node(self, name: str | None = None) -> MemoryNode:
        """Create and return a running node whose peer id is ``name`` (default ``"n<k>"``).

        Raises:
            ValueError: ``name`` is empty, holds ``/``, or names a running node.
        """
        if name is None:
            name = next(f"n{k}" for k in self._names if f"n{k}" not in self.nodes)
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"a memory node name is a non-empty string without '/', not {name!r}")
        if name in self.nodes:
            raise ValueError(f"a running node is already named {name!r}")
        node = self.nodes[name] = MemoryNode(self, name)
        return node

    # -- fault rules --------------------------------------------------------
    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes in different groups cannot exchange anything.

        Each group is an iterable of peer ids; the ids not listed form one more group
        together. Replaces the previous partition. Example: ``partition(["a", "b"], ["c"])``.

        Raises:
            TypeError: a group is a string (write ``["a"]``, not ``"a"``).
            ValueError: an id is in two groups.
        """
        placed: dict[str, int] = {}
        for number, group in enumerate(groups):
            if isinstance(group, str):
                raise TypeError(f"partition groups are lists of peer ids, not the string {group!r}")
            for peer in group:
                if placed.setdefault(peer, number) != number:
                    raise ValueError(f"peer {peer!r} is in two partition groups")
        self._group = placed
        self._links_changed()

    def heal(self) -> None:
        """Remove the partition (loss, delay and down nodes stay as they are)."""
        self._group = {}
        self._links_changed()

    def set_loss(self, p: float, a: str | None = None, b: str | None = None) -> None:
        """Drop each pubsub hop on link ``a``-``b`` with probability ``p``.

        ``a`` alone: every link of node ``a``; neither: every link. A link takes its
        own rule first, then the larger of its two nodes' rules, then the global one.
        ``set_loss(0)`` clears the global rule. Raises ValueError unless 0 <= p <= 1.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss is a probability between 0 and 1, not {p}")
        self._set_rule(self._loss, p, a, b)

    def set_delay(self, ms: float, a: str | None = None, b: str | None = None) -> None:
        """Make each hop on link ``a``-``b`` take ``ms`` milliseconds (same scoping as :meth:`set_loss`).

        Raises ValueError when ``ms`` is negative.
        """
        if ms < 0:
            raise ValueError(f"delay is a non-negative number of milliseconds, not {ms}")
        self._set_rule(self._delay, ms / 1000.0, a, b)

    def _set_rule(self, table: dict[_RuleKey, float], value: float, a: str | None, b: str | None) -> None:
        self._reach.clear()
        key = _rule_key(a, b)
        if key is None and not value:
            table.pop(None, None)
        else:
            table[key] = value

    def down(self, peer_id: str) -> None:
        """Cut node ``peer_id`` off: it sends and receives nothing; its content stays.

        Raises:
            KeyError: no running node has that id.
        """
        self._running(peer_id)._down = True
        self._links_changed()

    def up(self, peer_id: str) -> None:
        """Undo :meth:`down`: the node's connections are live again (unless partitioned)."""
        self._running(peer_id)._down = False
        self._links_changed()

    @property
    def rules(self) -> dict[str, object]:
        """The fault rules in force, JSON-ready.

        ``{"seed", "partition": [[ids]...], "loss": {link: p}, "delay_ms": {link: ms},
        "down": [ids]}``; a link is ``"a-b"``, ``"a-*"`` or ``"*"``.
        """
        groups: dict[int, list[str]] = {}
        for peer, number in self._group.items():
            groups.setdefault(number, []).append(peer)
        return {
            "seed": self.seed,
            "partition": [sorted(groups[n]) for n in sorted(groups)],
            "loss": {_label(k): p for k, p in self._loss.items()},
            "delay_ms": {_label(k): s * 1000.0 for k, s in self._delay.items()},
            "down": sorted(peer for peer, node in self.nodes.items() if node._down),
        }

    # -- internals ----------------------------------------------------------
    def _running(self, peer_id: str) -> MemoryNode:
        try:
            return self.nodes[peer_id]
        except KeyError:
            raise KeyError(f"no running memory node {peer_id!r}") from None

    def _rule(self, table: dict[_RuleKey, float], a: str, b: str) -> float:
        value = table.get(frozenset((a, b)))
        if value is None:
            ends = [table[x] for x in (a, b) if x in table]
            value = max(ends) if ends else table.get(None, 0.0)
        return value

    def _live(self, a: MemoryNode, b: MemoryNode) -> bool:
        """Whether the connection a-b carries anything now (both ends up, same group)."""
        return (not a._down and not b._down
                and self._group.get(a.id, -1) == self._group.get(b.id, -1))

    def _walk(self, src: MemoryNode, topic: str | None = None,
              lossy: bool = False) -> Iterator[tuple[MemoryNode, float]]:
        """Yield ``(node, seconds)`` for ``src`` and every node it reaches over live links.

        Nearest first by summed link delay (Dijkstra). With ``topic``, only nodes that
        subscribe to it are entered; with ``lossy``, each hop may be lost.
        """
        yield src, 0.0
        if src._down:
            return
        group, loss, delay = self._group, self._loss if lossy else {}, self._delay
        # With only a global rule (the usual case) skip the per-link lookup.
        loss_all = loss.get(None, 0.0) if loss.keys() <= {None} else None
        delay_all = delay.get(None, 0.0) if delay.keys() <= {None} else None
        if delay_all is not None and not loss_all and loss.keys() <= {None}:
            yield from self._breadth_first(src, topic, delay_all)
            return
        rng, counters = self.rng, self.counters
        best = {src.id: 0.0}
        done: set[str] = set()
        order = itertools.count()
        heap: list[tuple[float, int, MemoryNode]] = [(0.0, next(order), src)]
        while heap:
            t, _, u = heapq.heappop(heap)
            if u.id in done:
                continue
            done.add(u.id)
            if u is not src:
                yield u, t
            gu = group.get(u.id, -1)
            for v in u._peers.values():
                if v.id in done or v._down or group.get(v.id, -1) != gu:
                    continue
                if topic is not None and topic not in v._subs:
                    continue
                p = loss_all if loss_all is not None else self._rule(loss, u.id, v.id)
                if p and rng.random() < p:
                    counters["lost"] += 1
                    continue
                tv = t + (delay_all if delay_all is not None else self._rule(delay, u.id, v.id))
                if tv < best.get(v.id, float("inf")):
                    best[v.id] = tv
                    heapq.heappush(heap, (tv, next(order), v))

    def is_up(self, peer_id: str) -> bool:
        """Whether a node of that id runs and is not :meth:`down`."""
        node = self.nodes.get(peer_id)
        return node is not None and not node._down

    def neighbours(self, peer_id: str) -> list[str]:
        """Ids of the nodes ``peer_id`` has a live connection with now (``[]`` if it does not run).

        The synchronous form of :meth:`MemoryNode.peers`.
        """
        node = self.nodes.get(peer_id)
        if node is None:
            return []
        return [pid for pid, peer in node._peers.items() if self._live(node, peer)]

    def reach(self, peer_id: str) -> list[tuple[str, float]]:
        """Every node ``peer_id`` reaches over live links now, and the one-way seconds to it.

        ``(peer id, seconds)`` pairs, nearest first by summed link delay, ``peer_id`` itself
        first at 0 (only itself when it is down). Loss rules do not apply (see :meth:`spread`).
        Remembered until the links change (a partition, heal, down, up, connect, close, or a
        loss or delay rule), so looking again costs nothing.

        Raises:
            KeyError: no running node has that id.
        """
        found = self._reach.get(peer_id)
        if found is None:
            found = self._reach[peer_id] = [(n.id, t) for n, t in self._walk(self._running(peer_id))]
        return found

    def spread(self, peer_id: str) -> list[tuple[str, float]]:
        """The nodes a message flooded from ``peer_id`` reaches now, and when (seconds from now).

        As :meth:`MemoryNode.publish` floods, but through every node, not only a topic's
        subscribers: each hop is lost with its link's loss probability (drawn now), and a
        node is reached along the fastest path that survived. ``peer_id`` itself first, at 0.

        Raises:
            KeyError: no running node has that id.
        """
        if not self._loss:
            return self.reach(peer_id)
        return [(n.id, t) for n, t in self._walk(self._running(peer_id), lossy=True)]

    def _breadth_first(self, src: MemoryNode, topic: str | None, delay: float) -> Iterator[tuple[MemoryNode, float]]:
        """:meth:`_walk` when every link has the same delay and none loses anything.

        Breadth first: the order Dijkstra's walk gives then (first reached, first yielded),
        without its heap.
        """
        group = self._group
        seen = {src.id}
        level, t = [src], 0.0
        while level:
            t += delay  # summed hop by hop, as Dijkstra's walk sums (the same floats)
            below: list[MemoryNode] = []
            for u in level:
                gu = group.get(u.id, -1) if group else -1
                for v in u._peers.values():
                    if v.id in seen or v._down or (group and group.get(v.id, -1) != gu):
                        continue
                    if topic is not None and topic not in v._subs:
                        continue
                    seen.add(v.id)
                    below.append(v)
            for v in below:
                yield v, t
            level = below

    def _find(self, node: MemoryNode, cid: str) -> tuple[bytes, float] | None:
        """The content of ``cid`` and the one-way seconds to its nearest holder, or None."""
        if not self._where.get(cid):
            return None
        nodes = self.nodes
        for holder, t in self.reach(node.id):
            data = nodes[holder]._blocks.get(cid)
            if data is not None:
                return data, t
        return None

    def _links_changed(self) -> None:
        """Forget :meth:`reach`'s answers and wake every waiting ``cat`` (see :meth:`_changed`)."""
        self._reach.clear()
        self._changed()

    def _changed(self) -> None:
        """Wake every ``cat`` waiting for content to become reachable."""
        event, self._change = self._change, None
        if event is not None:
            event.set()

    def _change_event(self) -> asyncio.Event:
        """The event the next :meth:`_changed` sets; take it before looking, then wait on it."""
        if self._change is None:
            self._change = asyncio.Event()
        return self._change


class MemoryNode(IpfsNode):
    """One simulated node; create it with :meth:`MemoryNetwork.node`. See the module docstring."""

    def __init__(self, network: MemoryNetwork, peer_id: str):
        self.net = network
        self.id = peer_id
        self.closed = False
        self._down = False
        self._peers: dict[str, MemoryNode] = {}
        self._blocks: dict[str, bytes] = {}  # CIDv1 string -> file bytes
        self._pins: dict[str, None] = {}
        # topic -> subscription key -> weak reference; a topic is a key only while subscribed
        self._subs: dict[str, dict[int, weakref.ref[_Subscription]]] = {}
        self._sub_ids = itertools.count()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "down" if self._down else "up"
        return f"<MemoryNode {self.id} {state}, {len(self._peers)} peers, {len(self._blocks)} objects>"

    def _check_open(self) -> None:
        if self.closed:
            raise NodeClosed(f"memory node {self.id} is closed")

    # -- content ------------------------------------------------------------
    async def add(self, data: bytes) -> str:
        """Store ``data`` (bytes-like), pin it, and return :func:`~learnae.content.content_id`."""
        self._check_open()
        data = bytes(data)
        cid = content_id(data)
        self._store(cid, data)
        self._pins[cid] = None
        return cid

    def _store(self, cid: str, data: bytes) -> None:
        if cid not in self._blocks:
            self._blocks[cid] = data
            self.net._where.setdefault(cid, {})[self.id] = None
            self.net._changed()

    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Return the bytes of ``cid`` from this node or the nearest reachable holder.

        Args:
            cid: CIDv0 or CIDv1 string (:class:`~learnae.errors.InvalidCID` if it does not parse).
            timeout: seconds of the loop's clock; :class:`~learnae.errors.IpfsTimeout` when no
                holder becomes reachable, or the transfer does not finish, within it.
            max_size: :class:`~learnae.errors.OversizeError` for content larger than this many bytes.

        Raises:
            NodeClosed: the node is closed, before or while waiting.
        """
        self._check_open()
        key = to_v1(cid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._check_open()
            changed = self.net._change_event()
            found = self.net._find(self, key)
            if found is not None:
                data, one_way = found
                if max_size is not None and len(data) > max_size:
                    raise OversizeError(f"{key} is {len(data)} bytes, over the limit of {max_size}")
                if one_way:
                    if loop.time() + 2 * one_way > deadline:
                        await asyncio.sleep(max(0.0, deadline - loop.time()))
                        raise IpfsTimeout(f"the transfer of {key} did not finish within {timeout:g} s")
                    await asyncio.sleep(2 * one_way)
                    self._check_open()
                self._store(key, data)
                return data
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise IpfsTimeout(f"no peer served {key} within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def pin(self, cid: str, timeout: float = 30.0) -> None:
        """Pin ``cid``, fetching it first (as :meth:`cat`, within ``timeout`` s) when not here."""
        self._check_open()
        key = to_v1(cid)
        if key not in self._blocks:
            await self.cat(key, timeout=timeout)
        self._pins[key] = None

    async def unpin(self, cid: str) -> None:
        """Remove the pin on ``cid``; not pinned is not an error.

        The content stays until :meth:`collect_garbage`.
        """
        self._check_open()
        self._pins.pop(to_v1(cid), None)

    async def pins(self) -> set[str]:
        """The CIDs pinned here (CIDv1 base32)."""
        self._check_open()
        return set(self._pins)

    def has(self, cid: str) -> bool:
        """Whether this node stores ``cid`` (pinned or not). Not a coroutine."""
        self._check_open()
        return to_v1(cid) in self._blocks

    async def collect_garbage(self, *, grace: float = DEFAULT_GC_GRACE) -> GcStats:
        """Drop every unpinned object this node stores; see :meth:`IpfsNode.collect_garbage`.

        ``grace`` is checked, then not needed: objects are stored whole at one instant (see the
        module docstring), so every unpinned one goes. Counts are of objects (whole files), and
        ``seconds`` is 0 (no time passes on the loop's clock).

        Raises:
            ValueError: ``grace`` is negative.
            NodeClosed: the node is closed.
        """
        self._check_open()
        check_grace(grace)
        dropped = [cid for cid in self._blocks if cid not in self._pins]
        freed = sum(len(self._blocks[cid]) for cid in dropped)
        for cid in dropped:
            self._forget(cid)
        kept = sum(len(data) for data in self._blocks.values())
        return GcStats(len(dropped), freed, len(self._blocks), kept, 0.0)

    async def repo_bytes(self) -> int:
        """The bytes of the objects this node stores, pinned or not."""
        self._check_open()
        return sum(len(data) for data in self._blocks.values())

    def _forget(self, cid: str) -> None:
        del self._blocks[cid]
        holders = self.net._where.get(cid)
        if holders is not None:
            holders.pop(self.id, None)
            if not holders:
                del self.net._where[cid]

    # -- pubsub -------------------------------------------------------------
    async def publish(self, topic: str, data: bytes) -> None:
        """Flood ``data`` to the subscribers of ``topic`` this node reaches (see the module docstring)."""
        self._check_open()
        msg = PubsubMessage(self.id, bytes(data))
        self.net.counters["published"] += 1
        later: dict[float, list[MemoryNode]] = {}
        for node, t in self.net._walk(self, topic, lossy=True):
            if t > 0:
                later.setdefault(t, []).append(node)
            else:
                node._deliver(topic, msg)
        loop = asyncio.get_running_loop()
        for t, nodes in later.items():
            loop.call_later(t, _deliver_all, nodes, topic, msg)

    def receive(self, topic: str, sender: str, data: bytes) -> None:
        """Deliver a message to this node's subscriptions as if a peer had relayed it.

        ``sender`` is the message's origin: any id, running or not (gossipsub relays messages
        of origins this node never connected to). Not relayed further; for tests of what
        strangers and minted ids can do. Not a coroutine.

        Args:
            topic: the pubsub topic.
            sender: the origin peer id the subscribers see.
            data: the payload.

        Raises:
            NodeClosed: the node is closed.
        """
        self._check_open()
        self._deliver(topic, PubsubMessage(sender, bytes(data)))

    def _deliver(self, topic: str, msg: PubsubMessage) -> None:
        if self.closed or (self._down and msg.sender != self.id):
            return
        subs = self._subs.get(topic)
        if subs:
            self.net.counters["delivered"] += 1
            for ref in list(subs.values()):
                sub = ref()
                if sub is not None:
                    sub._put(msg)

    def subscribe(self, topic: str) -> _Subscription:
        """Subscribe to ``topic`` (this node then also relays it); see :meth:`IpfsNode.subscribe`."""
        self._check_open()
        key = next(self._sub_ids)
        sub = _Subscription(self, topic, key)
        # A subscription nobody holds any more is collected and unsubscribes itself.
        ref = weakref.ref(sub, lambda _ref: self._unsubscribe(topic, key))
        self._subs.setdefault(topic, {})[key] = ref
        return sub

    def _unsubscribe(self, topic: str, key: int) -> None:
        subs = self._subs.get(topic)
        if subs is not None:
            subs.pop(key, None)
            if not subs:
                del self._subs[topic]

    # -- peers --------------------------------------------------------------
    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """Connect to the node at ``/memory/<id>/p2p/<id>`` (at once: ``timeout`` is not needed).

        Raises:
            InvalidMultiaddr: ``multiaddr`` is not in that form.
            IpfsError: no running node has that id, it is this node, or it cannot be
                reached now (down, or across a partition).
        """
        self._check_open()
        parts = multiaddr.split("/") if isinstance(multiaddr, str) else []
        if not (len(parts) == 5 and parts[:2] == ["", "memory"] and parts[3] == "p2p"
                and parts[2] == parts[4] != ""):
            check_multiaddr(multiaddr)  # raises for text that is no multiaddr at all
            raise InvalidMultiaddr(f"{multiaddr!r} is not a memory address: "
                                   "memory nodes dial /memory/<id>/p2p/<id>")
        peer = self.net.nodes.get(parts[4])
        if peer is None:
            raise IpfsError(f"no running memory node {parts[4]!r} to connect to")
        if peer is self:
            raise IpfsError(f"memory node {self.id} cannot dial itself")
        if not self.net._live(self, peer):
            raise IpfsError(f"cannot reach {peer.id} from {self.id}: one is down or they are partitioned")
        self._peers[peer.id] = peer
        peer._peers[self.id] = self
        self.net._links_changed()

    async def peers(self) -> list[str]:
        """Peer ids of the connections that are live now (in the order they were made)."""
        self._check_open()
        return self.net.neighbours(self.id)

    async def addrs(self) -> list[str]:
        """``["/memory/<id>/p2p/<id>"]``."""
        self._check_open()
        return [f"/memory/{self.id}/p2p/{self.id}"]

    async def close(self) -> None:
        """Leave the network: drop connections and content, end subscriptions. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for peer in self._peers.values():
            peer._peers.pop(self.id, None)
        self._peers.clear()
        for cid in list(self._blocks):
            self._forget(cid)
        self._pins.clear()
        subs = [ref() for refs in self._subs.values() for ref in refs.values()]
        self._subs.clear()
        for sub in subs:
            if sub is not None:
                sub._end()
        if self.net.nodes.get(self.id) is self:
            del self.net.nodes[self.id]
        self.net._links_changed()


class _Subscription(AsyncIterator[PubsubMessage]):
    """Messages of one topic; iterate with ``async for``; ``aclose()`` unsubscribes.

    Attributes:
        buffer: what the reader has not taken yet, bounded in bytes (a
            :class:`~.base.SubscriptionBuffer`, as on the embedded node).
        dropped: messages discarded because they did not fit in it.
    """

    def __init__(self, node: MemoryNode, topic: str, key: int):
        self.node, self.topic, self.key = node, topic, key
        self.buffer = SubscriptionBuffer()

    @property
    def dropped(self) -> int:
        """Messages discarded because they did not fit in :attr:`buffer`."""
        return self.buffer.dropped

    def _put(self, msg: PubsubMessage) -> None:
        self.buffer.put(msg)

    def _end(self) -> None:
        self.buffer.end()

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        return await self.buffer.get()

    async def aclose(self) -> None:
        self.node._unsubscribe(self.topic, self.key)
        self._end()


def _deliver_all(nodes: list[MemoryNode], topic: str, msg: PubsubMessage) -> None:
    for node in nodes:
        node._deliver(topic, msg)
