"""CIDs as Kubo computes them: published vectors, real Kubo, a reference model, the CLI."""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections import deque

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from learnae.cli import main
from learnae.content import (
    CHUNK_SIZE,
    MAX_LINKS,
    _DagBuilder,
    content_id,
    file_cid,
    parse_cid,
    to_v1,
)
from learnae.errors import InvalidCID

HELLO_V0 = "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
HELLO_V1 = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
EMPTY_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
EMPTY_V1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
KUBO_SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5_000_000,
              MAX_LINKS * CHUNK_SIZE, MAX_LINKS * CHUNK_SIZE + 1]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class TrickleReader(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int = 1000):
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(self.step, len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


# --- published vectors and the three kinds of source -------------------------
@pytest.mark.parametrize(("data", "v0", "v1"), [(b"hello world", HELLO_V0, HELLO_V1),
                                                (b"", EMPTY_V0, EMPTY_V1)])
def test_published_vectors(data, v0, v1):
    assert file_cid(data) == v0
    assert file_cid(data, cid_version=1) == v1
    assert content_id(data) == to_v1(v0)


@pytest.mark.parametrize("cid_version", [0, 1])
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 7])
def test_bytes_stream_and_path_agree(tmp_path, size, cid_version):
    data = random_bytes(size, seed=size)
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = file_cid(data, cid_version=cid_version)
    assert file_cid(bytearray(data), cid_version=cid_version) == expected
    assert file_cid(memoryview(data), cid_version=cid_version) == expected
    assert file_cid(path, cid_version=cid_version) == expected
    assert file_cid(str(path), cid_version=cid_version) == expected
    assert file_cid(TrickleReader(data), cid_version=cid_version) == expected
    with open(path, "rb") as stream:
        assert file_cid(stream, cid_version=cid_version) == expected


def test_stream_is_read_from_its_position():
    stream = io.BytesIO(b"header" + b"hello world")
    stream.seek(6)
    assert file_cid(stream) == HELLO_V0


def test_bad_cid_version():
    with pytest.raises(ValueError, match="cid_version"):
        file_cid(b"x", cid_version=2)


def test_missing_path():
    with pytest.raises(FileNotFoundError):
        file_cid("/nonexistent/learnae-file")


# --- parse_cid and to_v1 -----------------------------------------------------
@pytest.mark.parametrize("text", ["not-a-cid", "Qm123", "", "z", "f01", "bafyfoo",
                                  HELLO_V0[:-1], HELLO_V1 + "a"])
def test_parse_cid_rejects_garbage(text):
    with pytest.raises(InvalidCID) as info:
        parse_cid(text)
    assert repr(text) in info.value.reason
    assert info.value.code == "invalid-cid"


def test_parse_cid_rejects_non_strings():
    with pytest.raises(InvalidCID, match="must be a string"):
        parse_cid(b"Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD")


def test_parse_cid():
    cid = parse_cid(HELLO_V0)
    assert (cid.version, cid.codec.name, cid.hashfun.name) == (0, "dag-pb", "sha2-256")
    leaf = bytes.fromhex("0a110802120b") + b"hello world" + bytes.fromhex("180b")
    assert cid.raw_digest == hashlib.sha256(leaf).digest()
    assert parse_cid(HELLO_V1).codec.name == "raw"


def test_to_v1():
    v1 = to_v1(HELLO_V0)
    assert v1.startswith("bafybei")
    assert parse_cid(v1).digest == parse_cid(HELLO_V0).digest
    assert str(parse_cid(v1).set(version=0, base="base58btc")) == HELLO_V0
    assert to_v1(v1) == v1
    assert to_v1(HELLO_V1) == HELLO_V1
    assert to_v1(parse_cid(HELLO_V0)) == v1
    with pytest.raises(InvalidCID):
        to_v1("Qm123")


def _multiformats_v1(text: str) -> str:
    """What to_v1 gave before its libipld path: multiformats' parse, set to CIDv1 base32."""
    return str(CID.decode(text).set(version=1, base="base32"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2 * CHUNK_SIZE + 5))
