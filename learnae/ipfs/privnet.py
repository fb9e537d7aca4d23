"""Private-swarm settings for Kubo repos (docs/design.md, "IPFS and private swarms").

A Kubo node with its default config dials public bootstrap peers, announces
itself over mDNS and listens on every interface with QUIC and WebTransport.
:func:`private_config` rewrites a repo's config so that the node:

- only talks to peers holding the same pre-shared key (``swarm.key``, libp2p PSK v1),
- has no bootstrap peers and no routing (peers are connected explicitly),
- listens on the given host only (127.0.0.1 by default), over TCP only,
- runs no mDNS and no UPnP (which would talk to the home router, outside the swarm),
- and traverses NAT inside the swarm (docs/design.md, "Members behind NAT"): it answers
  other members' AutoNAT probes, offers a limited circuit relay (v2) once AutoNAT finds it
  publicly reachable, reserves a slot on the members it is told to dial (its static
  relays) once AutoNAT finds it behind NAT, and upgrades relayed connections by hole
  punching (DCUtR). Every one of these runs over connections to members only, so it
  needs the swarm key like everything else.

What Kubo 0.22 (go-libp2p 0.29) does with these, learned the hard way:

- a relay connection is *limited* (2 min, 128 KiB per circuit) and marked transient, and
  neither bitswap nor gossipsub opens streams on a transient connection: the relay carries
  the hole-punching handshake only, never a checkpoint;
- hole punching starts only once identify has seen the node's own public address from
  four distinct observers (``ActivationThresh``; two dials to one observer at once can spoil
  its observation, so a test swarm has five public members), and AutoNAT and hole punching
  ignore private, loopback and test-net addresses;
- DCUtR runs once per inbound relayed connection, and its dial fails when another dial to
  the same peer is pending (libp2p runs one dial per peer; :mod:`learnae.ipfs.peering` dials
  a member behind NAT through its relay only);
- AutoNAT waits 15 s after start before its first probe.

Joining the public network is never done here; it would need an explicit opt-in
that passes other settings.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from learnae.errors import ConfigError

#: what a node may be told about its own reachability (``auto``: let AutoNAT find out)
Reachability = Literal["auto", "public", "private"]
REACHABILITY: tuple[str, ...] = ("auto", "public", "private")

SWARM_KEY_HEADER = "/key/swarm/psk/1.0.0/\n/base16/\n"
_KEY_RE = re.compile(r"^/key/swarm/psk/1\.0\.0/\n/base16/\n([0-9a-f]{64})\n?$")


def new_swarm_key() -> str:
    """Return the text of a fresh 256-bit libp2p pre-shared key file."""
    return SWARM_KEY_HEADER + secrets.token_hex(32) + "\n"


def check_swarm_key(text: str) -> str:
    """Return ``text`` normalised if it is a valid swarm key file; raise :class:`ConfigError`."""
    if not _KEY_RE.match(text.strip() + "\n"):
        raise ConfigError("swarm key must be '/key/swarm/psk/1.0.0/', '/base16/' and 64 hex digits, "
                          "one per line (make one with `learnae init`)")
    return text.strip() + "\n"


def private_config(config: dict[str, Any], host: str = "127.0.0.1", port: int = 0, *,
                   relays: Sequence[str] = (), reachability: Reachability = "auto") -> dict[str, Any]:
    """Return Kubo ``config`` changed for a private swarm listening on ``host:port`` (TCP).

    Args:
        config: the repo's config as Kubo wrote it; the identity and datastore sections are
            kept as they are.
        host: the one address to listen on.
        port: TCP port; 0 lets the kernel pick a free one.
        relays: multiaddrs (``.../p2p/<id>``) of members to reserve a relay slot on when this
            node is behind NAT (members that turn out not to relay are skipped by libp2p; the
            node's own address is left out).
        reachability: ``auto`` lets AutoNAT decide; ``public`` or ``private`` tells libp2p
            (``Internal.Libp2pForceReachability``), for a member that knows.

    Raises:
        ConfigError: ``reachability`` is none of :data:`REACHABILITY`.
    """
    if reachability not in REACHABILITY:
        raise ConfigError(f"reachability {reachability!r}: expected one of {', '.join(REACHABILITY)}")
    family = "ip6" if ":" in host else "ip4"
    own_id = config.get("Identity", {}).get("PeerID", "")
    cfg = dict(config)
    cfg["Bootstrap"] = []
    addresses = dict(cfg.get("Addresses", {}))
    addresses.update({"Swarm": [f"/{family}/{host}/tcp/{port}"], "API": [], "Gateway": [],
                      "Announce": [], "AppendAnnounce": [], "NoAnnounce": []})
    cfg["Addresses"] = addresses
    cfg["Discovery"] = {"MDNS": {"Enabled": False}}
    cfg["Routing"] = {"Type": "none"}
    cfg["AutoNAT"] = {"ServiceMode": "enabled"}
    cfg["Pubsub"] = {"Enabled": True, "Router": "gossipsub", "DisableSigning": False}
    swarm = dict(cfg.get("Swarm", {}))
    swarm.update({
        "Transports": {"Network": {"TCP": True, "QUIC": False, "WebTransport": False,
                                   "Websocket": False, "Relay": True},
                       "Security": {}, "Multiplexers": {}},
        # go-libp2p's limits (2 min and 128 KiB per circuit, 128 reservations): enough for the
        # hole-punching handshake, which is all a relay is used for.
        "RelayService": {"Enabled": True},
        "RelayClient": {"Enabled": True, "StaticRelays": [r for r in dict.fromkeys(relays)
                                                          if not r.endswith(f"/p2p/{own_id}")]},
        "EnableHolePunching": True,
        "DisableNatPortMap": True,
    })
    cfg["Swarm"] = swarm
    internal = dict(cfg.get("Internal", {}))
    internal.pop("Libp2pForceReachability", None)
    if reachability != "auto":
        internal["Libp2pForceReachability"] = reachability
    # Peers are connected explicitly; nothing to provide to a DHT that does not exist. The
    # interval stops reprovides only; Kubo 0.22 still queues a provide for every block added
    # (CPU, and a "falling behind DHT reprovides" banner on stderr) unless strategic providing
    # swaps the provider system for a no-op one.
    cfg["Reprovider"] = {"Interval": "0"}
    cfg["Experimental"] = {**cfg.get("Experimental", {}), "StrategicProviding": True}
    # Throughput: Kubo 0.22 lets a peer have only 1 MiB of blocks in flight to another;
    # checkpoints are tens of MB, so allow 32 MiB and more bitswap workers (a 100 MB fetch went
    # from about 44-52 MB/s to about 60 MB/s). More (128 MiB, 32 workers) measured no better: a
    # fetch never has more than 10 blocks (2.5 MiB) wanted at once, because Kubo's file reader
    # preloads 10 children at a time (go-ipld-format 0.5 ``preloadSize``).
    #
    # What else bounds one transfer, found in Kubo 0.22's source and measured with
    # ``bench/content.py --setting all`` (docs/benchmarks.md, "Content layer"), left as is:
    # - the fetch stores each block before asking for the next ones (boxo 0.11's blockservice
    #   ``GetBlocks`` puts blocks one at a time), and flatfs makes each durable with two fsyncs
    #   (file, directory): 0.3-8 ms a block on the benchmark's shared disk, so the disk alone
    #   caps a fetch at 30-800 MB/s. flatfs ``sync: false`` is faster but a crash could lose a block
    #   whose announcement was acknowledged: never turned off;
    # - the security transport: Kubo 0.22 prefers Noise (ChaCha20-Poly1305; its code's default
    #   priorities are Noise 100, TLS 200, whatever its docs/config.md says). TLS 1.3 (AES-GCM,
    #   which most CPUs accelerate) costs about a third of Noise's CPU in a profile, some 0.1 s
    #   per 100 MB over both ends, but no setting measured faster; both stay enabled with Kubo's
    #   defaults, so any member's node connects. The swarm key's XSalsa20 layer costs more
    #   (about 0.3 s of CPU per 100 MB over both ends) and is the private swarm itself: kept;
    # - yamux's stream window (256 KiB at first, up to 16 MiB) is fixed in go-libp2p 0.29
    #   (``p2p/muxer/yamux`` sets it at init; neither the repo config nor an environment
    #   variable reaches it); mplex, which has no window, measured no faster (one run in five
    #   stalled at 2 MB/s) and is gone from later Kubo versions.
    internal["Bitswap"] = {"MaxOutstandingBytesPerPeer": 32 << 20, "TaskWorkerCount": 16,
                           "EngineTaskWorkerCount": 16, "EngineBlockstoreWorkerCount": 128}
    cfg["Internal"] = internal
    return cfg


def make_private(repo: Path, swarm_key: str, host: str = "127.0.0.1", port: int = 0, *,
                 relays: Sequence[str] = (), reachability: Reachability = "auto") -> None:
    """Rewrite ``repo/config`` with :func:`private_config` and write ``repo/swarm.key`` (mode 0600).

    ``relays`` and ``reachability`` are :func:`private_config`'s.
    """
    config_path = Path(repo) / "config"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Kubo config {config_path}: {exc}") from exc
    config_path.write_text(json.dumps(private_config(config, host, port, relays=relays,
                                                           reachability=reachability), indent=2))
    key_path = Path(repo) / "swarm.key"
    key_path.write_text(check_swarm_key(swarm_key))
    os.chmod(key_path, 0o600)
