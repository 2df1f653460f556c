"""BiasedSGD with pluggable (biased or unbiased) gradient estimators.

Demidovich, Malinovsky, Sokolov & Richtárik, "A guide through the zoo of biased SGD"
(arXiv 2305.16296): ``x^{t+1} = x^t − γ g(x^t)`` with a constant stepsize ``γ`` and an
estimator ``g`` satisfying the Biased ABC assumption (:mod:`fedsim.blocks.estimators`). The paper
is single-node; here one round is one iteration and every client (``sampler=full``) computes its
part of ``g`` on its own data:

- ``ind_biased`` / ``ind_unbiased`` (independent sampling): client ``m`` keeps each of its
  samples with probability ``p_i`` and sends ``s_m = Σ_{i∈S_m} ν_i ∇f_i(x)`` and ``|S_m|``; the
  server takes ``g = Σ_m s_m / Σ_m |S_m|`` (biased, ``ν = 1``) or ``g = Σ_m s_m / N`` (unbiased,
  ``ν_i = 1/p_i``) — the single-node estimator of the pooled data, for every partition;
- ``compressed`` / ``clip`` / ``full``: ``g = Σ_m w_m v_m`` with ``v_m`` the compressed
  (payload of the ``compressor`` group), clipped or plain local gradient ``∇f_m(x)``.

Hyperparameters (``conf/method/biased_sgd.yaml``) are validated once into
:class:`BiasedSGDConfig`; ``lr=auto`` is ``lr_factor`` times the estimator's rule
(:meth:`~fedsim.blocks.estimators.Estimator.auto_lr`) over ``horizon`` iterations: the authors'
``γ = factor/√(L₀AK)``, ``A = max_i L_i/min_i p_i`` (biased sampling) and
``γ = factor·min{1/L₀, 1/√(L₀AK)}``, ``A = max_i (1 − p_i)L_i/(p_i m)`` (unbiased).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from fedsim.blocks.compressors import Compressor, build_compressor, compressor_rng
from fedsim.blocks.estimators import (
    COMPRESSORS_WITH_ABC,
    ESTIMATOR_NAMES,
    SAMPLINGS,
    Estimator,
    FiniteSum,
    IndependentSampling,
    build_estimator,
    importance_probabilities,
    probability_error,
)
from fedsim.blocks.samplers import Cohort, FullSampler, Sampler
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.tasks.base import Objective, Task
from strategies.base import FedsimStrategy, Reply, RunSettings

COIN_PURPOSE = "biased-sgd/coins"  # the clients' inclusion coins: (seed, round, purpose, pid)


def _fraction(name: str, value: object) -> float:
    """``value`` as a number in ``(0, 1]``, else a ConfigError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < float(value) <= 1:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a probability in (0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _positive(name: str, value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or float(value) <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def sample_constants(objective: Objective) -> np.ndarray | None:
    """The objective's per-sample ``L_i`` (``sample_smoothnesses``), or None if it has none."""
    values = getattr(objective, "sample_smoothnesses", None)
    return None if values is None else np.asarray(values, dtype=float)


@dataclass(frozen=True)
class BiasedSGDConfig:
    """The method's hyperparameters, validated (``lr`` and ``p_scale`` resolved).

    ``estimator``: one of :data:`~fedsim.blocks.estimators.ESTIMATOR_NAMES`; ``sampling``:
    ``uniform`` (``p_i = p``) or ``importance`` (``p_i = min(p_scale·L_i, 1)``,
    ``p_scale = batch_prop·N/Σ_j L_j``); ``clip_level``: ``τ`` of ``clip``; ``lr``: ``γ``;
    ``lr_factor`` and ``horizon`` (``K``): the ``auto`` rule's factor and iteration count.
    """

    estimator: str = "ind_biased"
    sampling: str = "uniform"
    p: float = 0.1
    batch_prop: float = 0.1
    clip_level: float = 1.0
    lr: float = 1.0
    lr_factor: float = 1.0
    horizon: int = 1
    p_scale: float = 0.0

    @classmethod
    def from_method(cls, method: Mapping) -> BiasedSGDConfig:
        """Validate the knobs that need no task (``lr``/``p_scale`` as given, or placeholders)."""
        estimator = method.get("estimator", "ind_biased")
        if estimator not in ESTIMATOR_NAMES:
            raise unknown("method.estimator", estimator, ESTIMATOR_NAMES)
        sampling = method.get("sampling", "uniform")
        if sampling not in SAMPLINGS:
            raise unknown("method.sampling", sampling, SAMPLINGS)
        p = _fraction("method.p", method.get("p", 0.1))
        prop = method.get("batch_prop")
        batch_prop = p if prop is None else _fraction("method.batch_prop", prop)
        lr = method.get("lr", "auto")
        return cls(
            estimator=str(estimator),
            sampling=str(sampling),
            p=p,
            batch_prop=batch_prop,
            clip_level=_positive("method.clip_level", method.get("clip_level", 1.0)),
            lr=1.0 if isinstance(lr, str) else _positive("method.lr", lr),
            lr_factor=_positive("method.lr_factor", method.get("lr_factor", 1.0)),
            horizon=int_at_least("method.horizon", method.get("horizon", 1), 1),
            p_scale=float(method.get("p_scale", 0.0) or 0.0),
        )

    @property
    def samples(self) -> bool:
        """Whether the estimator samples data (``ind_*``)."""
        return self.estimator in ("ind_biased", "ind_unbiased")

    def probabilities(self, objective: Objective) -> np.ndarray:
        """``p_i`` for the samples of ``objective`` (one client's, or the pooled data)."""
        n = objective.num_samples
        if self.sampling == "uniform":
            return np.full(n, self.p)
        big_l = sample_constants(objective)
        assert big_l is not None, "importance sampling needs per-sample constants"
        return np.minimum(self.p_scale * big_l, 1.0)

    def estimator_for(self, compressor_cfg: Mapping | None, dim: int) -> Estimator:
        comp = build_compressor(compressor_cfg, dim) if self.estimator == "compressed" else None
        return build_estimator(self.estimator, comp, dim, self.clip_level)


def pooled_constants(task: Task) -> np.ndarray:
    """``L_i`` of every sample of the pooled data, client by client (an objective without
    per-sample constants contributes its ``sample_smoothness`` bound for each sample)."""
    parts = []
    for obj in task.clients:
        big_l = sample_constants(obj)
        parts.append(
            big_l if big_l is not None else np.full(obj.num_samples, obj.sample_smoothness)
        )
    return np.concatenate(parts)


def resolve_biased_sgd(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
    """Validated hyperparameters with ``auto`` resolved (module docstring); refuses at config
    time: a sampler other than ``full``, a compressor the estimator does not use (or one without
    Biased ABC constants), importance sampling without per-sample constants, any ``p_i``
    outside ``(0, 1]``."""
    cfg = BiasedSGDConfig.from_method(method)
    if sampler is not None and not isinstance(sampler, FullSampler):
        raise ConfigError(
            "method=biased_sgd samples data, not clients: every client computes its part of "
            "the estimator each round; use sampler=full"
        )
    comp_cfg = dict(method.get("compressor") or {"name": "identity"})
    comp_name = comp_cfg.get("name", "identity")
    if cfg.estimator == "compressed":
        if comp_name not in COMPRESSORS_WITH_ABC:
            raise ConfigError(
                f"method.estimator=compressed: compressor={comp_name!r} has no Biased ABC "
                f"constants; valid choices: {', '.join(COMPRESSORS_WITH_ABC)}"
            )
    elif comp_name != "identity":
        raise ConfigError(
            f"method.estimator={cfg.estimator} does not use compressor={comp_name!r}; valid "
            "choices: identity (or method.estimator=compressed)"
        )
    pooled = pooled_constants(task)
    n_total = int(pooled.size)
    p_scale = 0.0
    if cfg.samples and cfg.sampling == "importance":
        missing = [m for m, obj in enumerate(task.clients) if sample_constants(obj) is None]
        if missing:
            raise ConfigError(
                f"method.sampling=importance needs per-sample smoothness constants L_i, which "
                f"task {task.name!r} does not give; use method.sampling=uniform"
            )
        p_scale = cfg.batch_prop * n_total / float(pooled.sum())
        p_all = importance_probabilities(pooled, cfg.batch_prop * n_total)
    else:
        p_all = np.full(n_total, cfg.p)
    why = probability_error(p_all) if cfg.samples else None
    if why is not None:
        raise ConfigError(f"method.sampling={cfg.sampling}: {why}; every p_i must lie in (0, 1]")
    estimator = cfg.estimator_for(comp_cfg, task.dim)
    problem = FiniteSum(L0=task.L, L=pooled, f_inf=0.0)
    auto = estimator.auto_lr(problem, cfg.horizon, cfg.lr_factor, p_all if cfg.samples else None)
    lr = positive_or_auto("method.lr", method.get("lr", "auto"), auto)
    out = dict(method)
    out.update({k: v for k, v in asdict(cfg).items() if k not in ("lr", "p_scale")})
    out["lr"], out["p_scale"] = lr, p_scale
    return out


class BiasedSGD(FedsimStrategy):
    """BiasedSGD ``x ← x − γ g(x)`` (module docstring), one iteration per round."""

    uses = ("compressor",)

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        config: BiasedSGDConfig,
        compressor_cfg: Mapping | None = None,
    ) -> None:
        super().__init__(task, sampler, settings)
        self.config = config
        self.estimator = config.estimator_for(compressor_cfg, task.dim)
        self.compressor: Compressor | None = getattr(self.estimator, "compressor", None)
        self._payload: tuple[list[tuple[int, ...]], list[np.dtype]] | None = None
        if self.compressor is not None:  # a fixed-size payload for every client-shared C
            zeros = self.compressor.compress(
                np.zeros(task.dim), compressor_rng(self.compressor, 0, 0, 0)
            )
            self._payload = ([a.shape for a in zeros], [a.dtype for a in zeros])

    transient = (*FedsimStrategy.transient, "estimator", "compressor", "config", "_payload")

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        return resolve_biased_sgd(method, task, sampler)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> BiasedSGD:
        return cls(
            task, sampler, settings, BiasedSGDConfig.from_method(method), method.get("compressor")
        )

    def fit_config(self, rnd: int, cohort: Cohort) -> dict[int, tuple[list[np.ndarray], dict]]:
        arrays = [self.x]
        return {int(pid): (arrays, {}) for pid in cohort.ids}

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        if self.config.samples:
            return [(self.task.dim,), (1,)]
        if self._payload is not None:
            return list(self._payload[0])
        return [(self.task.dim,)]

    def expected_dtypes(self, pid: int) -> list[np.dtype] | None:
        return None if self._payload is None else list(self._payload[1])

    def estimate(self, rnd: int, replies: list[Reply]) -> np.ndarray:
        """``g`` from the replies (partition-id order)."""
        est = self.estimator
        if isinstance(est, IndependentSampling):
            sums = [r.arrays[0] for r in replies]
            counts = [int(r.arrays[1][0]) for r in replies]
            return est.combine(sums, counts, int(self.task.sizes.sum()))
        w = self.task.weights
        if self.compressor is not None:
            seed, d = self.settings.seed, self.task.dim
            vectors = [
                self.compressor.decompress(
                    r.arrays, d, compressor_rng(self.compressor, seed, rnd, r.pid)
                )
                for r in replies
            ]
        else:
            vectors = [r.arrays[0] for r in replies]
        return np.sum(
            np.stack([w[r.pid] * v for r, v in zip(replies, vectors, strict=True)]), axis=0
        )

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        self.x = self.x - self.config.lr * self.estimate(rnd, replies)
