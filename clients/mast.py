"""MAST methods, client side (DSGD and L-SVRDSG; arXiv 2311.16086, Alg. 1, client part).

The client is stateless: it keeps the shift ``v`` (from ``method.shift``, like the server) and
re-derives every sketch ``S`` from the shared seed (:class:`~fedsim.blocks.sketches.SketchSource`)
and the index the server names, so each message holds only the values of sketched models on
the supports ``U``::

    grad: [y_U]            → [(Sᵀ∇f_m(y))_U]                   y = v + S(x − v)
    diff: [y_U, y'_U]      → [(Sᵀ(∇f_m(y) − ∇f_m(y')))_U]       y' = v + S(w − v)
    ref:  [y_1, …, y_b]    → [(S_jᵀ∇f_m(y_j))_{U_j}, j ∈ B]

``config["sketch"]``: the member ``j`` of the client's finite set (−1: the fresh draw of this
round); ``config["sketches"]``: the members ``B`` of a refresh, comma-separated. DSGD's variant
II (``method.batch_size``) evaluates ``∇f_m`` on ``b`` distinct samples from
``(seed, round, "dsgd/batch", m)``. ``grad_evals``: sample gradients (``n_m`` per full gradient).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.sketches import Draw, SketchSource, build_sketch
from fedsim.tasks.base import Task
from fedsim.tasks.mast_objective import load_shift


class MastClient(FedsimClient):
    """Answers ``grad``, ``diff`` and ``ref`` messages (module docstring)."""

    def __init__(self, pid: int, task: Task, seed: int, context: Context, method: Mapping) -> None:
        super().__init__(pid, task.clients[pid], seed, context)
        self.method = method
        self.source = SketchSource(build_sketch(method["sketch"], task.dim, task.num_clients), seed)
        self.v = load_shift(method["shift"], task.x0)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> MastClient:
        return cls(pid, task, seed, context, method)

    def sketch(self, rnd: int, j: int) -> Draw:
        """Member ``j`` of this client's finite set, or (``j < 0``) round ``rnd``'s fresh draw."""
        return self.source.fresh(rnd, self.pid) if j < 0 else self.source.member(j, self.pid)

    def point(self, draw: Draw, values: np.ndarray) -> np.ndarray:
        """``y = v + S(x − v)`` from its values on ``U``."""
        if values.shape != (draw.size,):
            raise ValueError(f"got {values.shape} values for a sketch keeping {draw.size}")
        return draw.point(values, self.v)

    def batch(self, rnd: int) -> np.ndarray | None:
        """Variant II's minibatch (``b`` distinct samples), or None (variant I: all)."""
        b = self.method.get("batch_size")
        if b is None:
            return None
        n = self.objective.num_samples
        return np.sort(self.rng(rnd, "dsgd/batch").choice(n, size=min(int(b), n), replace=False))

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        kind, rnd = str(config["kind"]), int(config["round"])
        n = self.objective.num_samples
        grad = self.objective.grad
        if kind == "grad":
            draw = self.sketch(rnd, int(config["sketch"]))
            idx = self.batch(rnd)
            g = grad(self.point(draw, parameters[0]), idx)
            evals = n if idx is None else int(idx.size)
            return [draw.back_values(g)], n, {"grad_evals": evals}
        if kind == "diff":
            draw = self.sketch(rnd, int(config["sketch"]))
            at_x = grad(self.point(draw, parameters[0]))
            at_w = grad(self.point(draw, parameters[1]))
            return [draw.back_values(at_x - at_w)], n, {"grad_evals": 2 * n}
        if kind == "ref":
            members = [int(j) for j in str(config["sketches"]).split(",")]
            draws = [self.sketch(rnd, j) for j in members]
            out = [
                d.back_values(grad(self.point(d, y)))
                for d, y in zip(draws, parameters, strict=True)
            ]
            return out, n, {"grad_evals": len(draws) * n}
        raise ValueError(f"unknown message kind {kind!r}")
