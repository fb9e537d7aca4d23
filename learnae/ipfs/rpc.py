"""``rpc``: a Kubo daemon driven through its RPC API (https://docs.ipfs.tech/reference/kubo/rpc/).

For people who already run ``ipfs daemon``. Every call is an HTTP POST to
``<url>/api/v0/<command>`` made with aiohttp on the caller's event loop. Kubo
0.11 and later exchange pubsub topics and payloads multibase-encoded
(:func:`encode_topic`, :func:`decode_message`); ``ipfshttpclient`` predates that
and refuses Kubo newer than 0.8, so it is not used. Pubsub needs the daemon to
run with ``--enable-pubsub-experiment`` (or ``Pubsub.Enabled = true``).

Privacy: the daemon's own configuration decides whether it is private, and learnae does not
change it. So :meth:`RpcNode.open` checks what the RPC API shows of it
(:func:`find_exposures`: ``config/show``, ``swarm/addrs/listen``, ``swarm/peers``) and refuses,
with a :class:`~learnae.errors.ConfigError` listing each failing setting and the ``ipfs``
command that fixes it, a daemon that:

- has public bootstrap peers (``Bootstrap``, ``"auto"`` included), mDNS on, a ``Routing.Type``
  other than ``none``, AutoConf on (Kubo 0.37 and later) or NAT port mapping on;
- listens on QUIC, WebTransport or WebRTC-Direct, which Kubo never runs in a private network
  (so such a daemon has no swarm key);
- is connected to peers at public addresses (not private, loopback or link-local; names and
  relayed addresses count as public).

Kubo's RPC API does not tell whether the daemon has a swarm key (``swarm.key``; only the
daemon's startup banner says so), so that part cannot be checked: a daemon that passes is used
with a warning saying so. ``allow_shared=True`` (``learnae node run --allow-shared-daemon``)
uses a daemon as it is and logs what is shared: every file the node adds can be fetched by any
IPFS peer, and the swarm's pubsub topics are open to any peer.

Garbage collection is the daemon's own (``repo/gc``, :meth:`RpcNode.collect_garbage`): Kubo makes
it wait for adds and pins under way, but it has no grace: every unpinned block goes, however
new. Repository figures come from ``repo/stat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multiformats import CID, multibase

from learnae.content import file_cid, parse_cid, to_v1
from learnae.errors import (
    ConfigError,
    InvalidCID,
    IpfsError,
    IpfsTimeout,
    NodeClosed,
    OversizeError,
)
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

__all__ = ["RpcNode", "Exposure", "find_exposures", "encode_topic", "decode_message",
           "gc_removed", "CALL_TIMEOUT", "GC_TIMEOUT", "SUBSCRIPTION_BUFFER_BYTES",
           "ALLOW_SHARED_OPTION"]

log = logging.getLogger(__name__)

#: seconds an RPC call (other than ``cat``, pubsub streams and ``repo/gc``) may take
CALL_TIMEOUT = 60.0
#: seconds the daemon's garbage collection (``repo/gc``) may take
GC_TIMEOUT = 600.0
_MIN_KUBO = (0, 11)  # multibase pubsub topics
_CONNECT_S = 10.0  # seconds to open the TCP connection to the API
#: the ``learnae node run`` option that uses a daemon which is not private as it is
ALLOW_SHARED_OPTION = "--allow-shared-daemon"
_AUTOCONF_KUBO = (0, 37)  # the first Kubo with AutoConf, on by default
_PUBLIC_TRANSPORTS = frozenset({"quic", "quic-v1", "webtransport", "webrtc-direct"})
_SHARED = ("every checkpoint and data chunk the node adds can be fetched by any IPFS peer, and the"
           " swarm's pubsub topics are open to any peer that subscribes")


def encode_topic(topic: str) -> str:
    """A pubsub topic as Kubo's RPC API takes it: multibase base64url (``u`` prefix, no padding).

    Example: ``encode_topic("learnae/x") == "ubGVhcm5hZS94"``.
    """
    return multibase.encode(topic.encode("utf-8"), "base64url")


def decode_message(line: bytes | str) -> PubsubMessage:
    """Decode one line of ``/api/v0/pubsub/sub`` output.

    Kubo prints one JSON object per message, e.g.
    ``{"from":"12D3KooW...","data":"ubmFtZSBwdWJzdWIgdGVzdCAyCg","seqno":"uFxhdm2UVf2Y","topicIDs":["uaGVsbG9kYXduZ3Jw"]}``;
    ``from`` is the sender's peer id, ``data`` the payload in multibase (absent when empty).

    Raises:
        IpfsError: the line is not such an object.
    """
    try:
        obj = json.loads(line)
        sender = obj["from"]
        data = obj.get("data") or ""
        if not isinstance(sender, str) or not isinstance(data, str):
            raise ValueError("'from' and 'data' must be strings")
        return PubsubMessage(sender, multibase.decode(data) if data else b"")
    except (KeyError, TypeError, ValueError) as exc:
        raise IpfsError(f"not a Kubo pubsub message ({exc}): {str(line)[:200]}") from exc


def gc_removed(lines: Iterable[bytes | str]) -> list[str]:
    """The CIDs a ``/api/v0/repo/gc?stream-errors=true`` answer says were removed.

    Kubo writes one JSON object per line: ``{"Key":{"/":"bafk..."}}`` for each removed block,
    ``{"Key":null,"Error":"..."}`` for each failure. Blank lines are skipped.

    Raises:
        IpfsError: a line is an error (the reason gives the first three and how many blocks were
            removed meanwhile), or is not such an object.
    """
    removed: list[str] = []
    errors: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if obj.get("Error"):
                errors.append(str(obj["Error"]))
                continue
            removed.append(to_v1(obj["Key"]["/"]))
        except (KeyError, TypeError, ValueError, InvalidCID) as exc:
            raise IpfsError(f"not a line of Kubo's repo/gc answer ({exc}): {str(line)[:200]}") from None
    if errors:
        raise IpfsError(f"Kubo's garbage collection failed {len(errors)} times (it removed"
                        f" {len(removed)} blocks): {'; '.join(errors[:3])}")
    return removed


def _cid_forms(cid: CID) -> list[str]:
    """``cid`` as CIDv1 base32 and, when it has one (dag-pb over sha2-256), as CIDv0."""
    forms = [to_v1(cid)]
    with contextlib.suppress(ValueError):
        forms.append(str(cid.set(version=0, base="base58btc")))
    return forms


def _flag(value: bool) -> str:
    return "true" if value else "false"


# -- privacy ------------------------------------------------------------------
@dataclass(frozen=True)
class Exposure:
    """One way a Kubo daemon reaches beyond a private swarm.

    Attributes:
        setting: the config key (``"Routing.Type"``), or ``"connected peers"``.
        found: what the daemon has, and what that does.
        fix: the command(s) that change it.
    """

    setting: str
    found: str
    fix: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.found}; fix: {self.fix}"


def find_exposures(config: Mapping[str, Any], listen: Iterable[str], peers: Iterable[str],
                   version: tuple[int, ...]) -> list[Exposure]:
    """What in a daemon's state reaches beyond a private swarm (the module docstring's list).

    Args:
        config: the daemon's config (``config/show``); a missing key has Kubo's default.
        listen: its listen addresses (``swarm/addrs/listen``).
        peers: the addresses of its connected peers (``swarm/peers``).
        version: its Kubo version as numbers, e.g. ``(0, 38)``.

    Returns:
        One :class:`Exposure` per failing check, in a fixed order; empty for a daemon that
        passes them all.
    """
    def get(path: str, default: Any) -> Any:
        """The value at dotted ``path`` in ``config`` (JSON), ``default`` when absent or null."""
        value: Any = config
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return default if value is None else value

    found = []
    bootstrap = [a for a in get("Bootstrap", []) if a == "auto" or _public(a)]
    if bootstrap:
        found.append(Exposure("Bootstrap", f"{_few(bootstrap)}: it dials the public IPFS network"
                              " at start", "ipfs bootstrap rm --all"))
    if get("Discovery.MDNS.Enabled", True) is not False:
        found.append(Exposure("Discovery.MDNS.Enabled", "true: it announces itself to every host"
                              " of the local network (mDNS)",
                              "ipfs config --json Discovery.MDNS.Enabled false"))
    routing = get("Routing.Type", "auto")
    if routing != "none":
        found.append(Exposure("Routing.Type", f"{routing!r}: it announces and looks up content in"
                              " the public DHT or HTTP routers", "ipfs config Routing.Type none"))
    if version >= _AUTOCONF_KUBO and get("AutoConf.Enabled", True) is not False:
        found.append(Exposure("AutoConf.Enabled", "true: it fetches bootstrap peers and routers"
                              " from conf.ipfs-mainnet.org", "ipfs config profile apply"
                              " autoconf-off (AutoConf off, and the fields it filled emptied)"))
    if get("Swarm.DisableNatPortMap", False) is not True:
        found.append(Exposure("Swarm.DisableNatPortMap", "false: it asks the router (UPnP,"
                              " NAT-PMP) to open its port to the internet",
                              "ipfs config --json Swarm.DisableNatPortMap true"))
    foreign = [a for a in listen if _PUBLIC_TRANSPORTS & set(a.split("/"))]
    if foreign:
        kinds = sorted({p for a in foreign for p in a.split("/") if p in _PUBLIC_TRANSPORTS})
        found.append(Exposure(
            "Swarm.Transports.Network",
            f"it listens on {', '.join(kinds)} ({_few(foreign)}), which Kubo never runs in a"
            " private network: it has no swarm key",
            "ipfs config --json Swarm.Transports.Network.QUIC false, the same for WebTransport"
            " and WebRTCDirect, and the swarm key in $IPFS_PATH/swarm.key"))
    outside = [a for a in peers if _public(a)]
    if outside:
        found.append(Exposure(
            "connected peers",
            f"{len(outside)} peers at public addresses ({_few(outside)}): a private swarm's"
            " daemon reaches only its members",
            "the swarm key in $IPFS_PATH/swarm.key and a restart (if these are members across"
            f" the internet, {ALLOW_SHARED_OPTION})"))
    return found


def _public(multiaddr: str) -> bool:
    """Whether ``multiaddr`` is outside private, loopback and link-local networks.

    A name (``/dns4``, ``/dnsaddr``) or a relayed address (``/p2p-circuit``) counts as public.
    """
    parts = multiaddr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6") or "p2p-circuit" in parts:
        return True
    try:
        return ipaddress.ip_address(parts[2]).is_global
    except ValueError:
        return True


def _few(items: list[str]) -> str:
    shown = ", ".join(repr(a) for a in items[:2])
    return shown + (f" and {len(items) - 2} more" if len(items) > 2 else "")


def _refusal(url: str, found: list[Exposure]) -> str:
    lines = "".join(f"\n  - {e}" for e in found)
    return (f"the Kubo daemon at {url} is not set up for a private swarm (learnae leaves its config"
            f" as it is):{lines}\nThen restart it with the swarm's key: copy the invite's swarm key"
            " to $IPFS_PATH/swarm.key and run `LIBP2P_FORCE_PNET=1 ipfs daemon"
            " --enable-pubsub-experiment` (Kubo's RPC API does not tell whether a daemon has a"
            " swarm key, so learnae cannot check that). To use the daemon as it is, pass"
            f" {ALLOW_SHARED_OPTION}: then {_SHARED}.")


class RpcNode(IpfsNode):
    """A Kubo daemon seen through its RPC API. Create with :meth:`open`.

    Attributes:
        url: the API's base URL, e.g. ``"http://127.0.0.1:5001"``.
        id: the daemon's peer id.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession, *, owns_session: bool):
        self.url = url.rstrip("/")
        self.id = ""
        self._session = session
        self._owns_session = owns_session
        self._closed = False
        self._subs: weakref.WeakSet[_Subscription] = weakref.WeakSet()

    @classmethod
    async def open(cls, url: str = "http://127.0.0.1:5001", *,
                   session: aiohttp.ClientSession | None = None,
                   allow_shared: bool = False) -> RpcNode:
        """Connect to the daemon at ``url`` and check that it is private.

        Learns the daemon's peer id (``/api/v0/id``) and version, then checks its config (see
        the module docstring).

        Args:
            url: the RPC API's address (Kubo's ``Addresses.API``, as http://host:port).
            session: an aiohttp session to use; by default the node makes its own and
                closes it in :meth:`close`.
            allow_shared: use a daemon that is not set up for a private swarm, or whose config
                cannot be read, as it is (a warning says what is shared).

        Raises:
            IpfsError: nothing answers at ``url``, it is not a Kubo RPC API, or the Kubo
                is older than 0.11. The reason names the URL.
            ConfigError: unless ``allow_shared``: the daemon is not set up for a private swarm
                (the reason lists each failing setting and the command that fixes it), or its
                config cannot be read.
        """
        node = cls(url, session or aiohttp.ClientSession(), owns_session=session is None)
        try:
            node.id = str((await node._json("id")).get("ID") or "")
            if not node.id:
                raise IpfsError(f"{node.url} answered id without a peer id: is it a Kubo RPC API?")
            version = await node.version()
            numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
            if len(numbers) == 2 and numbers < _MIN_KUBO:
                raise IpfsError(f"the Kubo at {node.url} is version {version}; learnae needs 0.11"
                                " or newer (multibase pubsub topics)")
            await node._check_private(allow_shared)
        except BaseException:
            await node.close()
            raise
        return node

    async def exposures(self) -> list[Exposure]:
        """What makes the daemon reach beyond a private swarm (:func:`find_exposures`).

        Read from its ``config/show``, ``swarm/addrs/listen``, ``swarm/peers`` and ``version``.

        Raises:
            IpfsError: the daemon does not answer one of them (its ``API.Authorizations`` may
                not allow it).
        """
        config = await self._json("config/show")
        listen = (await self._json("swarm/addrs/listen")).get("Strings") or []
        peers = (await self._json("swarm/peers")).get("Peers") or []
        version = tuple(int(n) for n in re.findall(r"\d+", await self.version())[:2])
        addrs = [str(p.get("Addr", "")) for p in peers if isinstance(p, dict)]
        return find_exposures(config, [a for a in listen if isinstance(a, str)], addrs, version)

    async def _check_private(self, allow_shared: bool) -> None:
        try:
            found = await self.exposures()
        except IpfsError as exc:
            if not allow_shared:
                raise ConfigError(
                    f"cannot read the config of the Kubo at {self.url} to check that it is private"
                    f" ({exc.reason}); let its API.Authorizations allow config/show,"
                    f" swarm/addrs/listen and swarm/peers, or pass {ALLOW_SHARED_OPTION} to use it"
                    " unchecked") from None
            log.warning("using the Kubo at %s unchecked (%s): if it is not private, %s", self.url,
                        exc.reason, _SHARED)
            return
        if found and not allow_shared:
            raise ConfigError(_refusal(self.url, found))
        if found:
            log.warning("using the Kubo at %s as it is, shared beyond the swarm (%s): %s", self.url,
                        "; ".join(str(e) for e in found), _SHARED)
        else:
            log.warning("the Kubo at %s has no public bootstrap peers, mDNS, routing, AutoConf,"
                        " port mapping, QUIC or WebRTC listeners or public peers, but its RPC API"
                        " does not tell whether the daemon has the swarm's key: start it with"
                        " LIBP2P_FORCE_PNET=1 and the swarm key in $IPFS_PATH/swarm.key", self.url)

    def __repr__(self) -> str:
        return f"<RpcNode {self.id or '?'} at {self.url}{' closed' if self._closed else ''}>"

    # -- HTTP ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise NodeClosed(f"the RPC node for {self.url} is closed")

    @contextlib.asynccontextmanager
    async def _post(self, command: str, params: Iterable[tuple[str, str]] = (), *,
                    data: aiohttp.FormData | None = None, timeout: float | None = CALL_TIMEOUT,
                    timeout_reason: str | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``/api/v0/<command>``; yield the response once it answered 200.

        Raises IpfsError for other statuses (with Kubo's message) and for connection
        failures, IpfsTimeout (with ``timeout_reason``) after ``timeout`` seconds in all.
        """
        self._check_open()
        endpoint = f"{self.url}/api/v0/{command}"
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=_CONNECT_S)
        try:
            async with self._session.post(endpoint, params=list(params), data=data, timeout=limits) as resp:
                if resp.status != 200:
                    raise IpfsError(await self._failure(command, resp))
                yield resp
        except TimeoutError:
            raise IpfsTimeout(timeout_reason or f"the Kubo at {self.url} did not answer {command} "
                              f"within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise IpfsError(f"no Kubo RPC API answers at {self.url} ({command}): {exc}; is `ipfs daemon` "
                            "running there?") from exc

    async def _failure(self, command: str, resp: aiohttp.ClientResponse) -> str:
        text = (await resp.text(errors="replace")).strip()[:500]
        with contextlib.suppress(ValueError, AttributeError):
            text = json.loads(text).get("Message") or text
        if resp.status in (404, 405):
            return f"{self.url} has no Kubo RPC command {command} (HTTP {resp.status}): {text}"
        return f"Kubo {command} failed (HTTP {resp.status}): {text}"

    async def _json(self, command: str, params: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
        async with self._post(command, params) as resp:
            body = await resp.text(errors="replace")
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise IpfsError(f"{self.url} answered {command} with something that is not Kubo's JSON: {body[:200]!r}")
        return value

    @staticmethod
    def _file(data: bytes) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file", bytes(data), filename="file", content_type="application/octet-stream")
        return form

    # -- content ------------------------------------------------------------
    async def add(self, data: bytes, *, cid_version: int = 0, raw_leaves: bool | None = None,
                  pin: bool = True) -> str:
        """Add ``data`` as a file (``/api/v0/add``) and return its CID as CIDv1 base32.

        Args:
            data: the file's bytes.
            cid_version: as ``ipfs add --cid-version`` (0 or 1); the default, 0, gives the
                CID :func:`~learnae.content.content_id` predicts.
            raw_leaves: as ``ipfs add --raw-leaves``; None (the default) for Kubo's default
                for ``cid_version`` (raw leaves with CIDv1 only).
            pin: pin the file (the default).

        Raises:
            IpfsError: Kubo refused, or built a different DAG than Kubo's defaults would
                (the daemon's ``Import`` config changes them); the reason says which.
        """
        params = [("quiet", "true"), ("pin", _flag(pin)), ("cid-version", str(cid_version)),
                  ("chunker", "size-262144")]
        if raw_leaves is not None:
            params.append(("raw-leaves", _flag(raw_leaves)))
        async with self._post("add", params, data=self._file(data)) as resp:
            body = await resp.text(errors="replace")
        try:
            cid = to_v1(json.loads(body.strip().splitlines()[-1])["Hash"])
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise IpfsError(f"Kubo add answered without a CID: {body[:200]!r}") from exc
        if raw_leaves is None or raw_leaves == (cid_version == 1):  # Kubo's default DAG for the version
            data = bytes(data)
            if len(data) > 1 << 20:  # hash big files off the loop
                expected = await asyncio.to_thread(file_cid, data, cid_version=cid_version)
            else:
                expected = file_cid(data, cid_version=cid_version)
            expected = to_v1(expected)
            if cid != expected:
                raise IpfsError(f"the Kubo at {self.url} made {cid} where Kubo's defaults give {expected}: "
                                "its Import config (chunker, raw leaves, links per node) differs")
        return cid

    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Return the bytes of file ``cid`` (``/api/v0/cat``); see :meth:`IpfsNode.cat`.

        ``timeout`` (seconds) covers finding, fetching and reading. ``max_size`` is checked
        against the size Kubo announces (``X-Content-Length``) and while reading, which stops
        at the first byte over it.

        Raises:
            InvalidCID, IpfsTimeout, OversizeError; IpfsError when Kubo fails or the
            stream breaks off before the announced size.
        """
        key = to_v1(parse_cid(cid))
        chunks: list[bytes] = []
        received = 0
        async with self._post("cat", [("arg", key)], timeout=timeout,
                              timeout_reason=f"no peer served {key} within {timeout:g} s") as resp:
            announced = resp.headers.get("X-Content-Length", "")
            size = int(announced) if announced.isdigit() else None
            if max_size is not None and size is not None and size > max_size:
                raise OversizeError(f"{key} is {size} bytes, over the limit of {max_size}")
            async for chunk in resp.content.iter_chunked(1 << 16):
                received += len(chunk)
                if max_size is not None and received > max_size:
                    raise OversizeError(f"{key} is over {max_size} bytes, the limit")
                chunks.append(chunk)
        if size is not None and received != size:
            raise IpfsError(f"Kubo sent {received} of the {size} bytes of {key}: the stream broke off")
        return b"".join(chunks)

    async def pin(self, cid: str, timeout: float = CALL_TIMEOUT) -> None:
        """Pin ``cid`` recursively (``/api/v0/pin/add``), fetching it within ``timeout`` s if needed."""
        key = to_v1(parse_cid(cid))
        async with self._post("pin/add", [("arg", key)], timeout=timeout,
                              timeout_reason=f"could not fetch and pin {key} within {timeout:g} s"):
            pass

    async def unpin(self, cid: str) -> None:
        """Remove the pin on ``cid`` (``/api/v0/pin/rm``); not pinned is not an error.

        Removes it under the CIDv1 and the CIDv0: Kubo keeps a pin per CID string, and
        :meth:`add` pins the CIDv0.
        """
        for form in _cid_forms(parse_cid(cid)):
            try:
                async with self._post("pin/rm", [("arg", form)]):
                    pass
            except IpfsError as exc:
                if "not pinned" not in exc.reason:
                    raise

    async def pins(self) -> set[str]:
        """The recursively pinned CIDs (``/api/v0/pin/ls?type=recursive``), as CIDv1 base32.

        Raises:
            IpfsError: the daemon failed, or answered something that is not a list of CIDs.
        """
        keys = (await self._json("pin/ls", [("type", "recursive")])).get("Keys") or {}
        try:
            return {to_v1(key) for key in keys}
        except (InvalidCID, TypeError) as exc:
            raise IpfsError(f"{self.url} answered pin/ls with something that is not a list of"
                            f" CIDs: {exc}") from None

    # -- garbage collection -------------------------------------------------
    async def collect_garbage(self, *, grace: float = DEFAULT_GC_GRACE) -> GcStats:
        """Run the daemon's garbage collection (``/api/v0/repo/gc``); see :meth:`IpfsNode.collect_garbage`.

        ``grace`` is checked but Kubo's collection does not support it: every unpinned block goes
        however new. Adds and pins under way on the daemon are safe (Kubo makes its collection
        wait for them); the blocks a fetch under way has stored may go, and are then fetched
        again. Kubo reports the blocks removed, not their sizes, so ``bytes_freed`` is the
        repository's size (``RepoSize`` of ``repo/stat``) before minus after, blurred by other
        writes meanwhile; ``blocks_kept`` and ``bytes_kept`` are ``NumObjects`` and ``RepoSize``
        after (the size counts Kubo's datastore too).

        Raises:
            ValueError: ``grace`` is negative.
            IpfsError: Kubo reported failures (:func:`gc_removed`), or answered something else.
            IpfsTimeout: the collection took more than :data:`GC_TIMEOUT` s.
        """
        check_grace(grace)
        loop = asyncio.get_running_loop()
        start = loop.time()
        before = await self._repo_stat(size_only=True)
        async with self._post("repo/gc", [("stream-errors", "true")], timeout=GC_TIMEOUT) as resp:
            lines = [line async for line in resp.content]
        removed = gc_removed(lines)
        after = await self._repo_stat(size_only=False)
        return GcStats(len(removed), max(0, before["RepoSize"] - after["RepoSize"]),
                       after["NumObjects"], after["RepoSize"], loop.time() - start)

    async def repo_bytes(self) -> int:
        """The daemon's repository size (``RepoSize`` of ``/api/v0/repo/stat``), bytes."""
        return (await self._repo_stat(size_only=True))["RepoSize"]

    async def _repo_stat(self, *, size_only: bool) -> dict[str, int]:
        """``repo/stat``'s numbers: ``RepoSize`` and, unless ``size_only``, ``NumObjects``."""
        stat = await self._json("repo/stat", [("size-only", _flag(size_only))])
        keys = ("RepoSize",) if size_only else ("RepoSize", "NumObjects")
        numbers: dict[str, int] = {}
        for key in keys:
            value = stat.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise IpfsError(f"{self.url} answered repo/stat without a {key} count:"
                                f" {json.dumps(stat)[:200]}")
            numbers[key] = value
        return numbers

    # -- pubsub -------------------------------------------------------------
    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` (``/api/v0/pubsub/pub``, the payload as a multipart file).

        Waits first (up to :data:`CALL_TIMEOUT`) until this node's own subscriptions are
        open at the daemon, so that a message published after ``subscribe`` reaches them.
        """
        self._check_open()
        opening = [sub.ready for sub in self._subs if not sub.ready.done()]
        if opening:
            await asyncio.wait(opening, timeout=CALL_TIMEOUT)
        async with self._post("pubsub/pub", [("arg", encode_topic(topic))], data=self._file(data)):
            pass

    def subscribe(self, topic: str) -> _Subscription:
        """Subscribe to ``topic`` (``/api/v0/pubsub/sub``, a stream of JSON lines).

        Must be called on the event loop. The HTTP stream opens in the background; this
        node's :meth:`publish` waits for it, other publishers may not. If the stream fails
        (daemon gone, pubsub disabled) the iterator raises :class:`~learnae.errors.IpfsError`
        once with the reason, then ends.
        """
        self._check_open()
        sub = _Subscription(self, topic)
        self._subs.add(sub)
        return sub

    # -- peers --------------------------------------------------------------
    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """Connect the daemon to ``multiaddr`` (``/api/v0/swarm/connect``).

        Raises:
            InvalidMultiaddr: it does not parse or does not end in ``/p2p/<id>``.
            IpfsError: the daemon could not connect (the reason is Kubo's).
        """
        self._check_open()
        check_multiaddr(multiaddr)
        async with self._post("swarm/connect", [("arg", multiaddr)], timeout=timeout,
                              timeout_reason=f"could not connect to {multiaddr} within {timeout:g} s"):
            pass

    async def peers(self) -> list[str]:
        """Peer ids the daemon is connected to (``/api/v0/swarm/peers``), each once."""
        info = await self._json("swarm/peers")
        return list(dict.fromkeys(peer["Peer"] for peer in info.get("Peers") or []))

    async def addrs(self) -> list[str]:
        """The daemon's addresses from ``/api/v0/id``, each ending in ``/p2p/<id>``."""
        info = await self._json("id")
        suffix = f"/p2p/{self.id}"
        return [a if a.endswith(suffix) else a + suffix for a in info.get("Addresses") or []]

    async def version(self) -> str:
        """The daemon's Kubo version (``/api/v0/version``), e.g. ``"0.26.0"``."""
        return str((await self._json("version")).get("Version", ""))

    async def close(self) -> None:
        """End this node's subscriptions and close the session if the node made it. Idempotent.

        The daemon keeps running.
        """
        if self._closed:
            return
        self._closed = True
        subs, self._subs = list(self._subs), weakref.WeakSet()
        for sub in subs:
            sub._stop()
        await asyncio.gather(*(sub._task for sub in subs), return_exceptions=True)
        if self._owns_session:
            await self._session.close()


class _Stream:
    """What a subscription's background reader fills.

    The reader holds this, never the subscription, so a subscription nobody holds is collected
    (and its reader cancelled).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.buffer = SubscriptionBuffer()  # bounded in bytes (SUBSCRIPTION_BUFFER_BYTES)
        self.ready: asyncio.Future[None] = loop.create_future()
        self.skipped = 0

    def opened(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def line(self, topic: str, line: bytes) -> None:
        try:
            msg = decode_message(line)
        except IpfsError as exc:
            self.skipped += 1
            log.warning("subscription to %r: %s", topic, exc.reason)
            return
        self.buffer.put(msg)

    def finish(self, error: Exception | None) -> None:
        self.opened()
        self.buffer.end(error)


async def _read(node: RpcNode, topic: str, stream: _Stream) -> None:
    """Background task: copy the ``pubsub/sub`` stream of ``topic`` into ``stream``."""
    error: Exception
    try:
        async with node._post("pubsub/sub", [("arg", encode_topic(topic))], timeout=None) as resp:
            stream.opened()
            pending = b""
            async for chunk in resp.content.iter_any():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        stream.line(topic, line)
        error = IpfsError(f"the Kubo at {node.url} ended the subscription to {topic!r}")
    except IpfsError as exc:
        error = exc
    finally:
        stream.opened()
    stream.finish(error)


class _Subscription(AsyncIterator[PubsubMessage]):
    """Messages of one topic from a ``pubsub/sub`` stream; ``aclose()`` (or collection) ends it.

    Attributes:
        ready: a future done once the daemon opened the subscription (or it failed).
        dropped: messages discarded because they did not fit in the buffer (bounded in bytes,
            :data:`SUBSCRIPTION_BUFFER_BYTES`; the oldest are dropped).
        skipped: lines of the stream that were not pubsub messages (logged).
    """

    def __init__(self, node: RpcNode, topic: str):
        self.node, self.topic = node, topic
        loop = asyncio.get_running_loop()
        self._stream = _Stream(loop)
        self._task = loop.create_task(_read(node, topic, self._stream))

    @property
    def ready(self) -> asyncio.Future[None]:
        """Done once the daemon opened the subscription (or it failed)."""
        return self._stream.ready

    @property
    def dropped(self) -> int:
        """Messages discarded because they did not fit in the buffer."""
        return self._stream.buffer.dropped

    @property
    def skipped(self) -> int:
        """Lines of the stream that were not pubsub messages."""
        return self._stream.skipped

    def _stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._task.cancel()
        self._stream.finish(None)

    def __del__(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            self._stop()

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        return await self._stream.buffer.get()

    async def aclose(self) -> None:
        self.node._subs.discard(self)
        self._stop()
        await asyncio.gather(self._task, return_exceptions=True)
