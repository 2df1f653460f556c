"""Riemannian methods, server side: R-GD, R-SGD, R-SVRG, R-LSVRG, R-PAGE and R-MARINA.

All of them minimize ``f(x) = (1/M) Σ_m f̃_m(x)`` over the task's manifold ``𝓜``
(``task.geometry``: the sphere, the SPD matrices, or ``ℝ^d`` for a task without a manifold) with
``f̃_m = M w_m f_m``, the uniform form of the task's ``f = Σ_m w_m f_m`` (``f̃_m = f_m`` for equal
client sizes), so that the mean over a uniform cohort is an unbiased estimate of ``grad f``.
Clients send Riemannian gradients ``grad f̃_m(x) = M w_m · P_x ∇f_m(x)`` (the manifold's
``egrad_to_rgrad``) or transported differences (:mod:`clients.riemannian`); the server keeps the
point and the gradient estimate and steps

    x⁺ = R_x(−η g),   R = Exp  (``method.retraction=exp``, the default)
                      R = the manifold's retraction (``retraction``),

then maps ``x⁺`` back with ``to_manifold``, which only removes float drift. Tangent vectors move
between points with ``Γ_x^y`` = parallel transport along the minimizing geodesic
(``method.transport=parallel``, the default) or the projection vector transport
(``projection``). On a Euclidean task ``Exp_x(v) = x + v`` and ``Γ = I``: R-GD is GD, R-LSVRG
is L-SVRG (Kovalev, Horváth, Richtárik 2019), R-PAGE is PAGE and R-MARINA is MARINA.

**Rounds.** The model after round ``r`` is ``x^r``: each round computes the estimate ``g^k`` at
the current ``x^k`` from the replies, then steps to ``x^{k+1}`` (so R-MARINA with ``p = 1`` and
the identity compressor has R-GD's iterates). Round 1 of every variance-reduced method is a
full-participation round at ``x⁰`` (its estimate is ``grad f(x⁰)``). A *full round* asks every
client for ``grad f̃_m``; a *difference round* asks a cohort (R-MARINA: everyone) for
``grad f̃_m(x) − Γ_y^x grad f̃_m(y)``, the server sending both points ``y`` and ``x``: clients are
stateless, so a lost reply or a failed round can never leave a client with a gradient at a
point the server has discarded. Coins are drawn from ``(seed, round, "<method>/coin")``, cohorts
from the sampler (uniform: ``(seed, round, "uniform")``).

**Counting.** ``grad_evals`` counts sample gradients, as for every fedsim method: a client
gradient costs ``n_m``, a difference ``2 n_m`` (R-SGD with ``method.batch_size``: the
minibatch). Floats: every float sent, except R-MARINA's compressed replies, which count the
compressor's floats.

**auto** (``L̃_m = M w_m L_m`` the geodesic smoothness of ``f̃_m``, ``L = max_m L̃_m``,
``L̄ = √(mean_m L̃_m²)``, ``L_f = task.L`` that of ``f``; ``n = M`` clients, ``b`` the cohort
size, ``ζ = task.zeta`` the curvature factor ``√|κ_min| D / tanh(√|κ_min| D)`` (1 on the sphere
and in ℝ^d), ``ω`` the compressor's variance):

========  ====================================================================================
rgd       ``η = 1/L_f`` (the descent lemma on a geodesically ``L_f``-smooth ``f``)
rsgd      ``η = 1/(2L)`` (constant; with ``batch_size``, ``L`` of the clients' minibatch
          objectives: ``max_m M w_m L_m^sample``)
rsvrg     ``η = 1/(6ζL)``, ``inner_steps = ⌈n/b⌉`` (an epoch as long as R-LSVRG's expected
          reference lifetime ``1/p``)
rlsvrg    ``p = b/n`` (L-SVRG's ``1/n`` with a cohort of ``b``), ``η = 1/(6ζL)`` (L-SVRG's
          stepsize ``1/(6L)``, Kovalev, Horváth, Richtárik 2019, with ``L`` inflated by ``ζ``
          as in every Riemannian variance-reduced rate, Zhang, Reddi, Sra 2016); checked to
          converge linearly on ``karcher_spd`` for ``p`` over a 16× range
rpage     ``p = b/(n + b)``, ``η = 1/(L_f + L̄ √((1−p)/(p b)))`` (PAGE, Li et al. 2021,
          Thm 1: ``1/(L(1 + √((1−p)/(pb))))``)
rmarina   ``p = 1/(ω + 1)``, ``η = 1/(L_f + L̄ √((1−p)ω/(p n)))`` (MARINA, Gorbunov et al.
          2021, Thm 2.1: ``1/(L_− + L_+ √((1−p)ω/(pn)))``)
========  ====================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedsim.blocks.compressors import (
    COMPRESSOR_NAMES,
    Compressor,
    Slot,
    build_compressor,
    compressor_rng,
)
from fedsim.blocks.samplers import Cohort, FullSampler, Sampler, UniformSampler
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least
from fedsim.rng import generator
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings

Instructions = dict[int, tuple[list[np.ndarray], dict]]
RETRACTIONS = ("exp", "retraction")
TRANSPORTS = ("parallel", "projection")


# --------------------------------------------------------------------------- validation
def _is_auto(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def one_of(method: Mapping, key: str, choices: tuple[str, ...]) -> str:
    """``method[key]`` (default: the first choice) if it is one of ``choices``."""
    value = method.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"unknown method.{key} {value!r}; valid choices: {', '.join(choices)}")
    return str(value)


def probability(name: str, value: object, auto: float) -> float:
    """A probability in (0, 1] (``auto`` → ``auto``), or a ConfigError."""
    if _is_auto(value):
        return float(auto)
    try:
        p = float("nan") if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        p = float("nan")
    if not 0 < p <= 1:
        raise ConfigError(f"{name} must lie in (0, 1] or be 'auto', got {value!r}")
    return p


def client_smoothness(task: Task, sample: bool = False) -> np.ndarray:
    """``L̃_m = M w_m L_m``: the geodesic smoothness of the clients' ``f̃_m = M w_m f_m``
    (``sample``: of their one-sample objectives, the constant minibatch steps need)."""
    scale = task.num_clients * task.weights
    consts = np.array([c.sample_smoothness if sample else c.smoothness for c in task.clients])
    return scale * consts


def largest_smoothness(task: Task, sample: bool = False) -> float:
    """``L = max_m L̃_m`` (what SGD- and SVRG-type steps need: every ``f̃_m`` smooth)."""
    return float(np.max(client_smoothness(task, sample)))


def mean_square_smoothness(task: Task) -> float:
    """``L̄ = √((1/M) Σ_m L̃_m²)``: the average smoothness of PAGE (Li et al. 2021, Assumption 2)
    and MARINA (Gorbunov et al. 2021, Assumption 1.2); ``L̄ ≤ max_m L̃_m``."""
    return float(np.sqrt(np.mean(client_smoothness(task) ** 2)))


def recursive_lr(method: Mapping, task: Task, variance: float) -> float:
    """``η = 1/(L_f + L̄ √variance)``: PAGE's ``1/(L(1 + √((1−p)/(pb))))`` (Li et al. 2021,
    Thm 1) and MARINA's ``1/(L(1 + √((1−p)ω/(pn))))`` (Gorbunov et al. 2021, Thm 2.1) with the
    smoothness of ``f`` (``L_f = task.L``) in the first term and the clients' average ``L̄`` in
    the variance term, as the proofs use them (``= 1/(L(1 + √variance))`` when all are ``L``)."""
    auto = 1.0 / (task.L + mean_square_smoothness(task) * math.sqrt(variance))
    return positive_or_auto("method.lr", method.get("lr", "auto"), auto)


def check_start(task: Task) -> None:
    """``x⁰`` must lie on the task's manifold (a ConfigError otherwise)."""
    try:
        task.geometry.check_point(np.asarray(task.x0, dtype=float), what="x0")
    except ValueError as err:
        raise ConfigError(f"task {task.name!r}: {err}") from err


