"""Merge rules: combine the node's own weights with peers' checkpoints.

docs/design.md "Node loop", step 3: a node takes up to ``k`` peer checkpoints, checks
each one (:func:`check_update`: names, shapes, dtypes, finiteness, norm), then
merges the survivors with its own weights under the manifest's merge rule and
continues training from the result. :func:`merge` does all of that in one call.

Weights are a ``dict[str, np.ndarray]``: weight path -> array, insertion-ordered in
Keras ``model.weights`` order, exactly like :attr:`learnae.formats.Checkpoint.weights`.
``n`` below is the number of inputs to a rule (the node's own weights plus the
accepted peers) and ``P`` the number of floating-point parameters.

Every rule:

- takes the node's own weights as one of its inputs (own is always input 0);
- merges floating-point tensors only. Integer tensors (counters, random-seed
  state: not learned parameters) are copied from the node's own weights;
- accumulates in float64 and casts each tensor back to its own dtype;
- flattens each input once into one vector of ``P`` values and works on those (a view,
  not a copy, when the input's float tensors already lie back to back in one buffer, as
  in ``learnae.training.model.get_weights`` snapshots);
- returns fresh arrays (never an input's array), so the caller may modify them.

Rules (name in the manifest -> function):

=========== ===================================================================
``mean``     sample-weighted mean (FedAvg, McMahan et al. 2017)
``age``      model-age-weighted mean (gossip learning)
``median``   coordinate-wise median (Yin et al. 2018)
``trimmed``  coordinate-wise trimmed mean, parameter ``beta`` (Yin et al. 2018)
``krum``     Krum, parameter ``f`` (Blanchard et al. 2017)
``multikrum`` Multi-Krum, parameters ``f`` and ``m`` (Blanchard et al. 2017)
=========== ===================================================================

``mean`` and ``age`` trust what peers claim (samples, age): one peer claiming a huge
count dominates the merge. Swarms that expect hostile peers should pick ``median``,
``trimmed``, ``krum`` or ``multikrum``; the norm bound of :func:`check_update` holds
for every rule.

This module sits below the Keras glue and never imports TensorFlow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learnae.errors import LearnaeError
from learnae.formats import check_names, sum_of_squares

__all__ = [
    "RULES",
    "Contribution",
    "MergeError",
    "MergeResult",
    "RejectedUpdate",
    "age",
    "check_params",
    "check_update",
    "krum",
    "mean",
    "median",
    "merge",
    "multikrum",
    "trimmed",
]

#: Default bound on a peer's global L2 norm, as a multiple of the node's own.
DEFAULT_MAX_NORM_RATIO = 10.0
#: Default floor standing in for the node's own norm when that is smaller (see check_update).
DEFAULT_MIN_NORM = 1.0

# Above this many inputs the median/trimmed rules sort with numpy instead of a network.
_NETWORK_MAX_INPUTS = 16
# Elements per block when a rule streams over the flattened weights (cache-sized).
_BLOCK = 1 << 16


# ----------------------------------------------------------------------------- errors
class MergeError(LearnaeError):
    """A merge could not be done: unknown rule, bad parameters, or unusable own weights.

    Codes: ``merge`` (default), ``unknown-rule``, ``bad-params``, ``bad-own``.
    """

    code = "merge"


class RejectedUpdate(MergeError):
    """A peer's weights were refused; ``code`` says which check failed.

    Codes from :func:`check_update`: ``names`` (missing, unexpected or reordered
    weights), ``shape``, ``dtype``, ``non-finite`` (NaN or infinity), ``norm`` (global
    L2 norm over the bound). :func:`merge` adds ``meta`` (samples or age not an integer
    >= 0) and ``duplicate`` (a second contribution by the same author, or one by the
    node itself).
    """

    code = "rejected"


# ------------------------------------------------------------------------------ types
@dataclass(frozen=True, eq=False)
class Contribution:
    """One input to a merge: a model's weights and what its author claims about them.

    Attributes:
        weights: weight path -> array, in ``model.weights`` order (as
            :attr:`learnae.formats.Checkpoint.weights`).
        samples: examples trained on since the author's previous checkpoint (the
            checkpoint's ``samples``); the weight of this input under ``mean``.
        age: the model's age in local steps (batches trained, the checkpoint's
            ``step``); the weight of this input under ``age``.
        author: who made it (a peer's author id, or the node's own for its weights).
    """

    weights: Mapping[str, np.ndarray]
    samples: int
    age: int
    author: str


@dataclass
class MergeResult:
    """What :func:`merge` did.

    Attributes:
        weights: the merged weights, in the node's own order and dtypes (fresh arrays).
        used: authors of the rule's inputs: the node's own author first, then every
            accepted peer, in the order given.
        rejected: ``(author, code, reason)`` for each refused contribution (codes of
            :class:`RejectedUpdate`), in the order given.
        selected: authors whose weights make up the result: every input with a non-zero
            weight for ``mean``/``age``, every input for ``median``/``trimmed``, the
            chosen one(s) for ``krum``/``multikrum``.
        notes: fallbacks the rule took, one readable sentence each (e.g. Krum with
            fewer inputs than ``f`` needs).
    """

    weights: dict[str, np.ndarray]
    used: list[str]
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class _Layout:
    """The node's own weights' structure, and where each float tensor sits in a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    floats: tuple[int, ...]  # indices (into names) of floating-point tensors
    offsets: tuple[int, ...]  # start of each float tensor in the flat vector
    size: int  # P: total number of floating-point elements
    flat_dtype: np.dtype  # a float dtype that holds every float tensor's values exactly

    @classmethod
    def of(cls, weights: Mapping[str, Any]) -> _Layout:
        if not isinstance(weights, Mapping):
            raise MergeError(
                f"the node's own weights are a {type(weights).__name__},"
                " expected a name -> array mapping",
                code="bad-own",
            )
        arrays = [np.asarray(w) for w in weights.values()]
        floats = tuple(i for i, a in enumerate(arrays) if a.dtype.kind == "f")
        offsets, total = [], 0
        for i in floats:
            offsets.append(total)
            total += arrays[i].size
        flat = np.result_type(*(arrays[i].dtype for i in floats)) if floats else np.dtype("f8")
        return cls(
            names=tuple(weights),
            shapes=tuple(a.shape for a in arrays),
            dtypes=tuple(a.dtype for a in arrays),
            floats=floats,
            offsets=tuple(offsets),
            size=total,
            flat_dtype=np.dtype(flat),
        )

    def check_structure(self, peer: Any) -> list[np.ndarray]:
        """Names (and order), shapes and dtypes of ``peer`` against own; return its arrays."""
        if not isinstance(peer, Mapping):
            raise RejectedUpdate(
                f"update is a {type(peer).__name__}, expected a name -> array mapping",
                code="names",
            )
        names = tuple(peer)
        check_names(
            names,
            self.names,
            subject="update's weights",
            reference="the node's",
            error=RejectedUpdate,
            ordered_by="update",
            code="names",
        )
        try:
            arrays = [np.asarray(w) for w in peer.values()]
        except Exception as e:  # a value numpy cannot read as an array
            raise RejectedUpdate(
                f"update holds a value that is not an array ({type(e).__name__}: {e})",
                code="dtype",
            ) from None
        for name, a, shape, dtype in zip(names, arrays, self.shapes, self.dtypes, strict=True):
            if a.shape != shape:
                raise RejectedUpdate(
                    f"weight {name!r} has shape {a.shape}, the node's has {shape}", code="shape"
                )
            if a.dtype != dtype:
                raise RejectedUpdate(
                    f"weight {name!r} has dtype {a.dtype}, the node's has {dtype}", code="dtype"
                )
        return arrays

    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The float tensors of ``arrays`` (already checked) as one vector of P values.

        A read-only view when they already lie back to back in one buffer, in the flat
        dtype (as :func:`learnae.formats.pack` lays out ``get_weights`` snapshots); a
        concatenated copy otherwise.
        """
        if not self.floats:
            return np.empty(0, self.flat_dtype)
        view = _run_view([arrays[i] for i in self.floats], self.flat_dtype, self.size)
        if view is not None:
            return view
        return np.concatenate([arrays[i].ravel() for i in self.floats], dtype=self.flat_dtype)

    def unflatten(self, flat: np.ndarray, own: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Weights dict from a flat vector of P values (cast back) and own's other tensors."""
        out: dict[str, np.ndarray] = {}
        starts = dict(zip(self.floats, self.offsets, strict=True))
        for i, name in enumerate(self.names):
            if i in starts:
                a = flat[starts[i] : starts[i] + own[i].size]
                out[name] = a.reshape(self.shapes[i]).astype(self.dtypes[i], copy=True)
            else:
                out[name] = np.array(own[i], copy=True)
        return out


