"""Tests for learnae.formats: safetensors checkpoints and data chunks from untrusted peers."""

from __future__ import annotations

import ast
import io
import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from learnae import formats
from learnae.errors import (
    CorruptFile,
    FormatError,
    NonFiniteError,
    OversizeError,
    SchemaMismatch,
)
from learnae.formats import (
    Checkpoint,
    Chunk,
    Schema,
    check_names,
    decode_checkpoint,
    decode_chunk,
    encode_checkpoint,
    encode_chunk,
    pack,
    sum_of_squares,
    weight_norm,
)

GENESIS = "bafyreigenesisgenesisgenesisgenesisgenesisgenesisgenesis"
LIMIT = 1 << 20


def small_checkpoint() -> Checkpoint:
    return Checkpoint(
        weights={
            "sequential/dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
            "sequential/dense/bias": np.array([0.5, -1.0, 2.0], dtype=np.float32),
        },
        genesis=GENESIS,
        step=12,
        samples=384,
    )


EXPECT = {
    "sequential/dense/kernel": ((2, 3), "float32"),
    "sequential/dense/bias": ((3,), "float32"),
}


def craft(header: dict | bytes, data: bytes = b"") -> bytes:
    """A safetensors-shaped file with an arbitrary header (a dict, or raw header bytes)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def split(blob: bytes) -> tuple[dict, bytes]:
    """(header dict, data section) of a well-formed file."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def ckpt_meta(names: list[str], genesis: str = GENESIS) -> dict[str, str]:
    return {
        "format": "learnae-checkpoint/1",
        "genesis": genesis,
        "step": "1",
        "samples": "2",
        "names": json.dumps(names),
    }


def raise_corrupt(blob: bytes, match: str) -> CorruptFile:
    with pytest.raises(CorruptFile, match=match) as info:
        decode_checkpoint(blob, max_bytes=LIMIT)
    return info.value


# ------------------------------------------------------------------ round trips
names_st = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
        lambda s: s != "__metadata__"
    ),
    unique=True,
    max_size=6,
)


@st.composite
def weights_st(draw) -> dict[str, np.ndarray]:
    weights = {}
    for name in draw(names_st):
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        elements = st.floats(
            allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8
        )
        weights[name] = draw(hnp.arrays(dtype, shape, elements=elements))
    return weights


@settings(deadline=None, max_examples=150)
@given(
    weights=weights_st(),
    genesis=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
    step=st.integers(0, 2**63 - 1),
    samples=st.integers(0, 2**63 - 1),
)
def test_checkpoint_round_trip(weights, genesis, step, samples):
    blob = encode_checkpoint(Checkpoint(weights, genesis, step, samples))
    expect = {name: (w.shape, w.dtype.name) for name, w in weights.items()}
    out = decode_checkpoint(blob, max_bytes=len(blob), expect=expect, genesis=genesis)
    assert (out.genesis, out.step, out.samples) == (genesis, step, samples)
    assert list(out.weights) == list(weights)  # model.weights order preserved
    for name, w in weights.items():
        got = out.weights[name]
        assert got.dtype == w.dtype and got.shape == w.shape
        assert got.tobytes() == w.tobytes()  # bit-exact, including -0.0


@pytest.mark.parametrize("dtype", sorted(formats.DTYPES.values()))
def test_every_allowed_dtype_round_trips(dtype):
    w = np.arange(12).reshape(3, 4).astype(dtype)
    out = decode_checkpoint(encode_checkpoint(Checkpoint({"w": w}, GENESIS, 0, 0)), max_bytes=LIMIT)
    assert out.weights["w"].dtype == w.dtype
    np.testing.assert_array_equal(out.weights["w"], w)


