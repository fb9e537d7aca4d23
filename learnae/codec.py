"""Checkpoint compression: float16, and blockwise 8-bit and 4-bit quantization.

A swarm chooses how its checkpoints travel in its manifest (:class:`learnae.manifest.Compression`,
docs/design.md "Compressed checkpoints"); :mod:`learnae.formats` writes and reads the files. This
module holds the arithmetic, on one float32 weight array at a time:

- ``float32``: the array as it is (lossless).
- ``float16``: IEEE half precision (11 significant bits; values beyond ±65504 cannot be sent).
- ``int8`` and ``int4``: blockwise absmax quantization (Dettmers et al., *8-bit Optimizers via
  Block-wise Quantization*, ICLR 2022). The array is flattened and cut into blocks of ``block``
  values (the last one shorter); each block stores ``scale = max|x| / L`` as float32 and every
  value as ``q = round(x / scale)``, an integer in ``[-L, L]``, with ``L = 127`` (int8) or
  ``L = 7`` (int4); decoding gives ``q * scale``. A value's error is at most ``scale / 2``:
  half a step of its own block, so one large weight spoils only its block. The rounding is to
  nearest (ties to even), deterministic, so the same weights always give the same bytes and CID.
  int8 values are stored as an ``I8`` tensor of the weight's shape; int4 values as ``U8``, two
  to a byte (``q + 8`` in each nibble, the first value in the low nibble; an odd count pads the
  last high nibble with 8, a zero), flat. ``-128`` (int8) and nibble 0 (int4) are never written,
  so a file holding them is refused: only a broken or hostile encoder makes them.

Quantizing a *delta* (the difference to a checkpoint the receiver already holds) instead of the
weights is what makes 4 bits enough: the step then scales with the update, not with the weights
(the idea of QSGD, Alistarh et al., NeurIPS 2017, applied to a checkpoint's displacement).

Errors (all :class:`~learnae.errors.FormatError`, with a ``code`` a node counts refusals by):
``codec`` (an unknown codec or block size), ``quantized-layout`` (a values or scale tensor of the
wrong dtype or size), ``quantized-scale`` (a scale that is negative, NaN or infinite),
``quantized-range`` (a value outside ``[-L, L]`` or a bad padding nibble).
"""

from __future__ import annotations

import math

import numpy as np

from learnae.errors import FormatError, NonFiniteError

__all__ = ["CODECS", "LOSSLESS", "MAX_BLOCK", "QUANTIZED", "check_codec", "decode", "encode", "scale_count"]

CODECS = ("float32", "float16", "int8", "int4")
"""Codec names, from the most faithful to the smallest."""

LOSSLESS = "float32"
"""The codec that sends weights unchanged."""

MAX_BLOCK = 1 << 20
"""Largest block of a quantized codec (values per scale)."""

_LEVELS = {"int8": 127, "int4": 7}
QUANTIZED = tuple(_LEVELS)
"""The codecs that store integers and a float32 scale per block (``int8``, ``int4``)."""
_F16_MAX = float(np.finfo(np.float16).max)


def check_codec(codec: object, block: object = 64) -> tuple[str, int]:
    """``(codec, block)`` checked.

    Raises:
        FormatError (code ``codec``): ``codec`` is not one of :data:`CODECS`, or ``block`` is
            not an integer in ``[1, MAX_BLOCK]``.
    """
    if codec not in CODECS:
        raise FormatError(f"checkpoint codec {codec!r} is not one of {', '.join(CODECS)}", code="codec")
    if type(block) is not int or not 1 <= block <= MAX_BLOCK:
        raise FormatError(f"quantization block {block!r} is not an integer in [1, {MAX_BLOCK}]", code="codec")
    return str(codec), block


