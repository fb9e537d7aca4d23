"""The manifest: a swarm's definition, the payload of its genesis transaction.

The manifest (docs/design.md "Content and wire formats", kind ``genesis``) is a DAG-CBOR map of plain values:
text, integers, floats, lists and maps, never byte strings. (``libipld.encode_dag_cbor`` writes
any ``bytes`` that parse as a binary CID as a link, so a raw public key could silently turn into
one; admission lists therefore hold author ids, ``"z6Mk..."``.)

=========================  ==================================================================  ============
key                        meaning                                                              default
=========================  ==================================================================  ============
``v``                      manifest version                                                     1
``name``                   swarm name: 1 to 64 printable characters                             (required)
``model``                  Keras JSON config (``model.to_json()``), checked by                  (required)
                           :func:`learnae.models.check.check_model`
``input_shape``            shape of one example's features, list of ints >= 1                   from model
``dtype``                  feature dtype, a numpy name (``formats.DTYPES``)                     from model
``classes``                number of classes (labels are int64 class indices)                   from model
``optimizer``              ``adam``, ``sgd`` or ``rmsprop``                                     adam
``learning_rate``          float in (0, 10]                                                     0.001
``batch_size``             examples per batch, 1 to 65536                                       32
``merge``                  merge rule: mean, age, median, trimmed, krum, multikrum              mean
``merge_params``           the rule's parameters (``learnae.merge.check_params``), e.g.          {}
                           ``{"beta": 0.2}`` for trimmed, ``{"f": 1}`` for krum
``sync_every``             batches of local training between two publish/merge steps            50
``sync_interval``          seconds, in (0, 86400]: the node's timer for sync work (tips,        30.0
                           merges) between batch-driven steps
``checkpoint_interval``    seconds, in [0, 86400]: the least time between two checkpoints of    30.0
                           one node (0: no pacing); at the default a 100-node swarm announces
                           about 3.3 checkpoints a second
``pow_bits``               leading zero bits of every transaction's proof-of-work, 0 to 32      12
``limits``                 ``tx_bytes``, ``checkpoint_bytes``, ``chunk_bytes``: largest          64 KiB,
                           accepted transaction, checkpoint file and data chunk file            64 MiB, 8 MiB
``admission``              ``"open"``, or a list of the author ids allowed to publish           open
                           from the start (``admit`` transactions add members later)
``stewards``               author ids that may sign ``admit`` and ``revoke`` besides the        none
                           founder (:mod:`learnae.ledger.members`); written only when some
``steward_quorum``         distinct stewards whose votes an ``admit`` or ``revoke`` needs;      1
                           written only when not 1
``created``                ms since the Unix epoch (also the genesis transaction's time)        now
``verification``           checks of peers' checkpoints and the authors' standings              see below
                           (:class:`Verification`); written only when not the defaults
``newcomers``              an open swarm's probation of new authors (:class:`Newcomers`:          3, 0.25,
                           ``record``, ``weight``, ``tx_per_minute``); written only when not   30
                           the defaults
``compression``            how checkpoints travel (:class:`Compression`: ``codec``, ``block``,  float32,
                           ``delta_codec``, ``keyframe_every``); written only when not the      no deltas
                           defaults
=========================  ==================================================================  ============

The model may have at most ``limits.checkpoint_bytes / 4`` parameters (a float32 parameter
takes 4 bytes of a checkpoint), counted from its config without building it.

``verification`` is a map of ``rate`` (0.05; 0 turns it off), ``verifiers`` (2),
``threshold`` (0.5), ``prior_agree`` (3.0), ``prior_dispute`` (1.0), ``unselected_weight``
(0.25), ``sample_cap`` (4.0), ``min_gain`` (0.25), ``max_rise`` (0.0) and ``data_claims``
(``"trust"``; ``"replay"``: data are named only by replayable segments), missing keys taking
those defaults (:class:`Verification`, used by :mod:`learnae.verify`). The payload has it only
when it differs from the defaults, so a manifest made before verification existed keeps its
payload, and its genesis its id (and now verifies at the default rate).

Also here: the genesis transaction (:func:`make_genesis`, :func:`manifest_of`), the admission
list file (:func:`read_admission_file`), and short forms of ids for tables (:func:`short_id`).
The invite is in :mod:`learnae.invite`, the state directory in :mod:`learnae.state`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import libipld

from learnae.codec import CODECS, LOSSLESS, MAX_BLOCK
from learnae.errors import ConfigError, IdentityError
from learnae.formats import DTYPES, Schema
from learnae.identity import Identity, author_id, parse_author_id, read_author_file
from learnae.ledger.members import Rules
from learnae.ledger.tx import Tx, make_tx
from learnae.merge import RULES, MergeError, check_params
from learnae.models.check import DEFAULT_MAX_PARAMS, PARAM_BYTES, check_model

__all__ = [
    "ADMISSION_OPEN", "DEFAULT_BATCH_SIZE", "DEFAULT_LEARNING_RATE", "DEFAULT_MERGE",
    "DEFAULT_OPTIMIZER", "DEFAULT_POW_BITS", "DEFAULT_SYNC_EVERY", "DEFAULT_SYNC_INTERVAL",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "MAX_NAME", "MAX_POW_BITS", "MERGE_RULES", "OPTIMIZERS", "Compression", "Limits", "Manifest", "Newcomers", "Verification",
    "check_name",
    "make_genesis", "manifest_of", "read_admission_file", "short_author", "short_id",
]

VERSION = 1
MAX_NAME = 64
MAX_POW_BITS = 32
"""Above this a transaction costs hours of hashing; no swarm wants that."""
OPTIMIZERS = ("adam", "sgd", "rmsprop")
MERGE_RULES = RULES
"""Merge rule names (:data:`learnae.merge.RULES`)."""
ADMISSION_OPEN = "open"
MAX_ADMISSION = 10_000
MAX_STEWARDS = 64
MAX_MERGE_PARAMS = 32

DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 0.001
DEFAULT_BATCH_SIZE = 32
DEFAULT_MERGE = "mean"
DEFAULT_SYNC_EVERY = 50
DEFAULT_SYNC_INTERVAL = 30.0
DEFAULT_CHECKPOINT_INTERVAL = 30.0
DEFAULT_POW_BITS = 12
"""About 4,000 sha2-256 hashes per transaction: milliseconds on a desktop, well under a
second on a Raspberry Pi; enough to make flooding cost something."""
_ENVELOPE_BYTES = 256
"""Upper bound of a genesis transaction's bytes besides its payload (keys, author, sig, time,
nonce: about 150)."""


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class Limits:
    """Largest accepted sizes, in bytes: a transaction's encoding, a checkpoint file, a chunk.

    ``tx_bytes`` bounds a transaction's encoding, ``checkpoint_bytes`` a checkpoint file (and
    so the model: at most ``checkpoint_bytes / 4`` float32 parameters), ``chunk_bytes`` a data
    chunk file.

    Raises:
        ConfigError: a limit is not an integer in its range (tx 4 KiB to 16 MiB, checkpoint
            and chunk 1 KiB to 4 GiB).
    """

    tx_bytes: int = 64 * 1024
    checkpoint_bytes: int = DEFAULT_MAX_PARAMS * PARAM_BYTES  # 64 MiB
    chunk_bytes: int = 8 * 2**20

    def __post_init__(self) -> None:
        _int("limits.tx_bytes", self.tx_bytes, 4096, 16 * 2**20)
        _int("limits.checkpoint_bytes", self.checkpoint_bytes, 1024, 4 * 2**30)
        _int("limits.chunk_bytes", self.chunk_bytes, 1024, 4 * 2**30)

    def to_payload(self) -> dict[str, int]:
        """The payload form: ``{"tx_bytes", "checkpoint_bytes", "chunk_bytes"}``."""
        return {"tx_bytes": self.tx_bytes, "checkpoint_bytes": self.checkpoint_bytes,
                "chunk_bytes": self.chunk_bytes}

    @classmethod
    def from_payload(cls, value: Any) -> Limits:
        """Inverse of :meth:`to_payload`; missing keys take the defaults.

        Raises:
            ConfigError: ``value`` is not a map, has an unknown key, or a bad limit.
        """
        return cls(**_fields_map("limits", cls, value))


def _fields_map(what: str, cls: type, value: Any) -> dict[str, Any]:
    """``value`` checked to be a map whose keys are fields of dataclass ``cls``.

    Raises:
        ConfigError: ``value`` is not a map, or has a key that is not a field (named by ``what``).
    """
    if not isinstance(value, dict):
        raise ConfigError(f"manifest {what} must be a map, not {type(value).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(known), key=str)
    if unknown:
        raise ConfigError(f"manifest {what} has unknown keys {unknown} (known: {', '.join(known)})")
    return value


def _int(name: str, value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"manifest {name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _number(name: str, value: Any, high: float, *, zero: bool = False) -> float:
    if (type(value) not in (int, float) or not math.isfinite(value)
            or not (0 <= value if zero else 0 < value) or value > high):
        low = "from 0" if zero else "above 0 and"
        raise ConfigError(f"manifest {name} must be a number {low} at most {high:g},"
                          f" got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices or type(value) is not str:
        raise ConfigError(f"manifest {name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_name(value: Any, what: str = "manifest name") -> str:
    """Check a swarm name: 1 to 64 printable characters, no leading or trailing spaces.

    Returns:
        ``value``.

    Raises:
        ConfigError: otherwise; the reason starts with ``what``.
    """
    if (not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or value != value.strip()
            or not value.isprintable()):
        raise ConfigError(f"{what} must be 1 to {MAX_NAME} printable characters without leading or"
                          f" trailing spaces, got {value!r}")
    return value


def _no_bytes(value: Any, where: str) -> None:
    """Refuse byte strings anywhere (they could be re-encoded as links, see the module doc)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise ConfigError(f"manifest {where} holds a byte string; the manifest holds only text,"
                          " numbers, lists and maps (author ids, not raw keys)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"manifest {where} has a non-text key {k!r}")
            _no_bytes(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _no_bytes(v, f"{where}[{i}]")


def _now_ms() -> int:
    return int(time.time() * 1000)


DATA_CLAIMS = ("trust", "replay")
"""The choices of :attr:`Verification.data_claims`."""


@dataclass(frozen=True)
class Verification:
    """How members check each other's checkpoints and whose checkpoints they stop merging.

    The rules that use these parameters are in :mod:`learnae.verify`.

    Attributes:
        rate: the share of its peers' checkpoints a member checks on average, 0 to 1 (0 turns
            verification off); 5% by default, the rate it is designed for (docs/design.md,
            "Verification": on four ``learnae node run`` processes with one lazy member it
            disputed 1 of 49 honest checks and 13 of the lazy member's 16).
        verifiers: members in the committee of a checked checkpoint, 1 to 16.
        threshold: standing (0 to 1) below which an author is flagged and its checkpoints are
            not merged; it must be below the standing of an author nobody has judged yet,
            ``prior_agree / (prior_agree + prior_dispute)``.
        prior_agree: agreements every author starts with (> 0).
        prior_dispute: disputes every author starts with (> 0).
        unselected_weight: what an attestation by a member outside the checkpoint's committee
            counts, 0 to 1 (a committee member's counts 1).
        sample_cap: a checkpoint's ``samples`` counts at most this multiple of the median claim
            among the checkpoints merged together, 1 to 1e6.
        min_gain: the relative fall of the validation loss on some class's rows, 0 to 1, at
            which a checkpoint is agreed with (:func:`learnae.verify.holdout_verdict`); a
            verifier lowers it to half the median gain of the checkpoints it judged lately,
            once the swarm's updates teach less (:func:`learnae.verify.gain_bar`).
        max_rise: the relative rise of the validation loss in all, 0 to 1e6, beyond which a
            checkpoint is disputed whatever it taught; 0 (the default) checks no such bound,
            which suits members whose data differ (their honest updates rose up to 4.7 times
            their base's loss in all); a swarm of alike shards can set e.g. 0.05.
        data_claims: what a checkpoint's ``data`` links (the public chunks it says it trained
            on) must carry. ``"trust"`` (the default, while ``learnae node run`` cannot yet
            train replayable segments): nothing, and they are not checked. ``"replay"``: a
            checkpoint that names data must be a replayable ``segment`` on it, which its
            committee trains again (:func:`learnae.verify.replay_verdict`); one without is
            disputed ``data-unreplayable``.

    With the defaults an author is flagged after 3 disputes (by committee members) and no
    agreement: (3 + 0) / (3 + 1 + 0 + 3) = 0.43 < 0.5.

    Raises:
        ConfigError: a parameter is out of its range, or ``threshold`` is not below the prior
            standing.
    """

    rate: float = 0.05
    verifiers: int = 2
    threshold: float = 0.5
    prior_agree: float = 3.0
    prior_dispute: float = 1.0
    unselected_weight: float = 0.25
    sample_cap: float = 4.0
    min_gain: float = 0.25
    max_rise: float = 0.0
    data_claims: str = "trust"

    def __post_init__(self) -> None:
        def put(name: str, value: float) -> None:
            object.__setattr__(self, name, value)

        put("rate", _number("verification.rate", self.rate, 1.0, zero=True))
        _int("verification.verifiers", self.verifiers, 1, 16)
        put("threshold", _number("verification.threshold", self.threshold, 1.0, zero=True))
        put("prior_agree", _number("verification.prior_agree", self.prior_agree, 1e6))
        put("prior_dispute", _number("verification.prior_dispute", self.prior_dispute, 1e6))
        put("unselected_weight", _number("verification.unselected_weight",
                                         self.unselected_weight, 1.0, zero=True))
        put("sample_cap", _number("verification.sample_cap", self.sample_cap, 1e6))
        if self.sample_cap < 1:
            raise ConfigError(f"manifest verification.sample_cap must be at least 1 (a cap below"
                              f" the median would cut honest claims), got {self.sample_cap!r}")
        put("min_gain", _number("verification.min_gain", self.min_gain, 1.0, zero=True))
        put("max_rise", _number("verification.max_rise", self.max_rise, 1e6, zero=True))
        _choice("verification.data_claims", self.data_claims, DATA_CLAIMS)
        prior = self.prior_agree / (self.prior_agree + self.prior_dispute)
        if not self.threshold < prior:
            raise ConfigError(
                f"manifest verification.threshold {self.threshold:g} is not below the standing"
                f" every author starts with, prior_agree / (prior_agree + prior_dispute) ="
                f" {prior:.3g}: every author would be flagged before anyone checked its work;"
                " lower the threshold or raise prior_agree")

    def to_payload(self) -> dict[str, float | int | str]:
        """The payload form: a map of the ten parameters (floats, ``verifiers``, ``data_claims``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, value: Any) -> Verification:
        """Inverse of :meth:`to_payload`; missing keys take the defaults.

        Raises:
            ConfigError: ``value`` is not a map, has an unknown key, or a bad parameter.
        """
        return cls(**_fields_map("verification", cls, value))


@dataclass(frozen=True)
class Newcomers:
    """How the members of an open swarm treat an author without a record yet.

    An author is a *newcomer* until other authors used its work ``record`` times: merged one of
    its checkpoints (named it as a ``base``) or trained on one of its data chunks (named it in
    ``data``), each use counted. The founder and
    the stewards never are, and nobody is in a closed swarm, whose admission is the vetting.
    Until then a node weighs its checkpoints less and stores fewer of its transactions
    (docs/design.md "Membership").

    Attributes:
        record: uses by others that end an author's probation, 0 to 1e6 (0: no probation).
        weight: what a newcomer's checkpoint counts in a merge, 0 to 1: its ``samples`` claim
            is multiplied by it (rounded down), which is its weight under ``mean``; the other
            rules do not weigh by samples.
        tx_per_minute: a newcomer's transactions a node stores per minute (a token bucket of
            that burst), 1 to 1e6; the rest is dropped and comes again by gap repair when
            someone approves it. A member publishing a checkpoint every 30 s sends about 2.
            Never below three times the swarm's checkpoint pace (``3 / checkpoint_interval``
            a second), so an honest newcomer is not held back; no limit at all in a swarm
            that does not pace checkpoints (``checkpoint_interval`` 0).

    The weakness this leaves: newcomers may merge each other's checkpoints, so a stranger
    with several identities can earn a record among them. Probation buys time and weight,
    not identity: a swarm that must know its members is closed.

    Raises:
        ConfigError: a parameter is out of its range.
    """

    record: int = 3
    weight: float = 0.25
    tx_per_minute: float = 30.0

    def __post_init__(self) -> None:
        _int("newcomers.record", self.record, 0, 1_000_000)
        object.__setattr__(self, "weight", _number("newcomers.weight", self.weight, 1.0, zero=True))
        object.__setattr__(self, "tx_per_minute", _number("newcomers.tx_per_minute", self.tx_per_minute, 1e6))
        if self.tx_per_minute < 1:
            raise ConfigError(f"manifest newcomers.tx_per_minute must be at least 1, got {self.tx_per_minute!r}")

    def to_payload(self) -> dict[str, float | int]:
        """The payload form: a map of the three parameters."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, value: Any) -> Newcomers:
        """Inverse of :meth:`to_payload`; missing keys take the defaults.

        Raises:
            ConfigError: ``value`` is not a map, has an unknown key, or a bad parameter.
        """
        return cls(**_fields_map("newcomers", cls, value))