def test_encoding_is_deterministic_and_readable_by_safetensors():
    ckpt = Checkpoint(
        {"d/k": np.array([[1.0, 2.0]], np.float32), "d/b": np.array([0.5], np.float64)},
        "bafygenesis",
        7,
        32,
    )
    header = (
        b'{"__metadata__":{"format":"learnae-checkpoint/1","genesis":"bafygenesis","step":"7",'
        b'"samples":"32","names":"[\\"d/k\\",\\"d/b\\"]"},'
        b'"d/k":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},'
        b'"d/b":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}}'
    )
    header += b" " * (-len(header) % 8)
    golden = len(header).to_bytes(8, "little") + header + struct.pack("<2fd", 1.0, 2.0, 0.5)
    assert encode_checkpoint(ckpt) == golden
    assert encode_checkpoint(ckpt) == golden  # same bytes every time -> same CID
    loaded = safetensors.numpy.load(golden)  # any safetensors reader can open it
    np.testing.assert_array_equal(loaded["d/k"], ckpt.weights["d/k"])


def test_reads_files_written_by_the_safetensors_library():
    weights = small_checkpoint().weights
    blob = safetensors.numpy.save(weights, metadata=ckpt_meta(list(weights)))
    out = decode_checkpoint(blob, max_bytes=LIMIT, expect=EXPECT, genesis=GENESIS)
    assert list(out.weights) == list(weights)  # order from 'names', not the file's sort order


def test_decoded_arrays_are_private_writable_copies():
    blob = bytearray(encode_checkpoint(small_checkpoint()))
    out = decode_checkpoint(blob, max_bytes=LIMIT)
    kernel = out.weights["sequential/dense/kernel"]
    assert kernel.flags.writeable and kernel.flags.owndata
    kernel[:] = 99.0
    blob[-1] ^= 0xFF
    assert out.weights["sequential/dense/bias"][-1] == 2.0


# ---------------------------------------------------------- malformed files
def test_truncated_below_length_prefix():
    raise_corrupt(encode_checkpoint(small_checkpoint())[:5], "5 bytes, shorter than the 8-byte")


def test_truncated_data_section():
    err = raise_corrupt(encode_checkpoint(small_checkpoint())[:-1], "out of bounds")
    assert "sequential/dense/bias" in err.reason


def test_header_length_beyond_file():
    blob = encode_checkpoint(small_checkpoint())
    n = len(blob) - 8 + 1
    raise_corrupt(n.to_bytes(8, "little") + blob[8:], f"header length {n} goes beyond the file")


def test_header_length_over_limit():
    raise_corrupt((2**40).to_bytes(8, "little") + b"{}", "exceeds the limit")


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b'{"a": ', "not valid UTF-8 JSON"),
        (b'{"a": "\xff"}', "not valid UTF-8 JSON"),
        (b"[1, 2]", "does not start with '{'"),
        (b'{"x": NaN}', "non-JSON number NaN"),
        (b'{"x": {}, "x": {}}', "key 'x' twice"),
        (b'{"__metadata__": {"step": 1}}', "__metadata__ must map strings to strings"),
        (b'{"__metadata__": ["a"]}', "__metadata__ must map strings to strings"),
    ],
)
def test_header_not_valid_json_object(header, match):
    raise_corrupt(craft(header), match)


def test_offsets_overlapping():
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    err = raise_corrupt(craft(header, bytes(12)), "overlap")
    assert "'a'" in err.reason and "'b'" in err.reason


def test_offsets_out_of_bounds():
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    raise_corrupt(craft(header, bytes(8)), r"\[0, 16\] are out of bounds of the 8-byte")


def test_offsets_leave_a_gap():
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    raise_corrupt(craft(header, bytes(12)), "gap of 4 bytes at offset 4 before tensor 'b'")


def test_trailing_bytes_after_tensors():
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raise_corrupt(craft(header, bytes(8)), "8 bytes but the tensors cover only 4")


def test_offsets_disagree_with_shape():
    header = {"a": {"dtype": "F64", "shape": [2, 3], "data_offsets": [0, 24]}}
    raise_corrupt(craft(header, bytes(24)), "spans 24 bytes but shape .* needs 48")


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "BOOL", "C64", "O", "object", 7])
def test_unknown_dtype(dtype):
    header = {"a": {"dtype": dtype, "shape": [1], "data_offsets": [0, 1]}}
    raise_corrupt(craft(header, bytes(1)), f"has dtype {dtype!r}, not one of")


