"""Byzantine-robust methods, client side (honest clients; attacks wrap them, clients/attacks.py).

Both run on ``f̃_i = M w_i f_i`` (see :mod:`strategies.byzantine`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.compressors import Slot, build_compressor, compressor_rng
from fedsim.tasks.base import Objective, Task


class _Scaled(FedsimClient):
    """A client on ``f̃_i = M w_i f_i`` with a minibatch of ``method.batch_size`` per round."""

    def __init__(
        self,
        pid: int,
        objective: Objective,
        seed: int,
        context: Context,
        method: Mapping,
        factor: float,
    ) -> None:
        super().__init__(pid, objective, seed, context)
        self.method = method
        self.factor = factor

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> _Scaled:
        factor = float(task.num_clients * task.weights[pid])
        return cls(pid, task.clients[pid], seed, context, method, factor)

    def batch(self, rnd: int, purpose: str) -> np.ndarray:
        """``b`` distinct sample indices drawn from ``(seed, rnd, purpose, pid)``."""
        n = self.objective.num_samples
        b = min(int(self.method["batch_size"]), n)
        return np.sort(self.rng(rnd, purpose).choice(n, size=b, replace=False))


class ByzVRMarinaPPClient(_Scaled):
    """Byz-VR-MARINA-PP (arXiv 2311.14127, Alg. 1 line 5), an honest client: stateless.

    ``full = 1``: send ``∇f̃_i(x^{k+1})``; otherwise send
    ``Q(∇f̃_{i,B}(x^{k+1}) − ∇f̃_{i,B}(x^k))`` with one minibatch ``B`` for both points.
    """

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        rnd = int(config["round"])
        n = self.objective.num_samples
        if int(config["full"]):
            g = self.factor * self.objective.grad(parameters[-1])
            return [g], n, {"grad_evals": n, "up_floats": int(g.size)}
        x_old, x_new = parameters
        idx = self.batch(rnd, "marina/batch")
        diff = self.factor * (self.objective.grad(x_new, idx) - self.objective.grad(x_old, idx))
        comp = build_compressor(self.method["compressor"], diff.size)
        slot = Slot(int(config["position"]), int(config["cohort_size"]))
        payload = comp.compress(diff, compressor_rng(comp, self.seed, rnd, self.pid), slot)
        metrics: dict[str, Scalar] = {"grad_evals": 2 * idx.size, "up_floats": comp.floats(payload)}
        return payload, n, metrics


class RobustMomentumClient(_Scaled):
    """Client momentum (Karimireddy, He & Jaggi, arXiv 2012.10333): ``m_i ← β m_i + ∇f̃_{i,B}(x)``
    on a fresh minibatch, kept in ``context.state`` and updated only when sampled; sends ``m_i``.
    A call flagged ``oracle`` (never made for this stateful client) would leave the buffer."""

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        rnd = int(config["round"])
        idx = self.batch(rnd, "momentum/batch")
        g = self.factor * self.objective.grad(x, idx)
        stored = self.load("momentum")
        buf = g if stored is None else float(self.method["momentum"]) * stored[0] + g
        if not int(config.get("oracle", 0)):
            self.save("momentum", [buf])
        return [buf], self.objective.num_samples, {"grad_evals": int(idx.size)}
