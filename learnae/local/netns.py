"""Test hosts in Linux network namespaces, joined by a bridge, with links to cut.

A :class:`Lan` is a small private network made on this machine: one namespace
holding a bridge, and one namespace per host with a veth link to that bridge.
Cutting a host's link (``ip link set ... down`` on the bridge side) partitions
it from the others exactly as a pulled cable would: packets are dropped, TCP
connections stall and time out. Restoring the link heals the partition.
:meth:`Lan.partition` splits the hosts into groups instead, each group on a
bridge of its own (as if the switch were cut in pieces); :meth:`Lan.heal` puts
every host back on the one bridge.

Addresses are ``10.77.<lan>.<host>/24`` and exist only inside the namespaces this
module creates: no traffic leaves them. Needs root and ``iproute2``
(:func:`available` says whether this machine has both); the fault harness falls
back to :mod:`learnae.ipfs.faults` where it has not.

Every namespace is deleted by :meth:`Lan.close` (also on error), which ends the
links with it; processes started inside must be ended by whoever started them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from learnae.errors import LearnaeError


def available() -> tuple[bool, str]:
    """``(True, "")`` when namespaces can be made here, else ``(False, reason)``."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is not installed"
    probe = f"lae-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return False, f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise LearnaeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")


class Lan:
    """``hosts`` namespaces on one bridge. Use as a context manager.

    Attributes:
        names: the host namespaces' names, in order.
        addresses: each host's IPv4 address (same order).
    """

    def __init__(self, hosts: int, lan: int = 1):
        tag = uuid.uuid4().hex[:6]
        self.bridge_ns = f"lae-{tag}-br"
        self.names = [f"lae-{tag}-h{i}" for i in range(hosts)]
        self.addresses = [f"10.77.{lan}.{i + 1}" for i in range(hosts)]
        self._made: list[str] = []
        self._bridges: set[str] = set()
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self) -> None:
        _ip("netns", "add", self.bridge_ns)
        self._made.append(self.bridge_ns)
        _ip("link", "add", "br0", "type", "bridge", netns=self.bridge_ns)
        _ip("link", "set", "br0", "up", netns=self.bridge_ns)
        for i, (ns, addr) in enumerate(zip(self.names, self.addresses, strict=True)):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "set", "lo", "up", netns=ns)
            # veth pair made inside the host namespace, one end moved to the bridge namespace
            _ip("link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", netns=ns)
            _ip("link", "set", f"p{i}", "netns", self.bridge_ns, netns=ns)
            _ip("addr", "add", f"{addr}/24", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("link", "set", f"p{i}", "master", "br0", netns=self.bridge_ns)
            _ip("link", "set", f"p{i}", "up", netns=self.bridge_ns)

    def command(self, host: int, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside host ``host``'s namespace (exec'd: same pid)."""
        return ["ip", "netns", "exec", self.names[host], *argv]

    def cut(self, host: int) -> None:
        """Pull host ``host``'s cable: nothing reaches it or leaves it until :meth:`restore`."""
        _ip("link", "set", f"p{host}", "down", netns=self.bridge_ns)

    def restore(self, host: int) -> None:
        """Plug host ``host``'s cable back in (undoes :meth:`cut`)."""
        _ip("link", "set", f"p{host}", "up", netns=self.bridge_ns)

    def partition(self, groups: list[list[int]]) -> None:
        """Hosts in different ``groups`` can no longer reach each other.

        Hosts in one group still can. Hosts in no group stay on the main bridge (one more
        group).
        """
        for g, hosts in enumerate(groups, start=1):
            bridge = f"br{g}"
            if bridge not in self._bridges:
                _ip("link", "add", bridge, "type", "bridge", netns=self.bridge_ns)
                _ip("link", "set", bridge, "up", netns=self.bridge_ns)
                self._bridges.add(bridge)
            for host in hosts:
                _ip("link", "set", f"p{host}", "master", bridge, netns=self.bridge_ns)

    def heal(self) -> None:
        """Every host back on the main bridge (cut cables stay cut: see :meth:`restore`).

        Each host's neighbour (ARP) cache is flushed: entries that failed during the
        partition would otherwise refuse connections (EHOSTUNREACH) for seconds more.
        """
        for i in range(len(self.names)):
            _ip("link", "set", f"p{i}", "master", "br0", netns=self.bridge_ns)
        for ns in self.names:
            _ip("neigh", "flush", "all", netns=ns)

    def close(self) -> None:
        """Delete every namespace made (their links go with them). Idempotent."""
        while self._made:
            subprocess.run(["ip", "netns", "del", self._made.pop()], capture_output=True)

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