@pytest.mark.parametrize("shape", [[-1], [1.5], "4", [True], [1] * 33])
def test_bad_shape(shape):
    header = {"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    raise_corrupt(craft(header, bytes(1)), "non-negative integers")


def test_entry_with_unexpected_fields():
    header = {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "pickle": "yes"}}
    raise_corrupt(craft(header, bytes(1)), "expected exactly dtype, shape, data_offsets")


def test_oversize_is_checked_before_parsing():
    with pytest.raises(OversizeError, match="100 bytes, over the swarm's limit of 99 bytes"):
        decode_checkpoint(b"\xff" * 100, max_bytes=99)


# ------------------------------------------------- well-formed but unacceptable
def test_wrong_shape_tensor():
    expect = dict(EXPECT, **{"sequential/dense/kernel": ((3, 2), "float32")})
    with pytest.raises(
        SchemaMismatch, match=r"'sequential/dense/kernel' has shape \(2, 3\), expected \(3, 2\)"
    ):
        decode_checkpoint(encode_checkpoint(small_checkpoint()), max_bytes=LIMIT, expect=expect)


def test_extra_tensor_name():
    ckpt = small_checkpoint()
    ckpt.weights["sequential/evil/kernel"] = np.zeros(1, np.float32)
    with pytest.raises(SchemaMismatch, match=r"unexpected \['sequential/evil/kernel'\]"):
        decode_checkpoint(encode_checkpoint(ckpt), max_bytes=LIMIT, expect=EXPECT)


def test_missing_tensor_name():
    ckpt = small_checkpoint()
    del ckpt.weights["sequential/dense/bias"]
    with pytest.raises(SchemaMismatch, match=r"missing \['sequential/dense/bias'\]"):
        decode_checkpoint(encode_checkpoint(ckpt), max_bytes=LIMIT, expect=EXPECT)


def test_wrong_dtype():
    ckpt = small_checkpoint()
    ckpt.weights["sequential/dense/bias"] = ckpt.weights["sequential/dense/bias"].astype(np.float64)
    with pytest.raises(
        SchemaMismatch, match="'sequential/dense/bias' has dtype float64, expected float32"
    ):
        decode_checkpoint(encode_checkpoint(ckpt), max_bytes=LIMIT, expect=EXPECT)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.nan, "1 NaN and 0 infinite"),
        (np.inf, "0 NaN and 1 infinite"),
        (-np.inf, "0 NaN and 1 infinite"),
    ],
)
def test_non_finite_weights(value, match):
    weights = small_checkpoint().weights
    weights["sequential/dense/bias"][1] = value
    blob = safetensors.numpy.save(weights, metadata=ckpt_meta(list(weights)))
    with pytest.raises(NonFiniteError, match=f"'sequential/dense/bias' holds {match}"):
        decode_checkpoint(blob, max_bytes=LIMIT, expect=EXPECT)


def test_encode_refuses_non_finite_weights():
    ckpt = small_checkpoint()
    ckpt.weights["sequential/dense/kernel"][0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="sequential/dense/kernel"):
        encode_checkpoint(ckpt)


def test_wrong_genesis():
    blob = encode_checkpoint(small_checkpoint())
    with pytest.raises(
        SchemaMismatch, match=f"belongs to swarm '{GENESIS}', expected genesis 'bafyother'"
    ):
        decode_checkpoint(blob, max_bytes=LIMIT, genesis="bafyother")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"format": "learnae-chunk/1"},
            "format is 'learnae-chunk/1', expected 'learnae-checkpoint/1'",
        ),
        ({"names": '["sequential/dense/kernel"]'}, "does not list each tensor exactly once"),
        ({"names": "not json"}, "'names' is not valid JSON"),
        ({"step": "-1"}, "'step' is '-1', expected a non-negative decimal"),
        ({"samples": "1e3"}, "'samples' is '1e3'"),
    ],
)
def test_bad_checkpoint_metadata(change, match):
    header, data = split(encode_checkpoint(small_checkpoint()))
    header["__metadata__"].update(change)
    with pytest.raises(FormatError, match=match):
        decode_checkpoint(craft(header, data), max_bytes=LIMIT)


