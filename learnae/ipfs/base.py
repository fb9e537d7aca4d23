"""The ``IpfsNode`` interface that every learnae role talks to.

Three implementations stand behind it: ``embedded`` (Kubo inside the process), ``rpc``
(a Kubo daemon's RPC API) and ``memory`` (a simulated network for unit tests and large
simulations).

Conventions shared by all of them:

- CIDs are strings. :meth:`IpfsNode.add` returns CIDv1 base32 (``bafy...``) of the
  DAG that Kubo's default ``ipfs add`` builds (dag-pb, 256 KiB chunks, balanced
  layout), so the same bytes get the same CID on every implementation.
- ``cat`` accepts CIDv0 or CIDv1 and always has a timeout; a CID nobody serves
  raises :class:`~learnae.errors.IpfsTimeout` within it.
- Pubsub messages arrive as :class:`PubsubMessage` ``(sender, data)`` where ``sender``
  is the publishing peer's id. A node also receives its own messages
  (Kubo's behaviour); callers that do not want them compare ``sender`` to ``id``.
  ``sender`` is the message's *origin* (gossipsub relays messages, and signs them with the
  origin's key); no implementation tells which connection delivered a message.
- A subscription holds what its reader has not taken yet in a :class:`SubscriptionBuffer`,
  bounded in bytes (:data:`SUBSCRIPTION_BUFFER_BYTES`): a reader that falls behind loses the
  oldest messages (counted), never the process's memory.

Garbage collection. Unpinning frees no disk: the blocks stay in the repository until a
collection removes them. :meth:`IpfsNode.collect_garbage` removes every stored block that no pin
needs (pinned, or inside a pinned file), except those written less than ``grace`` seconds ago,
so that the blocks of a fetch still under way survive. :meth:`IpfsNode.repo_bytes` measures the
repository. Each backend says how it collects: the embedded one sweeps Kubo's block files itself
(its library exports no collection), the rpc one asks the daemon (``repo/gc``), the memory one
drops unpinned objects.

:class:`ForwardingNode` passes every call to an inner node: a layer that changes a few calls (the
fault layer, the simulator's view of a node) subclasses it and overrides only those.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import NamedTuple, Protocol

SUBSCRIPTION_BUFFER_BYTES = 32 << 20
"""Bytes of messages one subscription holds for its reader (32 MiB: 32 of gossipsub's largest
messages); beyond it the oldest are dropped."""
MESSAGE_OVERHEAD = 256
"""Bytes a buffered message counts for besides its payload and sender id (the Python objects
around them), so that a flood of empty messages is bounded too."""
DEFAULT_GC_GRACE = 5.0
"""Seconds a block written by a fetch is safe from :meth:`IpfsNode.collect_garbage` (5 s).

