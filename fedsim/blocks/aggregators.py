"""Robust aggregators Agg: (x_1, …, x_n) ∈ (ℝ^d)^n → ℝ^d, optionally behind bucketing.

The server receives n vectors, of which at most δn (δ < 1/2) may be arbitrary (Byzantine). The
guarantee sought is the one of Karimireddy, He & Jaggi, "Byzantine-robust learning on
heterogeneous datasets via bucketing", ICLR 2022 (arXiv 2006.09365):
**(δ, c)-RAgg** — if the G ≥ (1 − δ)n good inputs have pairwise expected squared distance
E‖x_i − x_j‖² ≤ σ², then E‖Agg(x_1, …, x_n) − x̄_good‖² ≤ cδσ², x̄_good the mean of the good
inputs; **(δ, c)-ARAgg** ("agnostic") if the rule does not need σ to get it.

* ``mean`` is not robust at all: one input moves it arbitrarily far.
* ``cm`` (coordinate-wise median), ``rfa`` (geometric median) and ``krum`` are *not* (δ, c)-RAgg
  by themselves (their error does not vanish with δ); behind bucketing (:func:`bucket_means`,
  s = 2 in the experiments of arXiv 2311.14127) they become (δ, c)-ARAgg (Karimireddy et al.
  2022).
* ``cc`` (centred clipping) is (δ, c)-RAgg with a τ chosen from σ and δ, started close enough to
  the good mean (Karimireddy, He & Jaggi, ICML 2021, arXiv 2012.10333; and arXiv 2006.09365).
* ``tm`` (trimmed mean with trim ≥ the number of Byzantine inputs) satisfies it too (Allouah,
  Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by mixing", AISTATS 2023).

Byz-VR-MARINA-PP (arXiv 2311.14127, Assumption 2.3) also asks ‖Agg(x)‖ ≤ F_A·max_i‖x_i‖: Krum
after bucketing has F_A = 1 and the geometric median lies in the convex hull of its inputs.

**Inputs.** The pure functions take an (n, d) float array, n ≥ 1, and return a float64 vector of
length d. Inputs must be finite (``ValueError`` otherwise): a Byzantine client can send nan or
inf, so the caller drops or replaces non-finite replies before aggregating. The rules are
*unweighted*: a client's sample count is its own claim and a Byzantine one would lie about it.

**Flower 1.42** (``flwr.server.strategy.aggregate``) has weighted ``aggregate``,
``aggregate_median``, ``aggregate_trimmed_avg`` and ``aggregate_krum``; each function below says
where it agrees with them (the tests check exactly those cases).

**State.** :class:`Aggregator` keeps no hidden state: ``init`` gives the state (cc's centre, or
``None``), ``__call__`` takes it and returns the new one next to the aggregate.

Config keys (``conf/aggregator/<name>.yaml``):

=============  ==============================================================================
``name``       one of :data:`AGGREGATOR_NAMES`
``bucketing``  all: bucket size s ≥ 1 (1: no bucketing); the rule then sees ⌈n/s⌉ bucket means
``trim``       ``tm``: inputs dropped at each end, per coordinate (null: the number of Byzantine
               clients)
``f``          ``krum``: the number of Byzantine inputs Krum assumes (null: the number of
               Byzantine clients)
``multi``      ``krum``: m ≥ 1, how many lowest-score inputs are averaged (1: Krum, > 1:
               Multi-Krum)
``iters``      ``rfa``: Weiszfeld iterations T ≥ 1 (8); ``cc``: clipping iterations ≥ 1 (3)
``nu``         ``rfa``: smoothing ν > 0 of the Weiszfeld weights (0.1)
``tau``        ``cc``: clipping radius τ > 0 (10)
=============  ==============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedsim.errors import ConfigError, int_at_least, unknown

AGGREGATOR_NAMES: tuple[str, ...] = ("mean", "cm", "tm", "krum", "rfa", "cc")

DEFAULT_ITERS: dict[str, int] = {"rfa": 8, "cc": 3}
DEFAULT_NU = 0.1
DEFAULT_TAU = 10.0


# --------------------------------------------------------------------------- pure rules


def as_inputs(xs: np.ndarray) -> np.ndarray:
    """``xs`` as a finite float64 (n, d) array with n ≥ 1, or ValueError."""
    a = np.asarray(xs, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"an aggregator takes an (n, d) array with n >= 1; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("cannot aggregate non-finite inputs (nan or inf): drop them first")
    return a


def mean(xs: np.ndarray) -> np.ndarray:
    """The plain mean (1/n) Σ_i x_i: the non-robust baseline (code name ``avg`` in the authors'
    code of arXiv 2006.09365 and 2311.14127).

    Flower's ``aggregate`` weights each input by its ``num_examples``; with equal counts it is
    this function.
    """
    return as_inputs(xs).mean(axis=0)


def coordinate_median(xs: np.ndarray) -> np.ndarray:
    """Coordinate-wise median: CM(x)_j = median(x_{1,j}, …, x_{n,j}) (``np.median``: the mean
    of the two middle values when n is even).

    Yin, Chen, Ramchandran & Bartlett, "Byzantine-robust distributed learning: towards optimal
    statistical rates", ICML 2018. Not (δ, c)-RAgg alone; (δ, c)-ARAgg after bucketing
    (arXiv 2006.09365). Identical to Flower's ``aggregate_median``, which also ignores the
    example counts.
    """
    return np.median(as_inputs(xs), axis=0)


def trimmed_mean(xs: np.ndarray, trim: int) -> np.ndarray:
    """Coordinate-wise trimmed mean: per coordinate j, sort x_{1,j}, …, x_{n,j}, drop the ``trim``
    largest and the ``trim`` smallest and average the n − 2·trim left.

    Yin, Chen, Ramchandran & Bartlett, ICML 2018; the authors' ``TM(b=f)`` trims b = the number
    of Byzantine workers. Needs n > 2·trim (ValueError otherwise); trim = 0 is the mean.

    Flower's ``aggregate_trimmed_avg(results, proportiontocut=p)`` trims ⌊p·n⌋ per side with
    p ∈ [0, 0.5) (a proportion, not a count) and ignores the example counts: it equals
    ``trimmed_mean(xs, ⌊p·n⌋)``.
    """
    a = as_inputs(xs)
    trim = count("trim", trim, 0)
    n = a.shape[0]
    if n <= 2 * trim:
        raise ValueError(f"trimmed_mean needs n > 2*trim; got n={n}, trim={trim}")
    if trim == 0:
        return a.mean(axis=0)
    part = np.partition(a, (trim, n - trim - 1), axis=0)
    return part[trim : n - trim].mean(axis=0)


def pairwise_sq_distances(xs: np.ndarray) -> np.ndarray:
    """The (n, n) matrix ‖x_i − x_j‖², computed from differences (not from Gram products, which
    lose the small distances next to large norms)."""
    a = as_inputs(xs)
    out = np.empty((a.shape[0], a.shape[0]))
    for i, row in enumerate(a):
        out[i] = np.sum(np.square(a - row), axis=1)
    return out


def krum_scores(xs: np.ndarray, f: int) -> np.ndarray:
    """Krum scores: score_i = Σ_{j ∈ N_i} ‖x_i − x_j‖², N_i the n − f − 2 inputs j ≠ i nearest
    to x_i.

    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine learning with adversaries: Byzantine
    tolerant gradient descent", NeurIPS 2017. Needs n − f − 2 ≥ 1 (ValueError otherwise).
    Flower's ``aggregate_krum`` uses max(1, n − f − 2) neighbours, the same number whenever
    n − f − 2 ≥ 1.
    """
    a = as_inputs(xs)
    f = count("f", f, 0)
    n = a.shape[0]
    k = n - f - 2
    if k < 1:
        raise ValueError(f"Krum needs n - f - 2 >= 1; got n={n}, f={f}")
    dist = pairwise_sq_distances(a)
    others = dist[~np.eye(n, dtype=bool)].reshape(n, n - 1)  # row i without its own 0
    return np.sort(others, axis=1)[:, :k].sum(axis=1)


def krum(xs: np.ndarray, f: int, multi: int = 1) -> np.ndarray:
    """(Multi-)Krum: the mean of the ``multi`` inputs of lowest :func:`krum_scores` (ties: the
    lowest index); multi = 1 returns the input of lowest score (Krum).

    Blanchard et al., NeurIPS 2017 (Krum); El Mhamdi, Guerraoui & Rouault, ICML 2018
    (Multi-Krum). Needs n − f − 2 ≥ 1 and 1 ≤ multi ≤ n. Not (δ, c)-RAgg alone; (δ, c)-ARAgg
    after bucketing (arXiv 2006.09365), with F_A = 1.

    Flower's ``aggregate_krum(results, f, to_keep)``: ``to_keep = 0`` returns the lowest-score
    input (argmin: lowest index on ties), which is ``krum(xs, f)``; ``to_keep = m > 0`` returns
    the *example-weighted* mean of the m lowest scores, which is ``krum(xs, f, m)`` when the
    counts are equal (on tied scores it may pick other inputs). The authors' code
    (``aggregator/krum.py`` of arXiv 2006.09365) returns the *sum* of the m selected inputs,
    which agrees for m = 1 only.
    """
    a = as_inputs(xs)
    multi = count("multi", multi, 1)
    if multi > a.shape[0]:
        raise ValueError(f"Multi-Krum needs multi <= n; got multi={multi}, n={a.shape[0]}")
    scores = krum_scores(a, f)
    best = np.argsort(scores, kind="stable")[:multi]
    return a[best].mean(axis=0)


def geometric_median(xs: np.ndarray, iters: int = 8, nu: float = DEFAULT_NU) -> np.ndarray:
    """Approximate geometric median argmin_z Σ_i ‖z − x_i‖ by smoothed Weiszfeld (RFA).

    From z = 0, ``iters`` times: β_i = (1/n) / max(‖z − x_i‖, ν), z ← Σ_i β_i x_i / Σ_i β_i.
    Pillutla, Kakade & Harchaoui, "Robust aggregation for federated learning", IEEE Trans.
    Signal Process. 2022 (arXiv 1912.13445), with the start z = 0, T = 8 and ν = 0.1 of the
    authors' code for arXiv 2006.09365 / 2311.14127 (``aggregator/rfa.py``). ν keeps the
    weights finite when z meets an input. Every iterate is a convex combination of the inputs
    (F_A = 1). Not (δ, c)-RAgg alone; (δ, c)-ARAgg after bucketing. Flower 1.42 has no
    geometric median.
    """
    a = as_inputs(xs)
    iters = count("iters", iters, 1)
    nu = _positive("nu", nu)
    n = a.shape[0]
    z = np.zeros(a.shape[1])
    for _ in range(iters):
        dist = np.linalg.norm(a - z, axis=1)
        beta = (1.0 / n) / np.maximum(dist, nu)
        z = beta @ a / beta.sum()
    return z


def clip(u: np.ndarray, tau: float) -> np.ndarray:
    """clip_τ(u) = min(1, τ/‖u‖)·u, row by row for a 2-D ``u``; clip_τ(0) = 0."""
    norms = np.linalg.norm(u, axis=-1, keepdims=True)
    scale = np.ones_like(norms)
    far = norms > tau
    scale[far] = tau / norms[far]
    return u * scale


def centered_clip(
    xs: np.ndarray, center: np.ndarray, tau: float = DEFAULT_TAU, iters: int = 3
) -> np.ndarray:
    """Centred clipping: from v = ``center``, ``iters`` times v ← v + (1/n) Σ_i clip_τ(x_i − v);
    returns the last v.

    Karimireddy, He & Jaggi, "Learning from history for Byzantine robust optimization", ICML
    2021 (arXiv 2012.10333); τ = 10 and 3 iterations as in the authors' code
    (``aggregator/clipping.py``), where the centre is the previous round's output. Each input
    moves v by at most τ/n per iteration. (δ, c)-RAgg for a τ tuned to σ and δ (arXiv
    2006.09365); not agnostic. Flower 1.42 has no centred clipping.
    """
    a = as_inputs(xs)
    iters = count("iters", iters, 1)
    tau = _positive("tau", tau)
    v = np.array(center, dtype=np.float64).reshape(-1)
    if v.shape != (a.shape[1],) or not np.isfinite(v).all():
        raise ValueError(f"the centre must be a finite vector of length {a.shape[1]}")
    for _ in range(iters):
        v = v + clip(a - v, tau).mean(axis=0)
    return v


def bucket_means(xs: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Bucketing (Karimireddy, He & Jaggi, ICLR 2022, arXiv 2006.09365, Algorithm 2): permute
    the inputs at random (π = ``rng.permutation(n)``), cut π into consecutive groups of s (the
    last one smaller when s does not divide n) and return the groups' means, (⌈n/s⌉, d).

    A Byzantine input then spoils at most one bucket, and the good buckets' means have s times
    less variance; the base rule is applied to the bucket means.
    """
    a = as_inputs(xs)
    s = count("bucketing", s, 1)
    n = a.shape[0]
    order = rng.permutation(n)
    return np.stack([a[order[i : i + s]].mean(axis=0) for i in range(0, n, s)])


