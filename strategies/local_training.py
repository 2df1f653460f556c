"""Local training with control variates, compression and client sampling: the server side.

- :class:`Scaffnew`: ProxSkip for federated learning (Mishchenko, Malinovsky, Stich, Richtárik,
  ICML 2022, arXiv 2202.09357, Algorithm 2), full participation.
- :class:`Tamuna`: TAMUNA (Condat, Agarský, Malinovsky, Richtárik, arXiv 2302.09832,
  Algorithm 1): local training, pattern compression of the uplink and partial participation.
- :class:`FiveGCS`: 5GCS (Grudzień, Malinovsky, Richtárik, AISTATS 2023, arXiv 2212.14370,
  Algorithm 1): a primal–dual method with client sampling and inexact local prox steps.
- :class:`FiveGCSCC`: 5GCS with compressed dual increments (Grudzień, Malinovsky, Richtárik,
  arXiv 2306.03240, Algorithm 1); with ``sampler=importance`` the arbitrary-sampling variant.

All of them solve ``min f(x) = (1/M) Σ_m f̃_m(x)`` with ``f̃_m = M·w_m·f_m`` (see
:mod:`clients.local_training`), whose minimizer is the task's ``x*``. ``L`` and ``μ`` below are
``max_m M w_m L_m`` and ``min_m M w_m μ``: smoothness and strong convexity of every ``f̃_m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedsim.blocks import tamuna_rate
from fedsim.blocks.compressors import Slot, build_compressor, compressor_rng
from fedsim.blocks.patterns import columns, support
from fedsim.blocks.pdhg import balanced
from fedsim.blocks.pdhg import uniform_form as pdhg_uniform_form
from fedsim.blocks.samplers import (
    Cohort,
    CyclicSampler,
    FullSampler,
    Sampler,
    UniformSampler,
    unbiased_sum,
)
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least
from fedsim.rng import generator
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings

Instructions = dict[int, tuple[list[np.ndarray], dict]]
GAMMA_TAU = 0.9  # default γτ of 5GCS (see fivegcs_stepsizes)
NONE = np.zeros(0)  # the empty second array: no pending update to send


def uniform_form(task: Task) -> tuple[float, float]:
    """``(L, μ)`` of the clients' ``f̃_m = M w_m f_m``: ``max_m M w_m L_m``, ``min_m M w_m μ``."""
    factor = task.num_clients * task.weights
    return float(np.max(factor * task.client_L)), float(np.min(factor) * task.mu)


def probability(name: str, value: object, auto: float) -> float:
    """A probability in (0, 1] (``auto`` → ``auto``)."""
    p = positive_or_auto(name, value, auto)
    if p > 1:
        raise ConfigError(f"{name} must lie in (0, 1], got {value!r}")
    return p


def condition_number(task: Task, method: str, knobs: str = "client_lr and p") -> float:
    """``κ = L/μ`` of the uniform form, or a ConfigError when ``μ = 0`` (``knobs`` are what the
    user must then set explicitly)."""
    big_l, mu = uniform_form(task)
    if mu <= 0:
        raise ConfigError(
            f"method {method!r} derives its defaults from the strong convexity of the task, "
            f"but task {task.name!r} has mu=0: set method {knobs} explicitly"
        )
    return big_l / mu


def geometric_steps(seed: int, rnd: int, p: float) -> int:
    """The number of local steps of round ``rnd``: ``L ~ Geometric(p)`` on {1, 2, ...}, one draw
    per round shared by the whole cohort (Scaffnew's coin flips, TAMUNA's ``L^r``)."""
    return int(generator(seed, rnd, "local-steps").geometric(p))