def _owner(a: np.ndarray) -> np.ndarray:
    """The ndarray at the end of ``a``'s chain of bases (the one whose buffer ``a`` views)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _run_view(arrays: Sequence[np.ndarray], dtype: np.dtype, size: int) -> np.ndarray | None:
    """``arrays`` as one read-only vector of ``size`` values, or None.

    A vector if they are C-contiguous views of ``dtype`` that follow each other without gaps
    inside one array's buffer; else None.
    """
    owner = _owner(arrays[0])
    if not owner.flags.c_contiguous:
        return None
    start = end = arrays[0].__array_interface__["data"][0]
    for a in arrays:
        if (
            a.dtype != dtype
            or not a.flags.c_contiguous
            or a.size == 0
            or a.__array_interface__["data"][0] != end
            or _owner(a) is not owner
        ):
            return None
        end += a.nbytes
    offset = start - owner.__array_interface__["data"][0]
    if end - start != size * dtype.itemsize or offset < 0 or offset + (end - start) > owner.nbytes:
        return None
    raw = owner.reshape(-1).view(np.uint8)
    view = raw[offset : offset + (end - start)].view(dtype)
    view.flags.writeable = False
    return view


# --------------------------------------------------------------------------- checks
def _float_squares(layout: _Layout, arrays: Sequence[np.ndarray]) -> list[float]:
    """Sum of squares (float64) of each float tensor, in ``layout.floats`` order."""
    return [sum_of_squares(arrays[i]) for i in layout.floats]


def _check_finite(
    layout: _Layout, arrays: Sequence[np.ndarray], whose: str, squares: Sequence[float]
) -> str | None:
    """The first float tensor holding NaN or infinity, as a sentence; None if all are finite.

    ``squares`` (from :func:`_float_squares`) decides the usual case at no cost: a finite sum
    of squares proves its tensor finite. Only when a sum is not finite (NaN, infinity, or
    float64 values whose squares overflow) are the tensors scanned, in order, for the
    message.
    """
    if all(math.isfinite(q) for q in squares):
        return None
    for i in layout.floats:
        a = arrays[i]
        finite = np.isfinite(a)
        if not finite.all():
            nan = int(np.isnan(a).sum())
            inf = int(a.size - np.count_nonzero(finite)) - nan
            return f"{whose} weight {layout.names[i]!r} holds {nan} NaN and {inf} infinite values"
    return None


def _check_bound(max_norm_ratio: float, min_norm: float) -> None:
    if (
        not isinstance(max_norm_ratio, int | float)
        or isinstance(max_norm_ratio, bool)
        or not max_norm_ratio > 0
    ):
        raise MergeError(
            f"max_norm_ratio is {max_norm_ratio!r}, expected a number > 0 (math.inf disables"
            " the norm check)",
            code="bad-params",
        )
    if (
        not isinstance(min_norm, int | float)
        or isinstance(min_norm, bool)
        or not 0 <= min_norm < math.inf
    ):
        raise MergeError(
            f"min_norm is {min_norm!r}, expected a finite number >= 0", code="bad-params"
        )


class _Reference:
    """The node's own weights prepared once for checking many updates."""

    def __init__(self, own: Mapping[str, Any], max_norm_ratio: float, min_norm: float):
        _check_bound(max_norm_ratio, min_norm)
        self.layout = _Layout.of(own)
        self.arrays = [np.asarray(w) for w in own.values()]
        squares = _float_squares(self.layout, self.arrays)
        problem = _check_finite(self.layout, self.arrays, "the node's own", squares)
        if problem:
            raise MergeError(
                f"{problem}; the node's model diverged: restore its last good checkpoint",
                code="bad-own",
            )
        self.norm = math.sqrt(sum(squares))
        self.max_norm_ratio = float(max_norm_ratio)
        self.min_norm = float(min_norm)

    def check(self, peer: Any) -> list[np.ndarray]:
        layout = self.layout
        arrays = layout.check_structure(peer)
        squares = _float_squares(layout, arrays)
        problem = _check_finite(layout, arrays, "update's", squares)
        if problem:
            raise RejectedUpdate(problem, code="non-finite")
        total = math.sqrt(sum(squares))
        base = max(self.norm, self.min_norm)
        bound = self.max_norm_ratio * base
        if total > bound:
            norms = [math.sqrt(q) for q in squares]
            big = max(range(len(norms)), key=norms.__getitem__)
            largest = (
                f"; its largest tensor is {layout.names[layout.floats[big]]!r}"
                f" with norm {norms[big]:.6g}"
            )
            if self.norm >= self.min_norm and self.norm > 0:
                raise RejectedUpdate(
                    f"global L2 norm {total:.6g} is {total / self.norm:.4g}× the node's own"
                    f" {self.norm:.6g}, over the bound {self.max_norm_ratio:g}×{largest}",
                    code="norm",
                )
            raise RejectedUpdate(
                f"global L2 norm {total:.6g} is over the bound {bound:.6g}"
                f" ({self.max_norm_ratio:g}× the floor min_norm={self.min_norm:g}, which stands in"
                f" for the node's own norm {self.norm:.6g}){largest}",
                code="norm",
            )
        return arrays


