"""Karcher (Fréchet) mean of SPD matrices under the affine-invariant metric.

Client ``m`` holds SPD matrices ``A_j`` and ``f_m(X) = (1/2n_m) Σ_j d²(X, A_j)`` with
``d(X, A) = ‖logm(X^{-1/2} A X^{-1/2})‖_F``. Points are ``n × n`` matrices flattened row-major.

**Gradients.** ``grad f_m(X) = −(1/n_m) Σ_j Log_X(A_j)`` (the Riemannian gradient of
``½d²(·, A)`` is ``−Log_X(A)``). With ``W = X^{-1/2}``, ``M_j = W A_j W`` and
``Log_X(A_j) = X^{1/2} logm(M_j) X^{1/2}``, the objectives return the Euclidean gradient of the
ambient extension ``X ↦ f_m(sym X)``: ``∇f_m(X) = X⁻¹ grad f_m(X) X⁻¹ = −W (mean_j logm M_j) W``
(symmetric), so ``egrad_to_rgrad(X, ∇f) = X ∇f X`` gives back ``grad f_m``.

**Constants.** The metric ``⟨U, V⟩_X = tr(X⁻¹UX⁻¹V)`` has sectional curvature in
``[κ_min, 0] = [−½, 0]`` (see :mod:`fedsim.blocks.manifolds`). On a Hadamard manifold the
Riemannian Hessian of ``½d²(·, A)`` satisfies, by the Hessian comparison theorem,
``I ⪯ Hess ½d²(·, A)(X) ⪯ ζ(d(X, A)) I`` with ``ζ(r) = √|κ_min| r / tanh(√|κ_min| r)``: the
lower bound from ``K ≤ 0``, the upper one from ``K ≥ κ_min``. Averaging over ``j``:

- every ``f_m`` is **1-strongly geodesically convex** on all of ``P(n)`` (``mu = 1``);
- ``f_m`` is geodesically ``ζ(D)``-smooth wherever ``d(X, A_j) ≤ D`` for all ``j``. We take
  ``D = max_{s,t ∈ S} d(s, t)``, ``S = {x0} ∪ {all A_j of all clients}``: ``d(·, A_j)`` is
  geodesically convex, so on the geodesic convex hull of ``S`` (which holds ``X*`` and ``x0``)
  every ``d(X, A_j) ≤ D``, and the hull's diameter is ``D`` too. ``smoothness =
  sample_smoothness = zeta = ζ(D)``; ``D`` is exact (all ``|S|(|S|−1)/2`` pairs).

**Optimum.** ``X*`` by Riemannian gradient descent from ``A_1``:
``X ← Exp_X(η mean_j Log_X A_j)`` with ``η = 2/(1 + ζ(D))`` (``η = 1``, the classical
fixed-point iteration, when the data are concentrated; ``2/(μ + L)`` contracts for any spread),
until ``‖grad f(X)‖_X ≤ 10⁻¹⁴``.

**Synthetic data.** A centre ``C = expm(S₀)``, ``S₀`` a seeded symmetric Gaussian scaled to
``‖S₀‖_F = 1`` (so ``d(I, C) = 1``), and ``A_j = Exp_C(spread · C^{1/2} S_j C^{1/2}) =
C^{1/2} expm(spread · S_j) C^{1/2}`` with ``S_j = sym(G_j)/√(n(n+1)/2)`` (``E‖S_j‖_F² = 1``), so
``d(C, A_j) = spread · ‖S_j‖_F`` has RMS ``spread``. Client ``k`` draws from
``generator(seed, 0, "task/karcher", k)`` only.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.blocks.manifolds import SPD, curvature_factor, spd_exp, spd_sqrt_pair, sym
from fedsim.rng import generator
from fedsim.tasks.base import Objective, Task

KAPPA_MIN = SPD.curvature_lower  # −½ for tr(X⁻¹UX⁻¹V)


def _sym_batch(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def whitened_logs(x: np.ndarray, mats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X^{1/2}, X^{-1/2}, L)`` with ``L_j = logm(X^{-1/2} A_j X^{-1/2})`` for a stack
    ``mats`` of shape ``(k, n, n)``; ``d(X, A_j) = ‖L_j‖_F``."""
    root, inv_root = spd_sqrt_pair(x)
    lam, q = np.linalg.eigh(_sym_batch(inv_root @ mats @ inv_root))
    if np.any(lam <= 0):
        raise ValueError("a data matrix is not positive definite")
    logs = _sym_batch((q * np.log(lam)[:, None, :]) @ np.swapaxes(q, -1, -2))
    return root, inv_root, logs


