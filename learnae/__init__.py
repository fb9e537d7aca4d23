"""learnae: a peer-to-peer training swarm.

Volunteer nodes train one Keras model together with no server: checkpoints and
data chunks travel through IPFS, a tangle ledger records who published what and
in which order, and nodes merge each other's checkpoints asynchronously.
See ``docs/design.md`` (the reference) and ``docs/architecture.md`` (a tour) for the layers.
"""

__version__ = "0.1.0"