def unbiased_compressor(method: Mapping, dim: int) -> Compressor:
    """The method's compressor; a biased one is a ConfigError naming the unbiased choices."""
    comp = build_compressor(method.get("compressor") or {"name": "identity"}, dim)
    if not comp.unbiased:
        valid = [n for n in COMPRESSOR_NAMES if build_compressor({"name": n}, dim).unbiased]
        raise ConfigError(
            f"method {method['name']!r} needs an unbiased compressor (E Q(v) = v); "
            f"compressor={comp.name!r} is biased. Valid choices: {', '.join(valid)}"
        )
    return comp


def _sampler_among(method: Mapping, sampler: Sampler | None, full_only: bool) -> int:
    """The cohort size ``b`` of a full or uniform sampler (``full_only``: full only)."""
    allowed: tuple[type, ...] = (FullSampler,) if full_only else (FullSampler, UniformSampler)
    if sampler is not None and not isinstance(sampler, allowed):
        valid = "full" if full_only else "full, uniform"
        raise ConfigError(
            f"method {method['name']!r} "
            + ("asks every client every round" if full_only else "samples cohorts uniformly")
            + f"; valid samplers: {valid}"
        )
    return int(sampler.max_cohort_size) if sampler is not None else 0


def resolve_geometry(method: Mapping, task: Task) -> dict:
    """The knobs every Riemannian method shares, validated, and ``x⁰`` checked."""
    check_start(task)
    out = dict(method)
    out["retraction"] = one_of(method, "retraction", RETRACTIONS)
    out["transport"] = one_of(method, "transport", TRANSPORTS)
    return out


