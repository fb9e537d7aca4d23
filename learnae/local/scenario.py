"""Fault-injection scenarios: a TOML file read into a validated :class:`Scenario`.

A scenario says which swarm to simulate (trainer nodes, sensors, dataset and its partition,
merge rule), for how long (``rounds`` of ``round_seconds`` simulated seconds each), the
invariants' bounds, and a timeline of faults. Times are rounds: a fault with ``at = 4``
starts at the beginning of round 4 (rounds count from 0), ``until = 9`` ends it at the
beginning of round 9. Nodes are named ``n0`` .. ``n<nodes-1>``, sensors ``s0`` ..
``s<sensors-1>``.

Example (``examples/faults/partition-heal.toml``)::

    name = "partition-heal"
    seed = 1
    nodes = 8
    rounds = 14
    dataset = "digits"
    partition = "iid"
    merge = "mean"

    [[faults]]
    kind = "partition"
    at = 3
    groups = [["n0", "n1", "n2", "n3"], ["n4", "n5", "n6", "n7"]]

    [[faults]]
    kind = "heal"
    at = 8

Top-level keys (defaults in :data:`DEFAULTS`): ``name``, ``seed``, ``nodes``, ``sensors``,
``rounds``, ``round_seconds``, ``dataset`` (anything
:func:`~learnae.training.data.load_dataset` takes), ``partition`` (``iid`` or
``dirichlet:A``), ``merge`` (a rule of :data:`learnae.merge.RULES`), ``merge_params`` (a
table, e.g. ``{beta = 0.3}``), ``peers_per_merge`` (k), ``degree`` (connections each node
opens to earlier nodes), ``local_steps``, ``batch_size``, ``learning_rate``, ``chunk_rows``
(rows per sensor chunk), ``fetch_timeout`` (simulated seconds a checkpoint fetch may take),
``announce_interval`` (the syncers' anti-entropy period, simulated seconds), ``pow_bits``,
``ledger`` (:data:`LEDGERS`: ``own``, every simulated node runs a tangle and a syncer of its
own; ``shared``, one store with a view per node and gossip modelled, for swarms of a thousand
nodes: :mod:`learnae.local.shared`; the ``memory`` driver only).

``[topology]`` (optional): how the trainer nodes reach each other; only the ``processes``
driver runs topologies other than ``mesh`` (:func:`check_memory_driver`):

=====================  ======================================================================
``kind``               ``mesh`` (default: every node reaches every other one), ``line``
                       (``n0 - n1 - ... - n<nodes-1>``: each node reaches its neighbours only),
                       ``star`` (``n0`` the hub, every other node reaches ``n0`` only), or
                       ``home-nat`` (every node behind a home router of its own, with
                       public relay members: ``learnae node run --relay``)
``relays``             home-nat: relay members, public, not counted in ``nodes`` (default 1)
``hole_punching``      home-nat: whether the routers keep ports (hole punching can work) or are
                       symmetric NATs (it cannot); ``true``/``false`` or one per node (default
                       ``false``)
``serve_checkpoints``  home-nat: the relay members hold and serve each author's newest
                       checkpoint (default ``true``)
=====================  ======================================================================

``[verification]`` (optional): the swarm manifest's verification parameters
(:class:`~learnae.manifest.Verification`: ``rate``, ``verifiers``, ``threshold``, ...; missing
keys take its defaults; without the table a scenario runs without verification, unlike a
manifest, whose default rate is 5%, so that scenarios written before verification keep their
data split and figures). With a
``rate`` above 0 the memory driver's honest trainers spot-check their peers' checkpoints on a
public validation split (:mod:`learnae.local.simulation`).

``[bounds]``: ``converge_seconds`` (ledgers identical on every live node within this many
simulated seconds after the last fault ends; wall seconds for the processes driver), ``recovery_merges`` and ``recovery_ratio``
(after the last fault ends every live honest node reaches ``recovery_ratio`` of the no-fault
run's final accuracy within this many merges), ``byzantine_ratio`` (honest nodes' final
accuracy over the no-fault run's, with Byzantine nodes present), ``min_fetch_success`` (the
share of peer-checkpoint fetches that succeed, 0..1; default 0: reported, never failed),
``detect_updates`` (with :data:`LIARS` present: a liar's own published checkpoints until every
live honest node has flagged it).
``[bounds.processes]``
overrides any of them for the ``processes`` driver: real nodes merge whenever a checkpoint is
ready (several times per round) and start TensorFlow after a restart, so a bound counted in
merges or seconds can differ from the simulation's.

``[[faults]]`` kinds and their keys:

=================  ==========================================================================
``partition``      ``at``; ``groups`` (lists of node/sensor names; unlisted ones form one
                   more group) or ``halves = true``
``heal``           ``at``
``crash``          ``at``, ``node`` (its IPFS node and syncer stop, its SQLite tangle stays)
``restart``        ``at``, ``node`` (a crashed node comes back from its files)
``loss``           ``at``, ``until`` (optional), ``p`` (0..1); ``node`` (optional: its links)
``delay``          ``at``, ``until`` (optional), ``ms``; ``node`` (optional)
``byzantine``      ``at`` (default 0), ``until`` (optional), ``nodes`` (names) or
                   ``fraction`` (of the trainer nodes, the highest-numbered ones),
                   ``behaviour``: one of :data:`BEHAVIOURS`; ``sigma`` (noise, lazy),
                   ``count`` (flood: invalid transactions per round), ``scale``
                   (poison-within-bound)
``sensor-offline`` ``at``, ``until``, ``sensor``
=================  ==========================================================================
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnae.errors import ConfigError

if TYPE_CHECKING:
    from learnae.manifest import Verification

__all__ = ["BEHAVIOURS", "DEFAULTS", "FAULT_KINDS", "INFLATE", "LAZY_SIGMA", "LIARS", "POISON_SCALE",
           "TOPOLOGIES", "Fault", "Scenario", "Topology", "check_memory_driver", "check_process_hosts",
           "load_scenario", "parse_scenario"]

LIARS = ("lazy", "poison-within-bound", "inflate-samples", "false-data-claim")
"""Byzantine behaviours that take part in merging, as an honest trainer does, and lie only in
what they publish (what verification is there to catch): ``lazy`` does not train and publishes
its merged weights plus Gaussian noise of ``sigma`` times each tensor's RMS (default
:data:`LAZY_SIGMA`) with an honest node's claims; ``poison-within-bound`` trains, then publishes
``w_prev - scale * (w_new - w_prev)``, the update reversed, its norm held within half the merge's
norm bound; ``inflate-samples`` trains honestly and claims :data:`INFLATE` times its samples for
the steps an honest node claims; ``false-data-claim`` trains honestly on its shard, adopts no
chunk, and names in its checkpoints' ``data`` the swarm's data transactions it did not adopt
(under ``data_claims = "replay"``, as replayable segments from its previous checkpoint that it
never trained)."""
BEHAVIOURS = ("sign-flip", "noise", "scale", "stale", "fake-cid", "flood", *LIARS)
"""Byzantine behaviours. Publish-only (the node never merges): publish ``-w``; ``w + N(0,
sigma)``; ``100 w``; replay the first checkpoint's CID; announce CIDs of content nobody has;
gossip ``count`` invalid transactions per round. Then the :data:`LIARS`, which merge too."""
LAZY_SIGMA = 0.15
"""``lazy``'s default ``sigma``: noise of 15% of each weight tensor's RMS. (At 5% the noise
hardly moves the validation loss, so half of a lazy node's checked checkpoints pass.)"""
POISON_SCALE = 4.0
"""``poison-within-bound``'s default ``scale``: its update reversed, four times its size."""
INFLATE = 100
"""``inflate-samples`` claims this many times the samples it trained on."""

FAULT_KINDS = ("partition", "heal", "crash", "restart", "loss", "delay", "byzantine", "sensor-offline")

DEFAULTS: dict[str, Any] = {
    "name": "scenario",
    "seed": 0,
    "nodes": 8,
    "sensors": 0,
    "rounds": 12,
    "round_seconds": 4.0,
    "dataset": "digits",
    "partition": "iid",
    "merge": "mean",
    "merge_params": {},
    "peers_per_merge": 4,
    "degree": 3,
    "local_steps": 10,
    "batch_size": 32,
    "learning_rate": 0.5,
    "chunk_rows": 8,
    "fetch_timeout": 1.0,
    "announce_interval": 2.0,
    "pow_bits": 4,
    "ledger": "own",
}

BOUND_DEFAULTS: dict[str, float] = {
    "converge_seconds": 30.0,
    "recovery_merges": 6,
    "recovery_ratio": 0.98,
    "byzantine_ratio": 0.95,
    "min_fetch_success": 0.0,
    "detect_updates": 20,
}
_RATIOS = ("recovery_ratio", "byzantine_ratio", "min_fetch_success")  # at most 1
_MAY_BE_ZERO = ("min_fetch_success",)

LEDGERS = ("own", "shared")
"""Values of ``ledger`` (see the module docstring)."""
TOPOLOGIES = ("mesh", "line", "star", "home-nat")
"""Values of ``[topology]`` ``kind`` (see the module docstring)."""
_HOME_NAT_KEYS = ("relays", "hole_punching", "serve_checkpoints")
MAX_HOSTS = 254  # hosts of one test network (learnae.local.netns): the nodes, relays and a fetcher

_FAULT_KEYS = {
    "partition": {"groups", "halves"},
    "heal": set(),
    "crash": {"node"},
    "restart": {"node"},
    "loss": {"until", "p", "node"},
    "delay": {"until", "ms", "node"},
    "byzantine": {"until", "nodes", "fraction", "behaviour", "sigma", "count", "scale"},
    "sensor-offline": {"until", "sensor"},
}


@dataclass(frozen=True)
class Fault:
    """One entry of the timeline (see the module docstring for each kind's keys).

    Attributes:
        kind: one of :data:`FAULT_KINDS`.
        at: round at whose start it begins.
        until: round at whose start it ends (``None``: it lasts to the end; always ``None``
            for the instantaneous kinds partition, heal, crash and restart).
        nodes: the nodes or sensors it concerns (empty: every link for loss/delay).
        groups: partition groups.
        p, ms: loss probability, delay in milliseconds.
        behaviour, sigma, count, scale: a Byzantine behaviour and its parameters (``sigma``:
            ``noise``'s standard deviation, ``lazy``'s relative to each tensor's RMS;
            ``scale``: ``poison-within-bound``'s multiple of its update).
    """

    kind: str
    at: int
    until: int | None = None
    nodes: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    p: float = 0.0
    ms: float = 0.0
    behaviour: str = ""
    sigma: float = 0.5
    count: int = 20
    scale: float = POISON_SCALE


@dataclass(frozen=True)
class Topology:
    """How the trainer nodes reach each other (``[topology]``; see the module docstring).

    Attributes:
        kind: one of :data:`TOPOLOGIES`.
        relays: relay-member processes besides the nodes (home-nat only; 0 otherwise).
        hole_punching: per node, whether its router keeps ports (home-nat only; empty
            otherwise).
        serve_checkpoints: the relay members hold and serve each author's newest checkpoint.
    """

    kind: str = "mesh"
    relays: int = 0
    hole_punching: tuple[bool, ...] = ()
    serve_checkpoints: bool = True


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; build it with :func:`load_scenario` or :func:`parse_scenario`."""

    name: str
    seed: int
    nodes: int
    sensors: int
    rounds: int
    round_seconds: float
    dataset: str
    partition: str
    merge: str
    merge_params: dict[str, Any]
    peers_per_merge: int
    degree: int
    local_steps: int
    batch_size: int
    learning_rate: float
    chunk_rows: int
    fetch_timeout: float
    announce_interval: float
    pow_bits: int
    ledger: str
    bounds: dict[str, float]
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    process_bounds: dict[str, float] = field(default_factory=dict)
    topology: Topology = field(default_factory=Topology)
    verification: Verification | None = None  # None: no verification (rate 0)

    @property
    def node_names(self) -> list[str]:
        """The nodes' names: ``n0``, ``n1``, ..."""
        return [f"n{i}" for i in range(self.nodes)]

    @property
    def sensor_names(self) -> list[str]:
        """The sensors' names: ``s0``, ``s1``, ..."""
        return [f"s{i}" for i in range(self.sensors)]

    def byzantine(self) -> dict[str, Fault]:
        """Byzantine node name -> its fault."""
        return {n: f for f in self.faults if f.kind == "byzantine" for n in f.nodes}

    def for_processes(self) -> Scenario:
        """The scenario with ``[bounds.processes]`` in force (the processes driver's bounds)."""
        return replace(self, bounds=dict(self.process_bounds or self.bounds))

    def without_faults(self) -> Scenario:
        """The same swarm with an empty timeline: the no-fault reference run."""
        return replace(self, faults=())

    def recovery_round(self) -> int:
        """The round at whose start the last fault that ends has ended; 0 when no fault ends.

        A fault ends with a heal, a restart, or the end of a loss, delay, Byzantine or
        sensor-offline period.
        """
        ends = [f.at for f in self.faults if f.kind in ("heal", "restart")]
        ends += [f.until for f in self.faults if f.until is not None]
        return max(ends, default=0)


def check_memory_driver(scn: Scenario) -> None:
    """Raise :class:`ConfigError` when the ``memory`` driver cannot run ``scn``.

    The memory driver links each simulated node to ``degree`` random earlier ones and models
    no other topology.
    """
    if scn.topology.kind != "mesh":
        raise ConfigError(f"{scn.name}: the memory driver does not model the {scn.topology.kind!r}"
                          " topology (it links each node to `degree` random earlier ones): run it"
                          " with --driver processes")


def check_process_hosts(scn: Scenario) -> None:
    """Raise :class:`ConfigError` when ``scn`` has more nodes than one test network holds.

    The ``processes`` driver puts every node (and relay member) on one test network
    (:data:`MAX_HOSTS` hosts, a fetcher included); the memory driver has no such bound.
    """
    if scn.nodes + scn.topology.relays + 1 > MAX_HOSTS:
        raise ConfigError(f"{scn.name}: the processes driver runs at most {MAX_HOSTS - 1} nodes and relay"
                          f" members on one test network, not {scn.nodes + scn.topology.relays}")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file.

    Raises:
        ConfigError: the file is missing, not TOML, or not a valid scenario (the reason names
            the key at fault).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario {path} is not valid TOML: {exc}") from None
    return parse_scenario(data, where=str(path))


def _type_name(t: type | tuple) -> str:
    names: dict[type | tuple, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    return names.get(t, str(t))


def parse_scenario(data: dict[str, Any], *, where: str = "scenario") -> Scenario:
    """Validate a parsed TOML table into a :class:`Scenario`.

    Raises:
        ConfigError: unknown or mistyped key, a value out of range, or a timeline entry that
            names unknown nodes, restarts a node that is not crashed, etc.
    """
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{where}: {reason}")

    if not isinstance(data, dict):
        raise fail("a scenario is a TOML table")
    unknown = set(data) - set(DEFAULTS) - {"bounds", "faults", "topology", "verification"}
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)} plus [bounds],"
                   " [topology], [verification] and [[faults]]")
    values: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        value = data.get(key, default)
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise fail(f"{key} must be {_type_name(kind)}, not {value!r}")
        values[key] = value
    for key in ("nodes", "rounds", "peers_per_merge", "degree", "local_steps", "batch_size", "chunk_rows"):
        if values[key] < 1:
            raise fail(f"{key} must be at least 1, not {values[key]}")
    if values["nodes"] < 2:
        raise fail("nodes must be at least 2 (a swarm)")
    for key in ("sensors", "seed", "pow_bits"):
        if values[key] < 0:
            raise fail(f"{key} must be >= 0, not {values[key]}")
    if values["pow_bits"] > 16:
        raise fail("pow_bits above 16 makes a simulation needlessly slow")
    if values["ledger"] not in LEDGERS:
        raise fail(f"ledger must be one of {', '.join(LEDGERS)}, not {values['ledger']!r}")
    for key in ("round_seconds", "learning_rate", "fetch_timeout", "announce_interval"):
        if not (math.isfinite(values[key]) and values[key] > 0):
            raise fail(f"{key} must be a positive number, not {values[key]}")
    from learnae.merge import RULES, check_params  # noqa: PLC0415 (numpy import only when parsing)
    from learnae.training.data import _parse_partition  # noqa: PLC0415

    if values["merge"] not in RULES:
        raise fail(f"merge {values['merge']!r} is not one of {sorted(RULES)}")
    try:
        check_params(values["merge"], values["merge_params"])
    except Exception as exc:  # MergeError
        raise fail(f"merge_params: {getattr(exc, 'reason', exc)}") from None
    try:
        _parse_partition(values["partition"])
    except Exception as exc:  # DataError
        raise fail(getattr(exc, "reason", str(exc))) from None

    given = dict(data.get("bounds", {})) if isinstance(data.get("bounds", {}), dict) else None
    if given is None:
        raise fail("[bounds] must be a table")
    for_processes = given.pop("processes", {})
    if not isinstance(for_processes, dict):
        raise fail("[bounds.processes] must be a table")
    bounds = _parse_bounds(dict(BOUND_DEFAULTS), given, "bound", fail)
    process_bounds = _parse_bounds(dict(bounds), for_processes, "bounds.processes:", fail)

    names = [f"n{i}" for i in range(values["nodes"])]
    sensors = [f"s{i}" for i in range(values["sensors"])]
    faults_raw = data.get("faults", [])
    if not isinstance(faults_raw, list):
        raise fail("faults must be an array of tables ([[faults]])")
    faults = [_parse_fault(i, f, values["rounds"], names, sensors, fail) for i, f in enumerate(faults_raw)]
    faults.sort(key=lambda f: f.at)  # stable: same-round entries keep the file's order
    _check_timeline(faults, fail)
    topology = _parse_topology(data.get("topology", {}), values["nodes"], fail)
    verification = None
    if "verification" in data:
        from learnae.manifest import Verification  # noqa: PLC0415 (numpy import only when parsing)

        try:
            verification = Verification.from_payload(data["verification"])
        except ConfigError as exc:
            raise fail(f"[verification]: {exc.reason.removeprefix('manifest ')}") from None
    return Scenario(**values, bounds=bounds, process_bounds=process_bounds, faults=tuple(faults),
                    topology=topology, verification=verification)


