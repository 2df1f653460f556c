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

    def fingerprint(self) -> str:
        from hashlib import sha256

        return sha256(self.points.tobytes()).hexdigest()


def quartic_points(num_points: int, dim: int, seed: int) -> np.ndarray:
    """``x_i ~ Uniform[−10, 10]^d`` sorted by norm (so contiguous blocks are heterogeneous)."""
    from fedsim.rng import generator

    pts = generator(seed, 0, "task/quartic").uniform(-10.0, 10.0, size=(num_points, dim))
    return pts[np.argsort(np.linalg.norm(pts, axis=1), kind="stable")]