def scale_count(size: int, block: int) -> int:
    """Scales of a quantized array of ``size`` values in blocks of ``block``: ``ceil(size / block)``."""
    return -(-size // block)


def encode(a: np.ndarray, codec: str, block: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode one float32 array.

    Args:
        a: the weights (or a delta), any shape, float32.
        codec: one of :data:`CODECS`.
        block: values per scale, for ``int8`` and ``int4``.

    Returns:
        ``(values, scales)``: ``values`` float32 or float16 of ``a``'s shape, int8 of its shape,
        or uint8 of shape ``(ceil(size / 2),)`` for int4; ``scales`` float32 of shape
        ``(ceil(size / block),)`` for the quantized codecs, else None.

    Raises:
        FormatError (code ``codec``): an unknown codec or block.
        NonFiniteError: ``a`` holds NaN or infinity, or a value float16 cannot hold.
    """
    codec, block = check_codec(codec, block)
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise NonFiniteError("a weight holds NaN or infinity")
    if codec == "float32":
        return a, None
    if codec == "float16":
        if a.size and float(np.abs(a).max()) > _F16_MAX:
            raise NonFiniteError(f"a weight's magnitude {float(np.abs(a).max()):.3g} is beyond float16's"
                                 f" {_F16_MAX:g}: choose another codec")
        return a.astype(np.float16), None
    levels = _LEVELS[codec]
    blocks = _blocks(a.reshape(-1), block)
    scales = (np.abs(blocks).max(axis=1, initial=0.0) / levels).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    q = np.clip(np.rint(blocks / safe[:, None]), -levels, levels).astype(np.int8).reshape(-1)[:a.size]
    if codec == "int8":
        return q.reshape(a.shape), scales
    nibbles = (q + 8).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(8))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8), scales


def decode(values: np.ndarray, scales: np.ndarray | None, codec: str, shape: tuple[int, ...],
           block: int = 64) -> np.ndarray:
    """Decode what :func:`encode` wrote, from an untrusted file.

    Args:
        values: the stored values (as :func:`encode` returns them).
        scales: the stored scales (quantized codecs), else None.
        codec: one of :data:`CODECS`.
        shape: the weight's shape.
        block: values per scale.

    Returns:
        A fresh float32 array of ``shape``.

    Raises:
        FormatError: codes ``codec``, ``quantized-layout``, ``quantized-scale``, ``quantized-range``
            (see the module docstring).
        NonFiniteError: a float value or the decoded array is NaN or infinite.
    """
    codec, block = check_codec(codec, block)
    size = math.prod(shape)
    stored = {"float32": (np.float32, shape), "float16": (np.float16, shape), "int8": (np.int8, shape),
              "int4": (np.uint8, (-(-size // 2),))}[codec]
    if values.dtype != np.dtype(stored[0]) or tuple(values.shape) != tuple(stored[1]):
        raise FormatError(f"{codec} values are {values.dtype}{list(values.shape)}, expected"
                          f" {np.dtype(stored[0]).name}{list(stored[1])}", code="quantized-layout")
    if codec in ("float32", "float16"):
        if scales is not None:
            raise FormatError(f"a {codec} weight has scales", code="quantized-layout")
        return _finite(values.astype(np.float32).reshape(shape))
    count = scale_count(size, block)
    if scales is None or scales.dtype != np.float32 or tuple(scales.shape) != (count,):
        found = "none" if scales is None else f"{scales.dtype}{list(scales.shape)}"
        raise FormatError(f"{codec} scales are {found}, expected float32[{count}] (blocks of {block})",
                          code="quantized-layout")
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise FormatError("a quantization scale is negative, NaN or infinite", code="quantized-scale")
    if size == 0:
        return np.zeros(shape, dtype=np.float32)
    levels = _LEVELS[codec]
    if codec == "int8":
        q = values.reshape(-1).astype(np.float32)
    else:
        low, high = values & 0x0F, values >> 4
        if size % 2 and size and high[-1] != 8:
            raise FormatError("the padding nibble of an odd int4 count is not 8 (zero)", code="quantized-range")
        q = np.stack([low, high], axis=1).reshape(-1)[:size].astype(np.float32) - 8
    if q.size and float(np.abs(q).max()) > levels:
        raise FormatError(f"a {codec} value is outside [-{levels}, {levels}]", code="quantized-range")
    out = (_blocks(q, block) * scales[:, None]).reshape(-1)[:size]
    return _finite(out.reshape(shape))


def _blocks(flat: np.ndarray, block: int) -> np.ndarray:
    """``flat`` padded with zeros to whole blocks: shape ``(ceil(size / block), block)``."""
    count = scale_count(flat.size, block)
    if flat.size == count * block:
        return flat.reshape(count, block)
    padded = np.zeros(count * block, dtype=flat.dtype)
    padded[:flat.size] = flat
    return padded.reshape(count, block)


def _finite(a: np.ndarray) -> np.ndarray:
    if not np.isfinite(a).all():
        raise NonFiniteError("a decoded weight is NaN or infinite")
    return a
