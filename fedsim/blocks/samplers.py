"""Client samplers: which partitions take part in a round, and how to reweight them.

A sampler draws a cohort S_t ⊆ {0, …, M−1} for server round t = 1, 2, … and gives every sampled
client a multiplier a_m such that, for any client vectors v_m and weights w_m,

    E[ Σ_{m∈S_t} a_m w_m v_m ] = Σ_{m<M} w_m v_m .

For samplers without replacement a_m = 1/π_m with π_m = P(m ∈ S_t), the Horvitz–Thompson
estimator (Horvitz & Thompson, JASA 1952); sampling with replacement uses Hansen–Hurwitz
multiplicities instead.

Samplers are orthogonal to methods: a strategy asks ``sampler.sample(rnd)`` and uses the ids,
``scale`` and ``inclusion`` of the returned :class:`Cohort`. ``sample`` is a pure function of
``(seed, rnd)``: every draw comes from :func:`fedsim.rng.generator` (server pid) with the sampler's
name as purpose (and the meta-epoch instead of the round for ``cyclic``), so any process can
recompute any round's cohort.

Config keys (``conf/sampler/<name>.yaml``):

=================  ==========================================================================
``name``           one of :data:`SAMPLER_NAMES`
``cohort_size``    C, clients per round (all but ``full``)
``reshuffle``      ``cyclic``: draw a new permutation every meta-epoch (default true)
``by``             ``importance``: marginals ∝ ``smoothness`` L_m | ``sqrt_smoothness`` √L_m |
                   ``size`` n_m | ``uniform``
``probabilities``  ``importance``: explicit weights, one per client (overrides ``by``)
=================  ==========================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np

from fedsim.errors import ConfigError, unknown
from fedsim.rng import generator

SAMPLER_NAMES = ("full", "uniform", "with_replacement", "importance", "cyclic")
IMPORTANCE_BY = ("bound", "smoothness", "sqrt_smoothness", "size", "uniform")


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Cohort:
    """The clients of one round.

    Attributes:
        ids: sorted, unique partition ids sampled this round (int64).
        scale: a_m, aligned with ``ids``, such that
            E[Σ_{m∈S} a_m w_m v_m] = Σ_m w_m v_m.
        inclusion: π_m = P(m ∈ S), aligned with ``ids``.
    """

    ids: np.ndarray
    scale: np.ndarray
    inclusion: np.ndarray

    def __post_init__(self) -> None:
        ids = np.array(self.ids, dtype=np.int64)
        scale = np.array(self.scale, dtype=np.float64)
        inclusion = np.array(self.inclusion, dtype=np.float64)
        if not (ids.shape == scale.shape == inclusion.shape) or ids.ndim != 1:
            raise ValueError("Cohort arrays must be 1-D and aligned")
        if ids.size > 1 and np.any(np.diff(ids) <= 0):
            raise ValueError("Cohort ids must be sorted and unique")
        object.__setattr__(self, "ids", _frozen(ids))
        object.__setattr__(self, "scale", _frozen(scale))
        object.__setattr__(self, "inclusion", _frozen(inclusion))

    def __len__(self) -> int:
        return int(self.ids.size)


def unbiased_sum(
    cohort: Cohort,
    values: np.ndarray,
    weights: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """Σ_{m∈S} a_m w_m v_m: an unbiased estimate of Σ_m w_m v_m over all clients.

    ``values`` (and ``weights``) are aligned with ``ids``, a subset of the cohort's ids in the
    same order (default: all of them; a subset when some clients failed).
    """
    values = np.asarray(values, dtype=np.float64)
    scale = cohort.scale if ids is None else cohort.scale[np.searchsorted(cohort.ids, ids)]
    coef = scale if weights is None else scale * np.asarray(weights, dtype=float)
    return np.tensordot(coef, values, axes=(0, 0))


@dataclass(frozen=True, eq=False)
class Sampler(ABC):
    """A client sampler over ``num_clients`` partitions; see the module docstring."""

    num_clients: int
    seed: int

    @abstractmethod
    def sample(self, rnd: int) -> Cohort:
        """The cohort of server round ``rnd`` (1, 2, ...); a pure function of (seed, rnd)."""

    @abstractmethod
    def inclusion_probabilities(self) -> np.ndarray:
        """π_m = P(m ∈ S_t) for every client (length ``num_clients``)."""

    @property
    def expected_cohort_size(self) -> float:
        """E|S_t| = Σ_m π_m (distinct clients)."""
        return float(np.sum(self.inclusion_probabilities()))

    @property
    def max_cohort_size(self) -> int:
        """The most clients a round can hold (``cohort_size`` where the sampler has one)."""
        return min(self.num_clients, int(getattr(self, "cohort_size", self.num_clients)))

    def _check_round(self, rnd: int) -> int:
        if int(rnd) != rnd or rnd < 1:
            raise ValueError(f"rounds are numbered 1, 2, ...; got {rnd!r}")
        return int(rnd)


@dataclass(frozen=True, eq=False)
class FullSampler(Sampler):
    """Full participation: S_t = {0, …, M−1}, a_m = π_m = 1."""

    def sample(self, rnd: int) -> Cohort:
        self._check_round(rnd)
        m = self.num_clients
        return Cohort(np.arange(m), np.ones(m), np.ones(m))

    def inclusion_probabilities(self) -> np.ndarray:
        return np.ones(self.num_clients)


@dataclass(frozen=True, eq=False)
class UniformSampler(Sampler):
    """C clients uniformly without replacement: π_m = C/M, a_m = M/C."""

    cohort_size: int = 1

    def sample(self, rnd: int) -> Cohort:
        rnd = self._check_round(rnd)
        m, c = self.num_clients, self.cohort_size
        ids = np.sort(generator(self.seed, rnd, "uniform").choice(m, size=c, replace=False))
        return Cohort(ids, np.full(c, m / c), np.full(c, c / m))

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self.cohort_size / self.num_clients)


@dataclass(frozen=True, eq=False)
class WithReplacementSampler(Sampler):
    """C i.i.d. uniform draws (the i.i.d. baseline of Malinovsky et al., arXiv 2302.03662).

    A client drawn k_m times appears once with the Hansen–Hurwitz multiplier
    a_m = k_m M/C (so E[a_m 1{m∈S}] = E[k_m] M/C = 1), and
    π_m = 1 − (1 − 1/M)^C.
    """

    cohort_size: int = 1

    def sample(self, rnd: int) -> Cohort:
        rnd = self._check_round(rnd)
        m, c = self.num_clients, self.cohort_size
        draws = generator(self.seed, rnd, "with_replacement").integers(0, m, size=c)
        ids, mult = np.unique(draws, return_counts=True)
        pi = np.full(ids.size, self._pi())
        return Cohort(ids, mult * (m / c), pi)

    def _pi(self) -> float:
        return 1.0 - (1.0 - 1.0 / self.num_clients) ** self.cohort_size

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self._pi())


def capped_marginals(weights: np.ndarray, cohort_size: int) -> np.ndarray:
    """Inclusion probabilities π_m ∝ w_m with Σ π = C and π ≤ 1.

    Iteratively: π_m = (C − |K|) w_m / Σ_{j∉K} w_j for clients outside the
    capped set K; every client whose π_m exceeds 1 joins K with
    π_m = 1, until none does (the classical πps construction, e.g. Särndal, Swensson &
    Wretman, *Model Assisted Survey Sampling*, §3.6). Needs at least C positive weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    c = int(cohort_size)
    if np.count_nonzero(w > 0) < c:
        raise ValueError("need at least cohort_size positive weights")
    capped = np.zeros(w.size, dtype=bool)
    while True:
        free = ~capped & (w > 0)
        pi = np.zeros_like(w)
        pi[free] = (c - capped.sum()) * w[free] / w[free].sum()
        over = pi > 1.0 + 1e-12
        if not over.any():
            break
        capped |= over
    pi[capped] = 1.0
    return np.minimum(pi, 1.0)


