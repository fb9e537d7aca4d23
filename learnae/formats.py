"""Checkpoint and data-chunk files: safetensors, validated before anything is decoded.

Both kinds of file follow the safetensors format
(https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian
header length ``N``, ``N`` bytes of UTF-8 JSON (an object mapping each tensor name to
``{"dtype", "shape", "data_offsets"}`` plus an optional ``"__metadata__"`` string→string
map), then the data section, which the tensors' ``[begin, end)`` byte ranges cover
exactly, without gaps or overlaps. Tensor data is C-order and little-endian.

Files come from untrusted peers, so :func:`decode_checkpoint` and :func:`decode_chunk`
check the size limit first, then parse and check the header themselves (every violation
is a :class:`~learnae.errors.CorruptFile` saying what was wrong), and only then let
``safetensors.numpy.load`` read the tensors. Nothing is ever unpickled.

Accepted dtypes (:data:`DTYPES`): F16, F32, F64, I8, I16, I32, I64, U8, U16, U32, U64.
Refused: BF16 and the F8/F4 types (numpy has no native type for them, and Keras keeps
float32 variables even under mixed precision), C64 (no model weight is complex), BOOL
(a byte other than 0 or 1 is not a valid numpy bool), and any other tag.

Checkpoint metadata (all strings): ``format`` = ``"learnae-checkpoint/1"``, ``genesis``
(the swarm's genesis transaction CID), ``step`` and ``samples`` (decimal integers) and
``names`` (a JSON list of the weight names in ``model.weights`` order). A compressed
checkpoint (:mod:`learnae.codec`) adds ``codec`` (``float16``, ``int8`` or ``int4``; absent
means float32, and such files are byte for byte what learnae wrote before compression
existed), ``block`` (values per scale, for ``int8`` and ``int4``: each weight ``W`` then has a
tensor ``W#scale`` of float32 scales beside it) and for ``int4`` ``shapes`` (a JSON list of the
weights' shapes, in ``names`` order: the values are packed two to a byte). A *delta* adds
``delta_of``, the CID of the full checkpoint it is relative to: its tensors encode
``weights - base``, and :func:`decode_checkpoint` needs that base's weights to decode it.
Chunk metadata: ``format`` = ``"learnae-chunk/1"``, ``schema`` (the JSON of
:meth:`Schema.to_dict`), ``sensor``, ``seq``, ``start_ms`` and ``end_ms`` (milliseconds
since the Unix epoch).

The encoders here write the bytes themselves rather than calling ``safetensors`` to
save: its serializer emits the metadata map in a random order, so the same checkpoint
would get a different CID on every run. Ours is deterministic: tensors in the given
order, compact JSON, the header padded with spaces to a multiple of 8 bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.numpy
from numpy.typing import ArrayLike

from learnae import codec as codecs
from learnae.content import parse_cid
from learnae.errors import (
    CorruptFile,
    FormatError,
    LearnaeError,
    NonFiniteError,
    OversizeError,
    SchemaMismatch,
)

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "Checkpoint",
    "Chunk",
    "Schema",
    "check_names",
    "checkpoint_encoding",
    "decode_checkpoint",
    "decode_chunk",
    "encode_checkpoint",
    "encode_chunk",
    "pack",
    "sum_of_squares",
    "weight_norm",
]

#: safetensors dtype tag -> numpy dtype name, for every dtype a learnae file may hold.
DTYPES: dict[str, str] = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}
_TAGS = {name: tag for tag, name in DTYPES.items()}

#: Largest header accepted, in bytes (a checkpoint of ~10,000 tensors fits easily).
MAX_HEADER_BYTES = 1 << 20
_MAX_NDIM = 32
_CHECKPOINT_FORMAT = "learnae-checkpoint/1"
_CHUNK_FORMAT = "learnae-chunk/1"
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,19})")


# --------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Schema:
    """What one row of a data chunk looks like.

    Attributes:
        features: shape of one row's features, e.g. ``(28, 28)``; every dimension >= 1.
        dtype: numpy name of the feature dtype, e.g. ``"float32"`` (one of :data:`DTYPES`;
            a ``np.dtype`` or numpy type such as ``np.float32`` is turned into its name).
        label_dtype: numpy name of the label dtype (``"int64"`` for class labels, a float
            dtype for regression), or None for unlabelled data.
        classes: number of classes (>= 2) when labels are class indices in
            ``[0, classes)``; None otherwise. Requires an integer ``label_dtype``.

    Raises:
        SchemaMismatch: on construction, for a value learnae does not support.
    """

    features: tuple[int, ...]
    dtype: str
    label_dtype: str | None = None
    classes: int | None = None

    def __post_init__(self) -> None:
        features = tuple(self.features)
        if not all(_is_int(d) and d >= 1 for d in features):
            raise SchemaMismatch(
                f"schema features {self.features!r} must be a tuple of integers >= 1"
            )
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "schema dtype"))
        if self.label_dtype is not None:
            object.__setattr__(
                self, "label_dtype", _dtype_name(self.label_dtype, "schema label_dtype")
            )
        if self.classes is not None:
            if not _is_int(self.classes) or self.classes < 2:
                raise SchemaMismatch(
                    f"schema classes is {self.classes!r}, expected an integer >= 2 or None"
                )
            if self.label_dtype is None or np.dtype(self.label_dtype).kind not in "iu":
                raise SchemaMismatch(
                    f"schema has classes={self.classes} but label_dtype={self.label_dtype!r};"
                    " class labels need an integer label_dtype such as 'int64'"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/CBOR types: ``{"features": [...], "dtype", "label_dtype", "classes"}``."""
        return {
            "features": list(self.features),
            "dtype": self.dtype,
            "label_dtype": self.label_dtype,
            "classes": self.classes,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Schema:
        """Inverse of :meth:`to_dict`.

        Raises:
            FormatError: ``d`` is not a map, lacks ``features`` or ``dtype``, has an unknown
                key, or a value of the wrong JSON type.
            SchemaMismatch: the values are well-formed but unsupported (see :class:`Schema`).
        """
        if not isinstance(d, Mapping):
            raise FormatError(f"schema is a {type(d).__name__}, expected a map")
        unknown = set(d) - {"features", "dtype", "label_dtype", "classes"}
        if unknown:
            raise FormatError(
                f"schema has unknown keys {sorted(map(str, unknown))};"
                " expected features, dtype, label_dtype, classes"
            )
        if "features" not in d or "dtype" not in d:
            raise FormatError(f"schema {dict(d)!r} lacks 'features' or 'dtype'")
        features, dtype = d["features"], d["dtype"]
        label_dtype, classes = d.get("label_dtype"), d.get("classes")
        if not isinstance(features, list | tuple) or not all(_is_int(v) for v in features):
            raise FormatError(f"schema features is {features!r}, expected a list of integers")
        if not isinstance(dtype, str) or not isinstance(label_dtype, str | None):
            raise FormatError(
                f"schema dtype {dtype!r} and label_dtype {label_dtype!r} must be strings"
            )
        if classes is not None and not _is_int(classes):
            raise FormatError(f"schema classes is {classes!r}, expected an integer or null")
        return cls(tuple(features), dtype, label_dtype, classes)

    def check(self, x: Any, y: Any) -> None:
        """Check features ``x`` (rows × *features) and labels ``y`` (rows,) against this schema.

        Raises:
            SchemaMismatch: ``x``/``y`` is not an array, has the wrong shape or dtype, the
                row counts differ, ``y`` is given for an unlabelled schema (or missing for a
                labelled one), or a class label lies outside ``[0, classes)``.
            NonFiniteError: a float feature or label is NaN or infinite.
        """
        if not isinstance(x, np.ndarray):
            raise SchemaMismatch(f"x is a {type(x).__name__}, expected a numpy array")
        if x.shape[1:] != self.features or x.ndim != len(self.features) + 1:
            raise SchemaMismatch(
                f"x has shape {x.shape}, expected (rows, {', '.join(map(str, self.features))})"
            )
        if x.dtype != np.dtype(self.dtype):
            raise SchemaMismatch(f"x has dtype {x.dtype}, expected {self.dtype}")
        _check_finite("x", x)
        if self.label_dtype is None:
            if y is not None:
                raise SchemaMismatch("y was given but the schema has no labels (label_dtype None)")
            return
        if not isinstance(y, np.ndarray):
            raise SchemaMismatch(
                f"y is {type(y).__name__}, expected a numpy array of {self.label_dtype} labels"
            )
        if y.ndim != 1:
            raise SchemaMismatch(f"y has shape {y.shape}, expected (rows,)")
        if y.shape[0] != x.shape[0]:
            raise SchemaMismatch(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if y.dtype != np.dtype(self.label_dtype):
            raise SchemaMismatch(f"y has dtype {y.dtype}, expected {self.label_dtype}")
        _check_finite("y", y)
        if self.classes is not None and y.size:
            bad = np.flatnonzero((y < 0) | (y >= self.classes))
            if bad.size:
                raise SchemaMismatch(
                    f"label {y[bad[0]]} at row {bad[0]} is outside 0..{self.classes - 1}"
                    f" ({bad.size} such rows)"
                )


# ------------------------------------------------------------------------ checkpoint
@dataclass
class Checkpoint:
    """A model's weights as published in a checkpoint file.

    Attributes:
        weights: weight path (``"sequential/dense/kernel"``) -> array, in ``model.weights``
            order (insertion order is kept through encode/decode).
        genesis: CID of the swarm's genesis transaction.
        step: the publishing node's local step (batches trained).
        samples: examples trained on since the node's previous checkpoint.
        delta_of: for a decoded delta, the CID of the full checkpoint it was relative to
            (its ``weights`` are then the sum, the full weights); else None.
    """

    weights: dict[str, np.ndarray]
    genesis: str
    step: int
    samples: int
    delta_of: str | None = None


_SCALE = "#scale"
"""Suffix of the tensor that holds a quantized weight's scales (``W#scale`` beside ``W``)."""


def encode_checkpoint(ckpt: Checkpoint, *, codec: str = codecs.LOSSLESS, block: int = 64,
                      base: tuple[str, Mapping[str, np.ndarray]] | None = None) -> bytes:
    """Serialize ``ckpt`` as a safetensors checkpoint file (deterministic bytes).

    Args:
        ckpt: the weights and their metadata (``ckpt.delta_of`` is ignored; see ``base``).
        codec: how the weights travel (:data:`learnae.codec.CODECS`); every codec but
            ``float32`` needs float32 weights.
        block: values per scale, for ``int8`` and ``int4``.
        base: ``(cid, weights)`` of a full checkpoint the receivers hold (as they decode it):
            the file is then a delta, ``ckpt.weights - weights`` encoded with ``codec``.

    Raises:
        FormatError: a weight name is empty, reserved, ends in ``#scale`` or is not UTF-8
            encodable, a dtype is not in :data:`DTYPES` (or not float32 under a lossy codec or
            a delta), ``base`` has other names or shapes, genesis/step/samples are of the wrong
            type or negative; code ``codec`` for an unknown codec or block.
        NonFiniteError: a weight holds NaN or infinity (peers would refuse it), or a value the
            codec cannot hold.
    """
    if not isinstance(ckpt.genesis, str) or not ckpt.genesis:
        raise FormatError(f"checkpoint genesis is {ckpt.genesis!r}, expected a CID string")
    _check_count("step", ckpt.step)
    _check_count("samples", ckpt.samples)
    codec, block = codecs.check_codec(codec, block)
    weights = {name: np.asarray(w) for name, w in ckpt.weights.items()}
    for name, w in weights.items():
        _check_finite(f"weight {name!r}", w)
    metadata = {
        "format": _CHECKPOINT_FORMAT,
        "genesis": ckpt.genesis,
        "step": str(ckpt.step),
        "samples": str(ckpt.samples),
        "names": json.dumps(list(weights), separators=(",", ":")),
    }
    if codec == codecs.LOSSLESS and base is None:
        return _encode(weights, metadata)
    for name, w in weights.items():
        if name.endswith(_SCALE):
            raise FormatError(f"weight name {name!r} ends in {_SCALE!r}, which marks scales")
        if w.dtype != np.float32:
            raise FormatError(f"weight {name!r} is {w.dtype}: codec {codec} and deltas need float32 weights")
    if base is not None:
        cid, base_weights = base
        parse_cid(cid)
        _check_base(weights, base_weights)
        weights = {name: w - np.asarray(base_weights[name], dtype=np.float32) for name, w in weights.items()}
        metadata["delta_of"] = cid
    if codec != codecs.LOSSLESS:
        metadata["codec"] = codec
    if codec in codecs.QUANTIZED:
        metadata["block"] = str(block)
    if codec == "int4":
        metadata["shapes"] = json.dumps([list(w.shape) for w in weights.values()], separators=(",", ":"))
    tensors: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        values, scales = codecs.encode(w, codec, block)
        tensors[name] = values
        if scales is not None:
            tensors[name + _SCALE] = scales
    return _encode(tensors, metadata)


def checkpoint_encoding(data: bytes, *, max_bytes: int) -> tuple[str, str | None]:
    """How a checkpoint file is encoded, read from its header alone: ``(codec, delta_of)``.

    ``codec`` is one of :data:`learnae.codec.CODECS`; ``delta_of`` the CID of the full
    checkpoint the file is a delta of, or None for a full checkpoint.

    Raises:
        OversizeError, CorruptFile, FormatError: as :func:`decode_checkpoint` (code ``codec``
            for an unknown codec); InvalidCID for a ``delta_of`` that is not a CID.
    """
    metadata, _entries = _parse_header(_limit(data, max_bytes, "checkpoint"))
    _check_format(metadata, _CHECKPOINT_FORMAT)
    codec, _block = codecs.check_codec(metadata.get("codec", codecs.LOSSLESS))
    return codec, _delta_of(metadata)


def decode_checkpoint(
    data: bytes,
    *,
    max_bytes: int,
    expect: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
    genesis: str | None = None,
    base: Mapping[str, np.ndarray] | None = None,
) -> Checkpoint:
    """Validate and decode a checkpoint file from an untrusted peer.

    Args:
        data: the file's bytes.
        max_bytes: the swarm's checkpoint size limit, in bytes (checked before parsing).
        expect: name -> (shape, dtype name) of the receiver's own model; the file must
            hold exactly these names with these shapes and dtypes.
        genesis: the receiver's genesis CID; the file must name the same swarm.
        base: for a delta (:func:`checkpoint_encoding` names its base), the weights of the
            full checkpoint it is relative to, as decoded; ignored for a full checkpoint.

    Returns:
        A :class:`Checkpoint` whose weights are fresh, writable arrays (they share no
        memory with ``data``), in the file's ``model.weights`` order; float32 whatever the
        codec; a delta's are the full weights (base plus delta).

    Raises:
        OversizeError: ``len(data) > max_bytes``.
        CorruptFile: not a well-formed safetensors file (header, offsets, dtypes).
        FormatError: well-formed safetensors, but not a learnae checkpoint (metadata); a
            compressed file's own codes (:mod:`learnae.codec`: ``codec``,
            ``quantized-layout``, ``quantized-scale``, ``quantized-range``); code
            ``delta-base`` for a delta without ``base`` or with a base of other names or shapes.
        SchemaMismatch: wrong genesis, or names/shapes/dtypes differ from ``expect``.
        NonFiniteError: a weight holds NaN or infinity.
    """
    data = _limit(data, max_bytes, "checkpoint")
    metadata, entries = _parse_header(data)
    _check_format(metadata, _CHECKPOINT_FORMAT)
    codec, block = codecs.check_codec(metadata.get("codec", codecs.LOSSLESS),
                                      _meta_int(metadata, "block") if "block" in metadata else 64)
    delta_of = _delta_of(metadata)
    if codec == codecs.LOSSLESS and delta_of is None:
        names = _meta_names(metadata, entries)
        declared = entries
    else:
        names, declared = _coded_entries(metadata, entries, codec)
    file_genesis = _meta_str(metadata, "genesis")
    if genesis is not None and file_genesis != genesis:
        raise SchemaMismatch(
            f"checkpoint belongs to swarm {file_genesis!r}, expected genesis {genesis!r}"
        )
    step, samples = _meta_int(metadata, "step"), _meta_int(metadata, "samples")
    if expect is not None:
        _check_expect(declared, expect)
    if delta_of is not None and base is None:
        raise FormatError(f"the checkpoint is a delta of {delta_of}: decode it with that base's weights",
                          code="delta-base")
    arrays = _load(data, entries)
    if codec == codecs.LOSSLESS and delta_of is None:
        weights = {name: arrays[name] for name in names}
        for name, w in weights.items():
            _check_finite(f"weight {name!r}", w)
    else:
        weights = {name: codecs.decode(arrays[name], arrays.get(name + _SCALE), codec, declared[name][1], block)
                   for name in names}
    if delta_of is not None:
        assert base is not None
        _check_base(weights, base)
        weights = {name: w + np.asarray(base[name], dtype=np.float32) for name, w in weights.items()}
        for name, w in weights.items():
            _check_finite(f"weight {name!r} (base plus delta)", w)
    return Checkpoint(weights=weights, genesis=file_genesis, step=step, samples=samples, delta_of=delta_of)


def _delta_of(metadata: Mapping[str, str]) -> str | None:
    if "delta_of" not in metadata:
        return None
    cid = metadata["delta_of"]
    parse_cid(cid)
    return cid


def _coded_entries(metadata: Mapping[str, str], entries: Mapping[str, tuple[str, tuple[int, ...]]],
                   codec: str) -> tuple[list[str], dict[str, tuple[str, tuple[int, ...]]]]:
    """A compressed file's weight names and their declared (float32 tag, shape).

    Raises:
        FormatError: the tensors are not exactly the names (and their ``#scale`` tensors for a
            quantized codec), or int4's ``shapes`` is missing or malformed; code
            ``quantized-layout`` for the tensors, ``format`` for the metadata.
    """
    quantized = codec in codecs.QUANTIZED
    stored = {n for n in entries if not (quantized and n.endswith(_SCALE))}
    names = _meta_names(metadata, dict.fromkeys(stored))
    if quantized and set(entries) != stored | {n + _SCALE for n in names}:
        raise FormatError(f"a {codec} checkpoint needs one {_SCALE} tensor beside each weight",
                          code="quantized-layout")
    if codec != "int4":
        return names, {n: ("F32", entries[n][1]) for n in names}
    try:
        shapes = json.loads(_meta_str(metadata, "shapes"))
    except json.JSONDecodeError as e:
        raise FormatError(f"metadata 'shapes' is not valid JSON: {e}") from None
    if (not isinstance(shapes, list) or len(shapes) != len(names)
            or not all(isinstance(sh, list) and len(sh) <= _MAX_NDIM and all(_is_int(d) and d >= 0 for d in sh)
                       for sh in shapes)):
        raise FormatError("metadata 'shapes' is not a list of one shape (non-negative integers) per weight")
    return names, {n: ("F32", tuple(sh)) for n, sh in zip(names, shapes, strict=True)}


def _check_base(weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> None:
    if list(base) != list(weights) or any(np.shape(base[n]) != np.shape(w) for n, w in weights.items()):
        raise FormatError("the delta's base has other weight names or shapes than the checkpoint",
                          code="delta-base")


def pack(arrays: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """Copies of ``arrays`` laid out back to back in one fresh buffer, in the mapping's order.

    Each copy is C-ordered, in native byte order, and starts at the first multiple of its
    item size after the previous one, so tensors of one dtype that follow each other have no
    gap between them: :mod:`learnae.merge` then reads a model's float weights as a single
    vector instead of concatenating them (4 MB per copy of 1M float32 parameters).
    ``learnae.training.model.get_weights`` lays out its snapshots this way.
    The copies are writable and share memory with nothing but that buffer (not with each
    other, not with ``arrays``).

    Args:
        arrays: name -> array (or anything ``np.asarray`` reads) of a numeric dtype.

    Returns:
        name -> copy, in the same order.
    """
    items = [(name, np.asarray(a)) for name, a in arrays.items()]
    offsets, total = [], 0
    for _, a in items:
        size = a.dtype.itemsize
        total += -total % size
        offsets.append(total)
        total += a.size * size
    buf = np.empty(total, np.uint8)
    out: dict[str, np.ndarray] = {}
    for (name, a), start in zip(items, offsets, strict=True):
        dtype = a.dtype.newbyteorder("=")
        copy = buf[start : start + a.size * dtype.itemsize].view(dtype).reshape(a.shape)
        np.copyto(copy, a)
        out[name] = copy
    return out


def weight_norm(weights: Mapping[str, np.ndarray] | Iterable[np.ndarray]) -> float:
    """Global L2 norm ``sqrt(sum of squares over every element of every tensor)``.

    ``weights`` is a name -> array map or an iterable of arrays; squares are accumulated
    in float64, so float16/float32 weights do not overflow. NaN/inf propagate.
    """
    tensors = weights.values() if isinstance(weights, Mapping) else weights
    return math.sqrt(sum(sum_of_squares(np.asarray(w)) for w in tensors))


def sum_of_squares(a: np.ndarray) -> float:
    """Sum of the squares of every element of ``a``, accumulated in float64.

    No float64 copy of ``a`` is made (numpy's ``einsum`` casts in small buffers) and no BLAS
    call is made: OpenBLAS's threads spin-wait after each call and burn a small machine's
    cores. NaN and infinity propagate, so a finite result proves ``a`` finite.

    Raises:
        TypeError: ``a``'s dtype cannot be cast safely to float64 (complex, object).
    """
    flat = a.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def check_names(
    found: Iterable[str],
    expected: Iterable[str],
    *,
    subject: str,
    reference: str,
    error: type[LearnaeError] = SchemaMismatch,
    ordered_by: str | None = None,
    code: str | None = None,
) -> None:
    """Check that a set of weights names exactly the expected tensors.

    The one "same names" check of checkpoints (:func:`decode_checkpoint`), model loads
    (``learnae.training.model.set_weights``) and merges (``learnae.merge.check_update``).

    Args:
        found: the names held (a mapping's keys, in its order).
        expected: the names wanted, in ``model.weights`` order.
        subject: the first words of the message ``"<subject> differ from <reference>:
            missing [...], unexpected [...]"`` (at most 5 names of each are shown).
        reference: what ``subject`` is compared with, in that message.
        error: the error class raised.
        code: the error's code (None: the class's own).
        ordered_by: if given, the order must match too, and a reordering is reported as
            ``"<ordered_by> holds <reference> weights in another order: weight #i is 'x',
            <reference> is 'y'"``.

    Raises:
        error: a name is missing or unexpected (or, with ``ordered_by``, out of order).
    """
    found, expected = tuple(found), tuple(expected)
    if found == expected:
        return
    held, wanted = set(found), set(expected)
    missing = [n for n in expected if n not in held]
    extra = [n for n in found if n not in wanted]
    if missing or extra:
        raise error(
            f"{subject} differ from {reference}: missing {_few(missing)}, unexpected {_few(extra)}",
            code=code,
        )
    if ordered_by is not None:
        pos = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
        raise error(
            f"{ordered_by} holds {reference} weights in another order: weight #{pos} is"
            f" {found[pos]!r}, {reference} is {expected[pos]!r}",
            code=code,
        )


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


# ----------------------------------------------------------------------------- chunk
@dataclass
class Chunk:
    """A sensor's batch of rows as published in a data chunk file.

    Attributes:
        x: features, shape ``(rows, *schema.features)``, dtype ``schema.dtype``.
        y: labels, shape ``(rows,)``, dtype ``schema.label_dtype``; None when unlabelled.
        schema: the :class:`Schema` the rows follow.
        sensor: the sensor's id (free text chosen by its owner).
        seq: the sensor's sequence number for this chunk (>= 0).
        time_range: ``(start, end)`` of the readings, ms since the Unix epoch, start <= end.
    """

    x: np.ndarray
    y: np.ndarray | None
    schema: Schema
    sensor: str
    seq: int
    time_range: tuple[int, int]


def encode_chunk(chunk: Chunk) -> bytes:
    """Serialize ``chunk`` as a safetensors chunk file (deterministic bytes).

    Raises:
        SchemaMismatch, NonFiniteError: ``x``/``y`` do not match ``chunk.schema``
            (see :meth:`Schema.check`).
        FormatError: sensor, seq or time_range are of the wrong type or out of range.
    """
    chunk.schema.check(chunk.x, chunk.y)
    if not isinstance(chunk.sensor, str):
        raise FormatError(f"chunk sensor is {chunk.sensor!r}, expected a string")
    _check_count("seq", chunk.seq)
    start, end = _time_range(chunk.time_range)
    tensors = {"x": chunk.x} if chunk.y is None else {"x": chunk.x, "y": chunk.y}
    metadata = {
        "format": _CHUNK_FORMAT,
        "schema": json.dumps(chunk.schema.to_dict(), sort_keys=True, separators=(",", ":")),
        "sensor": chunk.sensor,
        "seq": str(chunk.seq),
        "start_ms": str(start),
        "end_ms": str(end),
    }
    return _encode(tensors, metadata)


def decode_chunk(data: bytes, *, max_bytes: int, schema: Schema | None = None) -> Chunk:
    """Validate and decode a data chunk file from an untrusted sensor or peer.

    Args:
        data: the file's bytes.
        max_bytes: the swarm's chunk size limit, in bytes (checked before parsing).
        schema: the swarm's schema; when given, the chunk's own schema must equal it.

    Returns:
        A :class:`Chunk` with fresh, writable ``x`` and ``y`` arrays.

    Raises:
        OversizeError: ``len(data) > max_bytes``.
        CorruptFile: not a well-formed safetensors file.
        FormatError: not a learnae chunk (metadata, or a malformed schema).
        SchemaMismatch: tensors other than ``x``/``y``, a schema different from ``schema``,
            or ``x``/``y`` that do not match the chunk's schema (rows of x and y differ).
        NonFiniteError: a float feature or label is NaN or infinite.
    """
    data = _limit(data, max_bytes, "chunk")
    metadata, entries = _parse_header(data)
    _check_format(metadata, _CHUNK_FORMAT)
    if set(entries) not in ({"x"}, {"x", "y"}):
        raise SchemaMismatch(f"chunk holds tensors {sorted(entries)}, expected 'x' and 'y'")
    try:
        schema_dict = json.loads(_meta_str(metadata, "schema"))
    except json.JSONDecodeError as e:
        raise FormatError(f"chunk metadata 'schema' is not valid JSON: {e}") from None
    own = Schema.from_dict(schema_dict)
    if schema is not None and own != schema:
        raise SchemaMismatch(
            f"chunk schema {own.to_dict()} differs from the swarm's {schema.to_dict()}"
        )
    sensor, seq = _meta_str(metadata, "sensor"), _meta_int(metadata, "seq")
    start, end = _meta_int(metadata, "start_ms"), _meta_int(metadata, "end_ms")
    if start > end:
        raise FormatError(f"chunk time range starts at {start} ms, after its end {end} ms")
    arrays = _load(data, entries)
    x, y = arrays["x"], arrays.get("y")
    own.check(x, y)
    return Chunk(x=x, y=y, schema=own, sensor=sensor, seq=seq, time_range=(start, end))


# --------------------------------------------------------------------------- helpers
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _dtype_name(value: Any, what: str) -> str:
    """Canonical numpy name of an allowed dtype (an exact name, a np.dtype or a numpy type)."""
    name = value if isinstance(value, str) else None
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        name = np.dtype(value).name
    if name not in _TAGS:
        raise SchemaMismatch(f"{what} is {value!r}, expected one of {', '.join(_TAGS)}")
    return name


def _check_count(what: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise FormatError(f"{what} is {value!r}, expected an integer >= 0")


def _time_range(value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(_is_int(t) and t >= 0 for t in value)
        or value[0] > value[1]
    ):
        raise FormatError(
            f"chunk time_range is {value!r}, expected (start, end) ms since the epoch,"
            " 0 <= start <= end"
        )
    return value[0], value[1]


def _check_finite(what: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    finite = np.isfinite(a)
    if not finite.all():
        nan = int(np.isnan(a).sum())
        inf = int(a.size - finite.sum()) - nan
        raise NonFiniteError(f"{what} holds {nan} NaN and {inf} infinite values")


def _encode(tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, a in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise FormatError(f"tensor name {name!r} is empty or reserved")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(f"tensor name {name!r} is not valid UTF-8 text") from None
        tag = _TAGS.get(a.dtype.name)
        if tag is None:
            raise FormatError(
                f"tensor {name!r} has dtype {a.dtype}, expected one of {', '.join(_TAGS)}"
            )
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {
            "dtype": tag,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _limit(data: Any, max_bytes: int, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what} data is a {type(data).__name__}, expected bytes")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_bytes:
        raise OversizeError(f"{what} is {size} bytes, over the swarm's limit of {max_bytes} bytes")
    return bytes(data)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CorruptFile(f"safetensors header has the key {key!r} twice")
        out[key] = value
    return out


def _reject_constant(token: str) -> None:
    raise CorruptFile(f"safetensors header holds the non-JSON number {token}")


def _parse_header(data: bytes) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """Check a safetensors header; return (metadata, tensor name -> (dtype tag, shape))."""
    if len(data) < 8:
        raise CorruptFile(
            f"file is {len(data)} bytes, shorter than the 8-byte safetensors header length"
        )
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise CorruptFile(f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n > len(data) - 8:
        raise CorruptFile(
            f"header length {n} goes beyond the file ({len(data) - 8} bytes follow the length)"
        )
    raw = data[8 : 8 + n]
    if not raw.startswith(b"{"):
        raise CorruptFile(f"header does not start with '{{' (starts with {raw[:8]!r})")
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFile(f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise CorruptFile(f"header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFile(f"header __metadata__ must map strings to strings, got {metadata!r:.200}")

    size = len(data) - 8 - n
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CorruptFile(
                f"tensor {name!r} entry is {entry!r:.200}, expected exactly dtype, shape, data_offsets"
            )
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if tag not in DTYPES:
            raise CorruptFile(f"tensor {name!r} has dtype {tag!r}, not one of {', '.join(DTYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise CorruptFile(
                f"tensor {name!r} has shape {shape!r:.200},"
                f" expected a list of at most {_MAX_NDIM} non-negative integers"
            )
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
            raise CorruptFile(
                f"tensor {name!r} has data_offsets {offsets!r:.200}, expected [begin, end]"
            )
        begin, end = offsets
        if not 0 <= begin <= end <= size:
            raise CorruptFile(
                f"tensor {name!r} data_offsets [{begin}, {end}] are out of bounds"
                f" of the {size}-byte data section"
            )
        nbytes = math.prod(shape) * np.dtype(DTYPES[tag]).itemsize
        if end - begin != nbytes:
            raise CorruptFile(
                f"tensor {name!r} spans {end - begin} bytes but shape {shape} of {tag}"
                f" needs {nbytes}"
            )
        entries[name] = (tag, tuple(shape))
        spans.append((begin, end, name))

    cursor, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin < cursor:
            raise CorruptFile(
                f"tensor {name!r} data_offsets [{begin}, {end}] overlap tensor {previous!r}"
                f" (which ends at {cursor})"
            )
        if begin > cursor:
            raise CorruptFile(
                f"data section has a gap of {begin - cursor} bytes at offset {cursor}"
                f" before tensor {name!r}"
            )
        cursor, previous = end, name
    if cursor != size:
        raise CorruptFile(
            f"data section is {size} bytes but the tensors cover only {cursor}"
            " (trailing bytes, or a truncated header)"
        )
    return metadata, entries


def _load(data: bytes, entries: Mapping[str, tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Read the tensors (header already checked) as fresh, writable, native-order arrays."""
    try:
        loaded = safetensors.numpy.load(data)
    except Exception as e:  # SafetensorError and anything else the parser raises
        raise CorruptFile(f"safetensors refused the file: {e}") from None
    if set(loaded) != set(entries):
        raise CorruptFile(
            f"safetensors read tensors {sorted(loaded)}, header names {sorted(entries)}"
        )
    return {
        name: np.array(loaded[name].reshape(shape), dtype=np.dtype(DTYPES[tag]), copy=True)
        for name, (tag, shape) in entries.items()
    }


def _check_format(metadata: Mapping[str, str], expected: str) -> None:
    found = metadata.get("format")
    if found != expected:
        raise FormatError(f"file format is {found!r}, expected {expected!r}")


def _meta_str(metadata: Mapping[str, str], key: str) -> str:
    if key not in metadata:
        raise FormatError(f"metadata lacks {key!r}")
    return metadata[key]


def _meta_int(metadata: Mapping[str, str], key: str) -> int:
    value = _meta_str(metadata, key)
    if not _DECIMAL.fullmatch(value):
        raise FormatError(
            f"metadata {key!r} is {value[:40]!r}, expected a non-negative decimal integer"
        )
    return int(value)


def _meta_names(metadata: Mapping[str, str], entries: Mapping[str, Any]) -> list[str]:
    try:
        names = json.loads(_meta_str(metadata, "names"))
    except json.JSONDecodeError as e:
        raise FormatError(f"metadata 'names' is not valid JSON: {e}") from None
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
        or set(names) != set(entries)
    ):
        raise FormatError(
            f"metadata 'names' does not list each tensor exactly once"
            f" ({len(entries)} tensors in the file)"
        )
    return names


def _check_expect(
    entries: Mapping[str, tuple[str, tuple[int, ...]]],
    expect: Mapping[str, tuple[tuple[int, ...], str]],
) -> None:
    check_names(entries, expect, subject="checkpoint weights", reference="the model")
    for name, (shape, dtype) in expect.items():
        tag, found = entries[name]
        if found != tuple(shape):
            raise SchemaMismatch(f"weight {name!r} has shape {found}, expected {tuple(shape)}")
        if np.dtype(DTYPES[tag]) != np.dtype(dtype):
            raise SchemaMismatch(
                f"weight {name!r} has dtype {DTYPES[tag]}, expected {np.dtype(dtype).name}"
            )
