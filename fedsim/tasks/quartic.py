"""The quartic of the generalized-smoothness paper: ``f(x) = (1/N) Σ_i ‖x − x_i‖⁴``.

Gorbunov-style (L0,L1)-smooth test problem of arXiv 2412.02781 (authors' code, ``run_fl.py``):
points ``x_i ~ Uniform[−10, 10]^d``. The Hessian ``(4/N) Σ_i (‖r_i‖² I + 2 r_i r_iᵀ)``,
``r_i = x − x_i``, grows with ``‖x‖²`` while the gradient grows with ``‖x‖³``: the function is
(L0,L1)-smooth but not L-smooth. It is convex, so Newton's method from the points' mean finds
``x*`` to machine precision. Clients: the points sorted by norm, cut into contiguous blocks
(heterogeneous by construction).
"""

from __future__ import annotations

import numpy as np

from fedsim.tasks.base import Objective


class Quartic(Objective):
    """``f(x) = (1/n) Σ_j ‖x − p_j‖⁴`` over the rows ``p_j`` of ``points``; a sample is a point.

    ``smoothness`` is ``‖∇²f(x_ref)‖`` and ``sample_smoothness`` the largest single-point
    curvature ``12‖x_ref − p_j‖²``, both at the reference point given (the run's ``x0``): the
    quartic has no global ``L``, so these are only the curvatures where a run starts.
    """

    def __init__(self, points: np.ndarray, x_ref: np.ndarray) -> None:
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self.num_samples = len(self.points)
        self.dim = self.points.shape[1]
        self.smoothness = float(np.linalg.eigvalsh(self.hessian(x_ref))[-1])
        # one point's Hessian 4(‖r‖² I + 2 r rᵀ) has top eigenvalue 12‖r‖²
        r = x_ref - self.points
        self.sample_smoothness = float(12.0 * np.max(np.einsum("ij,ij->i", r, r)))
        # (L0, L1)-smoothness on all of R^d (see `l0l1_constants`), for the clipped methods
        constants = l0l1_constants(self.points, x_ref)
        self.center, self.spread, self.spread_top, self.l0, self.l1 = constants

    def _rows(self, idx: np.ndarray | None) -> np.ndarray:
        return self.points if idx is None else self.points[idx]

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        r = x - self._rows(idx)
        return float(np.mean(np.einsum("ij,ij->i", r, r) ** 2))

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        r = x - self._rows(idx)
        sq = np.einsum("ij,ij->i", r, r)
        return 4.0 * (sq @ r) / len(r)

    def hessian(self, x: np.ndarray) -> np.ndarray:
        r = x - self.points
        sq = np.einsum("ij,ij->i", r, r)
        return (4.0 / len(r)) * (np.sum(sq) * np.eye(self.dim) + 2.0 * r.T @ r)

    def sublevel_radius(self, level: float) -> float:
        """``r`` with ``{x : f(x) ≤ level} ⊂ B(center, r)``: by Jensen,
        ``f(x) ≥ (mean_j ‖x − p_j‖²)² = (‖x − p̄‖² + σ²)²``, so ``‖x − p̄‖² ≤ √level − σ²``."""
        return float(np.sqrt(max(np.sqrt(max(level, 0.0)) - self.spread, 0.0)))

    def _distances(self, center: np.ndarray, radius: float) -> np.ndarray:
        """``‖center − p_j‖ + radius ≥ ‖x − p_j‖`` for every ``x`` in ``B(center, radius)``."""
        return np.linalg.norm(self.points - center, axis=1) + radius

    def curvature_bound(self, center: np.ndarray, radius: float, per_sample: bool = False) -> float:
        """An upper bound of ``‖∇²f(x)‖`` (``per_sample``: of every ``‖∇²f_B(x)‖``, a minibatch
        mean) over ``x ∈ B(center, radius)``. One point's Hessian has norm ``12‖x − p_j‖²``, so
        ``‖∇²f_B(x)‖ ≤ 12 max_j ‖x − p_j‖²``; for ``f`` itself
        ``‖∇²f(x)‖ ≤ 4(3‖x − p̄‖² + σ² + 2 λ_max(C))`` (see :func:`l0l1_constants`)."""
        if per_sample:
            return float(12.0 * np.max(self._distances(center, radius) ** 2))
        s = float(np.linalg.norm(center - self.center)) + radius
        return float(4.0 * (3.0 * s * s + self.spread + 2.0 * self.spread_top))

    def gradient_bound(self, center: np.ndarray, radius: float, per_sample: bool = False) -> float:
        """An upper bound of ``‖∇f(x)‖`` (``per_sample``: of every ``‖∇f_B(x)‖``) over
        ``x ∈ B(center, radius)``: ``‖∇f_B(x)‖ ≤ 4 mean_{j∈B} ‖x − p_j‖³``."""
        d = self._distances(center, radius)
        return float(4.0 * (np.max(d**3) if per_sample else np.mean(d**3)))

    def fingerprint(self) -> str:
        from hashlib import sha256

        return sha256(self.points.tobytes()).hexdigest()