# --------------------------------------------------------------------------- the configured rule


@dataclass(frozen=True)
class Aggregator:
    """A configured rule: bucketing with s = ``bucketing`` (if s > 1), then the base rule
    ``name`` on the bucket means. See the module docstring for the keys.

    ``trim`` is used by ``tm``, ``f`` and ``multi`` by ``krum``, ``iters`` by ``rfa`` (default 8)
    and ``cc`` (default 3), ``nu`` by ``rfa``, ``tau`` by ``cc``; the others ignore them.
    """

    name: str
    bucketing: int = 1
    trim: int = 0
    f: int = 0
    multi: int = 1
    iters: int | None = None
    nu: float = DEFAULT_NU
    tau: float = DEFAULT_TAU

    def __post_init__(self) -> None:
        if self.name not in AGGREGATOR_NAMES:
            raise unknown("aggregator", self.name, AGGREGATOR_NAMES)
        int_at_least("aggregator.bucketing", self.bucketing, 1)
        int_at_least("aggregator.trim", self.trim, 0)
        int_at_least("aggregator.f", self.f, 0)
        int_at_least("aggregator.multi", self.multi, 1)
        if self.iters is None:
            object.__setattr__(self, "iters", DEFAULT_ITERS.get(self.name))
        else:
            int_at_least("aggregator.iters", self.iters, 1)
        for key in ("nu", "tau"):
            value = getattr(self, key)
            if not is_real(value) or not 0.0 < float(value) < math.inf:
                raise ConfigError(f"aggregator.{key} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, key, float(value))

    def init(self, dim: int) -> np.ndarray | None:
        """The initial state: cc's centre 0 ∈ ℝ^dim; ``None`` for the stateless rules."""
        dim = int_at_least("dim", dim, 1)
        return np.zeros(dim) if self.name == "cc" else None

    def min_inputs(self) -> int:
        """The fewest inputs (before bucketing) the rule accepts.

        With s = ``bucketing`` the rule sees m = ⌈n/s⌉ inputs, and ⌈n/s⌉ ≥ m ⇔ n ≥ s(m − 1) + 1:
        ``tm`` needs m > 2·trim, ``krum`` needs m − f − 2 ≥ 1 and m ≥ multi, the others m ≥ 1.
        """
        s = self.bucketing
        if self.name == "tm":
            return s * (2 * self.trim) + 1
        if self.name == "krum":
            return s * (max(self.f + 3, self.multi) - 1) + 1
        return 1

    def check_inputs(self, n: int, what: str = "the cohort") -> None:
        """ConfigError, naming the key to change, if ``n`` inputs are too few for this rule."""
        need = self.min_inputs()
        if n >= need:
            return
        s = self.bucketing
        after = f" after bucketing (aggregator.bucketing={s})" if s > 1 else ""
        if self.name == "tm":
            rule = f"tm with trim={self.trim} needs more than 2*trim={2 * self.trim} inputs{after}"
            keys = "aggregator.trim" + (" or aggregator.bucketing" if s > 1 else "")
        else:
            rule = (
                f"krum with f={self.f}, multi={self.multi} needs at least "
                f"max(f + 3, multi)={max(self.f + 3, self.multi)} inputs{after}"
            )
            keys = "aggregator.f or aggregator.multi" + (
                " or aggregator.bucketing" if s > 1 else ""
            )
        raise ConfigError(
            f"aggregator {rule}, i.e. at least {need} clients, but {what} has {n}; "
            f"lower {keys}, or send more clients"
        )

    def __call__(
        self, xs: np.ndarray, state: Any, rng: np.random.Generator
    ) -> tuple[np.ndarray, Any]:
        """(aggregate, new state) of the (n, d) inputs ``xs``.

        Bucketing (s > 1) draws its permutation from ``rng``; nothing else is random, and ``rng``
        is not touched when s = 1. ``state`` is what :meth:`init` or the previous call returned:
        cc starts from that centre (``None``: from 0) and returns its output as the next
        centre, as the authors' code keeps it across rounds; the other rules return ``state``
        unchanged.
        """
        a = as_inputs(xs)
        self.check_inputs(a.shape[0], "this round's inputs")
        if self.bucketing > 1:
            a = bucket_means(a, self.bucketing, rng)
        if self.name == "mean":
            return a.mean(axis=0), state
        if self.name == "cm":
            return coordinate_median(a), state
        if self.name == "tm":
            return trimmed_mean(a, self.trim), state
        if self.name == "krum":
            return krum(a, self.f, self.multi), state
        if self.name == "rfa":
            return geometric_median(a, self.iters, self.nu), state
        center = np.zeros(a.shape[1]) if state is None else state
        out = centered_clip(a, center, self.tau, self.iters)
        return out, out.copy()


# --------------------------------------------------------------------------- building

_KEYS: dict[str, tuple[str, ...]] = {
    "mean": ("bucketing",),
    "cm": ("bucketing",),
    "tm": ("bucketing", "trim"),
    "krum": ("bucketing", "f", "multi"),
    "rfa": ("bucketing", "iters", "nu"),
    "cc": ("bucketing", "tau", "iters"),
}


def build_aggregator(cfg: Mapping[str, Any], num_byzantine: int) -> Aggregator:
    """The aggregator described by the ``aggregator`` config group (``name`` and its keys).

    A null key takes its default; ``trim`` (tm) and ``f`` (krum) default to ``num_byzantine``,
    the number of Byzantine clients of the run. Raises :class:`~fedsim.errors.ConfigError` for
    an unknown name, a key the rule does not take (listing the valid ones) and impossible values.
    """
    name = cfg.get("name")
    if name not in AGGREGATOR_NAMES:
        raise unknown("aggregator", name, AGGREGATOR_NAMES)
    num_byzantine = int_at_least("num_byzantine", num_byzantine, 0)
    keys = _KEYS[name]
    extra = sorted(str(key) for key in cfg if key != "name" and key not in keys)
    if extra:
        bad, valid = ", ".join(extra), ", ".join(keys)
        raise ConfigError(f"aggregator {name!r} takes no key(s) {bad}; valid keys: {valid}")
    kwargs = {key: cfg[key] for key in keys if cfg.get(key) is not None}
    if name == "tm":
        kwargs.setdefault("trim", num_byzantine)
    if name == "krum":
        kwargs.setdefault("f", num_byzantine)
    return Aggregator(name=name, **kwargs)


# --------------------------------------------------------------------------- helpers


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def count(name: str, value: object, low: int) -> int:
    """``value`` as an int if it is an integer ``>= low``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _positive(name: str, value: object) -> float:
    if not is_real(value) or not 0.0 < float(value) < math.inf:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)
