"""Where Keras meets the network: the bridge between :class:`SwarmCallback` and the node.

Keras trains in the main thread; the node's network runs on an asyncio loop in its own
thread (docs/design.md "Node loop"). They exchange two things, at batch boundaries only:

- out (Keras -> node): an :class:`Offer`, a snapshot of the model's weights with the local
  step and sample counts, every ``sync_every`` batches. The node publishes it as a checkpoint
  and merges peers' checkpoints with it.
- in (node -> Keras): a :class:`Merged` set of weights, which the callback applies at the
  next batch boundary (adding its ``delta``, the displacement, to the current weights).

Neither side ever waits for the other: the Keras side calls only non-blocking methods
(:meth:`SwarmBridge.offer_checkpoint`, :meth:`SwarmBridge.take_merged`). This module does not
import TensorFlow, so the network side can use it freely.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["Merged", "Offer", "QueueBridge", "SwarmBridge"]


@dataclass(frozen=True, eq=False)
class Offer:
    """A snapshot of the local model, handed from Keras to the node.

    Attributes:
        weights: weight path -> array (private copies, ``model.weights`` order), as
            :func:`learnae.training.model.get_weights` returns; goes into the checkpoint file.
        step: the local step: batches trained so far (cumulative, across ``fit`` calls, from
            the callback's ``initial_step``); the checkpoint's ``step``.
        samples: examples trained on since the previous offer the bridge accepted; the
            checkpoint transaction's ``samples`` (and the weight of these weights in a
            sample-weighted merge).
        total_samples: examples trained on since the callback started (plus its
            ``initial_samples``).
        merged: the ``tag`` of every :class:`Merged` set applied to the model since the
            previous accepted offer, oldest first: these weights descend from them (the node
            puts in a tag what it needs for the checkpoint's ``base``, e.g. the checkpoint tx
            CIDs it merged).
        k: merge with up to ``k`` peer checkpoints (the callback's setting, passed through).
        min_peers: skip merging while fewer than ``min_peers`` peer checkpoints are at hand.
    """

    weights: dict[str, np.ndarray]
    step: int
    samples: int
    total_samples: int
    merged: tuple[Any, ...] = ()
    k: int = 1
    min_peers: int = 0

    def after(self, older: Offer) -> Offer:
        """This offer, standing in for ``older`` too (which was never taken).

        Samples add up, merged tags are concatenated, everything else is this offer's.
        """
        return replace(self, samples=older.samples + self.samples, merged=older.merged + self.merged)


@dataclass(frozen=True, eq=False)
class Merged:
    """Weights the node wants the model to continue from.

    Attributes:
        weights: weight path -> array, the same names, shapes and dtypes as the model's.
        tag: anything the node wants back in the next :attr:`Offer.merged` once these weights
            are applied (e.g. the checkpoint tx CIDs merged into them); opaque to Keras.
        delta: None, or ``weights`` minus the snapshot they were merged from
            (:attr:`Offer.weights`), by path. When given, the callback adds it to the model's
            current weights instead of replacing them, so the batches trained while the node
            published and merged are kept: the model continues from ``weights`` plus what it
            learned since the snapshot. (AD-PSGD applies a gradient computed before the
            averaging to the averaged model in the same way; Lian et al., "Asynchronous
            Decentralized Parallel Stochastic Gradient Descent", ICML 2018.)
    """

    weights: Mapping[str, np.ndarray]
    tag: Any = None
    delta: Mapping[str, np.ndarray] | None = None


class SwarmBridge(ABC):
    """The interface between the Keras thread's callback and a node's network thread.

    The callback is :class:`~learnae.training.callback.SwarmCallback`.

    Both methods are called from the Keras thread at batch boundaries and must return at
    once: they may take a lock held only briefly, never wait on the network. An
    implementation must be thread-safe. :class:`QueueBridge` is the standard one.
    """

    @abstractmethod
    def offer_checkpoint(self, offer: Offer) -> bool:
        """Hand a snapshot to the node without blocking.

        Returns:
            True if the bridge accepted it (queued, or folded into a queued one); False if it
            declined (e.g. the node is busy), in which case the callback keeps counting and
            the next offer covers this one's samples and merged tags.
        """

    @abstractmethod
    def take_merged(self) -> Merged | None:
        """Return merged weights ready to apply, or None at once if there are none."""

    def wants_offer(self) -> bool:
        """Whether the node would take an offer now (must return at once).

        An offer is due every ``sync_every`` batches; the callback makes it at the first batch
        boundary at which this is True, and keeps counting until then. A snapshot copies every
        weight on the training thread, so a bridge that knows its node is busy can say so here
        and save snapshots that would be replaced unread. This default always says yes.
        """
        return True


class QueueBridge(SwarmBridge):
    """Two one-slot queues with replace-latest semantics, or offers on request (``pull``).

    ``outbox`` (Keras -> node) and ``inbox`` (node -> Keras) are ``queue.Queue(maxsize=1)``.
    Putting into a full slot replaces what is there, so each side always finds the freshest
    item and neither side ever blocks:

    - :meth:`offer_checkpoint` (Keras side) replaces an offer the node has not taken yet with
      the new one, folding the old one's sample count and merged tags into it
      (:meth:`Offer.after`), so nothing is lost from the counts; it always returns True.
    - :meth:`put_merged` (node side) replaces merged weights the model has not applied yet;
      the replaced set's tag is dropped (its weights were never used).

    Node side: :meth:`take_offer` (non-blocking by default; give a timeout to wait in a worker
    thread, e.g. via ``asyncio.to_thread``) and :meth:`put_merged`.

    With ``pull=True`` (what :class:`~learnae.node.TrainerNode` uses), :meth:`wants_offer` is
    True only while the node waits in :meth:`take_offer` (with a timeout) and no offer is
    queued: the callback snapshots the weights when the node is ready to publish them, not
    while it is still busy with the previous checkpoint. The node then gets the freshest
    weights and the training thread makes no snapshot that would be replaced unread (on 2 CPUs
    with digits and an offer due every 10 batches, two thirds of them were). A node that
    only polls with ``take_offer(0)`` must not use ``pull``: it would never be offered one.

    Counters (ints, for logs and tests): ``offers`` and ``offers_replaced`` (offers put and
    replaced before being taken), ``merged_put`` and ``merged_replaced``.
    """

    def __init__(self, *, pull: bool = False) -> None:
        self.outbox: queue.Queue[Offer] = queue.Queue(maxsize=1)
        self.inbox: queue.Queue[Merged] = queue.Queue(maxsize=1)
        self._out_lock = threading.Lock()  # serializes producers of each slot, so that a
        self._in_lock = threading.Lock()  # get-then-put replacement cannot race another put
        self.pull = pull
        self._waiting = 0  # take_offer calls blocked in the outbox (node side)
        self.offers = 0
        self.offers_replaced = 0
        self.merged_put = 0
        self.merged_replaced = 0

    # ------------------------------------------------------------------ Keras side
    def offer_checkpoint(self, offer: Offer) -> bool:
        """Put ``offer`` in the outbox, folding in one the node has not taken; always True."""
        with self._out_lock:
            try:
                older = self.outbox.get_nowait()
            except queue.Empty:
                pass
            else:
                offer = offer.after(older)
                self.offers_replaced += 1
            self.outbox.put_nowait(offer)  # the slot is empty and only we put: cannot block
            self.offers += 1
        return True

    def take_merged(self) -> Merged | None:
        """Take the merged weights in the inbox, or None at once if it is empty."""
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            return None

    def wants_offer(self) -> bool:
        """True without ``pull``; with it, only while the node waits and no offer is queued."""
        return not self.pull or (self._waiting > 0 and self.outbox.empty())

    # ------------------------------------------------------------------ node side
    def take_offer(self, timeout: float | None = 0.0) -> Offer | None:
        """The latest offer, or None if none arrives within ``timeout`` seconds.

        ``timeout`` 0: do not wait; None: wait as long as it takes. While it waits, a ``pull``
        bridge asks the callback for an offer.
        """
        try:
            if timeout == 0:
                return self.outbox.get_nowait()
            with self._out_lock:
                self._waiting += 1
            try:
                return self.outbox.get(timeout=timeout)
            finally:
                with self._out_lock:
                    self._waiting -= 1
        except queue.Empty:
            return None

    def put_merged(self, weights: Mapping[str, np.ndarray] | Merged, tag: Any = None) -> bool:
        """Queue weights for the model to apply at its next batch boundary.

        ``weights`` is a path -> array map (tagged with ``tag``) or a :class:`Merged`.
        Returns True if it replaced a set the model had not applied yet.
        """
        merged = weights if isinstance(weights, Merged) else Merged(dict(weights), tag)
        with self._in_lock:
            try:
                self.inbox.get_nowait()
            except queue.Empty:
                replaced = False
            else:
                replaced = True
                self.merged_replaced += 1
            self.inbox.put_nowait(merged)
            self.merged_put += 1
        return replaced
