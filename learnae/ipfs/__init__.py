"""IPFS for learnae: one async interface, three backends, private swarms only.

Modules:

- :mod:`learnae.ipfs.base`: the :class:`~learnae.ipfs.base.IpfsNode` interface every role uses
  (garbage collection included), and :class:`~learnae.ipfs.base.ForwardingNode`, the base of
  layers over a node.
- :mod:`learnae.ipfs.embedded`: Kubo inside this process (the default backend).
- :mod:`learnae.ipfs.libkubo`: the blocking ctypes binding to Kubo as a shared library.
- :mod:`learnae.ipfs.rpc`: a Kubo daemon driven through its RPC API, its config checked first.
- :mod:`learnae.ipfs.memory`: a simulated network in one process (unit tests, simulations).
- :mod:`learnae.ipfs.faults`: a fault layer around any node: blocked peers, loss, delay.
- :mod:`learnae.ipfs.privnet`: a Kubo repo's private-swarm config (swarm key, no public peers).
- :mod:`learnae.ipfs.peering`: keep a node connected to a fixed list of peers.
- :mod:`learnae.ipfs.addr`: multiaddr checks.
"""
