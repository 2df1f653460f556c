"""Local solvers against hand-written loops on a tiny least-squares finite sum."""

import numpy as np
import pytest

from fedsim.blocks.solvers import epoch_batches, local_solve
from fedsim.tasks.base import Objective


class LeastSquares(Objective):
    """f(x) = (1/n) Σ_j ½ (a_jᵀx − b_j)²."""

    def __init__(self, A, b):
        self.A, self.b = A, b
        self.num_samples = len(b)
        self.smoothness = float(np.linalg.eigvalsh(A.T @ A / len(b)).max())
        self.sample_smoothness = float((A**2).sum(1).max())

    def loss(self, x, idx=None):
        idx = np.arange(self.num_samples) if idx is None else idx
        r = self.A[idx] @ x - self.b[idx]
        return 0.5 * float(r @ r) / len(idx)

    def grad(self, x, idx=None):
        idx = np.arange(self.num_samples) if idx is None else idx
        return self.A[idx].T @ (self.A[idx] @ x - self.b[idx]) / len(idx)


@pytest.fixture
def obj():
    rng = np.random.default_rng(0)
    return LeastSquares(rng.normal(size=(7, 3)), rng.normal(size=7))


def test_gd_is_gradient_descent(obj):
    x0 = np.ones(3)
    run = local_solve(obj, x0, solver="gd", lr=0.1, rng=np.random.default_rng(0), local_steps=4)
    y = x0.copy()
    for _ in range(4):
        y = y - 0.1 * obj.grad(y)
    np.testing.assert_allclose(run.y, y, rtol=0, atol=1e-15)
    assert run.grad_evals == 4 * 7
    np.testing.assert_array_equal(x0, np.ones(3))  # the start point is not modified


def test_rr_uses_a_new_permutation_each_epoch(obj):
    x0 = np.zeros(3)
    run = local_solve(
        obj, x0, solver="rr", lr=0.05, rng=np.random.default_rng(3), local_epochs=2, batch_size=3
    )
    rng = np.random.default_rng(3)
    orders = [rng.permutation(7), rng.permutation(7)]
    assert not np.array_equal(orders[0], orders[1])  # two epochs, two orders
    y = x0.copy()
    for order in orders:
        for idx in epoch_batches(order, 3):
            y = y - 0.05 * obj.grad(y, idx)
    np.testing.assert_allclose(run.y, y, atol=1e-15)
    assert run.grad_evals == 14
    once = x0.copy()  # the same first order twice (shuffle once) ends elsewhere
    for _ in range(2):
        for idx in epoch_batches(orders[0], 3):
            once = once - 0.05 * obj.grad(once, idx)
    assert not np.allclose(run.y, once)


def test_so_reuses_its_order_and_sgd_counts_batches(obj):
    order = np.array([6, 5, 4, 3, 2, 1, 0])

    def so(seed):
        rng = np.random.default_rng(seed)
        return local_solve(
            obj,
            np.zeros(3),
            solver="so",
            lr=0.05,
            rng=rng,
            local_epochs=2,
            batch_size=2,
            fixed_order=order,
        )

    a, b = so(1), so(2)
    np.testing.assert_array_equal(a.y, b.y)  # no randomness beyond the fixed order
    s = local_solve(
        obj,
        np.zeros(3),
        solver="sgd",
        lr=0.05,
        rng=np.random.default_rng(1),
        local_steps=5,
        batch_size=2,
    )
    assert s.grad_evals == 10
    with pytest.raises(ValueError, match="valid choices"):
        local_solve(obj, np.zeros(3), solver="adam", lr=0.1, rng=np.random.default_rng(0))
