"""Verification: who checks which checkpoint, the verdicts, and the authors' standings.

In a volunteer swarm anyone may publish, and a checkpoint transaction's claims (``samples``,
``base``, ``data``, ``step``) cannot be taken on trust. Members spot-check each other's
checkpoints and record each verdict in the ledger as a signed ``attestation`` transaction
(``checkpoint``, ``method``, ``verdict``, ``code``, ``figures``). This module holds the rules
every member applies alike to what the ledger holds; the callers fetch and evaluate the models.

- :func:`committee`, :func:`is_selected`: which checkpoints are checked and by whom. A
  committee drawn from the checkpoint's id by hashing, so anyone can recompute it and nobody
  chooses whom they judge (the verifier-committee idea of Biscotti, Shayan et al., IEEE TPDS
  2021, and of Proof-of-Learning, Jia et al., IEEE S&P 2021, whose verifiers re-check a
  sample of a training run's claims).
- :func:`holdout_verdict`, :func:`claims_verdict`: verdicts as pure functions of numbers
  (:func:`holdout_loss` groups a model's per-row validation losses by class;
  :func:`nearest_mix` finds the start a checkpoint is judged against).
- :func:`standings`: each author's standing from the attestations about its checkpoints
  (the Beta reputation system, Jøsang & Ismail 2002); a flagged author's checkpoints are not
  merged.
- :func:`cap_samples`: bounds the ``samples`` claims of the checkpoints merged together, so a
  claim alone never decides a ``mean`` merge.

The parameters are the manifest's :class:`learnae.manifest.Verification`. Author keys are
32-byte Ed25519 public keys; checkpoint ids are transaction ids (CIDv1 base32 text).

This module sits below the Keras glue and never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from learnae.ledger.tx import tx_link
from learnae.manifest import Verification

__all__ = [
    "AGREE",
    "CODES",
    "DISPUTE",
    "GAIN_SHARE",
    "METHODS",
    "MIN_RECENT",
    "RECENT_GAINS",
    "REPLAY_TOLERANCE",
    "WORSE_MARGIN",
    "AttestationLike",
    "HoldoutLoss",
    "Standing",
    "Verdict",
    "cap_samples",
    "claims_verdict",
    "committee",
    "gain_bar",
    "holdout_loss",
    "holdout_verdict",
    "is_selected",
    "nearest_mix",
    "replay_verdict",
    "segment_rows",
    "standings",
]

AGREE = "agree"
DISPUTE = "dispute"
METHODS = ("holdout", "replay", "claims")
"""How a verifier judged: validation loss against the base, replaying the training, the claims."""
CODES = ("ok", "holdout-worse", "holdout-no-gain", "samples-inconsistent", "replay-mismatch", "data-unreplayable")
"""``ok`` goes with ``agree``; every other code names a dispute's reason."""
WORSE_MARGIN = 0.05
"""Relative rise of the validation loss in all at which a checkpoint that taught nothing
(``holdout-no-gain``) is called ``holdout-worse``."""
GAIN_SHARE = 0.5
"""The share of the swarm's typical best class gain a checkpoint must show (:func:`gain_bar`)."""
RECENT_GAINS = 32
"""How many of a verifier's latest judged gains :func:`gain_bar` takes the median of."""
MIN_RECENT = 8
"""Gains a verifier must have judged before :func:`gain_bar` lowers the manifest's bar."""
REPLAY_TOLERANCE = 0.01
"""The largest replay distance (relative to the update) :func:`replay_verdict` agrees with."""


# ------------------------------------------------------------------------------- types
class AttestationLike(Protocol):
    """What :func:`standings` reads of an attestation (the tangle's ``Attestation`` has it).

    Attributes:
        verifier: the attestation's author, a 32-byte public key.
        subject: the author of the judged checkpoint, a 32-byte public key.
        checkpoint: the judged checkpoint transaction's id.
        method: one of :data:`METHODS`.
        verdict: :data:`AGREE` or :data:`DISPUTE`.
        code: one of :data:`CODES`.
    """

    @property
    def verifier(self) -> bytes: ...  # noqa: D102 (documented in the class docstring)

    @property
    def subject(self) -> bytes: ...  # noqa: D102

    @property
    def checkpoint(self) -> str: ...  # noqa: D102

    @property
    def method(self) -> str: ...  # noqa: D102

    @property
    def verdict(self) -> str: ...  # noqa: D102

    @property
    def code(self) -> str: ...  # noqa: D102