def test_missing_metadata_key():
    header, data = split(encode_checkpoint(small_checkpoint()))
    del header["__metadata__"]["genesis"]
    with pytest.raises(FormatError, match="metadata lacks 'genesis'"):
        decode_checkpoint(craft(header, data), max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"w": np.zeros(2, bool)}, "'w' has dtype bool"),
        ({"w": np.array([{}], dtype=object)}, "'w' has dtype object"),
        ({"__metadata__": np.zeros(2, np.float32)}, "empty or reserved"),
        ({"\ud800": np.zeros(2, np.float32)}, "not valid UTF-8"),
    ],
)
def test_encode_refuses_unsupported_weights(weights, match):
    with pytest.raises(FormatError, match=match):
        encode_checkpoint(Checkpoint(weights, GENESIS, 0, 0))


# -------------------------------------------------------------- nothing unpickled
@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def npy_object_array() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"sequential/dense/kernel": [1.0, 2.0]}),
        pickle.dumps([1], protocol=2),
        npy_object_array(),
    ],
    ids=["pickle-v5", "pickle-v2", "npy-object"],
)
def test_pickle_and_npy_payloads_are_refused(payload, no_unpickling):
    with pytest.raises(CorruptFile):
        decode_checkpoint(payload, max_bytes=LIMIT)
    with pytest.raises(CorruptFile):
        decode_chunk(payload, max_bytes=LIMIT)


def test_pickle_inside_a_safetensors_shell_is_refused(no_unpickling):
    body = pickle.dumps(object)
    header = {"x": {"dtype": "PICKLE", "shape": [len(body)], "data_offsets": [0, len(body)]}}
    with pytest.raises(CorruptFile, match="'PICKLE', not one of"):
        decode_chunk(craft(header, body), max_bytes=LIMIT)


def test_module_never_imports_pickle_or_loads_npy():
    tree = ast.parse(Path(formats.__file__).read_text())
    banned = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned
        if isinstance(node, ast.Call):
            assert all(k.arg != "allow_pickle" for k in node.keywords)
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "load":
                assert ast.unparse(func.value) not in {"np", "numpy"}, "np.load is not allowed"


# ------------------------------------------------------------------------ norm
def test_weight_norm_matches_numpy():
    weights = small_checkpoint().weights
    flat = np.concatenate([w.ravel() for w in weights.values()]).astype(np.float64)
    assert weight_norm(weights) == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert weight_norm(list(weights.values())) == weight_norm(weights)
    assert weight_norm({}) == 0.0


def test_weight_norm_accumulates_in_float64():
    w = np.full(4, 1e30, np.float32)  # squares overflow float32
    assert weight_norm([w]) == pytest.approx(2e30, rel=1e-6)


def test_sum_of_squares_accumulates_in_float64_and_propagates_nan():
    assert sum_of_squares(np.full(4, 1e30, np.float32)) == pytest.approx(4e60, rel=1e-6)
    assert sum_of_squares(np.arange(6, dtype=np.int16).reshape(2, 3)) == 55.0
    assert sum_of_squares(np.float16(3.0) * np.ones((2, 2), np.float16)) == 36.0
    assert sum_of_squares(np.zeros((0, 3), np.float32)) == 0.0
    assert np.isnan(sum_of_squares(np.array([1.0, np.nan], np.float32)))
    assert sum_of_squares(np.array([1.0, -np.inf], np.float32)) == np.inf


# ------------------------------------------------------------------------ names
def test_check_names_reports_missing_and_unexpected_names():
    with pytest.raises(SchemaMismatch) as info:
        check_names(["a", "x"], ["a", "b"], subject="checkpoint weights", reference="the model")
    assert info.value.reason == (
        "checkpoint weights differ from the model: missing ['b'], unexpected ['x']"
    )
    assert info.value.code == "schema"
    many = [f"w{i}" for i in range(7)]
    with pytest.raises(SchemaMismatch, match=re.escape(
        "missing ['w0', 'w1', 'w2', 'w3', 'w4', ...], unexpected []"
    )):
        check_names([], many, subject="weights", reference="the model's")