def l0l1_constants(
    points: np.ndarray, x_ref: np.ndarray
) -> tuple[np.ndarray, float, float, float, float]:
    """``(p̄, σ², λ_max(C), L0, L1)`` with ``‖∇²f(x)‖ ≤ L0 + L1‖∇f(x)‖`` for every ``x`` (the
    Hessian form of (L0,L1)-smoothness, Zhang et al. 2020), ``f(x) = (1/n) Σ_j ‖x − p_j‖⁴``.

    With ``p̄`` the points' mean, ``q_j = p_j − p̄``, ``C = (1/n) Σ q_j q_jᵀ``, ``σ² = tr C``,
    ``m₃ = (1/n) Σ ‖q_j‖² q_j`` and ``u = x − p̄``, ``s = ‖u‖``, expanding ``‖u − q_j‖²(u − q_j)``
    gives exactly

        ∇f(x)  = 4[(s² + σ²) u + 2 C u − m₃],
        ∇²f(x) = 4[(s² + σ²) I + 2 u uᵀ + 2 C],

    so ``‖∇²f(x)‖ ≤ 12 s² + K`` with ``K = 4(σ² + 2 λ_max(C)) = ‖∇²f(p̄)‖``, and
    ``‖∇f(x)‖ ≥ 4[(s² + a) s − ‖m₃‖]`` with ``a = σ² + 2 λ_min(C)``. Hence, for any ``L1``,
    ``L0 + L1‖∇f(x)‖ ≥ K + 12 s²`` for all ``s`` as soon as
    ``L0 = K + 4 L1 ‖m₃‖ + max_{s≥0} φ(s)``, ``φ(s) = 12 s² − 4 L1 (s² + a) s``. The choice here is
    ``L1 = 3/(2√a)``, the smallest ``L1`` with ``4 L1 (s² + a) s ≥ 12 s²`` for every ``s``
    (``3s/(s² + a)`` peaks at ``s = √a``), so ``max φ = 0`` and ``L0 = K + 4 L1 ‖m₃‖``: up to the
    third-moment term, ``L0`` is the curvature at the points' centre, which no valid pair can
    undercut (``L0 ≥ ‖∇²f(x*)‖`` where ``∇f(x*) = 0``, and ``x*`` is near ``p̄``). Degenerate
    points (``a = 0``: a single distinct point) take ``a`` from ``‖x_ref − p̄‖²`` (or 1) and the
    general ``max φ`` (``16/L1²`` at ``a = 0``).
    """
    n = len(points)
    center = points.mean(axis=0)
    q = points - center
    cov = q.T @ q / n
    spread = float(np.trace(cov))
    eig = np.linalg.eigvalsh(cov)
    m3 = float(np.linalg.norm(np.einsum("ij,ij->i", q, q) @ q / n))
    curvature = 4.0 * (spread + 2.0 * float(eig[-1]))
    a = max(spread + 2.0 * float(eig[0]), 0.0)
    a_eff = a if a > 0 else float(np.sum((x_ref - center) ** 2)) or 1.0
    l1 = 1.5 / np.sqrt(a_eff)
    # φ'(s) = 0 at s± = (1 ± √(1 − L1² a/3))/L1; φ ≤ 0 everywhere when L1² a ≥ 3
    disc = 1.0 - l1 * l1 * a / 3.0
    s = (1.0 + np.sqrt(disc)) / l1 if disc >= 0 else 0.0
    peak = max(0.0, 12.0 * s * s - 4.0 * l1 * (s * s + a) * s)
    top = float(eig[-1])
    return center, spread, top, float(curvature + 4.0 * l1 * m3 + peak), float(l1)


def quartic_points(num_points: int, dim: int, seed: int) -> np.ndarray:
    """``x_i ~ Uniform[−10, 10]^d`` sorted by norm (so contiguous blocks are heterogeneous)."""
    from fedsim.rng import generator

    pts = generator(seed, 0, "task/quartic").uniform(-10.0, 10.0, size=(num_points, dim))
    return pts[np.argsort(np.linalg.norm(pts, axis=1), kind="stable")]
