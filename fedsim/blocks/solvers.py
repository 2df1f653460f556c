"""Local solvers: what a client does between two communications.

Pure functions of an :class:`~fedsim.tasks.base.Objective`, a start point and a generator.
With stepsize γ and start ``y_0 = x``:

- ``gd``:  ``y_{k+1} = y_k − γ ∇f(y_k)``, ``K = local_steps`` steps, ``K·n`` sample gradients.
- ``sgd``: ``y_{k+1} = y_k − γ ∇f_{B_k}(y_k)``, ``B_k`` a fresh minibatch of ``batch_size``
  samples drawn without replacement, ``K`` steps, ``K·b`` sample gradients.
- ``rr``:  random reshuffling (Mishchenko, Khaled, Richtárik 2020): every epoch a new permutation
  σ of the ``n`` samples, then ``⌈n/b⌉`` steps over consecutive minibatches of σ; ``E·n``.
- ``so``:  shuffle once: as ``rr`` with one permutation drawn once per client and kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.tasks.base import Objective

SOLVERS = ("gd", "sgd", "rr", "so")


@dataclass(frozen=True)
class LocalRun:
    """The outcome of a local run: the last iterate and the sample gradients it cost."""

    y: np.ndarray
    grad_evals: int


def epoch_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive minibatches of ``order`` (the last one may be smaller)."""
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def local_solve(
    objective: Objective,
    x: np.ndarray,
    *,
    solver: str,
    lr: float,
    rng: np.random.Generator | None,
    local_steps: int = 1,
    local_epochs: int = 1,
    batch_size: int = 1,
    fixed_order: np.ndarray | None = None,
) -> LocalRun:
    """Run ``solver`` from ``x`` with stepsize ``lr``; see the module docstring for the rules.

    ``rng`` drives ``sgd`` and ``rr`` (the others may pass None); ``fixed_order`` is the
    shuffle-once permutation (required for ``so``).
    """
    y = np.array(x, dtype=float, copy=True)
    n = objective.num_samples
    if solver == "gd":
        for _ in range(local_steps):
            y -= lr * objective.grad(y)
        return LocalRun(y, local_steps * n)
    b = min(batch_size, n)
    if solver == "sgd":
        for _ in range(local_steps):
            idx = np.sort(rng.choice(n, size=b, replace=False))
            y -= lr * objective.grad(y, idx)
        return LocalRun(y, local_steps * b)
    if solver in ("rr", "so"):
        for _ in range(local_epochs):
            if solver == "rr":
                order = rng.permutation(n)
            elif fixed_order is not None:
                order = fixed_order
            else:
                raise ValueError("solver 'so' needs the client's fixed_order")
            for idx in epoch_batches(order, b):
                y -= lr * objective.grad(y, idx)
        return LocalRun(y, local_epochs * n)
    raise ValueError(f"unknown local solver {solver!r}; valid choices: {', '.join(SOLVERS)}")
