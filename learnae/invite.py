"""The invite: what a node or sensor needs to join a swarm, saved as ``invite.json``.

An invite names the swarm (its genesis transaction id) and carries the swarm's private-network
key, the addresses of members to dial first, and usually the genesis transaction itself, so
that a joiner can open its ledger and read the manifest before it meets a peer. It is secret:
anyone holding the swarm key can enter the private network, so the file is written mode 0600.

The file is a JSON object:

==============  ==================================================================
key             value
==============  ==================================================================
``format``      ``"learnae-invite/1"``
``genesis``     the genesis transaction id (CIDv1 base32)
``name``        the swarm name (the manifest's)
``swarm_key``   the text of the libp2p pre-shared key file (``swarm.key``)
``bootstrap``   multiaddrs ending in ``/p2p/<peer id>``
``pow_bits``    the swarm's proof-of-work bits (the manifest's)
``genesis_tx``  the genesis transaction's bytes in base64 (optional)
==============  ==================================================================
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from learnae.errors import ConfigError, InvalidCID, InvalidMultiaddr, LearnaeError
from learnae.files import read_json, write_json_atomic
from learnae.ipfs.addr import check_multiaddr
from learnae.ipfs.privnet import check_swarm_key
from learnae.ledger.tx import Tx, decode_tx, tx_link
from learnae.manifest import DEFAULT_POW_BITS, MAX_POW_BITS, Manifest, check_name, manifest_of

__all__ = ["INVITE_FORMAT", "Invite"]

INVITE_FORMAT = "learnae-invite/1"


@dataclass(frozen=True)
class Invite:
    """What a node or sensor needs to join a swarm; saved as ``invite.json``.

    Attributes:
        genesis: the genesis transaction id (CIDv1 base32), which names the swarm.
        name: the swarm name.
        swarm_key: the text of the libp2p pre-shared key file (``swarm.key``). Secret: anyone
            holding it can enter the private network.
        bootstrap: multiaddrs ending in ``/p2p/<peer id>`` to dial first (may be empty; a
            running node adds its own address).
        pow_bits: the swarm's proof-of-work bits.
        genesis_tx: the genesis transaction's bytes (base64 in the file), so a joiner can open
            its ledger and read the manifest (schema, limits, admission) before it meets a peer;
            ``None`` if not included.

    Raises:
        ConfigError: a field is invalid; the reason names it.
    """

    genesis: str
    name: str
    swarm_key: str
    bootstrap: tuple[str, ...] = ()
    pow_bits: int = DEFAULT_POW_BITS
    genesis_tx: bytes | None = None

    def __post_init__(self) -> None:
        try:
            tx_link(self.genesis if isinstance(self.genesis, str) else "")
        except InvalidCID:
            raise ConfigError(f"invite genesis {self.genesis!r} is not a transaction id"
                              " (CIDv1 base32, 'bafyrei...')") from None
        check_name(self.name, "invite name")
        if not isinstance(self.swarm_key, str):
            raise ConfigError("invite swarm_key must be the text of a swarm.key file")
        try:
            object.__setattr__(self, "swarm_key", check_swarm_key(self.swarm_key))
        except ConfigError as exc:
            raise ConfigError(f"invite swarm_key: {exc.reason}") from None
        if isinstance(self.bootstrap, str) or not isinstance(self.bootstrap, list | tuple):
            raise ConfigError("invite bootstrap must be a list of multiaddrs")
        for addr in self.bootstrap:
            try:
                check_multiaddr(addr, need_peer=True)
            except InvalidMultiaddr as exc:
                raise ConfigError(f"invite bootstrap: {exc.reason}") from None
        object.__setattr__(self, "bootstrap", tuple(dict.fromkeys(self.bootstrap)))
        if type(self.pow_bits) is not int or not 0 <= self.pow_bits <= MAX_POW_BITS:
            raise ConfigError(f"invite pow_bits must be an integer from 0 to {MAX_POW_BITS},"
                              f" got {self.pow_bits!r}")
        if self.genesis_tx is not None:
            manifest = self.manifest()
            if manifest.name != self.name or manifest.pow_bits != self.pow_bits:
                raise ConfigError("invite name and pow_bits must match the genesis manifest"
                                  f" ({manifest.name!r}, {manifest.pow_bits})")

    def genesis_transaction(self) -> Tx | None:
        """The decoded genesis (checked to have id :attr:`genesis`), or ``None`` if absent.

        Raises:
            ConfigError: the bytes are not a genesis transaction with that id.
        """
        if self.genesis_tx is None:
            return None
        try:
            tx = decode_tx(self.genesis_tx)
        except LearnaeError as exc:
            raise ConfigError(f"invite genesis_tx is not a transaction: {exc.reason}") from None
        if tx.id != self.genesis:
            raise ConfigError(f"invite genesis_tx has id {tx.id}, not the invite's genesis {self.genesis}")
        return tx

    def manifest(self) -> Manifest:
        """The swarm's manifest, from :attr:`genesis_tx`.

        Raises:
            ConfigError: the invite carries no genesis transaction, or it is invalid.
        """
        tx = self.genesis_transaction()
        if tx is None:
            raise ConfigError("the invite carries no genesis transaction (genesis_tx); fetch it"
                              " from a peer")
        return manifest_of(tx)

    def with_bootstrap(self, addrs: Iterable[str]) -> Invite:
        """A copy with ``addrs`` added to :attr:`bootstrap` (duplicates dropped, order kept)."""
        return dataclasses.replace(self, bootstrap=(*self.bootstrap, *addrs))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``format`` ``learnae-invite/1``, ``genesis_tx`` in base64)."""
        d: dict[str, Any] = {
            "format": INVITE_FORMAT, "genesis": self.genesis, "name": self.name,
            "swarm_key": self.swarm_key, "bootstrap": list(self.bootstrap),
            "pow_bits": self.pow_bits,
        }
        if self.genesis_tx is not None:
            d["genesis_tx"] = base64.b64encode(self.genesis_tx).decode()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Invite:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a map, wrong ``format``, a missing or unknown field, or an invalid
                value; the reason names the field.
        """
        if not isinstance(d, dict):
            raise ConfigError("an invite is a JSON object")
        if d.get("format", INVITE_FORMAT) != INVITE_FORMAT:
            raise ConfigError(f"invite format {d.get('format')!r} is not {INVITE_FORMAT!r}")
        known = {"format", "genesis", "name", "swarm_key", "bootstrap", "pow_bits", "genesis_tx"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"invite has unknown fields {unknown}")
        for required in ("genesis", "name", "swarm_key"):
            if required not in d:
                raise ConfigError(f"invite has no {required!r}")
        raw = d.get("genesis_tx")
        if raw is not None:
            try:
                raw = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
            except (binascii.Error, ValueError):
                raw = None
            if raw is None:
                raise ConfigError("invite genesis_tx must be base64 text")
        bootstrap = d.get("bootstrap", [])
        return cls(
            genesis=d["genesis"], name=d["name"], swarm_key=d["swarm_key"],
            bootstrap=tuple(bootstrap) if isinstance(bootstrap, list) else bootstrap,
            pow_bits=d.get("pow_bits", DEFAULT_POW_BITS), genesis_tx=raw,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Invite:
        """Read and check an ``invite.json``.

        Raises:
            ConfigError: missing, unreadable, too large, not JSON, or invalid (see :meth:`from_dict`);
                the reason names the file.
        """
        d = read_json(path, "invite file")
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.reason}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the invite as JSON to ``path``, atomically, mode 0600 (it holds the swarm key).

        Raises:
            ConfigError: the write failed; the reason names the file.
        """
        try:
            write_json_atomic(path, self.to_dict(), mode=0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write invite file {path}: {exc.strerror or exc}") from None