@dataclass(frozen=True)
class Compression:
    """How a swarm's checkpoints travel: their codec, and deltas against a keyframe.

    The arithmetic is :mod:`learnae.codec`, the files :mod:`learnae.formats`, the choice and its
    figures docs/design.md "Compressed checkpoints" and docs/benchmarks.md.

    Attributes:
        codec: the codec of full checkpoints: ``float32`` (exact, the default), ``float16``,
            ``int8`` or ``int4`` (blockwise absmax quantization).
        block: values per scale of ``int8`` and ``int4``, 1 to 2**20 (64: a float32 scale adds
            half a bit per value).
        delta_codec: None (every checkpoint is full), or the codec of *deltas*: between two
            keyframes a member publishes its weights minus its last keyframe's (as decoded),
            naming the keyframe's CID; a receiver that does not hold it fetches it first.
        keyframe_every: with deltas, every this many checkpoints of a member is a full one (a
            keyframe), 1 to 10,000; the first after a start always is.

    A lossy codec (anything but float32 without deltas) changes the weights a little, so the
    checkpoint is no longer what training produced: a swarm whose data claims are replayed
    (``verification.data_claims`` ``"replay"``) cannot use one (:class:`Manifest` refuses it).

    Raises:
        ConfigError: a parameter out of its range.
    """

    codec: str = LOSSLESS
    block: int = 64
    delta_codec: str | None = None
    keyframe_every: int = 8

    def __post_init__(self) -> None:
        _choice("compression.codec", self.codec, CODECS)
        _int("compression.block", self.block, 1, MAX_BLOCK)
        if self.delta_codec is not None:
            _choice("compression.delta_codec", self.delta_codec, CODECS)
        _int("compression.keyframe_every", self.keyframe_every, 1, 10_000)

    @property
    def lossless(self) -> bool:
        """True when checkpoints carry the trained weights bit for bit (float32, no deltas)."""
        return self.codec == LOSSLESS and self.delta_codec is None

    def to_payload(self) -> dict[str, str | int | None]:
        """The payload form: a map of the four parameters."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, value: Any) -> Compression:
        """Inverse of :meth:`to_payload`; missing keys take the defaults.

        Raises:
            ConfigError: ``value`` is not a map, has an unknown key, or a bad parameter.
        """
        return cls(**_fields_map("compression", cls, value))


@dataclass(frozen=True)
class Manifest:
    """A swarm's definition; its payload form is the genesis transaction's payload.

    Build with ``Manifest(name=..., model=...)`` (everything else has a default; see the
    module docstring for every field) or :meth:`from_payload`. ``input_shape``, ``dtype`` and
    ``classes`` default to what the model config says (:func:`check_model`); given ones must
    agree with it. ``created`` defaults to now (ms).

    Raises:
        ConfigError: any field is invalid; the reason names it.
    """

    name: str
    model: str
    input_shape: tuple[int, ...] | None = None
    dtype: str | None = None
    classes: int | None = None
    optimizer: str = DEFAULT_OPTIMIZER
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    merge: str = DEFAULT_MERGE
    merge_params: dict[str, Any] = field(default_factory=dict)
    sync_every: int = DEFAULT_SYNC_EVERY
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    pow_bits: int = DEFAULT_POW_BITS
    limits: Limits = field(default_factory=Limits)
    admission: str | tuple[str, ...] = ADMISSION_OPEN
    stewards: tuple[str, ...] = ()
    steward_quorum: int = 1
    created: int | None = None
    verification: Verification = field(default_factory=Verification)
    newcomers: Newcomers = field(default_factory=Newcomers)
    compression: Compression = field(default_factory=Compression)
    _keys: frozenset[bytes] | None = field(default=None, init=False, repr=False, compare=False)
    _steward_keys: frozenset[bytes] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        check_name(self.name)
        if not isinstance(self.limits, Limits):
            raise ConfigError("manifest limits must be a Limits")
        if not isinstance(self.verification, Verification):
            raise ConfigError("manifest verification must be a Verification")
        if not isinstance(self.newcomers, Newcomers):
            raise ConfigError("manifest newcomers must be a Newcomers")
        if not isinstance(self.compression, Compression):
            raise ConfigError("manifest compression must be a Compression")
        if self.verification.data_claims == "replay" and not self.compression.lossless:
            raise ConfigError("manifest verification.data_claims 'replay' needs checkpoints that carry the"
                              " trained weights exactly: compression codec float32 without deltas"
                              f" (got {self.compression.to_payload()})")
        info = check_model(self.model, max_params=self.limits.checkpoint_bytes // PARAM_BYTES)
        if len(self.model.encode()) > self.limits.tx_bytes - 1024:
            raise ConfigError(
                f"manifest model config is {len(self.model.encode())} bytes; with the rest of the"
                f" genesis it would not fit limits.tx_bytes ({self.limits.tx_bytes})"
            )
        # Shape, dtype and classes: given, or read from the model; both must agree.
        shape = self.input_shape
        if shape is None:
            shape = info.input_shape
            if shape is None:
                raise ConfigError("manifest input_shape is needed: the model config has no single"
                                  " fully known input shape")
        if not isinstance(shape, list | tuple) or not 1 <= len(shape) <= 8:
            raise ConfigError(f"manifest input_shape must be a list of 1 to 8 integers, got {shape!r}")
        shape = tuple(shape)
        for d in shape:
            _int("input_shape entries", d, 1, 2**31 - 1)
        if info.input_shape is not None and shape != info.input_shape:
            raise ConfigError(f"manifest input_shape {list(shape)} differs from the model's input"
                              f" {list(info.input_shape)}")
        put("input_shape", shape)
        dtype = self.dtype if self.dtype is not None else (info.dtype or "float32")
        put("dtype", _choice("dtype", dtype, tuple(DTYPES.values())))
        classes = self.classes if self.classes is not None else info.classes
        if classes is None:
            raise ConfigError("manifest classes is needed: the model config's output layer does"
                              " not say it")
        put("classes", _int("classes", classes, 2, 1_000_000))
        if info.classes is not None and classes != info.classes:
            raise ConfigError(f"manifest classes {classes} differs from the model's output"
                              f" ({info.classes} classes)")

        _choice("optimizer", self.optimizer, OPTIMIZERS)
        put("learning_rate", _number("learning_rate", self.learning_rate, 10.0))
        _int("batch_size", self.batch_size, 1, 65536)
        _choice("merge", self.merge, MERGE_RULES)
        put("merge_params", _check_merge_params(self.merge_params))
        try:
            check_params(self.merge, self.merge_params)
        except MergeError as exc:
            raise ConfigError(f"manifest merge_params: {exc.reason}") from None
        _int("sync_every", self.sync_every, 1, 1_000_000)
        put("sync_interval", _number("sync_interval", self.sync_interval, 86400.0))
        put("checkpoint_interval", _number("checkpoint_interval", self.checkpoint_interval, 86400.0,
                                           zero=True))
        _int("pow_bits", self.pow_bits, 0, MAX_POW_BITS)
        admission, keys = _check_admission(self.admission)
        put("admission", admission)
        if keys is not None:
            put("_keys", keys)
        stewards = _author_ids("stewards", self.stewards, 0, MAX_STEWARDS)
        put("stewards", tuple(stewards))
        put("_steward_keys", frozenset(stewards.values()))
        _int("steward_quorum", self.steward_quorum, 1, max(1, len(stewards)))
        put("created", _now_ms() if self.created is None else
            _int("created (ms since the epoch)", self.created, 0, 2**63 - 1))
        size = len(libipld.encode_dag_cbor(self.to_payload()))
        if size + _ENVELOPE_BYTES > self.limits.tx_bytes:
            raise ConfigError(f"the manifest is {size} bytes; the genesis would not fit"
                              f" limits.tx_bytes ({self.limits.tx_bytes})")

    # payload form ------------------------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        """The genesis payload: plain DAG-CBOR-safe values (text, ints, floats, lists, maps)."""
        shape, dtype = self._features()
        payload = {
            "v": VERSION,
            "name": self.name,
            "model": self.model,
            "input_shape": list(shape),
            "dtype": dtype,
            "classes": self.classes,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "merge": self.merge,
            "merge_params": dict(self.merge_params),
            "sync_every": self.sync_every,
            "sync_interval": self.sync_interval,
            "checkpoint_interval": self.checkpoint_interval,
            "pow_bits": self.pow_bits,
            "limits": self.limits.to_payload(),
            "admission": self.admission if self.admission == ADMISSION_OPEN else list(self.admission),
            "created": self.created,
        }
        if self.verification != Verification():  # absent = defaults: older payloads unchanged
            payload["verification"] = self.verification.to_payload()
        if self.newcomers != Newcomers():  # likewise
            payload["newcomers"] = self.newcomers.to_payload()
        if self.compression != Compression():  # likewise
            payload["compression"] = self.compression.to_payload()
        if self.stewards:
            payload["stewards"] = list(self.stewards)
        if self.steward_quorum != 1:
            payload["steward_quorum"] = self.steward_quorum
        _no_bytes(payload, "")
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> Manifest:
        """A manifest from its payload form (a genesis payload or a ``manifest.json``).

        Missing keys other than ``name`` and ``model`` take their defaults (a genesis made by
        :func:`make_genesis` has them all).

        Raises:
            ConfigError: not a map, an unknown key or version, a byte string anywhere, or any
                invalid field; the reason names it.
        """
        if not isinstance(payload, dict):
            raise ConfigError(f"a manifest is a map, not {type(payload).__name__}")
        _no_bytes(payload, "")
        known = {f.name for f in dataclasses.fields(cls) if f.init} | {"v"}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ConfigError(f"manifest has unknown fields {unknown} (made by a newer learnae?)")
        if payload.get("v", VERSION) != VERSION or type(payload.get("v", VERSION)) is not int:
            raise ConfigError(f"manifest version {payload.get('v')!r} is not {VERSION}")
        for required in ("name", "model"):
            if required not in payload:
                raise ConfigError(f"manifest has no {required!r}")
        kwargs = {k: v for k, v in payload.items() if k != "v"}
        if "limits" in kwargs:
            kwargs["limits"] = Limits.from_payload(kwargs["limits"])
        if "verification" in kwargs:
            kwargs["verification"] = Verification.from_payload(kwargs["verification"])
        if "newcomers" in kwargs:
            kwargs["newcomers"] = Newcomers.from_payload(kwargs["newcomers"])
        if "compression" in kwargs:
            kwargs["compression"] = Compression.from_payload(kwargs["compression"])
        if isinstance(kwargs.get("input_shape"), list):
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        for key in ("admission", "stewards"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    # derived views -----------------------------------------------------------------------------
    def membership(self, founder: bytes) -> Rules:
        """The membership rules for the ledger (:mod:`learnae.ledger.members`).

        Args:
            founder: the genesis author's 32-byte public key.
        """
        return Rules(founder=founder, admission=self._keys, stewards=self._steward_keys,
                     quorum=self.steward_quorum)

    @property
    def schema(self) -> Schema:
        """The data chunk schema of this swarm.

        Features of shape ``input_shape`` and dtype ``dtype``; int64 class labels in
        ``[0, classes)``.
        """
        shape, dtype = self._features()
        return Schema(features=shape, dtype=dtype, label_dtype="int64", classes=self.classes)

    def _features(self) -> tuple[tuple[int, ...], str]:
        """``input_shape`` and ``dtype``, as the checks at construction settled them.

        Raises:
            ConfigError: they are unset, which only a manifest that bypassed those checks can be.
        """
        if self.input_shape is None or self.dtype is None:
            raise ConfigError("manifest input_shape and dtype are unset: make the manifest with"
                              " Manifest(...) or Manifest.from_payload(...)")
        return self.input_shape, self.dtype


def _check_merge_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict) or len(params) > MAX_MERGE_PARAMS:
        raise ConfigError(f"manifest merge_params must be a map of at most {MAX_MERGE_PARAMS} entries")
    for key, value in params.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise ConfigError(f"manifest merge_params key {key!r} must be text of 1 to 64 characters")
        ok = (type(value) in (bool, int, str)
              or (type(value) is float and math.isfinite(value)))
        if not ok or (type(value) is str and len(value) > 256):
            raise ConfigError(f"manifest merge_params[{key!r}] must be an int, a finite float,"
                              f" a bool or short text, got {value!r}")
    return dict(params)


def _check_admission(value: Any) -> tuple[str | tuple[str, ...], frozenset[bytes] | None]:
    """Check an admission value, parsing each author id once.

    Returns:
        The value as stored (``"open"`` or a tuple of author ids) and the admitted public keys
        (None for an open swarm).
    """
    if value == ADMISSION_OPEN:
        return ADMISSION_OPEN, None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"manifest admission must be 'open' or a list of author ids, got {value!r}")
    if not value:
        raise ConfigError(f"manifest admission list must hold 1 to {MAX_ADMISSION} author ids"
                          " (use 'open' to admit everyone)")
    keys = _author_ids("admission", value, 1, MAX_ADMISSION)
    return tuple(value), frozenset(keys.values())


def _author_ids(name: str, value: Any, least: int, most: int) -> dict[str, bytes]:
    """Check a list of ``least`` to ``most`` distinct author ids; their public keys by id."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not least <= len(value) <= most:
        raise ConfigError(f"manifest {name} must be a list of {least} to {most} author ids, got {value!r}")
    keys: dict[str, bytes] = {}
    for i, aid in enumerate(value):
        try:
            key = parse_author_id(aid)
        except IdentityError as exc:
            raise ConfigError(f"manifest {name}[{i}]: {exc.reason}") from None
        if aid in keys:
            raise ConfigError(f"manifest {name} lists {aid} twice")
        keys[aid] = key
    return keys


