"""High-accuracy optima ``(x*, f*)``: Newton's method, exact quadratic solves, and their cache.

Newton's method (damped, exact Hessian, backtracking on ``f``) for twice differentiable, strongly
convex objectives of moderate dimension (dense ``d × d`` Hessians)::

    x_{t+1} = x_t - η_t ∇²f(x_t)^{-1} ∇f(x_t),   η_t = max{2^{-i}: Armijo holds}

until ``‖∇f(x_t)‖ ≤ tol · max(1, ‖∇f(x_0)‖)``. Results are cached in-process and on disk as
``$FEDSIM_CACHE/optimum-<key>.npz`` (default ``~/.cache/fedsim``), keyed by a hash of the data,
labels and regularization (see :meth:`fedsim.tasks.logreg._Linear.fingerprint`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg as sla

from fedsim.cache import cache_dir, load, store

_MEMORY: dict[str, tuple[np.ndarray, float]] = {}
_CACHE_VERSION = "1"


class TwiceDifferentiable(Protocol):
    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float: ...

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray: ...

    def hessian(self, x: np.ndarray) -> np.ndarray: ...


def newton(
    obj: TwiceDifferentiable,
    x0: np.ndarray,
    tol: float = 1e-12,
    max_iter: int = 100,
    accept: float = 1e-8,
) -> tuple[np.ndarray, float]:
    """Minimize ``obj`` from ``x0`` by damped Newton; returns ``(x*, f(x*))``.

    Stops at ``‖∇f‖ ≤ tol·max(1, ‖∇f(x0)‖)``. When rounding stalls progress first, the point is
    accepted if ``‖∇f‖ ≤ accept·max(1, ‖∇f(x0)‖)``; otherwise ``RuntimeError``.
    """
    x = np.array(x0, dtype=np.float64)
    g = obj.grad(x)
    scale = max(1.0, float(np.linalg.norm(g)))
    f = obj.loss(x)
    stalls = 0
    for _ in range(max_iter):
        gnorm = float(np.linalg.norm(g))
        if gnorm <= tol * scale:
            break
        d = -sla.solve(obj.hessian(x), g, assume_a="pos")
        step = _backtrack(obj, x, f, g, d)
        if step is None:
            break
        x, f, g_new = step
        stalls = 0 if np.linalg.norm(g_new) < gnorm else stalls + 1
        g = g_new
        if stalls >= 3:
            break
    gnorm = float(np.linalg.norm(g))
    if gnorm > accept * scale:
        raise RuntimeError(f"Newton's method stopped at ‖∇f‖ = {gnorm:.3e} (scale {scale:.3e})")
    return x, float(f)


def _backtrack(
    obj: TwiceDifferentiable, x: np.ndarray, f: float, g: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Halve ``η`` from 1 until Armijo ``f(x+ηd) ≤ f(x) + 10⁻⁴ η ∇fᵀd`` holds, or (near ``x*``,
    where differences of ``f`` drown in rounding) until ``f`` does not grow and ``‖∇f‖`` shrinks.
    """
    slope, gnorm, t = float(g @ d), float(np.linalg.norm(g)), 1.0
    while t >= 1e-12:
        x_new = x + t * d
        f_new = obj.loss(x_new)
        g_new = obj.grad(x_new)
        if f_new <= f + 1e-4 * t * slope:
            return x_new, f_new, g_new
        if f_new <= f + 1e-14 * abs(f) and np.linalg.norm(g_new) < gnorm:
            return x_new, f_new, g_new
        t *= 0.5
    return None


def quadratic_optimum(
    hessians: list[np.ndarray], centers: list[np.ndarray], weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimizer of ``Σ_m w_m ½(x - b_m)ᵀA_m(x - b_m)`` by one linear solve.

    Returns ``(Ā, x*, f*)`` with ``Ā = Σ w_m A_m``, ``x* = Ā^{-1} Σ w_m A_m b_m`` and
    ``f* = Σ w_m ½ b_mᵀA_m b_m - ½ x*ᵀĀx*``.
    """
    a_bar = sum(w * a for w, a in zip(weights, hessians, strict=True))
    rhs = sum(w * (a @ b) for w, a, b in zip(weights, hessians, centers, strict=True))
    x_star = sla.solve(a_bar, rhs, assume_a="pos")
    const = sum(0.5 * w * (b @ a @ b) for w, a, b in zip(weights, hessians, centers, strict=True))
    return a_bar, x_star, float(const - 0.5 * x_star @ a_bar @ x_star)


def cached(key: str, compute: Callable[[], tuple[np.ndarray, float]]) -> tuple[np.ndarray, float]:
    """``compute()`` memoized in-process and on disk under ``key`` (a hex digest)."""
    key = f"{key[:40]}-v{_CACHE_VERSION}"
    if key in _MEMORY:
        x, f = _MEMORY[key]
        return x.copy(), f
    path = cache_dir() / f"optimum-{key}.npz"
    result = _load(path)
    if result is None:
        result = compute()
        _store(path, result)
    _MEMORY[key] = (result[0].copy(), result[1])
    return result


def _load(path: Path) -> tuple[np.ndarray, float] | None:
    z = load(path)
    if z is None or "x" not in z or "f" not in z:
        return None  # missing, empty, truncated or foreign: recomputed
    return np.asarray(z["x"], dtype=np.float64), float(z["f"])


def _store(path: Path, result: tuple[np.ndarray, float]) -> None:
    store(path, "the optimum", x=result[0], f=np.float64(result[1]))
