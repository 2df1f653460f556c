"""Riemannian manifolds for Riemannian optimization: Euclidean space, the sphere, SPD matrices.

Points and tangent vectors are flat ``float64`` numpy arrays of length ``ambient_dim`` (an SPD
``n × n`` matrix is flattened row-major, ``ambient_dim = n²``), so they cross the wire and pass
through compressors like any other model. Every operation is a pure module-level function with
its formula in the docstring; the classes only reshape and dispatch.

- **Sphere** ``S^{d−1} = {x ∈ R^d : ‖x‖ = 1}`` with the induced metric ``⟨u, v⟩ = uᵀv``;
  sectional curvature ``1``. Parallel transport along the geodesic is written out by hand
  (geoopt's and pymanopt's sphere "transport" is the tangent projection, a vector transport).
- **SPD** ``P(n)`` with the affine-invariant metric ``⟨U, V⟩_X = tr(X⁻¹ U X⁻¹ V)``; a Hadamard
  manifold with sectional curvature in ``[−½, 0]``: at ``X = I`` (every point is congruent to
  it) ``K(U, V) = −¼ ‖[U, V]‖_F²`` for orthonormal symmetric ``U, V``, whose maximum ``½`` is
  attained at ``U = (E₁₂ + E₂₁)/√2``, ``V = (E₁₁ − E₂₂)/√2`` (``‖[U, V]‖_F² = 2``). The
  matrix functions go through symmetric eigendecompositions of the *whitened* matrix
  ``X^{-1/2} Y X^{-1/2}``, and results are symmetrized, so they stay symmetric to rounding.
- **Euclidean** ``R^d``: every map is the flat one (``exp = retract = x + v``, transports are
  the identity); Riemannian methods run on it unchanged and reduce to their Euclidean versions.

``curvature_lower`` is the lower curvature bound ``κ_min`` that enters the trigonometric
distance bound through ``ζ = √|κ_min| D / tanh(√|κ_min| D)`` (:func:`curvature_factor`); any
``κ_min ≥ 0`` gives ``ζ = 1``, so the sphere states ``0`` (a valid, if loose, bound of ``1``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

MANIFOLDS: tuple[str, ...] = ("euclidean", "sphere", "spd")


def curvature_factor(kappa_min: float, diameter: float) -> float:
    """``ζ = √|κ| D / tanh(√|κ| D)`` for ``κ = κ_min < 0``; ``1`` for ``κ_min ≥ 0`` or ``D = 0``.

    Zhang & Sra (2016), Lemma 5: on a manifold with sectional curvature ``≥ κ_min`` and a
    geodesic triangle of diameter ``≤ D``, ``a² ≤ ζ b² + c² − 2bc cos A``. It also bounds the
    Riemannian Hessian of ``½ d²(·, p)`` on the ball ``d(·, p) ≤ D`` from above.
    """
    s = math.sqrt(abs(kappa_min)) * float(diameter) if kappa_min < 0 else 0.0
    return 1.0 if s == 0.0 else s / math.tanh(s)


# --------------------------------------------------------------------------- sphere


def sphere_proj(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Orthogonal projection onto ``T_x S = {v : xᵀv = 0}``: ``P_x v = v − (xᵀv) x``."""
    return v - (x @ v) * x


def sphere_egrad_to_rgrad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Riemannian gradient from the Euclidean one of an ambient extension: ``(I − xxᵀ) ∇f``."""
    return sphere_proj(x, g)


def sphere_exp(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``Exp_x(v) = cos‖v‖ · x + sin‖v‖ · v/‖v‖`` (``= x`` at ``v = 0``), renormalized.

    ``sin t / t`` is ``np.sinc(t/π)``, which is ``1`` at ``t = 0``: no division by zero.
    """
    t = float(np.linalg.norm(v))
    y = math.cos(t) * x + float(np.sinc(t / math.pi)) * v
    return y / np.linalg.norm(y)


def _sphere_angle(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, float]:
    """``(θ, w, ‖w‖)``: the angle ``θ = atan2(‖w‖, xᵀy) ∈ [0, π]`` and ``w = P_x y``.

    ``w = (y − x) − (xᵀ(y − x)) x`` equals ``y − (xᵀy) x`` but keeps its digits when ``y ≈ x``;
    ``‖w‖ = sin θ``. ``atan2`` is accurate near ``0`` and ``π``, where ``arccos`` is not.
    """
    w = sphere_proj(x, y - x)
    s = float(np.linalg.norm(w))
    return math.atan2(s, float(x @ y)), w, s


