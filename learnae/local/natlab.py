"""A swarm of node processes behind home routers, for NAT tests and benches.

:class:`NatLab` makes a :class:`~learnae.local.netns.HomeNat` (public hosts first, each other
host behind a masquerading router of its own), a swarm (founder, invite) and one state
directory per member, and gives the command line of each member: the public ones run as
relay members (``learnae node run --relay --reachability public``) and know each other; the
natted ones train on a shard of the data set and know only the first relay member. Members
find the rest by peer exchange (docs/design.md, "Members behind NAT").

The caller starts the processes (a test's launcher, a bench's ``subprocess``) and must end
them before :meth:`NatLab.close`, which deletes the namespaces.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learnae.ipfs import libkubo
from learnae.local import netns
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.state import init_swarm

NODE = "from learnae.cli import main; main()"
PORT = 4001


class NatLab:
    """``relays`` public relay members and ``trainers`` natted trainer nodes. A context manager.

    Args:
        out: directory for the swarm's files and each member's state (``m<i>``).
        relays: public relay members (hosts ``0 .. relays - 1``).
        trainers: natted trainer nodes (the hosts after them).
        hole_punching: the trainers' routers keep ports (True) or are symmetric NATs (False);
            one value, or one per trainer (:class:`~learnae.local.netns.HomeNat`).
        serve_checkpoints: the relay members hold and serve each author's newest checkpoint.
        dataset: the data set the trainers shard (``digits`` and its MLP by default).
        checkpoint_interval: the manifest's seconds between two checkpoints of a node (3 s: a
            node keeps its newest 3 checkpoints, so a relay member that looks once a second
            still finds the newest one on its author).

    Raises:
        LearnaeError: the namespaces could not be made (needs root, ``ip`` and ``nft``).
    """

    def __init__(self, out: Path, *, relays: int, trainers: int, hole_punching: bool | Sequence[bool],
                 serve_checkpoints: bool = True, dataset: str = "digits", checkpoint_interval: float = 3.0):
        self.out = Path(out)
        self.relays, self.trainers = relays, trainers
        self.serve_checkpoints = serve_checkpoints
        self.dataset = dataset
        manifest = Manifest(name="nat-lab", model=model_config(f"{dataset}-mlp"), pow_bits=4, merge="mean",
                            learning_rate=0.003, sync_every=5, checkpoint_interval=checkpoint_interval)
        self.invite = self.out / "invite.json"
        init_swarm(self.out / "founder", manifest).invite.save(self.invite)
        self.states = [self.out / f"m{i}" for i in range(relays + trainers)]
        ids = [libkubo.create_repo(state / "ipfs") for state in self.states]
        self.net = netns.HomeNat(relays, trainers, hole_punching=hole_punching)
        self.addrs = [f"/ip4/{host}/tcp/{PORT}/p2p/{pid}"
                      for host, pid in zip(self.net.addresses, ids, strict=True)]

    @property
    def size(self) -> int:
        """Members in all."""
        return len(self.states)

    def name(self, i: int) -> str:
        """``relay<i>`` or ``trainer<j>``, for logs."""
        return f"relay{i}" if i < self.relays else f"trainer{i - self.relays}"

    def argv(self, i: int) -> list[str]:
        """Member ``i``'s command line, run in its namespace."""
        argv = [sys.executable, "-c", NODE, "node", "run", "--invite", str(self.invite),
                "--state", str(self.states[i]), "--listen", f"{self.net.addresses[i]}:{PORT}", "--quiet"]
        if i < self.relays:
            argv += ["--relay", "--reachability", "public"]
            argv += [] if self.serve_checkpoints else ["--no-serve-checkpoints"]
            argv += [a for j in range(self.relays) if j != i for a in ("--peer", self.addrs[j])]
        else:
            shard = f"{self.dataset}:shard={i - self.relays}/{self.trainers},partition=iid,seed=3"
            argv += ["--data", shard, "--seed", "0", "--peer", self.addrs[0]]
        return self.net.command(i, argv)

    def status(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s last ``status.json``, or None before it wrote one."""
        try:
            return json.loads((self.states[i] / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def via(self, i: int, j: int) -> str | None:
        """How member ``i`` is connected to member ``j`` (``direct``, ``relayed``), or None."""
        status, other = self.status(i), self.status(j)
        if not status or not other:
            return None
        return next((p["via"] for p in status.get("network", {}).get("peers", []) if p["peer"] == other["id"]),
                    None)

    def merged_from(self, i: int, j: int) -> int:
        """Merges member ``i`` made with checkpoints authored by member ``j``."""
        status, other = self.status(i), self.status(j)
        if not status or not other:
            return 0
        return int(status.get("merged_from", {}).get(other["author_key"], 0))

    def close(self) -> None:
        """Delete the namespaces (end the processes first)."""
        self.net.close()

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
