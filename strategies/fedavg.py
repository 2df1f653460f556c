"""FedAvg with a server stepsize, and hence regularized client participation.

Server rule (McMahan et al. 2017 with a server stepsize; Malinovsky et al. 2022, "Nastya", when
the local solver is one epoch of random reshuffling):

    x ← x − η · Σ_{m∈S} a_m w_m Δ_m,    Δ_m = x − y_m (client m's displacement),

where ``w_m = n_m/N`` and ``a_m`` are the sampler's Horvitz–Thompson multipliers, so the update
is an unbiased estimate of the full-participation step ``η Σ_m w_m Δ_m`` for every sampler.
With ``sampler=cyclic`` (each client exactly once per meta-epoch) this is FedAvg with regularized
client participation (Malinovsky, Horváth, Burlachenko, Richtárik, arXiv 2302.03662, Alg. 1).

With a robust aggregator (``aggregator=cm|tm|krum|rfa|cc``, fixed-size uniform cohorts) the
weighted sum becomes ``x ← x − η · Agg({M w_m Δ_m}_{m∈S})``: for ``aggregator=mean`` this is the
same step, since ``a_m = M/C``; the aggregator weighs every reply alike, as a server that cannot
trust the clients' sample counts must. Attacks (``attack=``) rewrite the vectors ``M w_m Δ_m``
the aggregator sees; the shift-back attack sends ``(x − x0)/η``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsim.blocks.attacks import Attack
from fedsim.blocks.local_optimizer import resolve_local_optimizer
from fedsim.blocks.robust import RobustStep
from fedsim.blocks.samplers import Cohort, Sampler, unbiased_sum
from fedsim.blocks.solvers import SOLVERS
from fedsim.blocks.stepsizes import local_gd_lr, positive_or_auto
from fedsim.errors import ConfigError, int_at_least
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings, robust_blocks


def resolve_local(method: Mapping, task: Task) -> dict:
    """Validate the common local-training knobs and resolve ``auto`` stepsizes."""
    solver = method.get("local_solver", "gd")
    if solver not in SOLVERS:
        raise ConfigError(
            f"unknown method.local_solver {solver!r}; valid choices: {', '.join(SOLVERS)}"
        )
    out = dict(method)
    out["local_solver"] = solver
    for key in ("local_steps", "local_epochs", "batch_size"):
        out[key] = int_at_least(f"method.{key}", method.get(key, 1), 1)
    out["client_lr"] = positive_or_auto(
        "method.client_lr", method.get("client_lr", "auto"), local_gd_lr(task, solver)
    )
    out["server_lr"] = positive_or_auto("method.server_lr", method.get("server_lr", 1.0), 1.0)
    return out


def weighted_displacement(replies: list[Reply], cohort: Cohort, weights: np.ndarray) -> np.ndarray:
    """``Σ_{m∈S} a_m w_m Δ_m`` over the replies (partition-id order)."""
    pids = np.array([r.pid for r in replies], dtype=np.int64)
    deltas = np.stack([r.arrays[0] for r in replies])
    return unbiased_sum(cohort, deltas, weights[pids], ids=pids)


class FedAvg(FedsimStrategy):
    """FedAvg with server stepsize ``η = method.server_lr`` (see the module docstring)."""

    uses = ("aggregator", "attack")
    oracle_ready = True  # the clients keep no state: attack.oracle=all may ask any of them

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        server_lr: float = 1.0,
        attack: Attack | None = None,
        robust: RobustStep | None = None,
    ) -> None:
        super().__init__(task, sampler, settings, attack, robust)
        self.server_lr = server_lr
        self.weights = task.weights

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (``sampler``: this run's); the local
        optimizer's knobs first (:mod:`fedsim.blocks.local_optimizer`)."""
        return resolve_local(resolve_local_optimizer(method, task), task)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> FedAvg:
        attack, robust = robust_blocks(method, task, settings)
        return cls(task, sampler, settings, float(method["server_lr"]), attack, robust)

    def fit_config(self, rnd: int, cohort: Cohort) -> dict[int, tuple[list[np.ndarray], dict]]:
        arrays = [self.x]
        return {int(pid): (arrays, {}) for pid in cohort.ids}

    def shift_back_target(self, rnd: int) -> np.ndarray:
        return (self.x - self.task.x0) / self.server_lr

    def reply_vector(self, rnd: int, reply: Reply) -> np.ndarray:
        """``M w_m Δ_m``: the vector the aggregator sees (and an attack forges)."""
        return self.task.num_clients * self.weights[reply.pid] * reply.arrays[0]

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        if self.robust is None or self.robust.is_mean:
            if self.attack is None:
                step = weighted_displacement(replies, cohort, self.weights)
            else:  # Σ a_m w_m Δ_m written over the (possibly forged) vectors M w_m Δ_m
                pids = np.array([r.pid for r in replies], dtype=np.int64)
                vectors = np.stack([r.vector for r in replies])
                step = unbiased_sum(cohort, vectors, None, ids=pids) / self.task.num_clients
        else:
            step = self.robust_aggregate(rnd, np.stack([r.vector for r in replies]))
        self.x = self.x - self.server_lr * step