class KarcherSPD(Objective):
    """``f(X) = (1/2k) Σ_j d²(X, A_j)`` over the stack ``mats`` (``k × n × n``); flat points.

    ``grad`` is the Euclidean gradient ``−X^{-1/2} (mean_j logm M_j) X^{-1/2}`` of the ambient
    extension (see the module); :meth:`riemannian_grad` is ``−mean_j Log_X(A_j)``.
    ``diameter`` is the ``D`` of the region where ``smoothness = ζ(D)`` holds (the module's).
    """

    def __init__(self, mats: np.ndarray, diameter: float) -> None:
        self.mats = np.asarray(mats, dtype=np.float64)
        self.n = int(self.mats.shape[1])
        self.num_samples = int(self.mats.shape[0])
        self.diameter = float(diameter)
        self.smoothness = zeta(self.diameter)
        self.sample_smoothness = self.smoothness

    def _logs(
        self, x: np.ndarray, idx: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mats = self.mats if idx is None else self.mats[np.asarray(idx)]
        return whitened_logs(sym(np.asarray(x, dtype=np.float64).reshape(self.n, self.n)), mats)

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        logs = self._logs(x, idx)[2]
        return float(0.5 * np.mean(np.sum(logs * logs, axis=(1, 2))))

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        _, inv_root, logs = self._logs(x, idx)
        return sym(-inv_root @ logs.mean(axis=0) @ inv_root).reshape(-1)

    def riemannian_grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """``grad f(X) = −mean_j Log_X(A_j) = −X^{1/2} (mean_j logm M_j) X^{1/2}``."""
        root, _, logs = self._logs(x, idx)
        return sym(-root @ logs.mean(axis=0) @ root).reshape(-1)


def pairwise_diameter(mats: np.ndarray) -> float:
    """``max_{s<t} d(A_s, A_t)`` over a stack (exact: every pair, one batched eigvalsh per row)."""
    best = 0.0
    for s in range(mats.shape[0] - 1):
        _, inv_root = spd_sqrt_pair(mats[s])
        lam = np.linalg.eigvalsh(_sym_batch(inv_root @ mats[s + 1 :] @ inv_root))
        best = max(best, float(np.sqrt(np.max(np.sum(np.log(lam) ** 2, axis=1)))))
    return best


def zeta(diameter: float) -> float:
    """``ζ(D) = √½ D / tanh(√½ D)`` (``κ_min = −½``)."""
    return curvature_factor(KAPPA_MIN, diameter)


def karcher_mean(
    mats: np.ndarray,
    step: float = 1.0,
    tol: float = 1e-14,
    max_iter: int = 10_000,
    accept: float = 1e-12,
) -> np.ndarray:
    """The Karcher mean of the stack ``mats`` by ``X ← Exp_X(step · mean_j Log_X A_j)`` from
    ``A_1`` until ``‖grad f(X)‖_X = ‖mean_j logm M_j‖_F ≤ tol``; when rounding stalls progress
    first (no new best in 20 steps) the best point is accepted if its norm is ``≤ accept``,
    else ``RuntimeError``."""
    x = sym(mats[0])
    best, best_x, since = math.inf, x, 0
    for _ in range(max_iter):
        root, _, logs = whitened_logs(x, mats)
        mean = sym(logs.mean(axis=0))
        norm = float(np.linalg.norm(mean))
        if norm < best:
            best, best_x, since = norm, x, 0
        else:
            since += 1
        if norm <= tol or since >= 20:
            break
        # Exp_X(η X^{1/2} L̄ X^{1/2}) = X^{1/2} expm(η L̄) X^{1/2}
        x = spd_exp(x, step * sym(root @ mean @ root))
    if best > accept:
        raise RuntimeError(f"Karcher mean iteration stopped at ‖grad f‖ = {best:.3e}")
    return best_x


def random_centre(n: int, seed: int) -> np.ndarray:
    """``C = expm(S₀)``, ``S₀ = sym(G)/‖sym(G)‖_F``, ``G`` from
    ``generator(seed, 0, "task/karcher/centre")``: ``d(I, C) = 1``."""
    s = sym(generator(seed, 0, "task/karcher/centre").standard_normal((n, n)))
    s /= np.linalg.norm(s)
    lam, q = np.linalg.eigh(s)
    return sym((q * np.exp(lam)) @ q.T)


def synthetic_client(
    k: int, n: int, samples: int, centre: np.ndarray, spread: float, seed: int
) -> np.ndarray:
    """Client ``k``'s ``samples × n × n`` stack ``C^{1/2} expm(spread · S_j) C^{1/2}``."""
    rng = generator(seed, 0, "task/karcher", k)
    s = _sym_batch(rng.standard_normal((samples, n, n))) / math.sqrt(n * (n + 1) / 2)
    lam, q = np.linalg.eigh(spread * s)
    expm = (q * np.exp(lam)[:, None, :]) @ np.swapaxes(q, -1, -2)
    root, _ = spd_sqrt_pair(centre)
    return _sym_batch(root @ expm @ root)


def make_task(
    mats: np.ndarray, parts: list[np.ndarray], honest: list[int], x0: np.ndarray, replicated: bool
) -> Task:
    """The task on the stack ``mats`` split by ``parts`` (``replicated``: one shared objective
    on all of them), ``full`` on the honest clients' matrices; ``x0`` an SPD matrix.

    ``mu = 1``, ``smoothness = zeta = ζ(D)`` with ``D`` the diameter of ``{x0} ∪ {A_j}``;
    ``solve`` runs :func:`karcher_mean` (once: :meth:`Task.optimum` caches it).
    """
    n = int(mats.shape[1])
    diameter = pairwise_diameter(np.concatenate([np.asarray(x0)[None], mats]))
    factor = zeta(diameter)
    if replicated:
        shared = KarcherSPD(mats, diameter)
        clients, full = [shared] * len(parts), shared
    else:
        clients = [KarcherSPD(mats[p], diameter) for p in parts]
        full = KarcherSPD(mats[np.concatenate([parts[m] for m in honest])], diameter)

    def solve() -> tuple[np.ndarray, float]:
        x_star = karcher_mean(full.mats, step=2.0 / (1.0 + factor)).reshape(-1)
        return x_star, full.loss(x_star)

    return Task(
        name="karcher_spd",
        dim=n * n,
        clients=list(clients),
        full=full,
        x0=np.array(x0, dtype=np.float64).reshape(-1),
        mu=1.0,
        solve=solve,
        manifold=SPD(n),
        zeta=factor,
    )
