"""Quadratics with chosen smoothness per client: ``f_m(x) = ½(x - b_m)ᵀA_m(x - b_m)``.

Client ``m`` of ``M`` gets ``A_m = Q_m diag(λ_m) Q_mᵀ`` with ``Q_m`` a random orthogonal matrix
and eigenvalues ``λ_m`` spaced linearly on ``[μ, L_m]``, so ``f_m`` is ``μ``-strongly convex and
exactly ``L_m``-smooth. The ``L_m`` spread across clients by ``task.spread``:

- ``geometric`` (log-uniform): ``L_m = L_min · (L_max / L_min)^{m / (M - 1)}`` (``L_max`` when
  ``M = 1``);
- ``outlier``: the last client at ``L_max``, every other at ``L_min``;
- ``clusters``: the first ``⌊M/2⌋`` clients at ``L_min``, the others at ``L_max``.

``task.rotation=shared`` draws one ``Q`` for all clients (their curvatures differ, their axes do
not, so ``f`` keeps the condition number ``L/μ``); ``random`` (the default) one per client.

Centers ``b_m = b̄ + h ξ_m`` with ``b̄, ξ_m ~ N(0, I)`` and ``h`` = ``task.heterogeneity``:
``h = 0`` gives every client the same minimizer. The problem is deterministic: one "sample" per
client. The global ``f = Σ_m w_m f_m`` is itself a quadratic ``½(x - x*)ᵀĀ(x - x*) + f*``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from fedsim.rng import generator
from fedsim.tasks.base import Objective


class Quadratic(Objective):
    """``f(x) = ½(x - b)ᵀA(x - b) + c`` with ``A`` symmetric positive definite.

    Deterministic: ``num_samples = 1`` and minibatch indices ``idx`` are ignored.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, c: float = 0.0) -> None:
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.c = float(c)
        self.num_samples = 1
        eig = sla.eigvalsh(self.a)
        self.smoothness = float(eig[-1])
        self.sample_smoothness = self.smoothness
        self.strong_convexity = float(eig[0])

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        r = x - self.b
        return float(0.5 * r @ self.a @ r + self.c)

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        return self.a @ (x - self.b)

    def hessian(self, x: np.ndarray) -> np.ndarray:
        return self.a.copy()


SPREADS = ("geometric", "outlier", "clusters")
ROTATIONS = ("random", "shared")


def smoothness_spread(
    num_clients: int, l_min: float, l_max: float, shape: str = "geometric"
) -> np.ndarray:
    """The clients' ``L_m`` for ``shape`` in :data:`SPREADS` (module docstring)."""
    if num_clients == 1:
        return np.array([float(l_max)])
    if shape == "outlier":
        return np.array([float(l_min)] * (num_clients - 1) + [float(l_max)])
    if shape == "clusters":
        low = num_clients // 2
        return np.array([float(l_min)] * low + [float(l_max)] * (num_clients - low))
    exponent = np.arange(num_clients) / (num_clients - 1)
    return float(l_min) * (float(l_max) / float(l_min)) ** exponent


def random_spd(dim: int, mu: float, top: float, rng: np.random.Generator) -> np.ndarray:
    """``Q diag(linspace(μ, top, d)) Qᵀ`` with ``Q`` Haar-orthogonal (``[top]`` when ``d = 1``)."""
    eig = np.array([top]) if dim == 1 else np.linspace(mu, top, dim)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))  # sign fix makes Q Haar distributed
    a = (q * eig) @ q.T
    return 0.5 * (a + a.T)


def quadratic_clients(
    num_clients: int,
    dim: int,
    mu: float,
    l_min: float,
    l_max: float,
    heterogeneity: float,
    seed: int,
    spread: str = "geometric",
    rotation: str = "random",
) -> list[Quadratic]:
    """The ``M`` client quadratics (client ``m`` draws from ``generator(seed, 0, ., m)``);
    ``rotation="shared"`` gives every client one seeded eigenbasis."""
    tops = smoothness_spread(num_clients, l_min, l_max, spread)
    center = generator(seed, 0, "task/quadratic").standard_normal(dim)
    clients = []
    for m, top in enumerate(tops):
        rng = generator(seed, 0, "task/quadratic", m)
        if rotation == "shared":  # one eigenbasis for all: curvatures differ, axes do not
            basis = generator(seed, 0, "task/quadratic-basis")
            a = random_spd(dim, mu, float(top), basis)
        else:
            a = random_spd(dim, mu, float(top), rng)
        b = center + heterogeneity * rng.standard_normal(dim)
        clients.append(Quadratic(a, b))
    return clients
