"""The trainer node: ``learnae node run`` and the network side every trainer shares.

Modules:

- :mod:`~learnae.node.trainer`: :class:`TrainerNode` and :class:`NodeConfig`: the state
  directory, the author key, Keras training in the main thread and the network side on an
  asyncio loop in a thread of its own; ``/status``.
- :mod:`~learnae.node.network`: :class:`NetworkSide`: publish a checkpoint, choose, fetch,
  check and merge peers' checkpoints, adopt sensors' data chunks, count refusals by reason.
  The node and the fault harness's memory driver run this same class.
- :mod:`~learnae.node.peers`: :class:`PeerChoice`: which peer checkpoints a merge takes
  (freshest ``k``, one per author, none stale, backoff).
- :mod:`~learnae.node.upkeep`: :class:`~learnae.node.upkeep.Upkeep`: what a node that runs for
  weeks needs: garbage collection of its IPFS repository, ledger pruning, snapshots for nodes
  joining late, and the disk budget.
"""

from learnae.node.network import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_K,
    DEFAULT_KEEP,
    DEFAULT_STALE,
    NetworkSide,
    fetch_peer_checkpoint,
    merge_contributions,
    publish_checkpoint,
)
from learnae.node.peers import PeerChoice
from learnae.node.trainer import (
    DEFAULT_NETWORK_NICE,
    NodeConfig,
    TrainerNode,
    lower_thread_priority,
    parse_adopt,
)

__all__ = ["DEFAULT_FETCH_TIMEOUT", "DEFAULT_K", "DEFAULT_KEEP", "DEFAULT_NETWORK_NICE", "DEFAULT_STALE",
           "NetworkSide", "NodeConfig", "PeerChoice", "TrainerNode", "fetch_peer_checkpoint",
           "lower_thread_priority", "merge_contributions", "parse_adopt", "publish_checkpoint"]
