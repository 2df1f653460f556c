"""What a task is: per-client objectives on a flat parameter vector, plus the global view.

Every model in fedsim is a flat ``float64`` numpy vector ``x`` of length ``dim``; tasks with a
torch model map that vector onto the module's parameters. Flat vectors keep compressors,
aggregators and attacks model-agnostic and make one Flower array per message.

Riemannian tasks (``manifold`` set) keep ``x`` on a manifold embedded in ``R^dim`` (the sphere,
SPD matrices flattened row-major). Their objectives still return the *Euclidean* gradient of an
ambient extension; ``task.geometry.egrad_to_rgrad(x, obj.grad(x))`` is the Riemannian one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedsim.blocks.manifolds import Euclidean, Manifold


class Objective(ABC):
    """A finite sum ``f(x) = (1/n) Σ_j ℓ_j(x) + r(x)`` over ``n = num_samples`` samples.

    ``idx`` selects a minibatch: ``f_idx(x) = (1/|idx|) Σ_{j∈idx} ℓ_j(x) + r(x)``; ``None`` means
    all samples. ``smoothness`` bounds the Lipschitz constant of ``∇f``; ``sample_smoothness``
    bounds that of every ``∇(ℓ_j + r)`` (the constant stochastic solvers need).
    """

    num_samples: int
    smoothness: float
    sample_smoothness: float

    @abstractmethod
    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float: ...

    @abstractmethod
    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray: ...

    def accuracy(self, x: np.ndarray) -> float | None:
        """Fraction of correctly classified samples, or ``None`` where it means nothing."""
        return None

    def flipped(self) -> Objective:
        """The same objective with every label flipped (the label-flipping attack): ``±1 → ∓1``,
        class ``c → K − 1 − c`` of ``K``. Objectives without labels raise ``TypeError``."""
        raise TypeError(f"{type(self).__name__} has no labels to flip")


@dataclass
class Task:
    """A federated problem ``f(x) = Σ_m w_m f_m(x)`` with ``w_m = n_m / N``.

    ``clients[m]`` is the objective of partition id ``m``; ``full`` is ``f`` itself on the pooled
    data (used for centralized evaluation). ``mu`` is a strong-convexity constant of every
    ``f_m`` (0 when there is none). ``solve`` returns ``(x*, f*)`` computed by an accurate solver,
    or ``None`` when the problem has no computable optimum; call :meth:`optimum`, which caches.
    ``byzantine`` lists the Byzantine clients' partition ids: ``full`` and the optimum are then
    the honest clients' objective (their weights renormalized), ``clients`` still lists all.
    ``test`` is a held-out objective (test accuracy), or ``None``.

    Riemannian tasks set ``manifold`` (``None``: Euclidean ``R^dim``); then ``smoothness`` is a
    geodesic smoothness bound (``‖Hess f_m‖ ≤ L`` on the region that matters, stated by the
    task), ``mu`` a geodesic strong-convexity constant and ``zeta`` the curvature factor
    ``ζ = √|κ_min| D / tanh(√|κ_min| D)`` of the trigonometric distance bound (1 where the
    curvature is non-negative). ``distance_sq(x, x*)`` replaces ``manifold.dist_sq`` (or
    ``‖x − x*‖²``) in the metrics where ``x*`` is a set (``±x*`` on the sphere).
    """

    name: str
    dim: int
    clients: list[Objective]
    full: Objective
    x0: np.ndarray
    mu: float = 0.0
    solve: Callable[[], tuple[np.ndarray, float] | None] | None = None
    byzantine: tuple[int, ...] = ()
    test: Objective | None = None
    manifold: Manifold | None = None
    distance_sq: Callable[[np.ndarray, np.ndarray], float] | None = None
    zeta: float = 1.0
    _optimum: tuple[np.ndarray, float] | None = field(default=None, repr=False)
    _solved: bool = field(default=False, repr=False)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([c.num_samples for c in self.clients], dtype=float)

    @property
    def weights(self) -> np.ndarray:
        """``w_m = n_m / N``: the weight of client ``m`` in the global objective."""
        s = self.sizes
        return s / s.sum()

    @property
    def L(self) -> float:  # noqa: N802 - the paper's symbol
        return float(self.full.smoothness)

    @property
    def client_L(self) -> np.ndarray:
        return np.array([c.smoothness for c in self.clients], dtype=float)

    @property
    def geometry(self) -> Manifold:
        """The task's manifold, or Euclidean ``R^dim`` when it has none."""
        return self.manifold if self.manifold is not None else Euclidean(self.dim)

    def dist_sq_to_optimum(self, x: np.ndarray, x_star: np.ndarray) -> float:
        """``distance_sq(x, x*)`` if the task sets one, else the geometry's squared distance."""
        if self.distance_sq is not None:
            return float(self.distance_sq(x, x_star))
        return float(self.geometry.dist_sq(x, x_star))

    def optimum(self) -> tuple[np.ndarray, float] | None:
        """``(x*, f*)``, computed once on first use, or ``None``."""
        if not self._solved:
            self._optimum = self.solve() if self.solve is not None else None
            self._solved = True
        return self._optimum
