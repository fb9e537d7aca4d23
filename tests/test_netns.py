"""Network namespaces joined by a bridge: a cut link partitions, a restored one heals."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from learnae.local import netns

ok, why = netns.available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(not ok, reason=why or "netns available")]

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hi"); c.close()
"""

CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7777), timeout=1.5) as c:
        print(c.recv(2).decode())
except OSError as e:
    print("unreachable")
"""


def _dial(lan, src, dst) -> str:
    out = subprocess.run(lan.command(src, [sys.executable, "-c", CLIENT, lan.addresses[dst]]),
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_cut_partitions_and_restore_heals():
    with netns.Lan(2) as lan:
        server = subprocess.Popen(lan.command(1, [sys.executable, "-c", SERVER, lan.addresses[1]]),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            assert _dial(lan, 0, 1) == "hi"
            lan.cut(1)
            assert _dial(lan, 0, 1) == "unreachable"
            lan.restore(1)
            assert _dial(lan, 0, 1) == "hi"
        finally:
            server.kill()
            server.wait()
    # the namespaces are gone
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lan.bridge_ns not in names and all(n not in names for n in lan.names)


def test_partition_into_groups_and_heal():
    with netns.Lan(3) as lan:
        servers = [subprocess.Popen(lan.command(i, [sys.executable, "-c", SERVER, lan.addresses[i]]),
                                    stdout=subprocess.PIPE, text=True) for i in (1, 2)]
        try:
            assert all(s.stdout.readline().strip() == "ready" for s in servers)
            lan.partition([[0, 1], [2]])
            assert _dial(lan, 0, 1) == "hi"  # same group
            assert _dial(lan, 0, 2) == "unreachable" and _dial(lan, 1, 2) == "unreachable"
            lan.heal()
            assert _dial(lan, 0, 2) == "hi" and _dial(lan, 1, 2) == "hi"
        finally:
            for s in servers:
                s.kill()
                s.wait()


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