class Scaffnew(FedsimStrategy):
    """Scaffnew, server side (ProxSkip for FL, arXiv 2202.09357, Algorithm 2).

    Each round draws ``L ~ Geometric(p)`` (all clients make ``L`` local steps, the coin flips
    of ProxSkip between two communications), averages the clients' ``x̂_m``:
    ``x̄ = (1/M) Σ_m x̂_m`` (the prox of the consensus indicator), and tells each client whether
    its ``x̂_m`` entered the average, so it can apply ``h_m ← h_m + (p/γ)(x̄ − x̂_m)``.
    ``Σ_m h_m = 0`` is kept because ``Σ_m (x̄ − x̂_m) = 0`` over the clients that answered.
    The server names for each client the round whose average used its ``x̂_m`` and sends that
    average when it is no longer the model (a client that missed rounds), so a lost message
    cannot lose or repeat an update.

    Defaults (Theorem 3.6 / Corollary of the paper): ``γ = 1/L`` and ``p = 1/√κ``, giving
    ``O(κ log 1/ε)`` local steps and ``O(√κ log 1/ε)`` communications.
    """

    def __init__(self, task: Task, sampler: Sampler, settings: RunSettings, p: float) -> None:
        super().__init__(task, sampler, settings)
        self.p = p
        self._used: dict[int, int] = {}  # pid -> last round whose average used its x̂
        self._averages: dict[int, np.ndarray] = {}  # round -> its average, while referenced
        self._latest = 0  # the round whose average is the current model

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        if sampler is not None and not isinstance(sampler, FullSampler):
            raise ConfigError(
                "method 'scaffnew' needs full participation: use sampler=full "
                "(method=tamuna handles cohorts)"
            )
        big_l, _ = uniform_form(task)
        out = dict(method)
        out["client_lr"] = positive_or_auto("method.client_lr", method.get("client_lr"), 1 / big_l)
        auto_p = 1 / math.sqrt(condition_number(task, "scaffnew", "p")) if _auto(method, "p") else 1
        out["p"] = probability("method.p", method.get("p"), min(1.0, auto_p))
        return out

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> Scaffnew:
        return cls(task, sampler, settings, p=float(method["p"]))

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        steps = geometric_steps(self.settings.seed, rnd, self.p)
        plain = [self.x]  # the usual case: the model is the pending average
        out: Instructions = {}
        for pid in cohort.ids:
            r = self._used.get(int(pid), 0)
            arrays = plain if r in (0, self._latest) else [self.x, self._averages[r]]
            out[int(pid)] = (arrays, {"local_steps": steps, "pending_round": r})
        return out

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        self.x = np.mean([r.arrays[0] for r in replies], axis=0)
        self._latest = rnd
        self._averages[rnd] = self.x
        self._used.update((r.pid, rnd) for r in replies)
        referenced = set(self._used.values())
        self._averages = {k: v for k, v in self._averages.items() if k in referenced}


