"""Clients of the clipped methods under (L0,L1)-smoothness (arXiv 2412.02781) and baselines.

- :class:`PathGradientClient` (Clip-LocalGDJ, CLERR, Clipped RR-CLI, L0L1-GD): plain local steps
  with a constant small stepsize ``γ``, then send the average of the gradients met on the way
  (``g_m``), and ``∇f_m(x)`` too when the server clips with the full gradient.
- :class:`CEFedAvgClient` (clip-FedAvg): local steps, send ``clip_cl((x − z_H)/H)``.
- :class:`CELGCClient` (local clipped SGD): every local step ``z ← z − θ(s) s``, send ``x − z``.

``θ(v) = 1/(c0 + c1‖v‖)`` (:func:`fedsim.blocks.clipping.clipped_stepsize`); only CELGC clips on the
client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.clipping import clip_to_norm, clipped_stepsize
from fedsim.blocks.solvers import epoch_batches
from fedsim.tasks.base import Objective, Task


def batches(
    objective: Objective, method: Mapping, rng: np.random.Generator, fixed: np.ndarray | None
) -> Iterator[tuple[np.ndarray | None, float]]:
    """The minibatches of one round and the weight of each in the round's average gradient.

    ``gd``: ``local_steps`` full gradients; ``sgd``: ``local_steps`` minibatches of
    ``batch_size`` drawn without replacement; ``rr``/``so``: ``local_epochs`` passes over a
    permutation (new every epoch / drawn once), weight ``|B|/n`` per batch and epoch.
    """
    n, solver = objective.num_samples, method["local_solver"]
    b = min(int(method["batch_size"]), n)
    if solver in ("gd", "sgd"):
        steps = int(method["local_steps"])
        for _ in range(steps):
            idx = None if solver == "gd" else np.sort(rng.choice(n, size=b, replace=False))
            yield idx, 1.0 / steps
        return
    epochs = int(method["local_epochs"])
    for _ in range(epochs):
        order = rng.permutation(n) if solver == "rr" else fixed
        for idx in epoch_batches(order, b):
            yield idx, len(idx) / (n * epochs)


class _Clipped(FedsimClient):
    def __init__(self, pid: int, objective: Objective, seed: int, context: Context, method):
        super().__init__(pid, objective, seed, context)
        self.method = method

    @classmethod
    def from_config(cls, method: Mapping, task: Task, pid: int, seed: int, context: Context):
        return cls(pid, task.clients[pid], seed, context, method)

    def walk(
        self, x: np.ndarray, rnd: int, step: Callable[[np.ndarray], float]
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Local steps ``z ← z − step(s)·s`` from ``x``; returns ``(z, g, steps, evals)`` with
        ``g`` the weighted average of the minibatch gradients ``s`` met on the way."""
        fixed = None
        if self.method["local_solver"] == "so":  # one permutation per client, kept
            fixed = self.rng(0, "shuffle-once").permutation(self.objective.num_samples)
        z, g = np.array(x, dtype=float, copy=True), np.zeros_like(x, dtype=float)
        steps = evals = 0
        for idx, weight in batches(self.objective, self.method, self.rng(rnd, "local"), fixed):
            s = self.objective.grad(z, idx)
            g += weight * s
            z -= step(s) * s
            steps += 1
            evals += self.objective.num_samples if idx is None else len(idx)
        return z, g, steps, evals


class PathGradientClient(_Clipped):
    """Local steps ``z ← z − γ s`` (unclipped, ``γ = method.client_lr``); sends ``g_m``, the
    average local gradient of the round (Algorithm 1 sends ``Δ_m/(γH)``, the same vector), and
    ``∇f_m(x)`` when ``method.clip_vector = full_gradient``."""

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        lr = float(self.method["client_lr"])
        _, g, _, evals = self.walk(x, int(config["round"]), lambda s: lr)
        out = [g]
        if self.method["clip_vector"] == "full_gradient":
            out.append(self.objective.grad(x))
            evals += self.objective.num_samples
        return out, self.objective.num_samples, {"grad_evals": evals}


class CEFedAvgClient(_Clipped):
    """Clip-FedAvg (the authors' ``CE-FedAvg`` baseline): local steps with a constant ``γ``,
    then ``u_m = clip_cl((x − z_H)/H)`` with ``cl = method.client_clip``."""

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        lr = float(self.method["client_lr"])
        z, _, steps, evals = self.walk(x, int(config["round"]), lambda s: lr)
        u = clip_to_norm((x - z) / steps, float(self.method["client_clip"]))
        return [u], self.objective.num_samples, {"grad_evals": evals}


class CELGCClient(_Clipped):
    """Local clipped SGD (the authors' ``CELGC`` baseline): every local step is
    ``z ← z − θ(s) s`` with ``θ(s) = 1/(c0 + c1‖s‖)``; sends ``Δ_m = x − z``."""

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        c0, c1 = float(self.method["c0"]), float(self.method["c1"])
        z, _, _, evals = self.walk(x, int(config["round"]), lambda s: clipped_stepsize(s, c0, c1))
        return [x - z], self.objective.num_samples, {"grad_evals": evals}
