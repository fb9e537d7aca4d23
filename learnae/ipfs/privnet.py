"""Private-swarm settings for Kubo repos (docs/design.md, "IPFS and private swarms").

A Kubo node with its default config dials public bootstrap peers, announces
itself over mDNS and listens on every interface with QUIC and WebTransport.
:func:`private_config` rewrites a repo's config so that the node:

- only talks to peers holding the same pre-shared key (``swarm.key``, libp2p PSK v1),
- has no bootstrap peers and no routing (peers are connected explicitly),
- listens on the given host only (127.0.0.1 by default), over TCP only,
- runs no mDNS, AutoNAT service, relay, hole punching or UPnP.

Joining the public network is never done here; it would need an explicit opt-in
that passes other settings.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from learnae.errors import ConfigError

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


def private_config(config: dict[str, Any], host: str = "127.0.0.1",
                   port: int = 0) -> dict[str, Any]:
    """Return Kubo ``config`` changed for a private swarm listening on ``host:port`` (TCP).

    ``port=0`` lets the kernel pick a free port. The identity and datastore sections
    are kept as they are.
    """
    family = "ip6" if ":" in host else "ip4"
    cfg = dict(config)
    cfg["Bootstrap"] = []
    addresses = dict(cfg.get("Addresses", {}))
    addresses.update({"Swarm": [f"/{family}/{host}/tcp/{port}"], "API": [], "Gateway": [],
                      "Announce": [], "AppendAnnounce": [], "NoAnnounce": []})
    cfg["Addresses"] = addresses
    cfg["Discovery"] = {"MDNS": {"Enabled": False}}
    cfg["Routing"] = {"Type": "none"}
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Pubsub"] = {"Enabled": True, "Router": "gossipsub", "DisableSigning": False}
    swarm = dict(cfg.get("Swarm", {}))
    swarm.update({
        "Transports": {"Network": {"TCP": True, "QUIC": False, "WebTransport": False,
                                   "Websocket": False, "Relay": False},
                       "Security": {}, "Multiplexers": {}},
        "RelayClient": {"Enabled": False},
        "RelayService": {"Enabled": False},
        "EnableHolePunching": False,
        "DisableNatPortMap": True,
    })
    cfg["Swarm"] = swarm
    # Peers are connected explicitly; nothing to provide to a DHT that does not exist. The
    # interval stops reprovides only; Kubo 0.22 still queues a provide for every block added
    # (CPU, and a "falling behind DHT reprovides" banner on stderr) unless strategic providing
    # swaps the provider system for a no-op one.
    cfg["Reprovider"] = {"Interval": "0"}
    cfg["Experimental"] = {**cfg.get("Experimental", {}), "StrategicProviding": True}
    # Throughput: Kubo 0.22 lets a peer have only 1 MiB of blocks in flight to another;
    # checkpoints are tens of MB, so allow 32 MiB and more bitswap workers.
    cfg["Internal"] = {"Bitswap": {"MaxOutstandingBytesPerPeer": 32 << 20, "TaskWorkerCount": 16,
                                   "EngineTaskWorkerCount": 16, "EngineBlockstoreWorkerCount": 128}}
    return cfg


def make_private(repo: Path, swarm_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
    """Rewrite ``repo/config`` with :func:`private_config` and write ``repo/swarm.key`` (mode 0600)."""
    config_path = Path(repo) / "config"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Kubo config {config_path}: {exc}") from exc
    config_path.write_text(json.dumps(private_config(config, host, port), indent=2))
    key_path = Path(repo) / "swarm.key"
    key_path.write_text(check_swarm_key(swarm_key))
    os.chmod(key_path, 0o600)