class Tamuna(FedsimStrategy):
    """TAMUNA, server side (arXiv 2302.09832, Algorithm 1).

    Round ``r``: cohort ``Ω`` of ``c`` clients (``sampler``: full, uniform or cyclic), one
    ``L ~ Geometric(p)`` for the cohort, and this round's column permutation of the pattern
    (:mod:`fedsim.blocks.patterns`). Each client uploads the entries of its local model on its
    column's support; the server averages every coordinate over its ``s`` holders,

        x̄⁺ = (1/s) Σ_{i∈Ω} q_i ⊙ x_i,

    and keeps ``q_i ⊙ x̄⁺`` (with its round) for each client until the client answers again; it
    is sent along with the model at each participation, and the client applies
    ``h_i ← h_i + (η/γ) q_i ⊙ (x̄⁺ − x_i)`` once, so a lost message cannot lose or repeat it.
    ``Σ_i h_i = 0`` holds after every round since ``Σ_{i∈Ω} q_i ⊙ (x̄⁺ − x_i) = 0``. When a
    client fails, its coordinates are averaged over the holders that answered (a coordinate
    nobody answered for keeps its value), which keeps that identity.

    Hyperparameters: ``γ = method.client_lr`` (default ``1/L``), ``s`` with ``2 ≤ s ≤ c``,
    ``p`` and ``η`` in ``[p/2, p·χ]`` with ``χ = c(s−1)/(s(c−1))``. The paper's corollary for
    ``s`` and ``p`` could not be read, so the defaults come from the rate fedsim can state for
    this implementation (:mod:`fedsim.blocks.tamuna_rate`): the exact mean-square contraction
    per round on quadratics with shared curvature in ``[μ, L]``,
    ``ρ = max(E(1−γλ)^{2L}, 1 − E[t(2−t)](s−1)/(n−1))``, and the uplink floats to a target,
    ``s·d·log(1/ε)/(−log ρ)``, minimized over ``s ∈ [2, c]`` and ``p`` (``η = pχ``, the upper
    end, as the authors' code advises). A given ``s`` or ``p`` is kept and the other chosen for
    it. With ``c = n``, ``s = c`` and ``η = p`` the iterates are
    Scaffnew's.
    """

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, p: float, s: int, c: int
    ) -> None:
        super().__init__(task, sampler, settings)
        self.p, self.s, self.c = p, s, c
        self._columns: dict[int, int] = {}
        self._pending: dict[int, tuple[int, np.ndarray]] = {}  # pid -> (round, q_i ⊙ x̄⁺)

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        if sampler is not None and not isinstance(
            sampler, FullSampler | UniformSampler | CyclicSampler
        ):
            raise ConfigError(
                "method 'tamuna' needs cohorts of one fixed size c in which every client is "
                "equally likely: use sampler=uniform, cyclic or full"
            )
        c = task.num_clients if sampler is None else sampler.max_cohort_size
        if c < 2:
            raise ConfigError(f"method 'tamuna' needs a cohort of at least 2 clients, got c={c}")
        s = None if _auto(method, "s") else int_at_least("method.s", method.get("s"), 2)
        if s is not None and s > c:
            raise ConfigError(f"method.s={s} exceeds the cohort size c={c} (need 2 <= s <= c)")
        big_l, _ = uniform_form(task)
        out = dict(method, cohort_size=c)
        out["client_lr"] = gamma = positive_or_auto(
            "method.client_lr", method.get("client_lr"), 1 / big_l
        )
        fixed_p = None if _auto(method, "p") else probability("method.p", method.get("p"), 1.0)
        auto_p = 1.0
        if s is None or fixed_p is None:  # the communication bound of fedsim.blocks.tamuna_rate
            mu = big_l / condition_number(task, "tamuna", "s and p")
            # the averaged iterate contracts at f's own curvature, where the task knows it
            mu = max(mu, float(getattr(task.full, "strong_convexity", 0.0)))
            s, auto_p, _ = tamuna_rate.plan(
                c, gamma, mu, big_l, task.num_clients, task.dim, s=s, p=fixed_p
            )
        out["s"] = s
        chi = tamuna_rate.chi(c, s)
        out["p"] = p = probability("method.p", method.get("p"), min(1.0, auto_p))
        out["eta"] = eta = positive_or_auto("method.eta", method.get("eta"), p * chi)
        if not p / 2 * (1 - 1e-12) <= eta <= p * chi * (1 + 1e-12):
            raise ConfigError(
                f"method.eta={eta} lies outside [p/2, p·χ] = [{p / 2:.6g}, {p * chi:.6g}] "
                f"(χ = c(s−1)/(s(c−1)) with c={c}, s={s}), the range the authors' code admits"
            )
        return out

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> Tamuna:
        return cls(
            task,
            sampler,
            settings,
            float(method["p"]),
            int(method["s"]),
            int(method["cohort_size"]),
        )

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        seed = self.settings.seed
        steps = geometric_steps(seed, rnd, self.p)
        perm = columns(generator(seed, rnd, "tamuna-pattern"), self.c)
        self._columns = {int(pid): int(perm[i]) for i, pid in enumerate(cohort.ids)}
        out: Instructions = {}
        for pid, col in self._columns.items():
            r, values = self._pending.get(pid, (0, NONE))
            config = {"local_steps": steps, "column": col, "pending_round": r}
            out[pid] = ([self.x, values], config)
        return out

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        col = self._columns.get(pid)
        return [] if col is None else [(len(support(self.task.dim, self.c, self.s, col)),)]

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        d = self.task.dim
        total, holders = np.zeros(d), np.zeros(d)
        rows = {}
        for r in replies:
            rows[r.pid] = idx = support(d, self.c, self.s, self._columns[r.pid])
            total[idx] += r.arrays[0]
            holders[idx] += 1
        self.x = np.where(holders > 0, total / np.maximum(holders, 1), self.x)
        for pid, idx in rows.items():
            self._pending[pid] = (rnd, self.x[idx])