# --------------------------------------------------------------------------- base
class _Riemannian(FedsimStrategy):
    """What every method here shares: the manifold, the step ``R_x(−ηg)`` and ``Γ``."""

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings)
        self.manifold = task.geometry
        self.lr = float(method["lr"])
        self.retraction = str(method.get("retraction", "exp"))
        self.transport_kind = str(method.get("transport", "parallel"))
        self._shapes: dict[int, list[tuple[int, ...]]] = {}

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> _Riemannian:
        return cls(task, sampler, settings, method)

    # ----------------------------------------------------------------- geometry
    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``R_x(−η g)`` (Exp or the retraction), mapped back onto 𝓜 against float drift."""
        v = -self.lr * g
        y = self.manifold.exp(x, v) if self.retraction == "exp" else self.manifold.retract(x, v)
        return self.manifold.to_manifold(y)

    def transport(self, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``Γ_x^y v``: parallel transport along the geodesic, or the projection transport."""
        if self.transport_kind == "parallel":
            return self.manifold.transport(x, y, v)
        return self.manifold.vector_transport(x, y, v)

    # ----------------------------------------------------------------- messages
    def everyone(self) -> Cohort:
        n = self.task.num_clients
        return Cohort(np.arange(n), np.ones(n), np.ones(n))

    def send(
        self, pids: list[int], arrays: list[np.ndarray], config: dict, replies: int = 1
    ) -> Instructions:
        """The same ``arrays`` and ``config`` to every client of ``pids``; each must answer
        with ``replies`` tangent vectors."""
        shape = [(self.task.dim,)] * replies
        for pid in pids:
            self._shapes[pid] = shape
        return {pid: (arrays, dict(config)) for pid in pids}

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        return self._shapes.get(pid, [])

    @staticmethod
    def mean(vectors: list[np.ndarray]) -> np.ndarray:
        """The plain mean, in partition-id order (the replies come sorted)."""
        return np.mean(np.stack(vectors), axis=0)


