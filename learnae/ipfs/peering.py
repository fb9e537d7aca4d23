"""Keep an IPFS node connected to a fixed list of peers.

learnae's swarms run with ``Routing.Type = none``: peers are connected
explicitly and nothing reconnects them after a partition, a restart or a sleep.
:func:`keep_connected` redials every listed peer that is not connected, every
``interval`` seconds, until cancelled. Failures are expected (the peer may be
down or on the other side of a partition) and only logged at debug level.
"""

from __future__ import annotations

import asyncio
import logging

from learnae.errors import InvalidMultiaddr, LearnaeError
from learnae.ipfs.base import IpfsNode

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
