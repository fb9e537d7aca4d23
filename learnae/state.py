"""A member's state directory: its layout, making a swarm in one, opening its ledger.

:class:`StateDir` names every file; :func:`init_swarm` makes a swarm's files,
:func:`open_tangle` opens the ledger, :func:`node_listen` reads the node settings.

``learnae init DIR`` makes a swarm's files in a state directory; the founder's node runs in the
same directory, and a joining node or sensor starts from an empty one and its invite. Every
file's path comes from :class:`StateDir`, the one definition of the layout.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learnae.errors import ConfigError, LearnaeError, TxRejected
from learnae.files import read_json, write_new
from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ipfs.privnet import new_swarm_key
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import Tx
from learnae.manifest import ADMISSION_OPEN, Manifest, make_genesis, manifest_of

__all__ = ["DEFAULT_LISTEN", "StateDir", "SwarmInit", "init_swarm", "node_listen", "open_tangle",
           "parse_listen"]

DEFAULT_LISTEN = "127.0.0.1:0"
"""Where a node listens when ``node.json`` does not say: loopback, any free port."""


@dataclass(frozen=True)
class StateDir:
    """The paths of a state directory's files, one attribute each (nothing is read or made).

    ``StateDir("./swarm").tangle`` is ``Path("./swarm/tangle.sqlite")``. The swarm's files,
    written once by :func:`init_swarm` (a joiner has only the ledger, made from its invite):

    ================  =================  ========================================================
    attribute         file               holds
    ================  =================  ========================================================
    ``genesis``       ``genesis.tx``     the genesis transaction's bytes
    ``manifest``      ``manifest.json``  its payload, the manifest, readable (mode 0644)
    ``swarm_key``     ``swarm.key``      the libp2p pre-shared key of the private swarm (0600)
    ``identity``      ``identity.key``   this member's Ed25519 key, PKCS#8 PEM (0600): the
                                         identity the ledger credits
    ``tangle``        ``tangle.sqlite``  the ledger (SQLite; ``-wal`` and ``-shm`` files beside)
    ``invite``        ``invite.json``    what joiners need (0600: it holds the swarm key)
    ``node_settings`` ``node.json``      local node settings: ``{"listen": "HOST:PORT"}``
    ================  =================  ========================================================

    A trainer node's files (it also uses ``identity`` and ``tangle``):

    ================  ==========================  ===============================================
    attribute         file                        holds
    ================  ==========================  ===============================================
    ``ipfs``          ``ipfs/``                   the embedded Kubo node's repository
    ``checkpoint``    ``checkpoint.safetensors``  the last checkpoint this node published
    ``progress``      ``progress.json``           step, samples, last checkpoint tx and CID,
                                                  own pinned CIDs: what a restart resumes from
    ``addrs``         ``addrs.json``              this node's IPFS peer id and multiaddrs
    ``api``           ``api.json``                the URL of this node's HTTP API
    ``status``        ``status.json``             what ``GET /status`` returns, rewritten
                                                  every second
    ``lock``          ``node.lock``               an exclusive ``flock``: one node per directory
    ``adopted``       ``adopted.sqlite``          sensor data chunks this node adopted
    ================  ==========================  ===============================================
    """

    root: Path
    """The directory (a ``str`` or path-like given is made a :class:`~pathlib.Path`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def genesis(self) -> Path:
        """``genesis.tx``: the genesis transaction's bytes."""
        return self.root / "genesis.tx"

    @property
    def manifest(self) -> Path:
        """``manifest.json``: the genesis payload (the manifest), readable."""
        return self.root / "manifest.json"

    @property
    def swarm_key(self) -> Path:
        """``swarm.key``: the private swarm's libp2p pre-shared key."""
        return self.root / "swarm.key"

    @property
    def identity(self) -> Path:
        """``identity.key``: this member's Ed25519 key."""
        return self.root / "identity.key"

    @property
    def tangle(self) -> Path:
        """``tangle.sqlite``: the ledger."""
        return self.root / "tangle.sqlite"

    @property
    def invite(self) -> Path:
        """``invite.json``: what joiners need."""
        return self.root / "invite.json"

    @property
    def node_settings(self) -> Path:
        """``node.json``: local node settings (``listen``)."""
        return self.root / "node.json"

    @property
    def ipfs(self) -> Path:
        """``ipfs/``: the embedded Kubo node's repository."""
        return self.root / "ipfs"

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.safetensors``: the node's last published checkpoint."""
        return self.root / "checkpoint.safetensors"

    @property
    def progress(self) -> Path:
        """``progress.json``: what a restarted node resumes from."""
        return self.root / "progress.json"

    @property
    def addrs(self) -> Path:
        """``addrs.json``: the node's IPFS peer id and multiaddrs."""
        return self.root / "addrs.json"

    @property
    def api(self) -> Path:
        """``api.json``: the URL of the node's HTTP API."""
        return self.root / "api.json"

    @property
    def status(self) -> Path:
        """``status.json``: the node's ``GET /status`` answer, rewritten every second."""
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        """``node.lock``: held (``flock``) by the node running in this directory."""
        return self.root / "node.lock"

    @property
    def adopted(self) -> Path:
        """``adopted.sqlite``: the sensor data chunks the node adopted."""
        return self.root / "adopted.sqlite"

    @property
    def swarm_files(self) -> tuple[Path, ...]:
        """The files :func:`init_swarm` makes, in the order of the table above."""
        return (self.genesis, self.manifest, self.swarm_key, self.identity, self.tangle,
                self.invite, self.node_settings)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse a listen address ``"HOST:PORT"`` (``"[::1]:4001"`` for IPv6).

    Returns:
        ``(host, port)``: HOST an IP address, PORT 0 to 65535 (0: any free port).

    Raises:
        ConfigError: ``text`` is not of that form.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535 or not port.isdigit():
        raise ConfigError(f"listen address {text!r} must be HOST:PORT with an IP address, e.g."
                          " 127.0.0.1:4001 or [::1]:4001 (port 0: any free port)")
    return host, number


def node_listen(directory: str | os.PathLike[str]) -> tuple[str, int]:
    """The listen address ``learnae init --listen`` saved in the directory's ``node.json``.

    Returns:
        ``(host, port)`` as :func:`parse_listen` gives them; :data:`DEFAULT_LISTEN`'s if there
        is no ``node.json``.

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    path = StateDir(Path(directory)).node_settings
    if not path.exists():
        return parse_listen(DEFAULT_LISTEN)
    d = read_json(path, "node settings file")
    if not isinstance(d, dict) or not isinstance(d.get("listen", DEFAULT_LISTEN), str):
        raise ConfigError(f"{path}: 'listen' must be a HOST:PORT string")
    return parse_listen(d.get("listen", DEFAULT_LISTEN))


@dataclass(frozen=True)
class SwarmInit:
    """What :func:`init_swarm` made.

    Attributes:
        state: the state directory's files.
        manifest: the swarm's manifest (the founder added to a closed swarm's admission).
        genesis: the genesis transaction.
        founder: the founder's identity.
        invite: the invite, with the genesis transaction.
    """

    state: StateDir
    manifest: Manifest
    genesis: Tx
    founder: Identity
    invite: Invite

    @property
    def directory(self) -> Path:
        """The state directory (``state.root``)."""
        return self.state.root


def init_swarm(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    *,
    founder: Identity | None = None,
    bootstrap: Iterable[str] = (),
    listen: str = DEFAULT_LISTEN,
) -> SwarmInit:
    """Create a swarm in ``directory``: the swarm's files of :class:`StateDir`.

    The directory is created (mode 0700) if needed and may hold other files, but none of a
    swarm's. In a closed swarm the founder's author id is added to the admission list if it is
    missing, so the founder can publish. Every file is created whole or not at all, and if
    anything fails, the files made so far are removed.

    Args:
        directory: the state directory.
        manifest: the swarm's definition.
        founder: the founder's identity; a new one by default.
        bootstrap: multiaddrs (``.../p2p/<peer id>``) for the invite.
        listen: ``HOST:PORT`` the founder's node listens on, saved in ``node.json``.

    Raises:
        ConfigError: ``directory`` already holds a swarm file, an argument is invalid, or a
            write failed.
    """
    state = StateDir(Path(directory))
    d = state.root
    parse_listen(listen)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} exists and is not a directory")
    present = [p.name for p in state.swarm_files if p.exists()]
    present += [p.name for p in d.glob(f"{state.tangle.name}-*")] if d.is_dir() else []
    if present:
        raise ConfigError(f"{d} already holds a swarm ({', '.join(present)}); refusing to overwrite"
                          " it. Choose another directory, or delete these files first.")
    founder = founder or Identity.generate()
    if manifest.admission != ADMISSION_OPEN and founder.author_id not in manifest.admission:
        manifest = dataclasses.replace(manifest, admission=(*manifest.admission, founder.author_id))
    genesis = make_genesis(founder, manifest)
    swarm_key = new_swarm_key()
    invite = Invite(genesis=genesis.id, name=manifest.name, swarm_key=swarm_key,
                    bootstrap=tuple(bootstrap), pow_bits=manifest.pow_bits, genesis_tx=genesis.raw)
    made_dir = not d.exists()
    created: list[Path] = []
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, data, mode in (
            (state.genesis, genesis.raw, 0o644),
            (state.manifest, _json(manifest.to_payload()), 0o644),
            (state.swarm_key, swarm_key.encode(), 0o600),
            (state.invite, _json(invite.to_dict()), 0o600),
            (state.node_settings, _json({"listen": listen}), 0o644),
        ):
            write_new(path, data, mode=mode)
            created.append(path)
        founder.save(state.identity)
        created.append(state.identity)
        created.append(state.tangle)
        Tangle(state.tangle, genesis_raw=genesis.raw, pow_bits=manifest.pow_bits,
               max_tx_bytes=manifest.limits.tx_bytes, rules=manifest.membership(genesis.author)).close()
    except BaseException as exc:
        for path in created:
            path.unlink(missing_ok=True)
        for path in d.glob(f"{state.tangle.name}-*"):
            path.unlink(missing_ok=True)
        if made_dir:
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot create the swarm in {d}: {exc.strerror or exc}") from None
        if isinstance(exc, LearnaeError) and not isinstance(exc, ConfigError):
            raise ConfigError(f"cannot create the swarm in {d}: {exc.reason}") from None
        raise
    return SwarmInit(state, manifest, genesis, founder, invite)


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def open_tangle(
    directory: str | os.PathLike[str], *, invite: Invite | None = None, read_only: bool = False,
    **tangle_kwargs: Any,
) -> tuple[Tangle, Manifest]:
    """Open the ledger of a state directory with the swarm's admission rule.

    If there is no ledger yet and ``invite`` carries the genesis transaction, the ledger is
    created from it (the directory too, mode 0700), unless ``read_only``: then nothing is ever
    written (commands that only read a ledger use it). Extra keyword arguments go to
    :class:`~learnae.ledger.tangle.Tangle` (e.g. ``clock``, ``max_pending_bytes``).

    Returns:
        The open ledger (:attr:`StateDir.tangle`) and the manifest read from its genesis.

    Raises:
        ConfigError: the directory or the ledger is missing (and cannot be created), the
            ledger holds another swarm than ``invite``'s, or its stored genesis is damaged or
            not a valid manifest.
        LedgerError: the file is not a tangle store.
    """
    d = Path(directory)
    path = StateDir(d).tangle
    if not path.exists():
        genesis = invite.genesis_transaction() if invite is not None and not read_only else None
        if genesis is None:
            if not d.is_dir():
                raise ConfigError(f"state directory {d} does not exist; make a swarm with"
                                  f" `learnae init {d} --name NAME --model MODEL`")
            raise ConfigError(f"{d} holds no ledger ({path.name}); is it a learnae state"
                              f" directory? Make one with `learnae init {d} ...`")
        manifest = manifest_of(genesis)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        tangle = Tangle(path, genesis_raw=genesis.raw, pow_bits=manifest.pow_bits,
                        max_tx_bytes=manifest.limits.tx_bytes, rules=manifest.membership(genesis.author),
                        **tangle_kwargs)
        return tangle, manifest
    with Tangle(path, read_only=read_only) as probe:
        swarm = probe.swarm
        try:
            genesis = probe.get(swarm)
        except TxRejected as exc:
            raise ConfigError(f"{path}: the stored genesis does not decode: {exc.reason}") from None
    if genesis is None or genesis.id != swarm:
        raise ConfigError(f"{path}: the stored genesis bytes are not transaction {swarm}; the"
                          " ledger is damaged (see `learnae ledger verify`)")
    if invite is not None and invite.genesis != swarm:
        raise ConfigError(f"{path} holds swarm {swarm}, not the invite's {invite.genesis}")
    manifest = manifest_of(genesis)
    return Tangle(path, rules=manifest.membership(genesis.author), read_only=read_only,
                  **tangle_kwargs), manifest
