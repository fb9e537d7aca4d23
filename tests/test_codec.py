"""Compressed checkpoints: the codecs' arithmetic, the files, deltas, and refusals by reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from learnae import codec
from learnae.content import content_id
from learnae.errors import ConfigError, FormatError, NonFiniteError, SchemaMismatch
from learnae.formats import Checkpoint, checkpoint_encoding, decode_checkpoint, encode_checkpoint
from learnae.manifest import Compression, Manifest, Verification
from learnae.models import model_config

GENESIS = "bafyreigenesis"
LIMIT = 1 << 20
RNG = np.random.default_rng(5)
WEIGHTS = {"dense/kernel": RNG.normal(0, 0.3, (30, 33)).astype(np.float32),
           "dense/bias": RNG.normal(0, 0.01, (33,)).astype(np.float32),
           "out/kernel": RNG.normal(0, 0.3, (33, 3)).astype(np.float32)}
EXPECT = {name: (w.shape, "float32") for name, w in WEIGHTS.items()}
BASE_CID = content_id(b"a keyframe")


def ckpt(weights: dict[str, np.ndarray] = WEIGHTS) -> Checkpoint:
    return Checkpoint(dict(weights), GENESIS, 7, 320)


def rebuild(blob: bytes, change) -> bytes:
    """``blob`` with its header (a dict) and tensors (name -> array) passed through ``change``."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__")
    dtypes = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "U8": np.uint8}
    tensors = {name: np.frombuffer(blob[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]],
                                   dtypes[e["dtype"]]).reshape(e["shape"]).copy() for name, e in header.items()}
    change(meta, tensors)
    from learnae.formats import _encode
    return _encode(tensors, meta)


# --------------------------------------------------------------------------- arithmetic
@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(0, 300), elements=st.floats(-1e4, 1e4, width=32)),
       st.sampled_from(["int8", "int4"]), st.sampled_from([1, 7, 64, 256]))
def test_quantized_error_is_at_most_half_a_step_of_its_block(a, name, block):
    values, scales = codec.encode(a, name, block)
    out = codec.decode(values, scales, name, a.shape, block)
    assert out.dtype == np.float32 and out.shape == a.shape
    if a.size:
        step = np.repeat(scales, block)[:a.size]
        assert np.all(np.abs(out - a) <= step / 2 * (1 + 1e-5) + 1e-30)


def data_bytes(blob: bytes) -> int:
    """The bytes of a file's tensors (its header, about 100 bytes a tensor, aside)."""
    return len(blob) - 8 - int.from_bytes(blob[:8], "little")


# float16: 2 bytes a value; int8 1 and int4 1/2, plus a float32 scale per 64 values (or fewer)
@pytest.mark.parametrize("name, ratio", [("float32", 1.0), ("float16", 0.5), ("int8", 0.27), ("int4", 0.145)])
def test_files_shrink_as_the_codec_promises_and_decode_close(name, ratio):
    full = data_bytes(encode_checkpoint(ckpt()))
    blob = encode_checkpoint(ckpt(), codec=name)
    assert data_bytes(blob) <= ratio * full
    out = decode_checkpoint(blob, max_bytes=LIMIT, expect=EXPECT, genesis=GENESIS)
    assert list(out.weights) == list(WEIGHTS) and (out.step, out.samples) == (7, 320)
    worst = max(float(np.abs(out.weights[k] - w).max()) for k, w in WEIGHTS.items())
    assert worst <= {"float32": 0, "float16": 1e-3, "int8": 0.01, "int4": 0.15}[name]


def test_same_weights_same_bytes_and_plain_files_unchanged():
    for name in codec.CODECS:
        assert encode_checkpoint(ckpt(), codec=name) == encode_checkpoint(ckpt(), codec=name)
    assert b'"codec"' not in encode_checkpoint(ckpt(), codec="float32")


def test_float16_refuses_what_it_cannot_hold():
    with pytest.raises(NonFiniteError, match="float16"):
        encode_checkpoint(ckpt({"w": np.array([1e6], np.float32)}), codec="float16")


def test_unknown_codec_and_block_are_refused():
    for bad in ({"codec": "int3"}, {"codec": "int8", "block": 0}):
        with pytest.raises(FormatError) as err:
            encode_checkpoint(ckpt(), **bad)
        assert err.value.code == "codec"