class Verdict(NamedTuple):
    """A verifier's judgement of one checkpoint: what an attestation transaction carries.

    Attributes:
        method: one of :data:`METHODS`.
        verdict: :data:`AGREE` or :data:`DISPUTE`.
        code: ``"ok"`` for an agreement, else the dispute's reason (:data:`CODES`).
        figures: the numbers it was decided on, name -> finite float.
    """

    method: str
    verdict: str
    code: str
    figures: dict[str, float]


class Standing(NamedTuple):
    """An author's standing: the Beta reputation of its checkpoints.

    Attributes:
        agree: weighted agreements about its checkpoints (``A``).
        dispute: weighted disputes about its checkpoints (``D``).
        score: ``(prior_agree + A) / (prior_agree + prior_dispute + A + D)``, in (0, 1).
        flagged: ``score < threshold``: its checkpoints are not merged.
        disputes: how many disputes were counted (one per verifier and checkpoint).
    """

    agree: float
    dispute: float
    score: float
    flagged: bool
    disputes: int


# --------------------------------------------------------------------------- selection
def _unit(digest: bytes) -> float:
    """A sha-256 digest as a number in [0, 1) (correctly rounded, so alike on every machine)."""
    return int.from_bytes(digest, "big") / 2**256


def committee(
    checkpoint: str, subject: bytes, candidates: Iterable[bytes], cfg: Verification
) -> tuple[bytes, ...]:
    """The members who check ``checkpoint``: none when it is not drawn for checking.

    With ``n`` candidates (duplicates and ``subject`` dropped) and ``H`` = sha-256 over the
    checkpoint's binary CID (36 bytes): the checkpoint is checked iff
    ``H(b"check" + cid) / 2**256 < min(1, rate * n / verifiers)``, and then its committee is
    the ``verifiers`` candidates (all, if fewer) with the smallest ``H(cid + key)``. So each
    member sits in the committees of about ``rate`` of its peers' checkpoints, and a checked
    checkpoint has ``verifiers`` verifiers, as long as ``n <= verifiers / rate`` (40 with the
    defaults); in larger swarms every checkpoint is checked and a member checks
    ``verifiers / n`` of them. Anyone holding the same candidates computes the same committee.
    Verifiers cannot choose their targets; the author can only re-mine its transaction (a new
    time or nonce, one proof-of-work per try) until the draw passes it by, about 2 tries with
    the defaults and 19 candidates; members outside the committee may still check anything
    (their attestations weigh ``unselected_weight``).

    Args:
        checkpoint: the checkpoint transaction's id.
        subject: its author's key; never in its own committee.
        candidates: the keys of the members who may verify (e.g. the authors active when it
            was published), in any order.
        cfg: the manifest's verification parameters.

    Returns:
        The committee's keys, closest (smallest hash) first; empty when not checked or when
        ``rate`` is 0.

    Raises:
        InvalidCID: ``checkpoint`` is not a transaction id.
        TypeError: a candidate is not ``bytes``.
    """
    cid = tx_link(checkpoint)
    keys = set()
    for key in candidates:
        if type(key) is not bytes:
            raise TypeError(f"a candidate is a {type(key).__name__}, expected a public key (bytes)")
        keys.add(key)
    keys.discard(subject)
    if not keys or _unit(hashlib.sha256(b"check" + cid).digest()) >= min(
        1.0, cfg.rate * len(keys) / cfg.verifiers
    ):
        return ()
    ranked = sorted(keys, key=lambda key: (hashlib.sha256(cid + key).digest(), key))
    return tuple(ranked[: cfg.verifiers])


def is_selected(
    checkpoint: str, subject: bytes, verifier: bytes, candidates: Iterable[bytes], cfg: Verification
) -> bool:
    """Is ``verifier`` in the committee of ``checkpoint`` (:func:`committee`)?

    Raises:
        InvalidCID: ``checkpoint`` is not a transaction id.
        TypeError: a candidate is not ``bytes``.
    """
    return verifier in committee(checkpoint, subject, candidates, cfg)


