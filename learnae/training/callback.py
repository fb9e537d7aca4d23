"""The Keras callback that joins a training run to a swarm.

A user (or the node) adds it to an ordinary ``fit``::

    bridge = QueueBridge()                     # the node's network thread holds the other end
    model.fit(x, y, batch_size=32, epochs=100,
              callbacks=[SwarmCallback(bridge, batch_size=32, sync_every=50, k=4)])

At every batch boundary it does two things, both without waiting for the network:

1. every ``sync_every`` batches, as soon as ``bridge.wants_offer()`` (at once with the
   default bridge), it hands a snapshot of the weights (copies, by path) and the local
   step/sample counts to ``bridge.offer_checkpoint`` (:class:`~learnae.training.bridge.Offer`);
2. it asks ``bridge.take_merged()`` for merged weights and, when there are some, applies
   them before the next batch: it adds their ``delta`` (merged minus the snapshot they came
   from) to the current weights when the node sends one, else sets the weights
   (:class:`~learnae.training.bridge.Merged`); an offer made at the same boundary is taken
   first, and the next offer names the merged set in ``Offer.merged``.

Given a ``stop`` event, it also ends ``fit`` within one batch once the event is set, even when
it was set between two ``fit`` calls (``fit`` clears ``model.stop_training`` when it starts).

Importing this module imports Keras (the callback subclasses ``keras.callbacks.Callback``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from learnae.errors import ConfigError, LearnaeError  # noqa: E402
from learnae.training.bridge import Merged, Offer, QueueBridge, SwarmBridge  # noqa: E402
from learnae.training.model import get_weights, set_weights  # noqa: E402

__all__ = ["Merged", "Offer", "QueueBridge", "SwarmBridge", "SwarmCallback"]

log = logging.getLogger("learnae.training")


class SwarmCallback(keras.callbacks.Callback):
    """Offers checkpoints to a :class:`SwarmBridge` and applies merged weights from it.

    It never blocks training: it only calls the bridge's non-blocking methods, and an error
    from the bridge or a merged set that does not fit the model is logged, counted and
    skipped (training goes on with the local weights). It runs synchronously at batch
    boundaries (``async_safe`` is False), so weights are never read or written mid-step.

    What happens when the node is still busy with the previous offer is the bridge's choice:
    :class:`QueueBridge` replaces the untaken offer with the new one and carries its counts
    over; a bridge that declines (returns False) makes the callback carry the counts over to
    its next offer. Either way the ``samples`` of the offers the node takes add up to every
    example trained.

    Counting: the local step counts batches (``fit`` with ``steps_per_execution > 1`` reports
    several at once; they are all counted, up to the epoch's number of steps when Keras knows
    it). Keras then calls the callback only at execution boundaries, so an offer due at a
    multiple of ``sync_every`` is made at the first boundary at or after it at which the
    bridge wants one (:meth:`SwarmBridge.wants_offer`; offers due meanwhile make one), and
    merged weights wait for the next boundary. Samples are ``batch_size`` per batch; when
    ``samples_per_epoch`` is given (the number of training rows when ``fit`` gets arrays),
    the last, partial batch of each epoch counts exactly what it holds.

    Stopping: ``fit`` clears ``model.stop_training`` when it starts, so a stop requested
    between two ``fit`` calls by setting it would be lost and the next ``fit`` would run all its
    epochs. With ``stop`` given, the callback sets ``model.stop_training`` whenever the event is
    set, at the start of training, of each epoch and after each batch: ``fit`` then ends after
    at most one more batch, wherever the stop arrived.

    Args:
        bridge: the node's end, e.g. a :class:`QueueBridge`.
        batch_size: the ``batch_size`` given to ``fit`` (Keras does not tell callbacks).
        sync_every: offer a snapshot after every ``sync_every`` local steps (>= 1).
        k: passed through in each offer: merge with up to ``k`` peers' checkpoints (>= 1).
        min_peers: passed through: do not merge with fewer peers at hand (>= 0).
        samples_per_epoch: training rows per epoch, or None (see Counting).
        initial_step, initial_samples: where the counts start (a restarted node continues
            from its last checkpoint's step).
        stop: a :class:`threading.Event` (anything with ``is_set()``) that asks training to
            stop, or None (see Stopping).

    Attributes:
        step: local steps (batches) so far; ``samples``: examples so far (both cumulative,
            from the initial values); ``offers``/``declined``: offers accepted/declined by
            the bridge; ``merges_applied``: merged sets applied (their displacement added,
            or their weights set); ``merges_rejected``: merged sets refused (wrong names,
            shapes, NaN); ``errors``: exceptions raised by the bridge.
        offer_seconds: wall time, in seconds, the training thread spent offering (snapshots
            and ``offer_checkpoint``); ``apply_seconds``: spent in ``take_merged`` and
            applying merged weights. Together: the swarm's whole cost inside ``fit`` on the
            training thread (it never waits for the network).
    """

    def __init__(
        self,
        bridge: SwarmBridge,
        *,
        batch_size: int,
        sync_every: int,
        k: int = 1,
        min_peers: int = 0,
        samples_per_epoch: int | None = None,
        initial_step: int = 0,
        initial_samples: int = 0,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__()
        for what, value, low in (
            ("batch_size", batch_size, 1),
            ("sync_every", sync_every, 1),
            ("k", k, 1),
            ("min_peers", min_peers, 0),
            ("initial_step", initial_step, 0),
            ("initial_samples", initial_samples, 0),
        ):
            _check_int(what, value, low)
        if samples_per_epoch is not None:
            _check_int("samples_per_epoch", samples_per_epoch, 1)
        self.bridge = bridge
        self.batch_size = batch_size
        self.sync_every = sync_every
        self.k = k
        self.min_peers = min_peers
        self.samples_per_epoch = samples_per_epoch
        self.stop = stop
        self.step = initial_step
        self.samples = initial_samples
        self.offers = self.declined = self.merges_applied = self.merges_rejected = 0
        self.errors = 0
        self.offer_seconds = self.apply_seconds = 0.0
        self._pending_samples = 0  # since the last accepted offer
        self._pending_tags: list[Any] = []
        self._due = False  # an offer is due and waits for the bridge to want one
        self._last_batch = -1
        self._epoch_samples = 0

    # Keras hooks ---------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Keras hook: honour a stop asked between two ``fit()`` calls."""
        self._check_stop()  # a stop asked between two fit() calls, which fit() forgot

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Keras hook: restart the epoch's batch and sample counts."""
        self._last_batch = -1
        self._epoch_samples = 0
        self._check_stop()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Keras hook: count the batch, offer a snapshot when due, apply merged weights."""
        steps = (self.params or {}).get("steps")
        if isinstance(steps, int) and steps > 0:
            batch = min(batch, steps - 1)  # Keras reports a short last execution as full
        batches = batch - self._last_batch if batch > self._last_batch else 1
        self._last_batch = batch
        if self.samples_per_epoch is None:
            added = batches * self.batch_size
        else:
            seen = min((batch + 1) * self.batch_size, self.samples_per_epoch)
            added, self._epoch_samples = max(seen - self._epoch_samples, 0), seen
        before = self.step
        self.step += batches
        self.samples += added
        self._pending_samples += added
        if self.step // self.sync_every > before // self.sync_every:
            self._due = True
        if self._due and self.bridge.wants_offer():
            self._due = False
            start = time.perf_counter()
            self._offer()
            self.offer_seconds += time.perf_counter() - start
        start = time.perf_counter()
        self._take_merged()
        self.apply_seconds += time.perf_counter() - start
        self._check_stop()

    # internals -----------------------------------------------------------------------
    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set() and self.model is not None:
            self.model.stop_training = True

    def _offer(self) -> None:
        offer = Offer(
            weights=get_weights(self.model),
            step=self.step,
            samples=self._pending_samples,
            total_samples=self.samples,
            merged=tuple(self._pending_tags),
            k=self.k,
            min_peers=self.min_peers,
        )
        try:
            accepted = self.bridge.offer_checkpoint(offer)
        except Exception as e:  # a broken bridge must not stop training
            self.errors += 1
            _log_every(self.errors, "bridge.offer_checkpoint failed (%d so far): %r", e)
            return
        if accepted is False:
            self.declined += 1
            return
        self.offers += 1
        self._pending_samples = 0
        self._pending_tags.clear()

    def _take_merged(self) -> None:
        try:
            merged = self.bridge.take_merged()
        except Exception as e:
            self.errors += 1
            _log_every(self.errors, "bridge.take_merged failed (%d so far): %r", e)
            return
        if merged is None:
            return
        if not isinstance(merged, Merged):
            merged = Merged(merged)
        try:
            if merged.delta is not None:  # keep the batches trained since the merge's snapshot
                set_weights(self.model, merged.delta, add=True)
            else:
                set_weights(self.model, merged.weights)
        except (LearnaeError, TypeError, ValueError) as e:
            self.merges_rejected += 1
            reason = getattr(e, "reason", None) or repr(e)
            _log_every(self.merges_rejected, "merged weights refused (%d so far): %s", reason)
            return
        self.merges_applied += 1
        self._pending_tags.append(merged.tag)


def _check_int(what: str, value: Any, low: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ConfigError(f"SwarmCallback {what} is {value!r}, expected an integer >= {low}")


def _log_every(count: int, message: str, detail: Any) -> None:
    """Log the 1st, 2nd, 4th, 8th, ... occurrence, so a failure on every batch cannot flood."""
    if count & (count - 1) == 0:
        log.warning(message, count, detail)
