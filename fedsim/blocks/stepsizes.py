"""``auto`` stepsizes: the values the theory prescribes from the task's smoothness constants.

A user who writes ``method.client_lr=auto`` gets a run that converges without tuning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

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


# --------------------------------------------------------------------------- clipped methods
#
# The ``auto`` values of the clipped methods (arXiv 2412.02781 and its baselines,
# ``strategies/clipped.py``). The paper's theorems set ``c0 ∝ L0``, ``c1 ∝ L1`` and a small client
# stepsize, but their numeric constants are not known here (specs: NOT FOUND); the rules below are
# derived in these docstrings instead.

DRIFT = 1e-3
"""ε, the relative drift the client stepsizes allow: the local path's gradients stay within
``ε·G`` of their values at the round's start point, ``G`` the largest (minibatch) gradient norm
there (:func:`clipped_client_lr`)."""


def l0l1(objective: object) -> tuple[float, float]:
    """``(L0, L1)`` with ``‖∇²f(x)‖ ≤ L0 + L1‖∇f(x)‖`` everywhere: the objective's own
    ``l0``/``l1`` (the quartic derives them), else ``(L, 0)`` for an L-smooth objective."""
    if hasattr(objective, "l0") and hasattr(objective, "l1"):
        return float(objective.l0), float(objective.l1)
    return float(objective.smoothness), 0.0  # type: ignore[attr-defined]


def clipping_safety(l1: float) -> float:
    """ν in ``c0 = ν L0``, ``c1 = ν L1`` (:func:`clipped_server_constants`): 1 when ``L1 = 0``,
    ``e − 1`` otherwise."""
    return 1.0 if l1 == 0 else math.e - 1.0


def clipped_server_constants(task: Task) -> tuple[float, float]:
    """``(c0, c1) = (ν L0, ν L1)`` of the global ``f`` (``ν`` = :func:`clipping_safety`): the
    (L0,L1)-GD step ``x⁺ = x − θ∇f(x)``, ``θ = 1/(c0 + c1‖∇f(x)‖)``, then decreases ``f`` by at
    least ``θ‖∇f(x)‖²/2``.

    Derivation. Along ``y(t) = x + t(y − x)``, ``δ = ‖y − x‖``, the Hessian bound gives
    ``d/dt ‖∇f(y(t))‖ ≤ (L0 + L1‖∇f(y(t))‖) δ``, so (Grönwall)
    ``L0 + L1‖∇f(y(t))‖ ≤ (L0 + L1‖∇f(x)‖) e^{L1 δ t}`` and, for ``L1 δ ≤ 1``,
    ``f(y) ≤ f(x) + ⟨∇f(x), y − x⟩ + (B/2)(L0 + L1‖∇f(x)‖) δ²`` with ``B = e − 1``
    (``(e^c − 1)/c ≤ e − 1`` for ``c ≤ 1``; ``B = 1`` when ``L1 = 0``, the usual descent
    lemma). The clipped step has ``δ = θ‖∇f‖ < 1/c1 ≤ 1/L1`` (``ν ≥ 1``), and
    ``θ(L0 + L1‖∇f‖) = 1/ν``, so ``f(x⁺) ≤ f(x) − θ‖∇f‖²(1 − B/(2ν)) = f(x) − θ‖∇f‖²/2``
    with ``ν = B``. An L-smooth task (``L1 = 0``) gets gradient descent with ``θ = 1/L``.
    """
    l0, l1 = l0l1(task.full)
    nu = clipping_safety(l1)
    return nu * l0, nu * l1


def local_step_count(task: Task, method: Mapping) -> int:
    """``K``, the most local steps a client takes in a round: ``local_steps`` for ``gd``/``sgd``,
    ``local_epochs·⌈n_m/b⌉`` for ``rr``/``so``."""
    if method["local_solver"] in ("gd", "sgd"):
        return int(method["local_steps"])
    b = int(method["batch_size"])
    return int(method["local_epochs"]) * max(-(-c.num_samples // b) for c in task.clients)


def local_curvature(task: Task, stochastic: bool, path: float = DRIFT) -> float:
    """``Λ``, a bound of the local steps' curvature: ``‖∇²f_m‖`` (``stochastic``: of every
    minibatch's ``‖∇²f_{m,B}‖``) over the points a round's local path can reach.

    L-smooth tasks: ``max_m L_m`` (``stochastic``: the largest sample smoothness), valid
    everywhere. Tasks without a global ``L`` (the quartic) bound it on a region instead: the run's
    iterates stay in the sublevel set ``{f ≤ f(x0)}`` while the server steps decrease ``f``,
    which lies in a ball ``Ω = B(c, R)`` (``task.full.sublevel_radius``); a path from ``x ∈ Ω``
    moves at most ``path·G/Λ`` (:func:`clipped_client_lr`), ``G`` and ``Λ`` the clients' largest
    gradient and curvature on ``Ω``, so ``Λ`` is the largest curvature on
    ``B(c, R + path·G/Λ)``.
    """
    full: Any = task.full
    clients: list[Any] = list(task.clients)
    if not hasattr(full, "sublevel_radius"):
        attr = "sample_smoothness" if stochastic else "smoothness"
        return max(float(getattr(c, attr)) for c in clients)
    center, radius = full.center, full.sublevel_radius(full.loss(task.x0))
    grad = max(c.gradient_bound(center, radius, stochastic) for c in clients)
    curv = max(c.curvature_bound(center, radius, stochastic) for c in clients)
    radius += path * grad / curv
    return max(c.curvature_bound(center, radius, stochastic) for c in clients)


def clipped_client_lr(task: Task, method: Mapping, share: float = 1.0) -> float:
    """``γ = share·ε/(2 K Λ)`` (ε = :data:`DRIFT`, ``K`` = :func:`local_step_count`, ``Λ`` =
    :func:`local_curvature`): the plain local steps of the server-clipped methods.

    Lemma (drift). Let every step's gradient ``∇f_B`` be Λ-Lipschitz on the region the path can
    reach, ``G = max_B ‖∇f_B(x)‖`` at the round's start ``x``, ``z_0 = x``,
    ``z_{h+1} = z_h − γ∇f_{B_h}(z_h)``, and ``2γKΛ ≤ ε ≤ 1``. Then
    ``‖∇f_{B_h}(z_h) − ∇f_{B_h}(x)‖ ≤ εG`` for every ``h ≤ K``. Proof by induction: if it holds
    before ``h``, ``‖z_h − x‖ ≤ γ h (1 + ε) G ≤ 2γKG``, so the error is at most
    ``2γKΛG ≤ εG``. Hence the average path gradient ``g_m`` a client sends is its gradient
    ``∇f_m(x)`` (``gd``; for ``rr``/``so`` the epoch's batches partition the data, so their
    weighted gradients at ``x`` sum to ``∇f_m(x)``) up to ``εG``, and the server's clipped step
    is the (L0,L1)-GD step of :func:`clipped_server_constants` on a direction that is exact to a
    relative ``ε``: it still decreases ``f`` while ``‖∇f(x)‖ ≥ 2ε Σ_m w_m G_m`` (for
    heterogeneous clients, a floor of order ``ε`` times their gradients at ``x*``). ``ε = 10⁻³``
    makes that floor far below the tests' and examples' accuracies; ``share < 1`` leaves the rest
    of the drift budget to another path (Clipped RR-CLI's intra-epoch server steps).
    """
    stochastic = method["local_solver"] != "gd"
    k = local_step_count(task, method)
    return share * DRIFT / (2.0 * k * local_curvature(task, stochastic))


def intra_epoch_lr(task: Task, method: Mapping, sampler: object, share: float = 0.5) -> float:
    """Clipped RR-CLI's intra-epoch server step ``η = share·ε/(2 R A Λ)``: ``R = M/C`` cohorts
    per meta-epoch, ``A = (M/C)·`` (the ``C`` largest ``w_m`` summed) bounds the weight
    ``Σ_{m∈S} a_m w_m`` of a cohort's mean, ``Λ`` = :func:`local_curvature` of the local solver.

    A client of the meta-epoch's ``r``-th cohort starts its local path at
    ``x_{t,r} = x_t − η Σ_{r'<r} g_{t,r'}``, and ``‖g_{t,r'}‖ ≤ A(1 + ε)G``: its gradients differ
    from those at ``x_t`` by at most ``2Λ(γK + ηRA)G``, which is ``εG`` with the two halves of the
    budget (``γ`` = :func:`clipped_client_lr` with ``share = 1/2``). Then the meta-epoch's mean
    ``g_t`` is ``∇f(x_t)`` up to ``εG`` and its clipped step from ``x_t`` is the (L0,L1)-GD step
    of :func:`clipped_server_constants`, as in the drift lemma.
    """
    m = task.num_clients
    c = int(getattr(sampler, "cohort_size", m))
    rounds = m // c
    weight = (m / c) * float(sum(sorted(task.weights)[-c:]))
    curvature = local_curvature(task, method["local_solver"] != "gd")
    return share * DRIFT / (2.0 * rounds * weight * curvature)


def smoothness_on_run(task: Task) -> tuple[float, np.ndarray]:
    """``(L, (L_m)_m)``: the smoothness of ``f`` and of every ``f_m``; where there is no global
    ``L`` (the quartic) their largest curvature on the ball holding ``{f ≤ f(x0)}``."""
    full: Any = task.full
    if not hasattr(full, "sublevel_radius"):
        return float(full.smoothness), np.array([float(c.smoothness) for c in task.clients])
    center, radius = full.center, full.sublevel_radius(full.loss(task.x0))
    clients: list[Any] = list(task.clients)
    return float(full.curvature_bound(center, radius)), np.array(
        [float(c.curvature_bound(center, radius)) for c in clients]
    )


def cohort_smoothness(task: Task, sampler: object) -> float:
    """``𝓛``, the expected smoothness (Gower et al. 2019, "SGD: general analysis and improved
    rates") of the server's cohort estimate ``ĝ = Σ_{m∈S} a_m w_m ∇f_m``:
    ``E‖ĝ(x) − ĝ(x*)‖² ≤ 2𝓛 (f(x) − f*)``; 0 under full participation (``ĝ = ∇f``).

    With ``L̃_m = M w_m L_m`` (``f = (1/M) Σ f̃_m``, ``f̃_m = M w_m f_m``): ``uniform`` and
    ``cyclic`` cohorts (each round a uniformly random ``C``-subset) are τ-nice,
    ``𝓛 = M(C−1)/(C(M−1))·L + (M−C)/(C(M−1))·max_m L̃_m`` (their Prop. 3.8);
    ``with_replacement`` (``C`` i.i.d. draws) ``𝓛 = (1 − 1/C) L + max_m L̃_m / C``; any other
    sampler the bound ``𝓛 = C max_m w_m L_m/π_m`` (Cauchy–Schwarz over the at most ``C`` terms,
    ``a_m = 1/π_m``, and ``‖∇f_m(x) − ∇f_m(x*)‖² ≤ 2L_m D_{f_m}(x, x*)`` for convex ``f_m``).
    """
    from fedsim.blocks.samplers import (
        CyclicSampler,
        FullSampler,
        UniformSampler,
        WithReplacementSampler,
    )

    if sampler is None or isinstance(sampler, FullSampler):
        return 0.0
    m = task.num_clients
    c = int(sampler.max_cohort_size)  # type: ignore[attr-defined]
    big, client = smoothness_on_run(task)
    tilde = float(np.max(m * task.weights * client))
    if isinstance(sampler, UniformSampler | CyclicSampler):
        if c >= m:
            return 0.0
        return (m * (c - 1) * big + (m - c) * tilde) / (c * (m - 1))
    if isinstance(sampler, WithReplacementSampler):
        return (1.0 - 1.0 / c) * big + tilde / c
    pi = np.asarray(sampler.inclusion_probabilities(), dtype=float)  # type: ignore[attr-defined]
    return float(c * np.max(task.weights * client / pi))


def sampled_c0(task: Task, sampler: object, c0: float) -> float:
    """``max(c0, 2𝓛)`` (``𝓛`` = :func:`cohort_smoothness`): a server step ``1/c0`` on a cohort's
    estimate is at most SGD's ``1/(2𝓛)`` (Gower et al. 2019, Thm 3.1: linear convergence to a
    neighbourhood of ``x*`` proportional to the step); full participation keeps ``c0``. For
    ``L1 > 0`` the same floor on ``c0`` is a stated extension, not a theorem."""
    return max(c0, 2.0 * cohort_smoothness(task, sampler))


def ce_fedavg_constants(task: Task, sampler: object) -> tuple[float, float]:
    """``(c0, c1)`` of CE-FedAvg's effective server step: ``η γ = 1/c0`` and ``η·cl = 1/c1``, so
    ``η = 1/(c0 γ)`` and ``cl = γ c0/c1`` (∞ when ``c1 = 0``: nothing to clip).

    A client sends ``u_m = clip_cl((x − z_H)/H) = clip_cl(γ g_m)``, ``g_m`` its average local
    gradient, so the server's step on it is
    ``η u_m = min(ηγ, η·cl/‖g_m‖) g_m = min(1/c0, 1/(c1‖g_m‖)) g_m``. Since
    ``1/(c0 + c1 t) ≤ min(1/c0, 1/(c1 t)) ≤ 2/(c0 + c1 t)``, ``(c0, c1) = 2ν (L0, L1)``
    (:func:`clipped_server_constants` doubled) makes every client's share at most an (L0,L1)-GD
    step and at least half of one; it clips ``g_m`` at ``‖g_m‖ = L0/L1``, where the bound's two
    terms are equal. With ``L1 = 0`` nothing is clipped and ``c0 = L``: gradient descent on the
    average local gradient. A cohort (any sampler but ``full``) raises ``c0`` to
    :func:`sampled_c0`.
    """
    l0, l1 = l0l1(task.full)
    nu = clipping_safety(l1) * (1.0 if l1 == 0 else 2.0)
    return sampled_c0(task, sampler, nu * l0), nu * l1


def celgc_constants(task: Task, method: Mapping, sampler: object) -> tuple[float, float]:
    """CELGC's per-step ``(c0, c1) = K·(max(ν L0, 2𝓛), ν L1)``, ``K`` local steps
    (:func:`local_step_count`), ``(L0, L1)`` the largest of the clients' (``gd``; for
    stochastic steps ``(Λ, 0)`` with ``Λ`` the minibatches' curvature on the region a round can
    reach, :func:`local_curvature`), ``𝓛`` = :func:`cohort_smoothness`.

    CELGC has no small client stepsize to limit drift: each local step is clipped,
    ``z ← z − θ(s) s``. With these constants each step is ``1/K`` of a client's (L0,L1)-GD step
    (:func:`clipped_server_constants`), so a round's local path has length at most
    ``Σ_h θ_h‖s_h‖ ≤ 1/(ν L1)`` (and ``≤ max‖s‖/(ν L0)``): it stays inside the radius where the
    Grönwall bound applies, and the averaged model moves by about one clipped step per round.
    ``K = 1`` is clipped GD (L0L1-GD). The drift that remains, of the order of that step under
    heterogeneous clients, is the baseline's known limitation.
    """
    if method["local_solver"] == "gd":
        pairs = [l0l1(c) for c in task.clients]
        l0, l1 = max(p[0] for p in pairs), max(p[1] for p in pairs)
    else:  # the path: ‖s_h‖ ≤ G + Λ‖z_h − x‖, so K steps of ‖s_h‖/(KΛ) stay within (e − 1)G/Λ
        l0, l1 = local_curvature(task, True, path=2.0), 0.0
    nu, k = clipping_safety(l1), local_step_count(task, method)
    return k * max(nu * l0, 2.0 * cohort_smoothness(task, sampler)), k * nu * l1
