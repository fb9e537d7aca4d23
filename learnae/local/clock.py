"""A virtual clock for asyncio: :class:`VirtualClockLoop`.

On it a simulated swarm's hours take the CPU time they need, not hours.
"""

from __future__ import annotations

import asyncio
import selectors

__all__ = ["VirtualClockLoop"]


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that never blocks: a wait of ``timeout`` seconds advances the virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if not ready and timeout:
            self.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on simulated time.

    ``loop.time()`` starts at 0 and jumps to the next scheduled callback whenever nothing is
    ready, so ``asyncio.sleep(60)`` returns at once with the clock 60 s later. Only for code
    that waits on the loop alone (no threads, no sockets): the memory network and the syncer.
    """

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        """The simulated time, seconds since the loop was made."""
        return self._virtual.now