def test_content_id_agrees_with_multiformats(data):
    assert content_id(data) == _multiformats_v1(file_cid(data))


@settings(max_examples=300, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32), codec=st.sampled_from(["raw", "dag-pb", "dag-cbor"]),
       base=st.sampled_from(["base32", "base32upper", "base58btc", "base36", "base16", "base64"]),
       v0=st.booleans())
def test_to_v1_agrees_with_multiformats(digest, codec, base, v0):
    """The libipld path gives multiformats' answer for every way to write a swarm's CIDs."""
    mh = b"\x12\x20" + digest
    text = str(CID("base58btc", 0, "dag-pb", mh) if v0 else CID(base, 1, codec, mh))
    assert to_v1(text) == _multiformats_v1(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", max_size=70)
                 .map(lambda t: "baf" + t), st.text(alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijk"
                                                  "mnopqrstuvwxyz", min_size=44, max_size=44).map(lambda t: "Qm" + t)))
def test_to_v1_refuses_what_multiformats_refuses(text):
    try:
        expected = _multiformats_v1(text)
    except (LookupError, ValueError):
        with pytest.raises(InvalidCID):
            to_v1(text)
    else:
        assert to_v1(text) == expected


# --- the streaming builder against a literal model of boxo's balanced Layout --
def _pb(*fields: tuple[int, int | bytes]) -> bytes:
    """A tiny protobuf encoder: (field number, int -> varint | bytes -> length-delimited)."""

    def varint(n: int) -> bytes:
        return bytes([n & 0x7F | 0x80]) + varint(n >> 7) if n > 0x7F else bytes([n])

    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += varint(number << 3) + varint(value)
        else:
            out += varint(number << 3 | 2) + varint(len(value)) + value
    return out


def reference_cid(chunks: list[bytes], cid_version: int, max_links: int) -> str:
    """Transcribes boxo's balanced.Layout and fillNodeRec, building whole blocks in memory."""
    v1 = cid_version == 1
    queue = deque(chunks)

    def link(block: bytes, codec: str) -> bytes:
        mh = bytes.fromhex("1220") + hashlib.sha256(block).digest()
        return bytes(CID("base32", 1, codec, mh)) if v1 else mh

    def leaf(chunk: bytes) -> tuple[bytes, int, int]:
        if v1:
            return link(chunk, "raw"), len(chunk), len(chunk)
        block = _pb((1, _pb((1, 2), (2, chunk), (3, len(chunk)))))
        return link(block, "dag-pb"), len(block), len(chunk)

    def node(children: list[tuple[bytes, int, int]]) -> tuple[bytes, int, int]:
        filesize = sum(c[2] for c in children)
        unixfs = _pb((1, 2), (3, filesize), *[(4, c[2]) for c in children])
        block = _pb(*[(2, _pb((1, c[0]), (2, b""), (3, c[1]))) for c in children], (1, unixfs))
        return link(block, "dag-pb"), len(block) + sum(c[1] for c in children), filesize

    def fill(children: list, depth: int) -> tuple[bytes, int, int]:
        while len(children) < max_links and queue:
            children.append(leaf(queue.popleft()) if depth == 1 else fill([], depth - 1))
        return node(children)

    if not queue:
        return file_cid(b"", cid_version=cid_version)
    root = leaf(queue.popleft())
    depth = 1
    while queue:
        root = fill([root], depth)
        depth += 1
    if not v1:
        return str(CID("base58btc", 0, "dag-pb", root[0]))
    return str(CID.decode(root[0]).set(base="base32"))


@pytest.mark.parametrize("max_links", [2, 3, 5])
@pytest.mark.parametrize("cid_version", [0, 1])
def test_builder_matches_boxo_layout(max_links, cid_version):
    rng = random.Random(max_links)
    for count in range(max_links**3 + 2):
        chunks = [rng.randbytes(rng.randint(1, 4)) for _ in range(count)]
        builder = _DagBuilder(cid_version, max_links)
        for chunk in chunks:
            builder.add_leaf(memoryview(chunk))
        assert str(builder.root()) == reference_cid(chunks, cid_version, max_links), count


