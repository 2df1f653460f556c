"""One convergence bound for 5GCS with arbitrary client sampling: its sampling and its stepsizes.

5GCS (Grudzień, Malinovsky, Richtárik, arXiv 2212.14370) and its arbitrary-sampling variant
5GCS-AB (arXiv 2306.03240) are stochastic PDHG (Chambolle, Ehrhardt, Richtárik, Schönlieb,
SIAM J. Optim. 2018) on the saddle problem

    min_x max_u  (μ/2)‖x‖² + (1/M) Σ_m (⟨u_m, x⟩ − F_m*(u_m)),    F_m = f̃_m − (μ/2)‖·‖²,

where the cohort samples the dual blocks, client ``m`` with marginal ``π_m`` (``Σ π_m = C``).
The papers' constants could not be read, so this module states the bound fedsim uses and
derives both the marginals and the stepsizes from it; the uniform cohort is a feasible point, so
the chosen sampling is never worse than uniform *in this bound*.

**The bound.** ``F_m*`` is ``1/L_m``-strongly convex (``L_m = L_{F,m}``, the smoothness of
``F_m``), so an exact dual prox step of size ``τ_m`` contracts the block's error by the factor
``L_m/(L_m + τ_m)``, i.e. by the fraction ``τ_m/(L_m + τ_m)``; block ``m`` moves with
probability ``π_m``, and with a compressor of variance ``ω`` only the fraction ``α = 1/(1+ω)`` of
the step is applied (DIANA's shift). The primal prox of ``(μ/2)‖·‖²`` contracts by
``1/(1+γμ)``. The Lyapunov function of SPDHG, ``‖x − x*‖²/γ + Σ_m ‖u_m − u_m*‖²/(M π_m τ_m)``,
then contracts per round by the slowest of these parts,

    ρ(γ, τ, π) = min{ γμ/(1+γμ),  min_m α π_m τ_m/(L_m + τ_m) },

under the step condition of SPDHG with a dense coupling and fixed-size cohorts (ESO parameter
``C/M²`` per block): ``γ τ_m ≤ θ M π_m / C`` with ``θ = γτ̄ < 1`` (``method.gamma_tau``, default
0.9). Rounds to accuracy ε are ``log(1/ε)/ρ``.

**The choice.** ``ρ`` grows with every ``τ_m``, so each takes the largest value the condition
allows, ``τ_m = a π_m`` with ``a = θM/(Cγ)``; then block ``m``'s rate is
``r_m(π_m) = α a π_m²/(L_m + a π_m)``, increasing in ``π_m``. For a fixed ``γ`` the marginals that
maximize ``min_m r_m`` under ``Σ π_m = C``, ``π_m ≤ 1`` equalize the rates: ``r_m = t`` gives

    π_m(t) = t'/2 + √(t'²/4 + t' L_m/a),    t' = t/α,

and ``t`` is the largest value with ``Σ_m π_m(t) ≤ C`` and every ``π_m(t) ≤ 1`` (bisection). A
client's marginal is thus about ``t'`` when ``L_m`` is small (every client keeps a floor: the
sampling ∝ ``√L_m`` alone starves the smooth clients, whose duals then barely move) and about
``√(t' L_m/a)`` when it is large. The primal rate increases with ``γ`` and the dual one decreases,
so ``γ`` is where they meet (bisection on ``log γ``). For uniform cohorts and ``γL ≫ θ`` this gives
``γ = √(αθC/(μ L_max M))``, the balance fedsim used before (``Õ(M/C + √(κ M/C))`` rounds).
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.tasks.base import Task

GAMMA_TAU = 0.9  # θ = γτ̄, the default of method.gamma_tau (the largest inside θ < 1 we tried)


def uniform_form(task: Task) -> tuple[np.ndarray, float]:
    """``(L_{F,m}, μ)`` of the clients' ``f̃_m = M w_m f_m``: ``μ = min_m M w_m μ_task`` and
    ``L_{F,m} = M w_m L_m − μ`` (floored at a tiny positive value)."""
    factor = task.num_clients * task.weights
    mu = float(np.min(factor) * task.mu)
    l_f = factor * task.client_L - mu
    return np.maximum(l_f, 1e-12 * max(float(np.max(factor * task.client_L)), 1e-300)), mu


def dual_rates(l_f: np.ndarray, pi: np.ndarray, a: float, alpha: float = 1.0) -> np.ndarray:
    """``r_m = α π_m τ_m/(L_m + τ_m)`` with ``τ_m = a π_m``."""
    tau = a * pi
    return alpha * pi * tau / (l_f + tau)


def equalized_marginals(
    l_f: np.ndarray, c: float, a: float, alpha: float = 1.0
) -> tuple[float, np.ndarray]:
    """``(t, π)``: the marginals maximizing ``min_m r_m(π_m)`` with ``Σ π_m = C``, ``π_m ≤ 1``
    (module docstring); ``t`` is the common rate. Budget left once every ``π_m(t)`` hits its cap
    (a cohort larger than the bound needs) goes to the clients in proportion to their room."""
    l_f = np.asarray(l_f, dtype=float)

    def marginals(t: float) -> np.ndarray:
        s = t / alpha
        return s / 2 + np.sqrt(s * s / 4 + s * l_f / a)

    t_cap = float(np.min(alpha * a / (l_f + a)))  # r_m(1): no block can do better
    if marginals(t_cap).sum() <= c:
        pi = np.minimum(marginals(t_cap), 1.0)
        room = 1.0 - pi
        if room.sum() > 0:
            pi = pi + room * min(1.0, (c - pi.sum()) / room.sum())
        return t_cap, pi
    lo, hi = 0.0, t_cap
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if marginals(mid).sum() > c:
            hi = mid
        else:
            lo = mid
    pi = marginals(lo)
    return lo, np.minimum(pi * (c / pi.sum()), 1.0)


def balanced(
    l_f: np.ndarray,
    mu: float,
    c: float,
    theta: float,
    alpha: float = 1.0,
    pi: np.ndarray | None = None,
) -> tuple[float, np.ndarray, float]:
    """``(γ, π, ρ)`` maximizing the bound ``ρ`` (module docstring): over ``γ`` for the given
    marginals ``pi``, or over ``γ`` and ``π`` when ``pi`` is None. ``τ_m = θ M π_m/(C γ)``."""
    l_f = np.asarray(l_f, dtype=float)
    m = l_f.size
    if mu <= 0:
        raise ValueError("the bound needs a strongly convex problem (mu > 0)")

    def dual(gamma: float) -> tuple[float, np.ndarray]:
        a = theta * m / (c * gamma)
        if pi is None:
            return equalized_marginals(l_f, c, a, alpha)
        p = np.asarray(pi, dtype=float)
        return float(np.min(dual_rates(l_f, p, a, alpha))), p

    lo = math.log(1e-12 / (float(np.max(l_f)) + mu))
    hi = math.log(1e12 / mu)
    for _ in range(200):  # primal rate − dual rate is increasing in γ
        mid = 0.5 * (lo + hi)
        g = math.exp(mid)
        if g * mu / (1 + g * mu) < dual(g)[0]:
            lo = mid
        else:
            hi = mid
    gamma = math.exp(lo)
    t, p = dual(gamma)
    return gamma, p, min(gamma * mu / (1 + gamma * mu), t)


def bound_marginals(l_f: np.ndarray, mu: float, c: float) -> np.ndarray:
    """The marginals of ``sampler.by=bound``: :func:`balanced` at the default ``θ = 0.9`` without
    compression (``α = 1``; the sampler is built before the method, so a run with another
    ``method.gamma_tau`` or a compressor re-optimizes only ``γ`` for these marginals). Without
    strong convexity (``μ = 0``) there is no primal rate to balance: the marginals equalize the
    dual rates at ``γ = 1/max_m L_{F,m}``."""
    l_f = np.asarray(l_f, dtype=float)
    if mu > 0:
        return balanced(l_f, mu, c, GAMMA_TAU, 1.0, None)[1]
    a = GAMMA_TAU * l_f.size * float(np.max(l_f)) / c
    return equalized_marginals(l_f, c, a)[1]