def _antipodal(x: np.ndarray, y: np.ndarray, what: str) -> ValueError:
    return ValueError(
        f"sphere {what}: y = −x (antipodal points); the minimizing geodesic is not unique"
    )


def sphere_log(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Log_x(y) = θ · w/‖w‖`` with ``w = P_x y``, ``θ = ∠(x, y)`` (``0`` at ``y = x``).

    Defined for ``y ≠ −x``; antipodal points raise ``ValueError``.
    """
    theta, w, s = _sphere_angle(x, y)
    if s == 0.0:
        if theta > math.pi / 2:
            raise _antipodal(x, y, "log")
        return np.zeros_like(x)
    return (theta / s) * w


def sphere_dist_sq(x: np.ndarray, y: np.ndarray) -> float:
    """``d(x, y)² = θ²`` with ``θ = atan2(‖P_x y‖, xᵀy) = arccos(xᵀy)``."""
    return _sphere_angle(x, y)[0] ** 2


def sphere_transport(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Parallel transport of ``v ∈ T_x S`` along the minimizing geodesic from ``x`` to ``y``.

    With ``u = Log_x(y)/τ`` (unit) and ``τ = d(x, y)``, the geodesic ``γ(t) = cos t·x + sin t·u``
    turns only in the plane ``span{x, u}``, where it rotates ``x ↦ γ(τ)`` and ``u ↦ γ'(τ) =
    −sin τ·x + cos τ·u``; components orthogonal to that plane are constant. Hence

        Γ_x^y(v) = v − (uᵀv) [(1 − cos τ) u + sin τ · x].

    ``y = x`` gives ``v``; antipodal points raise ``ValueError`` (no unique geodesic).
    """
    theta, w, s = _sphere_angle(x, y)
    if s == 0.0:
        if theta > math.pi / 2:
            raise _antipodal(x, y, "transport")
        return np.array(v, dtype=np.float64, copy=True)
    u = w / s
    return v - float(u @ v) * ((1.0 - math.cos(theta)) * u + math.sin(theta) * x)


def sphere_retract(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The metric-projection retraction ``R_x(v) = (x + v)/‖x + v‖`` (second order:
    ``R_x(tv) = Exp_x(tv) + O(t³)``)."""
    y = x + v
    return y / np.linalg.norm(y)


def sphere_vector_transport(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The projection vector transport ``T_{x→y}(v) = P_y v`` (not an isometry)."""
    return sphere_proj(y, v)


# --------------------------------------------------------------------------- SPD matrices


def sym(a: np.ndarray) -> np.ndarray:
    """The symmetric part ``(A + Aᵀ)/2``."""
    return 0.5 * (a + a.T)


def _eig(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(λ, Q)`` with ``X = Q diag(λ) Qᵀ``; ``ValueError`` unless every ``λ > 0``."""
    lam, q = np.linalg.eigh(sym(x))
    if not np.all(np.isfinite(lam)) or lam[0] <= 0:
        raise ValueError(
            f"matrix is not positive definite (smallest eigenvalue {lam[0]:.3e})"
            if np.all(np.isfinite(lam))
            else "matrix has non-finite entries"
        )
    return lam, q


def _fn(lam: np.ndarray, q: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``Q diag(values) Qᵀ`` (a spectral function of a symmetric matrix), symmetrized."""
    return sym((q * values) @ q.T)


def spd_sqrt_pair(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(X^{1/2}, X^{-1/2})`` from one eigendecomposition ``X = Q diag(λ) Qᵀ``."""
    lam, q = _eig(x)
    s = np.sqrt(lam)
    return _fn(lam, q, s), _fn(lam, q, 1.0 / s)


def _whiten(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X^{1/2}, X^{-1/2}, M)`` with the whitened ``M = X^{-1/2} Y X^{-1/2}`` (symmetric)."""
    root, inv_root = spd_sqrt_pair(x)
    return root, inv_root, sym(inv_root @ y @ inv_root)


def spd_proj(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Projection onto ``T_X P(n) = Sym(n)`` (orthogonal for the affine-invariant metric too):
    ``sym(V) = (V + Vᵀ)/2``."""
    return sym(v)


def spd_egrad_to_rgrad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``grad f(X) = X sym(∇f(X)) X``: the ``ξ`` with ``tr(X⁻¹ξX⁻¹V) = ⟨∇f, V⟩_F`` for all
    symmetric ``V``."""
    return sym(x @ sym(g) @ x)


def spd_inner(x: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """``⟨U, V⟩_X = tr(X⁻¹ U X⁻¹ V) = ⟨C⁻¹UC⁻ᵀ, C⁻¹VC⁻ᵀ⟩_F`` with ``X = CCᵀ`` (Cholesky)."""
    c_inv = np.linalg.inv(np.linalg.cholesky(sym(x)))  # small n: one inverse beats 4 solves

    def whiten(a: np.ndarray) -> np.ndarray:
        return c_inv @ sym(a) @ c_inv.T  # C⁻¹AC⁻ᵀ

    return float(np.sum(whiten(u) * whiten(v)))


def spd_exp(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``Exp_X(ξ) = X^{1/2} expm(X^{-1/2} ξ X^{-1/2}) X^{1/2}``."""
    root, _, m = _whiten(x, v)
    lam, q = np.linalg.eigh(m)
    return sym(root @ _fn(lam, q, np.exp(lam)) @ root)


def spd_log(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Log_X(Y) = X^{1/2} logm(X^{-1/2} Y X^{-1/2}) X^{1/2}``."""
    root, _, m = _whiten(x, y)
    lam, q = _eig(m)
    return sym(root @ _fn(lam, q, np.log(lam)) @ root)


def spd_dist_sq(x: np.ndarray, y: np.ndarray) -> float:
    """``d(X, Y)² = ‖logm(X^{-1/2} Y X^{-1/2})‖_F² = Σ_i log² λ_i(X⁻¹Y)``."""
    _, _, m = _whiten(x, y)
    lam = _eig(m)[0]
    return float(np.sum(np.log(lam) ** 2))


def spd_transport(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Parallel transport along the geodesic ``X → Y``: ``Γ(ξ) = E ξ Eᵀ``, ``E = (Y X⁻¹)^{1/2}``.

    Computed as ``E = X^{1/2} M^{1/2} X^{-1/2}`` with ``M = X^{-1/2} Y X^{-1/2}``
    (indeed ``E² = X^{1/2} M X^{-1/2} = Y X⁻¹``), so only symmetric eigendecompositions occur:
    ``Γ(ξ) = X^{1/2} M^{1/2} (X^{-1/2} ξ X^{-1/2}) M^{1/2} X^{1/2}``. ``Y = X`` gives ``ξ``.
    """
    root, inv_root, m = _whiten(x, y)
    lam, q = _eig(m)
    half = _fn(lam, q, np.sqrt(lam))
    inner = sym(inv_root @ v @ inv_root)
    return sym(root @ half @ inner @ half @ root)


def spd_retract(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The second-order retraction ``R_X(ξ) = X + ξ + ½ ξ X⁻¹ ξ`` (SPD for every symmetric
    ``ξ``: it equals ``½X + ½(X + ξ)X⁻¹(X + ξ)``)."""
    c = np.linalg.cholesky(sym(x))
    half = np.linalg.solve(c, sym(v))  # C⁻¹ξ, and ξX⁻¹ξ = (C⁻¹ξ)ᵀ(C⁻¹ξ)
    return sym(x + v + 0.5 * half.T @ half)


def spd_vector_transport(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The identity vector transport ``T_{X→Y}(ξ) = ξ`` (every tangent space is ``Sym(n)``)."""
    return np.array(v, dtype=np.float64, copy=True)


# --------------------------------------------------------------------------- classes


class Manifold(ABC):
    """A Riemannian manifold embedded in ``R^ambient_dim``; points and tangent vectors are flat.

    ``check_point``/``check_tangent`` raise ``ValueError`` with a message naming what is wrong.
    ``transport`` is parallel transport along the minimizing geodesic (an isometry);
    ``retract``/``vector_transport`` are the cheaper first/second-order substitutes.
    """

    name: str
    ambient_dim: int
    curvature_lower: float

    def _flat(self, v: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (self.ambient_dim,):
            raise ValueError(
                f"{self.name} {what} must be a flat vector of length {self.ambient_dim}, "
                f"got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.name} {what} has non-finite entries")
        return a

    @abstractmethod
    def check_point(self, x: np.ndarray, tol: float = 1e-8, what: str = "point") -> None: ...

    @abstractmethod
    def check_tangent(self, x: np.ndarray, v: np.ndarray, tol: float = 1e-8) -> None: ...

    @abstractmethod
    def proj(self, x: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def egrad_to_rgrad(self, x: np.ndarray, g: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def inner(self, x: np.ndarray, u: np.ndarray, v: np.ndarray) -> float: ...

    def norm_sq(self, x: np.ndarray, u: np.ndarray) -> float:
        """``‖u‖_x² = ⟨u, u⟩_x``."""
        return self.inner(x, u, u)

    @abstractmethod
    def exp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def log(self, x: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def dist_sq(self, x: np.ndarray, y: np.ndarray) -> float: ...

    @abstractmethod
    def transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def retract(self, x: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def vector_transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def random_point(self, rng: np.random.Generator) -> np.ndarray: ...

    @abstractmethod
    def random_tangent(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    @abstractmethod
    def to_manifold(self, x: np.ndarray) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ambient_dim={self.ambient_dim})"


class Euclidean(Manifold):
    """``R^d`` with ``⟨u, v⟩ = uᵀv``: ``exp = retract = x + v``, ``log = y − x``, transports
    are the identity."""

    name = "euclidean"
    curvature_lower = 0.0

    def __init__(self, dim: int) -> None:
        self.ambient_dim = int(dim)

    def check_point(self, x: np.ndarray, tol: float = 1e-8, what: str = "point") -> None:
        self._flat(x, what)

    def check_tangent(self, x: np.ndarray, v: np.ndarray, tol: float = 1e-8) -> None:
        self._flat(v, "tangent vector")

    def proj(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.array(v, dtype=np.float64, copy=True)

    def egrad_to_rgrad(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return np.array(g, dtype=np.float64, copy=True)

    def inner(self, x: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v)

    def exp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return x + v

    def log(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y - x

    def dist_sq(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.sum((x - y) ** 2))

    def transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.array(v, dtype=np.float64, copy=True)

    def retract(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return x + v

    def vector_transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.array(v, dtype=np.float64, copy=True)

    def random_point(self, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(self.ambient_dim)

    def random_tangent(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(self.ambient_dim)

    def to_manifold(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, dtype=np.float64, copy=True)


class Sphere(Manifold):
    """The unit sphere ``S^{dim−1} ⊂ R^dim`` (see the ``sphere_*`` functions for the maths)."""

    name = "sphere"
    curvature_lower = 0.0  # the curvature is 1 ≥ 0: ζ = 1

    def __init__(self, dim: int) -> None:
        if int(dim) < 2:
            raise ValueError(f"the sphere needs ambient dimension ≥ 2, got {dim}")
        self.ambient_dim = int(dim)

    def check_point(self, x: np.ndarray, tol: float = 1e-8, what: str = "point") -> None:
        a = self._flat(x, what)
        norm = float(np.linalg.norm(a))
        if abs(norm - 1.0) > tol:
            raise ValueError(f"{what} is not on the unit sphere: ‖x‖ = {norm!r} (tolerance {tol})")

    def check_tangent(self, x: np.ndarray, v: np.ndarray, tol: float = 1e-8) -> None:
        a = self._flat(v, "tangent vector")
        dot = float(np.asarray(x) @ a)
        if abs(dot) > tol * max(1.0, float(np.linalg.norm(a))):
            raise ValueError(f"vector is not tangent to the sphere at x: xᵀv = {dot!r}")

    def proj(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sphere_proj(x, v)

    def egrad_to_rgrad(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return sphere_egrad_to_rgrad(x, g)

    def inner(self, x: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v)

    def exp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sphere_exp(x, v)

    def log(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return sphere_log(x, y)

    def dist_sq(self, x: np.ndarray, y: np.ndarray) -> float:
        return sphere_dist_sq(x, y)

    def transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sphere_transport(x, y, v)

    def retract(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sphere_retract(x, v)

    def vector_transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sphere_vector_transport(x, y, v)

    def random_point(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform on the sphere: ``g/‖g‖``, ``g ~ N(0, I)``."""
        g = rng.standard_normal(self.ambient_dim)
        return g / np.linalg.norm(g)

    def random_tangent(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``P_x g``, ``g ~ N(0, I)``."""
        return sphere_proj(x, rng.standard_normal(self.ambient_dim))

    def to_manifold(self, x: np.ndarray) -> np.ndarray:
        """``x/‖x‖``."""
        a = np.asarray(x, dtype=np.float64)
        return a / np.linalg.norm(a)


class SPD(Manifold):
    """Symmetric positive definite ``n × n`` matrices with the affine-invariant metric,
    flattened row-major (see the ``spd_*`` functions for the maths)."""

    name = "spd"
    curvature_lower = -0.5

    def __init__(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"SPD matrices need n ≥ 1, got {n}")
        self.n = int(n)
        self.ambient_dim = self.n * self.n

    def mat(self, x: np.ndarray) -> np.ndarray:
        """The ``n × n`` matrix of a flat vector (a view)."""
        return np.asarray(x, dtype=np.float64).reshape(self.n, self.n)

    @staticmethod
    def flat(a: np.ndarray) -> np.ndarray:
        """The flat (row-major) vector of a matrix."""
        return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)

    def check_point(self, x: np.ndarray, tol: float = 1e-8, what: str = "point") -> None:
        """Symmetric to ``tol`` (relative to the largest entry) and positive definite."""
        a = self.mat(self._flat(x, what))
        scale = max(1.0, float(np.abs(a).max()))
        asym = float(np.abs(a - a.T).max())
        if asym > tol * scale:
            raise ValueError(f"{what} is not symmetric: max |X − Xᵀ| = {asym!r}")
        lam_min = float(np.linalg.eigvalsh(sym(a))[0])
        if not lam_min > 0:
            raise ValueError(f"{what} is not positive definite: smallest eigenvalue {lam_min!r}")

    def check_tangent(self, x: np.ndarray, v: np.ndarray, tol: float = 1e-8) -> None:
        a = self.mat(self._flat(v, "tangent vector"))
        asym = float(np.abs(a - a.T).max())
        if asym > tol * max(1.0, float(np.abs(a).max())):
            raise ValueError(f"tangent vector is not symmetric: max |V − Vᵀ| = {asym!r}")

    def _call(self, fn: Callable[..., np.ndarray], *args: np.ndarray) -> np.ndarray:
        return self.flat(fn(*(self.mat(a) for a in args)))

    def proj(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._call(spd_proj, x, v)

    def egrad_to_rgrad(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return self._call(spd_egrad_to_rgrad, x, g)

    def inner(self, x: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
        return spd_inner(self.mat(x), self.mat(u), self.mat(v))

    def exp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._call(spd_exp, x, v)

    def log(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._call(spd_log, x, y)

    def dist_sq(self, x: np.ndarray, y: np.ndarray) -> float:
        return spd_dist_sq(self.mat(x), self.mat(y))

    def transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._call(spd_transport, x, y, v)

    def retract(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._call(spd_retract, x, v)

    def vector_transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._call(spd_vector_transport, x, y, v)

    def random_point(self, rng: np.random.Generator) -> np.ndarray:
        """``expm(S)`` with ``S = sym(G)/√n``, ``G`` standard Gaussian."""
        s = sym(rng.standard_normal((self.n, self.n))) / math.sqrt(self.n)
        lam, q = np.linalg.eigh(s)
        return self.flat(_fn(lam, q, np.exp(lam)))

    def random_tangent(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``X^{1/2} sym(G) X^{1/2}`` (a standard symmetric Gaussian in the metric at ``X``)."""
        root, _ = spd_sqrt_pair(self.mat(x))
        return self.flat(sym(root @ sym(rng.standard_normal((self.n, self.n))) @ root))

    def to_manifold(self, x: np.ndarray) -> np.ndarray:
        """``sym(X)`` (undoes asymmetric rounding; positive definiteness is not repaired)."""
        return self._call(sym, x)


def build_manifold(name: str, ambient_dim: int) -> Manifold:
    """The manifold ``name`` (one of :data:`MANIFOLDS`) in ``R^ambient_dim``; SPD needs a
    square ``ambient_dim = n²``. ``ValueError`` otherwise."""
    if name == "euclidean":
        return Euclidean(ambient_dim)
    if name == "sphere":
        return Sphere(ambient_dim)
    if name == "spd":
        n = math.isqrt(int(ambient_dim))
        if n * n != int(ambient_dim):
            raise ValueError(f"spd needs ambient_dim = n², got {ambient_dim}")
        return SPD(n)
    raise ValueError(f"unknown manifold {name!r}; valid choices: {', '.join(MANIFOLDS)}")


__all__ = [
    "MANIFOLDS",
    "SPD",
    "Euclidean",
    "Manifold",
    "Sphere",
    "build_manifold",
    "curvature_factor",
    "sphere_dist_sq",
    "sphere_exp",
    "sphere_log",
    "sphere_proj",
    "sphere_retract",
    "sphere_transport",
    "sphere_vector_transport",
    "spd_dist_sq",
    "spd_egrad_to_rgrad",
    "spd_exp",
    "spd_inner",
    "spd_log",
    "spd_proj",
    "spd_retract",
    "spd_sqrt_pair",
    "spd_transport",
    "spd_vector_transport",
    "sym",
]