def test_check_names_order_only_when_asked():
    check_names(["b", "a"], ["a", "b"], subject="weights", reference="the model's")
    check_names({"a": 1, "b": 2}, {"a": 3, "b": 4}, subject="s", reference="r", ordered_by="u")

    class Refused(FormatError):
        code = "refused"

    with pytest.raises(Refused) as info:
        check_names(["b", "a"], ["a", "b"], subject="update's weights", reference="the node's",
                    error=Refused, ordered_by="update", code="names")
    assert info.value.code == "names"
    assert info.value.reason == (
        "update holds the node's weights in another order: weight #0 is 'b', the node's is 'a'"
    )


# ------------------------------------------------------------------------ pack
def test_pack_lays_copies_back_to_back_in_one_buffer():
    arrays = {
        "k": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1.5, 2.5], dtype=">f4"),  # big-endian in, native out
        "n": np.array(7, np.int64),  # 8-byte aligned after 32 bytes of float32
        "h": np.array([1, 2, 3], np.float16),
    }
    out = pack(arrays)
    assert list(out) == list(arrays)
    base = out["k"].base
    while isinstance(base.base, np.ndarray):
        base = base.base
    addr = {n: a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            for n, a in out.items()}
    assert addr == {"k": 0, "b": 24, "n": 32, "h": 40} and base.nbytes == 46
    for name, a in arrays.items():
        assert out[name].dtype == a.dtype.newbyteorder("=") and out[name].dtype.isnative
        np.testing.assert_array_equal(out[name], a)
        assert out[name].flags.writeable and out[name].flags.c_contiguous
        assert not np.shares_memory(out[name], a)
    out["k"][...] = 9
    assert out["b"].tolist() == [1.5, 2.5] and arrays["k"][0, 0] == 0
    assert pack({}) == {}


# ---------------------------------------------------------------------- schema
LABELLED = Schema(features=(3,), dtype="float32", label_dtype="int64", classes=4)
UNLABELLED = Schema(features=(2, 2), dtype="float64")


@pytest.mark.parametrize("schema", [LABELLED, UNLABELLED, Schema((), "int16", "float32")])
def test_schema_dict_round_trip(schema):
    d = json.loads(json.dumps(schema.to_dict()))
    assert Schema.from_dict(d) == schema


def test_schema_normalizes_names():
    assert Schema([3], np.float32, np.dtype("int64"), 4) == LABELLED
    with pytest.raises(SchemaMismatch, match="dtype is 'f4'"):
        Schema((3,), "f4")  # only canonical names are accepted as text


@pytest.mark.parametrize(
    ("d", "error", "match"),
    [
        ([3], FormatError, "schema is a list, expected a map"),
        ({"features": [3]}, FormatError, "lacks 'features' or 'dtype'"),
        (
            {"features": [3], "dtype": "float32", "extra": 1},
            FormatError,
            r"unknown keys \['extra'\]",
        ),
        ({"features": "3", "dtype": "float32"}, FormatError, "features is '3'"),
        ({"features": [True], "dtype": "float32"}, FormatError, "features is"),
        ({"features": [3], "dtype": 4}, FormatError, "must be strings"),
        ({"features": [3], "dtype": "float32", "classes": 2.0}, FormatError, "classes is 2.0"),
        ({"features": [0], "dtype": "float32"}, SchemaMismatch, "integers >= 1"),
        ({"features": [3], "dtype": "object"}, SchemaMismatch, "dtype is 'object'"),
        ({"features": [3], "dtype": "bool"}, SchemaMismatch, "dtype is 'bool'"),
        (
            {"features": [3], "dtype": "float32", "label_dtype": "float32", "classes": 3},
            SchemaMismatch,
            "integer label_dtype",
        ),
        (
            {"features": [3], "dtype": "float32", "label_dtype": "int64", "classes": 1},
            SchemaMismatch,
            "classes is 1",
        ),
    ],
)
def test_schema_from_dict_rejects(d, error, match):
    with pytest.raises(error, match=match):
        Schema.from_dict(d)


