"""FedAvg client: run the local solver from the server model and send the displacement.

Client rule (McMahan et al. 2017; regularized participation, arXiv 2302.03662, Alg. 1 client
part): ``y = LocalSolver(f_m, x)``, send ``Δ_m = x − y``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.solvers import local_solve
from fedsim.tasks.base import Objective, Task


class FedAvgClient(FedsimClient):
    """Local GD / SGD / RR / SO with stepsize ``method.client_lr`` (module docstring)."""

    def __init__(
        self, pid: int, objective: Objective, seed: int, context: Context, method: Mapping
    ) -> None:
        super().__init__(pid, objective, seed, context)
        self.method = method

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> FedAvgClient:
        return cls(pid, task.clients[pid], seed, context, method)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        rnd = int(config["round"])
        m = self.method
        fixed = None
        if m["local_solver"] == "so":  # one permutation per client, the same every round
            fixed = self.rng(0, "shuffle-once").permutation(self.objective.num_samples)
        run = local_solve(
            self.objective,
            x,
            solver=m["local_solver"],
            lr=float(m["client_lr"]),
            rng=self.rng(rnd, "local-solver") if m["local_solver"] in ("sgd", "rr") else None,
            local_steps=int(m["local_steps"]),
            local_epochs=int(m["local_epochs"]),
            batch_size=int(m["batch_size"]),
            fixed_order=fixed,
        )
        metrics: dict[str, Scalar] = {"grad_evals": run.grad_evals}
        return [x - run.y], self.objective.num_samples, metrics
