"""FedAvg client: run the local solver from the server model and send the displacement.

Client rule (McMahan et al. 2017; regularized participation, arXiv 2302.03662, Alg. 1 client
part): ``y = LocalSolver(f_m, x)``, send ``Δ_m = x − y``.

The local update rule is ``method.local_optimizer``: ``sgd`` (default) is the plain step
``y ← y − γ g`` of :func:`~fedsim.blocks.solvers.local_solve`; ``sgdm``, ``adamw`` and
``microadam`` run that torch optimizer over the same batch order on the flat model as one
parameter, and keep its state in ``context.state`` between rounds
(:mod:`fedsim.blocks.local_optimizer`). An ``oracle`` call (``attack.oracle=all``) computes the
reply from the kept state without changing it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.local_optimizer import STATE_KEY, LocalOptimizer, batch_order, torch_local_run
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
        if m.get("local_optimizer", "sgd") != "sgd":
            return self.fit_torch(x, rnd, oracle=bool(config.get("oracle", 0)))
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

    def fit_torch(
        self, x: np.ndarray, rnd: int, oracle: bool = False
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        """The local run with a torch optimizer whose state persists in ``context.state``."""
        m, n = self.method, self.objective.num_samples
        rule = LocalOptimizer.from_method(m)
        solver = m["local_solver"]
        fixed = self.rng(0, "shuffle-once").permutation(n) if solver == "so" else None
        batches = batch_order(
            n,
            solver,
            self.rng(rnd, "local-solver") if solver in ("sgd", "rr") else None,
            local_steps=int(m["local_steps"]),
            local_epochs=int(m["local_epochs"]),
            batch_size=int(m["batch_size"]),
            fixed_order=fixed,
        )
        kept = None if rule.fresh_in(rnd) else self.load(STATE_KEY)
        blob = None if kept is None else kept[0].tobytes()
        run = torch_local_run(self.objective, x, rule, batches, blob)
        if not oracle:  # an oracle call (attack.oracle=all) leaves the node's state as it was
            if rule.keeps_state:
                self.save(STATE_KEY, [np.frombuffer(run.state, dtype=np.uint8)])
            elif STATE_KEY in self.state:
                del self.state[STATE_KEY]
        metrics: dict[str, Scalar] = {"grad_evals": run.grad_evals}
        return [run.delta], n, metrics
