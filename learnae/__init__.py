"""learnae: a peer-to-peer training swarm.

Volunteer nodes train one Keras model together with no server: checkpoints and
data chunks travel through IPFS, a tangle ledger records who published what and
in which order, and nodes merge each other's checkpoints asynchronously.
See ``docs/design.md`` (the reference) and ``docs/architecture.md`` (a tour) for the layers.

Modules and packages, from the top layer down (a module imports only from layers below its
own; the contracts are in ``setup.cfg``, ``[importlinter]``):

- :mod:`learnae.cli`: the ``learnae`` command line (click).
- :mod:`learnae.api`: the trainer node's HTTP API (``/status``, ``/metrics``, ``/ingest``).
- :mod:`learnae.sensor_cli`: ``learnae sensor ...``, the sensor feeder's commands.
- :mod:`learnae.faults_cli`: ``learnae faults ...``, the fault harness's commands.
- :mod:`learnae.local`: local swarms on this machine: the demo, the runner, the fault harness.
- :mod:`learnae.node`: the trainer node and the network side every trainer shares.
- :mod:`learnae.sensor`: the sensor feeder: readings in, signed data chunks out.
- :mod:`learnae.training`: Keras and data glue, the only part that imports TensorFlow.
- :mod:`learnae.manifest`: the manifest, a swarm's definition (its genesis payload).
- :mod:`learnae.invite`: the invite a node or sensor joins a swarm with.
- :mod:`learnae.state`: a member's state directory: layout, making a swarm, opening its ledger.
- :mod:`learnae.merge`: merge rules over weight arrays, and the checks of peers' updates.
- :mod:`learnae.verify`: who spot-checks which checkpoint, the verdict rules, authors' standings.
- :mod:`learnae.models`: the model configs learnae knows by name, and their checks.
- :mod:`learnae.ingest`: the ``POST /ingest`` contract, shared by the node, sensor and API.
- :mod:`learnae.ledger`: transactions, the SQLite tangle, and its sync by gossip.
- :mod:`learnae.ipfs`: the ``IpfsNode`` interface, its backends, private-swarm config.
- :mod:`learnae.identity`: Ed25519 keys, ``did:key`` author ids, signatures.
- :mod:`learnae.content`: CIDs computed as Kubo's ``ipfs add`` computes them.
- :mod:`learnae.formats`: checkpoint and data-chunk files (safetensors), validated first.
- :mod:`learnae.files`: crash-safe file writes and small JSON reads.
- :mod:`learnae.errors`: typed errors, each with a ``code``.
"""

__version__ = "0.1.0"