def systematic_sample(pi: np.ndarray, order: np.ndarray, u: float) -> np.ndarray:
    """Systematic (Madow, Ann. Math. Stat. 1949) πps sample; returns sorted ids.

    Lay the clients out in ``order`` on [0, C), client k owning the interval
    [c_{k−1}, c_k) with c_k = Σ_{j≤k} π_(j), and take the clients that
    own the points u, u+1, …, u+C−1 for u ~ U[0, 1). Since
    π_m ≤ 1, each client is hit at most once and with probability exactly
    π_m, and exactly C = Σ π clients are taken.
    """
    c = int(round(float(np.sum(pi))))
    cum = np.cumsum(pi[order])
    cum[-1] = c  # remove rounding drift so that the last point u + C - 1 < C is always owned
    pos = np.searchsorted(cum, u + np.arange(c), side="right")
    return np.sort(order[pos])


@dataclass(frozen=True, eq=False)
class ImportanceSampler(Sampler):
    """Fixed-size sampling with prescribed marginals π_m, Σ_m π_m = C.

    Each round draws a uniformly random client order and a systematic (Madow) sample over it;
    the marginals are exactly π_m and the reweighting is a_m = 1/π_m
    (Horvitz–Thompson; cf. the importance sampling of 5GCS-AB, arXiv 2306.03240, which reweights
    by 1/(M p_m)). Clients with π_m = 0 are never sampled, so the estimate is
    unbiased for the sum over clients with π_m > 0.
    """

    cohort_size: int = 1
    marginals: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def sample(self, rnd: int) -> Cohort:
        rnd = self._check_round(rnd)
        rng = generator(self.seed, rnd, "importance")
        order = rng.permutation(self.num_clients)
        ids = systematic_sample(self.marginals, order, float(rng.random()))
        pi = self.marginals[ids]
        return Cohort(ids, 1.0 / pi, pi)

    def inclusion_probabilities(self) -> np.ndarray:
        return self.marginals.copy()


