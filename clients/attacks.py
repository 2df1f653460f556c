"""Client-side Byzantine attacks: NumPyClient wrappers around the honest client.

These attacks need nothing but the client's own data and reply, so a real Byzantine SuperNode
could mount them alone; they run on every engine, deployment included (Byzantine-robust methods:
Karimireddy, He & Jaggi, arXiv 2006.09365; Malinovsky et al., arXiv 2311.14127, §5):

- ``bit_flip``: send ``−v`` where the honest client would send ``v``;
- ``label_flip``: the honest computation on flipped labels (``±1 → ∓1``, class ``c → K − 1 − c``);
- ``gaussian``: send ``N(0, σ² I)`` noise of the reply's shape instead of ``v``.

Only the floating-point arrays of a reply are rewritten; integer arrays (indices of a sparse
payload) pass unchanged, and compressors that send codes are refused by the config checks. The
honest client underneath keeps its own state (a momentum buffer stays the honest one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from flwr.client import NumPyClient
from flwr.common import Context, Scalar

from fedsim.blocks.attacks import bit_flip, gaussian
from fedsim.rng import generator
from fedsim.tasks.base import Task

# (task, pid) -> the task with that client's labels flipped: derived data, built once per
# process like the task itself (the task is kept alongside, so a reused id() cannot match)
_FLIPPED: dict[tuple[int, int], tuple[Task, Task]] = {}


def _label_flipped(task: Task, pid: int) -> Task:
    """``task`` with client ``pid``'s objective on flipped labels (built once per process)."""
    key = (id(task), pid)
    entry = _FLIPPED.get(key)
    if entry is None or entry[0] is not task:
        clients = list(task.clients)
        clients[pid] = clients[pid].flipped()
        entry = _FLIPPED[key] = (task, dataclasses.replace(task, clients=clients))
    return entry[1]


class ByzantineClient(NumPyClient):
    """Runs the honest client, then rewrites its reply by ``attack.name`` (module docstring)."""

    def __init__(self, honest: NumPyClient, name: str, sigma: float, seed: int, pid: int) -> None:
        self.honest = honest
        self.name = name
        self.sigma = sigma
        self.seed = seed
        self.pid = pid

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return self.honest.get_properties(config)

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return self.honest.get_parameters(config)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        arrays, num_examples, metrics = self.honest.fit(parameters, config)
        if self.name == "label_flip":
            return arrays, num_examples, metrics
        rng = generator(self.seed, int(config["round"]), "attack/gaussian", self.pid)
        out = []
        for a in arrays:
            if not np.issubdtype(a.dtype, np.floating):
                out.append(a)
            elif self.name == "bit_flip":
                out.append(bit_flip(a).astype(a.dtype, copy=False))
            else:
                out.append(gaussian(rng, a.shape, self.sigma).astype(a.dtype, copy=False))
        return out, num_examples, metrics


def byzantine_client(
    cls: type,
    method: Mapping,
    task: Task,
    attack: Mapping,
    pid: int,
    seed: int,
    context: Context,
) -> NumPyClient:
    """The Byzantine NumPyClient of partition ``pid``: the method's client, wrapped."""
    name = str(attack["name"])
    base_task = _label_flipped(task, pid) if name == "label_flip" else task
    honest = cls.from_config(method, base_task, pid, seed, context)
    return ByzantineClient(honest, name, float(attack.get("sigma", 1.0)), seed, pid)
