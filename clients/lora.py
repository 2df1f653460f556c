"""Low-rank federated fine-tuning, client side (arXiv 2410.08305, Algorithm 2 client part, and
its baselines; the rules are in :mod:`strategies.lora`).

:class:`FullClient` (Fed-FPFT) runs ``K`` gradient steps on every parameter and sends
``Δ = x − y``. :class:`LoraClient` (Fed-LoRA, Fed-AsymmLoRA, Fed-CoLA, Fed-RAC-LoRA) receives the
base vector and the trained factor(s) of the current link, regenerates the frozen factor from
``(seed, link, layer)``, runs ``K`` gradient steps on the trained factor(s) (and the adapted
layers' biases with ``method.train_bias``) through ``∇_A = s Bᵀ G``, ``∇_B = s G Aᵀ`` and sends
the displacement of each trained array. Both are stateless: everything they need comes with the
message, so a client that missed rounds (partial participation) or merges is never out of date.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.tasks.base import Objective, Task
from strategies.lora import (
    LoraSettings,
    factor_grads,
    factor_stepsize,
    frozen_of,
    merge,
    random_factor,
    trained_of,
)


class FullClient(FedsimClient):
    """Fed-FPFT's client: ``y ← y − γ ∇f_m(y)`` for ``method.local_steps`` steps, send
    ``x − y``."""

    def __init__(
        self,
        pid: int,
        objective: Objective,
        seed: int,
        context: Context,
        lr: float,
        steps: int,
    ) -> None:
        super().__init__(pid, objective, seed, context)
        self.lr, self.steps = lr, steps

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> FullClient:
        lr, steps = float(method["client_lr"]), int(method["local_steps"])
        return cls(pid, task.clients[pid], seed, context, lr, steps)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = np.asarray(parameters[0], dtype=np.float64)
        y = x.copy()
        for _ in range(self.steps):
            y -= self.lr * self.objective.grad(y)
        n = self.objective.num_samples
        return [x - y], n, {"grad_evals": self.steps * n}


class LoraClient(FedsimClient):
    """The four low-rank methods' client (module docstring). Message: ``[base, trained
    factor(s) in layer order]`` and config ``link``, ``side`` (``left``/``right``/``both``);
    reply: ``[Δ of each trained factor, Δ of each trained bias]``."""

    def __init__(
        self,
        pid: int,
        objective: Objective,
        seed: int,
        context: Context,
        cfg: LoraSettings,
        task: Task,
    ) -> None:
        super().__init__(pid, objective, seed, context)
        self.cfg = cfg
        self.layers = cfg.layers(task)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> LoraClient:
        return cls(pid, task.clients[pid], seed, context, LoraSettings.of(method, task), task)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        cfg, layers = self.cfg, self.layers
        link, side = int(config["link"]), str(config["side"])
        base = np.array(parameters[0], dtype=np.float64, copy=True)
        factors: dict[str, dict[str, np.ndarray]] = {"A": {}, "B": {}}
        given = iter(parameters[1:])
        trained = trained_of(side)
        frozen = frozen_of(side)
        for layer in layers:
            for w in trained:
                factors[w][layer.name] = np.array(next(given), dtype=np.float64, copy=True)
            if frozen is not None:
                factors[frozen][layer.name] = random_factor(
                    self.seed, link, layer, frozen, cfg.rank, cfg.init
                )
        a, b = factors["A"], factors["B"]
        start = {w: {k: v.copy() for k, v in factors[w].items()} for w in trained}
        biased = [la for la in layers if cfg.train_bias and la.bias_offset is not None]
        bias0 = [np.array(la.bias(base), copy=True) for la in biased]
        s, big_l = cfg.scale, cfg.smoothness
        lrs: dict[str, float] = {}
        for step in range(cfg.local_steps):
            g = self.objective.grad(merge(base, layers, a, b, s))
            grads = {}
            for layer in layers:
                name = layer.name
                grads[name] = factor_grads(g, layer, a[name], b[name], s)
                if step == 0:  # the stepsize is held for the round (strategies.lora)
                    lrs[name] = (
                        cfg.client_lr
                        if cfg.client_lr is not None
                        else factor_stepsize(side, big_l, s, a[name], b[name], layer.weight(g))
                    )
            bias_lr = cfg.client_lr if cfg.client_lr is not None else 1.0 / big_l
            for layer in layers:  # every update from the same point g
                name = layer.name
                grad_a, grad_b = grads[name]
                if "A" in trained:
                    a[name] = a[name] - lrs[name] * grad_a
                if "B" in trained:
                    b[name] = b[name] - lrs[name] * grad_b
            for layer in biased:
                bias = layer.bias(base)
                bias -= bias_lr * layer.bias(g)
        out = [start[w][layer.name] - factors[w][layer.name] for layer in layers for w in trained]
        out += [b0 - la.bias(base) for b0, la in zip(bias0, biased, strict=True)]
        n = self.objective.num_samples
        return out, n, {"grad_evals": cfg.local_steps * n}
