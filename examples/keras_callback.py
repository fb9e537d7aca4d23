"""Your own Keras training script, joined to a learnae swarm by one callback.

The swarm fixes the model (its manifest); the data, the epochs and the rest of the script are
yours. ``TrainerNode.joined`` starts this machine's node (embedded IPFS, ledger, API) for the
``with`` block and yields a :class:`~learnae.training.callback.SwarmCallback`: every
``sync_every`` batches it hands a snapshot of the weights to the node, which publishes it as
a checkpoint and merges peers' checkpoints in the background; merged weights are loaded
between batches. Training never waits for the network.

Run (after ``learnae init swarm --name digits --model digits-mlp``, see examples/README.md)::

    python examples/keras_callback.py --invite swarm/invite.json --state my-node \\
        --peer /ip4/127.0.0.1/tcp/4001/p2p/<a running node's peer id> --epochs 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from learnae.api import start_api
from learnae.invite import Invite
from learnae.node import NodeConfig, TrainerNode
from learnae.training.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invite", type=Path, required=True, help="The swarm's invite.json.")
    parser.add_argument("--state", type=Path, required=True, help="This node's state directory.")
    parser.add_argument("--peer", action="append", default=[], help="A peer's multiaddr (repeat).")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    # 1. Your data: here the half of scikit-learn's digits with labels 0-4, scaled to [0, 1].
    x, y = load_digits(return_X_y=True)
    mine = y < 5
    x, y = (x[mine] / 16.0).astype(np.float32), y[mine].astype(np.int64)

    # 2. The swarm's model, as its manifest defines it (your own layers must match it).
    # (the HTTP API, GET /status etc., is served by learnae.api, wired in by the script)
    node = TrainerNode(NodeConfig(invite=Invite.load(args.invite), state=args.state, peers=tuple(args.peer),
                                  api="127.0.0.1:0", serve=start_api))
    m = node.manifest
    model = build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate)

    # 3. Train as usual, with the swarm's callback.
    with node.joined(model, batch_size=32, samples_per_epoch=len(x)) as swarm_callback:
        history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=2, callbacks=[swarm_callback])
    print(f"done: loss {history.history['loss'][-1]:.4f}; {node.published} checkpoints published,"
          f" {node.merges} merges; last checkpoint {node.last_checkpoint}")


if __name__ == "__main__":
    main()