@dataclass(frozen=True, eq=False)
class CyclicSampler(Sampler):
    """Regularized client participation: cyclic meta-epochs.

    Malinovsky, Horváth, Burlachenko, Richtárik, arXiv 2302.03662.

    With R = M/C rounds per meta-epoch, round t lies in meta-epoch
    e = ⌊(t−1)/R⌋ at position r = (t−1) mod R, and takes the
    clients at positions rC, …, (r+1)C − 1 of a permutation σ_e drawn
    from ``generator(seed, e, "cyclic")`` (σ_0 every meta-epoch when
    ``reshuffle`` is false). Every client takes part exactly once per meta-epoch;
    π_m = C/M, a_m = M/C.
    """

    cohort_size: int = 1
    reshuffle: bool = True

    @property
    def rounds_per_epoch(self) -> int:
        """R = M/C."""
        return self.num_clients // self.cohort_size

    def permutation(self, epoch: int) -> np.ndarray:
        """σ_e, the client order of meta-epoch ``epoch`` (0, 1, ...)."""
        e = int(epoch) if self.reshuffle else 0
        return generator(self.seed, e, "cyclic").permutation(self.num_clients)

    def sample(self, rnd: int) -> Cohort:
        rnd = self._check_round(rnd)
        m, c = self.num_clients, self.cohort_size
        epoch, r = divmod(rnd - 1, self.rounds_per_epoch)
        ids = np.sort(self.permutation(epoch)[r * c : (r + 1) * c])
        return Cohort(ids, np.full(c, m / c), np.full(c, c / m))

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self.cohort_size / self.num_clients)


# --------------------------------------------------------------------------- building


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _cohort_size(cfg: Mapping[str, Any], m: int) -> int:
    c = cfg.get("cohort_size")
    if c is None:
        raise ConfigError(f"sampler {cfg.get('name')!r} needs sampler.cohort_size")
    if isinstance(c, bool) or not isinstance(c, Real) or not float(c).is_integer():
        raise ConfigError(f"sampler.cohort_size must be an integer in [1, {m}]; got {c!r}")
    c = int(c)
    if not 1 <= c <= m:
        raise ConfigError(f"sampler.cohort_size must be in [1, num_clients={m}]; got {c}")
    return c


