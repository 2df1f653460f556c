"""Clients of the local-training family: Scaffnew, TAMUNA, 5GCS and 5GCS-CC.

Every method here solves ``f = (1/M) Σ_m f̃_m`` with ``f̃_m = M·w_m·f_m`` (``w_m = n_m/N``), the
uniform-weight form of the task's ``f = Σ_m w_m f_m`` that the papers assume; with equal client
sizes ``f̃_m = f_m``. Control variates and duals live in ``context.state`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from flwr.common import Context, Scalar

from clients.base import FedsimClient
from fedsim.blocks.compressors import Slot, build_compressor, compressor_rng
from fedsim.blocks.patterns import support
from fedsim.tasks.base import Task

Gradient = Callable[[np.ndarray], np.ndarray]


def control_variate_steps(
    grad: Gradient, x: np.ndarray, h: np.ndarray, lr: float, steps: int
) -> np.ndarray:
    """``steps`` local steps ``x ← x − γ (∇f̃_m(x) − h_m)`` (Scaffnew/ProxSkip and TAMUNA)."""
    y = np.array(x, dtype=float, copy=True)
    for _ in range(steps):
        y -= lr * (grad(y) - h)
    return y


def prox_dual(
    grad: Gradient, x_hat: np.ndarray, u: np.ndarray, mu: float, tau: float, lr: float, steps: int
) -> np.ndarray:
    """5GCS's local subproblem by ``steps`` gradient steps of size ``lr`` from ``y = x̂``:

        y ≈ argmin_y F_m(y) + (τ/2)‖y − (x̂ + u_m/τ)‖²,   F_m = f̃_m − (μ/2)‖·‖²,

    returning the new dual ``∇F_m(y) = ∇f̃_m(y) − μ y``.
    """
    y = np.array(x_hat, dtype=float, copy=True)
    target = x_hat + u / tau
    for _ in range(steps):
        y -= lr * (grad(y) - mu * y + tau * (y - target))
    return grad(y) - mu * y


class _UniformForm(FedsimClient):
    """A client of ``f̃_m = M·w_m·f_m`` with the resolved method section ``method``."""

    def __init__(self, pid: int, task: Task, seed: int, context: Context, method: Mapping):
        super().__init__(pid, task.clients[pid], seed, context)
        self.method = method
        self.dim = task.dim
        self.factor = float(task.num_clients * task.weights[pid])

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, pid: int, seed: int, context: Context
    ) -> _UniformForm:
        return cls(pid, task, seed, context, method)

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.factor * self.objective.grad(x)

    @property
    def samples(self) -> int:
        return self.objective.num_samples

    def vector(self, key: str) -> np.ndarray:
        """The state vector ``key`` (zeros on first use)."""
        kept = self.load(key)
        return np.zeros(self.dim) if kept is None else kept[0]

    def number(self, key: str) -> int:
        """The state integer ``key`` (0 on first use)."""
        kept = self.load(key)
        return 0 if kept is None else int(kept[0][0])

    def sent(self, pending: int) -> list[np.ndarray]:
        """What this client sent in round ``pending`` (kept in state with its round), which the
        server's pending update refers to."""
        kept = self.load("sent")
        if kept is None or int(kept[-1][0]) != pending:
            raise ValueError(
                f"the server refers to this client's upload of round {pending}, which its "
                "state does not hold"
            )
        return kept[:-1]


class ScaffnewClient(_UniformForm):
    """Scaffnew (Mishchenko, Malinovsky, Stich, Richtárik 2022, ProxSkip for FL, Alg. 2).

    With the shared number of local steps ``L ~ Geometric(p)`` sent by the server:
    ``x̂_m = x − γ(∇f̃_m(x) − h_m)`` ``L`` times, send ``x̂_m``. The control-variate update of
    the communication step, ``h_m ← h_m + (p/γ)(x̄ − x̂_m)``, needs the average ``x̄`` of the
    round ``r`` whose average used this client's ``x̂_m``; the client applies it at its next
    ``fit``, where the server names ``r`` (``pending_round``) and sends ``x̄`` — as the model
    itself when no round has passed since, as a second array otherwise (after a failure). Each
    pending update is applied once (``applied`` keeps the last round applied).
    """

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x = parameters[0]
        gamma, p = float(self.method["client_lr"]), float(self.method["p"])
        h, applied = self.vector("h"), self.number("applied")
        pending = int(config["pending_round"])
        if pending > applied:
            (x_hat,) = self.sent(pending)
            x_bar = parameters[1] if len(parameters) > 1 else x  # that round's average
            h += (p / gamma) * (x_bar - x_hat)
            applied = pending
        steps = int(config["local_steps"])
        y = control_variate_steps(self.grad, x, h, gamma, steps)
        self.save("h", [h])
        self.save("applied", [np.array([applied])])
        self.save("sent", [y, np.array([int(config["round"])])])
        return [y], self.samples, {"grad_evals": steps * self.samples}