def check_update(
    own: Mapping[str, np.ndarray],
    peer: Mapping[str, np.ndarray],
    *,
    max_norm_ratio: float = DEFAULT_MAX_NORM_RATIO,
    min_norm: float = DEFAULT_MIN_NORM,
) -> None:
    """Check that a peer's weights may be merged into the node's own.

    Checks, in this order (the first failure is raised):

    1. ``names``: the same weight names as ``own``, in the same order;
    2. ``shape`` and ``dtype``: each weight's shape and dtype equal own's (byte order
       included), weight by weight in order;
    3. ``non-finite``: no NaN or infinity in any floating-point weight;
    4. ``norm``: the global L2 norm of the peer's floating-point weights (float64
       accumulation, :func:`learnae.formats.weight_norm`) is at most
       ``max_norm_ratio × max(own norm, min_norm)``. The floor ``min_norm`` (default 1.0,
       in the weights' own units) matters only while the node's own norm is below it,
       e.g. a freshly zero-initialised linear model: a ratio of a norm near 0 would
       refuse every trained peer. Integer tensors (counters, seed state) are not merged
       and do not count towards either norm.

    Args:
        own: the node's own weights (name -> array), assumed finite.
        peer: the peer's weights, from :func:`learnae.formats.decode_checkpoint`.
        max_norm_ratio: bound on ``norm(peer) / max(norm(own), min_norm)``; ``math.inf``
            disables the norm check.
        min_norm: floor for the node's own norm, >= 0.

    Raises:
        RejectedUpdate: ``code`` is ``names``, ``shape``, ``dtype``, ``non-finite`` or
            ``norm``; ``reason`` names the tensor and the figures.
        MergeError: ``own`` is unusable (not a mapping, or not finite: code ``bad-own``),
            or ``max_norm_ratio``/``min_norm`` are out of range (code ``bad-params``).

    Cost: O(P) time; O(largest tensor) extra memory.
    """
    _Reference(own, max_norm_ratio, min_norm).check(peer)


