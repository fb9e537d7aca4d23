"""A node's progress over time, for its dashboard: a bounded series that thins as it grows.

The node adds a sample each time it evaluates its metrics (every couple of seconds while
it trains). The series keeps at most ``capacity`` samples: once full it drops every other
one and from then on takes every second sample offered (every fourth after the next
thinning, ...), so a node that runs for weeks shows its whole run at a resolution that
halves as the run doubles, in constant memory (the idea of a round-robin database).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["History"]


class History:
    """Samples (JSON-ready dicts) over a node's run, at most ``capacity`` of them.

    Thread-safe: the training thread adds, the network loop reads.

    Args:
        capacity: most samples kept (at least 2).

    Raises:
        ValueError: ``capacity`` is below 2.
    """

    def __init__(self, capacity: int = 1024):
        if capacity < 2:
            raise ValueError(f"a history keeps at least 2 samples, not {capacity}")
        self.capacity = capacity
        self.stride = 1  # every how many offered samples one is kept
        self._offered = 0
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, sample: dict[str, Any]) -> None:
        """Offer a sample; it is kept when the stride says so (the newest is always shown last)."""
        with self._lock:
            self._offered += 1
            if (self._offered - 1) % self.stride:
                self._latest = sample
                return
            self._latest = None
            self._samples.append(sample)
            if len(self._samples) > self.capacity:
                self._samples = self._samples[::2]
                self.stride *= 2

    _latest: dict[str, Any] | None = None

    def samples(self) -> list[dict[str, Any]]:
        """The kept samples, oldest first, then the newest offered if it was not kept."""
        with self._lock:
            return self._samples + ([self._latest] if self._latest is not None else [])
