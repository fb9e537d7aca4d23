"""Network namespaces: a LAN whose cut link partitions, line and star topologies, home NATs
(masquerade, hole punching or not) and the guard that counts and drops packets bound outside."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys

import pytest

from learnae.errors import LearnaeError
from learnae.local import netns

ok, why = netns.available()
nat_ok, nat_why = netns.nat_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(not ok, reason=why or "netns available")]
needs_nft = pytest.mark.skipif(not nat_ok, reason=nat_why or "nft available")

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(); print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"""

# prints what the server sent (the address it saw us at), or why the connection failed
CLIENT = """
import errno, socket, sys
try:
    with socket.create_connection((sys.argv[1], 7777), timeout=float(sys.argv[2])) as c:
        print(c.recv(64).decode())
except TimeoutError:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"""

# TCP simultaneous open, as libp2p's DCUtR does it: bind the port we ask the peer to dial,
# dial the peer's public address from it, retry until connected or out of time
PUNCH = """
import socket, sys, time
local, peer, name = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((local, 4001))
    s.settimeout(1.0)
    try:
        s.connect((peer, 4001))
        s.sendall(name.encode())
        got = s.recv(1).decode()
        print("connected", s.getpeername()[0], got, flush=True)
        sys.exit(0)
    except OSError:
        s.close()
        time.sleep(0.1)
print("failed", flush=True)
"""


def _dial(topo, src: int, dst: str, timeout: float = 1.5) -> str:
    out = subprocess.run(topo.command(src, [sys.executable, "-c", CLIENT, dst, str(timeout)]),
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@contextlib.contextmanager
def _servers(topo, hosts, bind: str | None = None):
    procs = []
    try:
        for i in hosts:
            procs.append(subprocess.Popen(
                topo.command(i, [sys.executable, "-c", SERVER, bind or topo.addresses[i]]),
                stdout=subprocess.PIPE, text=True))
        assert all(p.stdout.readline().strip() == "ready" for p in procs)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _gone(names) -> bool:
    listed = {line.split()[0] for line in _namespaces().splitlines() if line.strip()}
    return not listed & set(names)


# -- Lan ----------------------------------------------------------------------------------

def test_cut_partitions_and_restore_heals():
    with netns.Lan(2) as lan:
        with _servers(lan, [1]):
            assert _dial(lan, 0, lan.addresses[1]) == lan.addresses[0]
            lan.cut(1)
            assert _dial(lan, 0, lan.addresses[1]) == "timeout"
            lan.restore(1)
            assert _dial(lan, 0, lan.addresses[1]) == lan.addresses[0]
    assert _gone([lan.bridge_ns, *lan.names])


def test_partition_into_groups_and_heal():
    with netns.Lan(3) as lan, _servers(lan, [1, 2]):
        lan.partition([[0, 1], [2]])
        assert _dial(lan, 0, lan.addresses[1]) == lan.addresses[0]  # same group
        assert _dial(lan, 0, lan.addresses[2]) != lan.addresses[0]
        assert _dial(lan, 1, lan.addresses[2]) != lan.addresses[1]
        lan.heal()
        assert _dial(lan, 0, lan.addresses[2]) == lan.addresses[0]
        assert _dial(lan, 1, lan.addresses[2]) == lan.addresses[1]


def test_the_host_namespaces_cannot_reach_this_machine_s_loopback():
    with netns.Lan(1) as lan:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        probe.listen()
        port = probe.getsockname()[1]
        code = f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), timeout=1); print('reached')\nexcept OSError: print('isolated')"
        out = subprocess.run(lan.command(0, [sys.executable, "-c", code]), capture_output=True, text=True, timeout=30)
        probe.close()
        assert out.stdout.strip() == "isolated"


