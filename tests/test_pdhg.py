"""The 5GCS-AB bound behind importance sampling and 5GCS's stepsizes (fedsim/blocks/pdhg.py)."""

import math

import numpy as np
import pytest

from fedsim.blocks.pdhg import balanced, dual_rates, equalized_marginals


def test_equalized_marginals_give_every_block_the_same_rate_and_spend_the_cohort():
    l_f = np.geomspace(1, 1000, 30)
    t, pi = equalized_marginals(l_f, 3.0, a=50.0)
    assert pi.sum() == pytest.approx(3.0)
    np.testing.assert_allclose(dual_rates(l_f, pi, 50.0), t, rtol=1e-9)
    assert np.all(np.diff(pi) > 0)  # rougher clients are sampled more often
    assert pi.min() >= t  # and every client keeps a floor: π_m ≥ t
    # against any other marginals with the same budget, the slowest block is slower
    for other in (np.full(30, 0.1), 3 * np.sqrt(l_f) / np.sqrt(l_f).sum()):
        assert dual_rates(l_f, other, 50.0).min() < t


@pytest.mark.parametrize("shape", ["geometric", "outlier", "equal"])
def test_the_bound_is_never_worse_than_uniform_and_recovers_the_uniform_balance(shape):
    m, c, mu, theta = 20, 2, 1.0, 0.9
    l_f = {
        "geometric": np.geomspace(1, 1000, m),
        "outlier": np.r_[np.ones(m - 1), 1000.0],
        "equal": np.full(m, 1000.0),
    }[shape]
    uniform = np.full(m, c / m)
    g_u, _, rate_u = balanced(l_f, mu, c, theta, 1.0, uniform)
    g_b, pi, rate_b = balanced(l_f, mu, c, theta, 1.0, None)
    assert rate_b >= rate_u * (1 - 1e-9)
    assert pi.sum() == pytest.approx(c) and pi.max() <= 1
    # at the optimum the primal and the dual rates meet
    a = theta * m / (c * g_b)
    assert g_b * mu / (1 + g_b * mu) == pytest.approx(dual_rates(l_f, pi, a).min(), rel=1e-6)
    if shape == "equal":  # equal clients: the bound keeps uniform cohorts
        np.testing.assert_allclose(pi, uniform, rtol=1e-6)
        assert rate_b == pytest.approx(rate_u, rel=1e-6)
    else:
        assert rate_b > 1.3 * rate_u
    # uniform cohorts, γL ≫ θ: γ ≈ √(θ C/(μ L_max M)) (the paper's Õ(M/C + √(κM/C)))
    if shape == "equal":
        assert g_u == pytest.approx(math.sqrt(theta * c / (mu * 1000.0 * m)), rel=0.1)


def test_compression_slows_the_dual_and_shrinks_the_primal_step():
    l_f = np.geomspace(1, 100, 10)
    g1, _, r1 = balanced(l_f, 1.0, 2, 0.9, 1.0, np.full(10, 0.2))
    g2, _, r2 = balanced(l_f, 1.0, 2, 0.9, 1 / 3, np.full(10, 0.2))  # ω = 2
    assert g2 < g1 and r2 < r1
