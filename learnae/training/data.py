"""Datasets for training nodes: loading, the common test split, shards, and the data spec.

This module imports numpy (and scikit-learn, lazily, for the bundled sets), never TensorFlow,
so the CLI and the sensor side can use it cheaply.

Sources (:func:`load_dataset`):

- ``digits``, ``wine``, ``breast_cancer``, ``iris``: the small datasets that ship inside
  scikit-learn (``sklearn.datasets.load_*``; nothing is downloaded).
- ``PATH.npz``: a numpy archive with arrays ``x`` (rows × features...) and ``y`` (rows,
  integer class labels). Read with ``allow_pickle=False``.
- ``PATH.csv``: numeric columns, the last one the integer class label; an optional header
  line (a first line that does not parse as numbers).

Scaling. ``digits`` features (pixel intensities 0..16) are divided by 16 when loaded, so they
lie in [0, 1] whatever the split. Every other source is *standardized* (zero mean, unit
variance per feature) by :class:`Scaler`, whose statistics are computed on the training part
of the common split only (never on the common test rows), then applied to the training rows,
the test rows and anything added later (the node can apply ``dataset.scaler`` to rows from
sensors). Every node that loads the same source with the same seed computes the same split
and hence the same statistics. :meth:`DataSpec.load` does all of this.

Randomness. Every random choice here draws from ``numpy.random.RandomState`` seeded with
``[seed, purpose, ...]``: the legacy generator whose streams numpy keeps frozen across
versions (NEP 19), so nodes running different numpy versions still agree on the common
test split and on who holds which rows. (``numpy.random.Generator`` makes no such promise.)
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from learnae.errors import LearnaeError
from learnae.formats import Schema

__all__ = [
    "BUNDLED",
    "DataError",
    "DataSpec",
    "Dataset",
    "Scaler",
    "Splits",
    "assign_shards",
    "load_dataset",
    "shard",
    "split",
    "split_holdout",
]

#: Names of the scikit-learn bundled datasets -> (rows, features, classes).
BUNDLED: dict[str, tuple[int, int, int]] = {
    "digits": (1797, 64, 10),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
    "iris": (150, 4, 3),
}

# Purposes mixed into the seed so that the split, the shards and the holdouts draw from
# independent streams.
_SPLIT, _SHARD, _HOLDOUT = 1, 2, 3
_MAX_SEED = 2**32 - 1
_MAX_CSV_BYTES = 1 << 30


class DataError(LearnaeError):
    """A dataset cannot be loaded, split or sharded as asked (bad file, spec or sizes)."""

    code = "data"


# --------------------------------------------------------------------------- dataset
@dataclass(frozen=True, eq=False)
class Dataset:
    """Rows of features with integer class labels.

    Attributes:
        x: features, float32, shape ``(n, *features)`` (``(n, features)`` for every bundled
            set and CSV file).
        y: class labels, int64, shape ``(n,)``, each in ``[0, classes)``.
        classes: number of classes (>= 2); a shard may lack some of them.
        name: where the rows came from, e.g. ``"digits/train/shard-1-of-4"``.
        scaler: the standardization already applied to ``x`` (None when the features are
            used as loaded); apply it to any new rows before mixing them in.

    Raises:
        DataError: on construction, if the shapes, dtypes or labels are inconsistent.
    """

    x: np.ndarray
    y: np.ndarray
    classes: int
    name: str
    scaler: Scaler | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
            raise DataError(f"dataset {self.name!r}: x must be a float32 array (rows, features...)")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise DataError(
                f"dataset {self.name!r}: y must be an int64 array of shape ({x.shape[0]},)"
            )
        if not isinstance(self.classes, int) or self.classes < 2:
            raise DataError(f"dataset {self.name!r}: classes is {self.classes!r}, expected >= 2")
        if y.size and (y.min() < 0 or y.max() >= self.classes):
            raise DataError(
                f"dataset {self.name!r}: labels span {y.min()}..{y.max()},"
                f" outside 0..{self.classes - 1}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def features(self) -> tuple[int, ...]:
        """Shape of one row's features."""
        return tuple(self.x.shape[1:])

    def schema(self) -> Schema:
        """The :class:`learnae.formats.Schema` of these rows (float32 features, int64 labels)."""
        return Schema(self.features, "float32", "int64", self.classes)

    def take(self, rows: np.ndarray, name: str) -> Dataset:
        """The rows at the given indices (in that order), as a new dataset called ``name``."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(self, x=self.x[rows], y=self.y[rows], name=name)

    def class_counts(self) -> np.ndarray:
        """Rows per class, shape ``(classes,)``."""
        return np.bincount(self.y, minlength=self.classes)


@dataclass(frozen=True, eq=False)
class Scaler:
    """Per-feature standardization ``(x - mean) / std``.

    Attributes:
        mean: float64, shape ``features``.
        std: float64, shape ``features``; features that are constant on the rows it was fitted
            on get std 1 (they become 0, not NaN).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, ds: Dataset) -> Scaler:
        """Statistics of ``ds.x`` (population std). Raises DataError on an empty dataset."""
        if len(ds) == 0:
            raise DataError(f"cannot standardize with statistics of the empty dataset {ds.name!r}")
        x = ds.x.astype(np.float64)
        std = x.std(axis=0)
        return cls(mean=x.mean(axis=0), std=np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` as float32; ``x`` has shape ``(n, *features)``."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def apply(self, ds: Dataset) -> Dataset:
        """``ds`` with standardized features (and ``scaler`` set to this one)."""
        if ds.scaler is not None:
            raise DataError(f"dataset {ds.name!r} is already standardized")
        return replace(ds, x=self.transform(ds.x), scaler=self)


# --------------------------------------------------------------------------- loading
def load_dataset(spec: str) -> Dataset:
    """Load a dataset by name or path (see the module docstring for the sources).

    ``digits`` comes back divided by 16 (values in [0, 1]); every other source comes back in
    its own units, to be standardized with a :class:`Scaler` fitted on the training split
    (:meth:`DataSpec.load` does that).

    Args:
        spec: ``digits``, ``wine``, ``breast_cancer``, ``iris``, or a path ending in ``.npz``
            or ``.csv``.

    Returns:
        A :class:`Dataset` with ``x`` float32 ``(n, *features)``, ``y`` int64 ``(n,)`` and
        ``classes = max(y) + 1`` for files (the bundled sets have their own class counts).

    Raises:
        DataError: unknown name, missing or unreadable file, or a file whose content is not
            a labelled numeric table (the message names the row/array at fault).
    """
    if spec in BUNDLED:
        return _load_bundled(spec)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise DataError(
            f"data source {spec!r} is neither a bundled dataset ({', '.join(BUNDLED)})"
            " nor a .npz or .csv file"
        )
    if not path.is_file():
        raise DataError(f"data file {spec} does not exist (or is not a file)")
    x, y = _load_npz(path) if suffix == ".npz" else _load_csv(path)
    return _labelled(x, y, path.name)


def _load_bundled(name: str) -> Dataset:
    from sklearn import datasets  # ~0.7 s import: only when a bundled set is asked for

    bunch = getattr(datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float64)
    if name == "digits":
        x = x / 16.0
    return Dataset(
        x=x.astype(np.float32),
        y=np.asarray(bunch.target, dtype=np.int64),
        classes=BUNDLED[name][2],
        name=name,
    )


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataError(
                    f"{path}: the archive holds arrays {sorted(archive.files)},"
                    f" expected 'x' (features) and 'y' (labels)"
                )
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except ValueError as e:  # not an archive, or object arrays (which need pickle: refused)
        raise DataError(f"{path}: not a .npz archive of plain numeric arrays ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    except Exception as e:  # zipfile.BadZipFile and friends
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: x has dtype {x.dtype}, expected numbers")
    if x.ndim < 2:
        raise DataError(f"{path}: x has shape {x.shape}, expected (rows, features...)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: y has shape {y.shape}, expected ({x.shape[0]},) to match x")
    return x, y


def _load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.stat().st_size > _MAX_CSV_BYTES:
        raise DataError(f"{path}: over {_MAX_CSV_BYTES >> 20} MiB; convert it to .npz")
    rows: list[list[float]] = []
    width = None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for lineno, record in enumerate(csv.reader(f), start=1):
                if not record or all(not cell.strip() for cell in record):
                    continue  # blank line
                try:
                    values = [float(cell) for cell in record]
                except ValueError:
                    if not rows and width is None:
                        width = len(record)  # a header line
                        continue
                    bad = next(c for c in record if not _is_float(c))
                    raise DataError(
                        f"{path}:{lineno}: {bad.strip()[:40]!r} is not a number"
                    ) from None
                if width is None:
                    width = len(values)
                if len(values) != width:
                    raise DataError(
                        f"{path}:{lineno}: {len(values)} columns, expected {width}"
                        " like the first line"
                    )
                rows.append(values)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; is it really a CSV file?") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    if width is None or width < 2:
        raise DataError(f"{path}: needs at least one feature column and a label column")
    table = np.asarray(rows, dtype=np.float64)
    return table[:, :-1], table[:, -1]


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _labelled(x: np.ndarray, y: np.ndarray, name: str) -> Dataset:
    """Check and convert raw features/labels from a file into a Dataset."""
    if x.shape[0] == 0:
        raise DataError(f"{name}: no rows")
    xf = np.asarray(x, dtype=np.float64)
    if not np.isfinite(xf).all():
        row = int(np.flatnonzero(~np.isfinite(xf.reshape(len(xf), -1)).all(axis=1))[0])
        raise DataError(f"{name}: features hold NaN or infinity (first in row {row})")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}: label {y[row]!r} in row {row} is not an integer class")
    elif y.dtype.kind not in "biu":
        raise DataError(f"{name}: labels have dtype {y.dtype}, expected integers")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        row = int(np.argmin(labels))
        raise DataError(f"{name}: label {labels[row]} in row {row} is negative")
    classes = int(labels.max()) + 1
    if classes < 2:
        raise DataError(f"{name}: every label is 0; classification needs at least 2 classes")
    if not np.isfinite(xf.astype(np.float32)).all():
        raise DataError(f"{name}: features overflow float32")
    return Dataset(x=xf.astype(np.float32), y=labels, classes=classes, name=name)


# --------------------------------------------------------------------------- splitting
def _rng(*seed: int) -> np.random.RandomState:
    return np.random.RandomState(list(seed))


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
        raise DataError(f"seed is {seed!r}, expected an integer in 0..{_MAX_SEED}")


def _stratified_pick(y: np.ndarray, classes: int, fraction: float, rng) -> np.ndarray:
    """Indices (sorted) of a stratified sample of ``round(fraction * n)`` rows (``1..n-1``).

    Per class ``c`` with ``n_c`` rows the quota is ``fraction * n_c``; each class gets its
    floor, and the rows still missing go to the largest fractional parts (ties: larger class,
    then lower label), preferring classes that keep at least one unpicked row. Within a class
    the picked rows are the first of a seeded permutation.
    """
    n = len(y)
    target = min(max(round(fraction * n), 1), n - 1)
    counts = np.bincount(y, minlength=classes)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    order = sorted(range(classes), key=lambda c: (-(quota[c] - take[c]), -counts[c], c))
    for keep in (1, 0):  # first pass leaves a row of every class unpicked; second may not
        for c in order:
            if take.sum() >= target:
                break
            if take[c] < counts[c] - keep:
                take[c] += 1
    picked = []
    for c in range(classes):
        rows = np.flatnonzero(y == c)
        picked.append(rows[rng.permutation(len(rows))[: take[c]]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _split_rows(ds: Dataset, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    picked = _stratified_pick(ds.y, ds.classes, fraction, rng)
    rest = np.setdiff1d(np.arange(len(ds)), picked, assume_unique=True)
    return rest, picked


def split(ds: Dataset, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The common train/test split: stratified by class and deterministic in ``seed``.

    Every node of a swarm that loads the same source and uses the same seed gets the same
    test rows, so accuracies reported on the test part are comparable across nodes. Rows keep
    their original order within each part.

    Args:
        ds: the whole dataset (at least 2 rows).
        test_fraction: share of rows in the test part, ``0 < test_fraction < 1``; the test
            part has ``round(test_fraction * n)`` rows (at least 1, at most ``n - 1``), spread
            over the classes in proportion to their sizes (see :func:`_stratified_pick`).
        seed: 0..2**32-1.

    Returns:
        ``(train, test)``, named ``"<name>/train"`` and ``"<name>/test"``.

    Raises:
        DataError: fraction out of range, bad seed, or fewer than 2 rows.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_seed(seed)
    if len(ds) < 2:
        raise DataError(f"dataset {ds.name!r} has {len(ds)} rows; a split needs at least 2")
    train, test = _split_rows(ds, test_fraction, _rng(seed, _SPLIT))
    return ds.take(train, f"{ds.name}/train"), ds.take(test, f"{ds.name}/test")


def split_holdout(ds: Dataset, fraction: float, seed: int = 0, index: int = 0) -> tuple[Dataset, Dataset]:
    """A node's own held-out part of its shard: ``(train, holdout)``.

    Stratified like :func:`split`, seeded by ``(seed, index)`` so each shard's holdout is
    independent.

    Raises:
        DataError: fraction out of range, or the shard has fewer than 2 rows.
    """
    _check_fraction("holdout fraction", fraction)
    _check_seed(seed)
    if len(ds) < 2:
        raise DataError(
            f"dataset {ds.name!r} has {len(ds)} rows; holding some out needs at least 2"
            " (use fewer shards or a larger alpha)"
        )
    train, hold = _split_rows(ds, fraction, _rng(seed, _HOLDOUT, index))
    return ds.take(train, f"{ds.name}/train"), ds.take(hold, f"{ds.name}/holdout")


def _check_fraction(what: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
        raise DataError(f"{what} is {value!r}, expected a number strictly between 0 and 1")


# --------------------------------------------------------------------------- sharding
def _parse_partition(partition: str) -> float | None:
    """None for ``iid``, the concentration A for ``dirichlet:A``."""
    if partition == "iid":
        return None
    m = re.fullmatch(r"dirichlet:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", partition)
    if m:
        alpha = float(m.group(1))
        if 0 < alpha < math.inf:
            return alpha
    raise DataError(
        f"partition {partition!r} is not 'iid' or 'dirichlet:A' with a concentration A > 0"
        " (e.g. dirichlet:0.5)"
    )


def assign_shards(
    y: np.ndarray, count: int, partition: str = "iid", seed: int = 0, classes: int | None = None,
    *, min_rows: int = 1,
) -> np.ndarray:
    """Which shard each row goes to.

    An int64 array of shape ``(n,)`` with values in ``[0, count)``, every value used at least
    ``min_rows`` times. Deterministic in ``seed``; every node computes the whole assignment and
    keeps its own rows, so shards are disjoint and together hold every row exactly once.

    Partitions:

    - ``iid``: rows are shuffled within each class and dealt round-robin, class after class,
      so every shard gets (up to one row) the same number of rows and the same class mix.
    - ``dirichlet:A``: label-skewed non-IID. For each class ``c`` independently, proportions
      ``p_c ~ Dirichlet(A * 1_count)`` over the shards, and the class's shuffled rows are cut
      at the cumulative proportions (``floor(cumsum(p_c) * n_c)``). Small ``A`` (0.1) gives
      each shard a few dominant classes; large ``A`` (100) approaches IID. Dirichlet label
      skew comes from Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data
      Distribution for Federated Visual Classification" (arXiv:1909.06335); the per-class
      form used here is the one of Yurochkin et al. 2019 ("Bayesian Nonparametric Federated
      Learning of Neural Networks") and of NIID-Bench (Li et al. 2022, "Federated Learning on
      Non-IID Data Silos"). Unlike NIID-Bench, which redraws all proportions until every
      party has enough rows, short shards are fixed without redrawing: while a shard has
      fewer than ``min_rows`` rows, the largest shard gives it one row (its last row, in shard
      order, of that shard's most common class). This changes at most
      ``min_rows * (count - 1)`` rows and never loops.

    Args:
        y: int64 class labels, shape ``(n,)``, ``n >= count * min_rows``.
        count: number of shards (>= 1).
        partition: ``"iid"`` or ``"dirichlet:A"``.
        seed: 0..2**32-1.
        classes: number of classes (default ``max(y) + 1``).
        min_rows: rows every shard gets at least (>= 1; 2 where each shard is split again,
            as :meth:`DataSpec.load` does for a holdout).

    Raises:
        DataError: bad count, partition, seed or ``min_rows``, or fewer than
            ``min_rows * count`` rows.
    """
    alpha = _parse_partition(partition)
    _check_seed(seed)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if not isinstance(count, int) or count < 1:
        raise DataError(f"shard count is {count!r}, expected an integer >= 1")
    if not isinstance(min_rows, int) or min_rows < 1:
        raise DataError(f"min_rows is {min_rows!r}, expected an integer >= 1")
    if n < count * min_rows:
        at_least = "non-empty shards" if min_rows == 1 else f"shards of at least {min_rows} rows"
        raise DataError(f"cannot deal {n} rows into {count} {at_least}; use fewer shards")
    classes = int(y.max()) + 1 if classes is None else classes
    rng = _rng(seed, _SHARD)
    out = np.empty(n, dtype=np.int64)
    if alpha is None:
        order = np.concatenate(
            [np.flatnonzero(y == c)[rng.permutation(int((y == c).sum()))] for c in range(classes)]
        )
        out[order] = np.arange(n) % count
        return out
    for c in range(classes):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        p = rng.dirichlet(np.full(count, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * len(rows)).astype(np.int64)
        for s, part in enumerate(np.split(rows, cuts)):
            out[part] = s
    sizes = np.bincount(out, minlength=count)
    for short in np.flatnonzero(sizes < min_rows):
        while sizes[short] < min_rows:  # the largest has more than min_rows: n >= count * min_rows
            donor = int(np.argmax(sizes))  # lowest index among the largest
            members = np.flatnonzero(out == donor)
            common = int(np.argmax(np.bincount(y[members], minlength=classes)))
            row = members[y[members] == common][-1]
            out[row] = short
            sizes[donor] -= 1
            sizes[short] += 1
    return out


def shard(ds: Dataset, index: int, count: int, partition: str = "iid", seed: int = 0, *,
          min_rows: int = 1) -> Dataset:
    """Shard ``index`` of ``count`` of ``ds`` (see :func:`assign_shards` for the partitions).

    Rows keep their order in ``ds``. The shards for ``index = 0..count-1`` partition ``ds``
    exactly: no row is lost or duplicated, and each holds at least ``min_rows`` rows.

    Raises:
        DataError: ``index`` outside ``0..count-1``, or as :func:`assign_shards`.
    """
    if not isinstance(index, int) or not isinstance(count, int) or not 0 <= index < max(count, 1):
        raise DataError(
            f"shard index {index!r} is out of range for {count!r} shards"
            f" (indices 0..{count - 1 if isinstance(count, int) else '?'})"
        )
    where = assign_shards(ds.y, count, partition, seed, ds.classes, min_rows=min_rows)
    return ds.take(np.flatnonzero(where == index), f"{ds.name}/shard-{index}-of-{count}")


# --------------------------------------------------------------------------- data spec
class Splits(NamedTuple):
    """What a node trains and reports on (see :meth:`DataSpec.load`)."""

    train: Dataset
    holdout: Dataset
    test: Dataset


_KEYS = ("shard", "partition", "seed", "test", "holdout", "scale")
_OPTIONS = re.compile(r":(?=(?:" + "|".join(_KEYS) + r")=)")


@dataclass(frozen=True)
class DataSpec:
    """Which data a node trains on, written as one CLI-friendly string.

    Format: ``SOURCE[:KEY=VALUE[,KEY=VALUE...]]`` — e.g.
    ``digits:shard=1/4,partition=dirichlet:0.5,seed=3`` or ``/data/rows.csv:shard=0/2``.
    ``SOURCE`` is anything :func:`load_dataset` accepts; the options start at the first ``:``
    that is followed by a known key and ``=`` (so a path may contain ``:`` and ``,`` unless it
    contains something like ``:seed=``). Keys, each at most once, in any order:

    ==========  ============  ===========================================================
    key         default       meaning
    ==========  ============  ===========================================================
    shard       ``0/1``       ``I/N``: this node holds shard I (0-based) of N
    partition   ``iid``       ``iid`` or ``dirichlet:A`` (:func:`assign_shards`)
    seed        ``0``         seed of the common split and of the partition: the same on
                              every node of a swarm
    test        ``0.2``       fraction of all rows in the common test split
    holdout     ``0.1``       fraction of this node's shard it holds out for its own metrics
    scale       ``auto``      ``standard`` (per-feature, fitted on the common training
                              part), ``none``, or ``auto`` = ``none`` for digits (already
                              /16) and ``standard`` for everything else
    ==========  ============  ===========================================================

    ``str(spec)`` writes the canonical form (non-default options only, in the order above),
    which :meth:`parse` reads back to an equal spec.
    """

    source: str
    shard: tuple[int, int] = (0, 1)
    partition: str = "iid"
    seed: int = 0
    test_fraction: float = 0.2
    holdout_fraction: float = 0.1
    scale: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise DataError("data spec has an empty source")
        i, n = self.shard
        if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
            raise DataError(
                f"shard {i}/{n} is invalid: expected I/N with N >= 1 and 0 <= I < N (0-based)"
            )
        _parse_partition(self.partition)
        _check_seed(self.seed)
        _check_fraction("test fraction", self.test_fraction)
        _check_fraction("holdout fraction", self.holdout_fraction)
        if self.scale not in ("auto", "standard", "none"):
            raise DataError(f"scale is {self.scale!r}, expected auto, standard or none")

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """Read ``SOURCE[:KEY=VALUE,...]`` (see the class docstring).

        Raises:
            DataError: unknown or repeated key, a value that does not parse, or an invalid
                combination (shard index >= count, fraction outside (0, 1), ...).
        """
        if not isinstance(text, str) or not text.strip():
            raise DataError("data spec is empty; expected e.g. digits:shard=0/4")
        m = _OPTIONS.search(text)
        source, rest = (text[: m.start()], text[m.end():]) if m else (text, "")
        kwargs: dict[str, object] = {}
        for item in rest.split(",") if m else ():
            key, sep, value = item.partition("=")
            if not sep or key not in _KEYS:
                raise DataError(
                    f"data spec option {item!r} is not KEY=VALUE with KEY one of {', '.join(_KEYS)}"
                )
            name = {"test": "test_fraction", "holdout": "holdout_fraction"}.get(key, key)
            if name in kwargs:
                raise DataError(f"data spec sets {key!r} twice")
            kwargs[name] = _parse_value(key, value)
        return cls(source, **kwargs)  # type: ignore[arg-type]

    def __str__(self) -> str:
        options = []
        if self.shard != (0, 1):
            options.append(f"shard={self.shard[0]}/{self.shard[1]}")
        if self.partition != "iid":
            options.append(f"partition={self.partition}")
        if self.seed != 0:
            options.append(f"seed={self.seed}")
        if self.test_fraction != 0.2:
            options.append(f"test={self.test_fraction!r}")
        if self.holdout_fraction != 0.1:
            options.append(f"holdout={self.holdout_fraction!r}")
        if self.scale != "auto":
            options.append(f"scale={self.scale}")
        return self.source + (":" + ",".join(options) if options else "")

    def load(self) -> Splits:
        """Load the source and cut out this node's data.

        Steps: :func:`load_dataset`; the common :func:`split` (``test``, ``seed``); a
        :class:`Scaler` fitted on the common training part and applied to both parts (unless
        ``scale`` resolves to ``none``); :func:`shard` of the training part; and
        :func:`split_holdout` of the shard.

        Returns:
            ``Splits(train, holdout, test)`` (a 3-tuple): the rows to train on, the shard's own
            held-out rows (the node's metrics in its checkpoints), and the common test rows
            (the same on every node; report accuracy on these). ``train.scaler`` (and the
            others') is the standardization applied, or None.

        Raises:
            DataError: as :func:`load_dataset`, :func:`split`, :func:`shard`.
        """
        ds = load_dataset(self.source)
        train, test = split(ds, self.test_fraction, self.seed)
        scale = self.scale if self.scale != "auto" else ("none" if self.source == "digits" else "standard")
        if scale == "standard":
            scaler = Scaler.fit(train)
            train, test = scaler.apply(train), scaler.apply(test)
        index, count = self.shard
        mine = shard(train, index, count, self.partition, self.seed, min_rows=2)  # a holdout needs 2
        own, hold = split_holdout(mine, self.holdout_fraction, self.seed, index)
        return Splits(own, hold, test)


def _parse_value(key: str, value: str) -> object:
    try:
        if key == "shard":
            m = re.fullmatch(r"([0-9]+)/([0-9]+)", value)
            if not m:
                raise ValueError
            return int(m.group(1)), int(m.group(2))
        if key == "seed":
            if not re.fullmatch(r"[0-9]+", value):
                raise ValueError
            return int(value)
        if key in ("test", "holdout"):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
    except ValueError:
        expected = {
            "shard": "I/N, e.g. 0/4",
            "seed": "a non-negative integer",
            "test": "a fraction such as 0.2",
            "holdout": "a fraction such as 0.1",
        }[key]
        raise DataError(f"data spec {key}={value!r}: expected {expected}") from None
    return value