class TamunaClient(_UniformForm):
    """TAMUNA (Condat, Agarský, Malinovsky, Richtárik, arXiv 2302.09832, Algorithm 1), client.

    ``L`` local steps ``x ← x − γ(∇f̃_m(x) − h_m)`` from the server model, then upload only the
    entries of ``x`` on the support of the pattern column the server assigned (``column``): about
    ``s·d/c`` values, without indices. The control-variate update of the round ``r`` the client
    took part in, ``h_m ← h_m + (η/γ) q_m ⊙ (x̄⁺ − x_m)`` with that round's aggregate ``x̄⁺``, is
    applied at the client's next participation, when the server sends ``q_m ⊙ x̄⁺`` and names
    ``r`` (``pending_round``): exactly the paper's update, not one with a newer model. Each
    pending update is applied once (``applied`` keeps the last round applied).
    """

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x, pending_values = parameters[0], parameters[1]
        m = self.method
        gamma, eta = float(m["client_lr"]), float(m["eta"])
        h, applied = self.vector("h"), self.number("applied")
        pending = int(config["pending_round"])
        if pending > applied:
            rows, values = self.sent(pending)
            if values.shape != pending_values.shape:
                raise ValueError("the server's pending update does not match this client's upload")
            h[rows] += (eta / gamma) * (pending_values - values)
            applied = pending
        steps = int(config["local_steps"])
        y = control_variate_steps(self.grad, x, h, gamma, steps)
        rows = support(self.dim, int(m["cohort_size"]), int(m["s"]), int(config["column"]))
        self.save("h", [h])
        self.save("applied", [np.array([applied])])
        self.save("sent", [rows, y[rows], np.array([int(config["round"])])])
        return [y[rows]], self.samples, {"grad_evals": steps * self.samples}


class FiveGCSClient(_UniformForm):
    """5GCS (Grudzień, Malinovsky, Richtárik, arXiv 2212.14370, Algorithm 1), client.

    From the server's ``x̂``: ``K`` local gradient steps on the prox subproblem (see
    :func:`prox_dual`), new dual ``u⁺ = ∇F_m(y)``, send the increment ``δ_m = u⁺ − u_m``. The
    client commits ``u_m ← u⁺`` only once the server confirms it applied ``δ_m`` to its
    ``v = (1/M) Σ u_m`` (``accepted_round`` at the next participation), so a reply the server
    never used leaves client and server in step.
    """

    def increment(
        self, delta: np.ndarray, config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The payload for ``δ_m`` and the change of ``u_m`` the server will apply with it."""
        return [delta], delta

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        x_hat = parameters[0]
        m = self.method
        u = self.vector("u")
        candidate = self.load("candidate")  # [change of u, [round]] of the last upload
        if candidate is not None and int(candidate[1][0]) == int(config["accepted_round"]):
            u = u + candidate[0]
        steps = int(m["local_steps"])
        mu, tau = float(m["mu"]), float(config["dual_lr"])  # τ_m, set by the server
        lr = m.get("local_lr", "auto")
        if isinstance(lr, str):  # auto: 1/(L_m − μ + τ), the subproblem's smoothness
            lr = 1.0 / (self.factor * self.objective.smoothness - mu + tau)
        new = prox_dual(self.grad, x_hat, u, mu, tau, float(lr), steps)
        payload, change = self.increment(new - u, config)
        self.save("u", [u])
        self.save("candidate", [change, np.array([int(config["round"])])])
        metrics: dict[str, Scalar] = {
            "grad_evals": (steps + 1) * self.samples,
            "up_floats": self.floats(payload),
        }
        return payload, self.samples, metrics

    def floats(self, payload: list[np.ndarray]) -> int:
        """Real numbers in the payload, by the papers' convention."""
        return int(payload[0].size)


class FiveGCSCCClient(FiveGCSClient):
    """5GCS-CC (Grudzień, Malinovsky, Richtárik, arXiv 2306.03240, Algorithm 1), client: the
    dual increment crosses the wire compressed, ``δ_m = Q(u⁺ − u_m)``, and the client moves its
    dual by ``u_m ← u_m + α δ_m`` as the server does (``α = method.dual_shift``)."""

    def increment(
        self, delta: np.ndarray, config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        comp = build_compressor(self.method["compressor"], self.dim)
        slot = Slot(int(config.get("position", 0)), int(config.get("cohort_size", 1)))
        rnd = int(config["round"])
        payload = comp.compress(delta, compressor_rng(comp, self.seed, rnd, self.pid), slot)
        sent = comp.decompress(
            payload, self.dim, compressor_rng(comp, self.seed, rnd, self.pid), slot
        )
        return payload, float(self.method["dual_shift"]) * sent

    def floats(self, payload: list[np.ndarray]) -> int:
        return int(build_compressor(self.method["compressor"], self.dim).floats(payload))