@pytest.mark.parametrize("guard", [False, pytest.param(True, marks=needs_nft)])
def test_line_ends_have_no_route_to_each_other_and_neighbours_connect(guard):
    # the guard's default route must not give the ends a way to each other
    with netns.Lan(3, links=netns.line_links(3), guard=guard) as lan, _servers(lan, range(3)):
        a = lan.addresses
        assert _dial(lan, 0, a[1]) == a[0] and _dial(lan, 1, a[0]) == a[1]
        assert _dial(lan, 1, a[2]) == a[1] and _dial(lan, 2, a[1]) == a[2]
        assert _dial(lan, 0, a[2]) == "ENETUNREACH" and _dial(lan, 2, a[0]) == "ENETUNREACH"
        # partition and heal still work on a line
        lan.partition([[0], [1, 2]])
        assert _dial(lan, 0, a[1], timeout=1) != a[0]
        assert _dial(lan, 2, a[1]) == a[2]
        lan.heal()
        assert _dial(lan, 0, a[1]) == a[0]


def test_star_leaves_reach_the_hub_only():
    with netns.Lan(4, links=netns.star_links(4)) as lan, _servers(lan, range(4)):
        a = lan.addresses
        for leaf in (1, 2, 3):
            assert _dial(lan, leaf, a[0]) == a[leaf] and _dial(lan, 0, a[leaf]) == a[0]
            for other in {1, 2, 3} - {leaf}:
                assert _dial(lan, leaf, a[other]) == "ENETUNREACH"
        lan.cut(0)
        assert _dial(lan, 1, a[0], timeout=1) != a[1]
        lan.restore(0)
        assert _dial(lan, 1, a[0]) == a[1]


def test_links_out_of_range_are_refused_before_anything_is_made():
    with pytest.raises(ValueError, match="links"):
        netns.Lan(3, links={(0, 3)}).close()
    with pytest.raises(ValueError, match="links"):
        netns.Lan(3, links={(1, 1)}).close()


# -- HomeNat ------------------------------------------------------------------------------

@needs_nft
def test_a_natted_host_reaches_a_public_one_from_its_router_s_address():
    with netns.HomeNat(1, 2) as nat, _servers(nat, [0]):
        assert nat.addresses[1] != nat.public_address(1)
        assert nat.natted(1) and not nat.natted(0)
        assert nat.public_address(0) == nat.addresses[0]
        for i in (1, 2):
            assert _dial(nat, i, nat.addresses[0]) == nat.public_address(i)
        nat.cut(1)  # the router's internet link
        assert _dial(nat, 1, nat.addresses[0], timeout=1) == "timeout"
        assert _dial(nat, 2, nat.addresses[0]) == nat.public_address(2)
        nat.restore(1)
        assert _dial(nat, 1, nat.addresses[0]) == nat.public_address(1)
    assert _gone([nat.bridge_ns, *nat.names, *filter(None, nat.routers)])


@needs_nft
def test_nobody_on_the_internet_can_open_a_connection_to_a_natted_host():
    with netns.HomeNat(1, 1) as nat, _servers(nat, [1], bind="0.0.0.0"):
        assert _dial(nat, 0, nat.public_address(1), timeout=1) == "timeout"  # no port forward
        # even a neighbour on the internet segment that routes the home LAN via the router
        subprocess.run(["ip", "-n", nat.names[0], "route", "add", "192.168.1.0/24", "via",
                        nat.public_address(1)], check=True)
        assert nat.addresses[1] == "192.168.1.2"
        assert _dial(nat, 0, nat.addresses[1], timeout=1) == "timeout"
        # while the natted host itself is served on that port
        assert _dial(nat, 1, nat.addresses[1]) == nat.addresses[1]