def _parse_topology(raw: Any, nodes: int, fail) -> Topology:
    """The ``[topology]`` table (see the module docstring) for a swarm of ``nodes``."""
    if not isinstance(raw, dict):
        raise fail("[topology] must be a table")
    kind = raw.get("kind", "mesh")
    if kind not in TOPOLOGIES:
        raise fail(f"topology kind is {kind!r}, expected one of {', '.join(TOPOLOGIES)}")
    allowed = {"kind", *(_HOME_NAT_KEYS if kind == "home-nat" else ())}
    extra = set(raw) - allowed
    if extra:
        also = "" if kind == "home-nat" else f" ({', '.join(_HOME_NAT_KEYS)} are for kind = \"home-nat\")"
        raise fail(f"[topology] ({kind}) has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}{also}")
    if kind != "home-nat":
        # A mesh is the memory driver's only topology, and it models no hosts: the processes
        # driver checks a mesh's size itself (check_process_hosts).
        if kind != "mesh" and nodes + 1 > MAX_HOSTS:
            raise fail(f"a {kind} topology has at most {MAX_HOSTS - 1} nodes, not {nodes}")
        return Topology(kind)
    relays = raw.get("relays", 1)
    if type(relays) is not int or relays < 1:
        raise fail(f"[topology] relays must be an integer >= 1, not {relays!r}")
    if nodes + relays + 1 > MAX_HOSTS:
        raise fail(f"[topology] nodes + relays must be at most {MAX_HOSTS - 1} (one test network),"
                   f" not {nodes + relays}")
    punch = raw.get("hole_punching", False)
    if isinstance(punch, bool):
        punch = [punch] * nodes
    if not isinstance(punch, list) or len(punch) != nodes or not all(isinstance(p, bool) for p in punch):
        raise fail(f"[topology] hole_punching must be true, false or a list of {nodes} of them"
                   f" (one per node), not {raw['hole_punching']!r}")
    serve = raw.get("serve_checkpoints", True)
    if not isinstance(serve, bool):
        raise fail(f"[topology] serve_checkpoints must be true or false, not {serve!r}")
    return Topology(kind, relays=relays, hole_punching=tuple(punch), serve_checkpoints=serve)


