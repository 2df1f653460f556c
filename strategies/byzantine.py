"""Byzantine-robust methods, server side: Byz-VR-MARINA-PP (+PP+) and robust momentum SGD.

Both keep the model and the gradient estimate on the server, aggregate with any aggregator of the
``aggregator=`` group (through :meth:`FedsimStrategy.robust_aggregate`: clip → bucket → Agg) and
face any attack of the ``attack=`` group. The aggregators weigh every reply alike, so clients run
on ``f̃_i = M w_i f_i`` (the local-training methods' uniform form): the mean of the honest
``f̃_i`` is a constant multiple of the honest objective and has the same ``x*`` (``f̃_i = f_i``
for equal client sizes, e.g. ``partition=replicated``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedsim.blocks.attacks import Attack
from fedsim.blocks.compressors import Slot, build_compressor, compressor_rng
from fedsim.blocks.robust import RobustStep, clip_rows
from fedsim.blocks.samplers import Cohort, FullSampler, Sampler, UniformSampler
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least
from fedsim.rng import generator
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings, robust_blocks

Instructions = dict[int, tuple[list[np.ndarray], dict]]
FULL_GRAD_RULES = ("coin", "epoch")
CLIP_TO = ("step", "estimate")


def _clip_to(method: Mapping) -> str:
    """``step``: ``λ = α‖x^{k+1} − x^k‖`` (the paper); ``estimate``: ``λ = α‖g^k‖`` (the
    authors' code; the same radius as ``step`` with ``α/γ``)."""
    value = method.get("clip_to", "step")
    if value not in CLIP_TO:
        raise ConfigError(f"unknown method.clip_to {value!r}; valid choices: {', '.join(CLIP_TO)}")
    return str(value)


def _clip_mult(method: Mapping) -> float | None:
    value = method.get("clip_mult")
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"method.clip_mult must be a positive number or null, got {value!r}"
        ) from err
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(
            f"method.clip_mult must be > 0 (null switches clipping off), got {value!r}"
        )
    return value


def _largest_smoothness(task: Task) -> float:
    """``max_i L(f̃_i)`` with ``f̃_i = M w_i f_i``."""
    scale = task.num_clients * task.weights
    return max(s * cl.smoothness for s, cl in zip(scale, task.clients, strict=True))


def _uniform_only(method: Mapping, sampler: Sampler | None) -> None:
    if sampler is not None and not isinstance(sampler, FullSampler | UniformSampler):
        raise ConfigError(
            f"method {method['name']!r} samples cohorts uniformly without replacement; "
            "valid samplers: full, uniform"
        )


class _RobustMethod(FedsimStrategy):
    """What both methods share: the stepsize, the clipping radius and the estimate ``g``."""

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        method: Mapping,
        attack: Attack | None = None,
        robust: RobustStep | None = None,
    ) -> None:
        super().__init__(task, sampler, settings, attack, robust)
        self.lr = float(method["lr"])
        self.clip_mult: float | None = method["clip_mult"]
        self.clip_to = str(method["clip_to"])
        self.g: np.ndarray | None = None

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> _RobustMethod:
        attack, robust = robust_blocks(method, task, settings)
        return cls(task, sampler, settings, method, attack, robust)

    def radius(self, step: np.ndarray) -> float | None:
        """``λ = α‖step‖`` (``clip_to=step``, the paper) or ``α‖g‖`` (``estimate``, the authors'
        code); ``None`` without clipping."""
        if self.clip_mult is None:
            return None
        moved = step if self.clip_to == "step" else self.g
        return self.clip_mult * float(np.linalg.norm(moved))


