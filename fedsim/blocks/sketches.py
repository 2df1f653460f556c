"""Random diagonal sketches ``S ∈ ℝ^{d×d}`` with ``E[S] = I`` for MAST (model-agnostic sparsified
training; Demidovich, Malinovsky, Shulgin, Richtárik, arXiv 2311.16086, Assumption 1).

Every sketch here is diagonal, ``S = Σ_{j∈U} s_j e_j e_jᵀ``: a support ``U`` (the kept
coordinates) and a scale ``s_j > 0`` per kept coordinate. A draw is a :class:`Draw`; it acts on
vectors by

    S z = (s ⊙ z_U) scattered on U,        Sᵀ = S,        y = v + S(x − v)  (the sketched model).

Because ``S`` is diagonal, ``y`` differs from the shift ``v`` only on ``U`` and ``Sᵀ∇f(y)`` is
zero off ``U``: both directions cross the wire as the ``|U|`` values on ``U``, the receiver
re-derives ``U`` from the shared seed (:class:`SketchSource`), so indices are never sent.

The spectral constants of the paper (Section 3): ``L_D = λ_max(E[SᵀS])``, ``μ_D = λ_min(E[SᵀS])``
and ``L_S^max = sup_S λ_max(SᵀS)``; for diagonal sketches ``E[SᵀS] = Diag(E[s_j² 1{j∈U}])``.

Sketches (``method.sketch.name``), with ``(L_D, μ_D, L_S^max)``:

* ``identity``: ``S = I``; (1, 1, 1).
* ``bernoulli`` (independent sparsification, Example 1): ``U = {j: c_j = 1}`` with independent
  ``c_j ~ Bernoulli(p_j)``, ``s_j = 1/p_j``; ``E[SᵀS] = Diag(1/p_j)``:
  (``1/p_min``, ``1/p_max``, ``1/p_min²``).
* ``rand_k`` (Random-K, Example 2, ``q = K/d``): ``U`` a uniform K-subset, ``s_j = d/K``;
  ``E[SᵀS] = (d/K) I``: (``d/K``, ``d/K``, ``d²/K²``).
* ``partition``: one uniform random partition of the coordinates into ``M`` blocks per draw
  (``owner_j = (π_j + r) mod M``, π a uniform permutation, r a uniform shift); client ``m``
  keeps block ``m mod M`` scaled by ``M``. ``P(j ∈ U) = 1/M``, so each client's sketch is
  unbiased, and ``E[SᵀS] = M I``: (``M``, ``M``, ``M²``). This is the distributed use the paper
  links MAST to (independent subnetwork training): the clients' blocks tile the model.

``partition`` draws are shared by the whole cohort (one partition, every client its block); the
others are the client's own. :class:`SketchSource` gives the generator of every draw, from
``(seed, round, "mast/sketch", pid)`` for fresh draws each round or ``(seed, j, "mast/set", pid)``
for the ``j``-th member of a fixed finite set (``pid`` = the server's for shared draws).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from fedsim.errors import ConfigError, unknown
from fedsim.rng import SERVER, generator

SKETCH_NAMES: tuple[str, ...] = ("identity", "bernoulli", "rand_k", "partition")
FRESH, MEMBER, EVAL = "mast/sketch", "mast/set", "mast/eval-set"


# --------------------------------------------------------------------------- one draw
@dataclass(frozen=True, eq=False)
class Draw:
    """One diagonal sketch ``S = Σ_{j∈U} s_j e_j e_jᵀ``: sorted support ``idx`` and ``scale``."""

    dim: int
    idx: np.ndarray
    scale: np.ndarray

    @property
    def size(self) -> int:
        """``|U|``: the values that cross the wire for this sketch."""
        return int(self.idx.size)

    def matrix(self) -> np.ndarray:
        """``S`` as a dense ``d × d`` matrix (tests)."""
        out = np.zeros((self.dim, self.dim))
        out[self.idx, self.idx] = self.scale
        return out

    def apply(self, z: np.ndarray) -> np.ndarray:
        """``S z`` (dense, length d)."""
        out = np.zeros(self.dim)
        out[self.idx] = self.scale * z[self.idx]
        return out

    def sketched_values(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``(v + S(x − v))_U``: the values of the sketched model on the support."""
        return v[self.idx] + self.scale * (x[self.idx] - v[self.idx])

    def point(self, values: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``y = v + S(x − v)`` rebuilt from its values on ``U`` and the shift ``v``."""
        y = np.array(v, dtype=np.float64, copy=True)
        y[self.idx] = values
        return y

    def back_values(self, g: np.ndarray) -> np.ndarray:
        """``(Sᵀ g)_U = s ⊙ g_U``: the gradient sketched back, as its values on ``U``."""
        return self.scale * g[self.idx]

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """The dense vector that is ``values`` on ``U`` and zero elsewhere."""
        out = np.zeros(self.dim)
        out[self.idx] = values
        return out


# --------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Sketch(ABC):
    """A distribution ``D`` of diagonal sketches on ``ℝ^dim`` with ``E[S] = I``."""

    dim: int
    name: ClassVar[str]
    shared: ClassVar[bool] = False  # one draw for the whole cohort (each client its block)

    @abstractmethod
    def draw(self, rng: np.random.Generator, pid: int = 0) -> Draw:
        """One sketch (client ``pid``'s block for shared sketches)."""

    @abstractmethod
    def gram_diagonal(self) -> np.ndarray:
        """The diagonal of ``E[SᵀS]``."""

    @property
    def L_D(self) -> float:  # noqa: N802 - the paper's symbol
        """``λ_max(E[SᵀS])``."""
        return float(np.max(self.gram_diagonal()))

    @property
    def mu_D(self) -> float:  # noqa: N802 - the paper's symbol
        """``λ_min(E[SᵀS])``."""
        return float(np.min(self.gram_diagonal()))

    @property
    @abstractmethod
    def L_max(self) -> float:  # noqa: N802 - the paper's L_S^max
        """``sup_S λ_max(SᵀS)`` over the support of ``D``."""

    def values_per_draw(self) -> int | None:
        """``|U|`` when every draw keeps the same number of coordinates, else None."""
        return None


@dataclass(frozen=True)
class IdentitySketch(Sketch):
    """``S = I`` always: MAST is the original problem and DSGD is (S)GD."""

    name: ClassVar[str] = "identity"

    def draw(self, rng: np.random.Generator, pid: int = 0) -> Draw:
        return Draw(self.dim, np.arange(self.dim), np.ones(self.dim))

    def gram_diagonal(self) -> np.ndarray:
        return np.ones(self.dim)

    @property
    def L_max(self) -> float:  # noqa: N802
        return 1.0

    def values_per_draw(self) -> int:
        return self.dim


@dataclass(frozen=True)
class BernoulliSketch(Sketch):
    """Independent sparsification (MAST, Example 1): ``S = Diag(c_j/p_j)``, ``c_j ~ Bern(p_j)``.

    ``p``: one probability per coordinate (length ``dim``), each in (0, 1]. ``E[S] = I`` and
    ``E[SᵀS] = Diag(1/p_j)``; ``L_D = 1/p_min``, ``μ_D = 1/p_max``, ``L_S^max = 1/p_min²``.
    """

    p: np.ndarray = field(default_factory=lambda: np.ones(0))
    name: ClassVar[str] = "bernoulli"

    def draw(self, rng: np.random.Generator, pid: int = 0) -> Draw:
        keep = rng.random(self.dim) < self.p
        idx = np.flatnonzero(keep)
        return Draw(self.dim, idx, 1.0 / self.p[idx])

    def gram_diagonal(self) -> np.ndarray:
        return 1.0 / self.p

    @property
    def L_max(self) -> float:  # noqa: N802
        return float(1.0 / np.min(self.p) ** 2)


@dataclass(frozen=True)
class RandKSketch(Sketch):
    """Random-K (MAST, Example 2): ``S = (d/K) Σ_{j∈U} e_j e_jᵀ``, ``U`` a uniform K-subset;
    ``E[SᵀS] = (d/K) I``: ``L_D = μ_D = d/K = 1/q``, ``L_S^max = (d/K)²``."""

    k: int = 1
    name: ClassVar[str] = "rand_k"

    def draw(self, rng: np.random.Generator, pid: int = 0) -> Draw:
        idx = np.sort(rng.choice(self.dim, size=self.k, replace=False))
        return Draw(self.dim, idx, np.full(self.k, self.dim / self.k))

    def gram_diagonal(self) -> np.ndarray:
        return np.full(self.dim, self.dim / self.k)

    @property
    def L_max(self) -> float:  # noqa: N802
        return float((self.dim / self.k) ** 2)

    def values_per_draw(self) -> int:
        return self.k


@dataclass(frozen=True)
class PartitionSketch(Sketch):
    """A random partition of the coordinates into ``blocks = M`` blocks, client ``m`` keeps
    block ``m mod M`` scaled by ``M`` (module docstring): ``E[S_m] = I``, ``E[S_mᵀS_m] = M I``,
    ``L_D = μ_D = M``, ``L_S^max = M²``; the blocks of one draw are disjoint and cover ℝ^d."""

    blocks: int = 1
    name: ClassVar[str] = "partition"
    shared: ClassVar[bool] = True

    def owners(self, rng: np.random.Generator) -> np.ndarray:
        """``owner_j = (π_j + r) mod M``: one owner per coordinate, ``P(owner_j = m) = 1/M``."""
        pi = rng.permutation(self.dim)
        r = int(rng.integers(self.blocks))
        return (pi + r) % self.blocks

    def draw(self, rng: np.random.Generator, pid: int = 0) -> Draw:
        idx = np.flatnonzero(self.owners(rng) == pid % self.blocks)
        return Draw(self.dim, idx, np.full(idx.size, float(self.blocks)))

    def gram_diagonal(self) -> np.ndarray:
        return np.full(self.dim, float(self.blocks))

    @property
    def L_max(self) -> float:  # noqa: N802
        return float(self.blocks) ** 2


# --------------------------------------------------------------------------- config
SKETCH_KEYS: dict[str, tuple[str, ...]] = {
    "identity": (),
    "bernoulli": ("p",),
    "rand_k": ("q", "k"),
    "partition": ("blocks",),
}


def _real(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        return math.nan
    return float(value)


def _probabilities(value: object, dim: int) -> np.ndarray:
    """``bernoulli``'s ``p``: one number (every coordinate) or ``dim`` numbers, each in (0, 1]."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        p = np.array([_real(v) for v in value], dtype=float)
        if p.size != dim:
            raise ConfigError(
                f"method.sketch.p has {p.size} probabilities but the model has d={dim} "
                "coordinates: give one number or one per coordinate"
            )
    else:
        p = np.full(dim, _real(value))
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"method.sketch.p must lie in (0, 1] for every coordinate, got p_{j} = {float(p[j])!r}"
        )
    return p


def _k_of(cfg: Mapping[str, Any], dim: int) -> int:
    """``rand_k``'s K: ``k`` if given (1 ≤ K ≤ d), else ``max(1, round(q·d))``; q ∈ (0, 1]."""
    q = _real(cfg.get("q", 1.0) if cfg.get("q") is not None else 1.0)
    if not 0 < q <= 1:
        raise ConfigError(f"method.sketch.q = K/d must lie in (0, 1], got {cfg.get('q')!r}")
    k = cfg.get("k")
    if k is None:
        return max(1, round(q * dim))
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ConfigError(f"method.sketch.k must be an integer >= 1, got {k!r}")
    if k > dim:
        raise ConfigError(
            f"method.sketch.k={k} is larger than the model (d={dim} coordinates): "
            f"use 1 <= k <= {dim}"
        )
    return int(k)


def build_sketch(cfg: Mapping[str, Any], dim: int, num_clients: int = 1) -> Sketch:
    """The sketch distribution of ``method.sketch`` for models of ``dim`` coordinates.

    Keys: ``name`` (:data:`SKETCH_NAMES`); ``rand_k``: ``q`` ∈ (0, 1] and ``k`` (null: from
    ``q``); ``bernoulli``: ``p`` (a number or ``dim`` numbers in (0, 1]); ``partition``:
    ``blocks`` (null: ``num_clients``), at most ``dim``. Keys of other sketches are ignored (the
    yaml lists them all). Raises :class:`~fedsim.errors.ConfigError` on impossible values.
    """
    name = cfg.get("name")
    if name not in SKETCH_NAMES:
        raise unknown("method.sketch.name", name, SKETCH_NAMES)
    if name == "identity":
        return IdentitySketch(dim)
    if name == "bernoulli":
        return BernoulliSketch(dim, _probabilities(cfg.get("p", 1.0), dim))
    if name == "rand_k":
        return RandKSketch(dim, _k_of(cfg, dim))
    blocks = cfg.get("blocks")
    blocks = num_clients if blocks is None else blocks
    if isinstance(blocks, bool) or not isinstance(blocks, Integral) or blocks < 1:
        raise ConfigError(f"method.sketch.blocks must be an integer >= 1, got {blocks!r}")
    if blocks > dim:
        raise ConfigError(
            f"method.sketch.blocks={blocks} is larger than the model (d={dim} coordinates): "
            "some blocks would be empty"
        )
    return PartitionSketch(dim, int(blocks))


def resolved_sketch_cfg(cfg: Mapping[str, Any], sketch: Sketch) -> dict[str, Any]:
    """``cfg`` with the derived values filled in (``k`` of ``rand_k``, ``blocks``), so a resolved
    config builds the same sketch again."""
    out = dict(cfg)
    if isinstance(sketch, RandKSketch):
        out["k"] = sketch.k
    if isinstance(sketch, PartitionSketch):
        out["blocks"] = sketch.blocks
    return out


# --------------------------------------------------------------------------- shared draws
@dataclass(frozen=True)
class SketchSource:
    """Where client ``pid``'s sketches come from, so that server and client draw the same ones.

    ``fresh(rnd, pid)``: a new draw from ``D`` for round ``rnd``; ``member(j, pid)``: the ``j``-th
    sketch of client ``pid``'s fixed finite set ``{S_{pid,0}, …, S_{pid,N−1}}`` (``N =
    num_sketches``); ``evaluation(j, pid)``: the ``j``-th sketch of a fixed set used only to
    estimate ``f_D`` in the metrics. Shared sketches draw with the server's key (one partition
    for everyone), the others with the client's.
    """

    sketch: Sketch
    seed: int

    def _rng(self, key: int, purpose: str, pid: int) -> np.random.Generator:
        return generator(self.seed, key, purpose, SERVER if self.sketch.shared else pid)

    def fresh(self, rnd: int, pid: int) -> Draw:
        return self.sketch.draw(self._rng(rnd, FRESH, pid), pid)

    def member(self, j: int, pid: int) -> Draw:
        return self.sketch.draw(self._rng(j, MEMBER, pid), pid)

    def evaluation(self, j: int, pid: int) -> Draw:
        return self.sketch.draw(self._rng(j, EVAL, pid), pid)

    def finite_set(self, count: int, pid: int, purpose: str = MEMBER) -> list[Draw]:
        """The first ``count`` members (``purpose`` EVAL: of the evaluation set)."""
        pick = self.member if purpose == MEMBER else self.evaluation
        return [pick(j, pid) for j in range(count)]