# ---------------------------------------------------------------------- parameters
def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _beta(params: Mapping[str, Any]) -> float:
    beta = params.get("beta", 0.2)
    if not isinstance(beta, int | float) or isinstance(beta, bool) or not 0 <= beta < 0.5:
        raise MergeError(
            f"trimmed: beta is {beta!r}, expected a fraction 0 <= beta < 0.5", code="bad-params"
        )
    return float(beta)


def _f(rule: str, params: Mapping[str, Any]) -> int:
    f = params.get("f", 1)
    if not _is_int(f) or f < 0:
        raise MergeError(f"{rule}: f is {f!r}, expected an integer >= 0", code="bad-params")
    return int(f)


def _m(params: Mapping[str, Any]) -> int | None:
    m = params.get("m")
    if m is not None and (not _is_int(m) or m < 1):
        raise MergeError(
            f"multikrum: m is {m!r}, expected an integer >= 1 or None", code="bad-params"
        )
    return None if m is None else int(m)


_PARAMS: dict[str, tuple[str, ...]] = {
    "mean": (),
    "age": (),
    "median": (),
    "trimmed": ("beta",),
    "krum": ("f",),
    "multikrum": ("f", "m"),
}

#: Rule names a manifest may name, in the order of this module's docs.
RULES: tuple[str, ...] = tuple(_PARAMS)


def check_params(rule: str, params: Mapping[str, Any]) -> None:
    """Check a manifest's merge rule name and parameters before any merge is tried.

    Parameters per rule (defaults in brackets): ``trimmed``: ``beta`` [0.2], a float
    in ``[0, 0.5)``; ``krum``: ``f`` [1], an integer >= 0; ``multikrum``: ``f`` [1] and
    ``m`` [None: ``n - f``], an integer >= 1. ``mean``, ``age`` and ``median`` take none.

    Raises:
        MergeError: code ``unknown-rule`` for a name not in :data:`RULES`; code
            ``bad-params`` for an unknown parameter or a value out of range.
    """
    if rule not in _PARAMS:
        raise MergeError(
            f"unknown merge rule {rule!r}; expected one of {', '.join(RULES)}", code="unknown-rule"
        )
    unknown = sorted(set(params) - set(_PARAMS[rule]))
    if unknown:
        allowed = ", ".join(_PARAMS[rule]) or "none"
        raise MergeError(
            f"merge rule {rule!r} takes no parameter {', '.join(map(repr, unknown))}"
            f" (its parameters: {allowed})",
            code="bad-params",
        )
    if rule == "trimmed":
        _beta(params)
    if rule in ("krum", "multikrum"):
        _f(rule, params)
    if rule == "multikrum":
        _m(params)


# ------------------------------------------------------------------------- engines
@dataclass
class _Outcome:
    flat: np.ndarray | None  # merged float values (P,), or None: copy input `copy_of`
    selected: list[int]
    notes: list[str] = field(default_factory=list)
    copy_of: int = 0