# ----------------------------------------------------------------------------- verdicts
def _integer(name: str, value: object, low: int) -> int:
    """``value`` as an int (numpy's integers too); ValueError unless an integer >= ``low``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low:
        return int(value)
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _positive(name: str, value: object) -> float:
    """``value`` as a float (numpy's too); ValueError unless a finite number > 0."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if 0 < float(value) < math.inf:
            return float(value)
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class HoldoutLoss(NamedTuple):
    """A model's loss on the validation set, in all and on each class's rows.

    Attributes:
        loss: mean cross-entropy over every row (nats), >= 0; NaN or infinity for a model
            that diverged.
        per_class: mean cross-entropy over each class's rows, classes in ascending order
            (only the classes the set holds); the same classes for every model compared.
    """

    loss: float
    per_class: tuple[float, ...]


def holdout_loss(row_loss: np.ndarray, labels: np.ndarray) -> HoldoutLoss:
    """Group per-row losses into a :class:`HoldoutLoss`.

    Args:
        row_loss: each validation row's loss, shape ``(n,)``, n >= 1.
        labels: each row's class label, shape ``(n,)``.

    Raises:
        ValueError: no rows, or the shapes differ.
    """
    row_loss, labels = np.asarray(row_loss, dtype=np.float64), np.asarray(labels)
    if row_loss.ndim != 1 or row_loss.shape != labels.shape or not len(row_loss):
        raise ValueError(f"row losses {row_loss.shape} and labels {labels.shape}: need two equal (n,), n >= 1")
    return HoldoutLoss(float(row_loss.mean()),
                       tuple(float(row_loss[labels == c].mean()) for c in np.unique(labels)))


def nearest_mix(
    checked: Mapping[str, np.ndarray], bases: Sequence[Mapping[str, np.ndarray]], *, iterations: int = 500,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The mix of ``bases`` nearest to ``checked``: what a checkpoint is judged against.

    A checkpoint names as its ``base`` the checkpoints it merged since its author's previous
    one, but not how it weighted them: merges come one at a time (each a ``mean`` weighted by
    claimed samples, or a robust rule), so the start the author trained from is some convex
    combination ``sum_i a_i * base_i`` (``a_i >= 0``, ``sum a_i = 1``) that the ledger does not
    record. Judged against the plain mean, a member that republishes its merge (``lazy``) looks
    as if it had learned whatever its merge weights favoured (four real processes: a lazy
    member's best class gain had a median of 0.28 against the mean of its bases). So the start
    is the mix nearest to the checkpoint: ``a = argmin ||checked - sum_i a_i base_i||`` over the
    simplex (all tensors flattened into one vector, Euclidean norm), solved on the ``n x n`` Gram
    matrix by accelerated projected gradient (FISTA, Beck & Teboulle 2009; projection onto the
    simplex, Duchi et al. 2008). A republished merge is then judged against (nearly) itself; an
    honest update keeps the part of its training that no mix of its bases explains.

    Args:
        checked: the checkpoint's weights (path -> array).
        bases: its bases' weights, each with every path of ``checked`` and the same shapes; n >= 1.
        iterations: FISTA steps (n is small: a few hundred reach float precision).

    Returns:
        ``(mix, a)``: the mix (path -> float32 array) and its coefficients, shape ``(n,)``.

    Raises:
        ValueError: no bases, or a base lacks a path or has another shape.
    """
    if not bases:
        raise ValueError("a mix needs at least one base")
    keys = list(checked)
    for base in bases:
        for k in keys:
            if k not in base or np.shape(base[k]) != np.shape(checked[k]):
                raise ValueError(f"base weight {k!r} is missing or has another shape than the checkpoint's")

    def flat(w: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(w[k]).astype(np.float64) for k in keys])

    stack = np.stack([flat(b) for b in bases])  # (n, P)
    centre = stack.mean(axis=0)
    stack -= centre
    gram, target = stack @ stack.T, stack @ (flat(checked) - centre)
    n = len(bases)
    step = 1.0 / max(float(np.linalg.eigvalsh(gram)[-1]), 1e-300)
    a = y = np.full(n, 1.0 / n)
    t = 1.0
    for _ in range(iterations):
        nxt = _onto_simplex(y - step * (gram @ y - target))
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y, a, t = nxt + (t - 1) / t_next * (nxt - a), nxt, t_next
    mixed = a @ stack + centre
    mix, at = {}, 0
    for k in keys:
        size = int(np.size(checked[k]))
        mix[k] = mixed[at:at + size].reshape(np.shape(checked[k])).astype(np.float32)
        at += size
    return mix, a


def _onto_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto the probability simplex (Duchi et al., ICML 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    rho = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def holdout_verdict(base: HoldoutLoss, checked: HoldoutLoss, cfg: Verification, *,
                    min_gain: float | None = None) -> Verdict:
    """Judge a checkpoint by its validation losses against its base's, class by class.

    Training teaches a model about the data it trains on; on skewed data (each member holds
    some classes mostly) it lowers the loss on those classes and often raises it on the rest,
    so the loss on the whole set says little (docs/benchmarks.md: on Dirichlet(0.5) shards of
    digits 94% of honest updates were worse than their base in all). The rule asks instead
    whether the update taught the model something: with ``g = (base_c - loss_c) / base_c``,
    the relative fall of the loss on class ``c``'s rows, and ``best = max_c g``:

    - a loss that is not finite, or (when ``cfg.max_rise`` > 0) a loss in all above
      ``base_loss * (1 + cfg.max_rise)``: ``dispute``, ``holdout-worse`` (diverged, or damaged
      as a reversed update damages);
    - ``best >= min_gain``: ``agree`` (``ok``): the loss fell on some class's rows;
    - otherwise ``dispute``: ``holdout-worse`` when the loss in all rose more than
      :data:`WORSE_MARGIN` (relative), else ``holdout-no-gain`` (a lazy member republishing
      its merge plus noise).

    Measured (``bench/verify.py``, digits MLP, updates of 30 batches from a common base, the
    default ``min_gain`` 0.25): honest updates agreed 95% of the time on IID shards and 100%
    on Dirichlet(0.5) shards, lazy ones (base plus N(0, 0.01)) about 5%. An update reversed
    (``poison-within-bound``) lowers the loss on the classes the honest one raised it on, so
    ``min_gain`` does not catch it; ``max_rise`` does where members' data are alike (IID:
    honest updates rise little in all), and is off by default because on skewed data honest
    updates rose up to 4.7 times their base's loss in all. The merge's norm bound limits what
    a reversed update can do. No rule on a public validation set stops a member that trains
    on that set itself.

    Args:
        base: validation losses of the mean of the checkpoint's ``base`` checkpoints (what it
            claims to have started from; unweighted, so no claim sways it); finite, > 0 (a
            class's may be 0: it gains 0).
        checked: the checkpoint's, on the same set and classes.
        cfg: the manifest's verification parameters.
        min_gain: the bar for ``best``, 0 to ``cfg.min_gain``; None: ``cfg.min_gain``. A
            verifier lowers it once the swarm's updates teach less (:func:`gain_bar`).

    Returns:
        A :class:`Verdict` of method ``holdout``; figures ``base_loss``, and when finite
        ``loss``, ``gain`` (``(base_loss - loss) / base_loss``), ``class_gain`` (``best``) and
        ``min_gain`` (the bar).

    Raises:
        ValueError: a base loss is not a finite number > 0, a loss is negative, or the two
            cover different numbers of classes.
    """
    base_loss = _positive("base_loss", base.loss)
    base_classes = [0.0 if v == 0 and not isinstance(v, bool) else _positive("a base class loss", v)
                    for v in base.per_class]  # a class the base gets exactly right can gain nothing
    values = [checked.loss, *checked.per_class]
    for value in values:
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or float(value) < 0:
            raise ValueError(f"a loss must be a number >= 0 (NaN or infinity for a model that"
                             f" diverged), got {value!r}")
    if len(checked.per_class) != len(base_classes) or not base_classes:
        raise ValueError(f"the base covers {len(base_classes)} classes and the checkpoint"
                         f" {len(checked.per_class)}: compare on the same validation set")
    bar = cfg.min_gain if min_gain is None else min(max(float(min_gain), 0.0), cfg.min_gain)
    figures = {"base_loss": base_loss}
    if not all(math.isfinite(float(v)) for v in values):
        return Verdict("holdout", DISPUTE, "holdout-worse", figures)
    loss = float(checked.loss)
    best = max((b - float(c)) / b if b else 0.0 for b, c in zip(base_classes, checked.per_class, strict=True))
    figures |= {"loss": loss, "gain": (base_loss - loss) / base_loss, "class_gain": best, "min_gain": bar}
    if cfg.max_rise > 0 and loss > base_loss * (1 + cfg.max_rise):
        return Verdict("holdout", DISPUTE, "holdout-worse", figures)
    if best >= bar:
        return Verdict("holdout", AGREE, "ok", figures)
    if loss > base_loss * (1 + WORSE_MARGIN):
        return Verdict("holdout", DISPUTE, "holdout-worse", figures)
    return Verdict("holdout", DISPUTE, "holdout-no-gain", figures)


def gain_bar(recent: Sequence[float], cfg: Verification) -> float:
    """The ``min_gain`` bar a verifier holds checkpoints to, given the gains it measured lately.

    ``min(cfg.min_gain, GAIN_SHARE * median(recent))``, ``recent`` being the best class gains
    (``class_gain``) of the last :data:`RECENT_GAINS` checkpoints this verifier judged, whoever
    their authors; ``cfg.min_gain`` until it has judged :data:`MIN_RECENT` of them. A swarm
    that has converged teaches little per update: in the memory driver's verification scenario
    (IID shards, softmax regression) the honest updates' median best class gain fell to about
    0.25 after a few rounds, so a fixed bar of 0.25 disputed a third or more of every honest
    author's updates and standings drifted toward the threshold by chance. Held to half of what
    the swarm's updates typically show, a checkpoint must teach at least half as much as its
    peers do; a member that republishes its merge shows far less (four real processes: a lazy
    member's median 0.10 against the honest members' 0.58 to 0.79). The median of many authors'
    gains moves only when most of them do, so a few liars cannot lower the bar for themselves.

    Args:
        recent: best class gains, any order (non-finite ones are left out).
        cfg: the manifest's verification parameters.

    Returns:
        The bar, ``0 <= bar <= cfg.min_gain``.
    """
    finite = [float(g) for g in recent if math.isfinite(g)]
    if len(finite) < MIN_RECENT:
        return cfg.min_gain
    return min(cfg.min_gain, max(GAIN_SHARE * statistics.median(finite), 0.0))


def segment_rows(seed: int, rows: int, steps: int, batch_size: int) -> np.ndarray:
    """The rows a replayable training segment trains on, batch by batch: anyone recomputes them.

    NumPy's ``default_rng(seed)`` (PCG64, the same stream on every platform NumPy supports)
    draws ``steps * batch_size`` row indices uniformly with replacement, as a node draws its
    batches. A replayable update names its data (the public chunks, concatenated in the order
    named), its ``seed`` and ``steps``; a verifier draws the same rows and trains them again
    (:func:`learnae.training.replay.train_segment`).

    Args:
        seed: the segment's seed, 0 <= seed < 2**63.
        rows: rows in the named data, >= 1.
        steps: batches, >= 1.
        batch_size: rows per batch, >= 1.

    Returns:
        Row indices, shape ``(steps, batch_size)``, int64.

    Raises:
        ValueError: an argument out of range.
    """
    seed = _integer("seed", seed, 0)
    if seed >= 2**63:
        raise ValueError(f"seed must be below 2**63, got {seed}")
    rows, steps, batch_size = (_integer(name, v, 1) for name, v in
                               (("rows", rows), ("steps", steps), ("batch_size", batch_size)))
    return np.random.default_rng(seed).integers(0, rows, size=(steps, batch_size), dtype=np.int64)


def replay_verdict(
    base: Mapping[str, np.ndarray], claimed: Mapping[str, np.ndarray], replayed: Mapping[str, np.ndarray],
    tolerance: float = REPLAY_TOLERANCE,
) -> Verdict:
    """Judge a checkpoint by training it again: Proof-of-Learning's check (Jia et al., IEEE S&P 2021).

    ``distance = ||claimed - replayed|| / ||claimed - base||``: how far the replay lands from
    the checkpoint, relative to the update the checkpoint claims (all tensors flattened into
    one vector, float64, Euclidean norm). ``agree`` (``ok``) when ``distance <= tolerance``,
    else ``dispute`` ``replay-mismatch``: the update was not trained from ``base`` on the named
    data with the named seed (a ``false-data-claim``, or training that did not happen). A zero
    update replays to a distance of 0 if the replay is equal too, else infinity. With
    TensorFlow's op determinism on one CPU the replay is bit-identical (``bench/verify.py``);
    the tolerance leaves room for other CPUs' floating-point paths.

    Args:
        base: the weights the segment started from (path -> array).
        claimed: the checkpoint's weights, the same paths and shapes.
        replayed: the verifier's replay's, the same paths and shapes.
        tolerance: the largest distance agreed with, >= 0.

    Returns:
        A :class:`Verdict` of method ``replay``; figures ``replay_distance`` (when finite) and
        ``update_norm``.

    Raises:
        ValueError: the three differ in paths or shapes, or ``tolerance`` is negative.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    keys = sorted(claimed)
    for name, weights in (("base", base), ("replayed", replayed)):
        if sorted(weights) != keys or any(np.shape(weights[k]) != np.shape(claimed[k]) for k in keys):
            raise ValueError(f"{name} has other weight paths or shapes than the checkpoint")

    def norm(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
        return math.sqrt(sum(float(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2))
                             for k in keys))

    update, gap = norm(claimed, base), norm(claimed, replayed)
    distance = gap / update if update > 0 else (0.0 if gap == 0 else math.inf)
    figures = {"update_norm": update}
    if math.isfinite(distance):
        figures["replay_distance"] = distance
    if distance <= tolerance:
        return Verdict("replay", AGREE, "ok", figures)
    return Verdict("replay", DISPUTE, "replay-mismatch", figures)


def claims_verdict(samples: int, step: int, previous_step: int | None, batch_size: int) -> Verdict:
    """Judge a checkpoint's ``samples`` against the steps it claims since the previous one.

    ``steps = step - previous_step``; the first checkpoint (``previous_step`` None), and one
    whose step is below the previous (its author restarted its count), have ``steps = step``.
    ``dispute`` ``samples-inconsistent`` when ``samples > steps * batch_size`` (more examples
    than the batches could hold), else ``agree``. This checks the claims against each other
    only: how many steps were really trained cannot be seen in the ledger.

    Args:
        samples: the checkpoint's ``samples``, >= 0.
        step: its ``step`` (local steps, i.e. batches, in all), >= 0.
        previous_step: the ``step`` of the author's previous checkpoint, or None.
        batch_size: the manifest's ``batch_size``, >= 1.

    Returns:
        A :class:`Verdict` of method ``claims``; figures ``samples`` and ``steps``.

    Raises:
        ValueError: an argument is not an integer in its range.
    """
    samples = _integer("samples", samples, 0)
    step = _integer("step", step, 0)
    batch_size = _integer("batch_size", batch_size, 1)
    if previous_step is not None:
        previous_step = _integer("previous_step", previous_step, 0)
    steps = step if previous_step is None or step < previous_step else step - previous_step
    figures = {"samples": float(samples), "steps": float(steps)}
    if samples > steps * batch_size:
        return Verdict("claims", DISPUTE, "samples-inconsistent", figures)
    return Verdict("claims", AGREE, "ok", figures)


# ---------------------------------------------------------------------------- standings
def standings(
    attestations: Iterable[AttestationLike],
    candidates_of: Callable[[str], Iterable[bytes]] | None,
    cfg: Verification,
    committees: dict[tuple[str, bytes], tuple[bytes, ...]] | None = None,
) -> dict[bytes, Standing]:
    """Each judged author's standing, from the attestations about its checkpoints.

    The Beta reputation system (Jøsang & Ismail, *The Beta Reputation System*, 2002):
    ``score = (prior_agree + A) / (prior_agree + prior_dispute + A + D)``, where ``A`` and
    ``D`` are the weighted agreements and disputes about the author's checkpoints, and the
    author is flagged when ``score < threshold``. With the defaults (priors 3 and 1, threshold
    0.5) an author is flagged once ``D > A + 2``: after 3 disputes by committee members and no
    agreement (3/7 = 0.43; after 2 it stands at exactly 0.5), or 9 by members outside the
    committees (9 x 0.25 = 2.25); each agreement makes up for one dispute.

    Counted:

    - one attestation per verifier and checkpoint: its first in the given order;
    - none about the verifier's own checkpoints;
    - weight 1 when the verifier is in the checkpoint's :func:`committee` over
      ``candidates_of(checkpoint)`` (every attestation weighs 1 when ``candidates_of`` is
      None), ``unselected_weight`` otherwise, so members who pick their targets count less;
    - in two passes: the verifiers flagged in the first pass do not count in the second, whose
      result is returned. A member disputing everyone is outvoted once its own checkpoints
      are disputed, and a single liar cannot flag members that others vouch for.

    The result depends on the attestations and their order only (sums are exactly rounded),
    so every member holding the same ledger computes the same standings.

    Args:
        attestations: the ledger's attestations, in ledger order.
        candidates_of: ``checkpoint id -> candidate verifier keys`` (as given to
            :func:`committee`), or None to weigh every attestation 1.
        cfg: the manifest's verification parameters.
        committees: a cache of the committees computed, by ``(checkpoint, subject)``, kept by
            a caller that computes standings again as attestations arrive; valid only while
            ``candidates_of`` gives the same (the caller clears it when they change).

    Returns:
        ``author key -> Standing`` for every author some other member judged. An author not
        in it stands at the prior, ``prior_agree / (prior_agree + prior_dispute)``, unflagged.

    Raises:
        InvalidCID: ``candidates_of`` is given and a checkpoint is not a transaction id.
    """
    counted: list[tuple[bytes, bytes, bool, float]] = []  # (subject, verifier, agrees, weight)
    seen: set[tuple[str, bytes]] = set()
    committees = {} if committees is None else committees
    for att in attestations:
        key = (att.checkpoint, att.verifier)
        if att.verifier == att.subject or key in seen:
            continue
        seen.add(key)
        weight = 1.0
        if candidates_of is not None:
            judged = (att.checkpoint, att.subject)
            if judged not in committees:
                committees[judged] = committee(
                    att.checkpoint, att.subject, candidates_of(att.checkpoint), cfg
                )
            if att.verifier not in committees[judged]:
                weight = cfg.unselected_weight
        counted.append((att.subject, att.verifier, att.verdict == AGREE, weight))

    first = _tally(counted, frozenset(), cfg)
    flagged = frozenset(author for author, s in first.items() if s.flagged)
    return _tally(counted, flagged, cfg)


def _tally(
    counted: Sequence[tuple[bytes, bytes, bool, float]],
    ignored: frozenset[bytes],
    cfg: Verification,
) -> dict[bytes, Standing]:
    """Standings from counted attestations, leaving out those by ``ignored`` verifiers."""
    agree: dict[bytes, list[float]] = {}
    dispute: dict[bytes, list[float]] = {}
    for subject, verifier, agrees, weight in counted:
        agree.setdefault(subject, [])
        dispute.setdefault(subject, [])
        if verifier not in ignored:
            (agree if agrees else dispute)[subject].append(weight)
    out = {}
    for subject in agree:
        a, d = math.fsum(agree[subject]), math.fsum(dispute[subject])
        score = (cfg.prior_agree + a) / (cfg.prior_agree + cfg.prior_dispute + a + d)
        out[subject] = Standing(a, d, score, score < cfg.threshold, len(dispute[subject]))
    return out


# ---------------------------------------------------------------------------------- cap
def cap_samples(samples: Sequence[int], cap: float) -> list[int]:
    """Bound sample-count claims: each at most ``cap`` times the median claim.

    The bound is ``max(1, floor(cap * median))`` with the lower median (of two claims, the
    smaller: a median of two would be their mean, which one huge claim drags along). So under
    the ``mean`` merge rule no single claim outweighs ``cap`` typical ones.

    Args:
        samples: the ``samples`` of the contributions merged together (own included), >= 0.
        cap: the manifest's ``sample_cap``, > 0.

    Returns:
        The capped counts, in the given order (empty for no input).

    Raises:
        ValueError: a count is not an integer >= 0, or ``cap`` is not a finite number > 0.
    """
    factor = _positive("cap", cap)
    counts = [_integer("a samples count", s, 0) for s in samples]
    if not counts:
        return []
    bound = max(1, math.floor(factor * statistics.median_low(counts)))
    return [min(s, bound) for s in counts]
