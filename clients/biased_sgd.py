"""BiasedSGD client: this client's part of the gradient estimator at the server's model.

Demidovich, Malinovsky, Sokolov & Richtárik, "A guide through the zoo of biased SGD"
(arXiv 2305.16296). With ``x`` from the server (:mod:`strategies.biased_sgd`):

- ``ind_biased`` / ``ind_unbiased``: draw ``S_m = {i : u_i < p_i}``, ``u ~ U[0, 1)^{n_m}`` from
  ``(seed, round, "biased-sgd/coins", pid)``, send ``[Σ_{i∈S_m} ν_i ∇f_i(x), |S_m|]`` with
  ``ν = 1`` (biased) or ``ν_i = 1/p_i`` (unbiased);
- ``compressed``: send the payload of ``C(∇f_m(x))`` (generator :func:`compressor_rng`);
- ``clip``: send ``min(1, τ/‖∇f_m(x)‖) ∇f_m(x)``; ``full``: send ``∇f_m(x)``.

The client keeps no state between rounds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.compressors import compressor_rng
from fedsim.blocks.estimators import ClippedGradient, CompressedGradient, IndependentSampling
from fedsim.tasks.base import Objective, Task
from strategies.biased_sgd import COIN_PURPOSE, BiasedSGDConfig


class BiasedSGDClient(FedsimClient):
    """One client's part of the BiasedSGD estimator (module docstring)."""

    def __init__(
        self,
        pid: int,
        objective: Objective,
        seed: int,
        context: Context,
        method: Mapping,
        dim: int,
    ) -> None:
        super().__init__(pid, objective, seed, context)
        self.config = BiasedSGDConfig.from_method(method)
        self.estimator = self.config.estimator_for(method.get("compressor"), dim)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> BiasedSGDClient:
        return cls(pid, task.clients[pid], seed, context, method, task.dim)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        rnd = int(config["round"])
        obj, est, n = self.objective, self.estimator, self.objective.num_samples
        if isinstance(est, IndependentSampling):
            p = self.config.probabilities(obj)
            total, count = est.local(obj, x, p, self.rng(rnd, COIN_PURPOSE))
            metrics: dict[str, Scalar] = {"grad_evals": count, "up_floats": int(total.size)}
            return [total, np.array([count], dtype=np.int64)], n, metrics
        grad = obj.grad(x)
        if isinstance(est, CompressedGradient):
            comp = est.compressor
            payload = comp.compress(grad, compressor_rng(comp, self.seed, rnd, self.pid))
            return payload, n, {"grad_evals": n, "up_floats": comp.floats(payload)}
        if isinstance(est, ClippedGradient):
            grad = est.clip(grad)
        return [grad], n, {"grad_evals": n}