# --------------------------------------------------------------------------- R-GD, R-SGD
class RGD(_Riemannian):
    """Distributed Riemannian gradient descent with a fixed step (Boumal, *An Introduction to
    Optimization on Smooth Manifolds*, 2023, Alg. 4.1; Zhang & Sra, COLT 2016, for its rate
    under geodesic convexity).

    Every client every round (``sampler=full``)::

        g^k = (1/M) Σ_m grad f̃_m(x^k) = grad f(x^k),     x^{k+1} = R_{x^k}(−η g^k)

    ``lr=auto``: ``η = 1/L_f``, ``L_f = task.L`` the geodesic smoothness of ``f``
    (``f(Exp_x(−ηg)) ≤ f(x) − η(1 − ηL_f/2)‖g‖²``).
    """

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        _sampler_among(method, sampler, full_only=True)
        out = resolve_geometry(method, task)
        out["lr"] = positive_or_auto("method.lr", method.get("lr", "auto"), 1.0 / task.L)
        return out

    def cohort(self, rnd: int) -> Cohort:
        return self.everyone()

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        return self.send(cohort.ids.tolist(), [self.x], {"kind": "grad"})

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if replies:
            self.x = self.step(self.x, self.mean([r.arrays[0] for r in replies]))


class RSGD(_Riemannian):
    """Riemannian SGD with a constant stepsize (Bonnabel, IEEE TAC 2013, eq. (2)), over a
    uniform cohort ``S_k`` of ``b`` clients and, with ``method.batch_size``, a minibatch
    ``B_m`` of each client's samples (from ``(seed, k, "rsgd/batch", m)``)::

        g^k = (1/b) Σ_{m∈S_k} grad f̃_{m,B_m}(x^k),     x^{k+1} = R_{x^k}(−η g^k)

    ``lr=auto``: ``η = 1/(2L)`` (``L`` module docstring), the constant stepsize of SGD under
    expected smoothness (Gower et al., ICML 2019, Thm 3.1: ``η ≤ 1/(2L)``); it converges
    linearly to a neighbourhood of ``x*`` whose size is ∝ η and then stalls there.
    """

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        _sampler_among(method, sampler, full_only=False)
        out = resolve_geometry(method, task)
        batch = method.get("batch_size")
        if batch is not None:
            batch = int_at_least("method.batch_size", batch, 1)
        out["batch_size"] = batch
        big_l = largest_smoothness(task, sample=batch is not None)
        out["lr"] = positive_or_auto("method.lr", method.get("lr", "auto"), 1.0 / (2.0 * big_l))
        return out

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        return self.send(cohort.ids.tolist(), [self.x], {"kind": "grad"})

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if replies:
            self.x = self.step(self.x, self.mean([r.arrays[0] for r in replies]))


# --------------------------------------------------------------------------- SVRG family
def _svrg_lr(method: Mapping, task: Task) -> float:
    """``η = 1/(6ζL)`` (module docstring)."""
    zeta = float(getattr(task, "zeta", 1.0))
    return positive_or_auto(
        "method.lr", method.get("lr", "auto"), 1.0 / (6.0 * zeta * largest_smoothness(task))
    )


class _Snapshot(_Riemannian):
    """A reference point ``w`` with its full gradient ``G = grad f(w)`` kept on the server,
    and the variance-reduced estimate of Zhang, Reddi, Sra 2016 (R-SVRG, Alg. 1)::

        g^k = (1/b) Σ_{m∈S_k} [grad f̃_m(x^k) − Γ_w^{x^k} grad f̃_m(w)] + Γ_w^{x^k} G

    (the clients send the bracket; Γ is linear, so this is the paper's
    ``grad f_i(x) − Γ(grad f_i(w) − grad f(w))`` averaged over the cohort).
    """

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings, method)
        self.w: np.ndarray | None = None
        self.full_grad: np.ndarray | None = None

    def estimate(self, diffs: list[np.ndarray]) -> np.ndarray:
        assert self.w is not None and self.full_grad is not None
        return self.mean(diffs) + self.transport(self.w, self.x, self.full_grad)

    def snapshot(self, replies: list[Reply]) -> None:
        """A full round at ``x``: ``w = x``, ``G = grad f(x)``, and the step with ``g = G`` (the
        estimate at ``x = w`` is ``G`` whatever the cohort)."""
        self.w, self.full_grad = self.x, self.mean([r.arrays[0] for r in replies])
        self.x = self.step(self.x, self.full_grad)