# --------------------------------------------------------------------------- genesis
def make_genesis(identity: Identity, manifest: Manifest) -> Tx:
    """The swarm's genesis transaction.

    Kind ``genesis``, no parents, no swarm, payload ``manifest.to_payload()``, time
    ``manifest.created``, mined to ``manifest.pow_bits``.

    Raises:
        ConfigError: the genesis would be larger than ``manifest.limits.tx_bytes``.
    """
    payload = manifest.to_payload()
    size = len(libipld.encode_dag_cbor(payload))
    if size + _ENVELOPE_BYTES > manifest.limits.tx_bytes:  # before mining
        raise ConfigError(f"the manifest is {size} bytes; the genesis would not fit"
                          f" limits.tx_bytes ({manifest.limits.tx_bytes})")
    tx = make_tx(identity, kind="genesis", payload=payload, parents=[], swarm=None,
                 pow_bits=manifest.pow_bits, time_ms=manifest.created)
    if len(tx.raw) > manifest.limits.tx_bytes:
        raise ConfigError(f"the genesis is {len(tx.raw)} bytes, over limits.tx_bytes"
                          f" ({manifest.limits.tx_bytes})")
    return tx


def manifest_of(genesis: Tx) -> Manifest:
    """The manifest a genesis transaction carries.

    Raises:
        ConfigError: ``genesis`` is not a genesis transaction or its payload is not a valid
            manifest.
    """
    if genesis.kind != "genesis":
        raise ConfigError(f"transaction {genesis.id} is a {genesis.kind!r}, not a genesis")
    try:
        return Manifest.from_payload(genesis.payload)
    except ConfigError as exc:
        raise ConfigError(f"genesis {genesis.id}: {exc.reason}") from None


# --------------------------------------------------------------------------- admission file
def read_admission_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The author ids of an admission list file, for ``Manifest(admission=...)``.

    The file lists authors one a line, as :func:`learnae.identity.read_author_file` reads
    them (author ids ``z6Mk...`` or 64 hex digits of a public key; ``#`` starts a comment).

    Returns:
        The author ids, in file order.

    Raises:
        ConfigError: unreadable, a line that names no author or one named before (the reason
            gives the file and line), or no author at all.
    """
    keys = read_author_file(path, "admission file")
    if not keys:
        raise ConfigError(f"admission file {path} lists no author ids (use 'open' to admit"
                          " everyone)")
    return tuple(author_id(key) for key in keys)


def short_id(text: str) -> str:
    """A short form of a transaction id or author id for tables.

    The first 4 characters and the last 8: ``"bafy…k2jd8sa1"``, ``"z6Mk…Qw3h9xYz"``.
    """
    return text if len(text) <= 14 else f"{text[:4]}…{text[-8:]}"


def short_author(key: bytes) -> str:
    """:func:`short_id` of a 32-byte public key's author id."""
    return short_id(author_id(key))
