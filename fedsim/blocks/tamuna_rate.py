"""TAMUNA's mean-square contraction per round, and the ``(s, p, η)`` that minimize uplink floats.

The model problem (exact for it, a stated approximation elsewhere): every client has the same
curvature ``λ ∈ [μ, L]`` along a coordinate and its own minimizer, ``f_i(x) = (λ/2)(x − b_i)²``.
Write ``e = x̄ − x*`` and ``δ_i = h_i − h_i*`` (``Σ_i δ_i = 0``). Per round, with ``a = 1 − γλ``
and ``L ~ Geometric(p)`` local steps, client ``i`` ends at ``u_i = aᴸ e + g δ_i`` with
``g = (1 − aᴸ)/λ``. The pattern makes a coordinate's holders ``H`` a uniformly random
``s``-subset of the ``n`` clients (whatever the cohort size ``c``), so

    e⁺ = aᴸ e + g · mean_{i∈H} δ_i,
    δ_i⁺ = (1 − t) δ_i + t · mean_{j∈H} δ_j  for i ∈ H (δ_i⁺ = δ_i otherwise),  t = (η/γ) g.

``δ`` evolves on its own, and the within-``H`` scatter of an ``s``-subset has mean
``(s−1)/(n−1) · Σ_i δ_i²`` when ``Σ_i δ_i = 0``. Hence, exactly,

    E Σ_i (δ_i⁺)² = ρ_h Σ_i δ_i²,   ρ_h = 1 − E[t(2 − t)] · (s − 1)/(n − 1),
    E (e⁺)² is driven by δ and contracts by ρ_x = E[a^{2L}],

and the round's mean-square factor is ``ρ = max(ρ_x, ρ_h)``, maximized over ``λ ∈ [μ, L]``.
The moments of ``L`` are closed forms: ``E zᴸ = pz / (1 − (1 − p)z)``. Rounds to shrink the
error by ``ε`` are ``log(1/ε) / (−log ρ)``, and a round uploads ``s·d`` floats (every coordinate
from its ``s`` holders), so the uplink floats are ``s · d · log(1/ε) / (−log ρ)``.

With ``s = c = n`` and ``η = p`` this is Scaffnew's ``max(1 − γμ, 1 − p²)`` per local step, to
first order. What it leaves out: clients whose curvatures differ (then ``e`` feeds back into
``δ``), which costs small ``s`` more than the model says; the experiment
``experiments/local_training/tamuna_auto.md`` measures the rule on tasks where they differ.
"""

from __future__ import annotations

import math

import numpy as np


def _moment(z: np.ndarray, p: float) -> np.ndarray:
    """``E zᴸ`` for ``L ~ Geometric(p)`` on {1, 2, ...}: ``pz / (1 − (1 − p) z)``."""
    return p * z / (1 - (1 - p) * z)


def round_rate(
    s: int, p: float, eta: float, gamma: float, mu: float, big_l: float, n: int, grid: int = 64
) -> float:
    """``max_{λ∈[μ,L]} max(ρ_x(λ), ρ_h(λ))``: TAMUNA's mean-square factor per round (module
    docstring); ``s`` holders per coordinate out of ``n`` clients."""
    lam = np.geomspace(mu, big_l, grid) if big_l > mu else np.array([big_l])
    a = 1 - gamma * lam
    ea, ea2 = _moment(a, p), _moment(a * a, p)
    g1 = (1 - ea) / lam  # E g
    g2 = (1 - 2 * ea + ea2) / lam**2  # E g²
    k = eta / gamma
    rho_h = 1 - (2 * k * g1 - k * k * g2) * (s - 1) / max(n - 1, 1)
    return float(np.max(np.maximum(ea2, rho_h)))


def chi(c: int, s: int) -> float:
    """``χ = c(s − 1)/(s(c − 1))``: the authors' upper bound on ``η/p``."""
    return c * (s - 1) / (s * (c - 1))


def uplink_floats(
    s: int, p: float, eta: float, gamma: float, mu: float, big_l: float, n: int, dim: int
) -> float:
    """Predicted uplink floats per factor ``e`` of mean-square error: ``s·d / (−log ρ)``."""
    rho = round_rate(s, p, eta, gamma, mu, big_l, n)
    return math.inf if rho >= 1 else s * dim / -math.log(rho)


def best_p(s: int, c: int, gamma: float, mu: float, big_l: float, n: int) -> float:
    """The ``p`` minimizing the predicted rounds at ``η = pχ`` (golden-section search in
    ``log p`` on [1e-4, 1]; the rate is unimodal there: ``ρ_x`` grows and ``ρ_h`` falls in p)."""
    x = chi(c, s)

    def cost(log_p: float) -> float:
        p = math.exp(log_p)
        return round_rate(s, p, p * x, gamma, mu, big_l, n)

    lo, hi = math.log(1e-4), 0.0
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if cost(m1) <= cost(m2):
            hi = m2
        else:
            lo = m1
    return min(1.0, math.exp((lo + hi) / 2))


def plan(
    c: int,
    gamma: float,
    mu: float,
    big_l: float,
    n: int,
    dim: int,
    s: int | None = None,
    p: float | None = None,
) -> tuple[int, float, float]:
    """``(s, p, η = pχ)`` minimizing the predicted uplink floats :func:`uplink_floats` over
    ``s ∈ [2, c]`` and ``p`` (:func:`best_p`); a given ``s`` or ``p`` is kept as it is."""
    best: tuple[float, int, float, float] | None = None
    for k in range(2, c + 1) if s is None else (s,):
        q = best_p(k, c, gamma, mu, big_l, n) if p is None else p
        eta = q * chi(c, k)
        floats = uplink_floats(k, q, eta, gamma, mu, big_l, n, dim)
        if best is None or floats < best[0]:
            best = (floats, k, q, eta)
    assert best is not None
    return best[1], best[2], best[3]