def _per_client(name: str, values: Any, m: int) -> np.ndarray:
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a list of {m} numbers; got {values!r}") from exc
    if arr.shape != (m,):
        raise ConfigError(f"{name} must have one entry per client ({m}); got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError(f"{name} must be finite and non-negative")
    return arr


def _importance_marginals(
    cfg: Mapping[str, Any],
    m: int,
    c: int,
    client_L: np.ndarray | None,
    sizes: np.ndarray | None,
    bound: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    probs = cfg.get("probabilities")
    if probs is not None:
        w = _per_client("sampler.probabilities", probs, m)
        what = "sampler.probabilities"
    else:
        by = _get(cfg, "by", "bound")
        if by == "bound":
            if bound is None:
                raise ConfigError(
                    "sampler.by=bound derives the marginals from 5GCS-AB's convergence bound, "
                    "which needs per-client smoothness constants; use sampler.by=size or uniform"
                )
            from fedsim.blocks.pdhg import bound_marginals

            return bound_marginals(bound[0], bound[1], c)
        if by == "uniform":
            w, what = np.ones(m), "uniform weights"
        elif by in ("smoothness", "sqrt_smoothness"):
            if client_L is None:
                raise ConfigError(
                    f"sampler.by={by} needs per-client smoothness constants L_m, which this "
                    "task does not provide; use sampler.by=size or sampler.by=uniform"
                )
            w, what = _per_client("client smoothness L_m", client_L, m), "client smoothness L_m"
            if by == "sqrt_smoothness":
                w = np.sqrt(w)
        elif by == "size":
            if sizes is None:
                raise ConfigError("sampler.by=size needs the clients' dataset sizes")
            w, what = _per_client("client dataset sizes", sizes, m), "client dataset sizes"
        else:
            raise unknown("sampler.by", by, IMPORTANCE_BY)
    if np.count_nonzero(w > 0) < c:
        raise ConfigError(
            f"{what}: at least cohort_size={c} clients need a positive weight; "
            f"got {np.count_nonzero(w > 0)}"
        )
    return capped_marginals(w, c)


def build_sampler(
    cfg: Mapping[str, Any],
    num_clients: int,
    seed: int,
    client_L: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    bound: tuple[np.ndarray, float] | None = None,
) -> Sampler:
    """The sampler described by the ``sampler`` config group (see the module docstring).

    ``cfg`` is the sampler group (``name``, ``cohort_size``, ...) or a whole config holding it
    under ``sampler``. ``client_L`` (per-client smoothness) and ``sizes`` (per-client dataset
    sizes) feed ``importance`` with ``by: smoothness`` / ``by: size``; ``bound`` = ``(L_{F,m},
    μ)`` of the uniform form feeds ``by: bound`` (:mod:`fedsim.blocks.pdhg`).
    Raises :class:`~fedsim.errors.ConfigError` for unknown names and impossible values.
    """
    if isinstance(cfg.get("sampler"), Mapping):
        cfg = cfg["sampler"]
    m = num_clients
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ConfigError(f"num_clients must be a positive integer; got {m!r}")
    m, seed = int(m), int(seed)
    name = cfg.get("name")
    if name not in SAMPLER_NAMES:
        raise unknown("sampler", name, SAMPLER_NAMES)
    if name == "full":
        return FullSampler(m, seed)
    c = _cohort_size(cfg, m)
    if name == "uniform":
        return UniformSampler(m, seed, c)
    if name == "with_replacement":
        return WithReplacementSampler(m, seed, c)
    if name == "importance":
        pi = _frozen(_importance_marginals(cfg, m, c, client_L, sizes, bound))
        return ImportanceSampler(m, seed, c, pi)
    # cyclic
    if m % c:
        divisors = [d for d in range(1, m + 1) if m % d == 0]
        raise ConfigError(
            f"sampler=cyclic needs num_clients ({m}) divisible by sampler.cohort_size ({c}), "
            f"so that a meta-epoch has a whole number of rounds; valid cohort sizes: "
            f"{', '.join(map(str, divisors))}"
        )
    reshuffle = _get(cfg, "reshuffle", True)
    if not isinstance(reshuffle, bool):
        raise ConfigError(f"sampler.reshuffle must be true or false; got {reshuffle!r}")
    return CyclicSampler(m, seed, c, reshuffle)