class RSVRG(_Snapshot):
    """R-SVRG, double loop (Zhang, Reddi, Sra, NeurIPS 2016, Alg. 1, Option I: the next
    snapshot is the last inner iterate), ``m = method.inner_steps`` rounds per epoch.

    The first round of an epoch (rounds ``1, m+1, 2m+1, …``) asks every client: ``w = x``,
    ``G = grad f(w)`` and the inner step ``t = 0`` (its estimate is ``G`` exactly); the other
    ``m − 1`` rounds are the inner steps ``t = 1, …, m−1`` with the estimate of
    :class:`_Snapshot` over a uniform cohort. ``inner_steps = 1`` is R-GD.
    ``auto``: ``η = 1/(6ζL)``, ``inner_steps = ⌈n/b⌉``.
    """

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings, method)
        self.inner_steps = int(method["inner_steps"])
        self._full = True

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        b = _sampler_among(method, sampler, full_only=False) or task.num_clients
        out = resolve_geometry(method, task)
        steps = method.get("inner_steps", "auto")
        out["inner_steps"] = (
            math.ceil(task.num_clients / b)
            if _is_auto(steps)
            else int_at_least("method.inner_steps", steps, 1)
        )
        out["lr"] = _svrg_lr(method, task)
        return out

    def cohort(self, rnd: int) -> Cohort:
        self._full = self.full_grad is None or (rnd - 1) % self.inner_steps == 0
        return self.everyone() if self._full else self.sampler.sample(rnd)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        pids = cohort.ids.tolist()
        if self._full:
            return self.send(pids, [self.x], {"kind": "grad"})
        return self.send(pids, [self.w, self.x], {"kind": "diff"})

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        if self._full:
            self.snapshot(replies)
        else:
            self.x = self.step(self.x, self.estimate([r.arrays[0] for r in replies]))


class RLSVRG(_Snapshot):
    """R-LSVRG: loopless R-SVRG (Riemannian L-SVRG; arXiv 2403.06677; Kovalev, Horváth,
    Richtárik, ALT 2020, Alg. 1 on 𝓜)::

        g^k = (1/b) Σ_{m∈S_k} [grad f̃_m(x^k) − Γ_{w^k}^{x^k} grad f̃_m(w^k)] + Γ_{w^k}^{x^k} G^k
        x^{k+1} = R_{x^k}(−η g^k)
        w^{k+1} = x^k,  G^{k+1} = grad f(x^k)   with probability p (coin c_k), else unchanged

    Round 1 (``k = 0``, ``w⁰ = x⁰``) asks every client for ``grad f̃_m(x⁰)``: ``G⁰`` and a step
    with ``g⁰ = G⁰``. A round ``k ≥ 1`` draws ``c_k`` from ``(seed, k+1, "rlsvrg/coin")`` and the
    cohort ``S_k`` from the sampler; when ``c_k = 1`` it is a full round: the cohort sends
    ``[grad f̃_m(x^k), bracket]`` and every other client ``grad f̃_m(x^k)``, so the server
    refreshes ``G`` with the full gradient at ``x^k`` (cost ``n`` client gradients, counted).
    ``auto``: ``p = b/n``, ``η = 1/(6ζL)``. On ℝ^d this is L-SVRG.
    """

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings, method)
        self.p = float(method["p"])
        self._coin = True
        self._members: set[int] = set()

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        b = _sampler_among(method, sampler, full_only=False) or task.num_clients
        out = resolve_geometry(method, task)
        out["p"] = probability("method.p", method.get("p", "auto"), b / task.num_clients)
        out["lr"] = _svrg_lr(method, task)
        return out

    def coin(self, rnd: int) -> bool:
        """``c_k`` of round ``rnd = k + 1`` (round 1 has no coin: it is the first full pass)."""
        return bool(generator(self.settings.seed, rnd, "rlsvrg/coin").random() < self.p)

    def cohort(self, rnd: int) -> Cohort:
        if self.full_grad is None:
            self._coin, self._members = True, set()
            return self.everyone()
        self._coin = self.coin(rnd)
        sampled = self.sampler.sample(rnd)
        self._members = set(sampled.ids.tolist())
        return self.everyone() if self._coin else sampled

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        pids = cohort.ids.tolist()
        if self.full_grad is None:
            return self.send(pids, [self.x], {"kind": "grad"})
        members = [p for p in pids if p in self._members]
        if not self._coin:
            return self.send(members, [self.w, self.x], {"kind": "diff"})
        out = self.send(members, [self.w, self.x], {"kind": "both"}, replies=2)
        others = [p for p in pids if p not in self._members]
        out.update(self.send(others, [self.x], {"kind": "grad"}))
        return dict(sorted(out.items()))

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        if self.full_grad is None:
            self.snapshot(replies)
            return
        diffs = [r.arrays[-1] for r in replies if r.pid in self._members]
        if not diffs:
            return  # no cohort member answered: no estimate this round
        g = self.estimate(diffs)
        if self._coin:
            self.w, self.full_grad = self.x, self.mean([r.arrays[0] for r in replies])
        self.x = self.step(self.x, g)


