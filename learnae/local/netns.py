"""Test networks in Linux network namespaces: LANs, line and star topologies, home NATs.

Every topology here is made of namespaces on this machine and nothing else: a bridge
namespace (the "switch") and a namespace per host, joined by veth links. None of them has a
link to the machine's own network (and nothing here adds a route out of them), so no packet
leaves; the addresses used exist only inside them.

- :class:`Lan`: ``hosts`` namespaces on one bridge, addresses ``10.77.<lan>.<host + 1>``.
  Cutting a host's link (:meth:`Lan.cut`, ``ip link set ... down`` on the bridge side) is a
  pulled cable: packets are dropped, TCP connections stall and time out; :meth:`Lan.restore`
  heals it. :meth:`Lan.partition` splits the hosts into groups instead, each group on a bridge
  of its own (as if the switch were cut in pieces); :meth:`Lan.heal` puts every host back on
  the one bridge. With ``links`` (:func:`line_links`, :func:`star_links`) every host stays on
  the bridge but has routes only to the hosts it is linked to: a dial to any other host fails
  at once with ENETUNREACH ("Network is unreachable").
- :class:`HomeNat`: an "internet" bridge with public hosts on it, and hosts each behind a
  router of its own that does what an ordinary home router does (masquerade, nothing let in
  but replies; no port forwarding, no UPnP). With ``hole_punching`` the router keeps source
  ports (endpoint-independent mapping: TCP simultaneous open, what libp2p's DCUtR does,
  gets through); without it every connection gets a random port (symmetric NAT: it does not).
  The internet segment uses ``11.77.<net>.0/24``, which belongs to someone on the real
  internet: libp2p refuses AutoNAT and hole punching on private, CGNAT and documentation
  ranges, so the test internet must look public. That is safe only because these namespaces
  have no link to any real network.
- The guard (``guard=True``; the default of :class:`HomeNat`): an nftables rule in each host
  namespace counts and drops every packet a host sends to an address outside the topology's
  own networks (loopback allowed). Guarded hosts get default routes onto their own link
  where they have none (IPv4 and IPv6), so a dial to anywhere reaches the guard and is
  counted (:meth:`foreign_packets`) instead of failing at route lookup.

Hosts have no IPv6 addresses except ``::1`` (no link-local ones either: no neighbour
discovery or multicast chatter to count). Needs root and ``iproute2`` (:func:`available`);
NAT and the guard need ``nft`` (nftables, :func:`nat_available`). The fault harness falls back
to :mod:`learnae.ipfs.faults` where namespaces are not available.

Every namespace is deleted by ``close()`` (also when construction fails midway; idempotent),
which ends the links and nftables rules with it; processes started inside must be ended by
whoever started them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from typing import Self

from learnae.errors import LearnaeError

_GUARD_TABLE = "lae_guard"
_NO_NFT = ("the `nft` command (nftables) is not installed: run `apt-get install nftables` "
           "(or scripts/install-root-deps) as root")


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


def nat_available() -> tuple[bool, str]:
    """Whether :class:`HomeNat` and guards work here: ``(True, "")`` or ``(False, reason)``.

    Needs what :func:`available` needs, the ``nft`` command, and a kernel with nftables NAT
    (checked by loading a masquerade rule in a scratch namespace).
    """
    ok, why = available()
    if not ok:
        return ok, why
    if shutil.which("nft") is None:
        return False, _NO_NFT
    probe = f"lae-probe-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    try:
        loaded = subprocess.run(["ip", "netns", "exec", probe, "nft", "-f", "-"],
                                input=_router_rules(True), capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if loaded.returncode != 0:
        return False, f"this kernel refuses nftables NAT rules: {loaded.stderr.strip()}"
    return True, ""


def line_links(n: int) -> set[tuple[int, int]]:
    """Links of ``n`` hosts in a line: ``0 - 1 - ... - n-1`` (for :class:`Lan`'s ``links``)."""
    return {(i, i + 1) for i in range(n - 1)}


def star_links(n: int) -> set[tuple[int, int]]:
    """Links of ``n`` hosts in a star: host 0 is the hub, linked to every other host."""
    return {(0, i) for i in range(1, n)}


def _run(argv: list[str], stdin: str | None = None) -> str:
    """Run ``argv``; its stdout, or :class:`LearnaeError` with its stderr when it fails."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise LearnaeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def _ip(*args: str, netns: str | None = None) -> None:
    _run(["ip", *(["-n", netns] if netns else []), *args])


def _in(netns: str, *argv: str, stdin: str | None = None) -> str:
    """Run ``argv`` inside namespace ``netns``; its stdout."""
    return _run(["ip", "netns", "exec", netns, *argv], stdin)


_IPV6 = os.path.exists("/proc/sys/net/ipv6")


def _up(dev: str, netns: str) -> None:
    """Bring ``dev`` up without IPv6 link-local address (no neighbour discovery chatter)."""
    if _IPV6:
        _ip("link", "set", dev, "addrgenmode", "none", netns=netns)
    _ip("link", "set", dev, "up", netns=netns)


def _router_rules(hole_punching: bool) -> str:
    """The nftables ruleset of a home router with interfaces ``wan`` and ``lan``."""
    masquerade = "masquerade" if hole_punching else "masquerade fully-random"
    return f"""
table ip lae_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
}}
table inet lae_router {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }}
}}
"""


def _guard_rules(networks: Iterable[str]) -> str:
    """An output chain counting (counter ``foreign``) and dropping packets outside ``networks``."""
    return f"""