def _parse_bounds(bounds: dict[str, float], given: dict[str, Any], what: str, fail) -> dict[str, float]:
    for key, value in given.items():
        if key not in BOUND_DEFAULTS:
            raise fail(f"unknown {what} {key!r}; known: {sorted(BOUND_DEFAULTS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                value >= 0 if key in _MAY_BE_ZERO else value > 0):
            least = "a number >= 0" if key in _MAY_BE_ZERO else "a positive number"
            raise fail(f"{what} {key} must be {least}, not {value!r}")
        bounds[key] = float(value)
    for key in _RATIOS:
        if bounds[key] > 1:
            ratio = "a share" if key == "min_fetch_success" else "a ratio to the no-fault run"
            raise fail(f"{what} {key} is {ratio}, at most 1, not {bounds[key]}")
    return bounds


def _parse_fault(index, raw, rounds, names, sensors, fail) -> Fault:
    where = f"faults[{index}]"
    if not isinstance(raw, dict):
        raise fail(f"{where} must be a table")
    kind = raw.get("kind")
    if kind not in FAULT_KINDS:
        raise fail(f"{where}.kind is {kind!r}, expected one of {', '.join(FAULT_KINDS)}")
    extra = set(raw) - {"kind", "at"} - _FAULT_KEYS[kind]
    if extra:
        raise fail(f"{where} ({kind}) has unknown keys {sorted(extra)}; allowed: "
                   f"{sorted({'at'} | _FAULT_KEYS[kind])}")
    at = raw.get("at", 0 if kind == "byzantine" else None)
    if type(at) is not int or not 0 <= at < rounds:
        raise fail(f"{where} ({kind}): at must be a round 0..{rounds - 1}, not {at!r}")
    until = raw.get("until")
    if until is not None and (type(until) is not int or not at < until <= rounds):
        raise fail(f"{where} ({kind}): until must be a round after at={at} and at most {rounds}, not {until!r}")
    if kind == "sensor-offline" and until is None:
        raise fail(f"{where} (sensor-offline) needs until")
    fields: dict[str, Any] = {"kind": kind, "at": at, "until": until}

    def member(name, pool, what):
        if name not in pool:
            raise fail(f"{where} ({kind}): {what} {name!r} is not one of {pool[:3]}...{pool[-1:]}"
                       if pool else f"{where} ({kind}): the scenario has no {what}s")
        return name

    if kind == "partition":
        groups: tuple[tuple[str, ...], ...]
        if raw.get("halves") is True:
            everyone = names + sensors
            half = len(everyone) // 2
            groups = (tuple(everyone[:half]), tuple(everyone[half:]))
        else:
            groups_raw = raw.get("groups")
            if not isinstance(groups_raw, list) or not groups_raw or not all(isinstance(g, list) for g in groups_raw):
                raise fail(f"{where} (partition) needs groups = [[names...], ...] or halves = true")
            seen: set[str] = set()
            for g in groups_raw:
                for n in g:
                    member(n, names + sensors, "node")
                    if n in seen:
                        raise fail(f"{where} (partition): {n!r} is in two groups")
                    seen.add(n)
            groups = tuple(tuple(g) for g in groups_raw)
        fields["groups"] = groups
    elif kind in ("crash", "restart"):
        fields["nodes"] = (member(raw.get("node"), names, "node"),)
    elif kind in ("loss", "delay"):
        if "node" in raw:
            fields["nodes"] = (member(raw["node"], names + sensors, "node"),)
        if kind == "loss":
            p = raw.get("p")
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
                raise fail(f"{where} (loss): p must be a probability 0..1, not {p!r}")
            fields["p"] = float(p)
        else:
            ms = raw.get("ms")
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 <= ms <= 60_000:
                raise fail(f"{where} (delay): ms must be 0..60000 milliseconds, not {ms!r}")
            fields["ms"] = float(ms)
    elif kind == "byzantine":
        behaviour = raw.get("behaviour")
        if behaviour not in BEHAVIOURS:
            raise fail(f"{where} (byzantine): behaviour is {behaviour!r}, expected one of {', '.join(BEHAVIOURS)}")
        fields["behaviour"] = behaviour
        if "nodes" in raw and "fraction" in raw:
            raise fail(f"{where} (byzantine): give nodes or fraction, not both")
        if "nodes" in raw:
            if not isinstance(raw["nodes"], list) or not raw["nodes"]:
                raise fail(f"{where} (byzantine): nodes must be a non-empty list of names")
            fields["nodes"] = tuple(member(n, names, "node") for n in raw["nodes"])
        else:
            fraction = raw.get("fraction")
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
                raise fail(f"{where} (byzantine): fraction must be between 0 and 1 (exclusive), not {fraction!r}")
            count = max(1, round(fraction * len(names)))
            fields["nodes"] = tuple(names[len(names) - count:])
        sigma = raw.get("sigma", LAZY_SIGMA if behaviour == "lazy" else 0.5)
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
            raise fail(f"{where} (byzantine): sigma must be a positive number, not {sigma!r}")
        count = raw.get("count", 20)
        if type(count) is not int or not 0 < count <= 10_000:
            raise fail(f"{where} (byzantine): count must be an integer 1..10000, not {count!r}")
        scale = raw.get("scale", POISON_SCALE)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1000:
            raise fail(f"{where} (byzantine): scale must be a number in (0, 1000], not {scale!r}")
        fields.update(sigma=float(sigma), count=count, scale=float(scale))
    elif kind == "sensor-offline":
        fields["nodes"] = (member(raw.get("sensor"), sensors, "sensor"),)
    return Fault(**fields)


def _check_timeline(faults: list[Fault], fail) -> None:
    """Crash/restart pairs make sense; a node stays Byzantine under one behaviour; some honest node remains."""
    crashed: set[str] = set()
    for f in faults:
        if f.kind not in ("crash", "restart"):
            continue
        node = f.nodes[0]  # a crash or restart names its node (parse_scenario)
        if f.kind == "crash":
            if node in crashed:
                raise fail(f"crash of {node} at round {f.at}: it is already crashed")
            crashed.add(node)
        else:
            if node not in crashed:
                raise fail(f"restart of {node} at round {f.at}: it was not crashed before")
            crashed.discard(node)
    byz: dict[str, str] = {}
    for f in faults:
        if f.kind == "byzantine":
            for n in f.nodes:
                if byz.setdefault(n, f.behaviour) != f.behaviour or sum(
                        n in g.nodes for g in faults if g.kind == "byzantine") > 1:
                    raise fail(f"node {n} is in two byzantine entries; give each node one behaviour")