def _auto(method: Mapping, key: str) -> bool:
    value = method.get(key, "auto")
    return isinstance(value, str) and value.strip().lower() == "auto"


def fivegcs_stepsizes(
    task: Task, sampler: Sampler | None, product: float, omega: float = 0.0
) -> tuple[float, float]:
    """Default ``(γ, τ̄)`` of 5GCS and 5GCS-CC; client ``m`` uses ``τ_m = τ̄ · M π_m / C``.

    From the one bound of :mod:`fedsim.blocks.pdhg` (5GCS as stochastic PDHG with arbitrary
    sampling): the step condition ``γ τ_m ≤ θ M π_m / C`` with ``θ = γτ̄ = product``
    (``method.gamma_tau``) fixes ``τ̄ = θ/γ``, and ``γ`` maximizes the bound's rate
    ``min{γμ/(1+γμ), min_m α π_m τ_m/(L_{F,m} + τ_m)}`` for this sampler's marginals ``π_m``
    (``α = 1/(1+ω)``). For uniform cohorts and ``γL ≫ θ`` it is ``γ = √(αθC/(μ L_max M))``, the
    ``Õ(M/C + √(κ M/C))`` rounds 5GCS states; ``sampler=importance`` (``by: bound``, the default)
    takes the marginals that maximize the same bound. The papers' own constants could not be read
    (``specs/local-training.md``), so the bound is ours and ``γτ̄`` is a knob; its default 0.9 is
    the largest value inside ``θ < 1`` we tried (``experiments/local_training/README.md``).
    """
    l_f, mu = pdhg_uniform_form(task)
    m = task.num_clients
    pi = np.ones(m) if sampler is None else sampler.inclusion_probabilities()
    gamma, _, _ = balanced(l_f, mu, float(np.sum(pi)), product, 1.0 / (1.0 + omega), pi)
    return gamma, product / gamma