class ByzVRMarinaPP(_RobustMethod):
    """Byz-VR-MARINA-PP (Malinovsky, Richtárik, Horváth, Gorbunov, arXiv 2311.14127, Alg. 1;
    ``method.plus=true``: Byz-VR-MARINA-PP+, Alg. 3).

    Round 1 computes ``g⁰ = ARAgg({∇f̃_i(x⁰)}_{i∈S})`` over ``Ĉ`` clients (a full-gradient round,
    the spec's choice of ``g⁰``). Every later round ``k`` (the model is ``x^k``, the estimate
    ``g^k``)::

        c_k ~ Bernoulli(p)        (method.full_grad=coin; =epoch: every ⌈m/b⌉-th round)
        S_k = Ĉ clients if c_k = 1 else the sampler's C clients (uniform, no replacement)
        x^{k+1} = x^k − γ g^k,    λ_{k+1} = α ‖x^{k+1} − x^k‖      (α = method.clip_mult)
        honest i ∈ S_k sends  ∇f̃_i(x^{k+1})                        if c_k = 1
                              Q(∇f̃_{i,B}(x^{k+1}) − ∇f̃_{i,B}(x^k))  otherwise (|B| = b, one B
                                                                      for both points)
        g^{k+1} = ARAgg({v_i})                                       if c_k = 1
                  g^k + ARAgg({clip_{λ_{k+1}}(v_i)})                  otherwise
                  (PP+: the plain mean of the clipped v_i)

    The server clips (Byzantine clients would not); ``clip_mult=null`` switches clipping off;
    ``clip_to=estimate`` takes ``λ_{k+1} = α‖g^k‖`` (the authors' code) instead.
    Clients are stateless: they receive ``x^{k+1}`` (and ``x^k`` when ``c_k = 0``). The
    coin is drawn from ``(seed, k, "marina/coin")``, the Ĉ-cohort from ``(seed, k,
    "marina/full-cohort")``, client ``i``'s minibatch from ``(seed, k, "marina/batch", i)``.
    """

    uses = ("compressor", "aggregator", "attack")
    oracle_ready = True

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        method: Mapping,
        attack: Attack | None = None,
        robust: RobustStep | None = None,
    ) -> None:
        super().__init__(task, sampler, settings, method, attack, robust)
        self.p = float(method["p"])
        self.plus = bool(method["plus"])
        self.full_grad = str(method["full_grad"])
        self.epoch_rounds = int(method["epoch_rounds"])
        self.full_cohort_size = int(method["full_cohort_size"])
        self.compressor = build_compressor(method["compressor"], task.dim)
        self._coin = True
        self._x_new = self.x
        self._slots: dict[int, Slot] = {}
        self._shapes: dict[int, list[tuple[int, ...]]] = {}
        self._dtypes: dict[int, list[np.dtype]] = {}

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters; ``auto`` values:

        - ``lr``: ``1/L`` with ``L`` the largest client smoothness of ``f̃_i``;
        - ``p``: ``min{C/n, b/m, 1/(1+ω)}``, the paper's recommendation (``m``: the largest
          client's sample count, ``ω`` the compressor's variance);
        - ``epoch_rounds`` (``full_grad=epoch``): ``⌈m/b⌉``, one pass over the data in
          minibatches, as the authors' code forces a full gradient at every epoch's start.
        """
        out = dict(method)
        _uniform_only(method, sampler)
        n = task.num_clients
        c = n if sampler is None else sampler.max_cohort_size
        big_c = method.get("full_cohort_size")
        big_c = n if big_c is None else int_at_least("method.full_cohort_size", big_c, 1)
        if not c <= big_c <= n:
            raise ConfigError(
                f"method.full_cohort_size={big_c} must lie in [C, n] = [{c}, {n}] "
                "(sampler.cohort_size ≤ Ĉ ≤ num_clients)"
            )
        out["full_cohort_size"] = big_c
        b = int_at_least("method.batch_size", method.get("batch_size", 32), 1)
        out["batch_size"] = b
        m = int(max(cl.num_samples for cl in task.clients))
        comp = build_compressor(method.get("compressor") or {"name": "identity"}, task.dim)
        if not comp.unbiased:
            raise ConfigError(
                f"method {method['name']!r} needs an unbiased compressor; compressor="
                f"{comp.name!r} is biased (valid: identity, rand_k, perm_k, natural, qsgd)"
            )
        omega = float(comp.omega(task.dim, Slot(0, c)))
        out["p"] = p = positive_or_auto(
            "method.p", method.get("p", "auto"), min(c / n, min(b, m) / m, 1 / (1 + omega))
        )
        if p > 1:
            raise ConfigError(f"method.p={p} must lie in (0, 1]")
        rule = method.get("full_grad", "coin")
        if rule not in FULL_GRAD_RULES:
            raise ConfigError(
                f"unknown method.full_grad {rule!r}; valid choices: {', '.join(FULL_GRAD_RULES)}"
            )
        out["full_grad"] = rule
        epoch = method.get("epoch_rounds", "auto")
        out["epoch_rounds"] = (
            math.ceil(m / b)
            if isinstance(epoch, str) and epoch == "auto"
            else int_at_least("method.epoch_rounds", epoch, 1)
        )
        out["lr"] = positive_or_auto(
            "method.lr", method.get("lr", "auto"), 1.0 / _largest_smoothness(task)
        )
        out["clip_mult"] = _clip_mult(method)
        out["clip_to"] = _clip_to(method)
        out["plus"] = bool(method.get("plus", False))
        return out

    # ----------------------------------------------------------------- schedule
    def full_round(self, rnd: int) -> bool:
        """``c_k``: round 1 always; then the coin or the epoch rule."""
        if rnd == 1 or self.g is None:
            return True
        if self.full_grad == "epoch":
            return (rnd - 1) % self.epoch_rounds == 0
        return bool(generator(self.settings.seed, rnd, "marina/coin").random() < self.p)

    def cohort(self, rnd: int) -> Cohort:
        self._coin = self.full_round(rnd)
        if not self._coin:
            return self.sampler.sample(rnd)
        n, big_c = self.task.num_clients, self.full_cohort_size
        if big_c == n:
            ids = np.arange(n)
        else:
            ids = np.sort(
                generator(self.settings.seed, rnd, "marina/full-cohort").choice(
                    n, big_c, replace=False
                )
            )
        return Cohort(ids, np.full(ids.size, n / big_c), np.full(ids.size, big_c / n))

    # ----------------------------------------------------------------- messages
    def _rng(self, rnd: int, pid: int) -> np.random.Generator:
        return compressor_rng(self.compressor, self.settings.seed, rnd, pid)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        x_new = self.x if self.g is None else self.x - self.lr * self.g
        self._x_new = x_new
        if self._coin:
            arrays = [x_new]
            for pid in cohort.ids.tolist():
                self._shapes[pid], self._dtypes[pid] = [(self.task.dim,)], [np.dtype(np.float64)]
            return {int(pid): (arrays, {"full": 1}) for pid in cohort.ids}
        arrays = [self.x, x_new]
        n, zeros, out = len(cohort), np.zeros(self.task.dim), {}
        for i, pid in enumerate(cohort.ids.tolist()):
            self._slots[pid] = slot = Slot(i, n)
            payload = self.compressor.compress(zeros, self._rng(rnd, pid), slot)
            self._shapes[pid] = [a.shape for a in payload]
            self._dtypes[pid] = [a.dtype for a in payload]
            out[pid] = (arrays, {"full": 0, "position": i, "cohort_size": n})
        return out

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        return self._shapes.get(pid, [])

    def expected_dtypes(self, pid: int) -> list[np.dtype] | None:
        return self._dtypes.get(pid, [])

    def reply_vector(self, rnd: int, reply: Reply) -> np.ndarray:
        if self._coin:
            return reply.arrays[0]
        pid = self.oracle_template if reply.pid in self._oracle else reply.pid
        slot = self._slots[pid]
        return self.compressor.decompress(
            reply.arrays, self.task.dim, self._rng(rnd, reply.pid), slot
        )

    def shift_back_target(self, rnd: int) -> np.ndarray:
        """The message that makes the next model ``x0``: ``g^{k+1} = (x^{k+1} − x0)/γ``."""
        target = (self._x_new - self.task.x0) / self.lr
        return target if self._coin else target - self.g

    # ----------------------------------------------------------------- update
    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        xs = np.stack([r.vector for r in replies])
        if self._coin:
            g = self.robust_aggregate(rnd, xs, kind="gradient")
        else:
            level = self.radius(self._x_new - self.x)
            if self.plus:
                g = self.g + clip_rows(xs, level).mean(axis=0)
            else:
                g = self.g + self.robust_aggregate(rnd, xs, clip=level, kind="difference")
        self.x, self.g = self._x_new, g


class RobustMomentum(_RobustMethod):
    """Robust client-momentum SGD (Karimireddy, He & Jaggi, arXiv 2012.10333) with any
    aggregator, and the clipping heuristic of Byz-VR-MARINA-PP (arXiv 2311.14127, eq. (10)).

    Sampled client ``i`` updates its momentum ``m_i ← β m_i + ∇f̃_{i,B}(x^k)`` (PyTorch's SGD
    buffer, kept in ``context.state``, updated only when sampled) and sends ``m_i``; the server
    steps ``x^{k+1} = x^k − γ g^k`` with

        g^k = Agg({m_i}_{i∈S_k})                                       (method.clip_mult=null)
        g^k = g^{k−1} + Agg({clip_{λ_k}(m_i − g^{k−1})}_{i∈S_k}),  λ_k = α ‖x^k − x^{k−1}‖

    (``clip_to=estimate``: ``λ_k = α‖g^{k−1}‖``, the authors' code). With clipping, round 1 asks
    every client and does not clip (it initializes ``g⁰`` and the
    clipping radius, as the authors' code does); later rounds use the sampler's cohort.
    """

    uses = ("aggregator", "attack")

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        method: Mapping,
        attack: Attack | None = None,
        robust: RobustStep | None = None,
    ) -> None:
        super().__init__(task, sampler, settings, method, attack, robust)
        self.x_prev = self.x

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters; ``lr=auto`` is ``(1 − β)/L`` (``L``: the largest client
        smoothness of ``f̃_i``), the stepsize at which the buffer's ``1/(1−β)`` gain makes a
        ``1/L`` step."""
        out = dict(method)
        _uniform_only(method, sampler)
        beta = method.get("momentum", 0.9)
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < 1:
            raise ConfigError(f"method.momentum must lie in [0, 1), got {beta!r}")
        out["momentum"] = float(beta)
        out["batch_size"] = int_at_least("method.batch_size", method.get("batch_size", 32), 1)
        smooth = _largest_smoothness(task)
        out["lr"] = positive_or_auto("method.lr", method.get("lr", "auto"), (1 - beta) / smooth)
        out["clip_mult"] = _clip_mult(method)
        out["clip_to"] = _clip_to(method)
        return out

    def cohort(self, rnd: int) -> Cohort:
        if self.clip_mult is not None and self.g is None:
            n = self.task.num_clients
            return Cohort(np.arange(n), np.ones(n), np.ones(n))
        return self.sampler.sample(rnd)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        arrays = [self.x]
        return {int(pid): (arrays, {}) for pid in cohort.ids}

    def shift_back_target(self, rnd: int) -> np.ndarray:
        """The momentum that, aggregated, makes the next model ``x0``: ``(x^k − x0)/γ``."""
        return (self.x - self.task.x0) / self.lr

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        xs = np.stack([r.vector for r in replies])
        if self.clip_mult is None or self.g is None:
            g = self.robust_aggregate(rnd, xs, kind="momentum")
        else:
            level = self.radius(self.x - self.x_prev)
            g = self.robust_aggregate(rnd, xs, clip=level, reference=self.g, kind="difference")
        self.g = g
        self.x_prev, self.x = self.x, self.x - self.lr * g
