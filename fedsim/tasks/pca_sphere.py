"""Leading eigenvector on the sphere: ``min_{x ∈ S^{d−1}} −½ xᵀAx``, ``A = (1/N) Σ_j z_j z_jᵀ``.

Client ``m`` holds samples ``z_j`` (rows of ``Z_m``) and ``f_m(x) = −(1/2n_m) Σ_j (z_jᵀx)² =
−½ xᵀA_m x`` with ``A_m = Z_mᵀZ_m / n_m``; the objectives return the Euclidean gradient
``∇f_m(x) = −A_m x`` of this ambient extension, and the Riemannian gradient is
``grad f_m(x) = −(I − xxᵀ) A_m x``. The global minimizers are ``±x*``, ``x*`` the top
eigenvector of the pooled ``A`` (``numpy.linalg.eigh``), with ``f* = −λ_max(A)/2``; the task's
``distance_sq`` is the squared geodesic distance to the nearer of ``±x*``,
``min(θ, π − θ)²`` with ``θ = arccos(xᵀx*)``.

**Geodesic smoothness.** For ``f = −½ xᵀA x`` the Riemannian Hessian on ``T_x S`` is
``Hess f(x)[v] = P_x ∇²f v − (xᵀ∇f) v = −P_x A v + (xᵀA x) v``, so for unit ``x`` and unit
``v ⊥ x``: ``⟨v, Hess f(x)[v]⟩ = xᵀA x − vᵀA v ∈ [λ_min(A) − λ_max(A), λ_max(A) − λ_min(A)]``.
Hence ``f_m`` is geodesically ``L_m``-smooth on the whole sphere with
``L_m = λ_max(A_m) − λ_min(A_m) ≤ λ_max(A_m)`` (attained at ``x`` = top and ``v`` = bottom
eigenvector). One sample (``A = zzᵀ``, rank one, ``d ≥ 2``) gives ``‖z‖²``: that is
``sample_smoothness``. There is no geodesic convexity (``mu = 0``); the sphere's curvature is
positive, so ``ζ = 1``.

**Synthetic data** (``source=synthetic``): ``z = Q Λ^{1/2} g`` with ``g ~ N(0, I_d)``, ``Q`` a
seeded random orthogonal matrix and population spectrum ``λ_1 = 1 + eigengap`` and
``λ_2, …, λ_d`` evenly spaced from ``1`` down to ``0.1``: the top population eigenvalue exceeds
the second by exactly ``eigengap`` (the pooled sample's gap differs by ``O(√(d/N))``).
Client ``k`` draws from ``generator(seed, 0, "task/pca", k)`` only.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from fedsim.blocks.manifolds import Sphere, sphere_dist_sq
from fedsim.errors import ConfigError
from fedsim.rng import generator
from fedsim.tasks.base import Objective, Task

Matrix = np.ndarray | sp.csr_matrix
SOURCES: tuple[str, ...] = ("synthetic", "libsvm", "sklearn")


class SpherePCA(Objective):
    """``f(x) = −(1/2n) Σ_j (z_jᵀx)²``; ``grad`` is the Euclidean ``−(1/n) Zᵀ(Zx)``.

    ``smoothness = λ_max(A) − λ_min(A)`` with ``A = ZᵀZ/n`` (geodesic, see the module);
    ``sample_smoothness = max_j ‖z_j‖²``.
    """

    def __init__(self, z: Matrix) -> None:
        self.z = z
        self.num_samples = int(z.shape[0])
        self.dim = int(z.shape[1])
        lam = np.linalg.eigvalsh(self.second_moment())
        self.smoothness = float(lam[-1] - lam[0])
        sq = z.multiply(z).sum(axis=1) if sp.issparse(z) else np.sum(z * z, axis=1)
        self.sample_smoothness = float(np.max(np.asarray(sq)))

    def second_moment(self) -> np.ndarray:
        """``A = ZᵀZ/n`` (dense ``d × d``)."""
        a = self.z.T @ self.z
        a = a.toarray() if sp.issparse(a) else np.asarray(a)
        return 0.5 * (a + a.T) / self.num_samples

    def _rows(self, idx: np.ndarray | None) -> Matrix:
        return self.z if idx is None else self.z[np.asarray(idx)]

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        p = np.asarray(self._rows(idx) @ x).ravel()
        return float(-0.5 * np.mean(p * p))

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        z = self._rows(idx)
        p = np.asarray(z @ x).ravel()
        return -np.asarray(z.T @ p).ravel() / z.shape[0]


def sign_invariant_dist_sq(x: np.ndarray, x_star: np.ndarray) -> float:
    """``min(d(x, x*)², d(x, −x*)²) = min(θ, π − θ)²``, ``θ = ∠(x, x*)``: ``±x*`` both solve."""
    return min(sphere_dist_sq(x, x_star), sphere_dist_sq(x, -x_star))


def population_spectrum(dim: int, eigengap: float) -> np.ndarray:
    """``(1 + eigengap, 1, …, 0.1)``: ``λ_1 − λ_2 = eigengap``, ``λ_2..λ_d`` evenly spaced."""
    return np.concatenate([[1.0 + eigengap], np.linspace(1.0, 0.1, dim - 1)])


def synthetic_basis(dim: int, seed: int) -> np.ndarray:
    """A seeded random orthogonal ``Q`` (QR of a Gaussian matrix, signs fixed by ``diag R > 0``);
    its first column is the population's top eigenvector."""
    q, r = np.linalg.qr(generator(seed, 0, "task/pca/basis").standard_normal((dim, dim)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def synthetic_client(
    k: int, dim: int, samples: int, basis: np.ndarray, spectrum: np.ndarray, seed: int
) -> np.ndarray:
    """Client ``k``'s ``samples × dim`` rows ``z = Q Λ^{1/2} g``, ``g ~ N(0, I)``."""
    g = generator(seed, 0, "task/pca", k).standard_normal((samples, dim))
    return (g * np.sqrt(spectrum)) @ basis.T


def top_eigenpair(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(x*, λ_1, λ_2)`` of a symmetric ``A`` by ``numpy.linalg.eigh``; the sign of ``x*`` is
    fixed so that its largest-magnitude entry is positive."""
    lam, vec = np.linalg.eigh(a)
    x = vec[:, -1]
    x = x if x[np.argmax(np.abs(x))] > 0 else -x
    return x / np.linalg.norm(x), float(lam[-1]), float(lam[-2])


def random_x0(dim: int, seed: int) -> np.ndarray:
    """``g/‖g‖``, ``g ~ N(0, I)`` from ``generator(seed, 0, "task/x0")``: uniform on the sphere."""
    g = generator(seed, 0, "task/x0").standard_normal(dim)
    return g / np.linalg.norm(g)


def unit_norm_error(x: np.ndarray, tol: float = 1e-8) -> str | None:
    """Why ``x`` is not a unit vector (``None`` when it is, to ``tol``)."""
    if not np.all(np.isfinite(x)):
        return "it has non-finite entries"
    norm = float(np.linalg.norm(x))
    if not math.isclose(norm, 1.0, rel_tol=0.0, abs_tol=tol):
        return f"‖x0‖ = {norm!r}, not 1 (tolerance {tol})"
    return None


def make_task(
    z: Matrix, parts: list[np.ndarray], honest: list[int], x0: np.ndarray, replicated: bool
) -> Task:
    """The task on rows ``z`` split by ``parts``; ``full`` on the honest clients' rows in client
    order (``replicated``: one objective on all rows, shared by every client).

    ``x* = ±`` top eigenvector of the pooled ``A`` with ``f* = −λ_max/2``; a pooled spectrum
    without a gap (``λ_1 − λ_2 ≤ 10⁻¹⁰ λ_1``: ``±x*`` not unique) is a :class:`ConfigError`.
    """
    if replicated:
        shared = SpherePCA(z)
        clients, full = [shared] * len(parts), shared
    else:
        clients = [SpherePCA(z[p]) for p in parts]
        full = SpherePCA(z[np.concatenate([parts[m] for m in honest])])
    x_star, lam1, lam2 = top_eigenpair(full.second_moment())
    if not lam1 - lam2 > 1e-10 * abs(lam1):
        raise ConfigError(
            f"pca_sphere: the pooled second-moment matrix has no eigengap (λ1 = {lam1!r}, "
            f"λ2 = {lam2!r}), so the leading eigenvector is not unique"
        )
    f_star = -0.5 * lam1
    return Task(
        name="pca_sphere",
        dim=full.dim,
        clients=list(clients),
        full=full,
        x0=np.array(x0, dtype=np.float64),
        mu=0.0,
        solve=lambda: (x_star.copy(), f_star),
        manifold=Sphere(full.dim),
        distance_sq=sign_invariant_dist_sq,
        zeta=1.0,
    )