def test_two_full_levels_shape():
    """174*262144+1 bytes: root over [full node of 174 leaves, node holding one leaf]."""
    data = random_bytes(MAX_LINKS * CHUNK_SIZE + 1)
    chunks = [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    for cid_version in (0, 1):
        expected = reference_cid(chunks, cid_version, MAX_LINKS)
        assert file_cid(data, cid_version=cid_version) == expected


# --- property: every source agrees, v0 and v1 differ only as expected --------
_sizes = st.one_of(st.integers(0, 300), st.integers(0, 3 * CHUNK_SIZE + 10),
                   st.sampled_from([CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE]))


@settings(max_examples=40, deadline=None)
@given(size=_sizes, seed=st.integers(0, 2**32))
def test_property_sources_and_versions(tmp_path_factory, size, seed):
    data = random_bytes(size, seed)
    path = tmp_path_factory.mktemp("prop") / "f"
    path.write_bytes(data)
    v0, v1 = file_cid(data), file_cid(data, cid_version=1)
    for source in (path, io.BytesIO(data), TrickleReader(data, step=65536 + 3)):
        assert file_cid(source) == v0
    for source in (path, io.BytesIO(data)):
        assert file_cid(source, cid_version=1) == v1
    c0, c1 = parse_cid(v0), parse_cid(v1)
    assert v0.startswith("Qm") and (c0.version, c0.codec.name) == (0, "dag-pb")
    assert v1.startswith("baf") and c1.version == 1
    assert c0.hashfun.name == c1.hashfun.name == "sha2-256"
    if size <= CHUNK_SIZE:  # one raw leaf is the whole DAG
        assert c1.codec.name == "raw" and c1.raw_digest == hashlib.sha256(data).digest()
    else:  # same tree over raw leaves instead of dag-pb leaves
        assert c1.codec.name == "dag-pb" and c1.digest != c0.digest
    assert content_id(data) == to_v1(v0) != v1


# --- the CLI -----------------------------------------------------------------
def test_cli_files_and_stdin(tmp_path):
    path = tmp_path / "hello"
    path.write_bytes(b"hello world")
    runner = CliRunner()
    result = runner.invoke(main, ["cid", str(path), "-"], input=b"")
    assert result.exit_code == 0, result.output
    assert result.output == f"{HELLO_V0}\n{EMPTY_V0}\n"
    result = runner.invoke(main, ["cid", "--cid-version", "1", "-"], input=b"hello world")
    assert result.output == f"{HELLO_V1}\n"
    result = runner.invoke(main, ["cid", "--base32", str(path)])
    assert result.output == f"{to_v1(HELLO_V0)}\n"


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["cid", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert "does not exist" in result.output
    assert runner.invoke(main, ["cid", str(tmp_path)]).exit_code != 0
    assert runner.invoke(main, ["cid"]).exit_code != 0
    assert runner.invoke(main, ["cid", "--cid-version", "2", "-"]).exit_code != 0


# --- truth: real Kubo (in-process, private swarm) -----------------------------
@pytest.fixture(scope="module")
def kubo_repo(tmp_path_factory):
    """A started embedded Kubo node in a private swarm; yields its repo path."""
    from learnae.ipfs import libkubo, privnet

    root = tmp_path_factory.mktemp("kubo")
    repo = root / "repo"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # a test that runs first loads libkubo from here
        libkubo.create_repo(repo)
        privnet.make_private(repo, privnet.new_swarm_key())
        libkubo.run_node(repo)
        try:
            yield repo
        finally:
            libkubo.cleanup_node(repo)


@pytest.mark.slow
@pytest.mark.parametrize("size", KUBO_SIZES)
def test_cli_matches_kubo(kubo_repo, tmp_path, size):
    from learnae.ipfs import libkubo

    path = tmp_path / f"random-{size}"
    path.write_bytes(os.urandom(size))
    expected = libkubo.add_file(kubo_repo, path, only_hash=True)
    result = CliRunner().invoke(main, ["cid", "--cid-version", "0", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == expected + "\n"