# -------------------------------------------------------------------------------- deltas
def test_a_delta_decodes_against_its_base_and_is_far_more_faithful_than_the_weights_alone():
    base = {k: (w + RNG.normal(0, 0.05, w.shape)).astype(np.float32) for k, w in WEIGHTS.items()}
    blob = encode_checkpoint(ckpt(), codec="int4", base=(BASE_CID, base))
    assert checkpoint_encoding(blob, max_bytes=LIMIT)[1] == BASE_CID
    assert checkpoint_encoding(encode_checkpoint(ckpt()), max_bytes=LIMIT)[1] is None
    with pytest.raises(FormatError) as err:
        decode_checkpoint(blob, max_bytes=LIMIT, expect=EXPECT)
    assert err.value.code == "delta-base"
    out = decode_checkpoint(blob, max_bytes=LIMIT, expect=EXPECT, base=base)
    assert out.delta_of == BASE_CID
    delta_err = max(float(np.abs(out.weights[k] - w).max()) for k, w in WEIGHTS.items())
    full = decode_checkpoint(encode_checkpoint(ckpt(), codec="int4"), max_bytes=LIMIT)
    full_err = max(float(np.abs(full.weights[k] - w).max()) for k, w in WEIGHTS.items())
    assert delta_err < full_err / 4
    wrong = {k: w for k, w in base.items() if k != "out/kernel"}
    with pytest.raises(FormatError) as err:
        decode_checkpoint(blob, max_bytes=LIMIT, base=wrong)
    assert err.value.code == "delta-base"


# ------------------------------------------------------------------ malformed files refused
def _scales(change):
    def edit(meta, tensors):
        change(tensors["dense/kernel#scale"])
    return edit


@pytest.mark.parametrize("name, edit, code", [
    ("int8", _scales(lambda s: s.__setitem__(0, np.nan)), "quantized-scale"),
    ("int8", _scales(lambda s: s.__setitem__(0, -1.0)), "quantized-scale"),
    ("int8", lambda m, t: t.__setitem__("dense/kernel#scale", t["dense/kernel#scale"][:-1]), "quantized-layout"),
    ("int8", lambda m, t: t.pop("out/kernel#scale"), "quantized-layout"),
    ("int8", lambda m, t: t["dense/bias"].__setitem__(0, -128), "quantized-range"),
    ("int8", lambda m, t: t.__setitem__("dense/bias", t["dense/bias"].astype(np.float32)), "quantized-layout"),
    ("int8", lambda m, t: m.__setitem__("block", "0"), "codec"),
    ("int8", lambda m, t: m.__setitem__("codec", "int2"), "codec"),
    ("int4", lambda m, t: t["dense/bias"].__setitem__(0, 0x80), "quantized-range"),   # nibble 0 = -8
    ("int4", lambda m, t: t["dense/bias"].__setitem__(-1, 0x38), "quantized-range"),  # odd count: pad not 8
    ("int4", lambda m, t: m.__setitem__("shapes", "[[30,33]]"), "format"),
    ("float16", lambda m, t: t["out/kernel"].__setitem__(0, np.float16(np.inf)), "non-finite"),
])
def test_malformed_compressed_files_are_refused_with_their_reason(name, edit, code):
    blob = encode_checkpoint(ckpt(), codec=name)
    with pytest.raises(FormatError) as err:
        decode_checkpoint(rebuild(blob, edit), max_bytes=LIMIT, expect=EXPECT, genesis=GENESIS)
    assert err.value.code == code, err.value.reason


def test_an_int4_file_declaring_another_shape_is_refused_against_the_model():
    blob = encode_checkpoint(ckpt(), codec="int4")
    lying = rebuild(blob, lambda m, t: m.__setitem__("shapes", "[[33,30],[33],[33,3]]"))
    with pytest.raises(SchemaMismatch, match="shape"):
        decode_checkpoint(lying, max_bytes=LIMIT, expect=EXPECT)


# ------------------------------------------------------------------------------ manifest
def test_the_manifest_carries_compression_only_when_chosen():
    model = model_config("digits-mlp")
    plain = Manifest(name="m", model=model, created=1)
    assert "compression" not in plain.to_payload() and plain.compression.lossless
    chosen = Manifest(name="m", model=model, created=1,
                      compression=Compression(codec="int8", delta_codec="int4", keyframe_every=4))
    again = Manifest.from_payload(chosen.to_payload())
    assert again.compression == chosen.compression and not again.compression.lossless
    with pytest.raises(ConfigError, match="replay"):
        Manifest(name="m", model=model, compression=Compression(codec="float16"),
                 verification=Verification(data_claims="replay"))
    with pytest.raises(ConfigError, match="compression.codec"):
        Compression.from_payload({"codec": "int3"})