def _punch(nat) -> list[str]:
    a, b = 0, 1
    procs = [subprocess.Popen(nat.command(i, [sys.executable, "-c", PUNCH, nat.addresses[i],
                                              nat.public_address(j), str(i), "5"]),
                              stdout=subprocess.PIPE, text=True) for i, j in ((a, b), (b, a))]
    try:
        return [p.communicate(timeout=30)[0].strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


@needs_nft
def test_tcp_simultaneous_open_gets_through_two_port_keeping_nats():
    with netns.HomeNat(0, 2, hole_punching=True) as nat:
        assert _punch(nat) == [f"connected {nat.public_address(1)} 1",
                               f"connected {nat.public_address(0)} 0"]


@needs_nft
@pytest.mark.parametrize("punching", [False, [True, False]], ids=["both-symmetric", "one-symmetric"])
def test_tcp_simultaneous_open_fails_through_a_symmetric_nat(punching):
    with netns.HomeNat(0, 2, hole_punching=punching) as nat:
        assert _punch(nat) == ["failed", "failed"]


@needs_nft
def test_the_guard_counts_and_drops_dials_outside_the_topology():
    with netns.HomeNat(1, 1) as nat, _servers(nat, [0]):
        assert _dial(nat, 1, nat.addresses[0]) == nat.public_address(1)
        assert _dial(nat, 0, nat.addresses[0]) == nat.addresses[0]
        assert nat.foreign_packets() == {nat.names[0]: 0, nat.names[1]: 0}
        for i in (0, 1):  # public host and natted host
            assert _dial(nat, i, "8.8.8.8", timeout=0.5) == "timeout"
            assert _dial(nat, i, "2001:4860:4860::8888", timeout=0.5) == "timeout"
        counts = nat.foreign_packets()
        assert counts[nat.names[0]] >= 2 and counts[nat.names[1]] >= 2


@needs_nft
def test_the_guard_drops_what_would_otherwise_be_delivered():
    with netns.Lan(2, guard=True) as lan, _servers(lan, [1], bind="0.0.0.0"):
        # host 1 also answers at an address outside the LAN's network
        subprocess.run(["ip", "-n", lan.names[1], "addr", "add", "10.99.0.2/32", "dev", "eth0"],
                       check=True)
        assert _dial(lan, 0, lan.addresses[1]) == lan.addresses[0]
        assert lan.foreign_packets() == {lan.names[0]: 0, lan.names[1]: 0}
        assert _dial(lan, 0, "10.99.0.2", timeout=1) == "timeout"
        assert lan.foreign_packets()[lan.names[0]] > 0
        subprocess.run(["ip", "netns", "exec", lan.names[0], "nft", "delete", "table", "inet",
                        "lae_guard"], check=True)
        assert _dial(lan, 0, "10.99.0.2") == lan.addresses[0]


def test_a_lan_without_guard_counts_nothing():
    with netns.Lan(1) as lan:
        assert lan.foreign_packets() == {}


# -- cleanup ------------------------------------------------------------------------------

TOPOLOGIES = {
    "line-guarded": lambda: netns.Lan(3, links=netns.line_links(3), guard=nat_ok),
    "homenat": lambda: netns.HomeNat(1, 2, hole_punching=[True, False]),
}


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_every_namespace_is_gone_after_close_and_after_a_failure_midway(kind, monkeypatch):
    if kind == "homenat" and not nat_ok:
        pytest.skip(nat_why)
    real = netns._run
    made: list[str] = []
    calls = 0
    fail_at = 0

    def run(argv, stdin=None):
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise LearnaeError("provoked")
        if argv[:3] == ["ip", "netns", "add"]:
            made.append(argv[3])
        return real(argv, stdin)

    monkeypatch.setattr(netns, "_run", run)
    try:
        topo = TOPOLOGIES[kind]()
        total = calls
        topo.close()
        topo.close()  # idempotent
        assert made and _gone(made)
        for fail_at in (2, total // 2, total):
            made.clear()
            calls = 0
            with pytest.raises(LearnaeError, match="provoked"):
                TOPOLOGIES[kind]().close()
            assert made and _gone(made), f"left behind when call {fail_at} of {total} failed"
    finally:  # whatever the code under test left behind
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
