"""The ledger: a tangle of signed transactions, stored in SQLite and synced by gossip.

Modules:

- :mod:`learnae.ledger.tx`: the transaction wire format (DAG-CBOR), proof-of-work, signatures.
- :mod:`learnae.ledger.tangle`: the SQLite store: tips, weights, tip selection, order, queries;
  pruning (the frontier of entry points) and snapshot files for fast joins.
- :mod:`learnae.ledger.sync`: gossip over pubsub, gap repair, anti-entropy, flood limits; the
  newest snapshot transaction carried in tip announcements.
"""