# ----------------------------------------------------------------------- chunks
def small_chunk(schema: Schema = LABELLED) -> Chunk:
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    return Chunk(
        x,
        np.array([0, 1, 2, 3, 0]),
        schema,
        "probe-7 (greenhouse)",
        41,
        (1_700_000_000_000, 1_700_000_060_000),
    )


def chunk_meta(schema: Schema) -> dict[str, str]:
    return {
        "format": "learnae-chunk/1",
        "schema": json.dumps(schema.to_dict()),
        "sensor": "s",
        "seq": "0",
        "start_ms": "0",
        "end_ms": "0",
    }


@st.composite
def chunk_st(draw) -> Chunk:
    features = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    rows = draw(st.integers(0, 6))
    elements = st.floats(allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8)
    x = draw(hnp.arrays(dtype, (rows, *features), elements=elements))
    classes = draw(st.none() | st.integers(2, 10))
    if classes is None:
        schema, y = Schema(features, dtype), None
    else:
        schema = Schema(features, dtype, "int64", classes)
        y = draw(hnp.arrays(np.int64, (rows,), elements=st.integers(0, classes - 1)))
    start = draw(st.integers(0, 2**53))
    end = start + draw(st.integers(0, 10**9))
    return Chunk(
        x, y, schema, draw(st.text(max_size=20)), draw(st.integers(0, 2**63 - 1)), (start, end)
    )


@settings(deadline=None, max_examples=150)
@given(chunk=chunk_st())
def test_chunk_round_trip(chunk):
    blob = encode_chunk(chunk)
    out = decode_chunk(blob, max_bytes=len(blob), schema=chunk.schema)
    assert (out.schema, out.sensor, out.seq, out.time_range) == (
        chunk.schema,
        chunk.sensor,
        chunk.seq,
        chunk.time_range,
    )
    assert out.x.dtype == chunk.x.dtype and out.x.tobytes() == chunk.x.tobytes()
    assert out.x.shape == chunk.x.shape
    if chunk.y is None:
        assert out.y is None
    else:
        np.testing.assert_array_equal(out.y, chunk.y)
        assert out.y.dtype == chunk.y.dtype


def test_chunk_rows_mismatch_between_x_and_y():
    blob = safetensors.numpy.save(
        {"x": np.zeros((5, 3), np.float32), "y": np.zeros(4, np.int64)},
        metadata=chunk_meta(LABELLED),
    )
    with pytest.raises(SchemaMismatch, match="x has 5 rows but y has 4"):
        decode_chunk(blob, max_bytes=LIMIT)
    chunk = small_chunk()
    chunk.y = chunk.y[:4]
    with pytest.raises(SchemaMismatch, match="x has 5 rows but y has 4"):
        encode_chunk(chunk)


def test_chunk_schema_differs_from_swarm():
    blob = encode_chunk(small_chunk())
    swarm = Schema((3,), "float32", "int64", 10)
    with pytest.raises(
        SchemaMismatch,
        match="chunk schema .*'classes': 4.* differs from the swarm's .*'classes': 10",
    ):
        decode_chunk(blob, max_bytes=LIMIT, schema=swarm)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (
            np.zeros((5, 4), np.float32),
            np.zeros(5, np.int64),
            r"x has shape \(5, 4\), expected \(rows, 3\)",
        ),
        (
            np.zeros((5, 3), np.float64),
            np.zeros(5, np.int64),
            "x has dtype float64, expected float32",
        ),
        (np.zeros((5, 3), np.float32), np.zeros(5, np.int32), "y has dtype int32, expected int64"),
        (
            np.zeros((5, 3), np.float32),
            np.zeros((5, 1), np.int64),
            r"y has shape \(5, 1\), expected \(rows,\)",
        ),
        (
            np.zeros((5, 3), np.float32),
            np.array([0, 1, 4, 2, 9]),
            r"label 4 at row 2 is outside 0..3 \(2 such rows\)",
        ),
    ],
)
def test_chunk_tensors_disagree_with_its_schema(x, y, match):
    blob = safetensors.numpy.save({"x": x, "y": y}, metadata=chunk_meta(LABELLED))
    with pytest.raises(SchemaMismatch, match=match):
        decode_chunk(blob, max_bytes=LIMIT, schema=LABELLED)