Adds and pins are safe from a collection whatever their age (each backend makes them wait for
each other). A fetch (``cat``) stores blocks unpinned: the grace keeps those of a fetch under way
or just ended, for a caller that pins or fetches them again at once, and costs at most what
arrives in 5 s. A block removed under a fetch is fetched again from the peers."""


def check_grace(grace: float) -> float:
    """Return ``grace`` (seconds) as a float; ValueError unless it is a number >= 0."""
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise ValueError(f"grace is a number of seconds >= 0, not {grace!r}")
    return float(grace)


class Connection(NamedTuple):
    """One open connection to a peer, as :meth:`IpfsNode.connections` lists it.

    Attributes:
        peer: the peer's id.
        addr: the remote multiaddr of the connection (``.../p2p-circuit`` when relayed).
        relayed: the connection runs through a relay (docs/design.md, "Members behind NAT").
    """

    peer: str
    addr: str
    relayed: bool


def is_relayed(multiaddr: str) -> bool:
    """Whether ``multiaddr`` goes through a circuit relay (it has a ``/p2p-circuit`` part)."""
    return "/p2p-circuit" in multiaddr


class GcStats(NamedTuple):
    """What one :meth:`IpfsNode.collect_garbage` did.

    Attributes:
        blocks_removed: blocks removed (objects, for the memory backend).
        bytes_freed: bytes of the blocks removed.
        blocks_kept: blocks left in the repository (pinned, needed by a pin, or in the grace).
        bytes_kept: bytes of the blocks left.
        seconds: wall time the collection took, from when it had the repository to itself.
    """

    blocks_removed: int
    bytes_freed: int
    blocks_kept: int
    bytes_kept: int
    seconds: float


class PubsubMessage(NamedTuple):
    """One pubsub message: ``sender`` is a peer id string, ``data`` the payload bytes."""

    sender: str
    data: bytes


class SubscriptionBuffer:
    """The messages of one subscription its reader has not taken yet, bounded in bytes.

    A message counts ``len(data) + len(sender) + MESSAGE_OVERHEAD`` bytes. When one does not
    fit, the oldest are dropped until it does (the reader gets the freshest; gossip protocols
    recover what is lost); one larger than the whole bound is dropped itself. Every dropped
    message is counted (:attr:`dropped`, :attr:`dropped_bytes`). Use from the event loop's
    thread only (backends with threads hand messages over with ``call_soon_threadsafe``).

    Args:
        max_bytes: the bound; default :data:`SUBSCRIPTION_BUFFER_BYTES` (read when made).

    Attributes:
        max_bytes: the bound, bytes.
        size: bytes buffered now (as counted above).
        dropped, dropped_bytes: messages dropped so far, and their counted bytes.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = SUBSCRIPTION_BUFFER_BYTES if max_bytes is None else max_bytes
        self.size = 0
        self.dropped = self.dropped_bytes = 0
        self._items: deque[tuple[PubsubMessage, int]] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, msg: PubsubMessage) -> bool:
        """Buffer ``msg``, dropping the oldest messages as needed.

        Returns:
            True if ``msg`` was buffered; False if it was dropped itself (larger than the
            bound) or the buffer has ended.
        """
        if self._ended:
            return False
        cost = len(msg.data) + len(msg.sender) + MESSAGE_OVERHEAD
        if cost > self.max_bytes:
            self._drop(cost)
            return False
        while self.size + cost > self.max_bytes:
            _, old = self._items.popleft()
            self.size -= old
            self._drop(old)
        self._items.append((msg, cost))
        self.size += cost
        self._ready.set()
        return True

    def _drop(self, cost: int) -> None:
        self.dropped += 1
        self.dropped_bytes += cost

    def end(self, error: BaseException | None = None) -> None:
        """End the buffer: no more messages are taken.

        The reader gets those buffered, then ``error`` once (if given), then the end. Later
        calls and later messages are ignored.

        Args:
            error: raised once to the reader after the buffered messages, or None.
        """
        if not self._ended:
            self._ended, self._error = True, error
            self._ready.set()

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` was called."""
        return self._ended

    async def get(self) -> PubsubMessage:
        """The oldest buffered message, waiting for one.

        Raises:
            StopAsyncIteration: the buffer ended and is empty.
            BaseException: the ``error`` given to :meth:`end`, once, when the buffer is empty.
        """
        while not self._items:
            if self._ended:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        msg, cost = self._items.popleft()
        self.size -= cost
        return msg


class Subscription(Protocol):
    """What :meth:`IpfsNode.subscribe` returns: messages of one topic, until closed.

    Iterate it with ``async for`` (each item a :class:`PubsubMessage`); :meth:`aclose`
    unsubscribes and ends the iteration. Every backend's subscription satisfies this, and so
    does an async generator of :class:`PubsubMessage`.
    """

    def __aiter__(self) -> AsyncIterator[PubsubMessage]: ...

    def __anext__(self) -> Awaitable[PubsubMessage]: ...

    def aclose(self) -> Awaitable[None]:
        """Unsubscribe: the iteration ends and no more messages are buffered."""
        ...


class IpfsNode(abc.ABC):
    """An IPFS node as learnae uses it. All methods are coroutines unless noted.

    Errors: every method raises :class:`~learnae.errors.NodeClosed` after :meth:`close`,
    :class:`~learnae.errors.IpfsTimeout` when a timeout expires and
    :class:`~learnae.errors.IpfsError` for other failures.

    Subclasses that change only some calls of another node subclass :class:`ForwardingNode`.
    """

    #: the node's peer id (``Qm...`` or ``12D3...``), set once the node runs
    id: str

    @abc.abstractmethod
    async def add(self, data: bytes) -> str:
        """Add ``data`` as a file, pin it, and return its CIDv1 base32 string."""

    @abc.abstractmethod
    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Return the bytes of file ``cid``, fetching from peers when needed.

        Args:
            cid: CIDv0 or CIDv1 string (:class:`~learnae.errors.InvalidCID` if it does not parse).
            timeout: seconds; :class:`~learnae.errors.IpfsTimeout` when exceeded.
            max_size: refuse (:class:`~learnae.errors.OversizeError`) content larger than this
                many bytes, where the implementation can tell.
        """

    @abc.abstractmethod
    async def pin(self, cid: str, timeout: float = 60.0) -> None:
        """Pin ``cid`` recursively so garbage collection keeps it, fetching it first if needed."""

    @abc.abstractmethod
    async def unpin(self, cid: str) -> None:
        """Remove the pin on ``cid``; unpinning what is not pinned is not an error.

        Removes it whichever CID version it was pinned under: Kubo keeps a pin per CID string,
        ``add`` pins the CIDv0 and a :meth:`pin` of the CIDv1 is a second pin.
        """

    @abc.abstractmethod
    async def pins(self) -> set[str]:
        """The CIDs (CIDv1 base32) this node pins recursively.

        That is what :meth:`add` and :meth:`pin` pinned and :meth:`unpin` has not unpinned since.

        The embedded backend lists the blocks inside those files too (Kubo's indirect pins: its
        library lists every pin without its type), so test membership, not equality.
        """

    @abc.abstractmethod
    async def collect_garbage(self, *, grace: float = DEFAULT_GC_GRACE) -> GcStats:
        """Remove every stored block that no pin needs, except those written in the last ``grace`` s.

        A block is needed when it is pinned or inside a pinned file. Adds and pins under way are
        waited for (their blocks are kept); an unpinned file's blocks go, own or fetched.

        Args:
            grace: seconds; blocks written less long ago are kept (:data:`DEFAULT_GC_GRACE`).
                Backends that cannot tell a block's age say so.

        Returns:
            What was removed and kept (:class:`GcStats`).

        Raises:
            ValueError: ``grace`` is negative.
        """

    @abc.abstractmethod
    async def repo_bytes(self) -> int:
        """Bytes the node's repository takes now (blocks and the backend's own records)."""

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on pubsub ``topic`` to the peers subscribed to it."""

    @abc.abstractmethod
    def subscribe(self, topic: str) -> Subscription:
        """Subscribe to ``topic``; iterate the returned :class:`Subscription` for messages.

        Not a coroutine: the subscription exists when this returns, so a message
        published afterwards is delivered. Close it with ``aclose()`` (or by
        leaving an ``async for`` loop over it and letting it be collected).
        """

    @abc.abstractmethod
    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """Connect to the peer at ``multiaddr`` (it must end in ``/p2p/<peer id>``).

        Raises InvalidMultiaddr for text that does not parse, IpfsTimeout after ``timeout`` s.
        """

    @abc.abstractmethod
    async def peers(self) -> list[str]:
        """Return the peer ids this node is connected to."""

    @abc.abstractmethod
    async def addrs(self) -> list[str]:
        """Return this node's listen multiaddrs, each ending in ``/p2p/<id>``."""

    async def connections(self) -> list[Connection]:
        """Return this node's open connections, one per peer (a direct one where there is one).

        This default reports every peer of :meth:`peers` as directly connected, without an
        address: right for backends that have no relays (the memory backend).
        """
        return [Connection(peer, "", False) for peer in await self.peers()]

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the node and release its threads, ports and repo lock. Idempotent."""

    async def __aenter__(self) -> IpfsNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ForwardingNode(IpfsNode):
    """A node that passes every call to ``inner``: subclass it and override what changes.

    Args:
        inner: the node the calls go to; :meth:`close` closes it.

    Attributes:
        inner: that node.
        id: ``inner``'s peer id, as it was when this node was made.
    """

    def __init__(self, inner: IpfsNode):
        self.inner = inner
        self.id = inner.id

    async def add(self, data: bytes) -> str:
        """As ``inner``'s :meth:`~IpfsNode.add`."""
        return await self.inner.add(data)

    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """As ``inner``'s :meth:`~IpfsNode.cat`."""
        return await self.inner.cat(cid, timeout=timeout, max_size=max_size)

    async def pin(self, cid: str, timeout: float = 60.0) -> None:
        """As ``inner``'s :meth:`~IpfsNode.pin`."""
        await self.inner.pin(cid, timeout=timeout)

    async def unpin(self, cid: str) -> None:
        """As ``inner``'s :meth:`~IpfsNode.unpin`."""
        await self.inner.unpin(cid)

    async def pins(self) -> set[str]:
        """As ``inner``'s :meth:`~IpfsNode.pins`."""
        return await self.inner.pins()

    async def collect_garbage(self, *, grace: float = DEFAULT_GC_GRACE) -> GcStats:
        """As ``inner``'s :meth:`~IpfsNode.collect_garbage`."""
        return await self.inner.collect_garbage(grace=grace)

    async def repo_bytes(self) -> int:
        """As ``inner``'s :meth:`~IpfsNode.repo_bytes`."""
        return await self.inner.repo_bytes()

    async def publish(self, topic: str, data: bytes) -> None:
        """As ``inner``'s :meth:`~IpfsNode.publish`."""
        await self.inner.publish(topic, data)

    def subscribe(self, topic: str) -> Subscription:
        """As ``inner``'s :meth:`~IpfsNode.subscribe`."""
        return self.inner.subscribe(topic)

    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """As ``inner``'s :meth:`~IpfsNode.connect`."""
        await self.inner.connect(multiaddr, timeout=timeout)

    async def peers(self) -> list[str]:
        """As ``inner``'s :meth:`~IpfsNode.peers`."""
        return await self.inner.peers()

    async def addrs(self) -> list[str]:
        """As ``inner``'s :meth:`~IpfsNode.addrs`."""
        return await self.inner.addrs()

    async def connections(self) -> list[Connection]:
        """As ``inner``'s :meth:`~IpfsNode.connections`."""
        return await self.inner.connections()

    async def close(self) -> None:
        """Close ``inner``."""
        await self.inner.close()