table inet {_GUARD_TABLE} {{
    counter foreign {{
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "lo" accept
        ip daddr {{ {", ".join(sorted(networks))} }} accept
        counter name "foreign" drop
    }}
}}
"""


class _Topology:
    """Namespaces made together and deleted together; subclasses build them in ``_make``.

    Attributes:
        bridge_ns: the namespace holding the bridge ``br0``; host or router ``i`` is on port
            ``p<i>`` of it.
        names: the host namespaces' names, in host order.
        addresses: each host's IPv4 address, the one it listens on (same order).
    """

    def __init__(self) -> None:
        self._tag = f"lae-{uuid.uuid4().hex[:6]}"
        self.bridge_ns = f"{self._tag}-br"
        self.names: list[str] = []
        self.addresses: list[str] = []
        self._made: list[str] = []
        self._guarded: list[str] = []

    def _build(self) -> None:
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self) -> None:
        raise NotImplementedError

    def _netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._made.append(name)
        _ip("link", "set", "lo", "up", netns=name)

    def _bridge(self) -> None:
        self._netns(self.bridge_ns)
        _ip("link", "add", "br0", "type", "bridge", netns=self.bridge_ns)
        _up("br0", self.bridge_ns)

    def _plug(self, i: int, netns: str, dev: str) -> None:
        """A veth from ``dev`` in ``netns`` to port ``p<i>`` of the bridge (``dev`` left down)."""
        _ip("link", "add", dev, "type", "veth", "peer", "name", f"p{i}", netns=netns)
        _ip("link", "set", f"p{i}", "netns", self.bridge_ns, netns=netns)
        _ip("link", "set", f"p{i}", "master", "br0", netns=self.bridge_ns)
        _up(f"p{i}", self.bridge_ns)

    def _guard(self, netns: str, networks: Iterable[str], default_route: bool) -> None:
        """Count and drop what ``netns`` sends outside ``networks`` (see the module docstring).

        Default routes onto ``eth0`` (IPv4 one only with ``default_route``) make a dial to
        anywhere reach the guard instead of failing at route lookup.
        """
        if default_route:
            _ip("route", "add", "default", "dev", "eth0", netns=netns)
        if _IPV6:
            _ip("-6", "route", "add", "default", "dev", "eth0", netns=netns)
        _in(netns, "nft", "-f", "-", stdin=_guard_rules(networks))
        self._guarded.append(netns)

    def command(self, host: int, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside host ``host``'s namespace (exec'd: same pid)."""
        return ["ip", "netns", "exec", self.names[host], *argv]

    def cut(self, host: int) -> None:
        """Pull host ``host``'s cable: nothing reaches it or leaves it until :meth:`restore`.

        On a :class:`HomeNat` the cable of a natted host is its router's internet link.
        """
        _ip("link", "set", f"p{host}", "down", netns=self.bridge_ns)

    def restore(self, host: int) -> None:
        """Plug host ``host``'s cable back in (undoes :meth:`cut`)."""
        _ip("link", "set", f"p{host}", "up", netns=self.bridge_ns)

    def foreign_packets(self) -> dict[str, int]:
        """Packets each guarded host sent outside the topology (all dropped).

        Returns:
            host namespace name -> packets counted by its guard since it was made; empty when
            no host is guarded (or after :meth:`close`).

        Raises:
            LearnaeError: ``nft`` could not read a counter.
        """
        counts = {}
        for ns in self._guarded:
            listed = json.loads(_in(ns, "nft", "-j", "list", "counter", "inet", _GUARD_TABLE,
                                    "foreign"))
            counts[ns] = next(item["counter"]["packets"] for item in listed["nftables"]
                              if "counter" in item)
        return counts

    def link_bytes(self) -> list[int]:
        """Bytes each host's link carried so far, both ways, in host order.

        The bridge port's counters: every frame, headers included.

        Raises:
            LearnaeError: ``ip`` could not read the counters.
        """
        links = {link["ifname"]: link["stats64"] for link in
                 json.loads(_in(self.bridge_ns, "ip", "-s", "-j", "link", "show"))}
        return [links[f"p{i}"]["rx"]["bytes"] + links[f"p{i}"]["tx"]["bytes"] for i in range(len(self.names))]

    def close(self) -> None:
        """Delete every namespace made (their links and rules go with them). Idempotent."""
        self._guarded.clear()
        while self._made:
            subprocess.run(["ip", "netns", "del", self._made.pop()], capture_output=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lan(_Topology):
    """``hosts`` namespaces on one bridge (``10.77.<lan>.<host + 1>``). A context manager.

    Args:
        hosts: how many hosts, 1 to 254.
        lan: the third byte of the addresses, 0 to 255 (two Lans alive at once need not
            differ: their namespaces are apart).
        links: pairs ``(i, j)`` of hosts that can reach each other (either order); every other
            pair gets ENETUNREACH at once. ``None``: every host reaches every other one.
            Hosts then have ``/32`` addresses and a host route per neighbour.
        guard: count and drop what hosts send outside ``10.77.<lan>.0/24``
            (:meth:`foreign_packets`); needs ``nft``.

    Attributes:
        names: the host namespaces' names, in order.
        addresses: each host's IPv4 address (same order).
        links: the links as sorted pairs, or ``None`` for a full mesh.
        network: the LAN's network, ``10.77.<lan>.0/24``.

    Raises:
        ValueError: a count, ``lan`` or link is out of range.
        LearnaeError: a command failed (nothing made is left behind), or ``nft`` is missing
            with ``guard``.
    """

    def __init__(self, hosts: int, lan: int = 1, links: Iterable[tuple[int, int]] | None = None,
                 *, guard: bool = False):
        if not 1 <= hosts <= 254 or not 0 <= lan <= 255:
            raise ValueError(f"a Lan has 1 to 254 hosts and lan 0 to 255, not {hosts}, {lan}")
        if guard and shutil.which("nft") is None:
            raise LearnaeError(_NO_NFT)
        super().__init__()
        self.links: frozenset[tuple[int, int]] | None = None
        if links is not None:
            self.links = frozenset((min(i, j), max(i, j)) for i, j in links)
            bad = [(i, j) for i, j in self.links if i == j or i < 0 or j >= hosts]
            if bad:
                raise ValueError(f"links {bad} are not between two of hosts 0..{hosts - 1}")
        self.network = f"10.77.{lan}.0/24"
        self.names = [f"{self._tag}-h{i}" for i in range(hosts)]
        self.addresses = [f"10.77.{lan}.{i + 1}" for i in range(hosts)]
        self._bridges: set[str] = set()
        self._guard_hosts = guard
        self._build()

    def _make(self) -> None:
        self._bridge()
        prefix = "/24" if self.links is None else "/32"
        for i, (ns, addr) in enumerate(zip(self.names, self.addresses, strict=True)):
            self._netns(ns)
            self._plug(i, ns, "eth0")
            _ip("addr", "add", addr + prefix, "dev", "eth0", netns=ns)
            _up("eth0", ns)
        if self.links is not None:
            for i, j in sorted(self.links):
                for a, b in ((i, j), (j, i)):
                    _ip("route", "add", f"{self.addresses[b]}/32", "dev", "eth0",
                        netns=self.names[a])
            for ns in self.names:  # the rest of the LAN: "no route" even with a default route
                _ip("route", "add", "throw", self.network, netns=ns)
        if self._guard_hosts:
            for ns in self.names:
                self._guard(ns, [self.network], default_route=True)

    def partition(self, groups: list[list[int]]) -> None:
        """Hosts in different ``groups`` can no longer reach each other.

        Hosts in one group still can. Hosts in no group stay on the main bridge (one more
        group).
        """
        for g, hosts in enumerate(groups, start=1):
            bridge = f"br{g}"
            if bridge not in self._bridges:
                _ip("link", "add", bridge, "type", "bridge", netns=self.bridge_ns)
                _up(bridge, self.bridge_ns)
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


class HomeNat(_Topology):
    """Public hosts on an "internet" bridge and hosts behind home routers. A context manager.

    Hosts ``0 .. public - 1`` are public: address ``11.77.<net>.<i + 1>/24`` on the internet
    bridge. Each host ``i >= public`` (natted host ``k = i - public + 1``) has a router
    namespace of its own: WAN address ``11.77.<net>.<i + 1>`` on the internet bridge, LAN
    ``192.168.<k>.0/24`` (router ``.1``, host ``.2``, the host's default route via the
    router), IPv4 forwarding on, and nftables rules: ``masquerade`` out of the WAN; from the
    WAN, forwarded or to the router, only packets of connections already made from inside
    (established/related) are let through, the rest dropped silently.

    Args:
        public: how many public hosts.
        natted: how many hosts behind routers (``1 <= public + natted <= 254``).
        hole_punching: per natted host (or one value for all): ``True``, plain
            ``masquerade``, which keeps a connection's source port while it is free (always,
            with one host per router): endpoint-independent mapping, so TCP simultaneous open
            through two such routers works; ``False``, ``masquerade fully-random``: a new
            random port per connection (symmetric NAT), hole punching fails.
        net: the third byte of the internet addresses, 0 to 255.
        guard: count and drop what hosts send outside the topology's networks
            (:meth:`foreign_packets`).

    Attributes:
        names: the host namespaces' names, public hosts first.
        addresses: the address each host has and listens on (public ones first).
        wan_addresses: what the internet sees of each host: its own address if public, its
            router's WAN address if natted.
        routers: each host's router namespace, ``None`` for public hosts.
        hole_punching: per host, whether its router keeps ports (``True`` for public hosts).
        networks: the topology's networks (the internet and each home LAN), CIDR strings.

    Raises:
        ValueError: counts, ``net`` or ``hole_punching`` do not fit.
        LearnaeError: a command failed (nothing made is left behind), or ``nft`` is missing.
    """

    def __init__(self, public: int, natted: int, *, hole_punching: bool | Sequence[bool] = True,
                 net: int = 1, guard: bool = True):
        if public < 0 or natted < 0 or not 1 <= public + natted <= 254 or not 0 <= net <= 255:
            raise ValueError("a HomeNat has 1 to 254 hosts (public + natted) and net 0 to 255, "
                             f"not {public}, {natted}, {net}")
        punch = ([hole_punching] * natted if isinstance(hole_punching, bool)
                 else list(hole_punching))
        if len(punch) != natted:
            raise ValueError(f"hole_punching has {len(punch)} values for {natted} natted hosts")
        if shutil.which("nft") is None:
            raise LearnaeError(_NO_NFT)
        super().__init__()
        self.public = public
        hosts = range(public + natted)
        self.names = [f"{self._tag}-h{i}" for i in hosts]
        self.wan_addresses = [f"11.77.{net}.{i + 1}" for i in hosts]
        self.addresses = [self.wan_addresses[i] if i < public else f"192.168.{i - public + 1}.2"
                          for i in hosts]
        self.routers: list[str | None] = [None if i < public else f"{self._tag}-r{i}"
                                          for i in hosts]
        self.hole_punching = [True] * public + punch
        self.networks = [f"11.77.{net}.0/24",
                         *(f"192.168.{k}.0/24" for k in range(1, natted + 1))]
        self._guard_hosts = guard
        self._build()

    def natted(self, host: int) -> bool:
        """Whether host ``host`` is behind a router."""
        return host >= self.public

    def public_address(self, host: int) -> str:
        """The address the internet sees for host ``host`` (its router's, if natted)."""
        return self.wan_addresses[host]

    def _make(self) -> None:
        self._bridge()
        for i, ns in enumerate(self.names):
            self._netns(ns)
            router = self.routers[i]
            if router is None:
                self._plug(i, ns, "eth0")
                _ip("addr", "add", f"{self.addresses[i]}/24", "dev", "eth0", netns=ns)
                _up("eth0", ns)
            else:
                self._router(i, ns, router)
            if self._guard_hosts:
                self._guard(ns, self.networks, default_route=router is None)

    def _router(self, i: int, host_ns: str, router: str) -> None:
        lan = self.addresses[i].rsplit(".", 1)[0]
        self._netns(router)
        self._plug(i, router, "wan")
        _ip("addr", "add", f"{self.wan_addresses[i]}/24", "dev", "wan", netns=router)
        _up("wan", router)
        _ip("link", "add", "eth0", "type", "veth", "peer", "name", "lan", netns=host_ns)
        _ip("link", "set", "lan", "netns", router, netns=host_ns)
        _ip("addr", "add", f"{lan}.1/24", "dev", "lan", netns=router)
        _up("lan", router)
        _ip("addr", "add", f"{lan}.2/24", "dev", "eth0", netns=host_ns)
        _up("eth0", host_ns)
        _ip("route", "add", "default", "via", f"{lan}.1", netns=host_ns)
        # /proc/sys/net shows the namespace of the process reading it
        _in(router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        _in(router, "nft", "-f", "-", stdin=_router_rules(self.hole_punching[i]))