class FiveGCS(FedsimStrategy):
    """5GCS, server side (Grudzień, Malinovsky, Richtárik, arXiv 2212.14370, Algorithm 1).

    With ``v = (1/M) Σ_m u_m`` (the mean of the clients' duals, kept on the server):

        x̂ = (x − γ v) / (1 + γμ)                                 (prox of (μ/2)‖·‖²)
        client m ∈ S:  u_m⁺ = ∇F_m(y_m),  y_m ≈ argmin F_m(y) + (τ_m/2)‖y − (x̂ + u_m/τ_m)‖²
        v ← v + (1/M) Σ_{m∈S} δ_m,        δ_m = u_m⁺ − u_m
        x ← x̂ − γ Σ_{m∈S} (a_m/M) δ_m                            (a_m = 1/π_m: M/C if uniform)

    ``F_m = f̃_m − (μ/2)‖·‖²``. The last line is the paper's correction ``γ(M/C)(v⁺ − v)`` for
    uniform cohorts; with any other sampler (``sampler=importance`` is the arbitrary-sampling
    variant 5GCS-AB of arXiv 2306.03240) each increment is reweighted by ``1/(M π_m)``. The fixed
    point is ``(x*, ∇F_m(x*))``, so local inexactness (``K = method.local_steps`` gradient steps
    warm-started at ``x̂``) does not move it. Defaults: :func:`fivegcs_stepsizes`. Each client
    learns at its next participation whether its last increment entered ``v``
    (``accepted_round``) and only then commits it, so ``v = (1/M) Σ u_m`` survives lost replies.
    """

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        primal_lr: float,
        dual_lr: float,
        mu: float,
    ) -> None:
        super().__init__(task, sampler, settings)
        self.gamma, self.mu = primal_lr, mu
        pi = sampler.inclusion_probabilities()
        self.tau = dual_lr * len(pi) * pi / np.sum(pi)  # τ_m = τ̄ M π_m / C
        self.v = np.zeros(task.dim)
        self.x_hat = self.x
        self._applied: dict[int, int] = {}  # pid -> round of its last increment in v

    @classmethod
    def resolve(cls, method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        product = positive_or_auto("method.gamma_tau", method.get("gamma_tau"), GAMMA_TAU)
        if sampler is not None and np.min(sampler.inclusion_probabilities()) <= 0:
            raise ConfigError(
                f"method {method['name']!r} needs every client to be sampled with a positive "
                "probability (its dual never moves otherwise): check sampler.probabilities"
            )
        gamma = tau = 1.0
        if _auto(method, "primal_lr") or _auto(method, "dual_lr"):
            condition_number(task, method["name"], "primal_lr and dual_lr")
            gamma, tau = fivegcs_stepsizes(task, sampler, product, float(method.get("omega", 0)))
        out = dict(method, gamma_tau=product)
        out["primal_lr"] = positive_or_auto("method.primal_lr", method.get("primal_lr"), gamma)
        out["dual_lr"] = positive_or_auto("method.dual_lr", method.get("dual_lr"), tau)
        out["local_steps"] = int_at_least("method.local_steps", method.get("local_steps"), 1)
        if not _auto(method, "local_lr"):  # auto: 1/(L_m − μ + τ) per client, on the client
            out["local_lr"] = positive_or_auto("method.local_lr", method.get("local_lr"), 1.0)
        out["mu"] = uniform_form(task)[1]
        return out

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> FiveGCS:
        return cls(
            task,
            sampler,
            settings,
            float(method["primal_lr"]),
            float(method["dual_lr"]),
            float(method["mu"]),
        )

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        self.x_hat = (self.x - self.gamma * self.v) / (1 + self.gamma * self.mu)
        arrays = [self.x_hat]
        return {
            int(pid): (
                arrays,
                {"dual_lr": float(self.tau[pid]), "accepted_round": self._applied.get(int(pid), 0)},
            )
            for pid in cohort.ids
        }

    def increments(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> np.ndarray:
        """The clients' dual increments ``δ_m``, stacked in reply order."""
        return np.stack([r.arrays[0] for r in replies])

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        m = self.task.num_clients
        deltas = self.increments(rnd, cohort, replies)
        pids = np.array([r.pid for r in replies], dtype=np.int64)
        self.v = self.v + deltas.sum(axis=0) / m
        self.x = self.x_hat - self.gamma * unbiased_sum(cohort, deltas, None, ids=pids) / m
        self._applied.update((r.pid, rnd) for r in replies)


class FiveGCSCC(FiveGCS):
    """5GCS-CC, server side (Grudzień, Malinovsky, Richtárik, arXiv 2306.03240, Algorithm 1).

    5GCS whose clients upload their dual increments compressed by an unbiased compressor ``Q``
    (variance ``ω``, ``compressor=`` group): client ``m`` sends ``Q(u_m⁺ − u_m)`` and both sides
    move ``u_m ← u_m + α Q(·)`` with ``α = 1/(1+ω)`` (``method.dual_shift``, DIANA's shift).
    The server keeps ``v = (1/M) Σ u_m`` exact and corrects the model with the unbiased estimate
    of the full dual change,

        x ← x̂ − γ Σ_{m∈S} (a_m/M) Q(u_m⁺ − u_m).

    This is the randomized-prox reading (Condat & Richtárik, RandProx, 2022: the correction is
    ``(1+ω)`` times the applied dual step); the spec's reconstruction ``γ(M/C)(v⁺ − v)`` would
    scale it by ``α``. Stepsizes: :func:`fivegcs_stepsizes` with the compressor's ``ω``
    (``τ`` grows by ``√(1+ω)``, ``γ`` shrinks by it); the paper's exact constants could not be
    read, so they stay knobs.
    """

    uses = ("compressor",)

    def __init__(self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping):
        super().__init__(
            task,
            sampler,
            settings,
            float(method["primal_lr"]),
            float(method["dual_lr"]),
            float(method["mu"]),
        )
        self.compressor = build_compressor(method["compressor"], task.dim)
        self.shift = float(method["dual_shift"])
        self._slots: dict[int, Slot] = {}
        self._shapes: dict[int, list[tuple[int, ...]]] = {}
        self._dtypes: dict[int, list[np.dtype]] = {}

    @classmethod
    def resolve(cls, method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        comp = build_compressor(method.get("compressor") or {"name": "identity"}, task.dim)
        if not comp.unbiased:
            raise ConfigError(
                f"method {method['name']!r} needs an unbiased compressor; "
                f"compressor={comp.name!r} is biased (valid: identity, rand_k, perm_k, natural, "
                "qsgd)"
            )
        c = task.num_clients if sampler is None else sampler.max_cohort_size
        omega = float(comp.omega(task.dim, Slot(0, c)))
        out = super().resolve({**method, "omega": omega}, task, sampler)
        out["dual_shift"] = shift = positive_or_auto(
            "method.dual_shift", method.get("dual_shift"), 1 / (1 + omega)
        )
        if shift > 1:
            raise ConfigError(
                f"method.dual_shift={shift} must lie in (0, 1] (a shift beyond the new dual "
                f"overshoots; the default is 1/(1+ω) = {1 / (1 + omega):.4g})"
            )
        return out

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> FiveGCSCC:
        return cls(task, sampler, settings, method)

    def _rng(self, rnd: int, pid: int) -> np.random.Generator:
        return compressor_rng(self.compressor, self.settings.seed, rnd, pid)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        out = super().fit_config(rnd, cohort)
        n, zeros = len(cohort), np.zeros(self.task.dim)
        for i, pid in enumerate(out):
            self._slots[pid] = slot = Slot(i, n)
            payload = self.compressor.compress(zeros, self._rng(rnd, pid), slot)
            self._shapes[pid] = [a.shape for a in payload]
            self._dtypes[pid] = [a.dtype for a in payload]
            out[pid] = (out[pid][0], {**out[pid][1], "position": i, "cohort_size": n})
        return out

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        return self._shapes.get(pid, [])

    def expected_dtypes(self, pid: int) -> list[np.dtype] | None:
        return self._dtypes.get(pid, [])  # the payload's own dtypes (int codes, levels, bits)

    def increments(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> np.ndarray:
        d = self.task.dim
        return np.stack(
            [
                self.compressor.decompress(r.arrays, d, self._rng(rnd, r.pid), self._slots[r.pid])
                for r in replies
            ]
        )

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        m = self.task.num_clients
        deltas = self.increments(rnd, cohort, replies)
        pids = np.array([r.pid for r in replies], dtype=np.int64)
        self.v = self.v + self.shift * deltas.sum(axis=0) / m
        self.x = self.x_hat - self.gamma * unbiased_sum(cohort, deltas, None, ids=pids) / m
        self._applied.update((r.pid, rnd) for r in replies)