# --------------------------------------------------------------------------- PAGE family
class RPAGE(_Riemannian):
    """R-PAGE (arXiv 2403.06677; PAGE, Li, Bao, Zhang, Richtárik, ICML 2021, Alg. 1 on 𝓜),
    each ``i`` a client::

        g^0 = grad f(x^0)
        g^k = grad f(x^k)                                          with probability p (c_k)
              Γ_{x^{k−1}}^{x^k} g^{k−1}
                + (1/b) Σ_{m∈S_k} [grad f̃_m(x^k) − Γ_{x^{k−1}}^{x^k} grad f̃_m(x^{k−1})]   else
        x^{k+1} = R_{x^k}(−η g^k)

    Round 1 is the full round at ``x⁰``; round ``k+1 ≥ 2`` draws ``c_k`` from
    ``(seed, k+1, "rpage/coin")``: a full round (every client sends ``grad f̃_m(x^k)``) or a
    difference round for the sampler's cohort ``S_k`` of ``b`` clients, which get both
    ``x^{k−1}`` and ``x^k``. ``auto``: ``p = b/(n+b)``, ``η = 1/(L(1 + √((1−p)/(p b))))``.
    """

    coin_purpose = "rpage/coin"

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings, method)
        self.p = float(method["p"])
        self.g: np.ndarray | None = None  # g^{k−1} ∈ T_{x_prev}
        self.x_prev = self.x
        self._full = True

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        b = _sampler_among(method, sampler, full_only=False) or task.num_clients
        n = task.num_clients
        out = resolve_geometry(method, task)
        out["p"] = p = probability("method.p", method.get("p", "auto"), b / (n + b))
        out["lr"] = recursive_lr(method, task, (1.0 - p) / (p * b))
        return out

    def coin(self, rnd: int) -> bool:
        """``c_k`` of round ``rnd = k + 1 ≥ 2``."""
        return bool(generator(self.settings.seed, rnd, self.coin_purpose).random() < self.p)

    def difference_cohort(self, rnd: int) -> Cohort:
        return self.sampler.sample(rnd)

    def cohort(self, rnd: int) -> Cohort:
        self._full = self.g is None or self.coin(rnd)
        return self.everyone() if self._full else self.difference_cohort(rnd)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        pids = cohort.ids.tolist()
        if self._full:
            return self.send(pids, [self.x], {"kind": "grad"})
        return self.send(pids, [self.x_prev, self.x], {"kind": "diff"})

    def differences(self, rnd: int, replies: list[Reply]) -> list[np.ndarray]:
        """The tangent vectors at ``x^k`` the replies of a difference round stand for."""
        return [r.arrays[0] for r in replies]

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        if self._full:
            g = self.mean([r.arrays[0] for r in replies])
        else:
            assert self.g is not None
            moved = self.transport(self.x_prev, self.x, self.g)
            g = moved + self.mean(self.differences(rnd, replies))
        self.g, self.x_prev = g, self.x
        self.x = self.step(self.x, g)


