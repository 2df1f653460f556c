"""FedAvg: gradient descent as a special case, the heterogeneity plateau, failures, accounting."""

import numpy as np
import pytest

from clients.fedavg import FedAvgClient
from fedsim.build import task_of
from fedsim.runner import run
from strategies.base import RunAborted

INLINE = ("engine=inline", "method=fedavg")


def test_one_local_gd_step_is_gradient_descent_and_converges_linearly(compose):
    cfg = compose(
        *INLINE,
        "task=logreg_synthetic",
        "partition=natural",
        "sampler=full",
        "num_clients=10",
        "method.local_solver=gd",
        "method.local_steps=1",
        "num_rounds=600",
        "eval_every=50",
    )
    rows = run(cfg, None)
    task = task_of(cfg)
    # The same iterates by a plain gradient-descent loop on f = Σ w_m f_m.
    gamma, x = cfg["method"]["client_lr"], task.x0.copy()
    x_star, _ = task.optimum()
    for _ in range(600):
        x = x - gamma * task.full.grad(x)
    d0, dT = rows[0]["dist_sq"], rows[-1]["dist_sq"]
    assert dT == pytest.approx(float(np.sum((x - x_star) ** 2)), rel=1e-6)
    assert dT <= 1e-10 * d0
    # linear convergence: every block of 50 rounds at least halves the distance
    ratios = [b["dist_sq"] / a["dist_sq"] for a, b in zip(rows[1:-1], rows[2:], strict=False)]
    assert max(ratios) < 0.5


def fedavg_fixed_point(task, gamma: float, steps: int) -> np.ndarray:
    """The fixed point of full-participation FedAvg with K local GD steps on quadratics:
    T_m(x) = b_m + (I − γA_m)^K (x − b_m), and x̄ = Σ w_m T_m(x̄) solves
    Σ w_m (I − (I − γA_m)^K)(x̄ − b_m) = 0."""
    d = task.dim
    lhs, rhs = np.zeros((d, d)), np.zeros(d)
    for w, c in zip(task.weights, task.clients, strict=True):
        m = np.eye(d) - np.linalg.matrix_power(np.eye(d) - gamma * c.a, steps)
        lhs += w * m
        rhs += w * m @ c.b
    return np.linalg.solve(lhs, rhs)


def test_heterogeneous_local_steps_stall_at_the_predicted_plateau(compose):
    cfg = compose(
        *INLINE,
        "task=quadratic",
        "partition=natural",
        "sampler=full",
        "num_clients=10",
        "task.heterogeneity=3.0",
        "method.local_solver=gd",
        "method.local_steps=10",
        "num_rounds=3000",
        "eval_every=100",
    )
    rows = run(cfg, None)
    task = task_of(cfg)
    x_star, _ = task.optimum()
    x_bar = fedavg_fixed_point(task, cfg["method"]["client_lr"], 10)
    plateau = float(np.sum((x_bar - x_star) ** 2))
    assert plateau > 1e-3 * rows[0]["dist_sq"]  # visibly not x*
    assert rows[-1]["dist_sq"] == pytest.approx(plateau, rel=1e-6)
    assert rows[-1]["dist_sq"] == pytest.approx(rows[-5]["dist_sq"], rel=1e-6)  # stalled
    # The same run with one local step has no plateau (it is gradient descent).
    cfg1 = compose(
        *INLINE,
        "task=quadratic",
        "partition=natural",
        "sampler=full",
        "num_clients=10",
        "task.heterogeneity=3.0",
        "method.local_steps=1",
        "num_rounds=3000",
        "eval_every=3000",
    )
    assert run(cfg1, None)[-1]["dist_sq"] < 1e-6 * plateau


def test_traffic_and_gradient_accounting(compose):
    cfg = compose(
        *INLINE,
        "task=logreg_synthetic",
        "sampler=uniform",
        "sampler.cohort_size=4",
        "num_clients=8",
        "task.samples_per_client=30",
        "method.local_steps=3",
        "num_rounds=4",
        "eval_every=2",
    )
    rows = run(cfg, None)
    d = task_of(cfg).dim
    from flwr.common import ndarrays_to_parameters

    wire = 8 * sum(len(t) for t in ndarrays_to_parameters([np.zeros(d)]).tensors)
    for row in rows[1:]:  # two rounds per row, four clients per round
        assert row["clients"] == 8
        assert row["down_bits"] == row["up_bits"] == 8 * wire
        assert row["down_floats"] == row["up_floats"] == 8 * d
        assert row["grad_evals"] == 8 * 3 * 30


def test_crashing_client_is_a_counted_failure(compose, monkeypatch):
    honest = FedAvgClient.fit

    def fit(self, parameters, config):
        if self.pid == 0:
            raise RuntimeError("boom")
        if self.pid == 1:
            return [np.full_like(parameters[0], np.nan)], 1, {}
        return honest(self, parameters, config)

    monkeypatch.setattr(FedAvgClient, "fit", fit)
    cfg = compose(*INLINE, "sampler=full", "num_clients=6", "num_rounds=3")
    rows = run(cfg, None)
    assert [r["failures"] for r in rows[1:]] == [2, 2, 2]
    assert [r["clients"] for r in rows[1:]] == [4, 4, 4]
    assert rows[-1]["loss"] < rows[0]["loss"]  # the round proceeded without them
    strict = compose(
        *INLINE,
        "sampler=full",
        "num_clients=6",
        "num_rounds=10",
        "max_failure_fraction=0.1",
        "max_failed_rounds=2",
    )
    with pytest.raises(RunAborted, match="2 consecutive rounds failed"):
        run(strict, None)


def test_same_seed_same_run_other_seed_other_run(compose):
    base = (
        *INLINE,
        "sampler=uniform",
        "sampler.cohort_size=3",
        "num_clients=6",
        "method.local_solver=rr",
        "method.batch_size=8",
        "num_rounds=5",
    )
    a = run(compose(*base, "seed=4"), None)
    b = run(compose(*base, "seed=4"), None)
    c = run(compose(*base, "seed=5"), None)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["loss"] for r in a] != [r["loss"] for r in c]
