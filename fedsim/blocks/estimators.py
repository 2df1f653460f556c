"""Gradient estimators for BiasedSGD, with their Biased ABC constants and ``auto`` stepsizes.

Demidovich, Malinovsky, Sokolov & Richtárik, "A guide through the zoo of biased SGD"
(arXiv 2305.16296). BiasedSGD is ``x^{t+1} = x^t − γ g(x^t)`` for an estimator ``g`` of
``∇f`` of a finite sum ``f = (1/m) Σ_i f_i`` (each ``f_i`` ``L_i``-smooth, ``f`` ``L₀``-smooth),
and the paper's **Biased ABC** assumption asks, for all ``x``::

    (i)  ⟨∇f(x), E g(x)⟩ ≥ b‖∇f(x)‖² − c,
    (ii) E‖g(x)‖² ≤ 2A(f(x) − f^inf) + B‖∇f(x)‖² + C.

Each estimator class states constants ``(A, B, C, b, c)`` for it (:meth:`Estimator.abc`, derived
in its docstring; the tests check them by Monte Carlo) and an ``auto`` stepsize
(:meth:`Estimator.auto_lr`): the authors' rules of their ``sgd-ind.py`` for independent sampling,
the non-convex theorem's ``γ = min{1/√(L₀AK), b/(L₀B)}`` otherwise.

Every constant uses lower bounds ``ℓ_i ≤ inf f_i`` (``floor``: ``(1/m) Σ_i ℓ_i``; 0 for logistic
losses) through ``‖∇f_i(x)‖² ≤ 2L_i(f_i(x) − ℓ_i)``, so ``C = 2A(f^inf − floor)``: ``f_inf`` may
be any upper bound of ``inf f`` (a smaller ``C`` for a better one).

Estimators (``method.estimator``):

- ``ind_biased``: independent sampling, each ``i`` kept with probability ``p_i``,
  ``g = (1/|S|) Σ_{i∈S} ∇f_i(x)`` (0 if ``S = ∅``) — the paper's biased "SGD-ind";
- ``ind_unbiased``: the same draw, ``g = Σ_{i∈S} ∇f_i(x)/(m p_i)`` (unbiased);
- ``compressed``: ``g = C(∇f(x))`` with a compressor of :mod:`fedsim.blocks.compressors`
  (Top-K, Rand-K without rescaling, scaled sign; the unbiased ones too);
- ``clip``: ``g = min(1, τ/‖∇f(x)‖) ∇f(x)``;
- ``full``: ``g = ∇f(x)`` (gradient descent, the reference).

Probabilities (``method.sampling``): ``uniform`` ``p_i = p``; ``importance``
``p_i = min(b L_i/Σ_j L_j, 1)`` with ``b = batch_prop·m`` (the authors' ``b_importance``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.blocks.clipping import clip_to_norm
from fedsim.blocks.compressors import Compressor
from fedsim.tasks.base import Objective

ESTIMATOR_NAMES: tuple[str, ...] = ("ind_biased", "ind_unbiased", "compressed", "clip", "full")
SAMPLINGS: tuple[str, ...] = ("uniform", "importance")
# compressors whose Biased ABC constants are stated (sign: ‖sign(v)‖² = d for every v ≠ 0, so no
# B bounds it; perm_k: its blocks are only meaningful across a cohort)
COMPRESSORS_WITH_ABC: tuple[str, ...] = (
    "identity",
    "top_k",
    "biased_rand_k",
    "scaled_sign",
    "rand_k",
    "natural",
    "qsgd",
)
EXACT_WEIGHTS_MAX = 5000  # inclusion_weights is O(m²) for unequal p_i


# --------------------------------------------------------------------------- constants


@dataclass(frozen=True)
class BiasedABC:
    """The constants of the Biased ABC assumption (module docstring, (i) and (ii))."""

    A: float  # noqa: N815 - the paper's symbols
    B: float  # noqa: N815
    C: float  # noqa: N815
    b: float
    c: float

    def first_moment_floor(self, grad_sq: float) -> float:
        """``b‖∇f‖² − c``: the least ``⟨∇f, E g⟩`` may be."""
        return self.b * grad_sq - self.c

    def second_moment_ceiling(self, f_gap: float, grad_sq: float) -> float:
        """``2A(f − f^inf) + B‖∇f‖² + C``: the most ``E‖g‖²`` may be."""
        return 2.0 * self.A * f_gap + self.B * grad_sq + self.C


@dataclass(frozen=True)
class FiniteSum:
    """What the constants depend on, for ``f = (1/m) Σ_i f_i``.

    ``L0``: smoothness of ``f``; ``L``: the ``L_i`` (length ``m``); ``f_inf``: ``inf f`` or an
    upper bound of it; ``floor``: ``(1/m) Σ_i ℓ_i`` with ``ℓ_i ≤ inf f_i``; ``spread``:
    ``σ_i ≥ sup_x ‖∇f_i(x) − ∇f(x)‖`` (needed for biased sampling with unequal ``p_i`` only);
    ``grad_bound``: ``G ≥ sup_x ‖∇f(x)‖`` (needed for ``clip`` only).
    """

    L0: float  # noqa: N815
    L: np.ndarray  # noqa: N815
    f_inf: float
    floor: float = 0.0
    spread: np.ndarray | None = None
    grad_bound: float | None = None

    @property
    def m(self) -> int:
        return int(np.size(self.L))


# --------------------------------------------------------------------------- probabilities


def uniform_probabilities(m: int, p: float) -> np.ndarray:
    """``p_i = p`` for ``m`` samples."""
    return np.full(int(m), float(p))


def importance_probabilities(L: np.ndarray, b: float) -> np.ndarray:  # noqa: N803
    """``p_i = min(b·L_i/Σ_j L_j, 1)``: inclusion proportional to smoothness, capped at 1
    (``b`` = expected batch before the cap, the authors' ``b = batch_prop·m``)."""
    L = np.asarray(L, dtype=float)  # noqa: N806
    return np.minimum(float(b) * L / float(L.sum()), 1.0)


def probability_error(p: np.ndarray) -> str | None:
    """Why ``p`` is not a vector of inclusion probabilities in ``(0, 1]``, or None."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return "there are no samples"
    bad = np.flatnonzero(~np.isfinite(p) | (p <= 0) | (p > 1))
    if bad.size:
        return f"p_{int(bad[0])} = {float(p[bad[0]])!r} lies outside (0, 1]"
    return None


def inclusion_weights(p: np.ndarray) -> np.ndarray:
    """``q_i = E[χ_i/|S|]`` (``0/0 = 0``) when each ``i`` is in ``S`` independently with
    probability ``p_i``, so that ``E[(1/|S|) Σ_{i∈S} v_i] = Σ_i q_i v_i``.

    ``q_i = p_i E[1/(1 + |S∖{i}|)] = p_i ∫₀¹ Π_{j≠i} (1 − p_j + p_j t) dt``; the integrand is a
    polynomial of degree ``m − 1``, integrated exactly by ``⌈m/2⌉``-point Gauss–Legendre.
    Equal ``p_i = p``: ``q_i = (1 − (1 − p)^m)/m`` in closed form; otherwise ``O(m²)`` (refused
    beyond :data:`EXACT_WEIGHTS_MAX` samples).
    """
    p = np.asarray(p, dtype=float)
    m = p.size
    if np.all(p == p[0]):
        return np.full(m, -math.expm1(m * math.log1p(-p[0])) / m if p[0] < 1 else 1.0 / m)
    if m > EXACT_WEIGHTS_MAX:
        raise ValueError(f"exact inclusion weights for {m} unequal p_i would cost O(m²)")
    t, w = np.polynomial.legendre.leggauss(m // 2 + 1)
    t, w = 0.5 * (t + 1.0), 0.5 * w  # nodes and weights on (0, 1)
    logs = np.log1p(-np.outer(p, 1.0 - t))  # log(1 − p_j(1 − t_k)), finite as t_k > 0
    others = logs.sum(axis=0)[None, :] - logs  # Π over j ≠ i, in logs
    return p * (np.exp(others) @ w)


def nonempty_probability(p: np.ndarray) -> float:
    """``P(S ≠ ∅) = 1 − Π_i (1 − p_i)``."""
    p = np.asarray(p, dtype=float)
    if np.any(p >= 1):
        return 1.0
    return float(-np.expm1(np.sum(np.log1p(-p))))


# --------------------------------------------------------------------------- stepsizes


def biased_sampling_lr(
    L0: float,  # noqa: N803
    L: np.ndarray,  # noqa: N803
    p: np.ndarray,
    horizon: int,
    factor: float = 1.0,
) -> float:
    """The authors' stepsize for biased independent sampling (``sgd-ind.py``):
    ``γ = factor/√(L₀·A·K)``, ``A = max_i L_i / min_i p_i``, ``K`` the horizon."""
    a = float(np.max(L)) / float(np.min(p))
    return float(factor) / math.sqrt(float(L0) * a * int(horizon))


def unbiased_sampling_lr(
    L0: float,  # noqa: N803
    L: np.ndarray,  # noqa: N803
    p: np.ndarray,
    horizon: int,
    factor: float = 1.0,
) -> float:
    """The authors' stepsize for unbiased independent sampling (``sgd-ind.py``):
    ``γ = factor·min{1/L₀, 1/√(L₀·A·K)}``, ``A = max_i (1 − p_i)L_i/(p_i m)`` (``B = 1``)."""
    p = np.asarray(p, dtype=float)
    a = float(np.max((1.0 - p) * np.asarray(L, dtype=float) / (p * p.size)))
    if a <= 0:
        return float(factor) / float(L0)
    return float(factor) * min(1.0 / float(L0), 1.0 / math.sqrt(float(L0) * a * int(horizon)))


def theorem_lr(abc: BiasedABC, L0: float, horizon: int, factor: float = 1.0) -> float:  # noqa: N803
    """``γ = factor·min{1/√(L₀AK), b/(L₀B)}`` (the non-convex theorem of arXiv 2305.16296;
    a term whose ``A`` or ``B`` is 0 sets no limit)."""
    bounds = [math.inf]
    if abc.A > 0:
        bounds.append(1.0 / math.sqrt(float(L0) * abc.A * int(horizon)))
    if abc.B > 0:
        bounds.append(abc.b / (float(L0) * abc.B))
    if not math.isfinite(min(bounds)):
        raise ValueError("A = B = 0: the theorem sets no stepsize")
    return float(factor) * min(bounds)


# --------------------------------------------------------------------------- sums of gradients


def weighted_gradient_sum(
    objective: Objective, x: np.ndarray, idx: np.ndarray, weights: np.ndarray | float = 1.0
) -> np.ndarray:
    """``Σ_{j∈idx} ν_j ∇f_j(x)``, ``f_j = ℓ_j + r`` one sample's objective, from minibatch
    gradients: samples with equal ``ν_j`` share one ``objective.grad`` call (the mean of the
    group, times its size and ``ν``). ``idx`` empty: the zero vector."""
    idx = np.asarray(idx, dtype=np.int64)
    total = np.zeros(np.size(x))
    if idx.size == 0:
        return total
    nu = np.broadcast_to(np.asarray(weights, dtype=float), idx.shape)
    values, group = np.unique(nu, return_inverse=True)
    for k, value in enumerate(values):
        members = idx[group == k]
        total += (value * members.size) * objective.grad(x, members)
    return total


def draw_independent(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """``S = {i : u_i < p_i}``, ``u ~ U[0, 1)^n`` from ``rng``: each sample independently with
    probability ``p_i`` (sorted indices)."""
    return np.flatnonzero(rng.random(np.size(p)) < p)


# --------------------------------------------------------------------------- estimators


class Estimator(ABC):
    """A gradient estimator ``g(x)`` of BiasedSGD (module docstring).

    Federated use: every client ``m`` computes :meth:`local` on its own data and the server
    :meth:`combine` s the replies; for one client holding all the data this is the paper's
    single-node estimator, and :meth:`__call__` is that.
    """

    name: ClassVar[str]
    unbiased: ClassVar[bool]

    @abstractmethod
    def abc(self, problem: FiniteSum, p: np.ndarray | None = None) -> BiasedABC:
        """The Biased ABC constants of the single-node estimator on ``problem``."""

    def auto_lr(
        self, problem: FiniteSum, horizon: int, factor: float = 1.0, p: np.ndarray | None = None
    ) -> float:
        """The ``auto`` stepsize for ``horizon`` iterations (default: :func:`theorem_lr`)."""
        return theorem_lr(self.abc(problem, p), problem.L0, horizon, factor)


class IndependentSampling(Estimator):
    """Each sample ``i`` in ``S`` independently with probability ``p_i``; a client sends
    ``s_m = Σ_{i∈S_m} ν_i ∇f_i(x)`` and ``|S_m|`` (:meth:`local`), the server normalizes the
    sum over clients (:meth:`combine`). With several clients, the pooled ``S = ∪_m S_m`` has
    the single-node law, so ``g`` is the single-node estimator on the pooled data."""

    def weights(self, p: np.ndarray) -> np.ndarray | float:
        """``ν_i``, the factor of ``∇f_i`` in a client's sum."""
        raise NotImplementedError

    def local(
        self, objective: Objective, x: np.ndarray, p: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """``(Σ_{i∈S} ν_i ∇f_i(x), |S|)`` over one client's samples (``p``: theirs)."""
        idx = draw_independent(rng, p)
        nu = self.weights(p)
        nu_s = nu if np.isscalar(nu) else np.asarray(nu)[idx]
        return weighted_gradient_sum(objective, x, idx, nu_s), int(idx.size)

    @abstractmethod
    def combine(self, sums: Sequence[np.ndarray], counts: Sequence[int], total: int) -> np.ndarray:
        """``g`` from the clients' sums and counts (``total``: ``m``, all the samples)."""

    def __call__(
        self, objective: Objective, x: np.ndarray, rng: np.random.Generator, p: np.ndarray
    ) -> np.ndarray:
        s, n = self.local(objective, x, p, rng)
        return self.combine([s], [n], objective.num_samples)

    # the authors' stepsize rule of each subclass: biased_sampling_lr or unbiased_sampling_lr
    def auto_lr(
        self, problem: FiniteSum, horizon: int, factor: float = 1.0, p: np.ndarray | None = None
    ) -> float:
        """The authors' rule (:attr:`lr_rule`) at the estimator's probabilities ``p``."""
        assert p is not None, "independent sampling needs its probabilities"
        return self.lr_rule(problem.L0, problem.L, p, horizon, factor)


class BiasedIndependentSampling(IndependentSampling):
    """``g = (1/|S|) Σ_{i∈S} ∇f_i(x)``, ``g = 0`` if ``S = ∅`` (arXiv 2305.16296,
    "SGD-ind" normalized by the realized batch: biased).

    With ``q_i = E[χ_i/|S|]`` (:func:`inclusion_weights`), ``Q = Σ_i q_i = P(S ≠ ∅)``:
    ``E g = Σ_i q_i ∇f_i``. Constants:

    - (ii) by Jensen ``E‖g‖² ≤ Σ_i q_i ‖∇f_i‖² ≤ Σ_i q_i 2L_i(f_i − ℓ_i)``, so ``B = 0``,
      ``A = max_i m q_i L_i``, ``C = 2A(f^inf − floor)`` — equality when every ``∇f_i`` is the
      same vector and ``ℓ_i = f_i = 0`` at its minimum (equal ``p_i``: ``A = Q·max_i L_i``);
    - (i) equal ``p_i``: ``E g = Q∇f``, so ``b = Q``, ``c = 0``; unequal: ``E g = Q∇f +
      Σ_i (q_i − Q/m)(∇f_i − ∇f)``, whose second term is at most ``D = Σ_i |q_i − Q/m| σ_i``
      long, and ``Q‖∇f‖² − D‖∇f‖ ≥ (Q/2)‖∇f‖² − D²/(2Q)``: ``b = Q/2``, ``c = D²/(2Q)``.

    ``q_i ≤ p_i/(m p_min)`` (``E[1/(1+X)] = ∫₀¹ E t^X dt ≤ 1/(m p_min)``), so ``A`` is at most
    the authors' ``max_i L_i/min_i p_i``, which their stepsize uses (:meth:`auto_lr`).
    """

    name: ClassVar[str] = "ind_biased"
    unbiased: ClassVar[bool] = False
    lr_rule = staticmethod(biased_sampling_lr)

    def weights(self, p: np.ndarray) -> float:
        return 1.0

    def combine(self, sums: Sequence[np.ndarray], counts: Sequence[int], total: int) -> np.ndarray:
        n = int(sum(counts))
        s = np.sum(np.stack(list(sums)), axis=0)
        return s / n if n > 0 else np.zeros_like(s)

    def abc(self, problem: FiniteSum, p: np.ndarray | None = None) -> BiasedABC:
        assert p is not None, "independent sampling needs its probabilities"
        m, big_l = problem.m, np.asarray(problem.L, dtype=float)
        q = inclusion_weights(p)
        total = nonempty_probability(p)
        a = float(np.max(m * q * big_l))
        deviation = np.abs(q - total / m)
        if np.all(np.asarray(p) == np.asarray(p)[0]):
            b, c = total, 0.0
        else:
            if problem.spread is None:
                raise ValueError("unequal p_i: the first-moment constant needs problem.spread")
            dev = float(deviation @ np.asarray(problem.spread, dtype=float))
            b, c = total / 2.0, dev * dev / (2.0 * total)
        return BiasedABC(A=a, B=0.0, C=2.0 * a * (problem.f_inf - problem.floor), b=b, c=c)


class UnbiasedIndependentSampling(IndependentSampling):
    """``g = Σ_{i∈S} ∇f_i(x)/(m p_i)`` (arXiv 2305.16296, "SGD-ind", unbiased).

    ``E g = ∇f`` (``b = 1``, ``c = 0``) and ``E‖g‖² = ‖∇f‖² + Σ_i (1 − p_i)‖∇f_i‖²/(m² p_i)
    ≤ ‖∇f‖² + 2A·(1/m)Σ_i (f_i − ℓ_i)``: ``A = max_i (1 − p_i)L_i/(m p_i)``, ``B = 1``,
    ``C = 2A(f^inf − floor)`` (Khaled & Richtárik's ABC) — equality for quadratics
    ``(L/2)‖x − c_i‖²`` with equal ``p_i``.
    """

    name: ClassVar[str] = "ind_unbiased"
    unbiased: ClassVar[bool] = True
    lr_rule = staticmethod(unbiased_sampling_lr)

    def weights(self, p: np.ndarray) -> np.ndarray:
        return 1.0 / np.asarray(p, dtype=float)

    def combine(self, sums: Sequence[np.ndarray], counts: Sequence[int], total: int) -> np.ndarray:
        return np.sum(np.stack(list(sums)), axis=0) / int(total)

    def abc(self, problem: FiniteSum, p: np.ndarray | None = None) -> BiasedABC:
        assert p is not None, "independent sampling needs its probabilities"
        p = np.asarray(p, dtype=float)
        a = float(np.max((1.0 - p) * np.asarray(problem.L, dtype=float) / (problem.m * p)))
        return BiasedABC(A=a, B=1.0, C=2.0 * a * (problem.f_inf - problem.floor), b=1.0, c=0.0)


class CompressedGradient(Estimator):
    """``g = C(∇f(x))`` with a compressor ``C`` (arXiv 2305.16296: biased compressors as
    estimators); a client sends the payload of ``C(∇f_m(x))``, the server averages
    ``Σ_m w_m C(∇f_m(x))`` (the constants are the single-node ones). ``A = C = c = 0``:

    - ``top_k``: ``⟨v, C(v)⟩ = ‖C(v)‖² ≥ (K/d)‖v‖²`` and ``‖C(v)‖² ≤ ‖v‖²``: ``b = K/d``,
      ``B = 1`` (equality: equal ``|v_i|``, resp. a ``K``-sparse ``v``);
    - ``biased_rand_k``: ``E C(v) = (K/d)v``, ``E‖C(v)‖² = (K/d)‖v‖²``: ``b = B = K/d``;
    - ``scaled_sign`` (``(‖v‖₁/d) sign v``): ``⟨v, C(v)⟩ = ‖C(v)‖² = ‖v‖₁²/d`` and
      ``‖v‖² ≤ ‖v‖₁² ≤ d‖v‖²``: ``b = 1/d``, ``B = 1``;
    - unbiased with variance ``ω`` (identity, rand_k, natural, qsgd): ``b = 1``, ``B = 1 + ω``.
    """

    name: ClassVar[str] = "compressed"
    unbiased: ClassVar[bool] = False

    def __init__(self, compressor: Compressor, dim: int) -> None:
        if compressor.name not in COMPRESSORS_WITH_ABC:
            raise ValueError(
                f"compressor {compressor.name!r} has no Biased ABC constants; valid: "
                f"{', '.join(COMPRESSORS_WITH_ABC)}"
            )
        self.compressor = compressor
        self.dim = int(dim)

    def constants(self) -> tuple[float, float]:
        """``(b, B)`` of the compressor (class docstring)."""
        comp, d = self.compressor, self.dim
        if comp.name in ("top_k", "biased_rand_k"):
            share = comp.keep(d) / d  # type: ignore[attr-defined]
            return share, (1.0 if comp.name == "top_k" else share)
        if comp.name == "scaled_sign":
            return 1.0 / d, 1.0
        omega = comp.omega(d)
        assert omega is not None
        return 1.0, 1.0 + float(omega)

    def abc(self, problem: FiniteSum, p: np.ndarray | None = None) -> BiasedABC:
        b, big_b = self.constants()
        return BiasedABC(A=0.0, B=big_b, C=0.0, b=b, c=0.0)

    def __call__(self, objective: Objective, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.compressor(objective.grad(x), rng)


class ClippedGradient(Estimator):
    """``g = min(1, τ/‖∇f(x)‖) ∇f(x)`` (arXiv 2305.16296: clipping as a biased estimator);
    federated: ``Σ_m w_m clip_τ(∇f_m(x))``.

    ``‖g‖ ≤ ‖∇f‖``: ``A = C = 0``, ``B = 1`` (equality while ``‖∇f‖ ≤ τ``).
    ``⟨∇f, g⟩ = min(‖∇f‖², τ‖∇f‖) ≥ min(1, τ/G)‖∇f‖²`` when ``‖∇f‖ ≤ G`` everywhere (no
    ``b > 0`` holds for unbounded gradients): ``b = min(1, τ/G)``, ``c = 0`` (equality at
    ``‖∇f‖ = G``). ``auto`` stepsize: ``factor·b/L₀`` with ``b = 1`` when no ``G`` is known (the
    rule of the region ``‖∇f‖ ≤ τ``; outside it the step is shorter).
    """

    name: ClassVar[str] = "clip"
    unbiased: ClassVar[bool] = False

    def __init__(self, level: float) -> None:
        if not (level > 0 and math.isfinite(level)):
            raise ValueError(f"the clipping level must be a positive number, got {level!r}")
        self.level = float(level)

    def abc(self, problem: FiniteSum, p: np.ndarray | None = None) -> BiasedABC:
        g = problem.grad_bound
        if g is None:
            raise ValueError("clipping's first-moment constant needs problem.grad_bound")
        return BiasedABC(A=0.0, B=1.0, C=0.0, b=min(1.0, self.level / float(g)), c=0.0)

    def auto_lr(
        self, problem: FiniteSum, horizon: int, factor: float = 1.0, p: np.ndarray | None = None
    ) -> float:
        g = problem.grad_bound
        b = 1.0 if g is None else min(1.0, self.level / float(g))
        return float(factor) * b / float(problem.L0)

    def clip(self, v: np.ndarray) -> np.ndarray:
        return clip_to_norm(v, self.level)

    def __call__(self, objective: Objective, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.clip(objective.grad(x))


class FullGradient(Estimator):
    """``g = ∇f(x)``: gradient descent (``A = C = c = 0``, ``B = b = 1``; γ = factor/L₀)."""

    name: ClassVar[str] = "full"
    unbiased: ClassVar[bool] = True

    def abc(self, problem: FiniteSum, p: np.ndarray | None = None) -> BiasedABC:
        return BiasedABC(A=0.0, B=1.0, C=0.0, b=1.0, c=0.0)

    def __call__(self, objective: Objective, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return objective.grad(x)


def build_estimator(
    name: str, compressor: Compressor | None = None, dim: int = 1, level: float = 1.0
) -> Estimator:
    """The estimator ``name`` (:data:`ESTIMATOR_NAMES`); ``compressed`` needs ``compressor``,
    ``clip`` reads ``level``."""
    if name == "ind_biased":
        return BiasedIndependentSampling()
    if name == "ind_unbiased":
        return UnbiasedIndependentSampling()
    if name == "compressed":
        assert compressor is not None, "the compressed estimator needs a compressor"
        return CompressedGradient(compressor, dim)
    if name == "clip":
        return ClippedGradient(level)
    if name == "full":
        return FullGradient()
    raise ValueError(f"unknown estimator {name!r}; valid choices: {', '.join(ESTIMATOR_NAMES)}")