class RMarina(RPAGE):
    """R-MARINA (arXiv 2403.06677; MARINA, Gorbunov, Burlachenko, Li, Richtárik, ICML 2021,
    Alg. 1 on 𝓜): every client every round (``sampler=full``), a shared coin ``c_k`` from
    ``(seed, k+1, "rmarina/coin")`` and any unbiased ``compressor=`` ``Q``::

        c_k = 1:  g^k = (1/n) Σ_m grad f̃_m(x^k)                     (dense replies)
        c_k = 0:  g^k = Γ_{x^{k−1}}^{x^k} g^{k−1} + (1/n) Σ_m P_{x^k} Q_m(Δ_m),
                  Δ_m = grad f̃_m(x^k) − Γ_{x^{k−1}}^{x^k} grad f̃_m(x^{k−1})
        x^{k+1} = R_{x^k}(−η g^k)

    ``Q`` acts on the ambient coordinates of ``Δ_m``, so its output may leave ``T_{x^k}𝓜``; the
    server re-projects it with ``P_{x^k}`` (the manifold's ``proj``; linear, so
    ``E P Q(Δ) = P Δ = Δ`` stays unbiased and ``‖P Q(Δ) − Δ‖ ≤ ‖Q(Δ) − Δ‖`` keeps ω).

    Clients recompute ``grad f̃_m(x^{k−1})`` at the old point the server sends rather than keep
    it in ``context.state``: the cost is one more gradient and ``d`` more floats down per
    difference round, but a client that missed a round (a lost reply, a failed round whose step
    the server discarded) can never difference against a gradient at the wrong point, and
    nothing needs saving or checking across rounds (the papers' cost model: 2 gradients).

    ``auto``: ``p = 1/(ω+1)``, ``η = 1/(L(1 + √((1−p)ω/(p n))))``. With the identity
    compressor and ``p = 1`` every round is a full round: R-GD's iterates.
    """

    uses = ("compressor",)
    coin_purpose = "rmarina/coin"

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings, method)
        self.compressor = build_compressor(method["compressor"], task.dim)
        self._dtypes: dict[int, list[np.dtype]] = {}
        self._slots: dict[int, Slot] = {}

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        _sampler_among(method, sampler, full_only=True)
        n = task.num_clients
        out = resolve_geometry(method, task)
        comp = unbiased_compressor(method, task.dim)
        out["compressor"] = dict(method.get("compressor") or {"name": "identity"})
        omega = float(comp.omega(task.dim, Slot(0, n)) or 0.0)
        out["p"] = p = probability("method.p", method.get("p", "auto"), 1.0 / (omega + 1.0))
        out["lr"] = recursive_lr(method, task, (1.0 - p) * omega / (p * n))
        return out

    def difference_cohort(self, rnd: int) -> Cohort:
        return self.everyone()

    def _rng(self, rnd: int, pid: int) -> np.random.Generator:
        return compressor_rng(self.compressor, self.settings.seed, rnd, pid)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        out = super().fit_config(rnd, cohort)
        pids = cohort.ids.tolist()
        if self._full:
            for pid in pids:
                self._dtypes[pid] = [np.dtype(np.float64)]
            return out
        zeros, n = np.zeros(self.task.dim), len(pids)
        for i, pid in enumerate(pids):
            self._slots[pid] = slot = Slot(i, n)
            payload = self.compressor.compress(zeros, self._rng(rnd, pid), slot)
            self._shapes[pid] = [a.shape for a in payload]
            self._dtypes[pid] = [a.dtype for a in payload]
            out[pid][1].update(position=i, cohort_size=n)
        return out

    def expected_dtypes(self, pid: int) -> list[np.dtype] | None:
        return self._dtypes.get(pid, [])

    def differences(self, rnd: int, replies: list[Reply]) -> list[np.ndarray]:
        out = []
        for r in replies:
            q = self.compressor.decompress(
                r.arrays, self.task.dim, self._rng(rnd, r.pid), self._slots[r.pid]
            )
            out.append(self.manifold.proj(self.x, q))
        return out
