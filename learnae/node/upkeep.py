"""Upkeep of a node that runs for weeks: a bounded disk, a pruned ledger, snapshots for joins.

A volunteer's node must not fill its machine's disk (docs/design.md, "A node that runs for
weeks"). :class:`Upkeep` does, on timers the trainer drives (the fault harness's memory driver
calls the same methods once a round):

- **garbage collection** of the IPFS repository
  (:meth:`~learnae.ipfs.base.IpfsNode.collect_garbage`): every block that no pin needs goes.
  Pinned are the node's last ``keep`` checkpoints, the data chunks it adopted and its newest
  ledger snapshot; peer checkpoints fetched for a merge are never pinned, so they leave at the
  first collection after the merge. Between two collections the repository holds at most the
  pinned files, the ``k`` peer checkpoints of a merge and what the collection's grace keeps:
  :func:`repo_bound` is that bound, with room for Kubo's own datastore.
- **ledger pruning** (:meth:`~learnae.ledger.tangle.Tangle.prune`): checkpoint transactions older
  than ``ledger_window`` seconds, beyond each author's newest ``ledger_keep``, go; everything
  else stays. In steps of at most :data:`PRUNE_STEP` rows, so the event loop is never held long.
- **snapshots**: the kept ledger as one file on IPFS, announced by a ``snapshot`` transaction
  and carried in the syncer's ``tips`` messages, so that a node joining late imports the recent
  window (each transaction checked against the genesis and its signature) instead of the whole
  history (:meth:`Upkeep.join`).
- **the disk budget** (``--disk-max``): :func:`measure` reads what the state directory takes;
  over the budget, the node says what takes the room and what to change, and stops adopting
  new data chunks (the one thing that grows without bound) until it is under again. A budget
  below :func:`repo_bound` plus the ledger's room is refused at start (:func:`check_budget`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learnae.errors import ConfigError, LearnaeError
from learnae.ipfs.base import GcStats
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import PruneStats
from learnae.ledger.tx import Tx, snapshot_payload
from learnae.models.check import PARAM_BYTES
from learnae.node.network import NetworkSide
from learnae.state import StateDir

__all__ = ["DEFAULT_DISK_MAX", "DEFAULT_LEDGER_KEEP", "DEFAULT_LEDGER_WINDOW", "DiskUse",
           "Upkeep", "check_budget", "checkpoint_bytes", "format_size", "measure", "parse_size",
           "repo_bound"]

log = logging.getLogger("learnae.node")

DEFAULT_DISK_MAX = 2 << 30
"""Bytes the state directory may take (``--disk-max``): 2 GiB."""
DEFAULT_LEDGER_WINDOW = 3600.0
"""Seconds of checkpoint history the ledger keeps (``--ledger-window``)."""
DEFAULT_LEDGER_KEEP = 16
"""Checkpoints per author the ledger keeps at most, each author's newest always (``--ledger-keep``)."""
REPO_SLACK = 64 << 20
"""Room for Kubo's datastore (peer records, pins, config) beside the blocks, in bytes."""
SPARE_CHECKPOINTS = 4
"""Checkpoints' room beyond ``keep + k``: files being fetched or added during a collection."""
LEDGER_ROOM = 64 << 20
"""Room :func:`check_budget` sets aside for the ledger and the node's small files, in bytes."""
PRUNE_STEP = 1000
"""Rows one prune call deletes at most. Steps of 5,000 held the event loop 220 ms on average on
a 100,000-transaction ledger (``bench/join.py``), so steps of 1,000 keep it to tens of
milliseconds; the first step of a round also reads every author's checkpoints."""
SNAPSHOT_MAX_BYTES = 64 << 20
"""Largest snapshot file fetched for a join, in bytes."""
JOIN_AGAIN = 300.0
"""Seconds before a node whose ledger still has gaps imports a newer snapshot again."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from a size such as ``"2G"``, ``"512M"``, ``"1.5G"`` or ``"1073741824"``.

    Units are binary; ``B`` and ``iB`` suffixes are allowed (``2GiB`` and ``2GB`` are both
    2 x 2**30 bytes).

    Raises:
        ConfigError: not a size.
    """
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:].isalpha() else ""
    try:
        value = float(s[: len(s) - len(unit)])
    except ValueError:
        value = math.nan
    if unit not in _UNITS or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{text!r} is not a size; give bytes with an optional K, M, G or T"
                          " (binary: 2G is 2 GiB)")
    return int(value * _UNITS[unit])