def _affine(base: np.ndarray, terms: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """``base + sum c (x - base)`` over ``terms`` of ``(x, c)``, float64, on cache-sized blocks."""
    size = base.size
    acc = np.empty(size, np.float64)
    tmp = np.empty(min(size, _BLOCK), np.float64)
    terms = [(x, c) for x, c in terms if c != 0.0]
    for start in range(0, size, _BLOCK):
        stop = min(start + _BLOCK, size)
        a, t, b = acc[start:stop], tmp[: stop - start], base[start:stop]
        a[:] = b
        for x, c in terms:
            np.subtract(x[start:stop], b, out=t, dtype=np.float64)
            t *= c
            a += t
    return acc


def _weighted(flats: Sequence[np.ndarray], counts: Sequence[int], what: str) -> _Outcome:
    """Weighted mean ``own + sum_i c_i (x_i - own)``, ``c_i = counts_i / sum(counts)``.

    Equal ``c_i`` if the sum is 0.
    """
    n = len(flats)
    total = sum(counts)
    notes = []
    if total > 0:
        coeffs = [c / total for c in counts]
    else:
        coeffs = [1.0 / n] * n
        if n > 1:
            notes.append(f"every input has {what} 0: merged with equal weights")
    acc = _affine(flats[0], list(zip(flats[1:], coeffs[1:], strict=True)))
    selected = [i for i, c in enumerate(coeffs) if c > 0]
    return _Outcome(acc, selected, notes)


@functools.lru_cache(maxsize=64)
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort comparators for ``n`` inputs (any n, pruned).

    Knuth, TAOCP vol. 3, 5.3.4 (Batcher 1968); O(n log^2 n) comparators. Each pair
    ``(i, j)``, ``i < j``, puts the smaller value at ``i``.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def _order_stat(flats: Sequence[np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Coordinate-wise mean of the sorted values ranked lo..hi-1 of n inputs, clipped to them.

    Sorts each coordinate's n values (a vectorised sorting network on cache-sized
    blocks for n <= 16, numpy's sort above), then averages ranks ``lo`` to ``hi - 1``
    in float64. The result is clipped to [rank lo, rank hi-1] so rounding can never
    leave the kept values' range.
    """
    n, size = len(flats), flats[0].size
    out = np.empty(size, np.float64)
    pairs = _sorting_network(n) if n <= _NETWORK_MAX_INPUTS else None
    for start in range(0, size, _BLOCK):
        stop = min(start + _BLOCK, size)
        if pairs is not None:
            rows = [x[start:stop].copy() for x in flats]
            tmp = np.empty_like(rows[0])
            for i, j in pairs:
                np.minimum(rows[i], rows[j], out=tmp)
                np.maximum(rows[i], rows[j], out=rows[j])
                rows[i], tmp = tmp, rows[i]
        else:
            block = np.stack([x[start:stop] for x in flats])
            block.sort(axis=0)
            rows = list(block)
        view = out[start:stop]
        view[:] = rows[lo]
        if hi - lo > 1:
            for r in rows[lo + 1 : hi]:
                np.add(view, r, out=view, dtype=np.float64)
            view /= hi - lo
            np.clip(view, rows[lo], rows[hi - 1], out=view)
    return out


def _median(flats: Sequence[np.ndarray]) -> _Outcome:
    n = len(flats)
    lo, hi = (n - 1) // 2, n // 2 + 1
    return _Outcome(_order_stat(flats, lo, hi), list(range(n)))


def _trimmed(flats: Sequence[np.ndarray], beta: float) -> _Outcome:
    n = len(flats)
    k = math.floor(beta * n + 1e-9)
    notes = []
    if k == 0 and beta > 0 and n > 1:
        notes.append(f"trimmed: beta={beta:g} trims nothing from {n} inputs (plain mean)")
    return _Outcome(_order_stat(flats, k, n - k), list(range(n)), notes)


def _distances(flats: Sequence[np.ndarray]) -> np.ndarray:
    """(n, n) squared Euclidean distances, float64, each pair computed directly.

    ``|x_i - x_j|^2`` is summed block by block from the difference itself (no
    ``|a|^2 + |b|^2 - 2ab`` cancellation), so a pair's value depends only on the two
    vectors, not on their positions: Krum's choice does not depend on input order.
    """
    n, size = len(flats), flats[0].size
    d = np.zeros((n, n), np.float64)
    tmp = np.empty(min(size, _BLOCK), np.float64)
    for start in range(0, size, _BLOCK):
        stop = min(start + _BLOCK, size)
        t = tmp[: stop - start]
        for i in range(n):
            for j in range(i + 1, n):
                np.subtract(flats[i][start:stop], flats[j][start:stop], out=t, dtype=np.float64)
                d[i, j] += float(np.einsum("i,i->", t, t))  # not BLAS: its threads spin
    return d + d.T


def _lex(a: np.ndarray, b: np.ndarray) -> int:
    diff = np.flatnonzero(a != b)
    if diff.size == 0:
        return 0
    i = diff[0]
    return -1 if a[i] < b[i] else 1


def _krum_order(flats: Sequence[np.ndarray], f: int) -> list[int]:
    """Input indices by increasing Krum score; exact ties broken by lexicographic order."""
    n = len(flats)
    d = _distances(flats)
    closest = n - f - 2
    scores = []
    for i in range(n):
        others = np.sort(np.delete(d[i], i))
        scores.append(float(others[:closest].sum()))

    def cmp(i: int, j: int) -> int:
        if scores[i] != scores[j]:
            return -1 if scores[i] < scores[j] else 1
        return _lex(flats[i], flats[j])

    return sorted(range(n), key=functools.cmp_to_key(cmp))


def _krum_f(rule: str, n: int, f: int, notes: list[str]) -> int | None:
    """The f Krum can use with n inputs (n > 2f + 2), or None: fall back to the median."""
    if n > 2 * f + 2:
        return f
    if n >= 3:
        usable = (n - 3) // 2
        notes.append(f"{rule}: f={f} needs at least {2 * f + 3} inputs, got {n}: used f={usable}")
        return usable
    notes.append(f"{rule}: {n} input(s) are too few to score: used the coordinate-wise median")
    return None


def _krum(flats: Sequence[np.ndarray], f: int) -> _Outcome:
    notes: list[str] = []
    usable = _krum_f("krum", len(flats), f, notes)
    if usable is None:
        out = _median(flats)
        out.notes[:0] = notes
        return out
    best = _krum_order(flats, usable)[0]
    return _Outcome(None, [best], notes, copy_of=best)


def _multikrum(flats: Sequence[np.ndarray], f: int, m: int | None) -> _Outcome:
    n = len(flats)
    notes: list[str] = []
    usable = _krum_f("multikrum", n, f, notes)
    if usable is None:
        out = _median(flats)
        out.notes[:0] = notes
        return out
    if m is None:
        m = n - usable
    elif m > n:
        notes.append(f"multikrum: m={m} is more than the {n} inputs: averaged all {n}")
        m = n
    chosen = sorted(_krum_order(flats, usable)[:m])
    if m == 1:
        return _Outcome(None, chosen, notes, copy_of=chosen[0])
    acc = _affine(flats[chosen[0]], [(flats[i], 1.0 / m) for i in chosen[1:]])
    return _Outcome(acc, chosen, notes)


_Engine = Callable[[list[np.ndarray], list["Contribution"], Mapping[str, Any]], _Outcome]

_ENGINES: dict[str, _Engine] = {
    "mean": lambda flats, inputs, p: _weighted(flats, [c.samples for c in inputs], "samples"),
    "age": lambda flats, inputs, p: _weighted(flats, [c.age for c in inputs], "age"),
    "median": lambda flats, inputs, p: _median(flats),
    "trimmed": lambda flats, inputs, p: _trimmed(flats, _beta(p)),
    "krum": lambda flats, inputs, p: _krum(flats, _f("krum", p)),
    "multikrum": lambda flats, inputs, p: _multikrum(flats, _f("multikrum", p), _m(p)),
}


def _meta_problem(c: Contribution) -> str | None:
    for what in ("samples", "age"):
        v = getattr(c, what)
        if not _is_int(v) or v < 0:
            return f"{what} is {v!r}, expected an integer >= 0"
    return None


def _check_own(own: Any) -> None:
    if not isinstance(own, Contribution):
        raise MergeError(f"own is a {type(own).__name__}, expected a Contribution", code="bad-own")
    problem = _meta_problem(own)
    if problem:
        raise MergeError(f"the node's own {problem}", code="bad-own")


def _run(
    rule: str,
    layout: _Layout,
    own_arrays: list[np.ndarray],
    inputs: list[Contribution],
    peer_arrays: list[list[np.ndarray]],
    params: Mapping[str, Any],
) -> tuple[np.ndarray, _Outcome]:
    """Run ``rule``'s engine; return the merged flat vector (P,) and the engine's outcome."""
    arrays = [own_arrays, *peer_arrays]
    flats = [layout.flatten(a) for a in arrays]
    out = _ENGINES[rule](flats, inputs, params)
    return (flats[out.copy_of] if out.flat is None else out.flat), out


def _apply(rule: str, own: Contribution, peers: Iterable[Contribution], **params: Any) -> dict:
    """A rule called directly: structure checks only (merge() does the full checks)."""
    check_params(rule, params)
    _check_own(own)
    peers = list(peers)
    for c in peers:
        problem = _meta_problem(c)
        if problem:
            raise RejectedUpdate(f"{c.author}: {problem}", code="meta")
    layout = _Layout.of(own.weights)
    own_arrays = [np.asarray(w) for w in own.weights.values()]
    peer_arrays = [layout.check_structure(c.weights) for c in peers]
    flat, _ = _run(rule, layout, own_arrays, [own, *peers], peer_arrays, params)
    return layout.unflatten(flat, own_arrays)


# --------------------------------------------------------------------------- rules
def mean(own: Contribution, peers: Iterable[Contribution]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of own and the peers: FedAvg's aggregation rule.

    McMahan, Moore, Ramage, Hampson, Agüera y Arcas 2017, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data" (AISTATS), Algorithm 1:
    ``w = sum_k (n_k / n) w_k``. Here ``n_k`` is each input's ``samples`` (own's too)
    and ``n = sum_k n_k``; computed as ``own + sum_peers (n_k / n)(w_k - own)`` in
    float64 (identical inputs give back exactly that input). If every ``samples`` is
    0 the inputs get equal weights. Not robust: one peer claiming many samples decides
    the result.

    Args:
        own: the node's weights and its ``samples`` since its last merge.
        peers: accepted peer contributions with the same names, shapes and dtypes.

    Returns:
        Merged weights: own's names, order, shapes and dtypes; fresh arrays. Integer
        tensors are copied from own.

    Raises:
        RejectedUpdate: a peer's names/shapes/dtypes differ from own (code ``names``,
            ``shape``, ``dtype``) or its samples/age are not integers >= 0 (``meta``).
            Finiteness and norm are :func:`merge`'s job.
        MergeError: own is not a Contribution or has bad samples/age (``bad-own``).

    Cost: O(nP) time, O(P) float64 extra memory beside the flattened inputs.
    """
    return _apply("mean", own, peers)


def age(own: Contribution, peers: Iterable[Contribution]) -> dict[str, np.ndarray]:
    """Model-age-weighted mean of own and the peers: gossip learning's merge.

    Gossip learning (Ormándi, Hegedűs, Jelasity 2013, "Gossip learning with linear
    models on fully distributed data", Concurrency and Computation: Practice and
    Experience) has each node merge a received model into its own and track a model's
    age ``t`` (updates it has seen). The age-weighted merge of two models,
    ``w = (t w + t_r w_r) / (t + t_r)`` with the merged age ``max(t, t_r)``, is the one
    of Hegedűs, Danner, Jelasity 2019 ("Gossip learning as a decentralized alternative
    to federated learning", DAIS) and of the Gossip Learning Framework's mergeable
    models. With ``n`` inputs this computes exactly

        ``w = sum_k (t_k / T) w_k``,  ``T = sum_k t_k``,

    where ``t_k`` is each input's ``age`` (own's too), as
    ``own + sum_peers (t_k / T)(w_k - own)`` in float64; with one peer it is the pairwise
    rule above. If every age is 0 the inputs get equal weights. The merged model's age
    is not returned: a caller tracking it should take the maximum of the inputs' ages.
    Like ``mean``, it trusts the ages peers claim.

    Args, returns, raises: as :func:`mean` (``age`` instead of ``samples``).

    Cost: O(nP) time, O(P) float64 extra memory beside the flattened inputs.
    """
    return _apply("age", own, peers)


def median(own: Contribution, peers: Iterable[Contribution]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of own and the peers.

    Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates" (ICML), the coordinate-wise median aggregator:
    each parameter is the median of the n inputs' values for it; for even n, the mean
    of the two middle values (in float64). Every result value lies within the inputs'
    min and max for that coordinate. ``samples`` and ``age`` are ignored.

    Args, returns, raises: as :func:`mean`.

    Cost: O(P n log^2 n) time for n <= 16 (a sorting network applied to blocks of
    coordinates), O(P n log n) above; O(nP) extra memory.
    """
    return _apply("median", own, peers)


def trimmed(
    own: Contribution, peers: Iterable[Contribution], *, beta: float = 0.2
) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean of own and the peers.

    Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates" (ICML), the coordinate-wise trimmed mean: for
    each parameter, drop the ``k = floor(beta * n)`` largest and ``k`` smallest of the
    n inputs' values and average the remaining ``n - 2k`` (float64). ``beta = 0`` is the
    plain mean; ``k = 0`` whenever ``beta * n < 1``. Results lie within the inputs'
    min and max. ``samples`` and ``age`` are ignored.

    Args:
        own: as :func:`mean`.
        peers: as :func:`mean`.
        beta: fraction trimmed from each end, ``0 <= beta < 0.5`` (at least the
            expected fraction of Byzantine inputs).

    Returns, raises: as :func:`mean`; MergeError ``bad-params`` for beta out of range.

    Cost: as :func:`median`.
    """
    return _apply("trimmed", own, peers, beta=beta)


def krum(own: Contribution, peers: Iterable[Contribution], *, f: int = 1) -> dict[str, np.ndarray]:
    """Krum: the input closest to its n - f - 2 nearest neighbours.

    Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS). Each input ``i``
    (own included) scores ``s(i) = sum of |x_i - x_j|^2 over the n - f - 2 inputs j
    closest to it`` (squared Euclidean distances over all floating-point parameters,
    float64); the result is a copy of the input with the lowest score. Exact ties go
    to the lexicographically smallest parameter vector, so the choice does not depend
    on input order. ``samples`` and ``age`` are ignored.

    Krum needs ``n > 2f + 2``. With fewer inputs it uses the largest f that fits,
    ``floor((n - 3) / 2)``, when ``n >= 3``; with 1 or 2 inputs it returns the
    coordinate-wise median (own itself, or the mean of own and the one peer, which
    :func:`check_update`'s norm bound still limits). :func:`merge` reports the fallback
    in ``MergeResult.notes``.

    Args:
        own: as :func:`mean`.
        peers: as :func:`mean`.
        f: number of Byzantine inputs tolerated, an integer >= 0.

    Returns, raises: as :func:`mean`; MergeError ``bad-params`` for a bad f.

    Cost: O(n^2 P) time for the pairwise distances (each pair once), O(n^2 log n)
    for the scores; O(nP) memory for the flattened inputs.
    """
    return _apply("krum", own, peers, f=f)


def multikrum(
    own: Contribution, peers: Iterable[Contribution], *, f: int = 1, m: int | None = None
) -> dict[str, np.ndarray]:
    """Multi-Krum: the plain mean of the m inputs with the lowest Krum scores.

    Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS), Multi-Krum: score
    every input as :func:`krum` does, keep the ``m`` lowest (ties as in krum) and
    average them with equal weights (float64). ``m = 1`` is Krum; the default
    ``m = n - f`` keeps every input but the f most suspicious. ``m`` above n is clamped
    to n. Fallbacks for small n as :func:`krum`.

    Args:
        own: as :func:`mean`.
        peers: as :func:`mean`.
        f: number of Byzantine inputs tolerated, an integer >= 0.
        m: how many inputs to average, an integer >= 1, or None for ``n - f``.

    Returns, raises: as :func:`mean`; MergeError ``bad-params`` for a bad f or m.

    Cost: as :func:`krum`, plus O(mP) for the mean.
    """
    return _apply("multikrum", own, peers, f=f, m=m)


# --------------------------------------------------------------------------- merge
def merge(
    rule: str,
    own: Contribution,
    contributions: Iterable[Contribution],
    *,
    max_norm_ratio: float = DEFAULT_MAX_NORM_RATIO,
    min_norm: float = DEFAULT_MIN_NORM,
    **params: Any,
) -> MergeResult:
    """Check each peer contribution, drop the bad ones, and merge the rest with own.

    docs/design.md "Node loop", step 3. Each contribution goes through, in order: its
    ``samples``/``age`` (integers >= 0, else code ``meta``), its author (a second
    contribution by the same author, or one by ``own.author``, is code ``duplicate``:
    the caller should pass only the freshest per author), then :func:`check_update`
    against ``own.weights``. A refused contribution never raises: it is listed in
    ``MergeResult.rejected`` and the merge goes on without it. The survivors and own are
    then merged by ``rule`` (see the module's table; own is input 0). With no survivor
    the result is a copy of own's weights.

    Args:
        rule: the manifest's rule name, one of :data:`RULES`.
        own: the node's own weights, samples since its last merge, age (local steps)
            and author id.
        contributions: peers' checkpoints, decoded.
        max_norm_ratio: bound on ``norm(peer) / max(norm(own), min_norm)``
            (:func:`check_update`).
        min_norm: the floor of own's norm in that bound (:func:`check_update`).
        **params: the rule's parameters (:func:`check_params`).

    Returns:
        A :class:`MergeResult`.

    Raises:
        MergeError: unknown rule (``unknown-rule``), bad parameters (``bad-params``), or
            own unusable: not a Contribution, bad samples/age, or weights holding NaN or
            infinity (``bad-own``). Never raised because of a peer.

    Cost: O(nP) for the checks plus the rule's cost (4 peers of 1M float32 parameters on
    2 vCPUs: about 15 ms for ``mean``, 20 ms for ``krum``, plus 4 ms to decode the files).
    """
    check_params(rule, params)
    _check_own(own)
    ref = _Reference(own.weights, max_norm_ratio, min_norm)

    accepted: list[Contribution] = []
    peer_arrays: list[list[np.ndarray]] = []
    rejected: list[tuple[str, str, str]] = []
    seen = {own.author}
    for c in contributions:
        author = getattr(c, "author", None)
        try:
            if not isinstance(c, Contribution):
                raise RejectedUpdate(
                    f"contribution is a {type(c).__name__}, expected a Contribution", code="meta"
                )
            problem = _meta_problem(c)
            if problem:
                raise RejectedUpdate(problem, code="meta")
            if author in seen:
                whose = "the node itself" if author == own.author else "an earlier contribution"
                raise RejectedUpdate(
                    f"author {author!r} is also the author of {whose} in this merge;"
                    " pass only the freshest checkpoint per author",
                    code="duplicate",
                )
            arrays = ref.check(c.weights)
        except RejectedUpdate as e:
            rejected.append((str(author), e.code, e.reason))
            continue
        seen.add(c.author)
        accepted.append(c)
        peer_arrays.append(arrays)

    inputs = [own, *accepted]
    flat, out = _run(rule, ref.layout, ref.arrays, inputs, peer_arrays, params)
    return MergeResult(
        weights=ref.layout.unflatten(flat, ref.arrays),
        used=[c.author for c in inputs],
        rejected=rejected,
        selected=[inputs[i].author for i in out.selected],
        notes=out.notes,
    )
