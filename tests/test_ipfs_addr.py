"""Multiaddr checks."""

from __future__ import annotations

import pytest

from learnae.errors import InvalidMultiaddr
from learnae.ipfs.addr import check_multiaddr

ED25519 = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
RSA = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


@pytest.mark.parametrize("text, peer", [
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{ED25519}", ED25519),
    (f"/ip6/::1/tcp/4001/p2p/{RSA}", RSA),
    (f"/dns4/node.example.org/tcp/4001/p2p/{ED25519}", ED25519),
    (f"/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{ED25519}", ED25519),
    ("/ip4/10.0.0.2/udp/4001/quic-v1/webtransport/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ"
     f"/p2p/{ED25519}", ED25519),
    (f"/ip4/11.77.0.2/tcp/4001/p2p/{RSA}/p2p-circuit/p2p/{ED25519}", ED25519),  # relayed
])
def test_kubo_addresses_give_their_peer_id(text, peer):
    assert check_multiaddr(text) == peer


def test_a_cid_peer_id_comes_back_in_base58_as_kubo_prints_it():
    cid_form = "k2k4r8ncs1yoluq95unsd7x2vfhgve0ncjoggwqx9vyh3vl8warrcp15"  # libp2p-key CIDv1 of RSA
    assert check_multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{cid_form}") == RSA


@pytest.mark.parametrize("text, reason", [
    ("not a multiaddr", "must start with '/'"),
    ("", "must start with '/'"),
    ("/ip4/999.1.1.1/tcp/1/p2p/QmZ", "999"),
    ("/ip4/127.0.0.1/tcp/4001/p2p/QmZ", "'QmZ' is not a peer id"),
    ("/ip4/127.0.0.1/tcp", "incomplete"),
    ("/ip4/127.0.0.1/tcp/99999/p2p/" + ED25519, "out of range"),
    ("/carrier-pigeon/1", "carrier-pigeon"),
    ("/p2p/bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "libp2p-key"),
    ("/ip4/127.0.0.1/tcp/4001", "does not end in /p2p/"),
    (f"/p2p/{ED25519}/ip4/127.0.0.1/tcp/4001", "does not end in /p2p/"),
    (f"/p2p-circuit/p2p/{ED25519}", "not a relayed address"),
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{RSA}/p2p-circuit", "does not end in /p2p/"),
    (f"/ip4/127.0.0.1/tcp/4001/p2p-circuit/p2p/{ED25519}", "does not end in /p2p/"),  # no relay id
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{RSA}/p2p-circuit/p2p/QmZ", "'QmZ' is not a peer id"),
    (f"/ip4/1.2.3.4/tcp/1/p2p/{RSA}/p2p-circuit/p2p/{RSA}/p2p-circuit", "not a relayed address"),
])
def test_bad_addresses_say_what_is_wrong(text, reason):
    with pytest.raises(InvalidMultiaddr, match=reason) as caught:
        check_multiaddr(text)
    assert repr(text) in caught.value.reason


def test_peer_optional():
    assert check_multiaddr("/ip4/127.0.0.1/tcp/4001", need_peer=False) == ""
    assert check_multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{RSA}", need_peer=False) == RSA
    with pytest.raises(InvalidMultiaddr):
        check_multiaddr("/ip4/127.0.0.1/tcp", need_peer=False)
    # a node's own relayed address, as Kubo lists it: the relay's address and /p2p-circuit
    assert check_multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{RSA}/p2p-circuit", need_peer=False) == ""
