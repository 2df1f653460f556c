"""``auto`` stepsizes: the values the theory prescribes from the task's smoothness constants.

A user who writes ``method.client_lr=auto`` gets a run that converges without tuning.
"""

from __future__ import annotations

import math

from fedsim.errors import ConfigError
from fedsim.tasks.base import Task


def positive_or_auto(name: str, value: object, auto: float) -> float:
    """``auto`` → the prescribed value; otherwise a positive float, or a ConfigError."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return float(auto)
        try:
            value = float(value)
        except ValueError as err:
            raise ConfigError(f"{name} must be a positive number or 'auto', got {value!r}") from err
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value > 0 and math.isfinite(value))
    ):
        raise ConfigError(f"{name} must be a positive finite number or 'auto', got {value!r}")
    return float(value)


def local_gd_lr(task: Task, solver: str) -> float:
    """γ = 1/L_max for full local gradients (L_max = max_m L_m), the classical GD bound that
    makes every local step a descent step on its client; γ = 1/max_{m,j} L_{m,j} for stochastic
    local solvers (the bound of SGD and random reshuffling analyses, Mishchenko et al. 2020)."""
    if solver == "gd":
        return 1.0 / max(c.smoothness for c in task.clients)
    return 1.0 / max(c.sample_smoothness for c in task.clients)
