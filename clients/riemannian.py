"""Riemannian methods, client side (R-GD, R-SGD, R-SVRG, R-LSVRG, R-PAGE, R-MARINA).

Every client works on ``f̃_m = M w_m f_m`` (see :mod:`strategies.riemannian`) and is
stateless: what it needs (the point, or the old and the new point) comes with each message.
Its Riemannian gradient is ``grad f̃_m(x) = M w_m · egrad_to_rgrad(x, ∇f_m(x))`` on the task's
manifold (``task.geometry``; ``∇f_m`` is the Euclidean gradient of the ambient extension).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.compressors import Slot, build_compressor, compressor_rng
from fedsim.tasks.base import Task


class RiemannianClient(FedsimClient):
    """Answers three kinds of message (``config["kind"]``)::

        grad:  [x]     → [grad f̃_m(x)]           (a minibatch B of method.batch_size samples
                                                   from (seed, round, "rsgd/batch", m) if set)
        diff:  [y, x]  → [grad f̃_m(x) − Γ_y^x grad f̃_m(y)]
        both:  [y, x]  → [grad f̃_m(x), grad f̃_m(x) − Γ_y^x grad f̃_m(y)]

    ``Γ`` is parallel transport along the geodesic (``method.transport=parallel``) or the
    projection vector transport (``projection``). ``grad_evals``: ``n_m`` (or ``|B|``) per
    gradient, ``2 n_m`` per difference.
    """

    def __init__(self, pid: int, task: Task, seed: int, context: Context, method: Mapping) -> None:
        super().__init__(pid, task.clients[pid], seed, context)
        self.method = method
        self.manifold = task.geometry
        self.factor = float(task.num_clients * task.weights[pid])

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> RiemannianClient:
        return cls(pid, task, seed, context, method)

    def rgrad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """``grad f̃_m(x)`` (on the minibatch ``idx`` when given)."""
        return self.factor * self.manifold.egrad_to_rgrad(x, self.objective.grad(x, idx))

    def transport(self, y: np.ndarray, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``Γ_y^x v`` with the configured transport."""
        if self.method.get("transport", "parallel") == "parallel":
            return self.manifold.transport(y, x, v)
        return self.manifold.vector_transport(y, x, v)

    def batch(self, rnd: int) -> np.ndarray | None:
        """R-SGD's minibatch: ``b`` distinct samples, or None (all of them)."""
        b = self.method.get("batch_size")
        if b is None:
            return None
        n = self.objective.num_samples
        return np.sort(self.rng(rnd, "rsgd/batch").choice(n, size=min(int(b), n), replace=False))

    def answer(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int]:
        """The uncompressed reply and its sample gradients."""
        kind = str(config["kind"])
        n = self.objective.num_samples
        if kind == "grad":
            idx = self.batch(int(config["round"]))
            return [self.rgrad(parameters[-1], idx)], n if idx is None else int(idx.size)
        y, x = parameters
        at_x = self.rgrad(x)
        diff = at_x - self.transport(y, x, self.rgrad(y))
        if kind == "diff":
            return [diff], 2 * n
        if kind == "both":
            return [at_x, diff], 2 * n
        raise ValueError(f"unknown message kind {kind!r}")

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        arrays, evals = self.answer(parameters, config)
        return arrays, self.objective.num_samples, {"grad_evals": evals}


class RMarinaClient(RiemannianClient):
    """R-MARINA's client (arXiv 2403.06677; MARINA, arXiv 2102.07845, Alg. 1):
    a full round sends ``grad f̃_m(x^k)`` dense; a difference round sends
    ``Q_m(grad f̃_m(x^k) − Γ_{x^{k−1}}^{x^k} grad f̃_m(x^{k−1}))`` (the compressor's payload, its
    generator from :func:`~fedsim.blocks.compressors.compressor_rng`), recomputing the old
    gradient at the point the server sends (no state; see :class:`strategies.riemannian.RMarina`).
    """

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        arrays, evals = self.answer(parameters, config)
        n = self.objective.num_samples
        if str(config["kind"]) != "diff":
            return arrays, n, {"grad_evals": evals}
        comp = build_compressor(self.method["compressor"], arrays[0].size)
        rnd = int(config["round"])
        slot = Slot(int(config["position"]), int(config["cohort_size"]))
        payload = comp.compress(arrays[0], compressor_rng(comp, self.seed, rnd, self.pid), slot)
        return payload, n, {"grad_evals": evals, "up_floats": comp.floats(payload)}
