"""TAMUNA's stated rate (fedsim.blocks.tamuna_rate) against a Monte-Carlo run of its model
problem written here from the algorithm, and against fedsim's TAMUNA where the model is exact."""

import math

import numpy as np
import pytest

from fedsim.blocks import tamuna_rate as tr


def one_round(e, delta, lam, gamma, eta, s, p, rng, trials):
    """``trials`` independent rounds of TAMUNA on one coordinate of ``f_i = (λ/2)(x − b_i)²``
    from error ``e = x̄ − x*`` and control-variate errors ``δ`` (Algorithm 1, by hand)."""
    n = delta.size
    steps = rng.geometric(p, size=trials)
    x = np.full((trials, n), e, dtype=float)
    for k in range(int(steps.max())):
        moving = (steps > k)[:, None]  # trial t makes steps[t] local steps
        x = np.where(moving, x - gamma * (lam * x - delta), x)
    holders = np.argsort(rng.random((trials, n)), axis=1)[:, :s]  # a uniform s-subset
    held = np.zeros((trials, n), dtype=bool)
    np.put_along_axis(held, holders, True, axis=1)
    e_new = np.where(held, x, 0.0).sum(axis=1) / s
    d = delta + np.where(held, (eta / gamma) * (e_new[:, None] - x), 0.0)
    return e_new, np.sum(d * d, axis=1)


@pytest.mark.parametrize(("lam", "s", "p"), [(1.0, 2, 0.3), (10.0, 3, 0.5), (0.2, 5, 0.1)])
def test_the_rate_is_the_model_problems_mean_square_factor(lam, s, p):
    rng = np.random.default_rng(0)
    n, c, gamma = 8, 6, 0.09
    eta = p * tr.chi(c, s)
    delta = rng.standard_normal(n)
    delta -= delta.mean()
    _, sq = one_round(0.0, delta, lam, gamma, eta, s, p, rng, 200000)
    rho_h = np.mean(sq) / np.sum(delta**2)
    e, _ = one_round(1.0, np.zeros(n), lam, gamma, eta, s, p, rng, 200000)
    rho_x = np.mean(e**2)
    predicted = tr.round_rate(s, p, eta, gamma, lam, lam, n)  # λ range of one point
    assert max(rho_x, rho_h) == pytest.approx(predicted, rel=5e-3)
    # each factor alone, through the same formula (a range of one λ): ρ_h below, ρ_x above
    assert rho_x <= predicted * (1 + 5e-3) and rho_h <= predicted * (1 + 5e-3)


def test_golden_section_finds_the_grid_optimum_of_p():
    args = (1e-3, 1.0, 1e3, 40)
    for s in (2, 3, 7):
        p = tr.best_p(s, 10, *args)
        grid = np.geomspace(1e-3, 1, 2000)
        rates = [tr.round_rate(s, q, q * tr.chi(10, s), *args) for q in grid]
        assert tr.round_rate(s, p, p * tr.chi(10, s), *args) <= min(rates) * (1 + 1e-9)


def test_plan_keeps_a_given_s_or_p_and_picks_s_in_range():
    s, p, eta = tr.plan(10, 1e-3, 1.0, 1e3, 40, 20)
    assert 2 <= s <= 10 and 0 < p <= 1 and eta == pytest.approx(p * tr.chi(10, s))
    assert tr.plan(10, 1e-3, 1.0, 1e3, 40, 20, s=7)[0] == 7
    assert tr.plan(10, 1e-3, 1.0, 1e3, 40, 20, p=0.2)[1] == 0.2


def test_fedsim_tamuna_decays_at_the_stated_rate_where_the_model_is_exact(compose):
    """Every client the same Hessian (quadratic, one eigenbasis, L_min = L_max): the model is
    exact, so the measured rounds to 1e-6 match ``log(1e6)/(−log ρ)`` (within the spread of
    three seeds), with ρ from ``method.s/p/eta`` as resolved."""
    from fedsim.build import task_of
    from fedsim.runner import run
    from strategies.local_training import uniform_form

    common = (
        "engine=inline",
        "method=tamuna",
        "task=quadratic",
        "task.dim=6",
        "task.rotation=shared",
        "task.L_min=30",
        "task.L_max=30",
        "num_clients=12",
        "sampler=uniform",
        "sampler.cohort_size=6",
        "method.s=3",
        "num_rounds=400",
    )
    measured = []
    for seed in range(3):
        cfg = compose(*common, f"seed={seed}")
        rows = run(cfg, None)
        d = np.array([r["dist_sq"] for r in rows])
        measured.append(np.flatnonzero(d / d[0] <= 1e-6)[0])
    task, m = task_of(cfg), cfg["method"]
    big_l, mu = uniform_form(task)
    n = task.num_clients
    rho = tr.round_rate(3, m["p"], m["eta"], m["client_lr"], mu, big_l, n)
    predicted = math.log(1e6) / -math.log(rho)
    assert 0.8 * predicted <= np.mean(measured) <= 1.25 * predicted, (measured, predicted)
