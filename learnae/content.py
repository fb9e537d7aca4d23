"""CIDs of files, computed exactly as Kubo's ``ipfs add`` computes them.

Kubo (v0.22, boxo) imports a file as a UnixFS DAG:

- chunker ``size-262144``: the bytes are cut into :data:`CHUNK_SIZE` chunks, the
  last one shorter; an empty file has no chunk;
- balanced layout (boxo ``ipld/unixfs/importer/balanced``): every leaf sits at
  the same depth, an inner node holds at most :data:`MAX_LINKS` children, and
  the tree is filled left to right. A file of one chunk is its leaf alone; when
  a tree of depth ``d`` is full and more data follows, a new root takes the old
  root as its first child and the rest of the data goes into fresh subtrees of
  depth ``d``, so a subtree may hold a single child (``174*262144+1`` bytes give
  a root over a full node of 174 leaves and a node holding one leaf);
- sha2-256 for every block.

The two encodings built here:

- CIDv0 (Kubo's default): every block is dag-pb. A leaf's Data is UnixFS
  ``{Type: File, Data: chunk, filesize: len(chunk)}``; the empty file is the
  single block ``{Type: File, filesize: 0}`` (no Data field). The CID is the
  bare multihash in base58btc, ``"Qm..."``.
- CIDv1 (``ipfs add --cid-version=1``, which turns on raw leaves): a leaf is the
  chunk itself, a ``raw`` (0x55) block; the empty file is the empty raw block.
  CIDs are shown in base32: ``"bafkrei..."`` for a raw root, ``"bafybei..."``
  for a dag-pb root.

An inner node is dag-pb (https://ipld.io/specs/codecs/dag-pb/spec/) with its
Links (field 2) serialised before its Data (field 1). Each PBLink holds Hash (1,
the child's binary CID), Name (2, always present and empty) and Tsize (3: the
total bytes of the child's blocks, its own and all below it). Data is the UnixFS
message (https://github.com/ipfs/specs/blob/main/UNIXFS.md) ``{Type: File,
filesize: total bytes under the node, blocksizes: each child's file bytes}``.

Everything is streamed: one preallocated :data:`CHUNK_SIZE` buffer, and at most
:data:`MAX_LINKS` pending links per tree level, whatever the file's size.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import libipld
from multiformats import CID

from learnae.errors import InvalidCID

CHUNK_SIZE = 262144
"""Bytes per leaf (Kubo's default chunker ``size-262144``)."""
MAX_LINKS = 174
"""Most children of one inner node (Kubo's default for the balanced layout)."""


class BinaryReader(Protocol):
    """A binary file object (``open(path, "rb")``, ``sys.stdin.buffer``, ``io.BytesIO``)."""

    def readinto(self, buffer: memoryview, /) -> int | None:
        """Read up to ``len(buffer)`` bytes into ``buffer``; return how many (0 at EOF)."""
        ...


Source = bytes | bytearray | memoryview | BinaryReader | str | os.PathLike
"""What :func:`file_cid` reads: bytes, a binary file object, or a path."""

_SHA256 = b"\x12\x20"  # multihash prefix: sha2-256, 32-byte digest
_V1_RAW = b"\x01\x55" + _SHA256  # binary CIDv1 prefix of a raw block
_V1_DAG_PB = b"\x01\x70" + _SHA256  # binary CIDv1 prefix of a dag-pb block
_FILE = b"\x08\x02"  # UnixFS field Type (1) = File (2)


def _varint(n: int) -> bytes:
    """Protobuf (and multiformats) unsigned varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field; ``key`` is the tag byte (field number << 3 | 2)."""
    return bytes([key]) + _varint(len(payload)) + payload


class _Link(NamedTuple):
    cid: bytes  # binary CID (CIDv0: the bare multihash)
    tsize: int  # bytes of every block in the child's subtree
    filesize: int  # file bytes under the child


class _DagBuilder:
    """Builds the balanced DAG leaf by leaf, keeping only the unfinished node of each level."""

    def __init__(self, cid_version: int, max_links: int = MAX_LINKS,
                 sink: Callable[[bytes, bytes], None] | None = None):
        if cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, not {cid_version!r}")
        self.v1 = cid_version == 1
        self.max_links = max_links
        self.sink = sink  # given (binary CID, block bytes) of every block made, if set
        self.levels: list[list[_Link]] = [[]]  # levels[0]: leaves of the current depth-1 node

    def add_leaf(self, chunk: memoryview) -> None:
        """Hash one chunk (1 to CHUNK_SIZE bytes) as the next leaf. ``chunk`` is not kept."""
        n = len(chunk)
        if self.v1:
            cid = _V1_RAW + hashlib.sha256(chunk).digest()
            if self.sink is not None:
                self.sink(cid, bytes(chunk))
            self._push(0, _Link(cid, n, n))
            return
        # dag-pb {Data: UnixFS {Type: File, Data: chunk, filesize: n}}, hashed around the chunk.
        head, tail = _FILE + b"\x12" + _varint(n), b"\x18" + _varint(n)
        prefix = b"\x0a" + _varint(len(head) + n + len(tail)) + head
        digest = hashlib.sha256(prefix)
        digest.update(chunk)
        digest.update(tail)
        cid = _SHA256 + digest.digest()
        if self.sink is not None:
            self.sink(cid, prefix + bytes(chunk) + tail)
        self._push(0, _Link(cid, len(prefix) + n + len(tail), n))

    def _push(self, level: int, link: _Link) -> None:
        """Append ``link`` at ``level``; a full level first becomes a node one level up."""
        if len(self.levels[level]) == self.max_links:
            if level + 1 == len(self.levels):
                self.levels.append([])
            self._push(level + 1, self._node(self.levels[level]))
            self.levels[level] = []
        self.levels[level].append(link)

    def _node(self, links: list[_Link]) -> _Link:
        """Encode an inner dag-pb node over ``links``."""
        filesize = sum(link.filesize for link in links)
        unixfs = _FILE + b"\x18" + _varint(filesize)
        unixfs += b"".join(b"\x20" + _varint(link.filesize) for link in links)
        block = b"".join(
            _field(0x12, _field(0x0A, link.cid) + b"\x12\x00" + b"\x18" + _varint(link.tsize))
            for link in links
        ) + _field(0x0A, unixfs)
        prefix = _V1_DAG_PB if self.v1 else _SHA256
        tsize = len(block) + sum(link.tsize for link in links)
        cid = prefix + hashlib.sha256(block).digest()
        if self.sink is not None:
            self.sink(cid, block)
        return _Link(cid, tsize, filesize)

    def close(self) -> bytes:
        """Close every unfinished node, bottom up; return the root's binary CID.

        For a CIDv0 builder that is the root's multihash; for CIDv1, version, codec and multihash.
        """
        if not self.levels[0]:  # the empty file: an empty raw block, or {Type: File, filesize: 0}
            block = b"" if self.v1 else _field(0x0A, _FILE + b"\x18\x00")
            cid = (_V1_RAW if self.v1 else _SHA256) + hashlib.sha256(block).digest()
            if self.sink is not None:
                self.sink(cid, block)
            return cid
        level = 0
        while level + 1 < len(self.levels):  # a push may fill a level and add one above
            self._push(level + 1, self._node(self.levels[level]))
            level += 1
        top = self.levels[-1]
        return (top[0] if len(top) == 1 else self._node(top)).cid

    def root(self) -> CID:
        """:meth:`close`, as a multiformats CID (base58btc for CIDv0, base32 for CIDv1)."""
        cid = self.close()
        if not self.v1:
            return CID("base58btc", 0, "dag-pb", cid)
        return CID("base32", 1, "raw" if cid.startswith(_V1_RAW) else "dag-pb", cid[2:])


def _read_full(stream: BinaryReader, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (short reads of pipes are retried); return the bytes read."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _chunks(source: Source) -> Iterator[memoryview]:
    """Yield the file's chunks. Views into a reused buffer: each is valid until the next."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = memoryview(source).cast("B")
        for start in range(0, len(data), CHUNK_SIZE):
            yield data[start:start + CHUNK_SIZE]
        return
    if isinstance(source, str | os.PathLike):
        with open(source, "rb", buffering=0) as stream:
            yield from _chunks(stream)
        return
    view = memoryview(bytearray(CHUNK_SIZE))
    while n := _read_full(source, view):
        yield view[:n]
        if n < CHUNK_SIZE:
            return


def file_cid(source: Source, *, cid_version: int = 0) -> str:
    """The CID ``ipfs add`` (Kubo, default chunker and layout) gives a file's bytes.

    Args:
        source: the bytes (``bytes``, ``bytearray`` or ``memoryview``), a binary
            file object read from its current position to EOF with ``readinto``,
            or a path (``str`` or ``os.PathLike``). Memory stays at one 256 KiB
            buffer whatever the size.
        cid_version: 0 for Kubo's default (dag-pb leaves, base58btc ``"Qm..."``);
            1 for ``ipfs add --cid-version=1`` (raw leaves, base32 ``"baf..."``).

    Returns:
        The CID string exactly as Kubo prints it.

    Raises:
        ValueError: ``cid_version`` is neither 0 nor 1.
        OSError: the path cannot be opened or read.
    """
    builder = _DagBuilder(cid_version)
    for chunk in _chunks(source):
        builder.add_leaf(chunk)
    return str(builder.root())


def file_blocks(source: Source, *, cid_version: int = 0) -> Iterator[tuple[bytes, bytes]]:
    """The blocks ``ipfs add`` stores for a file, as ``(multihash, block bytes)`` pairs.

    Leaves in file order, each inner node after its children, the root last; a block that
    occurs twice in the DAG (a repeated chunk) is given twice. Kubo's blockstore keys blocks by
    their multihash (binary: ``0x12 0x20`` and the sha2-256 digest).

    Args:
        source: as :func:`file_cid`.
        cid_version: as :func:`file_cid`.

    Raises:
        ValueError: ``cid_version`` is neither 0 nor 1.
        OSError: the path cannot be opened or read.
    """
    made: list[tuple[bytes, bytes]] = []
    skip = 2 if cid_version == 1 else 0  # a binary CIDv1 starts with its version and codec

    def sink(cid: bytes, block: bytes) -> None:
        made.append((cid[skip:], block))

    builder = _DagBuilder(cid_version, sink=sink)
    for chunk in _chunks(source):
        builder.add_leaf(chunk)
        yield from made
        made.clear()
    builder.close()
    yield from made


def parse_cid(text: str) -> CID:
    """Parse a CID string (CIDv0 ``"Qm..."`` or CIDv1 in any multibase).

    Raises:
        InvalidCID: ``text`` is not a string or does not decode as a CID; the reason names it.
    """
    if not isinstance(text, str):
        raise InvalidCID(f"a CID must be a string, not {type(text).__name__}: {text!r}")
    if text.startswith("Qm") and len(text) != 46:
        raise InvalidCID(f"{text!r} is not a CID: a CIDv0 is 46 base58btc characters starting 'Qm'")
    try:
        return _decoded(text)
    except (LookupError, ValueError) as exc:  # multiformats' errors, IndexError when truncated
        reason = exc.args[0] if exc.args else type(exc).__name__
        raise InvalidCID(f"{text!r} is not a CID: {reason}") from exc


@functools.lru_cache(maxsize=8192)
def _decoded(text: str) -> CID:
    """``CID.decode``, remembered.

    multiformats checks every argument's type at run time (about 0.8 ms a CID), and a node
    parses the same few thousand CIDs over and over.
    """
    return CID.decode(text)


def to_v1(cid: str | CID) -> str:
    """The CIDv1 base32 string of ``cid`` (same codec and multihash): "Qm..." gives "bafybei...".

    Raises:
        InvalidCID: ``cid`` is a string that does not parse.
    """
    if isinstance(cid, str):
        return _v1_text(cid)
    if not isinstance(cid, CID):
        cid = parse_cid(cid)  # raises InvalidCID
    return str(cid.set(version=1, base="base32"))


_FAST_CODECS = frozenset({0x55, 0x70, 0x71})  # raw, dag-pb, dag-cbor: what a swarm names


@functools.lru_cache(maxsize=8192)
def _v1_text(text: str) -> str:
    """:func:`to_v1` of a string, remembered.

    The CIDs a swarm uses (a CIDv0, or a CIDv1 of a raw, dag-pb or dag-cbor block with a
    sha2-256 digest) are converted by libipld (about 2 us); any other text goes through
    multiformats (about 1 ms, and the judge of what parses).
    """
    if not (text.startswith("Qm") and len(text) != 46):  # parse_cid's rule for a CIDv0
        try:
            parts = libipld.decode_cid(text)
        except ValueError:
            parts = None
        if parts is not None and parts["codec"] in _FAST_CODECS and parts["hash"]["code"] == 0x12 \
                and parts["hash"]["size"] == 32 == len(parts["hash"]["digest"]) and text[0] in "Qbz":
            return _v1_of(_varint(parts["codec"]), _SHA256 + parts["hash"]["digest"])
    return str(parse_cid(text).set(version=1, base="base32"))


def _v1_of(codec: bytes, multihash: bytes) -> str:
    """The CIDv1 base32 text of a block: ``codec`` (its varint) and its binary ``multihash``."""
    return libipld.encode_cid(b"\x01" + codec + multihash)


def content_id(data: Source) -> str:
    """The CID every ``IpfsNode.add`` returns for ``data``: Kubo's CIDv0, shown as CIDv1 base32."""
    builder = _DagBuilder(0)
    for chunk in _chunks(data):
        builder.add_leaf(chunk)
    return _v1_of(b"\x70", builder.close())
