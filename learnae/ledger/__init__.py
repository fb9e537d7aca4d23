"""The ledger: a tangle of signed transactions, stored in SQLite and synced by gossip.

Modules:

- :mod:`learnae.ledger.tx`: the transaction wire format (DAG-CBOR), proof-of-work, signatures.
- :mod:`learnae.ledger.tangle`: the SQLite store: tips, weights, tip selection, order, queries;
  pruning (the frontier of entry points) and snapshot files for fast joins.
- :mod:`learnae.ledger.sync`: gossip over pubsub, gap repair, anti-entropy, flood limits; the
  newest snapshot transaction carried in tip announcements.
- :mod:`learnae.ledger.reader`: what a node's network side needs of its ledger (two protocols
  the tangle and the syncer satisfy, and a simulation's shared ledger too).
"""