def format_size(n: int) -> str:
    """The shortest exact :func:`parse_size` text for ``n`` bytes (``2 << 30`` -> ``"2G"``)."""
    for unit in ("T", "G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def checkpoint_bytes(params: int) -> int:
    """Bytes of one checkpoint file of a model with ``params`` float32 parameters.

    The tensors' bytes plus a margin for the safetensors header and the UnixFS blocks' framing
    (under 1 %).
    """
    return int(params * PARAM_BYTES * 1.01) + 64 * 1024


def repo_bound(*, keep: int, k: int, checkpoint: int, pinned_data: int = 0,
               slack: int = REPO_SLACK) -> int:
    """The bytes a node's IPFS repository may hold right after a garbage collection.

    ``(keep + k + SPARE_CHECKPOINTS) x checkpoint + pinned_data + slack``: its own ``keep``
    checkpoints, the ``k`` of a merge, room for files under way, the adopted data chunks and
    snapshot it pins, and Kubo's datastore (``slack``, :data:`REPO_SLACK`; 0 for the memory
    backend, which has none).
    """
    return (keep + k + SPARE_CHECKPOINTS) * checkpoint + pinned_data + slack


def check_budget(disk_max: int, *, keep: int, k: int, checkpoint: int) -> None:
    """Refuse a disk budget the node cannot keep even with no data adopted.

    Raises:
        ConfigError: ``disk_max`` is below :func:`repo_bound` plus :data:`LEDGER_ROOM`; the
            message gives the least budget and what else to change.
    """
    need = repo_bound(keep=keep, k=k, checkpoint=checkpoint) + LEDGER_ROOM
    if disk_max < need:
        raise ConfigError(
            f"--disk-max {_mib(disk_max)} is too small for this swarm's model: a checkpoint is"
            f" {_mib(checkpoint)}, and the node keeps {keep} of its own (--keep), fetches up to {k}"
            f" at a merge (--k) and needs room for {SPARE_CHECKPOINTS} more, the ledger and Kubo's"
            f" datastore: at least {_mib(need)}. Raise --disk-max, or lower --keep or --k.")


def _tree_bytes(path: Path) -> int:
    """Bytes a file or the files under a directory take on disk (allocated; 0 if none)."""
    try:
        if not path.is_dir():
            return path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0
    total = 0
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:  # removed while we looked (a collection, a rotation)
                    continue
    return total


@dataclass(frozen=True)
class DiskUse:
    """What a node's state directory takes on disk, in bytes, against its budget."""

    total: int
    ipfs: int
    ledger: int
    adopted: int
    budget: int

    @property
    def over(self) -> bool:
        """Whether the directory takes more than the budget."""
        return self.total > self.budget

    def to_dict(self) -> dict[str, int]:
        """JSON-ready, keys with their unit (for ``/status``)."""
        return {"total_bytes": self.total, "ipfs_bytes": self.ipfs, "ledger_bytes": self.ledger,
                "adopted_bytes": self.adopted, "budget_bytes": self.budget}

    def explain(self, *, keep: int, pinned: int) -> str:
        """Why the budget is not met, and what to change (one paragraph)."""
        return (f"the state directory takes {_mib(self.total)}, over --disk-max {_mib(self.budget)}:"
                f" IPFS {_mib(self.ipfs)} ({keep} own checkpoints and {pinned} other pinned files),"
                f" ledger {_mib(self.ledger)}, adopted data {_mib(self.adopted)}. The node adopts no"
                " new data chunks until it is under the budget again. Raise --disk-max, lower"
                " --keep, or adopt from fewer sensors (--adopt AUTHORS.txt or none).")


def measure(paths: StateDir, budget: int) -> DiskUse:
    """Read what ``paths``'s state directory takes on disk (blocking: call in a thread)."""
    ledger = sum(_tree_bytes(Path(f"{paths.tangle}{suffix}")) for suffix in ("", "-wal", "-shm"))
    adopted = sum(_tree_bytes(Path(f"{paths.adopted}{suffix}")) for suffix in ("", "-wal", "-shm"))
    return DiskUse(total=_tree_bytes(paths.root), ipfs=_tree_bytes(paths.ipfs), ledger=ledger,
                   adopted=adopted, budget=budget)


class Upkeep:
    """A node's garbage collection, ledger pruning and snapshots (see the module docstring).

    Call on the network side's event loop (the tangle is used from that loop only).

    Args:
        net: the node's network side (its IPFS node, syncer, key, clock and counters).
        ledger_window: seconds of checkpoint history kept.
        ledger_keep: checkpoints kept per author at most (each author's newest always).

    Attributes:
        gc: the last collection's figures, or None.
        freed: bytes the collections freed since the node started.
        pruned: checkpoint transactions pruned by this node since it started.
        snapshot: the node's newest snapshot transaction, or None.
        joins: snapshots imported.
    """

    def __init__(self, net: NetworkSide, *, ledger_window: float = DEFAULT_LEDGER_WINDOW,
                 ledger_keep: int = DEFAULT_LEDGER_KEEP):
        if ledger_window <= 0 or ledger_keep < 1:
            raise ConfigError("the ledger window must be above 0 s and keep at least 1 checkpoint"
                              " per author")
        self.net = net
        self.ledger_window, self.ledger_keep = ledger_window, ledger_keep
        self.gc: GcStats | None = None
        self.freed = 0
        self.pruned = 0
        self.snapshot: Tx | None = None
        self.joins = 0
        self._joined_at = -math.inf
        self._joining = False

    @property
    def _clock(self) -> Callable[[], float]:
        return self.net.clock

    async def collect_garbage(self) -> GcStats:
        """Remove the IPFS blocks no pin needs; keep the figures in :attr:`gc`.

        Raises:
            IpfsError: the IPFS node failed.
        """
        self.gc = await self.net.ipfs.collect_garbage()
        self.freed += self.gc.bytes_freed
        if self.gc.blocks_removed:
            log.debug("garbage collection: %d blocks, %s freed in %.2f s", self.gc.blocks_removed,
                      _mib(self.gc.bytes_freed), self.gc.seconds)
        return self.gc

    @property
    def _sync(self) -> TangleSync:
        """The node's syncer, whose tangle the ledger upkeep prunes, exports and imports.

        Raises:
            TypeError: the network side runs on another ledger (a simulation's shared one).
        """
        sync = self.net.sync
        if not isinstance(sync, TangleSync):
            raise TypeError(f"ledger upkeep needs the node's own tangle and syncer, not {type(sync).__name__}")
        return sync

    def prune(self) -> PruneStats:
        """Prune the ledger by one step (:data:`PRUNE_STEP` rows at most).

        Raises:
            LedgerError: the database failed.
        """
        stats = self._sync.tangle.prune(int(self._clock() * 1000), window_ms=int(self.ledger_window * 1000),
                                      keep_per_author=self.ledger_keep, limit=PRUNE_STEP)
        self.pruned += stats.pruned
        return stats

    async def publish_snapshot(self) -> Tx:
        """Add the kept ledger to IPFS as a snapshot file (pinned) and announce it.

        The previous snapshot is unpinned; the syncer's ``tips`` messages carry the new
        transaction from now on.

        Raises:
            IpfsError, TxRejected, LedgerError: adding, mining or storing failed.
        """
        net, sync = self.net, self._sync
        data = sync.tangle.export_snapshot()
        cid = await net.ipfs.add(data)
        tx = await sync.append(net.identity, "snapshot", snapshot_payload(
            cid=cid, size=len(data), txs=sync.tangle.count(), top=sync.tangle.top_height),
            time_ms=int(self._clock() * 1000), rng=net.rng)
        previous, self.snapshot = self.snapshot, tx
        sync.snapshot_tx = tx
        if previous is not None and previous.payload["cid"] != cid:
            try:
                await net.ipfs.unpin(previous.payload["cid"])
            except LearnaeError as exc:
                log.debug("unpin of the previous snapshot: %s", exc.reason)
        return tx

    def wants(self, tx: Tx) -> bool:
        """Whether a peer's snapshot ``tx`` is worth importing now.

        Yes when this ledger holds under half as many transactions as the snapshot (a node
        joining late, or back after a long absence), or when it has transactions waiting for
        parents and it has not imported a snapshot for :data:`JOIN_AGAIN` seconds.
        """
        tangle = self._sync.tangle
        if self._joining or tx.author == self.net.identity.public_key:
            return False
        if tangle.count() * 2 < tx.payload["txs"]:
            return True
        return tangle.pending > 0 and self._clock() - self._joined_at >= JOIN_AGAIN

    async def join(self, tx: Tx) -> Any:
        """Fetch the snapshot ``tx`` announces and import it into the ledger.

        Every transaction in it is validated as if gossiped (genesis, signature, proof of
        work, admission); see :meth:`~learnae.ledger.tangle.Tangle.import_snapshot`. The import
        runs on the event loop (the tangle is used from that loop only): about 0.3 ms a
        transaction, 6 s for a snapshot of 20,000, once at a join.

        Returns:
            The import's figures.

        Raises:
            IpfsError: the file could not be fetched within the node's fetch timeout.
            LedgerError: the file is not a snapshot of this swarm.
        """
        self._joining = True
        started = time.monotonic()
        try:
            data = await self.net.ipfs.cat(tx.payload["cid"], timeout=self.net.fetch_timeout,
                                           max_size=SNAPSHOT_MAX_BYTES)
            stats = self._sync.tangle.import_snapshot(data, max_bytes=SNAPSHOT_MAX_BYTES)
        finally:
            self._joining = False
        self.joins += 1
        self._joined_at = self._clock()
        log.info("imported the ledger snapshot %s by %s (%s) in %.2f s: %s", tx.id[:16],
                 tx.author.hex()[:12], _mib(len(data)), time.monotonic() - started, stats)
        return stats
