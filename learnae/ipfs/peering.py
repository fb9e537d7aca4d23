"""Keep an IPFS node connected to its swarm.

learnae's swarms run with ``Routing.Type = none``: peers are connected
explicitly and nothing reconnects them after a partition, a restart or a sleep.

- :func:`keep_connected` redials every listed peer that is not connected, every
  ``interval`` seconds, until cancelled.
- :func:`exchange_addresses` is the swarm's address book (peer exchange): each member
  announces its current addresses on a pubsub topic of the swarm, relayed ones included
  once it holds a relay reservation, and dials the members it hears of until it has
  enough peers. A member behind NAT is reached through its relayed address; libp2p then
  tries to upgrade the connection by hole punching (docs/design.md, "Members behind NAT").

Failures are expected (the peer may be down, behind NAT or on the other side of a
partition) and only logged at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict

from learnae.errors import InvalidMultiaddr, LearnaeError
from learnae.ipfs.addr import check_multiaddr
from learnae.ipfs.base import IpfsNode, PubsubMessage, is_relayed

log = logging.getLogger(__name__)


async def keep_connected(node: IpfsNode, multiaddrs: list[str], interval: float = 2.0,
                         dial_timeout: float = 5.0) -> None:
    """Redial each of ``multiaddrs`` (each ending ``/p2p/<id>``) while it is not connected.

    Runs until cancelled. Raises InvalidMultiaddr at once for an address without a peer id.
    """
    wanted = {_peer_id(addr): addr for addr in multiaddrs}
    wanted.pop(node.id, None)
    while True:
        try:
            connected = set(await node.peers())
        except LearnaeError as exc:
            log.debug("cannot list peers: %s", exc.reason)
            connected = set()
        missing = [addr for peer, addr in wanted.items() if peer not in connected]
        if missing:
            results = await asyncio.gather(*(node.connect(a, timeout=dial_timeout) for a in missing),
                                           return_exceptions=True)
            for addr, result in zip(missing, results, strict=True):
                if isinstance(result, LearnaeError):
                    log.debug("redial %s: %s", addr, result.reason)
                elif isinstance(result, BaseException):
                    raise result
        await asyncio.sleep(interval)


def _peer_id(multiaddr: str) -> str:
    """The peer id after the last ``/p2p/`` (the backend's ``connect`` checks the rest)."""
    _, sep, peer = multiaddr.rpartition("/p2p/")
    if not sep or not peer or "/" in peer:
        raise InvalidMultiaddr(f"{multiaddr!r} does not end in /p2p/<peer id>")
    return peer


#: seconds between two announcements of a member's addresses
PEX_INTERVAL = 10.0
#: members whose addresses are remembered at most (least recently heard forgotten first)
PEX_MAX_MEMBERS = 256
#: addresses taken from one announcement at most
PEX_MAX_ADDRS = 8
#: bytes of one announcement at most (larger ones are ignored)
PEX_MAX_BYTES = 4096


def pex_topic(swarm: str) -> str:
    """The pubsub topic on which members of swarm ``swarm`` (the genesis id) announce addresses."""
    return f"learnae/{swarm}/peers"


class AddressBook:
    """Members' announced addresses, bounded; fed by pubsub messages.

    An announcement is the JSON object ``{"addrs": [multiaddr, ...]}``. Gossipsub signs each
    message with its sender's peer key, so a member can announce addresses for itself only:
    addresses that end in another peer's id, that do not parse, or that are not TCP over IP
    (directly or through a relay) are dropped.
    """

    def __init__(self, own_id: str, max_members: int = PEX_MAX_MEMBERS):
        self.own_id = own_id
        self.max_members = max_members
        self.members: OrderedDict[str, list[str]] = OrderedDict()

    def hear(self, msg: PubsubMessage) -> bool:
        """Take ``msg``'s addresses for its sender; whether it held any usable one."""
        if msg.sender == self.own_id or len(msg.data) > PEX_MAX_BYTES:
            return False
        try:
            announced = json.loads(msg.data).get("addrs")
        except (ValueError, AttributeError):
            return False
        if not isinstance(announced, list):
            return False
        addrs = [a for a in announced[:PEX_MAX_ADDRS] if _usable(a, msg.sender)]
        if not addrs:
            return False
        self.members[msg.sender] = addrs
        self.members.move_to_end(msg.sender)
        while len(self.members) > self.max_members:
            self.members.popitem(last=False)
        return True


def _usable(addr: object, sender: str) -> bool:
    """``addr`` is a TCP multiaddr (direct or relayed) of ``sender`` itself."""
    if not isinstance(addr, str):
        return False
    try:
        if check_multiaddr(addr) != sender:
            return False
    except InvalidMultiaddr:
        return False
    parts = addr.split("/")
    return parts[1] in ("ip4", "ip6") and parts[3] == "tcp"


async def exchange_addresses(node: IpfsNode, topic: str, *, interval: float = PEX_INTERVAL,
                             want: int = 16, dial_timeout: float = 10.0, dial_relayed: bool = True,
                             book: AddressBook | None = None) -> None:
    """Announce ``node``'s addresses on ``topic`` and dial members heard of, until cancelled.

    Every ``interval`` seconds: publish ``{"addrs": await node.addrs()}``, then, while fewer than
    ``want`` peers are connected, dial each member of the book that is not connected (one
    connection per member is enough). A member that announces a relayed address holds a relay
    reservation: AutoNAT found it cannot be dialled directly. It is dialled through the relay
    only, and libp2p upgrades the connection by hole punching (DCUtR) where the NATs allow.
    Dialling its direct addresses too would spoil that: libp2p runs one dial per peer at a
    time, and the hole punch's dial, which has a few seconds, would wait behind the slow
    failing one. Other members are dialled at their direct addresses.

    Args:
        node: the IPFS node.
        topic: :func:`pex_topic` of the swarm.
        interval: seconds between rounds.
        want: peers to be connected to before dialling stops.
        dial_timeout: seconds one dial may take.
        dial_relayed: also dial members through relays. A member others can dial directly
            (a relay member) passes False: a relayed connection carries no data, and it would
            stand in the way of the direct connection the member behind NAT makes to it (Kubo
            does not dial a peer it holds any connection to, and the direct connections to
            public members are what confirms a NATed member's address for hole punching).
        book: the address book to fill (a fresh one if None; pass one to read it).
    """
    book = book or AddressBook(node.id)
    sub = node.subscribe(topic)

    async def listen() -> None:
        async for msg in sub:
            book.hear(msg)

    listener = asyncio.create_task(listen())
    try:
        while True:
            with contextlib.suppress(LearnaeError):
                await node.publish(topic, json.dumps({"addrs": await node.addrs()}).encode())
            await _dial_members(node, book, want, dial_timeout, dial_relayed)
            await asyncio.sleep(interval)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, LearnaeError):
            await listener
        with contextlib.suppress(LearnaeError):
            await sub.aclose()


async def _dial_members(node: IpfsNode, book: AddressBook, want: int, dial_timeout: float,
                        dial_relayed: bool) -> None:
    try:
        connected = set(await node.peers())
    except LearnaeError as exc:
        log.debug("cannot list peers: %s", exc.reason)
        return
    missing = [m for m in reversed(book.members) if m not in connected][:max(0, want - len(connected))]

    async def dial(member: str) -> None:
        addrs = book.members.get(member, [])
        relayed = [a for a in addrs if is_relayed(a)] if dial_relayed else []
        for addr in relayed or [a for a in addrs if not is_relayed(a)]:
            try:
                await node.connect(addr, timeout=dial_timeout)
                return
            except LearnaeError as exc:
                log.debug("peer exchange: dial %s: %s", addr, exc.reason)

    await asyncio.gather(*(dial(m) for m in missing))