def test_chunk_labels_for_an_unlabelled_schema():
    blob = safetensors.numpy.save(
        {"x": np.zeros((1, 2, 2)), "y": np.zeros(1, np.int64)}, metadata=chunk_meta(UNLABELLED)
    )
    with pytest.raises(SchemaMismatch, match="y was given but the schema has no labels"):
        decode_chunk(blob, max_bytes=LIMIT)


def test_chunk_missing_labels():
    blob = safetensors.numpy.save(
        {"x": np.zeros((5, 3), np.float32)}, metadata=chunk_meta(LABELLED)
    )
    with pytest.raises(SchemaMismatch, match="y is NoneType, expected a numpy array of int64"):
        decode_chunk(blob, max_bytes=LIMIT)


def test_chunk_with_unexpected_tensor():
    blob = safetensors.numpy.save(
        {"x": np.zeros((1, 3), np.float32), "z": np.zeros(1)}, metadata=chunk_meta(LABELLED)
    )
    with pytest.raises(SchemaMismatch, match=r"tensors \['x', 'z'\], expected 'x' and 'y'"):
        decode_chunk(blob, max_bytes=LIMIT)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_chunk_non_finite_features(value):
    x = np.zeros((5, 3), np.float32)
    x[2, 1] = value
    blob = safetensors.numpy.save(
        {"x": x, "y": np.zeros(5, np.int64)}, metadata=chunk_meta(LABELLED)
    )
    with pytest.raises(NonFiniteError, match="x holds"):
        decode_chunk(blob, max_bytes=LIMIT)


def test_chunk_oversize():
    blob = encode_chunk(small_chunk())
    with pytest.raises(OversizeError, match=f"chunk is {len(blob)} bytes"):
        decode_chunk(blob, max_bytes=len(blob) - 1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"start_ms": "10", "end_ms": "5"}, "starts at 10 ms, after its end 5 ms"),
        ({"schema": "{"}, "'schema' is not valid JSON"),
        ({"schema": '{"features": [3]}'}, "lacks 'features' or 'dtype'"),
        ({"seq": "x"}, "'seq' is 'x'"),
        ({"format": "learnae-checkpoint/1"}, "expected 'learnae-chunk/1'"),
    ],
)
def test_bad_chunk_metadata(change, match):
    header, data = split(encode_chunk(small_chunk()))
    header["__metadata__"].update(change)
    with pytest.raises(FormatError, match=match):
        decode_chunk(craft(header, data), max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("time_range", (5, 1), "time_range is"),
        ("seq", -1, "seq is -1"),
        ("sensor", None, "sensor is None"),
    ],
)
def test_encode_chunk_refuses_bad_fields(field, value, match):
    chunk = small_chunk()
    setattr(chunk, field, value)
    with pytest.raises(FormatError, match=match):
        encode_chunk(chunk)


def test_checkpoint_is_not_a_chunk():
    with pytest.raises(FormatError, match="expected 'learnae-chunk/1'"):
        decode_chunk(encode_checkpoint(small_checkpoint()), max_bytes=LIMIT)


# ------------------------------------------------------------------------ fuzz
@settings(deadline=None, max_examples=300)
@given(data=st.data())
def test_damaged_files_raise_only_format_errors(data):
    good = data.draw(
        st.sampled_from([encode_checkpoint(small_checkpoint()), encode_chunk(small_chunk())])
    )
    blob = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    blob = bytes(blob[: data.draw(st.integers(0, len(blob)))])
    for decode in (decode_checkpoint, decode_chunk):
        try:
            decode(blob, max_bytes=LIMIT)
        except FormatError as e:
            assert e.reason
