"""Multiaddr checks for the IPFS layer (https://github.com/multiformats/multiaddr).

Parsing is :mod:`multiformats.multiaddr`'s. Its 0.3 release knows the multicodec
table but implements only some protocols, not ``/p2p`` among them, so importing
this module registers the ones a Kubo node prints or dials that it lacks:
``p2p`` (peer id), ``dns``/``dns4``/``dns6``/``dnsaddr``, ``ip6zone``, ``sni``
(text), ``certhash`` (a multibase multihash), and ``quic-v1``, ``webtransport``,
``webrtc``, ``webrtc-direct`` (no value). A protocol the library already
implements is left as it is.

The library refuses a protocol that appears twice, so a circuit-relay address
(``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``, docs/design.md, "Members behind
NAT") is checked in its two halves: the relay's address, and ``/p2p/<peer>``.
"""

from __future__ import annotations

from multiformats import CID, multiaddr, multibase, multihash
from multiformats.multiaddr import raw
from multiformats.varint import BytesLike

from learnae.errors import InvalidMultiaddr

__all__ = ["check_multiaddr", "peer_id_bytes"]


def peer_id_bytes(text: str) -> bytes:
    """The multihash bytes of a peer id, as go-libp2p's ``peer.Decode`` reads it.

    Accepts the base58btc form Kubo prints (``Qm...`` for RSA keys, ``12D3KooW...``
    for Ed25519 keys) and the CIDv1 form with codec ``libp2p-key`` (``k51...``, ``bafz...``).

    Raises:
        ValueError: ``text`` is neither (a :class:`multiaddr` value error, so that
            :func:`multiformats.multiaddr.parse` reports it).
    """
    try:
        if text.startswith(("Qm", "1")):
            mh = multibase.decode("z" + text)
        else:
            cid = CID.decode(text)
            if cid.codec.name != "libp2p-key":
                raise ValueError(f"a CID peer id has codec libp2p-key, not {cid.codec.name}")
            mh = bytes(cid.digest)
        multihash.unwrap_raw(mh)  # checks the hash code and the digest length
    except (KeyError, ValueError) as exc:
        raise multiaddr.err.MultiaddrValueError(f"{text!r} is not a peer id: {exc}") from exc
    return mh


def _peer_id_text(b: BytesLike) -> str:
    return multibase.encode(bytes(b), "base58btc")[1:]  # Kubo prints it without the 'z'


def _text(b: BytesLike) -> str:
    return bytes(b).decode("utf-8")


def _certhash(s: str) -> bytes:
    try:
        mh = multibase.decode(s)
        multihash.unwrap_raw(mh)
    except (KeyError, ValueError) as exc:
        raise multiaddr.err.MultiaddrValueError(f"{s!r} is not a multibase multihash: {exc}") from exc
    return mh


_MISSING: dict[str, raw.ProtoImpl] = {  # name: (encoder, decoder, value size or None)
    "p2p": (peer_id_bytes, _peer_id_text, None),
    "dns": (str.encode, _text, None),
    "dns4": (str.encode, _text, None),
    "dns6": (str.encode, _text, None),
    "dnsaddr": (str.encode, _text, None),
    "ip6zone": (str.encode, _text, None),
    "sni": (str.encode, _text, None),
    "certhash": (_certhash, lambda b: multibase.encode(bytes(b), "base64url"), None),
    "quic-v1": (None, None, 0),
    "webtransport": (None, None, 0),
    "webrtc": (None, None, 0),
    "webrtc-direct": (None, None, 0),
}
for _name, (_enc, _dec, _size) in _MISSING.items():
    if not raw.exists(_name):
        raw.register(_name, _enc, _dec, _size)


def check_multiaddr(text: str, need_peer: bool = True) -> str:
    """Check that ``text`` is a multiaddr and return the peer id it ends in.

    Args:
        text: e.g. ``"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."``.
        need_peer: when true the address must end in ``/p2p/<peer id>``.

    Returns:
        The peer id of the final ``/p2p`` part, in base58btc as Kubo prints it
        (a CIDv1 ``libp2p-key`` id is converted); ``""`` when there is none and
        ``need_peer`` is false.

    Raises:
        InvalidMultiaddr: ``text`` does not parse (unknown protocol, bad value,
            missing value), or ``need_peer`` and it does not end in ``/p2p/<id>``.
            The reason quotes the text and says what is wrong.
    """
    if not isinstance(text, str) or not text.startswith("/"):
        raise InvalidMultiaddr(f"{text!r} is not a multiaddr: it must start with '/', "
                               "e.g. /ip4/127.0.0.1/tcp/4001/p2p/<peer id>")
    relay, circuit, target = text.partition("/p2p-circuit")
    if circuit:
        if not relay or "/p2p-circuit" in target:
            raise InvalidMultiaddr(f"{text!r} is not a relayed address: expected "
                                   "<relay address>/p2p/<relay id>/p2p-circuit/p2p/<peer id>")
        try:
            check_multiaddr(relay, need_peer=True)
            peer = check_multiaddr(target, need_peer=False) if target else ""
        except InvalidMultiaddr as exc:
            raise InvalidMultiaddr(f"{text!r}: {exc.reason}") from exc
        return peer or _no_peer(text, need_peer)
    try:
        parts = list(multiaddr.parse(text))
    except (KeyError, ValueError, TypeError) as exc:
        reason = exc.args[0] if exc.args else type(exc).__name__
        raise InvalidMultiaddr(f"{text!r} is not a multiaddr: {reason}") from exc
    last = parts[-1] if parts else None
    if isinstance(last, multiaddr.Addr) and last.proto.name == "p2p":
        return _peer_id_text(last.value_bytes)
    return _no_peer(text, need_peer)


def _no_peer(text: str, need_peer: bool) -> str:
    if need_peer:
        raise InvalidMultiaddr(f"{text!r} does not end in /p2p/<peer id>: "
                               "a node can only be dialled with its peer id")
    return ""
