"""The MAST objective over finite sets of diagonal sketches, its optimum, and the shift ``v``.

MAST (model-agnostic sparsified training; Demidovich, Malinovsky, Shulgin, Richtárik, arXiv
2311.16086, Eq. 2 and its distributed form) replaces ``f = Σ_m w_m f_m`` by

    F(x) = Σ_m w_m (1/N_m) Σ_{j<N_m} f_m(v + S_{m,j}(x − v)),
    ∇F(x) = Σ_m w_m (1/N_m) Σ_j S_{m,j}ᵀ ∇f_m(y_{m,j}),     y_{m,j} = v + S_{m,j}(x − v),
    ∇²F(x) = Σ_m w_m (1/N_m) Σ_j S_{m,j}ᵀ ∇²f_m(y_{m,j}) S_{m,j},

when client ``m``'s sketch distribution is uniform over the finite set ``{S_{m,j}}`` (exactly
``f_D``), or as the estimate of ``f_D`` by a fixed set of draws. Sketches are diagonal and given
as ``(support, scale)`` pairs, so this module needs no sketch class (tasks import no blocks).

**Optimum.** A coordinate outside the support of every sketch has ``∂F/∂x_j ≡ 0``: ``F`` does not
depend on it and its minimizers form an affine set. Every method started at ``x⁰`` leaves such
a coordinate at ``x⁰_j`` (its sketched gradients are zero there), so the optimum reported is the
minimizer with those coordinates at ``x⁰``: damped Newton (:func:`fedsim.tasks.optimum.newton`,
``‖∇F‖ ≤ 10⁻¹² max(1, ‖∇F(x⁰)‖)``) on the covered coordinates, cached on disk like every optimum
when the clients' objectives have fingerprints.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsim.errors import ConfigError
from fedsim.tasks import optimum
from fedsim.tasks.base import Objective
from fedsim.tasks.logreg import fingerprint

Support = tuple[np.ndarray, np.ndarray]  # (sorted kept coordinates, their scales)
SHIFTS = ("zero", "x0")


def load_shift(spec: object, x0: np.ndarray) -> np.ndarray:
    """The shift ``v``: ``zero``, ``x0`` (the task's start), or a ``.npy`` file of ``d`` finite
    numbers (a pretrained model). Raises :class:`ConfigError` otherwise."""
    dim = int(np.size(x0))
    if spec == "zero":
        return np.zeros(dim)
    if spec == "x0":
        return np.array(x0, dtype=np.float64, copy=True)
    path = Path(str(spec)).expanduser()
    if not isinstance(spec, str) or not path.is_file():
        raise ConfigError(
            f"method.shift must be 'zero', 'x0' or the path of a .npy file; {spec!r} is none"
        )
    v = _read_shift(str(path.resolve()), path.stat().st_mtime_ns).copy()
    if v.shape != (dim,) or not np.isfinite(v).all():
        raise ConfigError(
            f"method.shift: {path} holds an array of shape {np.shape(v)}; the model needs "
            f"{dim} finite numbers"
        )
    return v


@functools.lru_cache(maxsize=8)
def _read_shift(path: str, mtime_ns: int) -> np.ndarray:
    """The array in a ``.npy`` file (read once per process and file version; clients read the
    shift for every message)."""
    try:
        v = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"method.shift: cannot read {path}: {err}") from err
    return np.asarray(v, dtype=np.float64) if np.ndim(v) != 1 else v.astype(np.float64)


class SketchedObjective:
    """``F`` of the module docstring: ``clients[m]`` with weight ``weights[m]`` and sketches
    ``sketches[m]`` (a list of ``(support, scale)``), all around the shift ``v``."""

    def __init__(
        self,
        clients: Sequence[Objective],
        weights: np.ndarray,
        shift: np.ndarray,
        sketches: Sequence[Sequence[Support]],
    ) -> None:
        self.clients = list(clients)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.v = np.asarray(shift, dtype=np.float64)
        self.sketches = [list(s) for s in sketches]
        self.dim = int(self.v.size)

    def _points(self, x: np.ndarray):
        for m, (obj, w) in enumerate(zip(self.clients, self.weights, strict=True)):
            sets = self.sketches[m]
            for idx, scale in sets:
                y = self.v.copy()
                y[idx] = self.v[idx] + scale * (x[idx] - self.v[idx])
                yield obj, w / len(sets), idx, scale, y

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        return float(sum(c * obj.loss(y) for obj, c, _, _, y in self._points(x)))

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros(self.dim)
        for obj, c, sup, scale, y in self._points(x):
            out[sup] += c * scale * obj.grad(y)[sup]
        return out

    def hessian(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((self.dim, self.dim))
        for obj, c, sup, scale, y in self._points(x):
            h = obj.hessian(y)  # type: ignore[attr-defined]
            out[np.ix_(sup, sup)] += c * (scale[:, None] * h[np.ix_(sup, sup)] * scale[None, :])
        return out

    def covered(self) -> np.ndarray:
        """Coordinates in the support of some sketch of a client with positive weight."""
        mask = np.zeros(self.dim, dtype=bool)
        for m, sets in enumerate(self.sketches):
            if self.weights[m] > 0:
                for idx, _ in sets:
                    mask[idx] = True
        return mask

    def solvable(self) -> bool:
        """Whether every client objective has a Hessian (Newton's method needs it)."""
        return all(hasattr(c, "hessian") for c in self.clients)

    def key(self, x0: np.ndarray) -> str | None:
        """A cache key (None when some client objective has no fingerprint)."""
        if not all(hasattr(c, "fingerprint") for c in self.clients):
            return None
        parts: list[object] = ["mast", self.weights, self.v, np.asarray(x0, dtype=np.float64)]
        parts += [c.fingerprint() for c in self.clients]  # type: ignore[attr-defined]
        for sets in self.sketches:
            parts.append(len(sets))
            for idx, scale in sets:
                parts += [np.asarray(idx, dtype=np.int64), np.asarray(scale, dtype=np.float64)]
        return fingerprint(*parts)


class _Restricted:
    """``z ↦ F(x⁰ with x_C = z)`` on the covered coordinates ``C``."""

    def __init__(self, obj: SketchedObjective, x0: np.ndarray, mask: np.ndarray) -> None:
        self.obj, self.x0, self.mask = obj, np.asarray(x0, dtype=np.float64), mask

    def embed(self, z: np.ndarray) -> np.ndarray:
        x = self.x0.copy()
        x[self.mask] = z
        return x

    def loss(self, z: np.ndarray, idx: np.ndarray | None = None) -> float:
        return self.obj.loss(self.embed(z))

    def grad(self, z: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        return self.obj.grad(self.embed(z))[self.mask]

    def hessian(self, z: np.ndarray) -> np.ndarray:
        return self.obj.hessian(self.embed(z))[np.ix_(self.mask, self.mask)]


def mast_optimum(obj: SketchedObjective, x0: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``(x*_F, F*)`` (module docstring), or None when the objectives have no Hessian."""
    if not obj.solvable():
        return None
    mask = obj.covered()

    def compute() -> tuple[np.ndarray, float]:
        restricted = _Restricted(obj, x0, mask)
        z, f = optimum.newton(restricted, np.asarray(x0, dtype=np.float64)[mask], max_iter=200)
        return restricted.embed(z), f

    key = obj.key(x0)
    return compute() if key is None else optimum.cached(key, compute)
